//! The library's one error type.
//!
//! Library code returns these; only the command line turns them into text and an exit code
//! (see [`Error::exit_code`]). Every message names the path, ref or value involved, and
//! [`Error::hint`] offers the obvious next step where there is one.

use std::path::PathBuf;

/// Everything that can stop git-evidence from doing its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A template name that breaks the naming rule (it becomes a directory and a ref name).
    #[error(
        "invalid template name {0:?}: use 1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit, and not 'latest'"
    )]
    InvalidTemplate(String),

    /// An evidence root that is not a plain relative path inside the repository.
    #[error(
        "invalid evidence root {0:?}: use a relative path inside the repository, without '..', '.git' or empty parts"
    )]
    InvalidRoot(String),

    /// A `--fact` argument that is not `KEY=VALUE` with a usable key and value.
    #[error("invalid fact {fact:?}: {reason}")]
    InvalidFact { fact: String, reason: String },

    /// A time argument that is not RFC 3339.
    #[error("invalid {what} {value:?}: expected an RFC 3339 time such as 2026-11-26T10:15:00Z")]
    InvalidTime { what: &'static str, value: String },

    /// Times or statuses that contradict each other.
    #[error("{0}")]
    Inconsistent(String),

    /// A branch name git would refuse.
    #[error("invalid branch name {0:?}")]
    InvalidBranch(String),

    /// The log to record cannot be read.
    #[error("cannot read log {path}: {source}")]
    LogUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The log file grew or shrank while it was being stored.
    #[error("log {path} changed while it was being read (expected {expected} bytes, got {actual})")]
    LogChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// `-C PATH` names a directory that cannot be entered.
    #[error("cannot change to {path}: {source}")]
    ChangeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The wrapped command could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// No repository where one was expected.
    #[error("not a git repository: {path}")]
    NotARepository {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// HEAD is detached and no branch was named.
    #[error("HEAD is detached: there is no current branch to record onto")]
    DetachedHead,

    /// The branch kept moving under us for longer than the retry budget.
    #[error("branch {branch} kept changing or stayed locked after {attempts} attempts: {last}")]
    Contention {
        branch: String,
        attempts: u32,
        last: String,
    },

    /// The push did not land; the evidence stays committed locally.
    #[error("not pushed to {remote}: {reason}{}", server_lines(server))]
    NotPushed {
        remote: String,
        reason: String,
        /// What the server said (`remote: …` lines), e.g. a hook's message.
        server: Vec<String>,
        /// The command that tries again.
        retry: String,
    },

    /// Local commits that git-evidence did not make would have to be rewritten or published.
    #[error(
        "not pushed to {remote}: {branch} has commits that git-evidence did not make and {remote} does not have: {}",
        commits.join(", ")
    )]
    ForeignCommits {
        branch: String,
        remote: String,
        commits: Vec<String>,
    },

    /// A remote name that is not configured (and not a URL or a path).
    #[error("no remote named {0:?}")]
    NoRemote(String),

    /// Something in the repository is not what git-evidence wrote (e.g. `latest` is not a symlink).
    #[error("unexpected content at {path}: {reason}")]
    Malformed { path: String, reason: String },

    /// A revision (or range end) that does not name a commit.
    #[error("bad revision {rev:?}: {source}")]
    BadRevision {
        rev: String,
        #[source]
        source: git2::Error,
    },

    /// A failure reported by libgit2, with what we were doing at the time.
    #[error("{context}: {source}")]
    Git {
        context: String,
        #[source]
        source: git2::Error,
    },

    /// A file-system failure, with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// How an error ends the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller asked for something invalid: fix the input (exit 2).
    Input,
    /// The environment got in the way: repository state, locks, disk (exit 1).
    Runtime,
    /// The evidence is committed locally but not on the remote (exit 76).
    NotPushed,
}

fn server_lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("\n{l}")).collect()
}

impl Error {
    /// Wraps a libgit2 error with what we were doing.
    pub fn git(context: impl Into<String>, source: git2::Error) -> Self {
        Error::Git {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this is the caller's input or the environment.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidTemplate(_)
            | Error::InvalidRoot(_)
            | Error::InvalidFact { .. }
            | Error::InvalidTime { .. }
            | Error::Inconsistent(_)
            | Error::InvalidBranch(_)
            | Error::LogUnreadable { .. }
            | Error::ChangeDir { .. }
            | Error::NotARepository { .. }
            | Error::BadRevision { .. }
            | Error::NoRemote(_)
            | Error::DetachedHead => ErrorKind::Input,
            Error::NotPushed { .. } | Error::ForeignCommits { .. } => ErrorKind::NotPushed,
            _ => ErrorKind::Runtime,
        }
    }

    /// The process exit code for this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            ErrorKind::Input => 2,
            ErrorKind::Runtime => 1,
            ErrorKind::NotPushed => crate::push::EXIT_NOT_PUSHED,
        }
    }

    /// A one-line suggestion of what to do, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::DetachedHead => Some("name the branch to record onto with --branch".into()),
            Error::NotARepository { .. } => {
                Some("run inside a git repository, or point at one with -C PATH".into())
            }
            Error::Contention { branch, .. } => Some(format!(
                "if no other git process is running, remove a stale lock file for {branch} and try again"
            )),
            Error::NotPushed { retry, .. } => Some(format!(
                "the evidence is committed locally; push it later with: {retry}"
            )),
            Error::ForeignCommits { branch, remote, .. } => Some(format!(
                "push them first (git push {remote} {branch}), or record evidence onto a dedicated \
                 branch with --branch (e.g. --branch evidence); then run: git evidence push {remote}"
            )),
            Error::NoRemote(name) => Some(format!(
                "add it with `git remote add {name} URL`, name another remote, or set `git config evidence.remote`"
            )),
            Error::InvalidFact { .. } => {
                Some("facts are KEY=VALUE, e.g. --fact vmid=9000 --fact node=pve1".into())
            }
            _ => None,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
