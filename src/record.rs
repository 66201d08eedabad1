//! `git-evidence record`: files one finished run — a log, an exit code, some facts — as evidence.
//!
//! Input is validated completely before anything is written; then the log is streamed into the
//! object database, the run is filed (commit on the branch, or a failed-run ref), and work trees
//! that have the branch checked out are brought up to date. A problem in that last step is a
//! warning: by then the evidence is committed and must not be reported as lost.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use git2::Repository;

use crate::commit::{self, Filed, Target};
use crate::error::{Error, Result};
use crate::facts::FactSet;
use crate::logstore;
use crate::names::{EvidenceRoot, Kind, Template};
use crate::proof::{self, Fact, RunFacts, Status};
use crate::redact::{self, Redactor};
use crate::worktree::{self, SyncReport};

/// What to record, as the command line gives it.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub kind: Kind,
    pub template: Option<Template>,
    pub log: PathBuf,
    pub exit_code: i32,
    /// Overrides the status implied by the exit code (e.g. a cancellation that exited 1).
    pub status: Option<Status>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub facts: Vec<Fact>,
    /// Branch name (`main` or `refs/heads/main`); the current branch when `None`.
    pub branch: Option<String>,
    /// Evidence root; `git config evidence.root` or `evidence` when `None`.
    pub root: Option<EvidenceRoot>,
    /// Add `Signed-off-by:`; `git config evidence.signoff` when `None`.
    pub signoff: Option<bool>,
    /// Secrets to redact besides those found in the environment.
    pub redaction: redact::Sources,
}

/// The outcome of a successful `record`.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub filed: Filed,
    /// The branch (full ref name) the run was recorded against.
    pub branch: String,
    pub root: EvidenceRoot,
    pub sync: SyncReport,
    /// Set when updating a work tree failed after the commit landed.
    pub sync_error: Option<String>,
}

/// The full ref name of the branch to record onto: the one given, else the one HEAD names.
pub fn resolve_branch(repo: &Repository, branch: Option<&str>) -> Result<String> {
    let full = match branch {
        Some(name) => {
            if name.starts_with("refs/heads/") {
                name.to_owned()
            } else if name.starts_with("refs/") {
                return Err(Error::InvalidBranch(name.to_owned()));
            } else {
                format!("refs/heads/{name}")
            }
        }
        None => {
            let head = repo
                .find_reference("HEAD")
                .map_err(|e| Error::git("cannot read HEAD", e))?;
            match head.symbolic_target().ok().flatten() {
                Some(target) if target.starts_with("refs/heads/") => target.to_owned(),
                _ => return Err(Error::DetachedHead),
            }
        }
    };
    if !git2::Reference::is_valid_name(&full) {
        return Err(Error::InvalidBranch(
            full.trim_start_matches("refs/heads/").to_owned(),
        ));
    }
    Ok(full)
}

/// The evidence root: the one given, else `git config evidence.root`, else `evidence`.
pub fn resolve_root(repo: &Repository, root: Option<&EvidenceRoot>) -> Result<EvidenceRoot> {
    if let Some(root) = root {
        return Ok(root.clone());
    }
    let config = repo
        .config()
        .map_err(|e| Error::git("cannot read git config", e))?;
    match config.get_string("evidence.root") {
        Ok(value) => value.parse(),
        Err(_) => Ok(EvidenceRoot::default()),
    }
}

/// Where runs go, resolved from flags and config before anything runs or is written.
pub fn resolve_target(
    repo: &Repository,
    branch: Option<&str>,
    root: Option<&EvidenceRoot>,
    signoff: Option<bool>,
) -> Result<Target> {
    let branch = resolve_branch(repo, branch)?;
    let root = resolve_root(repo, root)?;
    let signoff = match signoff {
        Some(v) => v,
        None => repo
            .config()
            .and_then(|c| c.get_bool("evidence.signoff"))
            .unwrap_or(false),
    };
    Ok(Target {
        branch,
        root,
        signoff,
    })
}

/// Records one finished run. See the module documentation.
pub fn record(repo: &Repository, req: &RecordRequest) -> Result<Recorded> {
    let target = resolve_target(repo, req.branch.as_deref(), req.root.as_ref(), req.signoff)?;
    proof::check_cli_facts(&req.facts)?;
    let mut facts = RunFacts {
        kind: req.kind,
        template: req.template.clone(),
        status: req
            .status
            .unwrap_or_else(|| Status::from_exit_code(req.exit_code)),
        exit_code: req.exit_code,
        started_at: req.started_at.unwrap_or_else(proof::now),
        finished_at: req.finished_at,
        host: crate::host_name(),
        command: Vec::new(),
        vmid: None,
        node: None,
        facts: Default::default(),
        fact_sources: Default::default(),
        redactions: Default::default(),
        source_commit: source_commit(repo, &target.branch),
        source_dirty: None,
        validation: None,
        assets: Vec::new(),
    };
    let mut set = FactSet::default();
    proof::offer_cli_facts(&mut set, &req.facts);
    facts.apply_facts(&set);
    facts.check()?;

    // The log is redacted on the way in, into a private file; the caller's file is untouched.
    let sources = with_config_expressions(repo, &req.redaction)?;
    let config = redact::gather(&[], &sources).map_err(Error::Inconsistent)?;
    let mut redactor = Redactor::new(&config).map_err(Error::Inconsistent)?;
    let scratch = tempfile::Builder::new()
        .prefix("git-evidence-record-")
        .tempdir()
        .map_err(|e| Error::io("cannot create a private temporary directory", e))?;
    let redacted = scratch.path().join(req.kind.log_file_name());
    redact_file(&mut redactor, &req.log, &redacted)?;
    facts.redact(&mut redactor);
    facts.redactions = redactor.counts();
    record_run(repo, &target, &facts, &redacted)
}

/// The commit the build was made from: the one checked out (HEAD), which on a dedicated evidence
/// branch is the code's commit, not the previous proof; in a bare repository, or when HEAD is
/// unborn, the tip of the branch recorded onto.
pub fn source_commit(repo: &Repository, branch: &str) -> Option<git2::Oid> {
    let head = (!repo.is_bare())
        .then(|| repo.head().ok().and_then(|h| h.peel_to_commit().ok()))
        .flatten()
        .map(|c| c.id());
    head.or_else(|| repo.refname_to_id(branch).ok())
}

/// Adds the `git config evidence.redact` expressions (repeatable) to `sources`.
pub fn with_config_expressions(
    repo: &Repository,
    sources: &redact::Sources,
) -> Result<redact::Sources> {
    let mut sources = sources.clone();
    let config = repo
        .config()
        .map_err(|e| Error::git("cannot read git config", e))?;
    if let Ok(entries) = config.multivar("evidence.redact", None) {
        let mut entries = entries;
        while let Some(Ok(entry)) = entries.next() {
            if let Ok(value) = entry.value() {
                sources.expressions.push(value.to_owned());
            }
        }
    }
    Ok(sources)
}

/// Copies `from` to a new private file `to`, redacted, streaming.
fn redact_file(redactor: &mut Redactor, from: &Path, to: &Path) -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable = |source| Error::LogUnreadable {
        path: from.to_owned(),
        source,
    };
    let mut input = std::fs::File::open(from).map_err(unreadable)?;
    if !input.metadata().map_err(unreadable)?.is_file() {
        return Err(unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::io(format!("cannot create {}", to.display()), e))?;
    let mut output = std::io::BufWriter::new(output);
    let write_err = |e| Error::io("cannot write the redacted log", e);
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::with_capacity(buf.len());
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
        };
        out.clear();
        redactor.push(&buf[..n], &mut out);
        output.write_all(&out).map_err(write_err)?;
    }
    out.clear();
    redactor.finish(&mut out);
    output.write_all(&out).map_err(write_err)?;
    output.flush().map_err(write_err)
}

/// Files a run whose log is the file at `log`, then brings checked-out work trees up to date.
pub fn record_run(
    repo: &Repository,
    target: &Target,
    facts: &RunFacts,
    log: &Path,
) -> Result<Recorded> {
    let digest = logstore::store_file(repo, log)?;
    tracing::debug!(blob = %digest.blob, sha256 = %digest.sha256, bytes = digest.bytes, "stored the log");
    let filed = commit::file(repo, target, facts, &digest)?;
    let branch = target.branch.clone();
    let (sync, sync_error) = if filed.reference == branch {
        let sources = [worktree::Source {
            blob: digest.blob,
            file: log,
        }];
        match worktree::sync(repo, &branch, &filed.changed, &sources) {
            Ok(report) => (report, None),
            Err(e) => (SyncReport::default(), Some(e.to_string())),
        }
    } else {
        (SyncReport::default(), None)
    };
    Ok(Recorded {
        filed,
        branch,
        root: target.root.clone(),
        sync,
        sync_error,
    })
}
