//! git-evidence: proof of infrastructure builds, committed into git.
//!
//! A run — a Packer build's complete log, its exit code and the facts about the VM it made —
//! becomes one folder in one atomic commit (or, when the run failed, a commit on a ref of its
//! own). The stages, one module each:
//!
//! - [`names`]: templates, run ids and the evidence root, validated once;
//! - [`proof`]: the run as data (proof.json);
//! - [`logstore`]: the log streamed into the object database, hashed on the way;
//! - [`render`] and [`index_page`]: the human-readable texts;
//! - [`commit`]: the commit, and the compare-and-swap that lands it;
//! - [`worktree`]: checked-out work trees brought up to date, their indexes updated in place by
//!   [`git_index`];
//! - [`record`]: the `record` command tying them together;
//! - [`capture`] (with [`ansi`]): the wrapped command's output, streamed;
//! - [`redact`]: secrets removed from every byte before it is stored or shown;
//! - [`facts`] and [`proxmox`]: what is known about the run and the VM it made;
//! - [`run`]: the `run` command, a Packer build captured and recorded;
//! - [`list`]: the `list` and `show` commands, reading evidence back (read-only);
//! - [`verify`]: the `verify` command, checking evidence and its history (reads only);
//! - [`push`]: the `push` and `setup` commands, evidence delivered to a shared remote;
//! - [`hooks`]: the `hook` and `hooks install` commands, git hooks checking evidence;
//! - [`cli`]: the command line.

pub mod ansi;
pub mod capture;
pub mod cli;
pub mod commit;
pub mod error;
pub mod facts;
pub mod git_index;
pub mod hooks;
pub mod index_page;
pub mod list;
pub mod logstore;
pub mod names;
pub mod proof;
pub mod proxmox;
pub mod push;
pub mod record;
pub mod redact;
pub mod render;
pub mod review;
pub mod run;
pub mod verify;
pub mod worktree;

pub use error::{Error, Result};

/// Process-wide libgit2 settings, set once before any repository is opened.
///
/// Every object git-evidence references it has just written or just read out of an existing
/// tree, so libgit2's checks that referenced objects exist (strict object creation) and that an
/// object read hashes to its id (which git itself does not do on read) only cost time: in a
/// repository with thousands of proofs, rewriting a template's folder would look up every
/// sibling run. `git fsck` remains the integrity check, and `verify` hashes what it reads.
pub fn tune_libgit2() {
    git2::opts::strict_object_creation(false);
    git2::opts::strict_hash_verification(false);
}

/// This machine's host name, as recorded in proofs.
pub fn host_name() -> Option<String> {
    let name = gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_owned();
    (!name.is_empty()).then_some(name)
}
