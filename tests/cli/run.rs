//! `git-evidence run` around the real Packer 1.6.6 (Debian's `packer`, null builder).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

/// A Packer template with a null source, a shell-local provisioner running `inline`, and a
/// manifest post-processor with `custom_data`.
fn template(inline: &[&str]) -> String {
    let lines: Vec<String> = inline.iter().map(|l| format!("      {l:?},")).collect();
    format!(
        r#"source "null" "x" {{
  communicator = "none"
}}
build {{
  sources = ["source.null.x"]
  provisioner "shell-local" {{
    inline = [
{}
    ]
  }}
  post-processor "manifest" {{
    output      = "packer-manifest.json"
    strip_path  = true
    custom_data = {{
      iso = "local:iso/ubuntu-22.04.iso"
    }}
  }}
}}
"#,
        lines.join("\n")
    )
}

/// A repository with `build.pkr.hcl` holding `template(inline)` committed, Packer's
/// scratch files ignored.
fn packer_repo(env: &Env, inline: &[&str]) -> PathBuf {
    let repo = env.repo("infra");
    std::fs::write(repo.join("build.pkr.hcl"), template(inline)).unwrap();
    std::fs::write(
        repo.join(".gitignore"),
        "packer_cache/\npacker-manifest.json\n",
    )
    .unwrap();
    env.git(&repo, ["add", "."]);
    env.git(&repo, ["commit", "-q", "-m", "template"]);
    repo
}

/// `git-evidence run` in `repo` with Packer's environment made hermetic.
fn run_cmd(env: &Env, repo: &Path, flags: &[&str], command: &[&str]) -> Command {
    let mut cmd = env.evidence_cmd(repo);
    cmd.arg("run")
        .args(flags)
        .arg("--")
        .args(command)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CACHE_DIR", env.path().join("packer_cache"))
        .env("PACKER_CONFIG_DIR", env.path().join("home"));
    cmd
}

fn packer_build() -> Vec<&'static str> {
    vec!["packer", "build", "-color=true", "build.pkr.hcl"]
}

fn only_run(env: &Env, repo: &Path, dir: &str) -> String {
    let runs = env.git(repo, ["ls-tree", "--name-only", "main", &format!("{dir}/")]);
    let runs: Vec<&str> = runs.lines().filter(|l| !l.ends_with("/latest")).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].to_owned()
}

#[test]
fn a_successful_build_is_captured_and_recorded_with_its_facts() {
    let env = Env::new();
    let repo = packer_repo(
        &env,
        &[
            "echo building on null",
            "echo 'to-stderr' 1>&2",
            "echo node=pve-from-file >> $EVIDENCE_FACTS",
            "echo storage=local-lvm >> $EVIDENCE_FACTS",
        ],
    );
    let mut cmd = run_cmd(
        &env,
        &repo,
        &[
            "--template",
            "ubuntu-22.04",
            "--fact",
            "owner=ops",
            "--json",
        ],
        &packer_build(),
    );
    let out = cmd.output().unwrap();
    let (stdout_text, stderr_text) = (stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout_text}\nstderr:\n{stderr_text}"
    );

    // The console shows Packer's UI, redacted like the log and so without colours, but not its
    // debug lines.
    assert!(stdout_text.contains("building on null"), "{stdout_text}");
    assert!(
        !stdout_text.contains('\x1b'),
        "the console gets the filtered text"
    );
    assert!(
        !stderr_text.contains("[INFO] Packer version"),
        "{stderr_text}"
    );

    let result = json(&stdout_text[stdout_text.find("{\n").expect("json output")..]);
    assert_eq!(result["status"], "success");
    let run = only_run(&env, &repo, "evidence/builds/ubuntu-22.04");
    let proof = json(&env.git(
        &repo,
        ["cat-file", "blob", &format!("main:{run}/proof.json")],
    ));
    assert_eq!(
        proof["command"],
        serde_json::json!(["packer", "build", "-color=true", "build.pkr.hcl"])
    );
    assert_eq!(proof["exit_code"], 0);
    assert!(proof["finished_at"].is_string());
    assert!(proof["duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(proof["source_dirty"], false);
    let template_commit = env.git(&repo, ["rev-parse", "main~1"]);
    assert_eq!(proof["source_commit"], template_commit.trim());
    // Facts and where each came from.
    assert_eq!(proof["node"], "pve-from-file");
    assert_eq!(proof["fact_sources"]["node"], "facts-file");
    assert_eq!(proof["facts"]["storage"], "local-lvm");
    assert_eq!(proof["facts"]["owner"], "ops");
    assert_eq!(proof["fact_sources"]["owner"], "cli");
    assert_eq!(proof["facts"]["iso"], "local:iso/ubuntu-22.04.iso");
    assert_eq!(proof["fact_sources"]["iso"], "manifest");
    assert_eq!(proof["facts"]["builder_type"], "null");
    assert_eq!(proof["facts"]["packer_version"], "1.6.6");
    assert_eq!(proof["fact_sources"]["packer_version"], "log");
    assert_eq!(proof["facts"]["builds"], serde_json::json!(["null.x"]));

    // The log: stdout and stderr together, debug lines included, colours removed.
    let mut cat = env.git_cmd(&repo);
    cat.args(["cat-file", "blob", &format!("main:{run}/packer.log")]);
    let log = cat.output().unwrap().stdout;
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("[INFO] Packer version: 1.6.6"),
        "debug lines are in the log"
    );
    assert!(text.contains("building on null"));
    assert!(text.contains("to-stderr"));
    assert!(
        !log.contains(&0x1b),
        "no escape sequences in the stored log"
    );
    assert_eq!(proof["log_bytes"], log.len() as u64);
    assert_eq!(env.git(&repo, ["status", "--porcelain"]), "");
    assert_fsck(&env, &repo);
}

#[test]
fn a_failing_build_exits_like_packer_and_goes_to_a_failed_ref() {
    let env = Env::new();
    let repo = packer_repo(&env, &["echo about to fail", "exit 3"]);
    let tip = env.git(&repo, ["rev-parse", "main"]);
    let out = run_cmd(&env, &repo, &["--template", "rocky-9"], &packer_build())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        env.git(&repo, ["rev-parse", "main"]),
        tip,
        "the branch is unchanged"
    );
    let refs = env.git(
        &repo,
        [
            "for-each-ref",
            "--format=%(refname)",
            "refs/evidence/failed/builds/rocky-9/",
        ],
    );
    let name = refs.trim();
    assert!(!name.is_empty(), "a failed-run ref");
    let files = env.git(&repo, ["ls-tree", "-r", "--name-only", name]);
    let log_path = files.lines().find(|l| l.ends_with("/packer.log")).unwrap();
    let log = env.git(&repo, ["cat-file", "blob", &format!("{name}:{log_path}")]);
    assert!(
        log.contains("Script exited with non-zero exit status: 3"),
        "{log}"
    );
    let proof_path = log_path.replace("packer.log", "proof.json");
    let proof = json(&env.git(&repo, ["cat-file", "blob", &format!("{name}:{proof_path}")]));
    assert_eq!(proof["status"], "failed");
    assert_eq!(proof["exit_code"], 1);
}

/// The processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

#[test]
fn sigint_cancels_the_build_cleanly_and_records_it_as_cancelled() {
    let env = Env::new();
    // A number no other test uses, to find leftover processes by.
    let marker = "4242.25";
    let repo = packer_repo(
        &env,
        &["echo ready-to-be-interrupted", &format!("sleep {marker}")],
    );
    let mut cmd = run_cmd(
        &env,
        &repo,
        &["--template", "t", "--grace", "60s"],
        &packer_build(),
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Wait for the provisioner to be running: read the console until it says so.
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if console.read_line(&mut line).unwrap() == 0 {
            panic!("the build ended before it could be interrupted:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains("ready-to-be-interrupted") {
            break;
        }
    }
    // SIGINT to the wrapper's pid only, as a terminal's Ctrl-C reaches a process in the
    // background of a job, or `kill -INT` does.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    std::io::Read::read_to_string(&mut console, &mut seen).unwrap();
    assert_eq!(status.code(), Some(130), "console:\n{seen}");
    assert!(
        processes_with(&format!("sleep {marker}")).is_empty(),
        "orphans: {:?}",
        processes_with(marker)
    );

    let refs = env.git(
        &repo,
        [
            "for-each-ref",
            "--format=%(refname)",
            "refs/evidence/failed/builds/t/",
        ],
    );
    let name = refs.trim();
    assert!(!name.is_empty(), "a failed-run ref for the cancelled build");
    let status = env.git(
        &repo,
        [
            "log",
            "-1",
            "--format=%(trailers:key=Evidence-Status,valueonly)",
            name,
        ],
    );
    assert_eq!(status.trim(), "cancelled");
    let files = env.git(&repo, ["ls-tree", "-r", "--name-only", name]);
    let log_path = files.lines().find(|l| l.ends_with("/packer.log")).unwrap();
    let log = env.git(&repo, ["cat-file", "blob", &format!("{name}:{log_path}")]);
    assert!(
        log.contains("ready-to-be-interrupted"),
        "the log up to the interruption is kept"
    );
    assert!(
        log.contains("Cleanly cancelled builds after being interrupted"),
        "Packer saw the signal and cleaned up:\n{log}"
    );
}

#[test]
fn command_line_facts_beat_the_facts_file_which_beats_the_manifest() {
    let env = Env::new();
    let repo = packer_repo(
        &env,
        &[
            "echo vmid=7001 >> $EVIDENCE_FACTS",
            "echo iso=from-file >> $EVIDENCE_FACTS",
        ],
    );
    let out = run_cmd(
        &env,
        &repo,
        &["--template", "t", "--fact", "vmid=9000"],
        &packer_build(),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    assert_eq!(proof["vmid"], 9000);
    assert_eq!(proof["fact_sources"]["vmid"], "cli");
    assert_eq!(
        proof["facts"]["iso"], "from-file",
        "the facts file beats the manifest"
    );
    assert_eq!(proof["fact_sources"]["iso"], "facts-file");
    let subject = env.git(&repo, ["log", "-1", "--format=%s"]);
    assert!(subject.trim().ends_with("vmid 9000"), "{subject}");
}

#[test]
fn validation_output_joins_the_log_and_its_failure_fails_the_run() {
    let env = Env::new();
    let repo = packer_repo(&env, &["echo vmid=9100 >> $EVIDENCE_FACTS"]);
    let out = run_cmd(
        &env,
        &repo,
        &[
            "--template",
            "t",
            "--node",
            "pve2",
            "--validate",
            "echo checked $EVIDENCE_VMID on $EVIDENCE_NODE",
        ],
        &packer_build(),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    assert_eq!(proof["validation"]["status"], "passed");
    assert_eq!(proof["validation"]["exit_code"], 0);
    let log = latest_file(&env, &repo, "main", "evidence/builds/t", "packer.log");
    let at = log
        .find("==> git-evidence: validation: echo checked")
        .expect("separator");
    assert!(log[at..].contains("checked 9100 on pve2"), "{log}");

    let tip = env.git(&repo, ["rev-parse", "main"]);
    let out = run_cmd(
        &env,
        &repo,
        &[
            "--template",
            "t",
            "--validate",
            "echo no guest agent; exit 4",
        ],
        &packer_build(),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(4), "the validation's exit code");
    assert_eq!(env.git(&repo, ["rev-parse", "main"]), tip);
    let refs = env.git(
        &repo,
        [
            "for-each-ref",
            "--format=%(refname)",
            "refs/evidence/failed/",
        ],
    );
    let name = refs.trim();
    let proof_path = env
        .git(&repo, ["ls-tree", "-r", "--name-only", name])
        .lines()
        .find(|l| l.ends_with("proof.json"))
        .unwrap()
        .to_owned();
    let proof = json(&env.git(&repo, ["cat-file", "blob", &format!("{name}:{proof_path}")]));
    assert_eq!(proof["status"], "failed");
    assert_eq!(proof["validation"]["status"], "failed");
    assert_eq!(proof["validation"]["exit_code"], 4);
}

#[test]
fn a_build_whose_evidence_cannot_be_recorded_keeps_its_log_and_says_so() {
    let env = Env::new();
    let repo = packer_repo(&env, &["echo precious output"]);
    // A file where the evidence folder should be: the build succeeds, filing cannot.
    std::fs::write(repo.join("evidence"), "not a folder\n").unwrap();
    env.git(&repo, ["add", "evidence"]);
    env.git(&repo, ["commit", "-q", "-m", "in the way"]);
    let keep = env.path().join("kept");
    let out = run_cmd(
        &env,
        &repo,
        &["--template", "t", "--keep-log", keep.to_str().unwrap()],
        &packer_build(),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: the run could not be recorded"),
        "{err}"
    );
    assert!(
        err.contains("git evidence record --kind build --template t --log "),
        "{err}"
    );
    let kept: Vec<_> = std::fs::read_dir(&keep)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let text = std::fs::read_to_string(&kept[0]).unwrap();
    assert!(text.contains("precious output"));
    assert!(
        err.contains(&kept[0].display().to_string()),
        "the message names the kept log: {err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_command_that_cannot_start_exits_127_and_records_nothing() {
    let env = Env::new();
    let repo = env.repo("repo");
    let before = env.git(&repo, ["for-each-ref"]);
    let out = run_cmd(
        &env,
        &repo,
        &["--template", "t"],
        &["no-such-packer-binary", "build", "."],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("cannot run no-such-packer-binary"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.git(&repo, ["for-each-ref"]), before);
}

#[test]
fn bad_input_is_refused_before_the_build_starts() {
    let env = Env::new();
    let repo = env.repo("repo");
    let marker = env.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let out = run_cmd(
        &env,
        &repo,
        &["--template", "Bad/Name"],
        &["sh", "-c", &touch],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: invalid template name"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists(), "the command must not run");
    let out = run_cmd(
        &env,
        &repo,
        &["--template", "t", "--fact", "vmid=x"],
        &["sh", "-c", &touch],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!marker.exists());
}

#[test]
fn three_hundred_megabytes_of_output_stream_through_in_bounded_memory() {
    let env = Env::new();
    // A work tree, so the log is also written out there: the most memory any record needs.
    let repo = env.repo("repo");
    let bytes: u64 = 300_000_000;
    let script = format!(
        "head -c {} /dev/urandom | base64 -w 76 | head -c {bytes}",
        bytes * 3 / 4 + 1000
    );
    let mut cmd = run_cmd(&env, &repo, &["--template", "big"], &["sh", "-c", &script]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    // wait4 gives the peak resident set of the wrapper itself (its children are small).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}"
    );
    let peak_kib = usage.ru_maxrss as u64;
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB exceeds 64 MiB"
    );
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/big",
        "proof.json",
    ));
    assert_eq!(proof["log_bytes"], bytes, "the log is complete");
    drop(child);
    let on_disk = std::fs::metadata(
        repo.join("evidence/builds/big")
            .join(proof["run_id"].as_str().unwrap())
            .join("packer.log"),
    )
    .unwrap();
    assert_eq!(on_disk.len(), bytes, "the work tree has the whole log");
    assert_eq!(env.git(&repo, ["status", "--porcelain"]), "");
}

#[test]
fn assets_are_listed_with_their_hashes_and_validation_in_the_readme() {
    let env = Env::new();
    let repo = packer_repo(&env, &["echo ok"]);
    std::fs::create_dir(repo.join("http")).unwrap();
    std::fs::write(
        repo.join("http/user-data"),
        "#cloud-config\nautoinstall:\n  version: 1\n",
    )
    .unwrap();
    std::fs::write(repo.join("http/meta-data"), "").unwrap();
    let out = run_cmd(
        &env,
        &repo,
        &[
            "--template",
            "t",
            "--asset",
            "http/*",
            "--asset",
            "missing/*.xml",
            "--validate",
            "true",
        ],
        &packer_build(),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: --asset \"missing/*.xml\" matched no file"),
        "{}",
        stderr(&out)
    );
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    let assets = proof["assets"].as_array().unwrap();
    let paths: Vec<&str> = assets.iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["http/meta-data", "http/user-data"]);
    assert_eq!(
        assets[1]["sha256"],
        sha256sum(&repo.join("http/user-data")).as_str()
    );
    assert_eq!(assets[1]["bytes"], 40);
    let readme = latest_file(&env, &repo, "main", "evidence/builds/t", "README.md");
    assert!(readme.contains("## Assets"), "{readme}");
    assert!(readme.contains("| http/user-data | 40 |"), "{readme}");
    assert!(
        readme.contains("## Validation\n\n**passed** (exit code 0"),
        "{readme}"
    );
}
