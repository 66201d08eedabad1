//! `review A..B`: the new runs, `latest` moves and verify result of a range, as Markdown or JSON.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A repository with one run of `t` on `main`, and a branch `pr` adding two more runs of `t`
/// (the newer one with VMID, node and duration) and one of `u`.
fn setup(env: &Env) -> PathBuf {
    let repo = env.repo("repo");
    let log1 = env.file("one.log", b"first build\nok\n");
    env.evidence_ok(&repo, record_args("t", &log1, "2026-11-26T10:00:00Z"));
    env.git(&repo, ["checkout", "-q", "-b", "pr"]);
    let log2 = env.file("two.log", b"second build\nok\n");
    env.evidence_ok(&repo, record_args("t", &log2, "2026-11-26T11:00:00Z"));
    let log3 = env.file("three.log", &b"third build, a longer log\n".repeat(100));
    let mut args = record_args("t", &log3, "2026-11-26T12:00:00Z");
    args.extend(
        [
            "--finished-at",
            "2026-11-26T12:12:13Z",
            "--fact",
            "vmid=9000",
            "--fact",
            "node=pve1",
        ]
        .map(String::from),
    );
    env.evidence_ok(&repo, &args);
    repo
}

fn normalise(text: &str, env: &Env, repo: &Path) -> String {
    let mut text = text.replace(env!("CARGO_PKG_VERSION"), "[version]");
    for line in env.git(repo, ["rev-list", "--all"]).lines() {
        text = text.replace(&line[..10], "[commit]");
    }
    text
}

#[test]
fn a_branch_with_new_runs_shows_both_rows_and_the_latest_move() {
    let env = Env::new();
    let repo = setup(&env);
    let out = env.evidence(&repo, ["review", "main..pr"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains("| t | `2026-11-26T110000Z` | success |"),
        "{text}"
    );
    assert!(
        text.contains("| t | `2026-11-26T120000Z` | success | 9000 / pve1 | 12m13s |"),
        "{text}"
    );
    assert!(!text.contains("2026-11-26T100000Z` |"), "{text}");
    assert!(
        text.contains("- t: `2026-11-26T100000Z` → `2026-11-26T120000Z`"),
        "{text}"
    );
    assert!(text.contains(": OK**"), "{text}");
    insta::assert_snapshot!("review_markdown", normalise(&text, &env, &repo));
    // A.. means A..HEAD, and --format markdown is the default.
    let head = env.evidence_ok(&repo, ["review", "main..", "--format", "markdown"]);
    assert_eq!(head.replace("main..", "main..pr"), text);
}

#[test]
fn json_has_the_same_data() {
    let env = Env::new();
    let repo = setup(&env);
    let v = json(&env.evidence_ok(&repo, ["review", "main..pr", "--format", "json"]));
    assert_eq!(v["range"], "main..pr");
    assert_eq!(v["ok"], true);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v:#}");
    assert_eq!(runs[0]["run_id"], "2026-11-26T120000Z");
    assert_eq!(runs[0]["vmid"], 9000);
    assert_eq!(runs[0]["node"], "pve1");
    assert_eq!(runs[0]["template"], "t");
    let adder = env.git(&repo, ["rev-parse", "pr"]);
    assert_eq!(runs[0]["commit"], adder.trim());
    assert_eq!(runs[1]["run_id"], "2026-11-26T110000Z");
    assert_eq!(
        v["latest_moves"],
        serde_json::json!([{"template": "t", "from": "2026-11-26T100000Z", "to": "2026-11-26T120000Z"}])
    );
    assert_eq!(v["verify"]["ok"], true);
    assert_eq!(v["verify"]["problems"], serde_json::json!([]));
    // The global --json gives the same.
    let again = json(&env.evidence_ok(&repo, ["review", "main..pr", "--json"]));
    assert_eq!(again, v);
}

#[test]
fn a_tampered_range_exits_1_with_the_problem_in_the_report() {
    let env = Env::new();
    let repo = setup(&env);
    let log = repo.join("evidence/builds/t/2026-11-26T100000Z/packer.log");
    std::fs::write(&log, b"first build\nrewritten\n").unwrap();
    env.git(&repo, ["commit", "-q", "-am", "tidy the log"]);
    let out = env.evidence(&repo, ["review", "main..pr"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("2 new runs"), "{text}");
    assert!(text.contains("problem"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("- `")
            && l.contains("evidence/builds/t/2026-11-26T100000Z")
            && l.contains("run folder modified")),
        "{text}"
    );
    let out = env.evidence(&repo, ["review", "main..pr", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&stdout(&out));
    assert_eq!(v["ok"], false);
    assert!(!v["verify"]["problems"].as_array().unwrap().is_empty());
}

#[test]
fn an_empty_range_says_there_is_no_new_evidence() {
    let env = Env::new();
    let repo = setup(&env);
    let out = env.evidence(&repo, ["review", "pr..pr"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("No new evidence"), "{text}");
    assert!(!text.contains("`latest` moves"), "{text}");
    let v = json(&env.evidence_ok(&repo, ["review", "pr..pr", "--json"]));
    assert_eq!(v["runs"], serde_json::json!([]));
    assert_eq!(v["latest_moves"], serde_json::json!([]));
}

#[test]
fn a_bad_range_exits_2() {
    let env = Env::new();
    let repo = setup(&env);
    for range in ["pr", "main..nope"] {
        let out = env.evidence(&repo, ["review", range]);
        assert_eq!(out.status.code(), Some(2), "{range}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    }
}
