//! Bad input: a non-zero exit, a one-line reason naming the problem, and nothing written.

use std::path::Path;

use crate::common::*;

/// Everything a failed command could have changed: refs (with values) and the status.
fn snapshot(env: &Env, repo: &Path) -> String {
    let refs = env.git(repo, ["for-each-ref", "--format=%(objectname) %(refname)"]);
    let status = env.git(repo, ["status", "--porcelain", "--untracked-files=all"]);
    format!("{refs}--\n{status}")
}

/// Runs `args` in `repo`; asserts exit 2, a first stderr line starting `error:` that contains
/// `needle`, and no change to the repository.
fn refused(env: &Env, repo: &Path, args: &[String], needle: &str) {
    let before = snapshot(env, repo);
    let out = env.evidence(repo, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "args {args:?}\nstderr: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "args {args:?}\nstderr: {err}");
    assert!(
        first.contains(needle),
        "args {args:?}: {first:?} should mention {needle:?}"
    );
    assert_eq!(stdout(&out), "", "nothing on stdout for {args:?}");
    assert_eq!(
        snapshot(env, repo),
        before,
        "repository changed by {args:?}"
    );
}

#[test]
fn bad_template_names_are_refused_with_the_rule() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    for bad in [
        "../x",
        "a/b",
        "with space",
        "Ubuntu",
        "",
        "latest",
        "-x",
        &"a".repeat(65),
    ] {
        let mut args = record_args("placeholder", &log, "2026-11-26T10:00:00Z");
        // `--template=NAME` so that names starting with '-' reach the validation.
        args.splice(1..3, [format!("--template={bad}")]);
        refused(&env, &repo, &args, "invalid template name");
        let out = env.evidence(&repo, &args);
        assert!(stderr(&out).contains("a-z, 0-9"), "the rule is stated");
    }
}

#[test]
fn a_missing_log_is_refused() {
    let env = Env::new();
    let repo = env.repo("repo");
    let missing = env.path().join("no-such.log");
    refused(
        &env,
        &repo,
        &record_args("t", &missing, "2026-11-26T10:00:00Z"),
        "no-such.log",
    );
    let dir = env.path().join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    refused(
        &env,
        &repo,
        &record_args("t", &dir, "2026-11-26T10:00:00Z"),
        "a-dir",
    );
}

#[test]
fn outside_a_repository_is_refused() {
    let env = Env::new();
    let plain = env.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let log = env.file("packer.log", b"log\n");
    let mut cmd = env.evidence_cmd(&plain);
    cmd.args(record_args("t", &log, "2026-11-26T10:00:00Z"))
        .env("GIT_CEILING_DIRECTORIES", env.path());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: not a git repository"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: "), "{}", stderr(&out));
}

#[test]
fn malformed_facts_times_and_combinations_are_refused() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    let with = |extra: &[&str]| {
        let mut args = record_args("t", &log, "2026-11-26T10:00:00Z");
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    refused(
        &env,
        &repo,
        &with(&["--fact", "novalue"]),
        "invalid fact \"novalue\"",
    );
    refused(&env, &repo, &with(&["--fact", "=x"]), "invalid fact");
    refused(
        &env,
        &repo,
        &with(&["--fact", "vmid=abc"]),
        "vmid must be a non-negative integer",
    );
    refused(
        &env,
        &repo,
        &with(&["--finished-at", "yesterday"]),
        "invalid --finished-at \"yesterday\"",
    );
    refused(
        &env,
        &repo,
        &with(&["--finished-at", "2026-11-26T09:00:00Z"]),
        "is before --started-at",
    );
    let mut args = with(&["--status", "success"]);
    let at = args.iter().position(|a| a == "--exit-code").unwrap();
    args[at + 1] = "1".into();
    refused(&env, &repo, &args, "does not match exit code");
    refused(
        &env,
        &repo,
        &with(&["--root", "../outside"]),
        "invalid evidence root",
    );
    refused(
        &env,
        &repo,
        &with(&["--branch", "bad..name"]),
        "invalid branch name",
    );
    refused(
        &env,
        &repo,
        &with(&["--kind", "init"]),
        "--kind init takes no --template",
    );
    args = record_args("t", &log, "26/11/2026");
    refused(&env, &repo, &args, "invalid --started-at \"26/11/2026\"");
    args = vec![
        "record".into(),
        "--log".into(),
        log.display().to_string(),
        "--exit-code".into(),
        "0".into(),
    ];
    refused(&env, &repo, &args, "needs --template");
}

#[test]
fn a_detached_head_needs_a_branch() {
    let env = Env::new();
    let repo = env.repo("repo");
    env.git(&repo, ["checkout", "-q", "--detach"]);
    let log = env.file("packer.log", b"log\n");
    let out = env.evidence(&repo, record_args("t", &log, "2026-11-26T10:00:00Z"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: HEAD is detached"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--branch"), "{}", stderr(&out));
    let mut args = record_args("t", &log, "2026-11-26T10:00:00Z");
    args.extend(["--branch".into(), "main".into()]);
    env.evidence_ok(&repo, &args);
    let files = env.git(&repo, ["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.contains("evidence/builds/t/latest"), "{files}");
}

#[test]
fn missing_arguments_are_usage_errors() {
    let env = Env::new();
    let repo = env.repo("repo");
    let out = env.evidence(&repo, ["record", "--template", "t"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--log"), "{}", stderr(&out));
}
