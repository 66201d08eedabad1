//! Work trees after a record: the ones with the branch checked out get the new files and a
//! clean `git status`; nothing else in any work tree or index changes; nothing that is in the way
//! is overwritten.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const T1: &str = "2026-11-26T10:15:00Z";
const RUN1: &str = "2026-11-26T101500Z";
const T2: &str = "2026-11-26T11:30:05Z";
const RUN2: &str = "2026-11-26T113005Z";

/// A work tree as files: relative path → what is there (bytes, link target or a directory),
/// `.git` excluded. Two snapshots are equal when nothing in the work tree changed.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>, u32),
    Link(PathBuf),
    Dir,
}

fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Link(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else {
                let mode = meta.permissions().mode() & 0o777;
                out.insert(rel, Node::File(std::fs::read(&path).unwrap(), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Everything `git status` and the index say about a work tree.
#[derive(Debug, PartialEq, Eq)]
struct GitState {
    status: String,
    staged: String,
    unstaged: String,
}

fn git_state(env: &Env, wt: &Path) -> GitState {
    GitState {
        status: env.git(wt, ["status", "--porcelain", "--untracked-files=all"]),
        staged: env.git(wt, ["diff", "--cached", "--binary"]),
        unstaged: env.git(wt, ["diff", "--binary"]),
    }
}

fn rev(env: &Env, repo: &Path, what: &str) -> String {
    env.git(repo, ["rev-parse", "--verify", "-q", what])
        .trim()
        .to_owned()
}

/// Whether `what` resolves in `repo`.
fn has_rev(env: &Env, repo: &Path, what: &str) -> bool {
    env.git_cmd(repo)
        .args(["rev-parse", "--verify", "-q", what])
        .output()
        .unwrap()
        .status
        .success()
}

fn assert_clean(env: &Env, wt: &Path) {
    let state = git_state(env, wt);
    assert!(
        state.status.is_empty() && state.staged.is_empty() && state.unstaged.is_empty(),
        "work tree {wt:?} not clean: {state:#?}"
    );
}

fn log(env: &Env, name: &str) -> (PathBuf, Vec<u8>) {
    let bytes =
        format!("==> {name}: Build finished.\r\n\x00\x7f tail without newline").into_bytes();
    (env.file(name, &bytes), bytes)
}

/// Records a successful run with `--json`, asserting exit 0; returns the JSON and the stderr.
fn record_json(
    env: &Env,
    cwd: &Path,
    template: &str,
    log: &Path,
    started: &str,
    extra: &[&str],
) -> (serde_json::Value, String) {
    let mut args = record_args(template, log, started);
    args.push("--json".into());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let out = env.evidence(cwd, &args);
    assert!(
        out.status.success(),
        "record failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    (json(&stdout(&out)), stderr(&out))
}

/// The paths a record of `template`/`run` put in a work tree.
fn run_files(template: &str, run: &str) -> Vec<String> {
    ["README.md", "proof.json", "packer.log"]
        .iter()
        .map(|f| format!("evidence/builds/{template}/{run}/{f}"))
        .collect()
}

/// Asserts that every evidence path of `rev` is in the work tree `wt` with the committed bytes,
/// `latest` as a symlink to `run`, and each index entry equal to the commit's.
fn assert_checked_out(env: &Env, wt: &Path, rev_name: &str, template: &str, run: &str) {
    let tracked = env.git(
        wt,
        ["ls-tree", "-r", "--name-only", rev_name, "--", "evidence"],
    );
    assert!(!tracked.is_empty(), "no evidence on {rev_name}");
    for path in tracked.lines() {
        let file = wt.join(path);
        let meta = std::fs::symlink_metadata(&file)
            .unwrap_or_else(|e| panic!("{path} missing from {wt:?}: {e}"));
        let committed = env
            .git_cmd(wt)
            .args(["cat-file", "blob", &format!("{rev_name}:{path}")])
            .output()
            .unwrap()
            .stdout;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&file).unwrap();
            assert_eq!(
                target.as_os_str().as_encoded_bytes(),
                committed.as_slice(),
                "{path}"
            );
        } else {
            assert!(
                std::fs::read(&file).unwrap() == committed,
                "{path} in {wt:?}"
            );
        }
    }
    let latest = wt.join(format!("evidence/builds/{template}/latest"));
    assert!(
        std::fs::symlink_metadata(&latest)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{latest:?} is not a symlink"
    );
    assert_eq!(std::fs::read_link(&latest).unwrap(), Path::new(run));
    // Following the link reaches the run's files.
    assert!(latest.join("proof.json").is_file());
    let staged = env.git(
        wt,
        [
            "ls-files",
            "-s",
            "--",
            &format!("evidence/builds/{template}/latest"),
        ],
    );
    assert!(
        staged.starts_with("120000 "),
        "index entry of latest: {staged}"
    );
}

fn canonical(p: impl AsRef<Path>) -> PathBuf {
    std::fs::canonicalize(p.as_ref()).unwrap_or_else(|e| panic!("{:?}: {e}", p.as_ref()))
}

/// The work trees a `--json` record reports as synced, canonicalised.
fn synced(json: &serde_json::Value) -> Vec<PathBuf> {
    json["worktrees"]
        .as_array()
        .expect("worktrees array")
        .iter()
        .map(|p| canonical(p.as_str().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checked-out branch
// ---------------------------------------------------------------------------------------------

#[test]
fn record_leaves_a_clean_checkout_with_the_files_and_a_real_symlink() {
    let env = Env::new();
    let repo = env.repo("infra");
    let (log1, bytes1) = log(&env, "one.log");
    let (j, err) = record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    assert!(err.is_empty(), "unexpected stderr: {err}");
    assert_eq!(synced(&j), [canonical(&repo)]);
    assert_eq!(j["conflicts"], serde_json::json!([]));

    assert_clean(&env, &repo);
    let cached = env.git(&repo, ["diff", "--cached"]);
    assert!(cached.is_empty(), "git diff --cached: {cached}");
    for f in run_files("ubuntu", RUN1) {
        assert!(repo.join(&f).is_file(), "{f} missing");
    }
    assert!(std::fs::read(repo.join(&run_files("ubuntu", RUN1)[2])).unwrap() == bytes1);
    assert_checked_out(&env, &repo, "HEAD", "ubuntu", RUN1);

    // A second record replaces files git-evidence wrote itself (the index page, `latest`) and
    // the checkout stays clean.
    let (log2, bytes2) = log(&env, "two.log");
    let (j, _) = record_json(&env, &repo, "ubuntu", &log2, T2, &[]);
    assert_eq!(j["latest_moved"], true);
    assert_clean(&env, &repo);
    assert_checked_out(&env, &repo, "HEAD", "ubuntu", RUN2);
    assert!(std::fs::read(repo.join(&run_files("ubuntu", RUN2)[2])).unwrap() == bytes2);
    assert!(std::fs::read(repo.join(&run_files("ubuntu", RUN1)[2])).unwrap() == bytes1);

    // An older run does not move `latest`, in the commit or on disk.
    let (log3, _) = log(&env, "three.log");
    let (j, _) = record_json(&env, &repo, "ubuntu", &log3, "2026-11-26T09:00:00Z", &[]);
    assert_eq!(j["latest_moved"], false);
    assert_clean(&env, &repo);
    assert_checked_out(&env, &repo, "HEAD", "ubuntu", RUN2);
    assert_fsck(&env, &repo);
}

#[test]
fn record_into_an_empty_repository_leaves_a_clean_checkout() {
    let env = Env::new();
    let repo = env.empty_repo("fresh");
    let (log1, _) = log(&env, "one.log");
    let (j, _) = record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    assert_eq!(j["parent"], serde_json::Value::Null);
    assert_eq!(env.git(&repo, ["rev-list", "--count", "main"]).trim(), "1");
    assert_clean(&env, &repo);
    assert_checked_out(&env, &repo, "HEAD", "ubuntu", RUN1);
    assert_fsck(&env, &repo);
}

#[test]
fn unrelated_local_edits_are_left_alone() {
    let env = Env::new();
    let repo = env.repo("infra");
    std::fs::write(repo.join("vars.pkrvars.hcl"), "cpu = 2\n").unwrap();
    env.git(&repo, ["add", "vars.pkrvars.hcl"]);
    env.git(&repo, ["commit", "-q", "-m", "vars"]);
    // A first record, so that the second one updates existing evidence paths too.
    let (log1, _) = log(&env, "one.log");
    record_json(&env, &repo, "ubuntu", &log1, T1, &[]);

    // Modified tracked file, unstaged.
    std::fs::write(
        repo.join("build.pkr.hcl"),
        "# packer template, being edited\n",
    )
    .unwrap();
    // Staged change to another file, then a further unstaged change on top of it.
    std::fs::write(repo.join("vars.pkrvars.hcl"), "cpu = 4\n").unwrap();
    env.git(&repo, ["add", "vars.pkrvars.hcl"]);
    std::fs::write(repo.join("vars.pkrvars.hcl"), "cpu = 8\n").unwrap();
    // A new file, staged.
    std::fs::write(repo.join("new.pkr.hcl"), "# new template\n").unwrap();
    env.git(&repo, ["add", "new.pkr.hcl"]);
    // Untracked files elsewhere, one of them next to the evidence.
    std::fs::create_dir_all(repo.join("scratch")).unwrap();
    std::fs::write(repo.join("scratch/todo.txt"), "todo\n").unwrap();
    std::fs::write(repo.join("evidence/builds/ubuntu/NOTES.local"), "mine\n").unwrap();

    let before = git_state(&env, &repo);
    let files_before = snapshot(&repo);
    assert_eq!(
        before.status,
        " M build.pkr.hcl\n\
         A  new.pkr.hcl\n\
         MM vars.pkrvars.hcl\n\
         ?? evidence/builds/ubuntu/NOTES.local\n\
         ?? scratch/todo.txt\n"
    );

    let (log2, _) = log(&env, "two.log");
    let (j, err) = record_json(&env, &repo, "ubuntu", &log2, T2, &[]);
    assert!(err.is_empty(), "unexpected stderr: {err}");
    assert_eq!(j["conflicts"], serde_json::json!([]));

    assert_eq!(git_state(&env, &repo), before);
    // The work tree changed by exactly the new evidence.
    let mut files_after = snapshot(&repo);
    let mut added: Vec<String> = files_after
        .keys()
        .filter(|k| !files_before.contains_key(*k))
        .cloned()
        .collect();
    added.sort();
    let mut want: Vec<String> = run_files("ubuntu", RUN2);
    want.push(format!("evidence/builds/ubuntu/{RUN2}"));
    want.sort();
    assert_eq!(added, want);
    for path in &added {
        files_after.remove(path);
    }
    for path in ["evidence/README.md", "evidence/builds/ubuntu/latest"] {
        assert_ne!(
            files_after.get(path),
            files_before.get(path),
            "{path} not updated"
        );
        files_after.remove(path);
    }
    let mut files_before = files_before;
    files_before.remove("evidence/README.md");
    files_before.remove("evidence/builds/ubuntu/latest");
    assert_eq!(
        files_after, files_before,
        "something else in the work tree changed"
    );

    // Recorded as a commit on main with nothing of the local edits in it.
    let tree = env.git(&repo, ["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        !tree.contains("new.pkr.hcl") && !tree.contains("NOTES.local") && !tree.contains("scratch")
    );
    assert_eq!(
        env.git(&repo, ["show", "main:vars.pkrvars.hcl"]),
        "cpu = 2\n"
    );
    assert_checked_out(&env, &repo, "HEAD", "ubuntu", RUN2);
}

/// Asserts the record exited 0, the commit landed, stderr warns about `path`, and the file at
/// `path` still holds `content`.
fn assert_left_alone(
    env: &Env,
    repo: &Path,
    j: &serde_json::Value,
    err: &str,
    path: &str,
    content: &[u8],
) {
    assert_eq!(rev(env, repo, "main"), j["commit"].as_str().unwrap());
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning:") && l.contains(path)),
        "no warning naming {path}:\n{err}"
    );
    let conflicts: Vec<&str> = j["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(conflicts.contains(&path), "conflicts {conflicts:?}");
    assert!(
        std::fs::read(repo.join(path)).unwrap() == content,
        "{path} was overwritten"
    );
}

#[test]
fn an_untracked_index_page_in_the_way_is_left_alone_with_a_warning() {
    let env = Env::new();
    let repo = env.repo("infra");
    std::fs::create_dir_all(repo.join("evidence")).unwrap();
    let mine = b"# my own notes, not generated\n";
    std::fs::write(repo.join("evidence/README.md"), mine).unwrap();

    let (log1, bytes1) = log(&env, "one.log");
    let (j, err) = record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    assert_left_alone(&env, &repo, &j, &err, "evidence/README.md", mine);
    // The commit has the generated page, and the rest reached the work tree.
    let page = env.git(&repo, ["show", "main:evidence/README.md"]);
    assert!(page.starts_with("# Packer Build Evidence"), "{page}");
    assert!(std::fs::read(repo.join(&run_files("ubuntu", RUN1)[2])).unwrap() == bytes1);
    assert_eq!(
        std::fs::read_link(repo.join("evidence/builds/ubuntu/latest")).unwrap(),
        Path::new(RUN1)
    );
    // Only the path left alone shows in git status.
    let status = env.git(&repo, ["status", "--porcelain", "--untracked-files=all"]);
    assert!(
        status.lines().all(|l| l.ends_with(" evidence/README.md")),
        "git status: {status}"
    );
    assert_fsck(&env, &repo);
}

#[test]
fn an_untracked_log_in_the_way_is_left_alone_with_a_warning() {
    let env = Env::new();
    let repo = env.repo("infra");
    let path = run_files("ubuntu", RUN1)[2].clone();
    std::fs::create_dir_all(repo.join(&path).parent().unwrap()).unwrap();
    let other = b"some other log\n";
    std::fs::write(repo.join(&path), other).unwrap();

    let (log1, bytes1) = log(&env, "one.log");
    let (j, err) = record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    assert_eq!(j["run_id"], RUN1);
    assert_left_alone(&env, &repo, &j, &err, &path, other);
    let committed = env
        .git_cmd(&repo)
        .args(["cat-file", "blob", &format!("main:{path}")])
        .output()
        .unwrap()
        .stdout;
    assert!(committed == bytes1, "the commit must hold the recorded log");
    for f in &run_files("ubuntu", RUN1)[..2] {
        assert!(repo.join(f).is_file(), "{f} not written");
    }
    let status = env.git(&repo, ["status", "--porcelain", "--untracked-files=all"]);
    assert!(
        status.lines().all(|l| l.ends_with(&path)),
        "git status: {status}"
    );
    assert_fsck(&env, &repo);
}

#[test]
fn an_unstaged_edit_of_an_evidence_file_is_left_alone_with_a_warning() {
    let env = Env::new();
    let repo = env.repo("infra");
    let (log1, _) = log(&env, "one.log");
    record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    let mut edited = std::fs::read(repo.join("evidence/README.md")).unwrap();
    edited.extend_from_slice(b"\nmy unstaged note\n");
    std::fs::write(repo.join("evidence/README.md"), &edited).unwrap();

    let (log2, _) = log(&env, "two.log");
    let (j, err) = record_json(&env, &repo, "ubuntu", &log2, T2, &[]);
    assert_left_alone(&env, &repo, &j, &err, "evidence/README.md", &edited);
}

/// The module documentation of `worktree`: "a path whose work-tree file *or index entry* differs
/// from what git-evidence last wrote is reported as a conflict and left alone". A staged edit of
/// an evidence file (work tree = index ≠ commit) must not be replaced without a word.
#[test]
fn a_staged_edit_of_an_evidence_file_is_left_alone_with_a_warning() {
    let env = Env::new();
    let repo = env.repo("infra");
    let (log1, _) = log(&env, "one.log");
    record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    let mut edited = std::fs::read(repo.join("evidence/README.md")).unwrap();
    edited.extend_from_slice(b"\nmy staged note\n");
    std::fs::write(repo.join("evidence/README.md"), &edited).unwrap();
    env.git(&repo, ["add", "evidence/README.md"]);

    let (log2, _) = log(&env, "two.log");
    let (j, err) = record_json(&env, &repo, "ubuntu", &log2, T2, &[]);
    let staged = env.git(&repo, ["show", ":evidence/README.md"]);
    assert!(
        staged.ends_with("my staged note\n"),
        "the staged edit was dropped from the index"
    );
    assert_left_alone(&env, &repo, &j, &err, "evidence/README.md", &edited);
}

// ---------------------------------------------------------------------------------------------
// Other branches, linked work trees, bare repositories
// ---------------------------------------------------------------------------------------------

/// Case A: from the main work tree (on `main`) onto `feature`, checked out in a linked work tree.
#[test]
fn recording_onto_a_branch_checked_out_in_a_linked_worktree_updates_that_worktree() {
    let env = Env::new();
    let repo = env.repo("infra");
    env.git(&repo, ["worktree", "add", "-q", "../wt", "-b", "feature"]);
    let wt = env.path().join("wt");
    let main_before = rev(&env, &repo, "main");
    let files_before = snapshot(&repo);
    let state_before = git_state(&env, &repo);

    let (log1, bytes1) = log(&env, "one.log");
    let (j, err) = record_json(
        &env,
        env.path(),
        "ubuntu",
        &log1,
        T1,
        &["-C", repo.to_str().unwrap(), "--branch", "feature"],
    );
    assert!(err.is_empty(), "unexpected stderr: {err}");
    assert_eq!(j["branch"], "refs/heads/feature");
    assert_eq!(synced(&j), [canonical(&wt)]);

    // The linked work tree has the evidence and is clean.
    assert_eq!(rev(&env, &wt, "HEAD"), j["commit"].as_str().unwrap());
    assert_clean(&env, &wt);
    assert_checked_out(&env, &wt, "HEAD", "ubuntu", RUN1);
    assert!(std::fs::read(wt.join(&run_files("ubuntu", RUN1)[2])).unwrap() == bytes1);

    // The main work tree, its index and its branch did not change.
    assert_eq!(rev(&env, &repo, "main"), main_before);
    assert_eq!(snapshot(&repo), files_before);
    assert_eq!(git_state(&env, &repo), state_before);
    assert!(!repo.join("evidence").exists());
    assert_fsck(&env, &repo);
}

/// Case B: from inside a linked work tree onto its own (current) branch.
#[test]
fn recording_from_inside_a_linked_worktree_updates_it_and_nothing_else() {
    let env = Env::new();
    let repo = env.repo("infra");
    env.git(&repo, ["worktree", "add", "-q", "../wt", "-b", "feature"]);
    let wt = env.path().join("wt");
    // Local state in the main work tree that must survive.
    std::fs::write(repo.join("build.pkr.hcl"), "# edited in main\n").unwrap();
    let main_before = rev(&env, &repo, "main");
    let files_before = snapshot(&repo);
    let state_before = git_state(&env, &repo);

    let (log1, _) = log(&env, "one.log");
    let (j, err) = record_json(&env, &wt, "ubuntu", &log1, T1, &[]);
    assert!(err.is_empty(), "unexpected stderr: {err}");
    assert_eq!(j["branch"], "refs/heads/feature");
    assert_eq!(synced(&j), [canonical(&wt)]);
    assert_eq!(rev(&env, &repo, "feature"), j["commit"].as_str().unwrap());
    assert_clean(&env, &wt);
    assert_checked_out(&env, &wt, "HEAD", "ubuntu", RUN1);

    // Again, now that the evidence exists in the linked work tree.
    let (log2, _) = log(&env, "two.log");
    record_json(&env, &wt, "ubuntu", &log2, T2, &[]);
    assert_clean(&env, &wt);
    assert_checked_out(&env, &wt, "HEAD", "ubuntu", RUN2);

    assert_eq!(rev(&env, &repo, "main"), main_before);
    assert_eq!(snapshot(&repo), files_before);
    assert_eq!(git_state(&env, &repo), state_before);
    assert_fsck(&env, &repo);
}

/// `git worktree add --force` can check a branch out twice: both work trees are updated.
#[test]
fn a_branch_checked_out_twice_is_updated_in_both_worktrees() {
    let env = Env::new();
    let repo = env.repo("infra");
    env.git(
        &repo,
        ["worktree", "add", "-q", "--force", "../twin", "main"],
    );
    let twin = env.path().join("twin");
    let (log1, _) = log(&env, "one.log");
    let (j, _) = record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    let mut got = synced(&j);
    got.sort();
    let mut want = vec![canonical(&repo), canonical(&twin)];
    want.sort();
    assert_eq!(got, want);
    for wt in [&repo, &twin] {
        assert_clean(&env, wt);
        assert_checked_out(&env, wt, "HEAD", "ubuntu", RUN1);
    }
}

/// A linked work tree whose folder was deleted (prunable) does not stop a record.
#[test]
fn a_prunable_linked_worktree_is_skipped() {
    let env = Env::new();
    let repo = env.repo("infra");
    env.git(&repo, ["worktree", "add", "-q", "../gone", "-b", "feature"]);
    std::fs::remove_dir_all(env.path().join("gone")).unwrap();
    let (log1, _) = log(&env, "one.log");
    let (j, _) = record_json(&env, &repo, "ubuntu", &log1, T1, &["--branch", "feature"]);
    assert_eq!(j["worktrees"], serde_json::json!([]));
    assert_eq!(rev(&env, &repo, "feature"), j["commit"].as_str().unwrap());
    assert!(
        !env.path().join("gone").exists(),
        "a deleted work tree was recreated"
    );
    assert_clean(&env, &repo);
    assert!(!repo.join("evidence").exists());
}

#[test]
fn recording_onto_a_branch_not_checked_out_leaves_work_tree_and_index_alone() {
    let env = Env::new();
    let repo = env.repo("infra");
    env.git(&repo, ["branch", "evidence-only"]);
    // Local state that must survive: unstaged, staged and untracked.
    std::fs::write(repo.join("build.pkr.hcl"), "# edited\n").unwrap();
    std::fs::write(repo.join("staged.txt"), "staged\n").unwrap();
    env.git(&repo, ["add", "staged.txt"]);
    std::fs::write(repo.join("untracked.txt"), "untracked\n").unwrap();
    let head_before = rev(&env, &repo, "HEAD");
    let files_before = snapshot(&repo);
    let state_before = git_state(&env, &repo);

    // Moves an existing branch.
    let (log1, _) = log(&env, "one.log");
    let (j, err) = record_json(
        &env,
        &repo,
        "ubuntu",
        &log1,
        T1,
        &["--branch", "evidence-only"],
    );
    assert!(err.is_empty(), "unexpected stderr: {err}");
    assert_eq!(j["worktrees"], serde_json::json!([]));
    assert_eq!(
        rev(&env, &repo, "evidence-only"),
        j["commit"].as_str().unwrap()
    );
    assert_eq!(rev(&env, &repo, "evidence-only^"), head_before);
    let tree = env.git(&repo, ["ls-tree", "-r", "--name-only", "evidence-only"]);
    for f in run_files("ubuntu", RUN1) {
        assert!(
            tree.lines().any(|l| l == f),
            "{f} not on evidence-only:\n{tree}"
        );
    }

    // Creates a branch that does not exist yet.
    assert!(!has_rev(&env, &repo, "refs/heads/brand-new"));
    let (log2, _) = log(&env, "two.log");
    let (j, _) = record_json(&env, &repo, "ubuntu", &log2, T2, &["--branch", "brand-new"]);
    assert_eq!(rev(&env, &repo, "brand-new"), j["commit"].as_str().unwrap());
    let tree = env.git(&repo, ["ls-tree", "-r", "--name-only", "brand-new"]);
    for f in run_files("ubuntu", RUN2) {
        assert!(
            tree.lines().any(|l| l == f),
            "{f} not on brand-new:\n{tree}"
        );
    }

    assert_eq!(rev(&env, &repo, "HEAD"), head_before);
    assert_eq!(rev(&env, &repo, "main"), head_before);
    assert_eq!(snapshot(&repo), files_before);
    assert_eq!(git_state(&env, &repo), state_before);
    assert!(!repo.join("evidence").exists());
    assert_fsck(&env, &repo);
}

#[test]
fn recording_into_a_bare_repository_works() {
    let env = Env::new();
    let bare = env.bare_repo("evidence.git");
    let before = rev(&env, &bare, "main");
    let (log1, bytes1) = log(&env, "one.log");
    let (j, err) = record_json(&env, &bare, "ubuntu", &log1, T1, &[]);
    assert!(err.is_empty(), "unexpected stderr: {err}");
    assert_eq!(j["worktrees"], serde_json::json!([]));
    assert_eq!(rev(&env, &bare, "main"), j["commit"].as_str().unwrap());
    assert_eq!(rev(&env, &bare, "main^"), before);

    let tree = env.git(&bare, ["ls-tree", "-r", "main"]);
    for f in run_files("ubuntu", RUN1) {
        assert!(
            tree.lines().any(|l| l.ends_with(&format!("\t{f}"))),
            "{f}:\n{tree}"
        );
    }
    assert!(
        tree.lines().any(
            |l| l.starts_with("120000 blob ") && l.ends_with("\tevidence/builds/ubuntu/latest")
        ),
        "{tree}"
    );
    let committed = env
        .git_cmd(&bare)
        .args([
            "cat-file",
            "blob",
            &format!("main:{}", run_files("ubuntu", RUN1)[2]),
        ])
        .output()
        .unwrap()
        .stdout;
    assert!(committed == bytes1);
    // No work tree appeared next to the bare repository, and no index inside it.
    assert!(!bare.join("evidence").exists());
    assert!(!bare.join("index").exists());
    assert_fsck(&env, &bare);

    // `-C` from elsewhere works the same.
    let (log2, _) = log(&env, "two.log");
    let (j, _) = record_json(
        &env,
        env.path(),
        "ubuntu",
        &log2,
        T2,
        &["-C", bare.to_str().unwrap()],
    );
    assert_eq!(rev(&env, &bare, "main"), j["commit"].as_str().unwrap());
}

/// A bare repository with a linked work tree on the branch: that work tree is updated.
#[test]
fn a_bare_repository_updates_its_linked_worktree() {
    let env = Env::new();
    let bare = env.bare_repo("evidence.git");
    env.git(&bare, ["worktree", "add", "-q", "../checkout", "main"]);
    let wt = env.path().join("checkout");
    let (log1, _) = log(&env, "one.log");
    let (j, _) = record_json(&env, &bare, "ubuntu", &log1, T1, &[]);
    assert_eq!(synced(&j), [canonical(&wt)]);
    assert_clean(&env, &wt);
    assert_checked_out(&env, &wt, "HEAD", "ubuntu", RUN1);
    assert!(!bare.join("evidence").exists());
}

#[test]
fn a_failed_run_leaves_work_tree_index_and_branch_alone() {
    let env = Env::new();
    let repo = env.repo("infra");
    let (log1, _) = log(&env, "one.log");
    record_json(&env, &repo, "ubuntu", &log1, T1, &[]);
    std::fs::write(repo.join("build.pkr.hcl"), "# edited\n").unwrap();
    std::fs::write(repo.join("staged.txt"), "staged\n").unwrap();
    env.git(&repo, ["add", "staged.txt"]);
    let main_before = rev(&env, &repo, "main");
    let files_before = snapshot(&repo);
    let state_before = git_state(&env, &repo);
    let index_before = std::fs::read(repo.join(".git/index")).unwrap();

    let (log2, bytes2) = log(&env, "two.log");
    let mut args = record_args("ubuntu", &log2, T2);
    args[6] = "1".into();
    args.push("--json".into());
    let out = env.evidence(&repo, &args);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let j = json(&stdout(&out));
    assert_eq!(j["status"], "failed");
    let reference = format!("refs/evidence/failed/builds/ubuntu/{RUN2}");
    assert_eq!(j["ref"], reference);
    assert_eq!(j["worktrees"], serde_json::json!([]));

    assert_eq!(rev(&env, &repo, "main"), main_before);
    assert_eq!(rev(&env, &repo, &reference), j["commit"].as_str().unwrap());
    assert_eq!(rev(&env, &repo, &format!("{reference}^")), main_before);
    let committed = env
        .git_cmd(&repo)
        .args([
            "cat-file",
            "blob",
            &format!("{reference}:{}", run_files("ubuntu", RUN2)[2]),
        ])
        .output()
        .unwrap()
        .stdout;
    assert!(committed == bytes2);
    // Before anything runs `git status`, which may refresh and rewrite the index itself.
    assert!(
        std::fs::read(repo.join(".git/index")).unwrap() == index_before,
        "the index file was rewritten"
    );
    assert_eq!(snapshot(&repo), files_before);
    assert_eq!(git_state(&env, &repo), state_before);
    assert_fsck(&env, &repo);
}
