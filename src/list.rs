//! `git-evidence list` and `git-evidence show`: the review side, read-only.
//!
//! Both read git objects only — the branch's tree, the failed-run refs and the commits behind
//! them — so they work the same in a bare repository as in a checkout. `list` finds the commit
//! that added each run folder with one first-parent walk from the branch tip for all runs
//! (pruned by comparing tree ids), not one walk per run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use git2::{ErrorCode, ObjectType, Oid, Repository, Tree};

use crate::error::{Error, Result};
use crate::names::{EvidenceRoot, RunId, Template};
use crate::record;

/// The prefix of every failed-run ref.
const FAILED_PREFIX: &str = "refs/evidence/failed/";

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only runs of this template (`init` for plugin installs).
    pub template: Option<String>,
    /// Also list failed and cancelled runs (`refs/evidence/failed/*`).
    pub failed: bool,
    /// Only runs started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Branch name; the current branch when `None`.
    pub branch: Option<String>,
    /// Evidence root; `git config evidence.root` or `evidence` when `None`.
    pub root: Option<EvidenceRoot>,
}

/// One run, as `list` and `show` report it.
#[derive(Debug, Clone)]
pub struct RunEntry {
    /// The template, `None` for an init run.
    pub template: Option<String>,
    pub run_id: RunId,
    /// The run folder's path in the tree.
    pub path: String,
    /// proof.json as stored (`null` when missing or unreadable).
    pub proof: serde_json::Value,
    /// The commit that added the run folder (branch runs) or the failed-run ref's commit.
    pub commit: Option<Oid>,
    /// The failed-run ref, for runs not on the branch.
    pub reference: Option<String>,
}

impl RunEntry {
    /// `init` or the template name.
    pub fn label(&self) -> &str {
        self.template.as_deref().unwrap_or("init")
    }

    /// The proof's status, `?` when unknown.
    pub fn status(&self) -> &str {
        self.proof["status"].as_str().unwrap_or("?")
    }

    /// When the run started: proof.json's `started_at`, else the time in the run id.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.proof["started_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                let id = self.run_id.to_string();
                NaiveDateTime::parse_from_str(id.get(..18)?, "%Y-%m-%dT%H%M%SZ")
                    .ok()
                    .map(|t| t.and_utc())
            })
    }

    /// The entry as `list --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        let p = &self.proof;
        serde_json::json!({
            "kind": if self.template.is_some() { "build" } else { "init" },
            "template": self.template,
            "run_id": self.run_id.to_string(),
            "status": p["status"],
            "started_at": p["started_at"],
            "duration_seconds": p["duration_seconds"],
            "vmid": p["vmid"],
            "node": p["node"],
            "log_bytes": p["log_bytes"],
            "log_sha256": p["log_sha256"],
            "commit": self.commit.map(|c| c.to_string()),
            "path": self.path,
            "ref": self.reference,
        })
    }
}

/// Parses a `--since` value: RFC 3339, or `YYYY-MM-DD` (midnight UTC).
pub fn parse_since(value: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| Error::InvalidTime {
            what: "--since",
            value: value.to_owned(),
        })
}

/// Checks a `--template` / `show` name: `init` or a valid template name.
fn check_label(name: &str) -> Result<()> {
    if name != "init" {
        name.parse::<Template>()?;
    }
    Ok(())
}

/// The runs asked for, newest first (by run id, then template name).
pub fn list(repo: &Repository, req: &ListRequest) -> Result<Vec<RunEntry>> {
    if let Some(t) = &req.template {
        check_label(t)?;
    }
    let branch = record::resolve_branch(repo, req.branch.as_deref())?;
    let root = record::resolve_root(repo, req.root.as_ref())?;
    let mut runs = branch_runs(repo, &branch, &root, req.template.as_deref())?;
    if req.failed {
        runs.extend(failed_runs(repo, &root, req.template.as_deref())?);
    }
    if let Some(since) = req.since {
        runs.retain(|r| r.started_at().is_some_and(|t| t >= since));
    }
    sort_newest_first(&mut runs);
    Ok(runs)
}

fn sort_newest_first(runs: &mut [RunEntry]) {
    runs.sort_by(|a, b| {
        b.run_id
            .cmp(&a.run_id)
            .then_with(|| a.label().cmp(b.label()))
    });
}

/// The branch tip, `None` when the branch is unborn.
fn tip(repo: &Repository, branch: &str) -> Result<Option<Oid>> {
    match repo.refname_to_id(branch) {
        Ok(id) => Ok(Some(id)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("cannot read {branch}"), e)),
    }
}

pub fn commit_tree(repo: &Repository, id: Oid) -> Result<Tree<'_>> {
    repo.find_commit(id)
        .and_then(|c| c.tree())
        .map_err(|e| Error::git(format!("cannot read the tree of {id}"), e))
}

/// The directory at `path` in `tree`, if there is one.
pub fn subtree<'r>(repo: &'r Repository, tree: &Tree<'_>, path: &str) -> Result<Option<Tree<'r>>> {
    match tree.get_path(Path::new(path)) {
        Ok(entry) if entry.kind() == Some(ObjectType::Tree) => repo
            .find_tree(entry.id())
            .map(Some)
            .map_err(|e| Error::git(format!("cannot read {path}"), e)),
        Ok(_) => Ok(None),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("cannot read {path}"), e)),
    }
}

/// The id of the entry at `path` in `tree`, if there is one.
fn entry_id(tree: &Tree<'_>, path: &str) -> Option<Oid> {
    tree.get_path(Path::new(path)).ok().map(|e| e.id())
}

/// proof.json in `folder` of `tree`, `null` when it cannot be read.
pub fn read_proof(repo: &Repository, tree: &Tree<'_>, folder: &str) -> serde_json::Value {
    entry_id(tree, &format!("{folder}/proof.json"))
        .and_then(|id| repo.find_blob(id).ok())
        .and_then(|b| serde_json::from_slice(b.content()).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The run folders in a runs directory (`builds/<t>` or `init`): names that are run ids.
pub fn run_ids(dir: &Tree<'_>) -> Vec<RunId> {
    dir.iter()
        .filter(|e| e.kind() == Some(ObjectType::Tree))
        .filter_map(|e| e.name().ok().and_then(|n| n.parse::<RunId>().ok()))
        .collect()
}

/// The runs directories under the root in `tree`: (template or `None` for init, path).
pub fn runs_dirs(
    repo: &Repository,
    tree: &Tree<'_>,
    root: &EvidenceRoot,
    only: Option<&str>,
) -> Result<Vec<(Option<String>, String)>> {
    let mut dirs = Vec::new();
    if only.is_none_or(|t| t == "init") {
        dirs.push((None, root.join("init")));
    }
    if only != Some("init")
        && let Some(builds) = subtree(repo, tree, &root.join("builds"))?
    {
        for entry in builds.iter() {
            let Ok(name) = entry.name() else { continue };
            if entry.kind() == Some(ObjectType::Tree) && only.is_none_or(|t| t == name) {
                dirs.push((Some(name.to_owned()), root.join(&format!("builds/{name}"))));
            }
        }
    }
    Ok(dirs)
}

/// The runs on the branch, each with the commit that added its folder.
fn branch_runs(
    repo: &Repository,
    branch: &str,
    root: &EvidenceRoot,
    only: Option<&str>,
) -> Result<Vec<RunEntry>> {
    let Some(tip) = tip(repo, branch)? else {
        return Ok(Vec::new());
    };
    let tree = commit_tree(repo, tip)?;
    let mut runs = Vec::new();
    for (template, dir_path) in runs_dirs(repo, &tree, root, only)? {
        let Some(dir) = subtree(repo, &tree, &dir_path)? else {
            continue;
        };
        for run_id in run_ids(&dir) {
            let path = format!("{dir_path}/{run_id}");
            runs.push(RunEntry {
                template: template.clone(),
                proof: read_proof(repo, &tree, &path),
                run_id,
                path,
                commit: None,
                reference: None,
            });
        }
    }
    let adders = adding_commits(repo, tip, runs.iter().map(|r| r.path.as_str()))?;
    for run in &mut runs {
        run.commit = adders.get(&run.path).copied();
    }
    Ok(runs)
}

/// For each folder (present at `tip`), the first commit on the first-parent chain from `tip`
/// whose tree has it and whose parent's tree does not. One walk for all folders: a step is
/// skipped when the folder's parent directory has the same tree id on both sides.
pub fn adding_commits<'a>(
    repo: &Repository,
    tip: Oid,
    folders: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, Oid>> {
    // Pending folders grouped by their parent directory, so that unchanged directories are
    // passed over with one tree-id comparison.
    let mut pending: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for folder in folders {
        let (dir, _) = folder.rsplit_once('/').unwrap_or(("", folder));
        pending
            .entry(dir.to_owned())
            .or_default()
            .insert(folder.to_owned());
    }
    // The deepest directory holding every pending folder (the evidence root, usually): when
    // its tree id is the same on both sides of a step, nothing below it changed.
    let common = pending
        .keys()
        .map(|d| d.split('/').collect::<Vec<_>>())
        .reduce(|a, b| {
            a.iter()
                .zip(&b)
                .take_while(|(x, y)| x == y)
                .map(|(x, _)| *x)
                .collect()
        })
        .map(|parts| parts.join("/"))
        .unwrap_or_default();
    let mut found = BTreeMap::new();
    let mut id = tip;
    let mut commit = repo
        .find_commit(id)
        .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
    let mut tree = commit
        .tree()
        .map_err(|e| Error::git(format!("cannot read the tree of {id}"), e))?;
    while !pending.is_empty() {
        let parent = if commit.parent_count() > 0 {
            Some(
                commit
                    .parent(0)
                    .map_err(|e| Error::git(format!("cannot read the parent of {id}"), e))?,
            )
        } else {
            None
        };
        let parent_tree = match &parent {
            Some(p) => Some(
                p.tree()
                    .map_err(|e| Error::git(format!("cannot read the tree of {}", p.id()), e))?,
            ),
            None => None,
        };
        let unchanged = !common.is_empty() && {
            let here = entry_id(&tree, &common);
            here.is_some() && here == parent_tree.as_ref().and_then(|t| entry_id(t, &common))
        };
        let mut emptied = Vec::new();
        for (dir, folders) in pending.iter_mut().filter(|_| !unchanged) {
            let here = entry_id(&tree, dir);
            let there = parent_tree.as_ref().and_then(|t| entry_id(t, dir));
            if here.is_some() && here == there {
                continue;
            }
            folders.retain(|folder| {
                let in_here = entry_id(&tree, folder).is_some();
                let in_there = parent_tree
                    .as_ref()
                    .is_some_and(|t| entry_id(t, folder).is_some());
                if in_here && !in_there {
                    found.insert(folder.clone(), id);
                    false
                } else {
                    true
                }
            });
            if folders.is_empty() {
                emptied.push(dir.clone());
            }
        }
        for dir in emptied {
            pending.remove(&dir);
        }
        match (parent, parent_tree) {
            (Some(p), Some(t)) => {
                id = p.id();
                commit = p;
                tree = t;
            }
            _ => break,
        }
    }
    Ok(found)
}

/// The failed and cancelled runs, one per `refs/evidence/failed/…` ref.
fn failed_runs(
    repo: &Repository,
    root: &EvidenceRoot,
    only: Option<&str>,
) -> Result<Vec<RunEntry>> {
    let refs = repo
        .references()
        .map_err(|e| Error::git("cannot list refs", e))?;
    let mut runs = Vec::new();
    for reference in refs {
        let reference = reference.map_err(|e| Error::git("cannot list refs", e))?;
        let Ok(name) = reference.name() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(FAILED_PREFIX) else {
            continue;
        };
        let (template, run) = match rest.split('/').collect::<Vec<_>>()[..] {
            ["builds", t, run] => (Some(t.to_owned()), run),
            ["init", run] => (None, run),
            _ => continue,
        };
        if only.is_some_and(|o| o != template.as_deref().unwrap_or("init")) {
            continue;
        }
        let Ok(run_id) = run.parse::<RunId>() else {
            continue;
        };
        let name = name.to_owned();
        if let Some(entry) = failed_run(repo, root, &name, template, run_id)? {
            runs.push(entry);
        }
    }
    Ok(runs)
}

/// The failed run on `reference`, if the ref points at a commit holding its folder.
fn failed_run(
    repo: &Repository,
    root: &EvidenceRoot,
    reference: &str,
    template: Option<String>,
    run_id: RunId,
) -> Result<Option<RunEntry>> {
    let Ok(commit) = repo
        .find_reference(reference)
        .and_then(|r| r.peel_to_commit())
    else {
        return Ok(None);
    };
    let tree = commit
        .tree()
        .map_err(|e| Error::git(format!("cannot read the tree of {}", commit.id()), e))?;
    let tail = match &template {
        Some(t) => format!("builds/{t}/{run_id}"),
        None => format!("init/{run_id}"),
    };
    let mut path = root.join(&tail);
    if subtree(repo, &tree, &path)?.is_none() {
        // Recorded under another evidence root: the tree holds this one folder, find it.
        let mut other = None;
        let _ = tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            let full = format!("{dir}{}", entry.name().unwrap_or_default());
            if entry.kind() == Some(ObjectType::Tree) && full.ends_with(&format!("/{tail}")) {
                other = Some(full);
                return git2::TreeWalkResult::Abort;
            }
            git2::TreeWalkResult::Ok
        });
        match other {
            Some(p) => path = p,
            None => return Ok(None),
        }
    }
    Ok(Some(RunEntry {
        template,
        proof: read_proof(repo, &tree, &path),
        run_id,
        path,
        commit: Some(commit.id()),
        reference: Some(reference.to_owned()),
    }))
}

/// Which run to show.
#[derive(Debug, Clone)]
pub struct ShowRequest {
    /// `TEMPLATE`, `TEMPLATE@RUN`, `init` or `init@RUN`.
    pub spec: String,
    pub branch: Option<String>,
    pub root: Option<EvidenceRoot>,
}

/// One run with what `show` prints about it.
#[derive(Debug, Clone)]
pub struct Shown {
    pub entry: RunEntry,
    /// README.md as stored.
    pub readme: Vec<u8>,
    pub commit_id: Oid,
    pub author: String,
    pub date: String,
    pub subject: String,
}

/// Finds the run `show` names: the one `latest` points at, or the given run id on the branch or
/// on a failed-run ref.
pub fn show(repo: &Repository, req: &ShowRequest) -> Result<Shown> {
    let (label, run) = match req.spec.split_once('@') {
        Some((l, r)) => (l, Some(r)),
        None => (req.spec.as_str(), None),
    };
    check_label(label)?;
    let template = (label != "init").then(|| label.to_owned());
    let run = run
        .map(|r| {
            r.parse::<RunId>().map_err(|_| {
                Error::Inconsistent(format!(
                    "{r:?} is not a run id: use YYYY-MM-DDTHHMMSSZ or YYYY-MM-DDTHHMMSSZ-N"
                ))
            })
        })
        .transpose()?;
    let branch = record::resolve_branch(repo, req.branch.as_deref())?;
    let root = record::resolve_root(repo, req.root.as_ref())?;
    let dir_path = match &template {
        Some(t) => root.join(&format!("builds/{t}")),
        None => root.join("init"),
    };
    let tip = tip(repo, &branch)?;
    let tree = tip.map(|t| commit_tree(repo, t)).transpose()?;
    let dir = match &tree {
        Some(t) => subtree(repo, t, &dir_path)?,
        None => None,
    };
    let short_branch = branch.trim_start_matches("refs/heads/");

    let run = match run {
        Some(r) => r,
        None => match dir.as_ref().and_then(|d| latest_of(repo, d)) {
            Some(r) => r,
            None => return Err(not_found(repo, &branch, &root, label, None)),
        },
    };
    let path = format!("{dir_path}/{run}");
    let entry = match (
        tip,
        &tree,
        dir.as_ref().and_then(|d| d.get_name(&run.to_string())),
    ) {
        (Some(tip), Some(tree), Some(_)) => {
            let commit = adding_commits(repo, tip, [path.as_str()])?
                .get(&path)
                .copied();
            RunEntry {
                template: template.clone(),
                proof: read_proof(repo, tree, &path),
                run_id: run.clone(),
                path,
                commit,
                reference: None,
            }
        }
        _ => {
            let reference = match &template {
                Some(t) => format!("{FAILED_PREFIX}builds/{t}/{run}"),
                None => format!("{FAILED_PREFIX}init/{run}"),
            };
            match failed_run(repo, &root, &reference, template.clone(), run.clone())? {
                Some(e) => e,
                None => {
                    return Err(not_found(repo, &branch, &root, label, Some(&run)));
                }
            }
        }
    };
    let commit_id = entry.commit.ok_or_else(|| Error::Malformed {
        path: entry.path.clone(),
        reason: format!("no commit on {short_branch} adds this folder"),
    })?;
    let commit = repo
        .find_commit(commit_id)
        .map_err(|e| Error::git(format!("cannot read commit {commit_id}"), e))?;
    let tree = commit
        .tree()
        .map_err(|e| Error::git(format!("cannot read the tree of {commit_id}"), e))?;
    let readme = entry_id(&tree, &format!("{}/README.md", entry.path))
        .and_then(|id| repo.find_blob(id).ok())
        .map(|b| b.content().to_vec())
        .unwrap_or_default();
    let author = commit.author();
    let time = author.when();
    let date = DateTime::from_timestamp(time.seconds(), 0)
        .and_then(|t| {
            chrono::FixedOffset::east_opt(time.offset_minutes() * 60).map(|o| t.with_timezone(&o))
        })
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    Ok(Shown {
        author: format!(
            "{} <{}>",
            String::from_utf8_lossy(author.name_bytes()),
            String::from_utf8_lossy(author.email_bytes())
        ),
        date,
        subject: commit.summary().ok().flatten().unwrap_or("").to_owned(),
        readme,
        commit_id,
        entry,
    })
}

/// The run `latest` points at in a runs directory.
pub fn latest_of(repo: &Repository, dir: &Tree<'_>) -> Option<RunId> {
    let entry = dir.get_name("latest")?;
    let blob = repo.find_blob(entry.id()).ok()?;
    std::str::from_utf8(blob.content())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The error for a template or run that is not there, naming what is.
fn not_found(
    repo: &Repository,
    branch: &str,
    root: &EvidenceRoot,
    label: &str,
    run: Option<&RunId>,
) -> Error {
    let short_branch = branch.trim_start_matches("refs/heads/");
    let all = ListRequest {
        failed: true,
        branch: Some(branch.to_owned()),
        root: Some(root.clone()),
        ..Default::default()
    };
    let runs = list(repo, &all).unwrap_or_default();
    let mine: Vec<&RunEntry> = runs.iter().filter(|r| r.label() == label).collect();
    if mine.is_empty() {
        let names: BTreeSet<&str> = runs.iter().map(|r| r.label()).collect();
        let known = if names.is_empty() {
            format!("there are no runs on {short_branch} or on failed-run refs")
        } else {
            format!(
                "templates with runs: {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        return Error::Inconsistent(format!(
            "no runs of {label} under {root} on {short_branch}; {known}"
        ));
    }
    let latest: Vec<String> = mine
        .iter()
        .take(5)
        .map(|r| match &r.reference {
            Some(_) => format!("{} ({})", r.run_id, r.status()),
            None => r.run_id.to_string(),
        })
        .collect();
    match run {
        Some(run) => Error::Inconsistent(format!(
            "no run {label}@{run} on {short_branch} or on a failed-run ref; latest runs of {label}: {}",
            latest.join(", ")
        )),
        None => Error::Inconsistent(format!(
            "{label} has no `latest` run on {short_branch}; name one with {label}@RUN, e.g. {label}@{}",
            mine[0].run_id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_a_date() {
        assert_eq!(
            parse_since("2026-11-26").unwrap().to_rfc3339(),
            "2026-11-26T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-11-26T11:15:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-26T10:15:00+00:00"
        );
        for bad in ["", "yesterday", "2026-13-01", "2026-11-26 10:15"] {
            assert!(parse_since(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
