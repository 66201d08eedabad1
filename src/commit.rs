//! Files a run into git: one commit on the branch for a success, one commit on its own ref under
//! `refs/evidence/failed/` otherwise.
//!
//! Commits are built in memory on top of the branch tip (tree updates, never the index), and the
//! branch moves by compare-and-swap on the tip the commit was built on. When another writer got
//! there first the whole commit is rebuilt on the new tip — run id, `latest` and the index are
//! recomputed — and tried again after a randomised, growing pause, a bounded number of times.
//! History stays linear and nothing another writer recorded is ever dropped.

use std::time::Duration;

use git2::{ErrorCode, FileMode, ObjectType, Oid, Repository, Signature, Time, Tree};

use crate::error::{Error, Result};
use crate::index_page;
use crate::names::{EvidenceRoot, Kind, RunId};
use crate::proof::{LogDigest, Proof, RunFacts, Status};
use crate::render;

/// Where a run is filed.
#[derive(Debug, Clone)]
pub struct Target {
    /// Full ref name of the branch, `refs/heads/…`.
    pub branch: String,
    pub root: EvidenceRoot,
    /// Add a `Signed-off-by:` trailer of the committer.
    pub signoff: bool,
}

/// How many times a commit is rebuilt when the branch moves under it before giving up.
const MAX_ATTEMPTS: u32 = 100;

/// A run filed in git.
#[derive(Debug, Clone)]
pub struct Filed {
    pub run_id: RunId,
    pub proof: Proof,
    pub commit: Oid,
    /// The ref that now points at `commit`: the branch, or the failed-run ref.
    pub reference: String,
    /// The branch tip the commit was built on (its parent).
    pub parent: Option<Oid>,
    /// The run folder, `root/builds/<template>/<run-id>` or `root/init/<run-id>`.
    pub folder: String,
    /// Paths (files) the commit added or changed, for updating checked-out work trees.
    pub changed: Vec<String>,
    /// Whether `latest` now points at this run.
    pub latest_moved: bool,
    /// How many times the commit was built (1 when nobody else was writing).
    pub attempts: u32,
}

/// The folder under the root that holds runs of this kind (and template).
pub fn runs_dir(root: &EvidenceRoot, facts: &RunFacts) -> String {
    match (&facts.template, facts.kind) {
        (Some(t), Kind::Build) => root.join(&format!("builds/{t}")),
        _ => root.join("init"),
    }
}

/// The ref a failed or cancelled run is filed under.
pub fn failed_ref(facts: &RunFacts, run_id: &RunId) -> String {
    match (&facts.template, facts.kind) {
        (Some(t), Kind::Build) => format!("refs/evidence/failed/builds/{t}/{run_id}"),
        _ => format!("refs/evidence/failed/init/{run_id}"),
    }
}

/// Files the run: on the branch when it succeeded, on a failed-run ref otherwise.
pub fn file(
    repo: &Repository,
    target: &Target,
    facts: &RunFacts,
    log: &LogDigest,
) -> Result<Filed> {
    let (author, committer) = identity(repo)?;
    let who = Identity {
        signoff: target.signoff.then(|| signature_line(&committer)),
        author,
        committer,
    };
    let mut last = String::new();
    for attempt_no in 1..=MAX_ATTEMPTS {
        match attempt(repo, target, facts, log, &who)? {
            Attempt::Done(mut filed) => {
                filed.attempts = attempt_no;
                return Ok(*filed);
            }
            Attempt::Raced(why) => {
                tracing::debug!(attempt = attempt_no, %why, "lost the race for {}, rebuilding", target.branch);
                last = why;
                std::thread::sleep(backoff(attempt_no));
            }
        }
    }
    Err(Error::Contention {
        branch: target.branch.clone(),
        attempts: MAX_ATTEMPTS,
        last,
    })
}

/// Who commits, and the sign-off line when one is wanted.
struct Identity<'a> {
    author: Signature<'a>,
    committer: Signature<'a>,
    signoff: Option<String>,
}

enum Attempt {
    Done(Box<Filed>),
    /// Another writer moved or locked the ref; the reason, for the log.
    Raced(String),
}

/// A pause that grows with the attempt number, randomised so that writers that collided once
/// do not collide again in lock-step.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (1u64 << attempt.min(8)).min(200);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let noise = (u64::from(nanos) ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9)) % 1000;
    Duration::from_micros(cap_ms * 500 + cap_ms * noise / 2)
}

/// The branch tip, or `None` for an unborn branch.
fn branch_tip(repo: &Repository, branch: &str) -> Result<Option<Oid>> {
    match repo.find_reference(branch) {
        Ok(r) => match r.target() {
            Some(id) => Ok(Some(id)),
            None => Err(Error::Malformed {
                path: branch.to_owned(),
                reason: "a symbolic ref; name the branch it points to with --branch".into(),
            }),
        },
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("cannot read {branch}"), e)),
    }
}

fn tree_of(repo: &Repository, commit: Option<Oid>) -> Result<Tree<'_>> {
    match commit {
        Some(id) => repo
            .find_commit(id)
            .and_then(|c| c.tree())
            .map_err(|e| Error::git(format!("cannot read the tree of {id}"), e)),
        None => {
            let id = repo
                .treebuilder(None)
                .and_then(|b| b.write())
                .map_err(|e| Error::git("cannot write the empty tree", e))?;
            repo.find_tree(id)
                .map_err(|e| Error::git("cannot read the empty tree", e))
        }
    }
}

/// The directory at `path` in `tree`, if there is one; an error when `path` is a file.
pub(crate) fn subtree<'r>(
    repo: &'r Repository,
    tree: &Tree<'_>,
    path: &str,
) -> Result<Option<Tree<'r>>> {
    match tree.get_path(std::path::Path::new(path)) {
        Ok(entry) if entry.kind() == Some(ObjectType::Tree) => repo
            .find_tree(entry.id())
            .map(Some)
            .map_err(|e| Error::git(format!("cannot read {path}"), e)),
        Ok(_) => Err(Error::Malformed {
            path: path.to_owned(),
            reason: "expected a directory".into(),
        }),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("cannot read {path}"), e)),
    }
}

/// The run id `latest` points at in `dir`, if any.
fn latest_in(repo: &Repository, dir: Option<&Tree<'_>>, dir_path: &str) -> Result<Option<RunId>> {
    let Some(entry) = dir.and_then(|d| d.get_name("latest")) else {
        return Ok(None);
    };
    let path = format!("{dir_path}/latest");
    if entry.filemode() != 0o120000 {
        return Err(Error::Malformed {
            path,
            reason: "expected a symbolic link to a run folder".into(),
        });
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| Error::git(format!("cannot read {path}"), e))?;
    let target = std::str::from_utf8(blob.content()).map_err(|_| Error::Malformed {
        path: path.clone(),
        reason: "link target is not UTF-8".into(),
    })?;
    target.parse().map(Some).map_err(|_| Error::Malformed {
        path,
        reason: format!("link target {target:?} is not a run id"),
    })
}

/// The first free run id for this run: neither a folder on the branch nor a failed-run ref.
fn choose_run_id(repo: &Repository, facts: &RunFacts, dir: Option<&Tree<'_>>) -> RunId {
    let mut id = RunId::for_start(facts.started_at);
    loop {
        let name = id.to_string();
        let in_tree = dir.is_some_and(|d| d.get_name(&name).is_some());
        let in_refs = repo.find_reference(&failed_ref(facts, &id)).is_ok();
        if !in_tree && !in_refs {
            return id;
        }
        id = id.next();
    }
}

fn write_blob(repo: &Repository, data: &[u8], what: &str) -> Result<Oid> {
    repo.blob(data)
        .map_err(|e| Error::git(format!("cannot write {what}"), e))
}

/// Builds the commit for one attempt on the current branch tip and tries to land it.
fn attempt(
    repo: &Repository,
    target: &Target,
    facts: &RunFacts,
    log: &LogDigest,
    who: &Identity<'_>,
) -> Result<Attempt> {
    let tip = branch_tip(repo, &target.branch)?;
    let base = tree_of(repo, tip)?;
    let dir_path = runs_dir(&target.root, facts);
    let dir = subtree(repo, &base, &dir_path)?;
    let run_id = choose_run_id(repo, facts, dir.as_ref());
    let proof = facts.proof(&run_id, log);
    let folder = format!("{dir_path}/{run_id}");
    let log_path = format!("{folder}/{}", facts.kind.log_file_name());

    let mut update = git2::build::TreeUpdateBuilder::new();
    let mut changed = Vec::new();
    let readme = write_blob(repo, render::run_readme(&proof).as_bytes(), "README.md")?;
    let json = write_blob(repo, proof.to_json().as_bytes(), "proof.json")?;
    for (path, id) in [
        (format!("{folder}/README.md"), readme),
        (format!("{folder}/proof.json"), json),
        (log_path.clone(), log.blob),
    ] {
        update.upsert(path.as_str(), id, FileMode::Blob);
        changed.push(path);
    }

    let reserve = failed_ref(facts, &run_id);
    let (tree, latest_moved, reference, reflog) = if facts.status == Status::Success {
        let (tree, latest_moved) = success_tree(
            repo,
            &target.root,
            &base,
            (dir.as_ref(), &dir_path),
            &run_id,
            update,
            &mut changed,
        )?;
        let reflog = format!("git-evidence: record {} {run_id}", what(facts));
        (tree, latest_moved, target.branch.clone(), reflog)
    } else {
        // The tree holds this run's folder alone, at its usual path: a reviewer can `git show`
        // or check it out without the rest of the branch getting in the way.
        let tree = update
            .create_updated(repo, &tree_of(repo, None)?)
            .map_err(|e| Error::git("cannot build the tree of the failed run", e))?;
        let reflog = format!(
            "git-evidence: record {} {run_id} ({})",
            what(facts),
            facts.status
        );
        (tree, false, reserve.clone(), reflog)
    };

    let message = render::commit_message(&proof, &log_path, who.signoff.as_deref());
    let commit = make_commit(repo, who, &message, tree, tip)?;
    if let Some(why) = land(
        repo,
        &target.branch,
        tip,
        &reserve,
        &reference,
        commit,
        &who.committer,
        &reflog,
    )? {
        return Ok(Attempt::Raced(why));
    }
    Ok(Attempt::Done(Box::new(Filed {
        run_id,
        proof,
        commit,
        reference,
        parent: tip,
        folder,
        changed,
        latest_moved,
        attempts: 0,
    })))
}

/// Completes a success's tree: the run folder (already in `update`), `latest` when this run is
/// the newest, `.gitattributes` the first time, and the index rendered from the result.
/// Returns the tree and whether `latest` moved; adds the paths it wrote to `changed`.
pub(crate) fn success_tree(
    repo: &Repository,
    root: &EvidenceRoot,
    base: &Tree<'_>,
    (dir, dir_path): (Option<&Tree<'_>>, &str),
    run_id: &RunId,
    mut update: git2::build::TreeUpdateBuilder,
    changed: &mut Vec<String>,
) -> Result<(Oid, bool)> {
    let previous = latest_in(repo, dir, dir_path)?;
    let latest_moved = previous.as_ref().is_none_or(|p| p < run_id);
    if latest_moved {
        let link = write_blob(repo, run_id.to_string().as_bytes(), "latest")?;
        let path = format!("{dir_path}/latest");
        update.upsert(path.as_str(), link, FileMode::Link);
        changed.push(path);
    }
    let root_tree = subtree(repo, base, root.as_str())?;
    if root_tree
        .as_ref()
        .is_none_or(|t| t.get_name(".gitattributes").is_none())
    {
        let attrs = write_blob(repo, render::GITATTRIBUTES.as_bytes(), ".gitattributes")?;
        let path = root.join(".gitattributes");
        update.upsert(path.as_str(), attrs, FileMode::Blob);
        changed.push(path);
    }
    let with_run = update
        .create_updated(repo, base)
        .map_err(|e| Error::git("cannot build the new tree", e))?;
    let with_run = repo
        .find_tree(with_run)
        .map_err(|e| Error::git("cannot read the new tree", e))?;

    // The index describes the tree it sits in, so it is rendered from the tree with the run.
    let new_root = subtree(repo, &with_run, root.as_str())?;
    let index = index_page::render(repo, root, new_root.as_ref())?;
    let index_blob = write_blob(repo, index.as_bytes(), "the evidence index")?;
    let index_path = root.join("README.md");
    let mut update = git2::build::TreeUpdateBuilder::new();
    update.upsert(index_path.as_str(), index_blob, FileMode::Blob);
    let tree = update
        .create_updated(repo, &with_run)
        .map_err(|e| Error::git("cannot build the new tree", e))?;
    changed.push(index_path);
    Ok((tree, latest_moved))
}

/// Points `name` at `commit`, holding the locks of both the branch and the run id's failed-run
/// ref (`reserve`) while checking that the branch is still at `tip` — the tip the commit and
/// the run id were chosen from — and that no failed run took the id meanwhile.
///
/// A success moves the branch; a failure creates its ref. Both take the same two locks, so
/// a success and a failure of one template started in the same second can never both get one
/// run id, which separate compare-and-swaps on two different refs could not prevent.
/// Returns why it lost the race, or `None` when `name` was moved.
#[allow(clippy::too_many_arguments)]
fn land(
    repo: &Repository,
    branch: &str,
    tip: Option<Oid>,
    reserve: &str,
    name: &str,
    commit: Oid,
    committer: &Signature<'_>,
    reflog: &str,
) -> Result<Option<String>> {
    let mut tx = repo
        .transaction()
        .map_err(|e| Error::git("cannot start a ref transaction", e))?;
    for lock in [branch, reserve] {
        match tx.lock_ref(lock) {
            Ok(()) => {}
            Err(e) if is_race(&e) => return Ok(Some(format!("{lock} is locked: {}", e.message()))),
            Err(e) => return Err(Error::git(format!("cannot lock {lock}"), e)),
        }
    }
    if branch_tip(repo, branch)? != tip {
        return Ok(Some(format!("{branch} moved")));
    }
    if repo.find_reference(reserve).is_ok() {
        return Ok(Some(format!("{reserve} was taken by a failed run")));
    }
    if name == reserve {
        // Refs outside refs/heads get no reflog unless one exists already; a failed run's
        // ref should say when and by what it was made, like a branch does.
        repo.reference_ensure_log(name)
            .map_err(|e| Error::git(format!("cannot create the reflog of {name}"), e))?;
    }
    tx.set_target(name, commit, Some(committer), reflog)
        .map_err(|e| Error::git(format!("cannot update {name}"), e))?;
    match tx.commit() {
        Ok(()) => Ok(None),
        Err(e) if is_race(&e) => Ok(Some(e.message().to_owned())),
        Err(e) => Err(Error::git(format!("cannot update {name}"), e)),
    }
}

fn what(facts: &RunFacts) -> String {
    match &facts.template {
        Some(t) => t.to_string(),
        None => "init".into(),
    }
}

/// Whether a ref update failed because another writer got there first.
fn is_race(e: &git2::Error) -> bool {
    matches!(
        e.code(),
        ErrorCode::Modified | ErrorCode::Locked | ErrorCode::Exists
    )
}

fn make_commit(
    repo: &Repository,
    who: &Identity<'_>,
    message: &str,
    tree: Oid,
    parent: Option<Oid>,
) -> Result<Oid> {
    write_commit(repo, &who.author, &who.committer, message, tree, parent)
}

/// Writes a commit of `tree` on `parent` (none for a root commit), moving no ref.
pub(crate) fn write_commit(
    repo: &Repository,
    author: &Signature<'_>,
    committer: &Signature<'_>,
    message: &str,
    tree: Oid,
    parent: Option<Oid>,
) -> Result<Oid> {
    let tree = repo
        .find_tree(tree)
        .map_err(|e| Error::git("cannot read the new tree", e))?;
    let parent = parent
        .map(|id| repo.find_commit(id))
        .transpose()
        .map_err(|e| Error::git("cannot read the parent commit", e))?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(None, author, committer, message, &tree, &parents)
        .map_err(|e| Error::git("cannot write the commit", e))
}

/// `Name <email>` of a signature.
fn signature_line(sig: &Signature<'_>) -> String {
    format!(
        "{} <{}>",
        String::from_utf8_lossy(sig.name_bytes()),
        String::from_utf8_lossy(sig.email_bytes())
    )
}

/// Author and committer the way git picks them: `GIT_AUTHOR_*` / `GIT_COMMITTER_*`, then
/// `author.*` / `committer.*` / `user.*` config, then `git-evidence <git-evidence@HOST>` so that
/// an unconfigured build host still records.
pub fn identity(repo: &Repository) -> Result<(Signature<'static>, Signature<'static>)> {
    let config = repo
        .config()
        .map_err(|e| Error::git("cannot read git config", e))?;
    let get = |key: &str| config.get_string(key).ok().filter(|v| !v.trim().is_empty());
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    let host = crate::host_name().unwrap_or_else(|| "localhost".into());
    let make = |role: &str| -> Result<Signature<'static>> {
        let upper = role.to_uppercase();
        let name = env(&format!("GIT_{upper}_NAME"))
            .or_else(|| get(&format!("{role}.name")))
            .or_else(|| get("user.name"))
            .unwrap_or_else(|| "git-evidence".into());
        let email = env(&format!("GIT_{upper}_EMAIL"))
            .or_else(|| get(&format!("{role}.email")))
            .or_else(|| get("user.email"))
            .unwrap_or_else(|| format!("git-evidence@{host}"));
        let when = env(&format!("GIT_{upper}_DATE")).and_then(|d| parse_git_date(&d));
        match when {
            Some(time) => Signature::new(&name, &email, &time),
            None => Signature::now(&name, &email),
        }
        .map_err(|e| Error::git(format!("invalid {role} identity {name} <{email}>"), e))
    };
    Ok((make("author")?, make("committer")?))
}

/// Parses the date formats git accepts in `GIT_*_DATE` that matter in practice: `@<unix> <tz>`,
/// `<unix> <tz>`, RFC 3339 and RFC 2822.
fn parse_git_date(text: &str) -> Option<Time> {
    let text = text.trim();
    let raw = text.strip_prefix('@').unwrap_or(text);
    if let Some((secs, tz)) = raw.split_once(' ')
        && let Ok(secs) = secs.parse::<i64>()
    {
        let tz = tz.trim();
        let sign = if tz.starts_with('-') { -1 } else { 1 };
        let digits = tz.trim_start_matches(['+', '-']);
        if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let hours: i32 = digits[..2].parse().ok()?;
            let minutes: i32 = digits[2..].parse().ok()?;
            return Some(Time::new(secs, sign * (hours * 60 + minutes)));
        }
    }
    if let Ok(secs) = raw.parse::<i64>() {
        return Some(Time::new(secs, 0));
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_rfc2822(text))
        .ok()?;
    Some(Time::new(
        parsed.timestamp(),
        parsed.offset().local_minus_utc() / 60,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_dates_parse_like_git() {
        let t = parse_git_date("@1700000000 +0130").unwrap();
        assert_eq!((t.seconds(), t.offset_minutes()), (1_700_000_000, 90));
        let t = parse_git_date("1700000000 -0500").unwrap();
        assert_eq!((t.seconds(), t.offset_minutes()), (1_700_000_000, -300));
        let t = parse_git_date("2026-11-26T10:15:00+02:00").unwrap();
        assert_eq!((t.seconds(), t.offset_minutes()), (1_795_680_900, 120));
        assert!(parse_git_date("yesterday").is_none());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(1) <= Duration::from_millis(2));
        assert!(backoff(30) <= Duration::from_millis(200));
        assert!(backoff(30) >= Duration::from_millis(100));
    }
}
