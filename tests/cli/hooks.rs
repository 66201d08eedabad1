//! Git hooks: a bare "server" with the pre-receive hook installed by `hooks install --server`,
//! client clones, and real `git push` / `git commit` through the git CLI. The shims call
//! `git-evidence` by name, so the test binary's directory comes first on PATH.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use git_evidence::proof::Proof;
use git_evidence::render;

use crate::common::*;

const RUN1: &str = "evidence/builds/t/2026-11-26T100000Z";
const RUN2: &str = "evidence/builds/t/2026-11-26T110000Z";

/// PATH with the directory of the `git-evidence` under test first.
fn path_with_binary() -> OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_git-evidence"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// A `git` command in `cwd` that finds `git-evidence` on PATH.
fn git_cmd(env: &Env, cwd: &Path) -> Command {
    let mut cmd = env.git_cmd(cwd);
    cmd.env("PATH", path_with_binary());
    cmd
}

fn git_out(env: &Env, cwd: &Path, args: &[&str]) -> Output {
    git_cmd(env, cwd).args(args).output().expect("run git")
}

fn git_ok(env: &Env, cwd: &Path, args: &[&str]) -> String {
    ok(git_cmd(env, cwd).args(args))
}

fn rev(env: &Env, repo: &Path, what: &str) -> String {
    env.git(repo, ["rev-parse", what]).trim().to_owned()
}

/// The bare server with the pre-receive hook installed, and a client clone with two runs pushed.
fn setup(env: &Env) -> (PathBuf, PathBuf) {
    let server = env.bare_repo("server.git");
    let out = env.evidence_ok(&server, ["hooks", "install", "--server"]);
    assert!(out.contains("pre-receive"), "{out}");
    let client = clone(env, &server, "client");
    let log1 = env.file("one.log", b"first build\nok\n");
    let log2 = env.file("two.log", b"second build\nok\n");
    env.evidence_ok(&client, record_args("t", &log1, "2026-11-26T10:00:00Z"));
    env.evidence_ok(&client, record_args("t", &log2, "2026-11-26T11:00:00Z"));
    git_ok(env, &client, &["push", "-q", "origin", "main"]);
    assert_eq!(rev(env, &server, "main"), rev(env, &client, "main"));
    (server, client)
}

fn clone(env: &Env, server: &Path, name: &str) -> PathBuf {
    env.git(env.path(), ["clone", "-q", server.to_str().unwrap(), name]);
    env.path().join(name)
}

/// Writes `bytes` as a blob; returns its id.
fn blob(env: &Env, repo: &Path, bytes: &[u8]) -> String {
    let file = env.file("blob.tmp", bytes);
    env.git(repo, ["hash-object", "-w", file.to_str().unwrap()])
        .trim()
        .to_owned()
}

enum Edit<'a> {
    Remove(&'a str),
    Set(&'a str, &'a str, String),
}

/// A commit of `base`'s tree with `edits`, parent `parent`, on `branch` (created or moved).
fn commit_edit(env: &Env, repo: &Path, branch: &str, edits: &[Edit<'_>], message: &str) {
    let index = env.path().join("tamper.index");
    let _ = std::fs::remove_file(&index);
    let git = |args: &[&str]| {
        let mut cmd = env.git_cmd(repo);
        cmd.env("GIT_INDEX_FILE", &index).args(args);
        ok(&mut cmd)
    };
    git(&["read-tree", "main"]);
    for edit in edits {
        match edit {
            Edit::Remove(path) => git(&["update-index", "--force-remove", path]),
            Edit::Set(path, mode, id) => git(&[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("{mode},{id},{path}"),
            ]),
        };
    }
    let tree = git(&["write-tree"]).trim().to_owned();
    let parent = rev(env, repo, "main");
    let id = env.git(repo, ["commit-tree", &tree, "-p", &parent, "-m", message]);
    env.git(
        repo,
        ["update-ref", &format!("refs/heads/{branch}"), id.trim()],
    );
}

/// `git push origin <refspec>` must fail, show `needle` in git's output, and leave the server's
/// `branch` at `before`.
fn expect_rejected(
    env: &Env,
    client: &Path,
    server: &Path,
    push: &[&str],
    needle: &str,
    branch: &str,
    before: Option<&str>,
) -> String {
    let mut args = vec!["push", "origin"];
    args.extend_from_slice(push);
    let out = git_out(env, client, &args);
    let text = stderr(&out) + &stdout(&out);
    assert!(
        !out.status.success(),
        "push {push:?} should be rejected:\n{text}"
    );
    assert!(
        text.contains(needle),
        "push {push:?} should show {needle:?}:\n{text}"
    );
    let after = env
        .git_cmd(server)
        .args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ])
        .output()
        .unwrap();
    let after = stdout(&after).trim().to_owned();
    assert_eq!(
        after,
        before.unwrap_or(""),
        "the server's {branch} must not move"
    );
    text
}

#[test]
fn clean_and_unrelated_pushes_are_accepted() {
    let env = Env::new();
    let (server, client) = setup(&env);
    // A third run, then an ordinary commit that does not touch evidence.
    let log3 = env.file("three.log", b"third build\n");
    env.evidence_ok(&client, record_args("t", &log3, "2026-11-26T12:00:00Z"));
    git_ok(&env, &client, &["push", "-q", "origin", "main"]);
    std::fs::write(client.join("notes.txt"), "hello\n").unwrap();
    git_ok(&env, &client, &["add", "notes.txt"]);
    git_ok(&env, &client, &["commit", "-q", "-m", "notes"]);
    git_ok(&env, &client, &["push", "-q", "origin", "main"]);
    assert_eq!(rev(&env, &server, "main"), rev(&env, &client, "main"));
    // A new branch with good evidence.
    git_ok(&env, &client, &["push", "-q", "origin", "main:copy"]);
    assert_eq!(rev(&env, &server, "copy"), rev(&env, &client, "main"));
    // A force-push that drops only a non-evidence commit is fine.
    git_ok(&env, &client, &["reset", "-q", "--hard", "HEAD~1"]);
    git_ok(&env, &client, &["push", "-q", "--force", "origin", "main"]);
    assert_eq!(rev(&env, &server, "main"), rev(&env, &client, "main"));
    // Deleting a branch passes.
    git_ok(&env, &client, &["push", "-q", "origin", ":copy"]);
    assert!(!env.git(&server, ["branch"]).contains("copy"));
}

#[test]
fn tampered_pushes_are_rejected_by_pre_receive() {
    let env = Env::new();
    let (server, client) = setup(&env);
    let before = rev(&env, &server, "main");

    // One byte of a log changed in a new commit.
    let c = clone(&env, &server, "c1");
    let log = format!("{RUN1}/packer.log");
    let mut bytes = env
        .git(&c, ["cat-file", "blob", &format!("main:{log}")])
        .into_bytes();
    bytes[0] ^= 1;
    let id = blob(&env, &c, &bytes);
    commit_edit(
        &env,
        &c,
        "main",
        &[Edit::Set(&log, "100644", id)],
        "fix log",
    );
    let text = expect_rejected(
        &env,
        &c,
        &server,
        &["main"],
        "run folder modified",
        "main",
        Some(&before),
    );
    assert!(text.contains("remote: evidence:"), "{text}");
    assert!(text.contains(&log), "{text}");

    // `latest` moved back.
    let c = clone(&env, &server, "c2");
    let id = blob(&env, &c, b"2026-11-26T100000Z");
    commit_edit(
        &env,
        &c,
        "main",
        &[Edit::Set("evidence/builds/t/latest", "120000", id)],
        "move latest",
    );
    expect_rejected(
        &env,
        &c,
        &server,
        &["main"],
        "moved back",
        "main",
        Some(&before),
    );

    // A proof deleted.
    let c = clone(&env, &server, "c3");
    let proof = format!("{RUN2}/proof.json");
    commit_edit(&env, &c, "main", &[Edit::Remove(&proof)], "drop proof");
    expect_rejected(
        &env,
        &c,
        &server,
        &["main"],
        &format!("{RUN2}/proof.json: missing"),
        "main",
        Some(&before),
    );

    // A run folder made by hand: recorded, then re-committed without trailers.
    let c = clone(&env, &server, "c4");
    let log3 = env.file("three.log", b"third build\n");
    env.evidence_ok(&c, record_args("t", &log3, "2026-11-26T12:00:00Z"));
    let tree = rev(&env, &c, "main^{tree}");
    let id = env.git(&c, ["commit-tree", &tree, "-p", &before, "-m", "my run"]);
    env.git(&c, ["update-ref", "refs/heads/main", id.trim()]);
    expect_rejected(
        &env,
        &c,
        &server,
        &["main"],
        "no Evidence-* trailers",
        "main",
        Some(&before),
    );

    // The clean client can still push.
    git_ok(&env, &client, &["push", "-q", "origin", "main"]);
}

#[test]
fn a_force_push_dropping_evidence_is_rejected() {
    let env = Env::new();
    let (server, client) = setup(&env);
    let before = rev(&env, &server, "main");
    git_ok(&env, &client, &["reset", "-q", "--hard", "HEAD~1"]);
    let text = expect_rejected(
        &env,
        &client,
        &server,
        &["--force", "main"],
        "drops 1 commits that recorded evidence",
        "main",
        Some(&before),
    );
    assert!(text.contains(&before[..10]), "{text}");
}

#[test]
fn a_new_branch_with_bad_evidence_is_rejected() {
    let env = Env::new();
    let (server, client) = setup(&env);
    let log = format!("{RUN2}/packer.log");
    let id = blob(&env, &client, b"not the log\n");
    commit_edit(
        &env,
        &client,
        "bad",
        &[Edit::Set(&log, "100644", id)],
        "bad",
    );
    expect_rejected(
        &env,
        &client,
        &server,
        &["bad"],
        &format!("{log}: SHA-256"),
        "bad",
        None,
    );
}

#[test]
fn failed_run_refs_are_checked_on_push() {
    let env = Env::new();
    let (server, client) = setup(&env);
    let log = env.file("bad.log", b"boom\n");
    let mut args = record_args("t", &log, "2026-11-26T12:00:00Z");
    let at = args.iter().position(|a| a == "--exit-code").unwrap();
    args[at + 1] = "1".into();
    env.evidence_ok(&client, &args);
    let name = "refs/evidence/failed/builds/t/2026-11-26T120000Z";
    git_ok(
        &env,
        &client,
        &["push", "-q", "origin", &format!("{name}:{name}")],
    );
    assert_eq!(rev(&env, &server, name), rev(&env, &client, name));

    // The same run re-committed with a lying trailer.
    let msg = env.git(&client, ["log", "-1", "--format=%B", name]);
    let bad = msg.replace("Evidence-Status: failed", "Evidence-Status: success");
    assert_ne!(bad, msg);
    let tree = rev(&env, &client, &format!("{name}^{{tree}}"));
    let id = env.git(&client, ["commit-tree", &tree, "-m", &bad]);
    let other = "refs/evidence/failed/builds/t/2026-11-26T130000Z";
    env.git(&client, ["update-ref", other, id.trim()]);
    let out = git_out(
        &env,
        &client,
        &["push", "origin", &format!("{other}:{other}")],
    );
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("trailer Evidence-Status"), "{text}");
    let gone = env
        .git_cmd(&server)
        .args(["rev-parse", "--verify", "-q", other])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the failed ref must not be created");
}

#[test]
fn pre_push_rejects_before_anything_leaves() {
    let env = Env::new();
    // A server without hooks: only the client's pre-push can refuse.
    let server = env.bare_repo("plain.git");
    let client = clone(&env, &server, "client");
    let out = env.evidence_ok(&client, ["hooks", "install"]);
    assert!(
        out.contains("pre-push") && out.contains("pre-commit"),
        "{out}"
    );
    let log1 = env.file("one.log", b"first build\nok\n");
    env.evidence_ok(&client, record_args("t", &log1, "2026-11-26T10:00:00Z"));
    git_ok(&env, &client, &["push", "-q", "origin", "main"]);
    let before = rev(&env, &server, "main");
    assert_eq!(before, rev(&env, &client, "main"));

    let log = format!("{RUN1}/packer.log");
    let id = blob(&env, &client, b"forged\n");
    commit_edit(
        &env,
        &client,
        "main",
        &[Edit::Set(&log, "100644", id)],
        "forge",
    );
    let text = expect_rejected(
        &env,
        &client,
        &server,
        &["main"],
        "run folder modified",
        "main",
        Some(&before),
    );
    assert!(!text.contains("remote:"), "pre-push runs locally:\n{text}");
    let new = rev(&env, &client, "main");
    let has = env
        .git_cmd(&server)
        .args(["cat-file", "-e", &new])
        .output()
        .unwrap();
    assert!(!has.status.success(), "nothing may reach the server");

    // And a force-push that drops evidence is refused too.
    git_ok(
        &env,
        &client,
        &["update-ref", "refs/heads/main", &format!("{before}~1")],
    );
    expect_rejected(
        &env,
        &client,
        &server,
        &["--force", "main"],
        "drops 1 commits",
        "main",
        Some(&before),
    );
}

#[test]
fn pre_commit_refuses_edits_of_proofs() {
    let env = Env::new();
    let repo = env.repo("repo");
    env.evidence_ok(&repo, ["hooks", "install"]);
    let log1 = env.file("one.log", b"first build\nok\n");
    env.evidence_ok(&repo, record_args("t", &log1, "2026-11-26T10:00:00Z"));
    let head = rev(&env, &repo, "HEAD");

    let log = format!("{RUN1}/packer.log");
    std::fs::write(repo.join(&log), "edited\n").unwrap();
    git_ok(&env, &repo, &["add", &log]);
    let out = git_out(&env, &repo, &["commit", "-q", "-m", "edit"]);
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&log), "{text}");
    assert!(
        text.contains("git restore --staged --worktree --"),
        "{text}"
    );
    assert_eq!(rev(&env, &repo, "HEAD"), head);

    // `git commit -a` of a deletion is refused as well (git uses a temporary index).
    git_ok(
        &env,
        &repo,
        &["restore", "--staged", "--worktree", "--", &log],
    );
    std::fs::remove_file(repo.join("evidence/README.md")).unwrap();
    let out = git_out(&env, &repo, &["commit", "-q", "-a", "-m", "drop index"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("evidence/README.md"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rev(&env, &repo, "HEAD"), head);
    git_ok(&env, &repo, &["restore", "--", "evidence/README.md"]);

    // An unrelated commit is fine.
    std::fs::write(repo.join("notes.txt"), "hello\n").unwrap();
    git_ok(&env, &repo, &["add", "notes.txt"]);
    git_ok(&env, &repo, &["commit", "-q", "-m", "notes"]);
    assert_ne!(rev(&env, &repo, "HEAD"), head);
}

#[test]
fn hooks_install_never_overwrites_a_different_hook() {
    let env = Env::new();
    let repo = env.repo("repo");
    let hook = repo.join(".git/hooks/pre-push");
    std::fs::write(&hook, "#!/bin/sh\necho mine\n").unwrap();
    let out = env.evidence(&repo, ["hooks", "install"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("pre-push"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&hook).unwrap(),
        "#!/bin/sh\necho mine\n"
    );
    // pre-commit was still installed.
    let shim = std::fs::read_to_string(repo.join(".git/hooks/pre-commit")).unwrap();
    assert!(shim.contains("exec git-evidence hook pre-commit"), "{shim}");

    let out = env.evidence_ok(&repo, ["hooks", "install", "--force"]);
    assert!(out.contains("installed"), "{out}");
    assert!(out.contains("already installed"), "{out}");
    let shim = std::fs::read_to_string(&hook).unwrap();
    assert!(shim.contains("exec git-evidence hook pre-push"), "{shim}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&hook).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    }
    // Identical hooks are left as they are: no error without --force.
    let out = env.evidence_ok(&repo, ["hooks", "install"]);
    assert_eq!(out.matches("already installed").count(), 2, "{out}");
}

#[test]
fn hooks_install_honours_core_hooks_path() {
    let env = Env::new();
    let repo = env.repo("repo");
    env.git(&repo, ["config", "core.hooksPath", "my-hooks"]);
    env.evidence_ok(&repo, ["hooks", "install"]);
    assert!(repo.join("my-hooks/pre-push").is_file());
    assert!(repo.join("my-hooks/pre-commit").is_file());
    assert!(!repo.join(".git/hooks/pre-push").exists());
    // git agrees on where hooks are.
    let path = env.git(&repo, ["rev-parse", "--git-path", "hooks"]);
    assert_eq!(
        std::fs::canonicalize(repo.join(path.trim())).unwrap(),
        std::fs::canonicalize(repo.join("my-hooks")).unwrap()
    );
}

/// Log, proof.json and README.md of RUN2 at `main`, rewritten so that they agree.
fn consistent_rewrite(env: &Env, repo: &Path) -> Vec<(String, String)> {
    let new_log = b"a different log\n";
    let proof = format!("{RUN2}/proof.json");
    let text = env.git(repo, ["cat-file", "blob", &format!("main:{proof}")]);
    let mut proof: Proof = serde_json::from_str(&text).unwrap();
    proof.log_sha256 = sha256sum(&env.file("forged.log", new_log));
    proof.log_bytes = new_log.len() as u64;
    let text = serde_json::to_string_pretty(&proof).unwrap() + "\n";
    vec![
        (format!("{RUN2}/packer.log"), blob(env, repo, new_log)),
        (
            format!("{RUN2}/proof.json"),
            blob(env, repo, text.as_bytes()),
        ),
        (
            format!("{RUN2}/README.md"),
            blob(env, repo, render::run_readme(&proof).as_bytes()),
        ),
    ]
}

/// A tamper case: `make` builds a bad commit on the client's `main`, whose push must be rejected
/// with `needle` on a `remote: evidence:` line.
struct Case {
    name: &'static str,
    make: fn(&Env, &Path),
    needle: String,
}

fn tamper_cases() -> Vec<Case> {
    vec![
        Case {
            name: "log, proof.json and README.md rewritten consistently",
            make: |env, c| {
                let files = consistent_rewrite(env, c);
                let edits: Vec<Edit<'_>> = files
                    .iter()
                    .map(|(p, id)| Edit::Set(p, "100644", id.clone()))
                    .collect();
                commit_edit(env, c, "main", &edits, "rewrite run");
            },
            needle: format!("{RUN2}: run folder modified"),
        },
        Case {
            name: "latest dangling",
            make: |env, c| {
                let id = blob(env, c, b"2026-11-26T230000Z");
                commit_edit(
                    env,
                    c,
                    "main",
                    &[Edit::Set("evidence/builds/t/latest", "120000", id)],
                    "dangle latest",
                );
            },
            needle: "which is not a run folder".into(),
        },
        Case {
            name: "run folder renamed",
            make: |env, c| {
                let renamed = "evidence/builds/t/2026-11-26T093000Z";
                let paths: Vec<(String, String)> = ["README.md", "packer.log", "proof.json"]
                    .iter()
                    .map(|f| (format!("{RUN1}/{f}"), format!("{renamed}/{f}")))
                    .collect();
                let mut edits = Vec::new();
                for (old, new) in &paths {
                    let id = rev(env, c, &format!("main:{old}"));
                    edits.push(Edit::Remove(old));
                    edits.push(Edit::Set(new, "100644", id));
                }
                commit_edit(env, c, "main", &edits, "rename run");
            },
            needle: format!("{RUN1}: run folder deleted or renamed"),
        },
        Case {
            name: "proof.json not JSON",
            make: |env, c| {
                let proof = format!("{RUN1}/proof.json");
                let id = blob(env, c, b"{ not json");
                commit_edit(
                    env,
                    c,
                    "main",
                    &[Edit::Set(&proof, "100644", id)],
                    "break proof",
                );
            },
            needle: format!("{RUN1}/proof.json: proof.json is not JSON"),
        },
        Case {
            name: "stray file in a run folder",
            make: |env, c| {
                let stray = format!("{RUN1}/notes.txt");
                let id = blob(env, c, b"hi\n");
                commit_edit(
                    env,
                    c,
                    "main",
                    &[Edit::Set(&stray, "100644", id)],
                    "add notes",
                );
            },
            needle: format!("{RUN1}/notes.txt: unexpected file in a run folder"),
        },
        Case {
            name: "index README.md edited by hand",
            make: |env, c| {
                let index = env.git(c, ["cat-file", "blob", "main:evidence/README.md"]);
                let id = blob(env, c, (index + "\nAll good!\n").as_bytes());
                commit_edit(
                    env,
                    c,
                    "main",
                    &[Edit::Set("evidence/README.md", "100644", id)],
                    "edit index",
                );
            },
            needle: "tree evidence/README.md: differs from the index".into(),
        },
        Case {
            name: "a new run whose trailer disagrees with its proof.json",
            make: |env, c| {
                // A real record with vmid 9000, re-committed onto the tip with a forged trailer.
                let tip = rev(env, c, "main");
                let log3 = env.file("three.log", b"third build\n");
                let mut args = record_args("t", &log3, "2026-11-26T12:00:00Z");
                args.extend(["--fact".into(), "vmid=9000".into()]);
                env.evidence_ok(c, &args);
                let msg = env.git(c, ["log", "-1", "--format=%B", "main"]);
                let bad = msg.replace("Evidence-VMID: 9000", "Evidence-VMID: 9001");
                assert_ne!(
                    bad, msg,
                    "the record's message has an Evidence-VMID trailer"
                );
                let tree = rev(env, c, "main^{tree}");
                let id = env.git(c, ["commit-tree", &tree, "-p", &tip, "-m", &bad]);
                env.git(c, ["update-ref", "refs/heads/main", id.trim()]);
            },
            needle: "trailer Evidence-VMID is \"9001\"".into(),
        },
    ]
}

#[test]
fn every_tamper_case_is_rejected_by_pre_receive() {
    let env = Env::new();
    let (server, client) = setup(&env);
    let before = rev(&env, &server, "main");
    for (i, case) in tamper_cases().iter().enumerate() {
        let name = case.name;
        let c = clone(&env, &server, &format!("case{i}"));
        (case.make)(&env, &c);
        let pushed = rev(&env, &c, "main");
        assert_ne!(pushed, before, "[{name}] no commit was made to push");
        let out = git_out(&env, &c, &["push", "origin", "main"]);
        let text = stderr(&out) + &stdout(&out);
        assert!(
            !out.status.success(),
            "[{name}] the push should be rejected:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("remote: evidence:") && l.contains(&case.needle)),
            "[{name}] the push should show `remote: evidence:` with {:?}:\n{text}",
            case.needle
        );
        assert_eq!(
            rev(&env, &server, "main"),
            before,
            "[{name}] the server's main must not move"
        );
        let has = env
            .git_cmd(&server)
            .args(["cat-file", "-e", &pushed])
            .output()
            .unwrap();
        assert!(
            !has.status.success(),
            "[{name}] the rejected commit must not be left on the server"
        );
    }
    // The clean client can still push.
    let log3 = env.file("three.log", b"third build\n");
    env.evidence_ok(&client, record_args("t", &log3, "2026-11-26T12:00:00Z"));
    git_ok(&env, &client, &["push", "-q", "origin", "main"]);
    assert_eq!(rev(&env, &server, "main"), rev(&env, &client, "main"));
}
