//! What the benchmarks share: a hermetic scratch area with the release binary, timed commands,
//! and the printing of medians. Each bench declares `mod common;`.

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub type Result<T, E = String> = std::result::Result<T, E>;

/// Templates of the large repositories; records go to the first one.
pub const TEMPLATES: [&str; 10] = [
    "ubuntu-22.04",
    "ubuntu-24.04",
    "debian-12",
    "debian-11",
    "rocky-9",
    "alma-9",
    "fedora-40",
    "alpine-3.20",
    "freebsd-14",
    "windows-2022",
];
/// Runs per template in the large repositories.
pub const RUNS_PER_TEMPLATE: usize = 1_000;

/// Prints a line at once, so progress shows while the bench runs.
pub fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub struct Bench {
    pub dir: TempDir,
    pub home: PathBuf,
    pub bin: PathBuf,
}

/// A bench's `main`: runs it, and on failure says why and exits 1.
pub fn main(run: fn() -> Result<()>) {
    if let Err(e) = run() {
        eprintln!("\nbench failed: {e}");
        std::process::exit(1);
    }
}

impl Bench {
    /// [`Bench::new`], kept afterwards when `GIT_EVIDENCE_BENCH_KEEP` is set (for looking into
    /// a result with perf or git count-objects), and announced: binary, scratch folder, git.
    pub fn start() -> Result<Self> {
        let mut bench = Bench::new()?;
        if std::env::var_os("GIT_EVIDENCE_BENCH_KEEP").is_some() {
            bench.dir.disable_cleanup(true);
        }
        say(format!(
            "git-evidence binary: {} ({})",
            bench.bin.display(),
            if option_env!("CARGO_BIN_EXE_git-evidence").is_some() {
                "CARGO_BIN_EXE_git-evidence"
            } else {
                "fallback: target/release"
            }
        ));
        say(format!(
            "scratch folder:      {}",
            bench.dir.path().display()
        ));
        say(format!(
            "git:                 {}",
            bench.out(bench.command("git").arg("--version"))?.trim()
        ));
        Ok(bench)
    }

    pub fn new() -> Result<Self> {
        let bin = option_env!("CARGO_BIN_EXE_git-evidence")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/git-evidence")
            });
        if !bin.is_file() {
            return Err(format!(
                "{} is missing: run `cargo build --release` first",
                bin.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("git-evidence-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let home = dir.path().join("home");
        fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        Ok(Bench { dir, home, bin })
    }

    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Build Host")
            .env("GIT_AUTHOR_EMAIL", "builder@example.com")
            .env("GIT_COMMITTER_NAME", "Build Host")
            .env("GIT_COMMITTER_EMAIL", "builder@example.com")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn git_in(&self, dir: &Path) -> Command {
        let mut cmd = self.command("git");
        cmd.arg("-C").arg(dir);
        cmd
    }

    /// Runs the command, failing unless it succeeds; returns its wall-clock time and stdout.
    pub fn run_out(&self, cmd: &mut Command) -> Result<(Duration, String)> {
        let start = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{cmd:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        self.run_out(cmd).map(|_| ())
    }

    pub fn timed(&self, cmd: &mut Command) -> Result<Duration> {
        self.run_out(cmd).map(|(t, _)| t)
    }

    pub fn out(&self, cmd: &mut Command) -> Result<String> {
        self.run_out(cmd).map(|(_, out)| out)
    }
}

pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n == 0 {
        Duration::ZERO
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// Prints the spread of one series of measurements.
pub fn series(what: &str, samples: &[Duration]) {
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    say(format!(
        "  {what:<48} n={:<3} median {:>9}  min {:>9}  max {:>9}",
        samples.len(),
        ms(median(samples)),
        ms(min),
        ms(max)
    ));
}
