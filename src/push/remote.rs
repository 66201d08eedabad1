//! Talking to the remote, through the git CLI only: reading its state (`fetch`, `ls-remote`),
//! pushing (`push --atomic --porcelain`, read ref by ref), and telling races, refusals and
//! network trouble apart. Every command runs with a deadline, in its own process group.

use super::*;

/// A finished git command.
pub(super) struct GitOutput {
    pub(super) success: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs `git args…` against this repository, killing it when `deadline` (at least
/// [`MIN_COMMAND_TIME`] from now) passes.
pub(super) fn git(
    ctx: &Context<'_>,
    args: &[OsString],
    deadline: Instant,
) -> RoundResult<GitOutput> {
    git_at(ctx.repo.path(), args, deadline)
}

/// [`git`] for a repository given by its git dir (usable from another thread).
pub(super) fn git_at(
    git_dir: &Path,
    args: &[OsString],
    deadline: Instant,
) -> RoundResult<GitOutput> {
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
pub(super) fn run_limited(mut cmd: Command, limit: Duration) -> std::io::Result<GitOutput> {
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

pub(super) fn args<const N: usize>(list: [&str; N]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// What the remote has, in as few round trips as possible, since a host that takes longer
/// between reading the remote's tip and pushing onto it loses more races. With a named remote,
/// one fetch into its remote-tracking branch reads the tip and brings its objects at once,
/// while an ls-remote lists the failed-run refs beside it; otherwise ls-remote reads both, and
/// a fetch follows when the tip is new here.
pub(super) fn observe(ctx: &Context<'_>, deadline: Instant) -> RoundResult<RemoteState> {
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
        // between reading the tip and pushing onto it; later rounds reuse the list.
        let cached = ctx.remote_failed.borrow().clone();
        let git_dir = repo.path().to_path_buf();
        let list = args([
            "ls-remote",
            "--refs",
            "--",
            ctx.remote,
            &format!("{FAILED_PREFIX}*"),
        ]);
        let (fetched, listed) = std::thread::scope(|scope| {
            let lister = cached
                .is_none()
                .then(|| scope.spawn(|| git_at(&git_dir, &list, deadline)));
            let fetched = git(ctx, &a, deadline);
            (fetched, lister.map(|l| l.join().expect("ls-remote thread")))
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
                return observe_by_listing(ctx, deadline);
            } else {
                return Err(connection_failure(ctx, &out.stderr));
            };
        let failed = match (listed, cached) {
            (Some(listed), _) => {
                let listed = listed?;
                if !listed.success {
                    return Err(connection_failure(ctx, &listed.stderr));
                }
                parse_ls_remote(&listed.stdout, None).failed
            }
            (None, Some(cached)) => cached,
            (None, None) => BTreeMap::new(),
        };
        ctx.remote_failed.replace(Some(failed.clone()));
        return Ok(RemoteState { tip, failed });
    }
    observe_by_listing(ctx, deadline)
}

/// [`observe`] without a remote-tracking ref: ls-remote, then a fetch when the tip is new here.
fn observe_by_listing(ctx: &Context<'_>, deadline: Instant) -> RoundResult<RemoteState> {
    let remote = ls_remote(ctx, deadline)?;
    if let Some(r) = remote.tip
        && ctx.repo.find_commit(r).is_err()
    {
        fetch(ctx, deadline)?;
    }
    Ok(remote)
}

/// The remote-tracking branch of the remote branch, when the remote is a configured one.
pub(super) fn tracking_ref(ctx: &Context<'_>) -> Option<String> {
    if !is_named_remote(ctx.repo, ctx.remote) {
        return None;
    }
    let short = ctx.remote_branch.strip_prefix("refs/heads/")?;
    Some(format!("refs/remotes/{}/{short}", ctx.remote))
}

pub(super) fn is_local_lock_error(stderr: &str) -> bool {
    stderr.contains("cannot lock ref") || stderr.contains("unable to update local ref")
}

/// The remote's branch tip and failed-run refs.
pub(super) fn ls_remote(ctx: &Context<'_>, deadline: Instant) -> RoundResult<RemoteState> {
    let mut a = args(["ls-remote", "--refs", "--", ctx.remote, ctx.remote_branch]);
    a.push(format!("{FAILED_PREFIX}*").into());
    let out = git(ctx, &a, deadline)?;
    if !out.success {
        return Err(connection_failure(ctx, &out.stderr));
    }
    Ok(parse_ls_remote(&out.stdout, Some(ctx.remote_branch)))
}

/// Reads `git ls-remote` output: the branch's tip (when asked for) and the failed-run refs.
pub(super) fn parse_ls_remote(stdout: &str, branch: Option<&str>) -> RemoteState {
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
pub(super) fn fetch(ctx: &Context<'_>, deadline: Instant) -> RoundResult<()> {
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
pub(super) fn connection_failure(ctx: &Context<'_>, stderr: &str) -> Failure {
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

pub(super) enum PushOutcome {
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
pub(super) fn git_push(
    ctx: &Context<'_>,
    refspecs: &[String],
    deadline: Instant,
) -> RoundResult<PushOutcome> {
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
pub(super) struct RefResult {
    pub(super) flag: char,
    pub(super) to: String,
    /// `[rejected] (fetch first)`, `[new reference]`, …
    pub(super) summary: String,
    /// The parenthesised reason, when there is one.
    pub(super) reason: String,
}

pub(super) fn parse_porcelain(stdout: &str) -> Vec<RefResult> {
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
pub(super) fn is_race_reason(reason: &str) -> bool {
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
