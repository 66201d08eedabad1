//! A hermetic test environment: own HOME, no global or system git config, fixed identities,
//! and helpers that print everything useful when a command does not do what was expected.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Path of a Packer 1.6.6 sample shipped with the tests.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/packer-1.6.6")
        .join(name)
}

/// A temp dir with its own HOME; every command run through it is hermetic.
pub struct Env {
    pub dir: TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("git-evidence-test-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Env { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path().join("home"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Build Host")
            .env("GIT_AUTHOR_EMAIL", "builder@example.com")
            .env("GIT_COMMITTER_NAME", "Build Host")
            .env("GIT_COMMITTER_EMAIL", "builder@example.com")
            .env("LC_ALL", "C")
            .env("TZ", "UTC");
    }

    /// A `git` command in `cwd`.
    pub fn git_cmd(&self, cwd: &Path) -> Command {
        let mut cmd = Command::new("git");
        self.apply(&mut cmd);
        cmd.current_dir(cwd);
        cmd
    }

    /// A `git-evidence` command in `cwd`.
    pub fn evidence_cmd(&self, cwd: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_git-evidence"));
        self.apply(&mut cmd);
        cmd.current_dir(cwd);
        cmd
    }

    /// Runs `git args…` in `cwd`, asserting success; returns stdout.
    pub fn git<I, S>(&self, cwd: &Path, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.git_cmd(cwd);
        cmd.args(args);
        ok(&mut cmd)
    }

    /// Runs `git-evidence args…` in `cwd` and returns its output, whatever the exit code.
    pub fn evidence<I, S>(&self, cwd: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.evidence_cmd(cwd);
        cmd.args(args);
        cmd.output().expect("run git-evidence")
    }

    /// Runs `git-evidence args…` in `cwd`, asserting success; returns stdout.
    pub fn evidence_ok<I, S>(&self, cwd: &Path, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.evidence_cmd(cwd);
        cmd.args(args);
        ok(&mut cmd)
    }

    /// A new repository with one commit on `main`.
    pub fn repo(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        self.git(self.path(), ["init", "-q", "-b", "main", name]);
        std::fs::write(path.join("build.pkr.hcl"), "# packer template\n").unwrap();
        self.git(&path, ["add", "build.pkr.hcl"]);
        self.git(&path, ["commit", "-q", "-m", "Packer templates"]);
        path
    }

    /// A new, empty repository (unborn `main`).
    pub fn empty_repo(&self, name: &str) -> PathBuf {
        self.git(self.path(), ["init", "-q", "-b", "main", name]);
        self.path().join(name)
    }

    /// A new bare repository with one commit on `main`.
    pub fn bare_repo(&self, name: &str) -> PathBuf {
        let src = self.repo(&format!("{name}-src"));
        self.git(
            self.path(),
            ["clone", "-q", "--bare", src.to_str().unwrap(), name],
        );
        self.path().join(name)
    }

    /// Writes `bytes` to a file in the env dir and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// Runs `cmd`, panicking with everything useful (command, cwd, status, stdout, stderr) unless it
/// succeeds; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed: {cmd:?}\n  in {:?}\n  status {}\n--- stdout\n{}\n--- stderr\n{}",
            cmd.get_current_dir(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout of an output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of an output, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-256 of a file as `sha256sum` prints it.
pub fn sha256sum(file: &Path) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(file);
    ok(&mut cmd).split_whitespace().next().unwrap().to_owned()
}

/// `git fsck --strict` must pass (dangling objects are fine, errors are not).
pub fn assert_fsck(env: &Env, repo: &Path) {
    let mut cmd = env.git_cmd(repo);
    cmd.args(["fsck", "--strict", "--no-progress"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "git fsck --strict failed in {repo:?}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The standard args of a successful record of `log` for `template` started at `started`.
pub fn record_args<'a>(template: &'a str, log: &'a Path, started: &'a str) -> Vec<String> {
    vec![
        "record".into(),
        "--template".into(),
        template.into(),
        "--log".into(),
        log.display().to_string(),
        "--exit-code".into(),
        "0".into(),
        "--started-at".into(),
        started.into(),
    ]
}

/// The JSON a `record --json` printed.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// The contents of `file` in the run `dir/latest` points at, at `rev` (git does not follow
/// symlinks inside `rev:path`, so the link is read first).
pub fn latest_file(env: &Env, repo: &Path, rev: &str, dir: &str, file: &str) -> String {
    let run = env.git(repo, ["cat-file", "blob", &format!("{rev}:{dir}/latest")]);
    env.git(
        repo,
        ["cat-file", "blob", &format!("{rev}:{dir}/{run}/{file}")],
    )
}

/// The run id a start time gets when it is the first run in its second:
/// `2026-11-26T10:15:00Z` → `2026-11-26T101500Z`.
pub fn base_id(started: &str) -> String {
    started.replace(':', "")
}

/// `(base, seq)` of a run id, for ordering (`…Z` < `…Z-2` < `…Z-10`).
pub fn id_key(id: &str) -> (String, u32) {
    match id.split_once("Z-") {
        Some((stamp, n)) => (format!("{stamp}Z"), n.parse().expect("numeric suffix")),
        None => (id.to_owned(), 1),
    }
}

/// The run ids a set of start times must produce for one template: `T`, `T-2`, … per second.
pub fn expected_ids<'a>(starts: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut per_second: BTreeMap<String, u32> = BTreeMap::new();
    for s in starts {
        *per_second.entry(base_id(s)).or_default() += 1;
    }
    let mut ids = BTreeSet::new();
    for (base, n) in per_second {
        ids.insert(base.clone());
        for seq in 2..=n {
            ids.insert(format!("{base}-{seq}"));
        }
    }
    ids
}

/// The newest of some run ids, in run-id order (not string order).
pub fn newest(ids: &BTreeSet<String>) -> String {
    ids.iter()
        .max_by_key(|id| id_key(id))
        .expect("at least one id")
        .clone()
}
