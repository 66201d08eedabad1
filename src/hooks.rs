//! `git evidence hook <name>` and `git evidence hooks install`: git hooks that keep evidence
//! honest where it is pushed and committed.
//!
//! - `pre-receive` (server): every updated branch is verified (`verify` of the new tip's tree,
//!   and of the history the push adds); a force-push that drops commits which touched the
//!   evidence root is rejected; `refs/evidence/failed/*` are checked like `verify --failed`.
//!   Pushes that do not touch the evidence root pass.
//! - `pre-push` (client): the same checks on what is about to be pushed.
//! - `pre-commit` (client): refuses a commit whose index modifies or deletes a proof file.
//!
//! The hooks read objects through [`Repository::open_from_env`], which honours `GIT_DIR`,
//! `GIT_OBJECT_DIRECTORY` and `GIT_ALTERNATE_OBJECT_DIRECTORIES`: in `pre-receive` the pushed
//! objects are still in git's quarantine directory, and that is how they are seen.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use git2::{Delta, Oid, Repository};

use crate::error::{Error, Result};
use crate::names::EvidenceRoot;
use crate::verify::{self, Problem, Report};

/// The hook shims installed by `hooks install`, as shipped in `hooks/`.
pub const PRE_RECEIVE: &str = include_str!("../hooks/pre-receive");
pub const PRE_PUSH: &str = include_str!("../hooks/pre-push");
pub const PRE_COMMIT: &str = include_str!("../hooks/pre-commit");

/// The hooks `git-evidence hook` implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookName {
    PreReceive,
    PrePush,
    PreCommit,
}

impl HookName {
    pub fn as_str(self) -> &'static str {
        match self {
            HookName::PreReceive => "pre-receive",
            HookName::PrePush => "pre-push",
            HookName::PreCommit => "pre-commit",
        }
    }

    fn shim(self) -> &'static str {
        match self {
            HookName::PreReceive => PRE_RECEIVE,
            HookName::PrePush => PRE_PUSH,
            HookName::PreCommit => PRE_COMMIT,
        }
    }
}

/// Arguments of `hook`.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// The hook git is running.
    #[arg(value_enum)]
    pub name: HookName,
    /// What git passes the hook (pre-push: the remote's name and URL).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Arguments of `hooks`.
#[derive(Debug, Args)]
pub struct HooksArgs {
    #[command(subcommand)]
    pub command: HooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Install the hook shims into this repository's hooks directory (honours core.hooksPath):
    /// pre-push and pre-commit, or pre-receive with --server.
    Install {
        /// Install the server hook (pre-receive) instead of the client hooks.
        #[arg(long)]
        server: bool,
        /// Replace existing hooks that differ.
        #[arg(long)]
        force: bool,
    },
}

fn git_err(what: &str) -> impl FnOnce(git2::Error) -> Error + '_ {
    move |e| Error::git(format!("cannot read {what}"), e)
}

/// Runs a hook; returns the exit code git sees (0 accept, 1 reject).
pub fn run_hook(args: &HookArgs) -> Result<i32> {
    let repo = crate::cli::open_repo()?;
    let root = crate::record::resolve_root(&repo, None)?;
    let stdin = std::io::stdin();
    let lines = || -> Result<Vec<String>> {
        stdin
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("cannot read the hook's standard input", e))
    };
    let problems = match args.name {
        HookName::PreReceive => pre_receive(&repo, &root, &lines()?)?,
        HookName::PrePush => pre_push(&repo, &root, &lines()?)?,
        HookName::PreCommit => pre_commit(&repo, &root)?,
    };
    if problems.is_empty() {
        return Ok(0);
    }
    let mut err = std::io::stderr().lock();
    for line in &problems {
        let _ = writeln!(err, "evidence: {line}");
    }
    Ok(1)
}

fn parse_oid(text: &str) -> Result<Oid> {
    Oid::from_str(text).map_err(|e| Error::git(format!("bad object id {text:?} from git"), e))
}

/// `pre-receive`: stdin lines `<old> <new> <ref>`.
pub fn pre_receive(
    repo: &Repository,
    root: &EvidenceRoot,
    lines: &[String],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [old, new, name] = parts[..] else {
            continue;
        };
        let (old, new) = (parse_oid(old)?, parse_oid(new)?);
        let old = (!old.is_zero()).then_some(old);
        out.extend(check_ref(repo, root, name, old, new)?);
    }
    Ok(out)
}

/// `pre-push`: stdin lines `<local ref> <local sha> <remote ref> <remote sha>`.
pub fn pre_push(repo: &Repository, root: &EvidenceRoot, lines: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_, local, remote_ref, remote] = parts[..] else {
            continue;
        };
        let (local, remote) = (parse_oid(local)?, parse_oid(remote)?);
        // A remote tip we do not have cannot be compared with: git refuses that push unless
        // forced, and the tree and the whole history pushed are then checked.
        let old = (!remote.is_zero() && repo.find_commit(remote).is_ok()).then_some(remote);
        let unknown = !remote.is_zero() && old.is_none();
        if unknown && !local.is_zero() && remote_ref.starts_with("refs/heads/") {
            let report = verify::verify(repo, &request(root, format!("..{local}")))?;
            out.extend(report_lines(remote_ref, report));
            continue;
        }
        out.extend(check_ref(repo, root, remote_ref, old, local)?);
    }
    Ok(out)
}

fn request(root: &EvidenceRoot, rev: String) -> verify::Request {
    verify::Request {
        rev: Some(rev),
        failed: false,
        root: Some(root.clone()),
    }
}

fn format_problem(name: &str, p: &Problem) -> String {
    format!("{name}: {} {}: {}", p.commit, p.path, p.problem)
}

fn report_lines(name: &str, report: Report) -> Vec<String> {
    let mut out: Vec<String> = report
        .problems
        .iter()
        .map(|p| format_problem(name, p))
        .collect();
    if !out.is_empty() {
        out.push(format!(
            "rejecting {name}: {} problems with the evidence (see `git evidence verify`)",
            report.problems.len()
        ));
    }
    out
}

/// The evidence root's tree id in a commit's tree, if any.
fn root_id(repo: &Repository, commit: Oid, root: &EvidenceRoot) -> Result<Option<Oid>> {
    let c = repo
        .find_commit(commit)
        .map_err(git_err("a pushed commit"))?;
    let tree = c.tree().map_err(git_err("a pushed commit's tree"))?;
    Ok(tree.get_path(Path::new(root.as_str())).ok().map(|e| e.id()))
}

/// Whether a commit changes the evidence root compared with its first parent.
fn touches_root(repo: &Repository, commit: Oid, root: &EvidenceRoot) -> Result<bool> {
    let c = repo.find_commit(commit).map_err(git_err("a commit"))?;
    let parent = match c.parent_ids().next() {
        Some(p) => root_id(repo, p, root)?,
        None => None,
    };
    Ok(root_id(repo, commit, root)? != parent)
}

/// Commits reachable from `tip` but not from `hidden` (all of them when `hidden` is `None`).
fn range(repo: &Repository, tip: Oid, hidden: Option<Oid>) -> Result<Vec<Oid>> {
    let mut walk = repo.revwalk().map_err(git_err("history"))?;
    walk.push(tip).map_err(git_err("history"))?;
    if let Some(h) = hidden {
        walk.hide(h).map_err(git_err("history"))?;
    }
    walk.map(|r| r.map_err(git_err("history"))).collect()
}

/// The checks for one ref moving from `old` (`None`: created) to `new` (zero: deleted).
fn check_ref(
    repo: &Repository,
    root: &EvidenceRoot,
    name: &str,
    old: Option<Oid>,
    new: Oid,
) -> Result<Vec<String>> {
    if new.is_zero() {
        return Ok(Vec::new());
    }
    if name.starts_with("refs/evidence/failed/") {
        let mut report = Report::default();
        verify::check_failed_commit(repo, &mut report, root, name, new)?;
        return Ok(report_lines(name, report));
    }
    if !name.starts_with("refs/heads/") {
        return Ok(Vec::new());
    }
    let Some(old) = old else {
        return Ok(report_lines(
            name,
            verify::verify(repo, &request(root, new.to_string()))?,
        ));
    };
    if old == new {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let fast_forward = repo
        .graph_descendant_of(new, old)
        .map_err(git_err("history"))?;
    let base = if fast_forward {
        Some(old)
    } else {
        let dropped: Vec<Oid> = range(repo, old, Some(new))?
            .into_iter()
            .filter(|c| touches_root(repo, *c, root).unwrap_or(true))
            .collect();
        if !dropped.is_empty() {
            let ids: Vec<String> = dropped
                .iter()
                .map(|c| c.to_string()[..10].to_owned())
                .collect();
            out.push(format!(
                "{name}: this push rewrites history and drops {} commits that recorded evidence ({}); evidence is only ever added",
                dropped.len(),
                ids.join(", ")
            ));
            out.push(format!(
                "rejecting {name}: history that held evidence would be lost"
            ));
            return Ok(out);
        }
        repo.merge_base(old, new).ok()
    };
    let mut touched = root_id(repo, old, root)? != root_id(repo, new, root)?;
    if !touched {
        for c in range(repo, new, base)? {
            if touches_root(repo, c, root)? {
                touched = true;
                break;
            }
        }
    }
    if !touched {
        return Ok(out);
    }
    let rev = match base {
        Some(b) => format!("{b}..{new}"),
        None => format!("..{new}"),
    };
    out.extend(report_lines(
        name,
        verify::verify(repo, &request(root, rev))?,
    ));
    Ok(out)
}

/// Whether a path (relative to the repository) is a file git-evidence wrote and never changes.
fn is_proof_path(root: &EvidenceRoot, path: &str) -> bool {
    let Some(rest) = path
        .strip_prefix(root.as_str())
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        parts[..],
        ["README.md"]
            | ["builds", _, "latest"]
            | ["init", "latest"]
            | ["builds", _, _, _, ..]
            | ["init", _, _, ..]
    )
}

/// `pre-commit`: the index must not modify or delete a proof file that HEAD has.
pub fn pre_commit(repo: &Repository, root: &EvidenceRoot) -> Result<Vec<String>> {
    let head_tree = match repo.head().and_then(|h| h.peel_to_tree()) {
        Ok(t) => t,
        Err(_) => return Ok(Vec::new()),
    };
    let index = repo.index().map_err(git_err("the index"))?;
    let mut opts = git2::DiffOptions::new();
    opts.pathspec(root.as_str());
    let diff = repo
        .diff_tree_to_index(Some(&head_tree), Some(&index), Some(&mut opts))
        .map_err(git_err("the index"))?;
    let mut paths = Vec::new();
    for d in diff.deltas() {
        if matches!(d.status(), Delta::Added | Delta::Unmodified) {
            continue;
        }
        if let Some(p) = d.old_file().path().and_then(Path::to_str)
            && is_proof_path(root, p)
        {
            paths.push(p.to_owned());
        }
    }
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = paths
        .iter()
        .map(|p| {
            format!("{p}: changed or deleted in this commit; recorded evidence is never edited")
        })
        .collect();
    out.push(format!(
        "commit refused; to undo the change: git restore --staged --worktree -- {}",
        paths.join(" ")
    ));
    Ok(out)
}

/// The hooks directory, as `git rev-parse --git-path hooks` finds it.
pub fn hooks_dir(repo: &Repository) -> Result<PathBuf> {
    let config = repo.config().map_err(git_err("git config"))?;
    if let Ok(p) = config.get_path("core.hooksPath") {
        if p.is_absolute() {
            return Ok(p);
        }
        // Relative paths are relative to where hooks run: the work tree's top, or GIT_DIR.
        let base = repo.workdir().unwrap_or_else(|| repo.path());
        return Ok(base.join(p));
    }
    Ok(repo.commondir().join("hooks"))
}

/// `hooks install`: returns the exit code.
pub fn install(repo: &Repository, server: bool, force: bool, quiet: bool) -> Result<i32> {
    let dir = hooks_dir(repo)?;
    let names: &[HookName] = if server {
        &[HookName::PreReceive]
    } else {
        &[HookName::PrePush, HookName::PreCommit]
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut code = 0;
    let mut out = std::io::stdout().lock();
    for name in names {
        let path = dir.join(name.as_str());
        let shim = name.shim();
        match std::fs::read(&path) {
            Ok(existing) if existing == shim.as_bytes() => {
                if !quiet {
                    let _ = writeln!(out, "{} already installed", path.display());
                }
                continue;
            }
            Ok(_) if !force => {
                eprintln!(
                    "error: {} exists and is not git-evidence's {} hook; not replacing it",
                    path.display(),
                    name.as_str()
                );
                eprintln!("hint: merge it by hand, or replace it with --force");
                code = 1;
                continue;
            }
            _ => {}
        }
        std::fs::write(&path, shim)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(format!("cannot make {} executable", path.display()), e))?;
        }
        if !quiet {
            let _ = writeln!(out, "installed {}", path.display());
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_paths() {
        let root = EvidenceRoot::default();
        for p in [
            "evidence/README.md",
            "evidence/builds/t/latest",
            "evidence/init/latest",
            "evidence/builds/t/2026-11-26T100000Z/build.log",
            "evidence/init/2026-11-26T100000Z/proof.json",
        ] {
            assert!(is_proof_path(&root, p), "{p}");
        }
        for p in [
            "README.md",
            "evidence/.gitattributes",
            "evidencex/README.md",
            "evidence/builds/t",
        ] {
            assert!(!is_proof_path(&root, p), "{p}");
        }
    }
}
