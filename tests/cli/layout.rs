//! What a successful record puts into git: paths, modes, bytes, hashes, trailers, the index.

use std::path::Path;

use crate::common::*;

/// A log with CRLF line ends, a NUL and bytes that are not UTF-8: stored byte for byte.
const AWKWARD_LOG: &[u8] = b"2026/11/26 10:15:00 ui: ==> proxmox-iso: Creating VM\r\n\
    \xff\xfe not utf-8 \x00 nul\r\n\
    A template was created: 9000\n";

fn tip(env: &Env, repo: &Path, rev: &str) -> String {
    env.git(repo, ["rev-parse", rev]).trim().to_owned()
}

#[test]
fn a_success_is_one_commit_with_the_run_folder_latest_and_index() {
    let env = Env::new();
    let repo = env.repo("repo");
    let before = tip(&env, &repo, "main");
    let log = env.file("packer.log", AWKWARD_LOG);
    let mut args = record_args("ubuntu-22.04", &log, "2026-11-26T10:15:00Z");
    args.extend(
        [
            "--finished-at",
            "2026-11-26T10:27:13Z",
            "--fact",
            "vmid=9000",
            "--fact",
            "node=pve1",
            "--fact",
            "iso=local:iso/ubuntu-22.04.iso",
        ]
        .map(String::from),
    );
    let out = env.evidence_ok(&repo, &args);
    assert!(
        out.contains("Recorded ubuntu-22.04 2026-11-26T101500Z on main"),
        "{out}"
    );

    // One commit, on top of the old tip, adding exactly the run folder, latest, index, attributes.
    let parents = env.git(&repo, ["rev-list", "--parents", "-n1", "main"]);
    assert_eq!(parents.split_whitespace().nth(1), Some(before.as_str()));
    let changed = env.git(
        &repo,
        ["diff-tree", "--no-commit-id", "-r", "--name-status", "main"],
    );
    let run = "evidence/builds/ubuntu-22.04/2026-11-26T101500Z";
    let expected = format!(
        "A\tevidence/.gitattributes\nA\tevidence/README.md\nA\t{run}/README.md\nA\t{run}/packer.log\nA\t{run}/proof.json\nA\tevidence/builds/ubuntu-22.04/latest\n"
    );
    assert_eq!(changed, expected);

    // Modes: files 100644, latest a symlink (120000) whose target is the run id.
    let tree = env.git(&repo, ["ls-tree", "-r", "main", "evidence/"]);
    for line in tree.lines() {
        let mode = line.split_whitespace().next().unwrap();
        if line.ends_with("/latest") {
            assert_eq!(mode, "120000", "{line}");
        } else {
            assert_eq!(mode, "100644", "{line}");
        }
    }
    let link = env.git(
        &repo,
        [
            "cat-file",
            "blob",
            "main:evidence/builds/ubuntu-22.04/latest",
        ],
    );
    assert_eq!(link, "2026-11-26T101500Z");

    // The log blob is byte for byte the input.
    let mut cat = env.git_cmd(&repo);
    cat.args(["cat-file", "blob", &format!("main:{run}/packer.log")]);
    let blob = cat.output().unwrap().stdout;
    assert_eq!(blob, AWKWARD_LOG);

    // The hash everywhere equals sha256sum of the log.
    let sha = sha256sum(&log);
    let proof = json(&env.git(
        &repo,
        ["cat-file", "blob", &format!("main:{run}/proof.json")],
    ));
    assert_eq!(proof["log_sha256"], sha.as_str());
    assert_eq!(proof["log_bytes"], AWKWARD_LOG.len() as u64);
    let readme = env.git(
        &repo,
        ["cat-file", "blob", &format!("main:{run}/README.md")],
    );
    assert!(readme.contains(&sha), "{readme}");
    assert!(readme.contains("sha256sum packer.log"), "{readme}");
    let checked_out = repo.join(run).join("packer.log");
    assert_eq!(sha256sum(&checked_out), sha);

    // Trailers, read by git itself.
    let trailer = |key: &str| {
        env.git(
            &repo,
            [
                "log",
                "-1",
                &format!("--format=%(trailers:key={key},valueonly)"),
                "main",
            ],
        )
        .trim()
        .to_owned()
    };
    assert_eq!(trailer("Evidence-Kind"), "build");
    assert_eq!(trailer("Evidence-Template"), "ubuntu-22.04");
    assert_eq!(trailer("Evidence-Run"), "2026-11-26T101500Z");
    assert_eq!(trailer("Evidence-Status"), "success");
    assert_eq!(trailer("Evidence-Log-SHA256"), sha);
    assert_eq!(trailer("Evidence-Log-Bytes"), AWKWARD_LOG.len().to_string());
    assert_eq!(trailer("Evidence-VMID"), "9000");
    assert_eq!(trailer("Evidence-Node"), "pve1");
    assert_eq!(
        trailer("Evidence-Tool"),
        format!("git-evidence {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(!trailer("Evidence-Host").is_empty());
    let subject = env.git(&repo, ["log", "-1", "--format=%s", "main"]);
    assert_eq!(
        subject.trim(),
        "evidence(build): ubuntu-22.04 2026-11-26T101500Z vmid 9000"
    );
    let message = env.git(&repo, ["log", "-1", "--format=%B", "main"]);
    let mut parse = env.git_cmd(&repo);
    parse.args(["interpret-trailers", "--parse"]);
    parse
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = parse.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), message.as_bytes()).unwrap();
    let parsed = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(parsed.starts_with("Evidence-Kind: build\n"), "{parsed}");
    assert!(
        parsed.contains(&format!("Evidence-Log-SHA256: {sha}\n")),
        "{parsed}"
    );

    // The work tree and index follow; nothing is left over.
    assert_eq!(
        env.git(&repo, ["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
    assert_fsck(&env, &repo);
}

#[test]
fn proof_json_has_every_schema_key_with_its_type() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    let mut args = record_args("rocky-9", &log, "2026-11-26T10:15:00.250+01:00");
    args.extend(
        [
            "--finished-at",
            "2026-11-26T09:20:00Z",
            "--fact",
            "vmid=9001",
        ]
        .map(String::from),
    );
    args.extend(["--fact", "builder_type=proxmox-iso"].map(String::from));
    env.evidence_ok(&repo, &args);
    let text = latest_file(&env, &repo, "main", "evidence/builds/rocky-9", "proof.json");
    let proof = json(&text);
    // Top-level keys in the order written (serde_json's map would sort them).
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  \"")?.split_once('"').map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "schema_version",
            "kind",
            "template",
            "run_id",
            "status",
            "started_at",
            "finished_at",
            "duration_seconds",
            "host",
            "command",
            "exit_code",
            "vmid",
            "node",
            "facts",
            "fact_sources",
            "log_file",
            "log_sha256",
            "log_bytes",
            "redactions",
            "tool",
            "source_commit",
            "source_dirty",
            "validation",
            "assets",
        ]
    );
    assert_eq!(proof["schema_version"], 1);
    assert_eq!(proof["kind"], "build");
    assert_eq!(proof["template"], "rocky-9");
    // The run id is the UTC start second; times are stored in UTC.
    assert_eq!(proof["run_id"], "2026-11-26T091500Z");
    assert_eq!(proof["started_at"], "2026-11-26T09:15:00.250Z");
    assert_eq!(proof["finished_at"], "2026-11-26T09:20:00Z");
    assert_eq!(proof["duration_seconds"], 299.75);
    assert_eq!(proof["status"], "success");
    assert_eq!(proof["command"], serde_json::json!([]));
    assert_eq!(proof["exit_code"], 0);
    assert_eq!(proof["vmid"], 9001);
    assert!(proof["node"].is_null());
    assert_eq!(
        proof["facts"],
        serde_json::json!({"builder_type": "proxmox-iso"})
    );
    assert_eq!(
        proof["fact_sources"],
        serde_json::json!({"builder_type": "cli", "vmid": "cli"})
    );
    assert_eq!(proof["log_file"], "packer.log");
    assert_eq!(proof["redactions"], serde_json::json!({}));
    assert_eq!(proof["tool"]["name"], "git-evidence");
    assert!(proof["host"].is_string());
    assert!(proof["source_dirty"].is_null(), "record cannot know");
    assert!(proof["validation"].is_null());
    assert_eq!(proof["assets"], serde_json::json!([]));
    let source = env.git(&repo, ["rev-parse", "main~1"]);
    assert_eq!(proof["source_commit"], source.trim());
}

#[test]
fn latest_moves_forward_only_and_same_second_runs_get_suffixes() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    let latest = |env: &Env| env.git(&repo, ["cat-file", "blob", "main:evidence/builds/t/latest"]);
    env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T10:00:00Z"));
    env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T12:00:00Z"));
    assert_eq!(latest(&env), "2026-11-26T120000Z");

    // An older run is added, but latest stays; the commit does not touch it.
    env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T11:00:00Z"));
    assert_eq!(latest(&env), "2026-11-26T120000Z");
    let changed = env.git(
        &repo,
        ["diff-tree", "--no-commit-id", "-r", "--name-only", "main"],
    );
    assert!(!changed.contains("latest"), "{changed}");
    assert!(!changed.contains(".gitattributes"), "{changed}");
    assert!(
        changed.contains("evidence/builds/t/2026-11-26T110000Z/proof.json"),
        "{changed}"
    );

    // Same second: -2, -3, and latest follows the suffix order.
    for _ in 0..2 {
        env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T12:00:00Z"));
    }
    assert_eq!(latest(&env), "2026-11-26T120000Z-3");
    let dirs = env.git(
        &repo,
        ["ls-tree", "--name-only", "main", "evidence/builds/t/"],
    );
    assert_eq!(
        dirs,
        // git's tree order: `…Z-2` sorts before `…Z` because directories compare as `…Z/`.
        "evidence/builds/t/2026-11-26T100000Z\nevidence/builds/t/2026-11-26T110000Z\n\
         evidence/builds/t/2026-11-26T120000Z-2\nevidence/builds/t/2026-11-26T120000Z-3\n\
         evidence/builds/t/2026-11-26T120000Z\nevidence/builds/t/latest\n"
    );
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    assert_eq!(proof["run_id"], "2026-11-26T120000Z-3");
    assert_eq!(env.git(&repo, ["status", "--porcelain"]), "");
    assert_fsck(&env, &repo);
}

#[test]
fn an_empty_repository_gets_its_first_commit() {
    let env = Env::new();
    let repo = env.empty_repo("repo");
    let log = env.file("packer.log", b"log\n");
    env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T10:00:00Z"));
    let parents = env.git(&repo, ["rev-list", "--parents", "main"]);
    assert_eq!(parents.lines().count(), 1);
    assert_eq!(
        parents.split_whitespace().count(),
        1,
        "root commit: {parents}"
    );
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    assert!(proof["source_commit"].is_null());
    assert_eq!(env.git(&repo, ["status", "--porcelain"]), "");
    assert_fsck(&env, &repo);
}

#[test]
fn a_bare_repository_is_recorded_into() {
    let env = Env::new();
    let bare = env.bare_repo("bare.git");
    let log = env.file("packer.log", b"log\n");
    let mut args = vec!["-C".to_string(), bare.display().to_string()];
    args.extend(record_args("t", &log, "2026-11-26T10:00:00Z"));
    env.evidence_ok(env.path(), &args);
    let files = env.git(&bare, ["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("evidence/builds/t/2026-11-26T100000Z/packer.log"),
        "{files}"
    );
    assert_fsck(&env, &bare);
}

#[test]
fn the_index_is_the_same_bytes_for_the_same_tree() {
    let env = Env::new();
    let log = env.file("packer.log", b"log\n");
    let mut blobs = Vec::new();
    for (i, name) in ["one", "two"].iter().enumerate() {
        let repo = env.repo(name);
        // Different commit times must not matter: only the evidence tree does.
        for (t, started) in [
            ("b-template", "2026-11-26T10:00:00Z"),
            ("a-template", "2026-11-26T11:00:00Z"),
        ] {
            let mut cmd = env.evidence_cmd(&repo);
            cmd.args(record_args(t, &log, started))
                .args(["--fact", "vmid=9000", "--fact", "node=pve1"])
                .env(
                    "GIT_COMMITTER_DATE",
                    format!("@{} +0000", 1_800_000_000 + i * 1000),
                );
            ok(&mut cmd);
        }
        blobs.push(env.git(&repo, ["rev-parse", "main:evidence/README.md"]));
        let index = env.git(&repo, ["cat-file", "blob", "main:evidence/README.md"]);
        let a = index.find("[a-template]").expect("a-template listed");
        let b = index.find("[b-template]").expect("b-template listed");
        assert!(a < b, "templates sorted by name:\n{index}");
        assert!(
            index.contains("builds/a-template/latest/README.md"),
            "{index}"
        );
        assert!(index.contains("sha256sum packer.log"), "{index}");
        assert!(index.contains("| 9000 | pve1 |"), "{index}");
    }
    assert_eq!(blobs[0], blobs[1]);
    assert_ne!(
        env.git(&env.path().join("one"), ["rev-parse", "main"]),
        env.git(&env.path().join("two"), ["rev-parse", "main"]),
    );
}

#[test]
fn root_comes_from_the_flag_then_config_then_default() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    env.git(&repo, ["config", "evidence.root", "docs/proofs"]);
    env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T10:00:00Z"));
    let mut args = record_args("t", &log, "2026-11-26T11:00:00Z");
    args.extend(["--root".into(), "other".into()]);
    env.evidence_ok(&repo, &args);
    let files = env.git(&repo, ["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("docs/proofs/builds/t/2026-11-26T100000Z/packer.log"),
        "{files}"
    );
    assert!(files.contains("docs/proofs/README.md"), "{files}");
    assert!(
        files.contains("other/builds/t/2026-11-26T110000Z/packer.log"),
        "{files}"
    );
    assert!(!files.contains("\nevidence/"), "{files}");
}

#[test]
fn signoff_and_identity_follow_git() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    let mut args = record_args("t", &log, "2026-11-26T10:00:00Z");
    args.push("--signoff".into());
    env.evidence_ok(&repo, &args);
    let signoff = env.git(
        &repo,
        [
            "log",
            "-1",
            "--format=%(trailers:key=Signed-off-by,valueonly)",
        ],
    );
    assert_eq!(signoff.trim(), "Build Host <builder@example.com>");

    env.git(&repo, ["config", "evidence.signoff", "true"]);
    env.git(&repo, ["config", "user.name", "Config Name"]);
    env.git(&repo, ["config", "user.email", "config@example.com"]);
    let mut cmd = env.evidence_cmd(&repo);
    cmd.args(record_args("t", &log, "2026-11-26T11:00:00Z"))
        .env_remove("GIT_AUTHOR_NAME")
        .env_remove("GIT_AUTHOR_EMAIL")
        .env_remove("GIT_COMMITTER_NAME")
        .env_remove("GIT_COMMITTER_EMAIL");
    ok(&mut cmd);
    let who = env.git(
        &repo,
        [
            "log",
            "-1",
            "--format=%an <%ae>|%cn <%ce>|%(trailers:key=Signed-off-by,valueonly)",
        ],
    );
    assert_eq!(
        who.trim(),
        "Config Name <config@example.com>|Config Name <config@example.com>|Config Name <config@example.com>"
    );
}

#[test]
fn an_unconfigured_host_still_records_as_git_evidence() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    let mut cmd = env.evidence_cmd(&repo);
    cmd.args(record_args("t", &log, "2026-11-26T10:00:00Z"))
        .env_remove("GIT_AUTHOR_NAME")
        .env_remove("GIT_AUTHOR_EMAIL")
        .env_remove("GIT_COMMITTER_NAME")
        .env_remove("GIT_COMMITTER_EMAIL");
    ok(&mut cmd);
    let who = env.git(&repo, ["log", "-1", "--format=%an <%ae>"]);
    assert!(who.starts_with("git-evidence <git-evidence@"), "{who}");
}

#[test]
fn init_runs_have_their_own_folder_and_log_name() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file(
        "init.log",
        b"Installed plugin github.com/hashicorp/proxmox v1.1.8\n",
    );
    let out = env.evidence_ok(
        &repo,
        [
            "record",
            "--kind",
            "init",
            "--log",
            log.to_str().unwrap(),
            "--exit-code",
            "0",
            "--started-at",
            "2026-11-26T09:00:00Z",
            "--json",
        ],
    );
    let result = json(&out);
    assert_eq!(result["folder"], "evidence/init/2026-11-26T090000Z");
    let files = env.git(
        &repo,
        ["ls-tree", "-r", "--name-only", "main", "evidence/init"],
    );
    assert_eq!(
        files,
        "evidence/init/2026-11-26T090000Z/README.md\nevidence/init/2026-11-26T090000Z/init-packer.log\n\
         evidence/init/2026-11-26T090000Z/proof.json\nevidence/init/latest\n"
    );
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/init",
        "proof.json",
    ));
    assert_eq!(proof["kind"], "init");
    assert!(proof["template"].is_null());
    assert_eq!(proof["log_file"], "init-packer.log");
    let subject = env.git(&repo, ["log", "-1", "--format=%s"]);
    assert_eq!(subject.trim(), "evidence(init): 2026-11-26T090000Z");
    let index = env.git(&repo, ["cat-file", "blob", "main:evidence/README.md"]);
    assert!(index.contains("(init/latest/README.md)"), "{index}");
}

#[test]
fn json_output_describes_the_commit() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    let mut args = record_args("t", &log, "2026-11-26T10:00:00Z");
    args.push("--json".into());
    let result = json(&env.evidence_ok(&repo, &args));
    assert_eq!(result["recorded"], true);
    assert_eq!(result["status"], "success");
    assert_eq!(result["run_id"], "2026-11-26T100000Z");
    assert_eq!(result["ref"], "refs/heads/main");
    assert_eq!(
        result["commit"],
        env.git(&repo, ["rev-parse", "main"]).trim()
    );
    assert_eq!(result["latest_moved"], true);
    assert_eq!(result["proof"]["log_sha256"], sha256sum(&log).as_str());
}

#[test]
fn the_run_readme_and_index_read_well() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = fixture("proxmox-fake.packer.log");
    let mut cmd = env.evidence_cmd(&repo);
    cmd.args(record_args("ubuntu-22.04", &log, "2026-11-26T10:15:00Z"))
        .args([
            "--finished-at",
            "2026-11-26T10:27:13Z",
            "--fact",
            "vmid=9000",
            "--fact",
            "node=pve1",
            "--fact",
            "iso=local:iso/ubuntu-22.04.iso",
            "--fact",
            "pipe=a|b",
        ]);
    ok(&mut cmd);
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/ubuntu-22.04",
        "proof.json",
    ));
    let host = proof["host"].as_str().unwrap().to_owned();
    let source = proof["source_commit"].as_str().unwrap().to_owned();
    let normalise = |text: String| {
        text.replace(&format!("| {host} |"), "| [host] |")
            .replace(&source, "[source-commit]")
            .replace(env!("CARGO_PKG_VERSION"), "[version]")
    };
    let readme = normalise(latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/ubuntu-22.04",
        "README.md",
    ));
    insta::assert_snapshot!("run_readme", readme);
    let index = normalise(env.git(&repo, ["cat-file", "blob", "main:evidence/README.md"]));
    insta::assert_snapshot!("index", index);
    let message = normalise(env.git(&repo, ["log", "-1", "--format=%B"]))
        .replace(&format!(" on {host} "), " on [host] ")
        .replace(
            &format!("Evidence-Host: {host}\n"),
            "Evidence-Host: [host]\n",
        );
    insta::assert_snapshot!("commit_message", message);
}
