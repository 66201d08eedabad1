//! `git-evidence run`: wraps a real Packer build, captures everything, gathers the facts, and
//! records the run exactly as `record` does.
//!
//! Everything that can be checked is checked before the build starts (names, branch, root), so a
//! typo never costs a 40-minute build. The captured log lives in a private temporary directory
//! (0700, file 0600) outside the work tree, and goes into git only through `record_run`. When
//! the evidence cannot be recorded, the log is kept where the message says and the exit code
//! says so ([`EXIT_NOT_RECORDED`]): a build is never silently left without its proof.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use git2::Repository;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::capture::{self, LogSink, Outcome};
use crate::commit::Target;
use crate::error::{Error, Result};
use crate::facts::{self, FactSet, LogScanner, Source};
use crate::names::{Kind, Template};
use crate::proof::{self, Asset, Fact, RunFacts, Status, Validation};
use crate::record::{self, Recorded};
use crate::redact;

/// Exit code when the build succeeded but its evidence could not be recorded (EX_TEMPFAIL:
/// the log is kept; record it again with `git evidence record`).
pub const EXIT_NOT_RECORDED: i32 = 75;
/// Exit code when the command could not be started at all (as shells report it).
pub const EXIT_NOT_STARTED: i32 = 127;

/// What to run and how to file it.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub kind: Kind,
    pub template: Option<Template>,
    pub argv: Vec<OsString>,
    pub facts: Vec<Fact>,
    pub branch: Option<String>,
    pub root: Option<crate::names::EvidenceRoot>,
    pub signoff: Option<bool>,
    /// Shell command run after a successful build.
    pub validate: Option<String>,
    /// Glob patterns of files that went into the build.
    pub assets: Vec<String>,
    /// Packer's manifest file; `packer-manifest.json` when `None`.
    pub manifest: Option<PathBuf>,
    pub node: Option<String>,
    pub grace: Duration,
    /// Keep a copy of the stored log in this directory.
    pub keep_log: Option<PathBuf>,
    pub show_debug: bool,
    /// Secrets to redact besides those found in the environment and argv.
    pub redaction: redact::Sources,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    pub status: Status,
    pub recorded: std::result::Result<Recorded, NotRecorded>,
    pub warnings: Vec<String>,
    /// Where `--keep-log` put its copy.
    pub kept_copy: Option<PathBuf>,
}

/// The evidence could not be recorded; the log was kept at `kept_log`.
#[derive(Debug)]
pub struct NotRecorded {
    pub error: Error,
    pub kept_log: Option<PathBuf>,
    /// The `git evidence record` command that files the kept log.
    pub retry: String,
}

impl RunReport {
    /// The wrapper's exit code: the command's (validation's if that failed), 130/143/129 when
    /// interrupted, [`EXIT_NOT_RECORDED`] when a successful build could not be recorded.
    pub fn exit_code(&self, validation_code: Option<i32>) -> i32 {
        if self.outcome.interrupted_by.is_some() {
            return self.outcome.wrapper_exit_code();
        }
        let code = match validation_code {
            Some(c) if self.outcome.exit_code == 0 && c != 0 => c,
            _ => self.outcome.exit_code,
        };
        if code == 0 && self.recorded.is_err() {
            EXIT_NOT_RECORDED
        } else {
            code
        }
    }
}

/// The log being captured: a private file, plus the fact scanner reading along.
struct CaptureFile {
    file: BufWriter<File>,
    scanner: LogScanner,
}

impl LogSink for CaptureFile {
    fn write_log(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.scanner.feed(bytes);
        self.file.write_all(bytes)
    }
}

/// Creates `path` for writing, readable by its owner only.
fn private_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
}

/// Whether tracked files have uncommitted changes (untracked files such as Packer's cache
/// do not count); `None` in a bare repository.
fn dirty(repo: &Repository) -> Option<bool> {
    if repo.is_bare() {
        return None;
    }
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(false)
        .include_ignored(false)
        .exclude_submodules(true);
    repo.statuses(Some(&mut opts)).ok().map(|s| !s.is_empty())
}

/// Runs the build and records it. Errors are returned only for problems found before the
/// command started; after that, everything ends in a [`RunReport`].
pub fn run(repo: &Repository, req: &RunRequest) -> Result<(RunReport, Option<i32>)> {
    let target =
        record::resolve_target(repo, req.branch.as_deref(), req.root.as_ref(), req.signoff)?;
    proof::check_cli_facts(&req.facts)?;
    if req.argv.is_empty() {
        return Err(Error::Inconsistent(
            "no command to run: put it after --, e.g. git evidence run --template T -- packer build .".into(),
        ));
    }
    let sources = record::with_config_expressions(repo, &req.redaction)?;
    let redaction = redact::gather(&req.argv, &sources).map_err(Error::Inconsistent)?;
    let source_commit = record::source_commit(repo, &target.branch);
    let source_dirty = dirty(repo);

    let scratch = tempfile::Builder::new()
        .prefix("git-evidence-run-")
        .tempdir()
        .map_err(|e| Error::io("cannot create a private temporary directory", e))?;
    let log_path = scratch.path().join(req.kind.log_file_name());
    let facts_path = scratch.path().join("facts");
    private_file(&facts_path)?;
    let mut sink = CaptureFile {
        file: BufWriter::with_capacity(capture::CHUNK, private_file(&log_path)?),
        scanner: LogScanner::new(),
    };
    let mut env = vec![(
        OsString::from("EVIDENCE_FACTS"),
        facts_path.clone().into_os_string(),
    )];
    let spec = capture::Spec {
        argv: req.argv.clone(),
        env: env.clone(),
        show_debug: req.show_debug,
        grace: req.grace,
        redaction: redaction.clone(),
    };
    let outcome = capture::run(&spec, &mut sink)?;
    let mut redactions = outcome.redactions.clone();
    // For what git-evidence itself adds to the log and the proof: the same rules.
    let mut redactor = redact::Redactor::new(&redaction).map_err(Error::Inconsistent)?;

    let mut warnings = Vec::new();
    let mut set = gather(req, &facts_path, outcome.started_at, &mut warnings);

    // Validation runs only after a successful, uninterrupted build.
    let mut validation = None;
    let mut validation_code = None;
    let mut finished_at = outcome.finished_at;
    if let Some(cmd) = &req.validate {
        if outcome.exit_code == 0 && outcome.interrupted_by.is_none() {
            let separator = format!("\n==> git-evidence: validation: {cmd}\n");
            sink.write_log(&redactor.redact_bytes(separator.as_bytes()))
                .map_err(|e| Error::io("cannot write the captured log", e))?;
            for (key, var) in [("vmid", "EVIDENCE_VMID"), ("node", "EVIDENCE_NODE")] {
                if let Some(v) = set.get(key) {
                    let text = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    env.push((var.into(), text.into()));
                }
            }
            let vspec = capture::Spec {
                argv: vec!["sh".into(), "-c".into(), cmd.into()],
                env,
                show_debug: true,
                grace: req.grace,
                redaction: redaction.clone(),
            };
            let v = capture::run(&vspec, &mut sink)?;
            for (rule, n) in &v.redactions {
                *redactions.entry(rule.clone()).or_default() += n;
            }
            finished_at = v.finished_at;
            validation_code = Some(v.exit_code);
            validation = Some(Validation {
                status: if v.exit_code == 0 && v.interrupted_by.is_none() {
                    "passed"
                } else {
                    "failed"
                }
                .into(),
                exit_code: Some(v.exit_code),
                duration_seconds: Some(
                    (v.finished_at - v.started_at).num_milliseconds() as f64 / 1000.0,
                ),
            });
            // The validation may have added facts.
            set = gather(req, &facts_path, outcome.started_at, &mut warnings);
        } else {
            validation = Some(Validation {
                status: "not_run".into(),
                exit_code: None,
                duration_seconds: None,
            });
        }
    }
    // The log's facts so far (the VMID, mostly) tell the Proxmox API which VM the build made;
    // it is read once, after the build and any validation. Its problems are warnings, in the
    // log too.
    set.offer_all(std::mem::take(&mut sink.scanner).finish(), Source::Log);
    if req.kind == Kind::Build && outcome.exit_code == 0 && outcome.interrupted_by.is_none() {
        for warning in crate::proxmox::offer_facts(&mut set) {
            let line = format!("\n==> git-evidence: warning: {warning}\n");
            sink.file
                .write_all(&redactor.redact_bytes(line.as_bytes()))
                .map_err(|e| Error::io("cannot write the captured log", e))?;
            warnings.push(warning);
        }
    }
    sink.file
        .flush()
        .map_err(|e| Error::io("cannot write the captured log", e))?;
    drop(sink.file);

    let status = if outcome.interrupted_by.is_some() {
        Status::Cancelled
    } else if outcome.exit_code == 0 && validation_code.unwrap_or(0) == 0 {
        Status::Success
    } else {
        Status::Failed
    };
    let exit_code = match (outcome.exit_code, validation_code) {
        (0, Some(v)) if v != 0 => v,
        (0, _) if status == Status::Cancelled => 1,
        (code, _) => code,
    };
    let mut facts = RunFacts {
        kind: req.kind,
        template: req.template.clone(),
        status,
        exit_code,
        started_at: outcome.started_at,
        finished_at: Some(finished_at),
        host: crate::host_name(),
        command: req
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        vmid: None,
        node: None,
        facts: Default::default(),
        fact_sources: Default::default(),
        redactions: Default::default(),
        source_commit,
        source_dirty,
        validation,
        assets: assets(repo, &req.assets, &mut warnings),
    };
    warnings.extend(facts.apply_facts(&set));
    // Facts and the command line go into proof.json, README.md and the commit message: they
    // are redacted like the log, and the replacements counted with the log's.
    facts.redact(&mut redactor);
    for w in &mut warnings {
        *w = redactor.redact_str(w);
    }
    for (rule, n) in redactor.counts() {
        *redactions.entry(rule).or_default() += n;
    }
    facts.redactions = redactions;

    let kept_copy = match &req.keep_log {
        Some(dir) => match keep(&log_path, dir, req, outcome.started_at) {
            Ok(p) => Some(p),
            Err(e) => {
                warnings.push(format!("--keep-log: {e}"));
                None
            }
        },
        None => None,
    };

    let recorded = facts
        .check()
        .and_then(|()| record::record_run(repo, &target, &facts, &log_path))
        .map_err(|error| not_recorded(repo, error, &log_path, &target, &facts, req));
    Ok((
        RunReport {
            outcome,
            status,
            recorded,
            warnings,
            kept_copy,
        },
        validation_code,
    ))
}

/// Facts from every source but the log (which is scanned as it streams) and the Proxmox API
/// (read once, after the build).
fn gather(
    req: &RunRequest,
    facts_path: &Path,
    since: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> FactSet {
    let mut set = FactSet::default();
    proof::offer_cli_facts(&mut set, &req.facts);
    if let Some(node) = &req.node {
        set.offer("node", Value::from(node.as_str()), Source::Cli);
    }
    match facts::from_facts_file(facts_path) {
        Ok((pairs, problems)) => {
            set.offer_all(pairs, Source::FactsFile);
            warnings.extend(problems);
        }
        Err(e) => warnings.push(e),
    }
    if let Some(node) = std::env::var("PROXMOX_NODE").ok().filter(|n| !n.is_empty()) {
        set.offer("node", Value::from(node), Source::Env);
    }
    let manifest = req
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from("packer-manifest.json"));
    match facts::from_manifest(&manifest, since) {
        Ok(pairs) => set.offer_all(pairs, Source::Manifest),
        Err(e) => warnings.push(e),
    }
    set
}

/// Hashes the files matching `patterns`; paths are stored relative to the repository's top.
fn assets(repo: &Repository, patterns: &[String], warnings: &mut Vec<String>) -> Vec<Asset> {
    let top = repo
        .workdir()
        .map(Path::to_path_buf)
        .and_then(|p| p.canonicalize().ok());
    let mut out: Vec<Asset> = Vec::new();
    for pattern in patterns {
        let paths = match glob::glob(pattern) {
            Ok(p) => p,
            Err(e) => {
                warnings.push(format!("--asset {pattern:?}: {e}"));
                continue;
            }
        };
        let mut matched = false;
        for path in paths.flatten().filter(|p| p.is_file()) {
            matched = true;
            let abs = path.canonicalize().unwrap_or_else(|_| path.clone());
            let shown = top
                .as_ref()
                .and_then(|t| abs.strip_prefix(t).ok())
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            match hash_file(&path) {
                Ok((sha256, bytes)) => {
                    if !out.iter().any(|a| a.path == shown) {
                        out.push(Asset {
                            path: shown,
                            sha256,
                            bytes,
                        });
                    }
                }
                Err(e) => warnings.push(format!("--asset {}: {e}", path.display())),
            }
        }
        if !matched {
            warnings.push(format!("--asset {pattern:?} matched no file"));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((crate::logstore::hex(&hasher.finalize()), bytes))
}

/// A name for a kept log: template (or init) and start time.
fn kept_name(req: &RunRequest, started: DateTime<Utc>) -> String {
    let what = req
        .template
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "init".into());
    format!("{what}-{}.log", crate::names::RunId::for_start(started))
}

/// Copies the captured log into `dir` (created if needed), readable by its owner only.
fn keep(log: &Path, dir: &Path, req: &RunRequest, started: DateTime<Utc>) -> Result<PathBuf> {
    fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let dest = dir.join(kept_name(req, started));
    let mut from = File::open(log).map_err(|e| Error::io("cannot read the captured log", e))?;
    let mut to = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&dest)
            .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?
    };
    io::copy(&mut from, &mut to)
        .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    Ok(dest)
}

/// Keeps the log when recording failed, and says how to record it later.
fn not_recorded(
    repo: &Repository,
    error: Error,
    log: &Path,
    target: &Target,
    facts: &RunFacts,
    req: &RunRequest,
) -> NotRecorded {
    let dir = req
        .keep_log
        .clone()
        .unwrap_or_else(|| repo.commondir().join("evidence-unrecorded"));
    let kept_log = keep(log, &dir, req, facts.started_at).ok();
    let mut retry = format!("git evidence record --kind {}", facts.kind);
    if let Some(t) = &facts.template {
        retry.push_str(&format!(" --template {t}"));
    }
    retry.push_str(&format!(
        " --log {} --exit-code {} --started-at {} --branch {}",
        kept_log
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<log>".into()),
        facts.exit_code,
        proof::format_time(facts.started_at),
        target.branch.trim_start_matches("refs/heads/"),
    ));
    if let Some(f) = facts.finished_at {
        retry.push_str(&format!(" --finished-at {}", proof::format_time(f)));
    }
    if facts.status == Status::Cancelled {
        retry.push_str(" --status cancelled");
    }
    if let Some(v) = facts.vmid {
        retry.push_str(&format!(" --fact vmid={v}"));
    }
    if let Some(n) = &facts.node {
        retry.push_str(&format!(" --fact node={n}"));
    }
    NotRecorded {
        error,
        kept_log,
        retry,
    }
}
