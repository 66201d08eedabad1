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

/// The pause before round `attempt + 1`: exponential, with the upper half randomised so hosts
/// that collided once do not collide again in lock-step. Losing a race to another host is
/// resolved within a round trip, so those pauses stay short (25 ms, doubling up to 400 ms) and
/// a host that lost a few times is not starved by fresher ones; a server that cannot be reached
/// gets more room (250 ms, doubling up to 5 s).
fn backoff(attempt: u32, cause: Cause) -> Duration {
    let (base_ms, cap_ms) = match cause {
        Cause::Race => (25u64, 400u64),
        Cause::Unreachable => (250, 5_000),
    };
    let ms = (base_ms << attempt.saturating_sub(1).min(8)).min(cap_ms);
    let noise = random_u64() % 1000;
    Duration::from_micros(ms * 500 + ms * noise / 2)
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
            fetch(ctx, deadline)?;
            if repo.find_commit(r).is_err() {
                // Moved again (or was rewritten) between reading and fetching.
                return Ok(Round::Again(format!(
                    "{} moved on {} while it was fetched",
                    ctx.remote_branch, ctx.remote
                )));
            }
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
// Running git.

/// A finished git command.
struct GitOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `git args…` against this repository, killing it when `deadline` (at least
/// [`MIN_COMMAND_TIME`] from now) passes.
fn git(ctx: &Context<'_>, args: &[OsString], deadline: Instant) -> RoundResult<GitOutput> {
    git_at(ctx.repo.path(), args, deadline)
}

/// [`git`] for a repository given by its git dir (usable from another thread).
fn git_at(git_dir: &Path, args: &[OsString], deadline: Instant) -> RoundResult<GitOutput> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .env_remove("GIT_WORK_TREE");
    // An unattended build host must not hang on a password prompt.
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        cmd.env("GIT_TERMINAL_PROMPT", "0");
    }
    let limit = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_COMMAND_TIME);
    run_limited(cmd, limit).map_err(|e| {
        Failure::Final(Error::io(
            format!(
                "cannot run git {}",
                args.first().and_then(|a| a.to_str()).unwrap_or("")
            ),
            e,
        ))
    })
}

/// Runs `cmd` to completion or until `limit` passes (then it is killed and reported failed).
fn run_limited(mut cmd: Command, limit: Duration) -> std::io::Result<GitOutput> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    // Its own process group, so that a timeout kills what git started too (ssh, a remote
    // helper, a hook), which would otherwise keep the pipes open.
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let pipe = |mut r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            let _ = tx.send(s);
        });
        rx
    };
    let out = pipe(Box::new(child.stdout.take().expect("piped stdout")));
    let err = pipe(Box::new(child.stderr.take().expect("piped stderr")));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (status, timed_out) = match rx.recv_timeout(limit) {
        Ok(status) => (status?, false),
        Err(_) => {
            // SAFETY: kill(2) of the process group git leads; git is not reaped before it exits.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
            match rx.recv() {
                Ok(status) => (status?, true),
                Err(_) => return Err(std::io::Error::other("lost track of git")),
            }
        }
    };
    // Whatever still holds the pipes after git ended is not waited for long.
    let grace = Duration::from_secs(if timed_out { 1 } else { 10 });
    let text = |rx: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8_lossy(&rx.recv_timeout(grace).unwrap_or_default()).into_owned()
    };
    let stdout = text(out);
    let mut stderr = text(err);
    if timed_out {
        stderr.push_str(&format!("\ngit did not finish within {}s", limit.as_secs()));
    }
    Ok(GitOutput {
        success: status.success() && !timed_out,
        stdout,
        stderr,
    })
}

fn args<const N: usize>(list: [&str; N]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// What the remote has, in as few round trips as possible, since a host that takes longer
/// between reading the remote's tip and pushing onto it loses more races. With a named remote,
/// one fetch into its remote-tracking branch reads the tip and brings its objects at once,
/// while an ls-remote lists the failed-run refs beside it; otherwise ls-remote reads both, and
/// a fetch follows when the tip is new here.
fn observe(ctx: &Context<'_>, deadline: Instant) -> RoundResult<RemoteState> {
    let repo = ctx.repo;
    if let Some(tracking) = tracking_ref(ctx) {
        let spec = format!("+{}:{tracking}", ctx.remote_branch);
        let a = args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            ctx.remote,
            &spec,
        ]);
        // The failed-run refs are listed at the same time, so that reading them costs no time
        // between reading the tip and pushing onto it.
        let git_dir = repo.path().to_path_buf();
        let list = args([
            "ls-remote",
            "--refs",
            "--",
            ctx.remote,
            &format!("{FAILED_PREFIX}*"),
        ]);
        let (fetched, listed) = std::thread::scope(|scope| {
            let lister = scope.spawn(|| git_at(&git_dir, &list, deadline));
            let fetched = git(ctx, &a, deadline);
            (fetched, lister.join().expect("ls-remote thread"))
        });
        let out = fetched?;
        let tip =
            if out.success {
                Some(repo.refname_to_id(&tracking).map_err(|e| {
                    Error::git(format!("cannot read {tracking} after fetching it"), e)
                })?)
            } else if out.stderr.contains("couldn't find remote ref") {
                None
            } else if is_local_lock_error(&out.stderr) {
                // Another process here is fetching into the same ref: ask the remote directly.
                return ls_remote(ctx, deadline, true);
            } else {
                return Err(connection_failure(ctx, &out.stderr));
            };
        let listed = listed?;
        if !listed.success {
            return Err(connection_failure(ctx, &listed.stderr));
        }
        let failed = parse_ls_remote(&listed.stdout, None).failed;
        return Ok(RemoteState { tip, failed });
    }
    let remote = ls_remote(ctx, deadline, true)?;
    if let Some(r) = remote.tip
        && repo.find_commit(r).is_err()
    {
        fetch(ctx, deadline)?;
    }
    Ok(remote)
}

/// The remote-tracking branch of the remote branch, when the remote is a configured one.
fn tracking_ref(ctx: &Context<'_>) -> Option<String> {
    if !is_named_remote(ctx.repo, ctx.remote) {
        return None;
    }
    let short = ctx.remote_branch.strip_prefix("refs/heads/")?;
    Some(format!("refs/remotes/{}/{short}", ctx.remote))
}

fn is_local_lock_error(stderr: &str) -> bool {
    stderr.contains("cannot lock ref") || stderr.contains("unable to update local ref")
}

/// The remote's failed-run refs, and its branch tip when `branch`.
fn ls_remote(ctx: &Context<'_>, deadline: Instant, branch: bool) -> RoundResult<RemoteState> {
    let mut a = args(["ls-remote", "--refs", "--", ctx.remote]);
    if branch {
        a.push(ctx.remote_branch.into());
    }
    a.push(format!("{FAILED_PREFIX}*").into());
    let out = git(ctx, &a, deadline)?;
    if !out.success {
        return Err(connection_failure(ctx, &out.stderr));
    }
    Ok(parse_ls_remote(
        &out.stdout,
        branch.then_some(ctx.remote_branch),
    ))
}

/// Reads `git ls-remote` output: the branch's tip (when asked for) and the failed-run refs.
fn parse_ls_remote(stdout: &str, branch: Option<&str>) -> RemoteState {
    let mut state = RemoteState {
        tip: None,
        failed: BTreeMap::new(),
    };
    for line in stdout.lines() {
        let Some((id, name)) = line.split_once('\t') else {
            continue;
        };
        let Ok(id) = Oid::from_str(id) else { continue };
        if Some(name) == branch {
            state.tip = Some(id);
        } else if let Some(rest) = name.strip_prefix(FAILED_PREFIX) {
            state.failed.insert(rest.to_owned(), id);
        }
    }
    state
}

/// Fetches the remote branch's objects (the remote-tracking branch moves too when the remote is
/// configured to have one).
fn fetch(ctx: &Context<'_>, deadline: Instant) -> RoundResult<()> {
    let a = args([
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--",
        ctx.remote,
        ctx.remote_branch,
    ]);
    let out = git(ctx, &a, deadline)?;
    if !out.success {
        // Another fetch in this repository may hold the remote-tracking ref's lock; the objects
        // arrived all the same. The caller checks for them.
        tracing::debug!(stderr = %out.stderr.trim(), "git fetch failed");
        if !is_local_lock_error(&out.stderr) {
            return Err(connection_failure(ctx, &out.stderr));
        }
    }
    Ok(())
}

/// Classifies a git command that failed before any ref was updated: trouble on the way to
/// the server (worth another round) or a refusal (authentication, a missing repository, a
/// local hook) that another round would only repeat.
fn connection_failure(ctx: &Context<'_>, stderr: &str) -> Failure {
    let lower = stderr.to_ascii_lowercase();
    let permanent = [
        "authentication failed",
        "permission denied",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "repository not found",
        "' not found",
        "does not appear to be a git repository",
        "access denied",
        "returned error: 401",
        "returned error: 403",
        "returned error: 404",
        "invalid username or password",
        "host key verification failed",
    ];
    let transient = [
        "unable to connect",
        "connection refused",
        "connection reset",
        "connection closed",
        "timed out",
        "could not resolve host",
        "could not resolve hostname",
        "name or service not known",
        "temporary failure in name resolution",
        "network is unreachable",
        "no route to host",
        "the remote end hung up unexpectedly",
        "early eof",
        "rpc failed",
        "returned error: 5",
        "broken pipe",
        "could not read from remote repository",
        "git did not finish within",
    ];
    let lines: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .map(str::to_owned)
        .collect();
    let text = if lines.is_empty() {
        "git failed without a message".to_owned()
    } else {
        lines.join(" / ").replace("fatal: ", "")
    };
    if !permanent.iter().any(|p| lower.contains(p)) && transient.iter().any(|p| lower.contains(p)) {
        Failure::Transient(format!("cannot reach {}: {text}", ctx.remote))
    } else {
        Failure::Rejected {
            reason: format!("{}: {text}", ctx.remote),
            server: Vec::new(),
        }
    }
}

enum PushOutcome {
    Accepted,
    Raced(String),
    /// The server refused these refs for good (a hook, permissions).
    Refused {
        refs: Vec<String>,
        reason: String,
        server: Vec<String>,
    },
}

/// `git push --atomic --porcelain REMOTE refspecs…`, its result read ref by ref.
fn git_push(ctx: &Context<'_>, refspecs: &[String], deadline: Instant) -> RoundResult<PushOutcome> {
    let mut a: Vec<OsString> = vec!["push".into(), "--porcelain".into()];
    if ctx.atomic.get() {
        a.push("--atomic".into());
    }
    a.push("--".into());
    a.push(ctx.remote.into());
    a.extend(refspecs.iter().map(OsString::from));
    let out = git(ctx, &a, deadline)?;
    let results = parse_porcelain(&out.stdout);
    if results.is_empty() {
        if out.success {
            return Ok(PushOutcome::Accepted);
        }
        if out.stderr.contains("does not support --atomic") && ctx.atomic.get() {
            ctx.atomic.set(false);
            return Ok(PushOutcome::Raced(
                "the server does not support atomic pushes; pushing ref by ref".into(),
            ));
        }
        return Err(connection_failure(ctx, &out.stderr));
    }
    let server: Vec<String> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("remote:"))
        .map(|l| l.trim_end().to_owned())
        .collect();
    let mut raced = Vec::new();
    let mut refused = Vec::new();
    let mut refused_refs = Vec::new();
    for r in &results {
        match r.flag {
            ' ' | '*' | '+' | '=' | '-' => {}
            _ => {
                let reason = r.reason.as_str();
                if is_race_reason(reason) {
                    raced.push(format!("{}: {}", r.to, r.summary));
                } else if !reason.starts_with("atomic push fail")
                    && reason != "atomic transaction failed"
                {
                    refused.push(format!("{} {}", r.to, r.summary));
                    refused_refs.push(r.to.clone());
                }
            }
        }
    }
    if !refused.is_empty() {
        return Ok(PushOutcome::Refused {
            refs: refused_refs,
            reason: format!("{} refused the push: {}", ctx.remote, refused.join("; ")),
            server,
        });
    }
    if !raced.is_empty() {
        return Ok(PushOutcome::Raced(raced.join("; ")));
    }
    if !out.success {
        return Err(Failure::Raced(format!(
            "git push failed: {}",
            out.stderr.trim()
        )));
    }
    Ok(PushOutcome::Accepted)
}

/// One ref's line of `git push --porcelain`.
#[derive(Debug, PartialEq, Eq)]
struct RefResult {
    flag: char,
    to: String,
    /// `[rejected] (fetch first)`, `[new reference]`, …
    summary: String,
    /// The parenthesised reason, when there is one.
    reason: String,
}

fn parse_porcelain(stdout: &str) -> Vec<RefResult> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let flag = parts.next()?;
            let spec = parts.next()?;
            let summary = parts.next().unwrap_or("").trim().to_owned();
            let flag = flag.chars().next().filter(|_| flag.len() == 1)?;
            let to = spec.rsplit_once(':').map(|(_, to)| to).unwrap_or(spec);
            let reason = summary
                .rsplit_once('(')
                .and_then(|(_, r)| r.strip_suffix(')'))
                .unwrap_or("")
                .to_owned();
            Some(RefResult {
                flag,
                to: to.to_owned(),
                summary,
                reason,
            })
        })
        .collect()
}

/// Whether a rejection means someone else updated the ref first (or held its lock).
fn is_race_reason(reason: &str) -> bool {
    [
        "fetch first",
        "non-fast-forward",
        "stale info",
        "already exists",
        "failed to update ref",
        "failed to lock",
        "cannot lock ref",
        "incorrect old value",
        "reference already exists",
        "unable to lock",
    ]
    .iter()
    .any(|r| reason.contains(r))
}

// ---------------------------------------------------------------------------------------------
// Which commits are ours.

/// A commit git-evidence made on the branch: it adds one run folder (plus `latest`, the index
/// and `.gitattributes`) and says so in its trailers.
struct EvidenceCommit {
    id: Oid,
    /// `builds/<template>` or `init`, relative to the root.
    runs: String,
    run_id: RunId,
    kind: Kind,
}

/// The first-parent commits from `tip` back to (not including) `base`, oldest first; `None`
/// when `base` is not on that path (merges in between).
fn first_parent_range(repo: &Repository, tip: Oid, base: Option<Oid>) -> Result<Option<Vec<Oid>>> {
    let mut out = Vec::new();
    let mut at = Some(tip);
    while let Some(id) = at {
        if Some(id) == base {
            out.reverse();
            return Ok(Some(out));
        }
        let commit = repo
            .find_commit(id)
            .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
        out.push(id);
        at = commit.parent_id(0).ok();
    }
    if base.is_none() {
        out.reverse();
        Ok(Some(out))
    } else {
        Ok(None)
    }
}

/// The commits on `tip` that `base` lacks (all of them, merges included), oldest first.
fn unpushed(repo: &Repository, tip: Oid, base: Option<Oid>) -> Result<Vec<Oid>> {
    let mut walk = repo
        .revwalk()
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.push(tip)
        .map_err(|e| Error::git("cannot walk history", e))?;
    if let Some(b) = base {
        walk.hide(b)
            .map_err(|e| Error::git("cannot walk history", e))?;
    }
    walk.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::git("cannot walk history", e))
}

/// Commits of `tip` that no remote-tracking branch of the remote has (the remote lacks the
/// branch, so this is the best local knowledge of what it has).
fn unpublished(ctx: &Context<'_>, tip: Oid) -> Result<Vec<Oid>> {
    let repo = ctx.repo;
    let mut walk = repo
        .revwalk()
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.push(tip)
        .map_err(|e| Error::git("cannot walk history", e))?;
    if is_named_remote(repo, ctx.remote) {
        let _ = walk.hide_glob(&format!("refs/remotes/{}/*", ctx.remote));
    }
    walk.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::git("cannot walk history", e))
}

/// Whether one of the (evidence) `commits` adds a run whose id is a failed run's on the remote.
fn takes_failed_id(ctx: &Context<'_>, remote: &RemoteState, commits: &[Oid]) -> Result<bool> {
    for &id in commits {
        if let Some(c) = evidence_commit(ctx.repo, ctx.root, id)?
            && remote
                .failed
                .contains_key(&format!("{}/{}", c.runs, c.run_id))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses when any of `commits` is not git-evidence's.
fn check_ours(ctx: &Context<'_>, commits: &[Oid]) -> Result<()> {
    let mut foreign = Vec::new();
    for &id in commits {
        if evidence_commit(ctx.repo, ctx.root, id)?.is_none() {
            foreign.push(id);
        }
    }
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(foreign_error(ctx, &foreign))
    }
}

fn foreign_error(ctx: &Context<'_>, foreign: &[Oid]) -> Error {
    let commits = foreign
        .iter()
        .take(5)
        .map(|id| {
            let subject = ctx
                .repo
                .find_commit(*id)
                .ok()
                .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
                .unwrap_or_default();
            format!("{} {subject:?}", &id.to_string()[..10])
        })
        .chain((foreign.len() > 5).then(|| format!("and {} more", foreign.len() - 5)))
        .collect();
    Error::ForeignCommits {
        branch: ctx.branch.trim_start_matches("refs/heads/").to_owned(),
        remote: ctx.remote.to_owned(),
        commits,
    }
}

/// Reads `id` as one of git-evidence's branch commits, or `None` when it is anything else.
fn evidence_commit(
    repo: &Repository,
    root: &EvidenceRoot,
    id: Oid,
) -> Result<Option<EvidenceCommit>> {
    let commit = repo
        .find_commit(id)
        .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
    if commit.parent_count() > 1 {
        return Ok(None);
    }
    let message = String::from_utf8_lossy(commit.message_bytes());
    let trailers: BTreeMap<String, String> = parse_trailers(&message).into_iter().collect();
    let (Some(kind), Some(run)) = (trailers.get("Evidence-Kind"), trailers.get("Evidence-Run"))
    else {
        return Ok(None);
    };
    let Ok(run_id) = run.parse::<RunId>() else {
        return Ok(None);
    };
    let (kind, runs) = match (kind.as_str(), trailers.get("Evidence-Template")) {
        ("build", Some(t)) if t.parse::<crate::names::Template>().is_ok() => {
            (Kind::Build, format!("builds/{t}"))
        }
        ("init", None) => (Kind::Init, "init".to_owned()),
        _ => return Ok(None),
    };
    if trailers.get("Evidence-Status").map(String::as_str) != Some("success") {
        return Ok(None);
    }
    let dir = root.join(&runs);
    let folder = format!("{dir}/{run_id}");
    let tree = commit
        .tree()
        .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
    if tree
        .get_path(Path::new(&folder))
        .map(|e| e.kind() != Some(ObjectType::Tree))
        .unwrap_or(true)
    {
        return Ok(None);
    }
    let parent_tree = match commit.parent(0) {
        Ok(p) => Some(
            p.tree()
                .map_err(|e| Error::git(format!("cannot read commit {}", p.id()), e))?,
        ),
        Err(_) => None,
    };
    if parent_tree
        .as_ref()
        .is_some_and(|t| t.get_path(Path::new(&folder)).is_ok())
    {
        return Ok(None); // the folder was there before: not an addition
    }
    // Everything the commit changes is the run folder, `latest`, the index or .gitattributes.
    let diff = repo
        .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)
        .map_err(|e| Error::git(format!("cannot diff commit {id}"), e))?;
    let allowed_exact = [
        format!("{dir}/latest"),
        root.join("README.md"),
        root.join(".gitattributes"),
    ];
    let folder_prefix = format!("{folder}/");
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            let Some(path) = file.path().and_then(Path::to_str) else {
                return Ok(None);
            };
            if !(path.starts_with(&folder_prefix) || allowed_exact.iter().any(|p| p == path)) {
                return Ok(None);
            }
        }
    }
    Ok(Some(EvidenceCommit {
        id,
        runs,
        run_id,
        kind,
    }))
}

// ---------------------------------------------------------------------------------------------
// Replaying.

/// The branch as it should be pushed.
struct BranchPlan {
    /// The tip to push (and to move the local branch to); `None` when the branch has no commits.
    new_tip: Option<Oid>,
    /// Replaced local commit → its replacement (or the remote commit that already had its run).
    map: HashMap<Oid, Oid>,
    replayed: usize,
    renamed: Vec<Renamed>,
}

/// Run ids that are taken in a runs folder: on the base tree, on the remote's failed refs, and
/// on local failed refs.
fn taken(
    repo: &Repository,
    remote: &RemoteState,
    dir: Option<&Tree<'_>>,
    runs: &str,
    id: &RunId,
) -> bool {
    let name = id.to_string();
    let key = format!("{runs}/{name}");
    dir.is_some_and(|d| d.get_name(&name).is_some())
        || remote.failed.contains_key(&key)
        || repo
            .find_reference(&format!("{FAILED_PREFIX}{key}"))
            .is_ok()
}

/// Rebuilds the local evidence commits the remote lacks on top of the remote tip `r`.
fn replay(ctx: &Context<'_>, remote: &RemoteState, local: Oid, r: Oid) -> Result<BranchPlan> {
    let repo = ctx.repo;
    let base = repo.merge_base(local, r).ok();
    let commits = evidence_range(ctx, local, base, r)?;
    replay_onto(ctx, remote, commits, r)
}

/// The commits from `tip` back to `base` (first parents), which must all be git-evidence's.
fn evidence_range(
    ctx: &Context<'_>,
    tip: Oid,
    base: Option<Oid>,
    other: Oid,
) -> Result<Vec<EvidenceCommit>> {
    let repo = ctx.repo;
    let Some(range) = first_parent_range(repo, tip, base)? else {
        return Err(foreign_error(ctx, &unpushed(repo, tip, Some(other))?));
    };
    let mut commits = Vec::new();
    let mut foreign = Vec::new();
    for id in range {
        match evidence_commit(repo, ctx.root, id)? {
            Some(c) => commits.push(c),
            None => foreign.push(id),
        }
    }
    if !foreign.is_empty() {
        return Err(foreign_error(ctx, &foreign));
    }
    Ok(commits)
}

/// Rebuilds `commits` (oldest first), one on top of the other, starting from `r`.
fn replay_onto(
    ctx: &Context<'_>,
    remote: &RemoteState,
    commits: Vec<EvidenceCommit>,
    r: Oid,
) -> Result<BranchPlan> {
    let repo = ctx.repo;
    let (_, committer) = commit::identity(repo)?;
    let mut plan = BranchPlan {
        new_tip: Some(r),
        map: HashMap::new(),
        replayed: 0,
        renamed: Vec::new(),
    };
    let mut tip = r;
    for c in commits {
        let old = repo
            .find_commit(c.id)
            .map_err(|e| Error::git(format!("cannot read commit {}", c.id), e))?;
        let base_tree = commit_tree(repo, tip)?;
        let dir_path = ctx.root.join(&c.runs);
        let dir = subtree(repo, &base_tree, &dir_path)?;
        let old_folder = format!("{dir_path}/{}", c.run_id);
        let old_tree = commit_tree(repo, c.id)?;
        let folder_entry = old_tree
            .get_path(Path::new(&old_folder))
            .map_err(|e| Error::git(format!("cannot read {old_folder}"), e))?;
        let folder_tree = repo
            .find_tree(folder_entry.id())
            .map_err(|e| Error::git(format!("cannot read {old_folder}"), e))?;
        // Already there (pushed before, under this id or, renamed, under a later one; e.g. when
        // a push landed but the process ended before it moved the local branch).
        if already_there(repo, dir.as_ref(), &c.run_id, &folder_tree)? {
            plan.map.insert(c.id, tip);
            continue;
        }
        let mut run_id = c.run_id.clone();
        while taken(repo, remote, dir.as_ref(), &c.runs, &run_id) {
            run_id = run_id.next();
        }
        let message = String::from_utf8_lossy(old.message_bytes()).into_owned();
        let (files, message) = if run_id == c.run_id {
            (folder_files(&folder_tree), message)
        } else {
            plan.renamed.push(Renamed {
                runs: c.runs.clone(),
                from: c.run_id.to_string(),
                to: run_id.to_string(),
            });
            renamed_folder(
                repo,
                &folder_tree,
                &old_folder,
                &dir_path,
                &run_id,
                c.kind,
                &message,
            )?
        };
        let folder = format!("{dir_path}/{run_id}");
        let mut update = git2::build::TreeUpdateBuilder::new();
        for (name, id, mode) in &files {
            update.upsert(format!("{folder}/{name}").as_str(), *id, *mode);
        }
        let mut changed = Vec::new();
        let (tree, _) = commit::success_tree(
            repo,
            ctx.root,
            &base_tree,
            (dir.as_ref(), &dir_path),
            &run_id,
            update,
            &mut changed,
        )?;
        let new = write_commit(repo, &old.author(), &committer, &message, tree, Some(tip))?;
        plan.map.insert(c.id, new);
        plan.replayed += 1;
        tip = new;
    }
    plan.new_tip = Some(tip);
    Ok(plan)
}

/// Whether the runs folder `dir` holds this run already: the folder itself, or the same log and
/// proof under `id` or one of the ids after it (a rename).
fn already_there(
    repo: &Repository,
    dir: Option<&Tree<'_>>,
    id: &RunId,
    folder: &Tree<'_>,
) -> Result<bool> {
    let Some(dir) = dir else { return Ok(false) };
    let mut candidate = id.clone();
    while let Some(entry) = dir.get_name(&candidate.to_string()) {
        if entry.id() == folder.id() {
            return Ok(true);
        }
        if entry.kind() == Some(ObjectType::Tree) {
            let theirs = repo
                .find_tree(entry.id())
                .map_err(|e| Error::git(format!("cannot read run {candidate}"), e))?;
            if same_run(repo, &theirs, folder) {
                return Ok(true);
            }
        }
        candidate = candidate.next();
    }
    Ok(false)
}

/// Whether two run folders hold the same run: the same log, and proofs equal but for the run id.
fn same_run(repo: &Repository, a: &Tree<'_>, b: &Tree<'_>) -> bool {
    let logs = |t: &Tree<'_>| -> Vec<(String, Oid)> {
        t.iter()
            .filter_map(|e| {
                let name = e.name().ok()?.to_owned();
                (name != "README.md" && name != "proof.json").then(|| (name, e.id()))
            })
            .collect()
    };
    let proof = |t: &Tree<'_>| -> Option<serde_json::Value> {
        let blob = repo.find_blob(t.get_name("proof.json")?.id()).ok()?;
        let mut v: serde_json::Value = serde_json::from_slice(blob.content()).ok()?;
        v.as_object_mut()?.remove("run_id");
        Some(v)
    };
    logs(a) == logs(b) && proof(a).is_some() && proof(a) == proof(b)
}

/// A run folder's entries: (name, blob, mode).
type FolderFiles = Vec<(String, Oid, FileMode)>;

/// The entries of a run folder's tree.
fn folder_files(tree: &Tree<'_>) -> FolderFiles {
    tree.iter()
        .map(|e| {
            let mode = if e.filemode() == 0o100755 {
                FileMode::BlobExecutable
            } else {
                FileMode::Blob
            };
            (
                String::from_utf8_lossy(e.name_bytes()).into_owned(),
                e.id(),
                mode,
            )
        })
        .collect()
}

/// The files and commit message of a run folder moved to a new run id: proof.json and
/// README.md rendered again with the new id, the log as it was, the message rendered again
/// (keeping a sign-off).
fn renamed_folder(
    repo: &Repository,
    folder_tree: &Tree<'_>,
    old_folder: &str,
    dir_path: &str,
    run_id: &RunId,
    kind: Kind,
    old_message: &str,
) -> Result<(FolderFiles, String)> {
    let proof_entry = folder_tree
        .get_name("proof.json")
        .ok_or_else(|| Error::Malformed {
            path: format!("{old_folder}/proof.json"),
            reason: "missing".into(),
        })?;
    let blob = repo
        .find_blob(proof_entry.id())
        .map_err(|e| Error::git(format!("cannot read {old_folder}/proof.json"), e))?;
    let mut proof: Proof =
        serde_json::from_slice(blob.content()).map_err(|e| Error::Malformed {
            path: format!("{old_folder}/proof.json"),
            reason: e.to_string(),
        })?;
    proof.run_id = run_id.to_string();
    let readme = repo
        .blob(render::run_readme(&proof).as_bytes())
        .map_err(|e| Error::git("cannot write README.md", e))?;
    let json = repo
        .blob(proof.to_json().as_bytes())
        .map_err(|e| Error::git("cannot write proof.json", e))?;
    let mut files: Vec<_> = folder_files(folder_tree)
        .into_iter()
        .filter(|(name, _, _)| name != "README.md" && name != "proof.json")
        .collect();
    files.push(("README.md".into(), readme, FileMode::Blob));
    files.push(("proof.json".into(), json, FileMode::Blob));
    let signoff = parse_trailers(old_message)
        .into_iter()
        .filter(|(k, _)| k == "Signed-off-by")
        .map(|(_, v)| v)
        .next_back();
    let log_path = format!("{dir_path}/{run_id}/{}", kind.log_file_name());
    Ok((
        files,
        render::commit_message(&proof, &log_path, signoff.as_deref()),
    ))
}

// ---------------------------------------------------------------------------------------------
// Failed runs.

/// A failed-run ref to send.
#[derive(Clone)]
struct FailedPush {
    /// Full ref name, as it will be on both sides.
    name: String,
    commit: Oid,
    /// The local ref it replaces when it was renamed or rebuilt: (old name, old id).
    replaces: Option<(String, Oid)>,
    renamed: Option<Renamed>,
    /// The remote has this run under `name` already: only the local ref changes.
    adopted: bool,
}

/// The local failed-run refs the remote lacks, rebuilt where needed: renamed when the remote
/// has the name (or the branch has the id), re-parented when the parent is not on what the
/// branch will be.
fn plan_failed(
    ctx: &Context<'_>,
    remote: &RemoteState,
    local_tip: Option<Oid>,
    plan: &BranchPlan,
) -> Result<Vec<FailedPush>> {
    let repo = ctx.repo;
    let refs = repo
        .references_glob(&format!("{FAILED_PREFIX}*"))
        .map_err(|e| Error::git("cannot list failed-run refs", e))?;
    let mut local = BTreeMap::new();
    for r in refs.flatten() {
        if let (Ok(name), Some(id)) = (r.name(), r.target()) {
            local.insert(name.to_owned(), id);
        }
    }
    let final_tip = plan.new_tip.or(remote.tip);
    let tip_tree = final_tip.map(|t| commit_tree(repo, t)).transpose()?;
    let (_, committer) = commit::identity(repo)?;
    let mut out = Vec::new();
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    for (name, id) in &local {
        let key = &name[FAILED_PREFIX.len()..];
        if remote.failed.get(key) == Some(id) {
            continue;
        }
        let Some((runs, run)) = key.rsplit_once('/') else {
            continue;
        };
        let Ok(run_id) = run.parse::<RunId>() else {
            continue;
        };
        let old = repo
            .find_commit(*id)
            .map_err(|e| Error::git(format!("cannot read {name}"), e))?;
        let dir_path = ctx.root.join(runs);
        // Runs filed under another evidence root, or against another branch, travel with
        // that root's or that branch's push.
        let folder = format!("{dir_path}/{run_id}");
        if old
            .tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(&folder)).ok())
            .is_none()
        {
            continue;
        }
        if let Some(p) = old.parent_id(0).ok()
            && !plan.map.contains_key(&p)
            && !reaches(repo, local_tip, p)?
            && !reaches(repo, remote.tip, p)?
        {
            continue;
        }
        let dir = match &tip_tree {
            Some(t) => subtree(repo, t, &dir_path)?,
            None => None,
        };
        // The remote may have this very run already, under this id or a later one (a push that
        // landed but ended before the local ref was renamed): then it is not sent again.
        if let Some((remote_key, remote_id)) =
            on_remote_already(repo, ctx.root, remote, runs, &run_id, &old)?
        {
            out.push(FailedPush {
                name: format!("{FAILED_PREFIX}{remote_key}"),
                commit: remote_id,
                replaces: Some((name.clone(), *id)),
                renamed: None,
                adopted: true,
            });
            claimed.insert(remote_key);
            continue;
        }
        // A new id when the remote has this one (another host's run) or the branch has it.
        let collides = |candidate: &RunId| {
            let n = candidate.to_string();
            let k = format!("{runs}/{n}");
            remote.failed.contains_key(&k)
                || dir.as_ref().is_some_and(|d| d.get_name(&n).is_some())
                || claimed.contains(&k)
        };
        let mut new_id = run_id.clone();
        if collides(&new_id) {
            new_id = new_id.next();
            while collides(&new_id)
                || local.contains_key(&format!("{FAILED_PREFIX}{runs}/{new_id}"))
            {
                new_id = new_id.next();
            }
        }
        claimed.insert(format!("{runs}/{new_id}"));
        // The parent: its replacement when it was replayed; kept when the branch will have it;
        // else the new tip, so that nothing unpublished travels along.
        let parent = old.parent_id(0).ok();
        let new_parent = match parent {
            Some(p) if plan.map.contains_key(&p) => Some(plan.map[&p]),
            Some(p) => match final_tip {
                Some(t) if t == p => Some(p),
                Some(t) => {
                    let on_branch = repo
                        .graph_descendant_of(t, p)
                        .map_err(|e| Error::git("cannot walk history", e))?;
                    if on_branch { Some(p) } else { Some(t) }
                }
                None => None,
            },
            None => None,
        };
        if new_id == run_id && new_parent == parent {
            out.push(FailedPush {
                name: name.clone(),
                commit: *id,
                replaces: None,
                renamed: None,
                adopted: false,
            });
            continue;
        }
        let message = String::from_utf8_lossy(old.message_bytes()).into_owned();
        let (tree, message, renamed) =
            if new_id == run_id {
                (old.tree_id(), message, None)
            } else {
                let old_folder = format!("{dir_path}/{run_id}");
                let folder_tree = subtree(repo, &commit_tree(repo, *id)?, &old_folder)?
                    .ok_or_else(|| Error::Malformed {
                        path: format!("{name}:{old_folder}"),
                        reason: "the failed run's folder is missing".into(),
                    })?;
                let kind = if runs == "init" {
                    Kind::Init
                } else {
                    Kind::Build
                };
                let (files, message) = renamed_folder(
                    repo,
                    &folder_tree,
                    &old_folder,
                    &dir_path,
                    &new_id,
                    kind,
                    &message,
                )?;
                let mut update = git2::build::TreeUpdateBuilder::new();
                for (file, blob, mode) in &files {
                    update.upsert(format!("{dir_path}/{new_id}/{file}").as_str(), *blob, *mode);
                }
                let empty = repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .and_then(|id| repo.find_tree(id))
                    .map_err(|e| Error::git("cannot write the empty tree", e))?;
                let tree = update
                    .create_updated(repo, &empty)
                    .map_err(|e| Error::git("cannot build the failed run's tree", e))?;
                let renamed = Renamed {
                    runs: runs.to_owned(),
                    from: run_id.to_string(),
                    to: new_id.to_string(),
                };
                (tree, message, Some(renamed))
            };
        let commit = write_commit(repo, &old.author(), &committer, &message, tree, new_parent)?;
        out.push(FailedPush {
            name: format!("{FAILED_PREFIX}{runs}/{new_id}"),
            commit,
            replaces: Some((name.clone(), *id)),
            renamed,
            adopted: false,
        });
    }
    Ok(out)
}

/// The remote's failed-run ref (key, id) holding the same run as the local commit `ours`
/// (`runs/run_id`), under its id or a later one; its objects must have been fetched (see
/// [`fetch_suspects`]).
fn on_remote_already(
    repo: &Repository,
    root: &EvidenceRoot,
    remote: &RemoteState,
    runs: &str,
    run_id: &RunId,
    ours: &git2::Commit<'_>,
) -> Result<Option<(String, Oid)>> {
    let folder_of = |commit: &git2::Commit<'_>, id: &RunId| -> Option<Oid> {
        let path = root.join(&format!("{runs}/{id}"));
        commit
            .tree()
            .ok()?
            .get_path(Path::new(&path))
            .ok()
            .map(|e| e.id())
    };
    let Some(mine) = folder_of(ours, run_id).and_then(|id| repo.find_tree(id).ok()) else {
        return Ok(None);
    };
    let mut candidate = run_id.clone();
    while let Some(remote_id) = remote.failed.get(&format!("{runs}/{candidate}")) {
        if let Ok(theirs) = repo.find_commit(*remote_id)
            && let Some(folder) = folder_of(&theirs, &candidate)
            && let Ok(tree) = repo.find_tree(folder)
            && (tree.id() == mine.id() || same_run(repo, &tree, &mine))
        {
            return Ok(Some((format!("{runs}/{candidate}"), *remote_id)));
        }
        candidate = candidate.next();
    }
    Ok(None)
}

/// Fetches the objects of the remote's failed-run refs that have the name of a local one with
/// other contents (and of the ids after it), so that [`on_remote_already`] can compare them.
fn fetch_suspects(ctx: &Context<'_>, remote: &RemoteState, deadline: Instant) -> RoundResult<()> {
    let repo = ctx.repo;
    let mut wanted = Vec::new();
    let refs = repo
        .references_glob(&format!("{FAILED_PREFIX}*"))
        .map_err(|e| Error::git("cannot list failed-run refs", e))?;
    for r in refs.flatten() {
        let (Ok(name), Some(id)) = (r.name(), r.target()) else {
            continue;
        };
        let key = &name[FAILED_PREFIX.len()..];
        let Some((runs, run)) = key.rsplit_once('/') else {
            continue;
        };
        let Ok(mut candidate) = run.parse::<RunId>() else {
            continue;
        };
        if remote.failed.get(key).is_none_or(|r| *r == id) {
            continue;
        }
        while let Some(remote_id) = remote.failed.get(&format!("{runs}/{candidate}")) {
            if repo.find_commit(*remote_id).is_err() {
                wanted.push(format!("{FAILED_PREFIX}{runs}/{candidate}"));
            }
            candidate = candidate.next();
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    wanted.sort();
    wanted.dedup();
    let mut a = args([
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--",
        ctx.remote,
    ]);
    a.extend(wanted.iter().map(OsString::from));
    let out = git(ctx, &a, deadline)?;
    if !out.success {
        return Err(connection_failure(ctx, &out.stderr));
    }
    Ok(())
}

/// Whether `commit` is `tip` or one of its ancestors.
fn reaches(repo: &Repository, tip: Option<Oid>, commit: Oid) -> Result<bool> {
    match tip {
        Some(t) if t == commit => Ok(true),
        Some(t) => repo
            .graph_descendant_of(t, commit)
            .map_err(|e| Error::git("cannot walk history", e)),
        None => Ok(false),
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
        assert!(backoff(1, Cause::Race) <= Duration::from_millis(25));
        assert!(backoff(1, Cause::Race) >= Duration::from_micros(12_500));
        assert!(backoff(2, Cause::Race) >= Duration::from_millis(25));
        assert!(backoff(40, Cause::Race) <= Duration::from_millis(400));
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
