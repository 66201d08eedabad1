//! `list` and `show`: reading evidence back, from git objects only.

use std::path::Path;

use crate::common::*;

const UBUNTU: &str = "evidence/builds/ubuntu-22.04";

/// Records a run of `template` (or `init`) started at `started` with exit code `code`; returns
/// the run id.
fn record(env: &Env, repo: &Path, template: &str, started: &str, code: &str) -> String {
    let log = fixture("ok.packer.log");
    let mut args = vec![
        "--json".to_owned(),
        "record".into(),
        "--log".into(),
        log.display().to_string(),
        "--exit-code".into(),
        code.into(),
        "--started-at".into(),
        started.into(),
        "--fact".into(),
        "vmid=9000".into(),
        "--fact".into(),
        "node=pve1".into(),
    ];
    if template == "init" {
        args.extend(["--kind".into(), "init".into()]);
    } else {
        args.extend(["--template".into(), template.into()]);
    }
    let out = json(&env.evidence_ok(repo, args));
    out["run_id"].as_str().unwrap().to_owned()
}

/// `list --json args…` as (label, run id) pairs.
fn listed(env: &Env, repo: &Path, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["list", "--json"];
    all.extend_from_slice(args);
    let value = json(&env.evidence_ok(repo, all));
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|r| {
            (
                r["template"].as_str().unwrap_or("init").to_owned(),
                r["run_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn list_is_newest_first_with_suffixes_in_numeric_order() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "rocky9", "2026-11-26T09:00:00Z", "0");
    let mut same_second = Vec::new();
    for _ in 0..10 {
        same_second.push(record(
            &env,
            &repo,
            "ubuntu-22.04",
            "2026-11-26T10:15:00Z",
            "0",
        ));
    }
    assert_eq!(same_second[9], "2026-11-26T101500Z-10");
    record(&env, &repo, "init", "2026-11-26T11:00:00Z", "0");

    let got = listed(&env, &repo, &[]);
    let mut want = vec![("init".to_owned(), "2026-11-26T110000Z".to_owned())];
    for id in same_second.iter().rev() {
        want.push(("ubuntu-22.04".into(), id.clone()));
    }
    want.push(("rocky9".into(), "2026-11-26T090000Z".into()));
    assert_eq!(got, want);

    // The human table: a header, one aligned row per run, in the same order.
    let table = env.evidence_ok(&repo, ["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 13, "{table}");
    for column in [
        "RUN", "STATUS", "DURATION", "VMID", "NODE", "SHA256", "COMMIT",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    let run_col = lines[0].find("RUN").unwrap();
    let status_col = lines[0].find("STATUS").unwrap();
    assert_eq!(&lines[1][run_col..run_col + 18], "2026-11-26T110000Z");
    assert!(lines[1].starts_with("init "), "{table}");
    assert!(lines[2][run_col..].starts_with("2026-11-26T101500Z-10 "));
    for line in &lines[1..] {
        assert_eq!(
            &line[status_col..status_col + 8],
            "success ",
            "misaligned: {table}"
        );
    }
    let sha = sha256sum(&fixture("ok.packer.log"));
    assert!(lines[1].contains(&format!(" {} ", &sha[..12])), "{table}");
    assert!(!lines[1].contains(&sha[..13]), "{table}");
}

#[test]
fn list_filters_by_template() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "rocky9", "2026-11-26T09:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "rocky9", "2026-11-26T11:00:00Z", "0");
    record(&env, &repo, "init", "2026-11-26T12:00:00Z", "0");
    assert_eq!(
        listed(&env, &repo, &["--template", "rocky9"]),
        pairs(&[
            ("rocky9", "2026-11-26T110000Z"),
            ("rocky9", "2026-11-26T090000Z")
        ])
    );
    assert_eq!(
        listed(&env, &repo, &["--template", "init"]),
        pairs(&[("init", "2026-11-26T120000Z")])
    );
    assert_eq!(listed(&env, &repo, &["--template", "debian12"]), vec![]);
    let out = env.evidence(&repo, ["list", "--template", "Bad/Name"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn failed_runs_are_listed_only_with_failed_and_carry_their_refs() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T11:00:00Z", "1");
    record(&env, &repo, "rocky9", "2026-11-26T12:00:00Z", "130");
    record(&env, &repo, "init", "2026-11-26T13:00:00Z", "1");

    assert_eq!(
        listed(&env, &repo, &[]),
        pairs(&[("ubuntu-22.04", "2026-11-26T100000Z")])
    );
    let value = json(&env.evidence_ok(&repo, ["list", "--json", "--failed"]));
    let runs = value.as_array().unwrap();
    let got: Vec<(&str, &str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["run_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
                r["ref"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "2026-11-26T130000Z",
                "failed",
                "refs/evidence/failed/init/2026-11-26T130000Z"
            ),
            (
                "2026-11-26T120000Z",
                "cancelled",
                "refs/evidence/failed/builds/rocky9/2026-11-26T120000Z"
            ),
            (
                "2026-11-26T110000Z",
                "failed",
                "refs/evidence/failed/builds/ubuntu-22.04/2026-11-26T110000Z"
            ),
            ("2026-11-26T100000Z", "success", "-"),
        ]
    );
    for run in &runs[..3] {
        let name = run["ref"].as_str().unwrap();
        assert_eq!(
            run["commit"].as_str().unwrap(),
            env.git(&repo, ["rev-parse", name]).trim(),
            "{run}"
        );
    }
    assert_eq!(runs[1]["path"], "evidence/builds/rocky9/2026-11-26T120000Z");
    assert!(runs[3]["ref"].is_null());

    // Combined with --template.
    assert_eq!(
        listed(&env, &repo, &["--failed", "--template", "rocky9"]),
        pairs(&[("rocky9", "2026-11-26T120000Z")])
    );
    let table = env.evidence_ok(&repo, ["list", "--failed"]);
    assert!(table.contains("cancelled"), "{table}");
}

#[test]
fn since_keeps_runs_started_at_or_after_it() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-25T23:59:59Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T00:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:15:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:30:00Z", "1");
    assert_eq!(
        listed(&env, &repo, &["--since", "2026-11-26"]),
        pairs(&[
            ("ubuntu-22.04", "2026-11-26T101500Z"),
            ("ubuntu-22.04", "2026-11-26T000000Z")
        ])
    );
    assert_eq!(
        listed(&env, &repo, &["--since", "2026-11-26T10:15:00Z"]),
        pairs(&[("ubuntu-22.04", "2026-11-26T101500Z")])
    );
    // An offset is honoured: 11:15+01:00 is 10:15Z.
    assert_eq!(
        listed(
            &env,
            &repo,
            &["--since", "2026-11-26T11:15:01+01:00", "--failed"]
        ),
        pairs(&[("ubuntu-22.04", "2026-11-26T103000Z")])
    );
    let out = env.evidence(&repo, ["list", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
}

#[test]
fn the_commit_is_the_one_that_added_the_folder() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    std::fs::write(repo.join("notes.md"), "unrelated\n").unwrap();
    env.git(&repo, ["add", "notes.md"]);
    env.git(&repo, ["commit", "-q", "-m", "Unrelated"]);
    record(&env, &repo, "rocky9", "2026-11-26T11:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T12:00:00Z", "0");
    env.git(&repo, ["commit", "-q", "--allow-empty", "-m", "Later"]);

    let value = json(&env.evidence_ok(&repo, ["list", "--json"]));
    let runs = value.as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let mut commits = std::collections::BTreeSet::new();
    for run in runs {
        let path = run["path"].as_str().unwrap();
        let expected = env.git(&repo, ["log", "--format=%H", "-1", "main", "--", path]);
        assert_eq!(run["commit"].as_str().unwrap(), expected.trim(), "{run}");
        commits.insert(expected);
    }
    assert_eq!(commits.len(), 3, "three different commits");

    // A folder removed and brought back: the commit that brought it back added it.
    let first = format!("{UBUNTU}/2026-11-26T100000Z");
    env.git(&repo, ["rm", "-q", "-r", &first]);
    env.git(&repo, ["commit", "-q", "-m", "Remove a run"]);
    env.git(&repo, ["revert", "--no-edit", "HEAD"]);
    let back = env.git(&repo, ["rev-parse", "HEAD"]);
    let value = json(&env.evidence_ok(&repo, ["list", "--json", "--template", "ubuntu-22.04"]));
    let run = &value.as_array().unwrap()[1];
    assert_eq!(run["path"], first.as_str());
    assert_eq!(run["commit"].as_str().unwrap(), back.trim());
    assert_eq!(
        back,
        env.git(&repo, ["log", "--format=%H", "-1", "--", &first])
    );
}

#[test]
fn json_has_one_object_per_run_with_every_field() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = fixture("ok.packer.log");
    let mut args = record_args("ubuntu-22.04", &log, "2026-11-26T10:15:00Z");
    args.extend([
        "--finished-at".into(),
        "2026-11-26T10:27:13Z".into(),
        "--fact".into(),
        "vmid=9000".into(),
        "--fact".into(),
        "node=pve1".into(),
    ]);
    env.evidence_ok(&repo, args);
    let value = json(&env.evidence_ok(&repo, ["list", "--json"]));
    let runs = value.as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let run = runs[0].as_object().unwrap();
    let mut keys: Vec<&str> = run.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "commit",
            "duration_seconds",
            "kind",
            "log_bytes",
            "log_sha256",
            "node",
            "path",
            "ref",
            "run_id",
            "started_at",
            "status",
            "template",
            "vmid"
        ]
    );
    assert_eq!(run["kind"], "build");
    assert_eq!(run["template"], "ubuntu-22.04");
    assert_eq!(run["status"], "success");
    assert_eq!(run["duration_seconds"], 733.0);
    assert_eq!(run["vmid"], 9000);
    assert_eq!(run["node"], "pve1");
    assert_eq!(run["log_bytes"], std::fs::metadata(&log).unwrap().len());
    assert_eq!(run["log_sha256"], sha256sum(&log).as_str());
    assert_eq!(run["path"], format!("{UBUNTU}/2026-11-26T101500Z").as_str());
    assert!(run["ref"].is_null());
    let table = env.evidence_ok(&repo, ["list"]);
    assert!(table.contains("12m13s"), "{table}");

    // An empty repository lists nothing, and says so on stderr only.
    let empty = env.empty_repo("empty");
    assert_eq!(
        json(&env.evidence_ok(&empty, ["list", "--json"])),
        serde_json::json!([])
    );
    let out = env.evidence(&empty, ["list"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");
}

#[test]
fn list_and_show_work_in_a_bare_repository() {
    let env = Env::new();
    let repo = env.bare_repo("evidence.git");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T11:00:00Z", "1");
    assert_eq!(
        listed(&env, &repo, &["--failed"]),
        pairs(&[
            ("ubuntu-22.04", "2026-11-26T110000Z"),
            ("ubuntu-22.04", "2026-11-26T100000Z")
        ])
    );
    let value = json(&env.evidence_ok(&repo, ["list", "--json"]));
    let path = value[0]["path"].as_str().unwrap();
    let expected = env.git(&repo, ["log", "--format=%H", "-1", "main", "--", path]);
    assert_eq!(value[0]["commit"].as_str().unwrap(), expected.trim());
    let shown = json(&env.evidence_ok(&repo, ["show", "--json", "ubuntu-22.04"]));
    assert_eq!(shown["run_id"], "2026-11-26T100000Z");
}

#[test]
fn show_defaults_to_latest_and_prints_readme_then_commit() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T11:00:00Z", "0");
    let folder = format!("{UBUNTU}/2026-11-26T110000Z");
    let readme = env.git(
        &repo,
        ["cat-file", "blob", &format!("main:{folder}/README.md")],
    );
    let commit = env.git(&repo, ["log", "--format=%H", "-1", "--", &folder]);
    let subject = env.git(&repo, ["log", "--format=%s", "-1", "--", &folder]);

    let out = env.evidence_ok(&repo, ["show", "ubuntu-22.04"]);
    assert!(
        out.starts_with(&readme),
        "README.md first, as stored:\n{out}"
    );
    let tail = &out[readme.len()..];
    assert!(
        tail.contains(&format!("commit {}", commit.trim())),
        "{tail}"
    );
    assert!(
        tail.contains("Author: Build Host <builder@example.com>"),
        "{tail}"
    );
    assert!(tail.contains(subject.trim()), "{tail}");
    assert!(tail.contains("Date:   "), "{tail}");

    let shown = json(&env.evidence_ok(&repo, ["show", "--json", "ubuntu-22.04"]));
    let proof = json(&env.git(
        &repo,
        ["cat-file", "blob", &format!("main:{folder}/proof.json")],
    ));
    let mut expected = proof.as_object().unwrap().clone();
    expected.insert("commit".into(), commit.trim().into());
    expected.insert("path".into(), folder.clone().into());
    assert_eq!(shown, serde_json::Value::Object(expected));
}

#[test]
fn show_a_named_run_and_an_init_run() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T11:00:00Z", "0");
    record(&env, &repo, "init", "2026-11-26T09:00:00Z", "0");

    let shown = json(&env.evidence_ok(
        &repo,
        ["show", "--json", "ubuntu-22.04@2026-11-26T100000Z-2"],
    ));
    assert_eq!(shown["run_id"], "2026-11-26T100000Z-2");
    let folder = format!("{UBUNTU}/2026-11-26T100000Z-2");
    assert_eq!(shown["path"], folder.as_str());
    let commit = env.git(&repo, ["log", "--format=%H", "-1", "--", &folder]);
    assert_eq!(shown["commit"], commit.trim());

    let init = json(&env.evidence_ok(&repo, ["show", "--json", "init"]));
    assert_eq!(init["kind"], "init");
    assert_eq!(init["path"], "evidence/init/2026-11-26T090000Z");
    let text = env.evidence_ok(&repo, ["show", "init@2026-11-26T090000Z"]);
    assert!(text.contains("init-packer.log"), "{text}");
}

#[test]
fn show_finds_a_failed_run_on_its_ref() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T11:00:00Z", "1");
    let name = "refs/evidence/failed/builds/ubuntu-22.04/2026-11-26T110000Z";
    let folder = format!("{UBUNTU}/2026-11-26T110000Z");

    let shown =
        json(&env.evidence_ok(&repo, ["show", "--json", "ubuntu-22.04@2026-11-26T110000Z"]));
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["ref"], name);
    assert_eq!(shown["path"], folder.as_str());
    assert_eq!(shown["commit"], env.git(&repo, ["rev-parse", name]).trim());

    let readme = env.git(
        &repo,
        ["cat-file", "blob", &format!("{name}:{folder}/README.md")],
    );
    let out = env.evidence_ok(&repo, ["show", "ubuntu-22.04@2026-11-26T110000Z"]);
    assert!(out.starts_with(&readme), "{out}");
    assert!(out.contains(&format!("Ref:    {name}")), "{out}");
    // The default is still the latest success.
    let latest = json(&env.evidence_ok(&repo, ["show", "--json", "ubuntu-22.04"]));
    assert_eq!(latest["run_id"], "2026-11-26T100000Z");
}

#[test]
fn show_of_an_unknown_template_or_run_says_what_exists() {
    let env = Env::new();
    let repo = env.repo("repo");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T10:00:00Z", "0");
    record(&env, &repo, "rocky9", "2026-11-26T11:00:00Z", "0");
    record(&env, &repo, "ubuntu-22.04", "2026-11-26T12:00:00Z", "1");

    let out = env.evidence(&repo, ["show", "debian12"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("debian12"), "{err}");
    assert!(err.contains("rocky9, ubuntu-22.04"), "{err}");
    assert_eq!(stdout(&out), "");

    let out = env.evidence(&repo, ["show", "ubuntu-22.04@2026-11-26T090000Z"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("2026-11-26T090000Z"), "{err}");
    assert!(
        err.contains("2026-11-26T120000Z (failed), 2026-11-26T100000Z"),
        "{err}"
    );

    let out = env.evidence(&repo, ["show", "ubuntu-22.04@yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = env.evidence(&repo, ["show", "Not/A/Template"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
