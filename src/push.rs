//! `git evidence push` (and `run`/`record --push`): evidence travels to a shared remote, however
//! many build hosts push to it at once.
//!
//! All network traffic goes through the git CLI (`git ls-remote`, `git fetch`, `git push
//! --atomic --porcelain`), so ssh keys and agents, credential helpers, proxies and `insteadOf`
//! rules work exactly as they do for the user's own pushes. One round:
//!
//! 1. `ls-remote` learns the remote branch tip and the remote's failed-run refs;
//! 2. when the remote tip is not an ancestor of the local branch (another host pushed first), it
//!    is fetched and the local evidence commits it lacks are **replayed** on top of it: each adds
//!    its own run folder again, `latest` and the index are recomputed (`latest` never moves
//!    backwards), and a run id the remote already has gets the next free suffix;
//! 3. failed-run refs the remote lacks are prepared the same way (renamed on a collision,
//!    re-parented when their parent was replayed or was never published);
//! 4. the local branch and refs move by compare-and-swap (checked-out work trees follow, the way
//!    `git checkout` would move them), and everything is pushed in one atomic push.
//!
//! A rejected push (someone else was faster, or the server's ref lock was busy) starts another
//! round after an exponential, jittered pause, within a budget of attempts and time. Commits on
//! the branch that git-evidence did not make are never rewritten nor published: a push that
//! would need to is refused with what to do instead. Whatever happens, the evidence stays
//! committed locally, and `git evidence push` delivers it later.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use git2::{FileMode, ObjectType, Oid, Repository, Tree};
use serde::Serialize;

use crate::commit::{self, subtree, write_commit};
use crate::error::{Error, Result};
use crate::list::commit_tree;
use crate::names::{EvidenceRoot, Kind, RunId};
use crate::proof::Proof;
use crate::record;
use crate::render;
use crate::verify::parse_trailers;

mod remote;
mod replay;

use remote::*;
use replay::*;

/// Exit code when the evidence is committed locally but is not on the remote (yet).
pub const EXIT_NOT_PUSHED: i32 = 76;

/// Push rounds before giving up, unless `evidence.pushAttempts` or `--attempts` say otherwise.
pub const DEFAULT_ATTEMPTS: u32 = 100;
/// Time budget of a push, unless `evidence.pushTimeout` or `--timeout` say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest any duration given to git-evidence may be (a day).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest a single git command may take when the budget is nearly spent.
const MIN_COMMAND_TIME: Duration = Duration::from_secs(30);

/// The refspec `setup` adds so that a plain `git fetch` brings failed runs.
pub const EVIDENCE_REFSPEC: &str = "+refs/evidence/*:refs/evidence/*";
const FAILED_PREFIX: &str = "refs/evidence/failed/";

/// What to push, as the command line gives it.
#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    /// Remote name or URL; see [`resolve_remote`].
    pub remote: Option<String>,
    /// Branch (`main` or `refs/heads/main`); the current branch when `None`.
    pub branch: Option<String>,
    pub root: Option<EvidenceRoot>,
    pub attempts: Option<u32>,
    pub timeout: Option<Duration>,
}

/// A run id that was taken on the remote and got a new one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Renamed {
    /// `builds/<template>` or `init`.
    pub runs: String,
    pub from: String,
    pub to: String,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    pub pushed: bool,
    pub remote: String,
    /// The local branch, full ref name.
    pub branch: String,
    /// The branch on the remote, full ref name.
    pub remote_branch: String,
    /// The branch tip now on the remote; `None` when the branch has no commits.
    #[serde(serialize_with = "oid_opt")]
    pub commit: Option<Oid>,
    /// Whether the branch was already up to date and nothing at all had to be sent.
    pub up_to_date: bool,
    /// Push rounds (1 when nobody else was pushing).
    pub attempts: u32,
    /// Local commits rebuilt on top of the remote tip, over all rounds.
    pub replayed: usize,
    pub renamed: Vec<Renamed>,
    /// Failed-run refs sent to the remote.
    pub failed_refs: Vec<String>,
    /// Checked-out work trees that could not follow the branch (the push itself succeeded).
    pub warnings: Vec<String>,
}

fn oid_opt<S: serde::Serializer>(id: &Option<Oid>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_string()),
        None => s.serialize_none(),
    }
}

/// The remote to push to: `arg`, else `git config evidence.remote`, else the branch's upstream
/// remote, else `origin`. A name must be a configured remote; URLs and paths are taken as given.
pub fn resolve_remote(repo: &Repository, arg: Option<&str>, branch: &str) -> Result<String> {
    let config = repo
        .config()
        .map_err(|e| Error::git("cannot read git config", e))?;
    let short = branch.trim_start_matches("refs/heads/");
    let name = match arg.filter(|a| !a.is_empty()) {
        Some(a) => a.to_owned(),
        None => config
            .get_string("evidence.remote")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                config
                    .get_string(&format!("branch.{short}.remote"))
                    .ok()
                    .filter(|v| !v.is_empty() && v != ".")
            })
            .unwrap_or_else(|| "origin".into()),
    };
    if is_named_remote(repo, &name) || looks_like_url(&name) || Path::new(&name).is_dir() {
        Ok(name)
    } else {
        Err(Error::NoRemote(name))
    }
}

fn is_named_remote(repo: &Repository, name: &str) -> bool {
    git2::Remote::is_valid_name(name)
        && repo
            .config()
            .and_then(|c| c.get_string(&format!("remote.{name}.url")))
            .is_ok()
}

fn looks_like_url(s: &str) -> bool {
    s.contains("://") || (s.contains(':') && !s.starts_with('/') && s.find(':') > Some(1))
}

/// The branch on the remote: the upstream's when the branch tracks one on this remote, else the
/// same name.
fn remote_branch(repo: &Repository, remote: &str, branch: &str) -> String {
    let short = branch.trim_start_matches("refs/heads/");
    let Ok(config) = repo.config() else {
        return branch.to_owned();
    };
    let upstream_remote = config.get_string(&format!("branch.{short}.remote")).ok();
    match config.get_string(&format!("branch.{short}.merge")) {
        Ok(merge) if upstream_remote.as_deref() == Some(remote) && merge.starts_with("refs/") => {
            merge
        }
        _ => branch.to_owned(),
    }
}

/// How long and how often to try.
#[derive(Debug, Clone, Copy)]
struct Budget {
    attempts: u32,
    timeout: Duration,
}

fn budget(repo: &Repository, req: &PushRequest) -> Result<Budget> {
    let config = repo
        .config()
        .map_err(|e| Error::git("cannot read git config", e))?;
    let attempts = match req.attempts {
        Some(n) => n,
        None => match config.get_i64("evidence.pushAttempts") {
            Ok(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX),
            Ok(n) => {
                return Err(Error::Inconsistent(format!(
                    "evidence.pushAttempts is {n}: it must be at least 1"
                )));
            }
            Err(_) => DEFAULT_ATTEMPTS,
        },
    };
    let timeout = match req.timeout {
        Some(t) => t,
        None => match config.get_string("evidence.pushTimeout") {
            Ok(text) => parse_duration(&text)
                .map_err(|e| Error::Inconsistent(format!("evidence.pushTimeout: {e}")))?,
            Err(_) => DEFAULT_TIMEOUT,
        },
    };
    Ok(Budget {
        attempts: attempts.max(1),
        timeout,
    })
}

/// Parses `90`, `90s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let bad = || format!("{text:?} is not a duration: use e.g. 90s, 5m or 1h");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => return Err(bad()),
    };
    match secs {
        Some(secs) if secs <= MAX_TIMEOUT.as_secs() => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{text:?} is too long: at most {}h",
            MAX_TIMEOUT.as_secs() / 3600
        )),
    }
}

/// The pause before round `attempt + 1`: exponential and randomised. After a race lost to
/// another host, anywhere from nothing up to a bound that doubles from 50 ms to 1 s ("full
/// jitter"): hosts that collided spread out, and one that lost many times is not always the
/// last to come back. A server that cannot be reached gets more room: from 250 ms, doubling up
/// to 5 s, the upper half randomised.
fn backoff(attempt: u32, cause: Cause) -> Duration {
    let (base_ms, cap_ms) = match cause {
        Cause::Race => (50u64, 1_000u64),
        Cause::Unreachable => (250, 5_000),
    };
    let ms = (base_ms << attempt.saturating_sub(1).min(8)).min(cap_ms);
    match cause {
        // Full jitter: anywhere up to the bound, so a host that lost many times is not always
        // the last to come back.
        Cause::Race => Duration::from_micros(random_u64() % (ms * 1000 + 1)),
        Cause::Unreachable => Duration::from_micros(ms * 500 + ms * (random_u64() % 1000) / 2),
    }
}

/// Why a round did not land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Another host (or process) got there first.
    Race,
    /// The remote could not be reached, or failed without saying why.
    Unreachable,
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the time varies it per call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Checks what a push after recording will need (the remote, the budget) before anything is
/// recorded or built, so that a typo is an input error, not a build whose push fails.
pub fn preflight(repo: &Repository, req: &PushRequest) -> Result<()> {
    let branch = record::resolve_branch(repo, req.branch.as_deref())?;
    resolve_remote(repo, req.remote.as_deref(), &branch)?;
    budget(repo, req)?;
    Ok(())
}

/// A push that did not land: why, and how far it got (`None` when it did not start).
#[derive(Debug)]
pub struct PushFailed {
    pub error: Error,
    pub progress: Option<Pushed>,
}

impl From<Error> for Box<PushFailed> {
    fn from(error: Error) -> Self {
        Box::new(PushFailed {
            error,
            progress: None,
        })
    }
}

/// Pushes the evidence branch and the failed-run refs the remote lacks. See the module docs.
pub fn push(repo: &Repository, req: &PushRequest) -> std::result::Result<Pushed, Box<PushFailed>> {
    let branch = record::resolve_branch(repo, req.branch.as_deref())?;
    let root = record::resolve_root(repo, req.root.as_ref())?;
    let remote = resolve_remote(repo, req.remote.as_deref(), &branch)?;
    let budget = budget(repo, req)?;
    let remote_branch = remote_branch(repo, &remote, &branch);
    let mut state = Pushed {
        pushed: false,
        remote: remote.clone(),
        branch: branch.clone(),
        remote_branch: remote_branch.clone(),
        commit: None,
        up_to_date: false,
        attempts: 0,
        replayed: 0,
        renamed: Vec::new(),
        failed_refs: Vec::new(),
        warnings: Vec::new(),
    };
    let ctx = Context {
        repo,
        root: &root,
        remote: &remote,
        branch: &branch,
        remote_branch: &remote_branch,
        atomic: std::cell::Cell::new(true),
        remote_failed: std::cell::RefCell::new(None),
    };
    let started = Instant::now();
    let retry_hint = retry_command(repo, req, &remote, &branch);
    loop {
        state.attempts += 1;
        let deadline = started + budget.timeout;
        let (why, cause) = match round(&ctx, &mut state, deadline) {
            Ok(Round::Done) => {
                state.pushed = true;
                return Ok(state);
            }
            Ok(Round::Again(why)) => (why, Cause::Race),
            Err(Failure::Transient(why)) => (why, Cause::Unreachable),
            Err(Failure::Raced(why)) => (why, Cause::Race),
            Err(Failure::Final(error)) => {
                return Err(Box::new(PushFailed {
                    error,
                    progress: Some(state),
                }));
            }
            Err(Failure::Rejected { reason, server }) => {
                return Err(Box::new(PushFailed {
                    error: Error::NotPushed {
                        remote: remote.clone(),
                        reason,
                        server,
                        retry: retry_hint,
                    },
                    progress: Some(state),
                }));
            }
        };
        tracing::debug!(attempt = state.attempts, %why, "push to {remote} did not land");
        let pause = backoff(state.attempts, cause);
        let spent = started.elapsed();
        if state.attempts >= budget.attempts || spent + pause > budget.timeout {
            let error = Error::NotPushed {
                remote: remote.clone(),
                reason: format!(
                    "gave up after {} attempt{} in {:.1}s: {why}",
                    state.attempts,
                    if state.attempts == 1 { "" } else { "s" },
                    spent.as_secs_f64()
                ),
                server: Vec::new(),
                retry: retry_hint,
            };
            return Err(Box::new(PushFailed {
                error,
                progress: Some(state),
            }));
        }
        std::thread::sleep(pause);
    }
}

/// The command that tries again later.
fn retry_command(repo: &Repository, req: &PushRequest, remote: &str, branch: &str) -> String {
    let mut cmd = format!("git evidence push {}", shell_word(remote));
    let current = record::resolve_branch(repo, None).ok();
    if current.as_deref() != Some(branch) {
        cmd.push_str(&format!(
            " --branch {}",
            shell_word(branch.trim_start_matches("refs/heads/"))
        ));
    }
    let default_root = record::resolve_root(repo, None).ok();
    if let Some(root) = req
        .root
        .as_ref()
        .filter(|r| Some(*r) != default_root.as_ref())
    {
        cmd.push_str(&format!(" --root {}", shell_word(root.as_str())));
    }
    cmd
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@+=,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

struct Context<'a> {
    repo: &'a Repository,
    root: &'a EvidenceRoot,
    remote: &'a str,
    branch: &'a str,
    remote_branch: &'a str,
    /// Cleared when the server does not support atomic pushes.
    atomic: std::cell::Cell<bool>,
    /// The remote's failed-run refs as last listed. They change rarely, so rounds that send no
    /// failed run reuse the list instead of asking again (which costs every host another
    /// process on both sides while they contend).
    remote_failed: std::cell::RefCell<Option<BTreeMap<String, Oid>>>,
}

enum Round {
    Done,
    /// Lost a race; try again after a pause.
    Again(String),
}

enum Failure {
    /// Network trouble: worth another round, after a longer pause.
    Transient(String),
    /// Something moved under us (locally, or a busy ref on the server): another round.
    Raced(String),
    /// The server refused for good (hook, permissions): the server's own words.
    Rejected { reason: String, server: Vec<String> },
    /// Anything else: stop with this error.
    Final(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Final(e)
    }
}

type RoundResult<T> = std::result::Result<T, Failure>;

/// What the remote has: its branch tip and its failed-run refs (name → id).
struct RemoteState {
    tip: Option<Oid>,
    failed: BTreeMap<String, Oid>,
}

fn round(ctx: &Context<'_>, state: &mut Pushed, deadline: Instant) -> RoundResult<Round> {
    let repo = ctx.repo;
    let remote = observe(ctx, deadline)?;
    let local = local_tip(repo, ctx.branch)?;

    // The branch: what to put on the remote.
    let mut plan = BranchPlan {
        new_tip: local,
        map: HashMap::new(),
        replayed: 0,
        renamed: Vec::new(),
    };
    if let (Some(l), Some(r)) = (local, remote.tip)
        && l != r
    {
        if repo.find_commit(r).is_err() {
            // Moved again (or was rewritten) between reading and fetching.
            return Ok(Round::Again(format!(
                "{} moved on {} while it was fetched",
                ctx.remote_branch, ctx.remote
            )));
        }
        let ahead = repo
            .graph_descendant_of(l, r)
            .map_err(|e| Error::git("cannot compare the local and remote branches", e))?;
        if ahead {
            let commits = unpushed(repo, l, Some(r))?;
            check_ours(ctx, &commits)?;
            // A run id another host gave a failed run, on the remote: replayed to get the next.
            if takes_failed_id(ctx, &remote, &commits)? {
                plan = replay(ctx, &remote, l, r)?;
            }
        } else {
            plan = replay(ctx, &remote, l, r)?;
        }
    } else if let (Some(l), None) = (local, remote.tip) {
        check_ours(ctx, &unpublished(ctx, l)?)?;
    }

    // Failed runs the remote lacks.
    fetch_suspects(ctx, &remote, deadline)?;
    let failed = plan_failed(ctx, &remote, local, &plan)?;

    // Nothing to send? The local branch may still have to catch up with the remote's tip.
    let branch_current = plan.new_tip.is_none() || plan.new_tip == remote.tip;
    let to_send: Vec<&FailedPush> = failed.iter().filter(|f| !f.adopted).collect();
    if !to_send.is_empty() {
        // Sending failed runs may collide with another host's: list them afresh next round.
        ctx.remote_failed.replace(None);
    }
    if branch_current && to_send.is_empty() {
        settle_local(ctx, &remote, local, &plan, &failed, state);
        state.commit = remote.tip;
        state.up_to_date = state.attempts == 1 && plan.new_tip == local;
        return Ok(Round::Done);
    }

    // Local refs move only once the remote has taken the push: a lost round leaves nothing
    // behind but unreferenced objects, and keeps the window between reading the remote's tip
    // and pushing onto it as short as it can be.
    let branch_spec = plan
        .new_tip
        .filter(|_| !branch_current)
        .map(|tip| format!("{tip}:{}", ctx.remote_branch));
    let failed_specs: Vec<String> = to_send
        .iter()
        .map(|f| format!("{}:{}", f.commit, f.name))
        .collect();
    let outcome = match &branch_spec {
        // Without atomic pushes the branch goes first, so that a failed run never lands on top
        // of a replayed commit the branch did not get.
        Some(b) if !ctx.atomic.get() && !failed_specs.is_empty() => {
            match git_push(ctx, std::slice::from_ref(b), deadline)? {
                PushOutcome::Accepted => git_push(ctx, &failed_specs, deadline)?,
                other => other,
            }
        }
        _ => {
            let all: Vec<String> = branch_spec.iter().chain(&failed_specs).cloned().collect();
            git_push(ctx, &all, deadline)?
        }
    };
    let adopted: Vec<FailedPush> = failed.iter().filter(|f| f.adopted).cloned().collect();
    match outcome {
        PushOutcome::Accepted => {
            landed(state, &remote, &plan, &failed);
            settle_local(ctx, &remote, local, &plan, &failed, state);
            Ok(Round::Done)
        }
        PushOutcome::Raced(why) => Ok(Round::Again(why)),
        PushOutcome::Refused {
            refs,
            reason,
            server,
        } => {
            // Failed runs the server will not take (e.g. the hosts may write the branch only)
            // must not keep the successful runs from landing.
            if let Some(b) = &branch_spec
                && refs.iter().all(|r| r.starts_with(FAILED_PREFIX))
            {
                match git_push(ctx, std::slice::from_ref(b), deadline)? {
                    PushOutcome::Accepted => {
                        landed(state, &remote, &plan, &adopted);
                        settle_local(ctx, &remote, local, &plan, &adopted, state);
                    }
                    PushOutcome::Raced(why) => return Ok(Round::Again(why)),
                    PushOutcome::Refused { .. } => {}
                }
            }
            Err(Failure::Rejected { reason, server })
        }
    }
}

/// Notes in `state` what the remote took: the plan's branch and the failed runs sent.
fn landed(state: &mut Pushed, remote: &RemoteState, plan: &BranchPlan, failed: &[FailedPush]) {
    state.commit = plan.new_tip.or(remote.tip);
    state.replayed = plan.replayed;
    state.renamed = plan.renamed.clone();
    state
        .renamed
        .extend(failed.iter().filter_map(|f| f.renamed.clone()));
    state.failed_refs = failed
        .iter()
        .filter(|f| !f.adopted)
        .map(|f| f.name.clone())
        .collect();
}

/// The local branch tip, `None` when the branch has no commits.
fn local_tip(repo: &Repository, branch: &str) -> Result<Option<Oid>> {
    match repo.find_reference(branch) {
        Ok(r) => Ok(r.target()),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("cannot read {branch}"), e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Moving local refs.

/// After the remote took the push (or had everything): moves the local branch to what was
/// pushed, and the rebuilt failed-run refs to their new names and commits; checked-out work
/// trees follow. Records made here while the push ran are replayed on top. Problems are
/// warnings: the evidence is on the remote, and the next push catches up.
fn settle_local(
    ctx: &Context<'_>,
    remote: &RemoteState,
    local: Option<Oid>,
    plan: &BranchPlan,
    failed: &[FailedPush],
    state: &mut Pushed,
) {
    let branch = ctx.branch.trim_start_matches("refs/heads/");
    if let Some(new) = plan.new_tip
        && Some(new) != local
        && let Err(why) = settle_branch(ctx, remote, local, new, state)
    {
        state.warnings.push(format!(
            "pushed, but the local {branch} was left as it was: {why}; the next `git evidence push` catches up"
        ));
    }
    if let Err(why) = settle_failed(ctx, failed) {
        state.warnings.push(format!(
            "pushed, but the local failed-run refs were not renamed: {why}"
        ));
    }
}

/// Moves the local branch from `local` to `new` by compare-and-swap; when records landed on it
/// meanwhile, they are replayed onto `new` first.
fn settle_branch(
    ctx: &Context<'_>,
    remote: &RemoteState,
    local: Option<Oid>,
    new: Oid,
    state: &mut Pushed,
) -> Result<()> {
    let repo = ctx.repo;
    let (_, committer) = commit::identity(repo)?;
    let msg = format!("git-evidence: push to {}", ctx.remote);
    for _ in 0..20 {
        let current = local_tip(repo, ctx.branch)?;
        if current == Some(new) {
            return Ok(()); // another push from here got there first
        }
        let target = if current == local {
            new
        } else {
            // Only records made here since the push began (on top of `local`) are expected.
            let (Some(cur), Some(l)) = (current, local) else {
                return Err(Error::Inconsistent(format!(
                    "{} moved meanwhile",
                    ctx.branch
                )));
            };
            let on_top = repo
                .graph_descendant_of(cur, l)
                .map_err(|e| Error::git("cannot walk history", e))?;
            if !on_top {
                return Err(Error::Inconsistent(format!(
                    "{} moved meanwhile",
                    ctx.branch
                )));
            }
            let commits = evidence_range(ctx, cur, Some(l), new)?;
            replay_onto(ctx, remote, commits, new)?
                .new_tip
                .unwrap_or(new)
        };
        // A checked-out work tree must be able to follow, or the branch stays: `git status`
        // would otherwise show the difference as changes. The runs are on the remote already.
        let worktrees = crate::worktree::lock_checked_out(repo, ctx.branch)?;
        if let Some(old) = current {
            for (dir, _) in &worktrees {
                read_tree(dir, old, target, true).map_err(|why| {
                    Error::Inconsistent(format!(
                        "the work tree {} has local changes in the way ({why}); commit or stash them",
                        dir.display()
                    ))
                })?;
            }
        }
        let mut tx = repo
            .transaction()
            .map_err(|e| Error::git("cannot start a ref transaction", e))?;
        if tx.lock_ref(ctx.branch).is_err() || local_tip(repo, ctx.branch)? != current {
            continue;
        }
        tx.set_target(ctx.branch, target, Some(&committer), &msg)
            .map_err(|e| Error::git(format!("cannot update {}", ctx.branch), e))?;
        if tx.commit().is_err() {
            continue;
        }
        if let Some(old) = current {
            for (dir, _lock) in &worktrees {
                if let Err(why) = read_tree(dir, old, target, false) {
                    state.warnings.push(format!(
                        "{} moved to {}, but the work tree {} could not follow: {why}",
                        ctx.branch.trim_start_matches("refs/heads/"),
                        &target.to_string()[..10],
                        dir.display()
                    ));
                }
            }
        }
        return Ok(());
    }
    Err(Error::Inconsistent(format!(
        "{} kept moving or stayed locked",
        ctx.branch
    )))
}

/// Renames (or re-points) the local failed-run refs that were pushed rebuilt.
fn settle_failed(ctx: &Context<'_>, failed: &[FailedPush]) -> Result<()> {
    let repo = ctx.repo;
    let rebuilt: Vec<&FailedPush> = failed.iter().filter(|f| f.replaces.is_some()).collect();
    if rebuilt.is_empty() {
        return Ok(());
    }
    let (_, committer) = commit::identity(repo)?;
    let msg = format!("git-evidence: push to {}", ctx.remote);
    let mut tx = repo
        .transaction()
        .map_err(|e| Error::git("cannot start a ref transaction", e))?;
    for f in &rebuilt {
        let (old_name, old_id) = f.replaces.as_ref().expect("rebuilt");
        let names = if old_name == &f.name {
            vec![old_name.as_str()]
        } else {
            vec![old_name.as_str(), f.name.as_str()]
        };
        for name in names {
            tx.lock_ref(name)
                .map_err(|e| Error::git(format!("cannot lock {name}"), e))?;
        }
        if repo.refname_to_id(old_name).ok() != Some(*old_id) {
            return Err(Error::Inconsistent(format!("{old_name} moved meanwhile")));
        }
        if old_name != &f.name
            && let Ok(taken) = repo.refname_to_id(&f.name)
            && taken != f.commit
        {
            // A run recorded here meanwhile took the name; this one stays as it is, and the
            // next push finds it on the remote already.
            return Err(Error::Inconsistent(format!(
                "{} was taken here meanwhile; {old_name} stays",
                f.name
            )));
        }
        if old_name != &f.name {
            repo.reference_ensure_log(&f.name)
                .map_err(|e| Error::git(format!("cannot create the reflog of {}", f.name), e))?;
            tx.remove(old_name)
                .map_err(|e| Error::git(format!("cannot remove {old_name}"), e))?;
        }
        tx.set_target(&f.name, f.commit, Some(&committer), &msg)
            .map_err(|e| Error::git(format!("cannot update {}", f.name), e))?;
    }
    tx.commit()
        .map_err(|e| Error::git("cannot update the failed-run refs", e))
}

/// `git read-tree -m -u OLD NEW` in a work tree: moves its index and files from one commit to
/// the other the way `git checkout` does, refusing when local changes are in the way. With
/// `dry_run`, only checks that it would succeed.
fn read_tree(dir: &Path, old: Oid, new: Oid, dry_run: bool) -> std::result::Result<(), String> {
    let run = |args: &[&str]| -> std::result::Result<(), String> {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(dir)
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " / "))
        }
    };
    run(&["update-index", "-q", "--refresh"]).ok();
    let (old, new) = (old.to_string(), new.to_string());
    if dry_run {
        run(&["read-tree", "-n", "-m", &old, &new])
    } else {
        run(&["read-tree", "-m", "-u", &old, &new])
    }
}

// ---------------------------------------------------------------------------------------------
// setup

/// What `setup` did.
#[derive(Debug, Clone, Serialize)]
pub struct SetupOutcome {
    pub remote: String,
    pub refspec: String,
    /// False when the refspec was there already.
    pub added: bool,
}

/// Adds [`EVIDENCE_REFSPEC`] to the remote's fetch refspecs, unless it (or its unforced form)
/// is there.
pub fn setup(repo: &Repository, remote: Option<&str>) -> Result<SetupOutcome> {
    let branch = record::resolve_branch(repo, None).unwrap_or_else(|_| "refs/heads/main".into());
    let name = resolve_remote(repo, remote, &branch)?;
    if !is_named_remote(repo, &name) {
        return Err(Error::NoRemote(name));
    }
    let key = format!("remote.{name}.fetch");
    let config = repo
        .config()
        .map_err(|e| Error::git("cannot read git config", e))?;
    let mut present = false;
    if let Ok(mut entries) = config.multivar(&key, None) {
        while let Some(Ok(entry)) = entries.next() {
            if entry.value().ok().map(|v| v.trim_start_matches('+'))
                == Some(EVIDENCE_REFSPEC.trim_start_matches('+'))
            {
                present = true;
            }
        }
    }
    if !present {
        let mut local = config
            .open_level(git2::ConfigLevel::Local)
            .map_err(|e| Error::git("cannot open the repository's config", e))?;
        // A pattern that matches no existing value adds one.
        local
            .set_multivar(&key, "^$", EVIDENCE_REFSPEC)
            .map_err(|e| Error::git(format!("cannot add to {key}"), e))?;
    }
    Ok(SetupOutcome {
        remote: name,
        refspec: EVIDENCE_REFSPEC.into(),
        added: !present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_lines_are_read_ref_by_ref() {
        let out = "To ../remote.git\n\
                   !\trefs/heads/main:refs/heads/main\t[rejected] (fetch first)\n\
                   !\trefs/evidence/failed/builds/t/x:refs/evidence/failed/builds/t/x\t[rejected] (atomic push failed)\n\
                   *\tabc:refs/evidence/failed/builds/t/y\t[new reference]\n\
                   Done\n";
        let r = parse_porcelain(out);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].flag, '!');
        assert_eq!(r[0].to, "refs/heads/main");
        assert_eq!(r[0].reason, "fetch first");
        assert_eq!(r[1].reason, "atomic push failed");
        assert_eq!(r[2].flag, '*');
        assert_eq!(r[2].reason, "");
        assert!(is_race_reason("fetch first"));
        assert!(is_race_reason("failed to update ref"));
        assert!(!is_race_reason("pre-receive hook declined"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        assert!(backoff(1, Cause::Race) <= Duration::from_millis(50));
        assert!(backoff(40, Cause::Race) <= Duration::from_secs(1));
        let longest = (0..200).map(|_| backoff(40, Cause::Race)).max().unwrap();
        assert!(
            longest > Duration::from_millis(500),
            "the bound grows: {longest:?}"
        );
        assert!(backoff(40, Cause::Unreachable) <= Duration::from_secs(5));
        assert!(backoff(40, Cause::Unreachable) >= Duration::from_millis(2_500));
        let samples: BTreeSet<Duration> = (0..20).map(|_| backoff(5, Cause::Race)).collect();
        assert!(samples.len() > 1, "backoff is randomised");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn urls_are_told_from_names() {
        assert!(looks_like_url("git://127.0.0.1:9418/x.git"));
        assert!(looks_like_url("git@github.com:org/infra.git"));
        assert!(!looks_like_url("origin"));
        assert!(!looks_like_url("/srv/git/infra.git"));
    }
}
