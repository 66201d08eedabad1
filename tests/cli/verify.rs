//! `verify`: clean evidence passes; every kind of tampering, made with real git plumbing, is
//! reported with exit code 1 and the path it concerns.

use std::path::{Path, PathBuf};
use std::process::Output;

use git_evidence::proof::Proof;
use git_evidence::render;

use crate::common::*;

const RUN1: &str = "evidence/builds/t/2026-11-26T100000Z";
const RUN2: &str = "evidence/builds/t/2026-11-26T110000Z";

/// A repository with two successful runs of `t` and one init run.
fn setup(env: &Env) -> PathBuf {
    let repo = env.repo("repo");
    let log1 = env.file("one.log", b"first build\nok\n");
    let log2 = env.file("two.log", b"second build\nok\n");
    env.evidence_ok(&repo, record_args("t", &log1, "2026-11-26T10:00:00Z"));
    let mut args = record_args("t", &log2, "2026-11-26T11:00:00Z");
    args.extend(["--fact".into(), "vmid=9000".into()]);
    env.evidence_ok(&repo, &args);
    let init = env.file("init.log", b"installed plugins\n");
    env.evidence_ok(
        &repo,
        [
            "record",
            "--kind",
            "init",
            "--log",
            init.to_str().unwrap(),
            "--exit-code",
            "0",
            "--started-at",
            "2026-11-26T09:00:00Z",
        ],
    );
    repo
}

fn verify(env: &Env, repo: &Path, args: &[&str]) -> Output {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    env.evidence(repo, all)
}

/// `verify args…` must exit 1 and name `needle` in a problem line.
fn expect_problem(env: &Env, repo: &Path, args: &[&str], needle: &str) -> String {
    let out = verify(env, repo, args);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify {args:?} should find problems:\n{text}{}",
        stderr(&out)
    );
    assert!(
        text.lines().any(|l| l.contains(needle)),
        "verify {args:?} should report {needle:?}:\n{text}"
    );
    text
}

fn expect_clean(env: &Env, repo: &Path, args: &[&str]) -> String {
    let out = verify(env, repo, args);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify {args:?} should pass:\n{text}{}",
        stderr(&out)
    );
    assert!(text.contains(" 0 problems"), "{text}");
    text
}

/// Writes `bytes` as a blob; returns its id.
fn blob(env: &Env, repo: &Path, bytes: &[u8]) -> String {
    let file = env.file("blob.tmp", bytes);
    env.git(repo, ["hash-object", "-w", file.to_str().unwrap()])
        .trim()
        .to_owned()
}

/// The blob at `rev:path`.
fn cat(env: &Env, repo: &Path, rev: &str, path: &str) -> String {
    env.git(repo, ["cat-file", "blob", &format!("{rev}:{path}")])
}

fn rev(env: &Env, repo: &Path, what: &str) -> String {
    env.git(repo, ["rev-parse", what]).trim().to_owned()
}

/// A change to a tree: remove a path, or set it to (mode, blob).
enum Edit<'a> {
    Remove(&'a str),
    Set(&'a str, &'a str, String),
}

/// The tree of `base` with `edits` applied, built in a temporary index.
fn edited_tree(env: &Env, repo: &Path, base: &str, edits: &[Edit<'_>]) -> String {
    let index = env.path().join("tamper.index");
    let _ = std::fs::remove_file(&index);
    let git = |args: &[&str]| {
        let mut cmd = env.git_cmd(repo);
        cmd.env("GIT_INDEX_FILE", &index).args(args);
        ok(&mut cmd)
    };
    git(&["read-tree", base]);
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
    git(&["write-tree"]).trim().to_owned()
}

/// Commits `tree` with `parent` and `message` and points main at it.
fn commit_tree(env: &Env, repo: &Path, tree: &str, parent: &str, message: &str) {
    let id = env.git(repo, ["commit-tree", tree, "-p", parent, "-m", message]);
    env.git(repo, ["update-ref", "refs/heads/main", id.trim()]);
}

/// A new commit on main: HEAD's tree with `edits`.
fn tamper(env: &Env, repo: &Path, edits: &[Edit<'_>]) {
    let tree = edited_tree(env, repo, "HEAD", edits);
    commit_tree(env, repo, &tree, "HEAD", "hand edit");
}

/// Replaces HEAD (keeping its parent) by a commit of HEAD's tree with `edits` and `message`.
fn rewrite_head(env: &Env, repo: &Path, edits: &[Edit<'_>], message: &str) {
    let tree = edited_tree(env, repo, "HEAD", edits);
    let parent = rev(env, repo, "HEAD^");
    commit_tree(env, repo, &tree, &parent, message);
}

#[test]
fn clean_evidence_verifies() {
    let env = Env::new();
    let repo = setup(&env);
    let text = expect_clean(&env, &repo, &[]);
    assert!(text.contains("3 runs checked, 0 problems"), "{text}");
    expect_clean(&env, &repo, &["HEAD"]);
    expect_clean(&env, &repo, &["HEAD~2..HEAD"]);

    let out = verify(&env, &repo, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&stdout(&out));
    assert_eq!(v["ok"], true);
    assert_eq!(v["runs_checked"], 3);
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn clean_evidence_verifies_in_a_bare_clone() {
    let env = Env::new();
    let repo = setup(&env);
    env.git(
        env.path(),
        ["clone", "-q", "--bare", repo.to_str().unwrap(), "bare.git"],
    );
    let bare = env.path().join("bare.git");
    let text = expect_clean(&env, &bare, &[]);
    assert!(text.contains("3 runs checked"), "{text}");
}

#[test]
fn failed_runs_verify_with_failed() {
    let env = Env::new();
    let repo = setup(&env);
    let log = env.file("bad.log", b"boom\n");
    let mut args = record_args("t", &log, "2026-11-26T12:00:00Z");
    let at = args.iter().position(|a| a == "--exit-code").unwrap();
    args[at + 1] = "1".into();
    env.evidence_ok(&repo, &args);
    let text = expect_clean(&env, &repo, &["--failed"]);
    assert!(text.contains("4 runs checked"), "{text}");

    // A failed-run commit whose trailer disagrees is caught.
    let name = "refs/evidence/failed/builds/t/2026-11-26T120000Z";
    let msg = env.git(&repo, ["log", "-1", "--format=%B", name]);
    let bad = msg.replace("Evidence-Status: failed", "Evidence-Status: success");
    assert_ne!(bad, msg);
    let tree = rev(&env, &repo, &format!("{name}^{{tree}}"));
    let parent = rev(&env, &repo, &format!("{name}^"));
    let id = env.git(&repo, ["commit-tree", &tree, "-p", &parent, "-m", &bad]);
    env.git(&repo, ["update-ref", name, id.trim()]);
    expect_clean(&env, &repo, &[]);
    expect_problem(&env, &repo, &["--failed"], "trailer Evidence-Status");
}

#[test]
fn a_changed_log_byte_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let log = format!("{RUN1}/packer.log");
    let mut bytes = cat(&env, &repo, "HEAD", &log).into_bytes();
    bytes[0] ^= 1;
    let id = blob(&env, &repo, &bytes);
    tamper(&env, &repo, &[Edit::Set(&log, "100644", id)]);
    expect_problem(&env, &repo, &["HEAD"], &format!("tree {log}: SHA-256"));
    expect_problem(&env, &repo, &[], "run folder modified");
}

/// Log, proof.json and README.md of the newest run, rewritten so that they agree.
fn consistent_rewrite(env: &Env, repo: &Path) -> Vec<(String, String)> {
    let new_log = b"a different log\n";
    let mut proof: Proof =
        serde_json::from_str(&cat(env, repo, "HEAD", &format!("{RUN2}/proof.json"))).unwrap();
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

#[test]
fn a_consistent_rewrite_is_caught_by_history() {
    let env = Env::new();
    let repo = setup(&env);
    let files = consistent_rewrite(&env, &repo);
    let edits: Vec<Edit<'_>> = files
        .iter()
        .map(|(p, id)| Edit::Set(p, "100644", id.clone()))
        .collect();
    tamper(&env, &repo, &edits);
    // The tree alone is self-consistent…
    expect_clean(&env, &repo, &["HEAD"]);
    // …but history shows the run was modified after it was added.
    expect_problem(&env, &repo, &[], &format!("{RUN2}: run folder modified"));
}

#[test]
fn a_consistent_rewrite_of_the_adding_commit_is_caught_by_its_trailers() {
    let env = Env::new();
    let repo = setup(&env);
    // Rewrite the commit that added RUN2 (HEAD~1), then replay the init run on top.
    let init_tree = rev(&env, &repo, "HEAD^{tree}");
    let init_msg = env.git(&repo, ["log", "-1", "--format=%B", "HEAD"]);
    env.git(&repo, ["update-ref", "refs/heads/main", "HEAD~1"]);
    let files = consistent_rewrite(&env, &repo);
    let edits: Vec<Edit<'_>> = files
        .iter()
        .map(|(p, id)| Edit::Set(p, "100644", id.clone()))
        .collect();
    let msg = env.git(&repo, ["log", "-1", "--format=%B", "HEAD"]);
    rewrite_head(&env, &repo, &edits, &msg);
    let tree = edited_tree(&env, &repo, &init_tree, &edits);
    commit_tree(&env, &repo, &tree, "HEAD", &init_msg);
    expect_clean(&env, &repo, &["HEAD"]);
    expect_problem(&env, &repo, &[], "trailer Evidence-Log-SHA256");
}

#[test]
fn latest_moved_back_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let id = blob(&env, &repo, b"2026-11-26T100000Z");
    tamper(
        &env,
        &repo,
        &[Edit::Set("evidence/builds/t/latest", "120000", id)],
    );
    expect_problem(&env, &repo, &["HEAD"], "the newest successful run is");
    expect_problem(&env, &repo, &[], "moved back");
}

#[test]
fn a_dangling_latest_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let id = blob(&env, &repo, b"2026-11-26T230000Z");
    tamper(
        &env,
        &repo,
        &[Edit::Set("evidence/builds/t/latest", "120000", id)],
    );
    expect_problem(&env, &repo, &["HEAD"], "which is not a run folder");
    expect_problem(&env, &repo, &["HEAD~1..HEAD"], "which is not a run folder");
}

#[test]
fn a_deleted_proof_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let proof = format!("{RUN1}/proof.json");
    tamper(&env, &repo, &[Edit::Remove(&proof)]);
    expect_problem(&env, &repo, &["HEAD"], &format!("{proof}: missing"));
    expect_problem(&env, &repo, &[], &format!("{RUN1}: run folder modified"));
}

#[test]
fn a_renamed_run_folder_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let renamed = "evidence/builds/t/2026-11-26T093000Z";
    let mut edits = Vec::new();
    let names = ["README.md", "packer.log", "proof.json"];
    let paths: Vec<(String, String)> = names
        .iter()
        .map(|f| (format!("{RUN1}/{f}"), format!("{renamed}/{f}")))
        .collect();
    for (old, new) in &paths {
        let id = rev(&env, &repo, &format!("HEAD:{old}"));
        edits.push(Edit::Remove(old));
        edits.push(Edit::Set(new, "100644", id));
    }
    tamper(&env, &repo, &edits);
    expect_problem(&env, &repo, &["HEAD"], "run_id is \"2026-11-26T100000Z\"");
    expect_problem(
        &env,
        &repo,
        &[],
        &format!("{RUN1}: run folder deleted or renamed"),
    );
}

#[test]
fn a_hand_made_run_without_trailers_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let run = "evidence/builds/t/2026-11-26T120000Z";
    let log = b"made by hand\n";
    let mut proof: Proof =
        serde_json::from_str(&cat(&env, &repo, "HEAD", &format!("{RUN2}/proof.json"))).unwrap();
    proof.run_id = "2026-11-26T120000Z".into();
    proof.log_sha256 = sha256sum(&env.file("hand.log", log));
    proof.log_bytes = log.len() as u64;
    let text = serde_json::to_string_pretty(&proof).unwrap() + "\n";
    let files = [
        (format!("{run}/packer.log"), blob(&env, &repo, log)),
        (
            format!("{run}/proof.json"),
            blob(&env, &repo, text.as_bytes()),
        ),
        (
            format!("{run}/README.md"),
            blob(&env, &repo, render::run_readme(&proof).as_bytes()),
        ),
    ];
    let edits: Vec<Edit<'_>> = files
        .iter()
        .map(|(p, id)| Edit::Set(p, "100644", id.clone()))
        .collect();
    tamper(&env, &repo, &edits);
    // The tree check sees a latest that lags and an index that no longer matches…
    expect_problem(&env, &repo, &["HEAD"], "evidence/README.md: differs");
    // …and history sees a run added without trailers.
    expect_problem(
        &env,
        &repo,
        &[],
        &format!("{run}: the commit adding this run has no"),
    );
}

#[test]
fn a_proof_that_is_not_json_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let proof = format!("{RUN1}/proof.json");
    let id = blob(&env, &repo, b"{ not json");
    tamper(&env, &repo, &[Edit::Set(&proof, "100644", id)]);
    expect_problem(
        &env,
        &repo,
        &["HEAD"],
        &format!("{proof}: proof.json is not JSON"),
    );
}

#[test]
fn a_proof_missing_a_key_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let proof = format!("{RUN1}/proof.json");
    let mut value = json(&cat(&env, &repo, "HEAD", &proof));
    value.as_object_mut().unwrap().remove("assets");
    value["vmid"] = serde_json::json!("9000");
    let id = blob(&env, &repo, value.to_string().as_bytes());
    tamper(&env, &repo, &[Edit::Set(&proof, "100644", id)]);
    let text = expect_problem(&env, &repo, &["HEAD"], "missing key \"assets\"");
    assert!(text.contains("key \"vmid\" is string"), "{text}");
}

#[test]
fn a_stray_file_in_a_run_folder_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let stray = format!("{RUN1}/notes.txt");
    let id = blob(&env, &repo, b"hi\n");
    tamper(&env, &repo, &[Edit::Set(&stray, "100644", id)]);
    expect_problem(
        &env,
        &repo,
        &["HEAD"],
        &format!("{stray}: unexpected file in a run folder"),
    );
}

#[test]
fn a_hand_edited_index_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    let index = cat(&env, &repo, "HEAD", "evidence/README.md") + "\nAll good!\n";
    let id = blob(&env, &repo, index.as_bytes());
    tamper(
        &env,
        &repo,
        &[Edit::Set("evidence/README.md", "100644", id)],
    );
    expect_problem(
        &env,
        &repo,
        &["HEAD"],
        "tree evidence/README.md: differs from the index",
    );
    let out = verify(&env, &repo, &["HEAD", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&stdout(&out));
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["commit"], "tree");
    assert_eq!(v["problems"][0]["path"], "evidence/README.md");
}

#[test]
fn a_trailer_that_disagrees_is_caught() {
    let env = Env::new();
    let repo = setup(&env);
    // HEAD~1 added RUN2 with vmid 9000.
    let init_tree = rev(&env, &repo, "HEAD^{tree}");
    let init_msg = env.git(&repo, ["log", "-1", "--format=%B", "HEAD"]);
    env.git(&repo, ["update-ref", "refs/heads/main", "HEAD~1"]);
    let msg = env.git(&repo, ["log", "-1", "--format=%B", "HEAD"]);
    let bad = msg.replace("Evidence-VMID: 9000", "Evidence-VMID: 9001");
    assert_ne!(bad, msg);
    rewrite_head(&env, &repo, &[], &bad);
    commit_tree(&env, &repo, &init_tree, "HEAD", &init_msg);
    expect_clean(&env, &repo, &["HEAD"]);
    let text = expect_problem(&env, &repo, &[], "trailer Evidence-VMID is \"9001\"");
    assert!(text.contains(RUN2), "{text}");
}

#[test]
fn bad_revisions_and_non_repositories_exit_2() {
    let env = Env::new();
    let repo = setup(&env);
    let out = verify(&env, &repo, &["no-such-rev"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-rev"), "{}", stderr(&out));
    let out = verify(&env, env.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
