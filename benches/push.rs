//! Performance goal of `git-evidence record --push` with many build hosts and one remote, as a
//! ratio against a baseline measured in the same run (`make bench`).
//!
//! Proofs per second landed on a shared remote: 8 writers pushing at once to one branch reach at
//! least 0.5× the aggregate throughput of a single writer. Contention (a rejected push, then
//! fetch, replay, compare-and-swap and push again) may cost time, but must not collapse it. The
//! retries it costs are reported too: `attempts - 1` of each push, per proof.
//!
//! Each measurement gets a fresh bare remote, seeded with one ordinary commit, and one clone per
//! writer (by file-system path; with `GIT_EVIDENCE_BENCH_DAEMON=1` also through a
//! `git daemon --enable=receive-pack` on 127.0.0.1). Every writer is a thread running
//! `git-evidence record --json --push` of a small real Packer log, one after the other, rotating
//! over a few templates, all writers released at once; the time is the wall clock until the last
//! one finished. Afterwards the remote must hold every proof exactly once (each carries a fact
//! naming its writer and run, read back from the remote's tree), `git evidence verify` must find
//! it clean, and every writer's branch must be published: a bench that loses evidence fails.
//!
//! The two measurements alternate, in an order that flips every repetition, and are compared by
//! their medians. Every command runs hermetically: own HOME, no global or system git config,
//! fixed identities. The report exits 0 whether the goal is met or not; it exits 1 when a command
//! fails or a result looks wrong. `GIT_EVIDENCE_BENCH_KEEP=1` keeps the scratch folder.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Barrier;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// Shared by every bench; this one needs only part of it.
#[allow(dead_code)]
mod common;

use common::{Bench, Result, TEMPLATES, median, ms, say, series, size};

/// How many templates the writers rotate over.
const TEMPLATES_USED: usize = 4;
/// The baseline: one writer recording this many runs.
const SOLO_RUNS: usize = 40;
/// The candidate: this many writers at once, each recording [`WRITER_RUNS`] runs.
const WRITERS: usize = 8;
const WRITER_RUNS: usize = 20;
/// Timed repetitions of each measurement, after one small warm-up.
const REPS: usize = 3;
const WARMUP_RUNS: usize = 3;
/// The goal: aggregate throughput of [`WRITERS`] writers at least this fraction of one writer's.
const GOAL: f64 = 0.5;

/// The log every record files (a real Packer 1.6.6 log, ~9 KiB).
const SMALL_LOG: &str = "tests/fixtures/packer-1.6.6/ok.packer.log";
/// The fact that names each proof, so the remote's tree can be checked proof by proof.
const TAG: &str = "bench";

fn main() {
    common::main(run);
}

fn run() -> Result<()> {
    let bench = Bench::start()?;
    let with_daemon = std::env::var_os("GIT_EVIDENCE_BENCH_DAEMON").is_some_and(|v| v != "0");
    // The feature may not be built yet: say so plainly rather than fail on the first record.
    let help = bench.command(&bench.bin).args(["push", "--help"]).output();
    if !help.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "{} has no `push` command: build the release binary of a version that has it \
             (`cargo build --release`)",
            bench.bin.display()
        ));
    }
    // Writers outnumber the cores: what else runs on the machine shows in the figures.
    say(format!(
        "cpus:                {} (load average {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    ));

    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join(SMALL_LOG);
    let log_size = size(
        std::fs::metadata(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?
            .len(),
    );
    let seed = bench.dir.path().join("seed");
    bench.seed_repo(&seed)?;
    let remotes = bench.dir.path().join("remotes");
    std::fs::create_dir_all(&remotes).map_err(|e| format!("{}: {e}", remotes.display()))?;
    let ctx = Ctx {
        bench: &bench,
        seed: &seed,
        remotes: &remotes,
        clones: bench.dir.path().join("clones"),
        log: &log,
    };

    let mut transports = vec![Transport::File];
    let daemon = if with_daemon {
        let daemon = Daemon::start(&bench, &remotes)?;
        say(format!(
            "git daemon:          git://127.0.0.1:{}/ (pid {})",
            daemon.port,
            daemon.child.id()
        ));
        transports.push(Transport::Daemon(daemon.port));
        Some(daemon)
    } else {
        None
    };

    let mut results = Vec::new();
    for transport in &transports {
        say(format!(
            "\n== {transport}: 1 writer × {SOLO_RUNS} records vs {WRITERS} writers × {WRITER_RUNS} \
             records of a {log_size} log, `record --json --push`, {REPS} repetitions (+1 warm-up), \
             interleaved"
        ));
        let warm = ctx.measure(transport, "warmup", 1, WARMUP_RUNS)?;
        say(format!("  warm-up:  {}", warm.line()));
        let (mut solo, mut many) = (Vec::new(), Vec::new());
        for rep in 0..REPS {
            for step in 0..2 {
                if (step + rep) % 2 == 0 {
                    let o = ctx.measure(transport, &format!("solo-{rep}"), 1, SOLO_RUNS)?;
                    say(format!("  rep {}, 1 writer:  {}", rep + 1, o.line()));
                    solo.push(o);
                } else {
                    let o = ctx.measure(transport, &format!("many-{rep}"), WRITERS, WRITER_RUNS)?;
                    say(format!(
                        "  rep {}, {WRITERS} writers: {}",
                        rep + 1,
                        o.line()
                    ));
                    many.push(o);
                }
            }
        }
        let walls = |os: &[Outcome]| os.iter().map(|o| o.took).collect::<Vec<_>>();
        let latencies = |os: &[Outcome]| {
            os.iter()
                .flat_map(|o| o.latencies.iter().copied())
                .collect::<Vec<_>>()
        };
        series(&format!("wall time, 1 writer × {SOLO_RUNS}"), &walls(&solo));
        series(
            &format!("wall time, {WRITERS} writers × {WRITER_RUNS}"),
            &walls(&many),
        );
        series("one record --push, 1 writer", &latencies(&solo));
        series(
            &format!("one record --push, {WRITERS} writers"),
            &latencies(&many),
        );
        results.push((transport.to_string(), solo, many));
    }
    drop(daemon);

    say("\n== results (medians; candidate vs baseline)".into());
    for (transport, solo, many) in &results {
        let rate = |os: &[Outcome]| {
            let proofs = os.first().map_or(0, |o| o.proofs);
            proofs as f64 / median(&os.iter().map(|o| o.took).collect::<Vec<_>>()).as_secs_f64()
        };
        let (one, eight) = (rate(solo), rate(many));
        let ratio = eight / one.max(1e-9);
        let verdict = if ratio >= GOAL { "PASS" } else { "MISS" };
        say(format!(
            "{:<44} {:>6.1} vs {:>6.1} proofs/s   ratio {ratio:.2}×  (goal ≥ {GOAL}×)  {verdict}",
            format!("{WRITERS} writers vs 1, aggregate ({transport})"),
            eight,
            one
        ));
        let retries = |os: &[Outcome]| {
            let proofs: usize = os.iter().map(|o| o.proofs).sum();
            os.iter().map(|o| o.retries).sum::<u64>() as f64 / proofs.max(1) as f64
        };
        let most = |os: &[Outcome]| os.iter().map(|o| o.max_attempts).max().unwrap_or(0);
        say(format!(
            "  retries per proof: 1 writer {:.2}, {WRITERS} writers {:.2} (most attempts of one push: \
             {} and {})",
            retries(solo),
            retries(many),
            most(solo),
            most(many)
        ));
    }
    Ok(())
}

enum Transport {
    /// Clones by file-system path: git runs `git-receive-pack` on the remote directly.
    File,
    /// Clones by `git://127.0.0.1:PORT/`, through `git daemon --enable=receive-pack`.
    Daemon(u16),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::File => f.write_str("file path"),
            Transport::Daemon(_) => f.write_str("git daemon"),
        }
    }
}

impl Transport {
    fn url(&self, remotes: &Path, name: &str) -> String {
        match self {
            Transport::File => remotes.join(name).to_string_lossy().into_owned(),
            Transport::Daemon(port) => format!("git://127.0.0.1:{port}/{name}"),
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Transport::File => "file",
            Transport::Daemon(_) => "daemon",
        }
    }
}

/// What one measurement gave: wall time and what the pushes reported.
struct Outcome {
    took: Duration,
    proofs: usize,
    retries: u64,
    max_attempts: u64,
    replayed: u64,
    renamed: usize,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn line(&self) -> String {
        let slowest = self.latencies.iter().max().copied().unwrap_or_default();
        format!(
            "{} proofs in {:>8} = {:>5.1}/s; retries {:.2}/proof, {} replayed, {} renamed; \
             slowest {}, most attempts {}",
            self.proofs,
            ms(self.took),
            self.proofs as f64 / self.took.as_secs_f64().max(1e-9),
            self.retries as f64 / self.proofs.max(1) as f64,
            self.replayed,
            self.renamed,
            ms(slowest),
            self.max_attempts
        )
    }
}

/// What one record's `--json` output said about its push.
struct Pushed {
    tag: String,
    took: Duration,
    attempts: u64,
    replayed: u64,
    renamed: usize,
}

struct Ctx<'a> {
    bench: &'a Bench,
    seed: &'a Path,
    remotes: &'a Path,
    clones: PathBuf,
    log: &'a Path,
}

impl Ctx<'_> {
    /// A fresh remote and `writers` clones of it; then every writer records `runs` runs with
    /// `--push`, all at once; then the remote is checked for every one of them.
    fn measure(
        &self,
        transport: &Transport,
        label: &str,
        writers: usize,
        runs: usize,
    ) -> Result<Outcome> {
        let bench = self.bench;
        let name = format!("{}-{label}.git", transport.slug());
        let remote = self.remotes.join(&name);
        bench.run(
            bench
                .command("git")
                .args(["init", "-q", "--bare", "-b", "main"])
                .arg(&remote),
        )?;
        bench.run(
            bench
                .git_in(self.seed)
                .args(["push", "-q"])
                .arg(&remote)
                .arg("main"),
        )?;
        let url = transport.url(self.remotes, &name);
        let clones: Vec<PathBuf> = (0..writers)
            .map(|w| {
                self.clones
                    .join(format!("{}-{label}", transport.slug()))
                    .join(format!("w{w}"))
            })
            .collect();
        for clone in &clones {
            bench.run(bench.command("git").args(["clone", "-q", &url]).arg(clone))?;
        }

        let barrier = Barrier::new(writers + 1);
        let (took, per_writer) = std::thread::scope(|s| {
            let handles: Vec<_> = clones
                .iter()
                .enumerate()
                .map(|(w, clone)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        self.writer(clone, label, w, runs)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let per_writer: Vec<Result<Vec<Pushed>>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a writer thread panicked".into()))
                })
                .collect();
            (start.elapsed(), per_writer)
        });
        let mut pushed = Vec::new();
        let mut errors = Vec::new();
        for (w, result) in per_writer.into_iter().enumerate() {
            match result {
                Ok(p) => pushed.extend(p),
                Err(e) => errors.push(format!("writer {w}: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }

        let expected: Vec<String> = (0..writers)
            .flat_map(|w| (0..runs).map(move |k| tag(label, w, k)))
            .collect();
        let landed: Vec<&str> = pushed.iter().map(|p| p.tag.as_str()).collect();
        if landed.len() != expected.len() {
            return Err(format!(
                "{} records reported a push, expected {}",
                landed.len(),
                expected.len()
            ));
        }
        self.check_remote(&remote, &clones, &expected)?;
        Ok(Outcome {
            took,
            proofs: pushed.len(),
            retries: pushed.iter().map(|p| p.attempts.saturating_sub(1)).sum(),
            max_attempts: pushed.iter().map(|p| p.attempts).max().unwrap_or(0),
            replayed: pushed.iter().map(|p| p.replayed).sum(),
            renamed: pushed.iter().map(|p| p.renamed).sum(),
            latencies: pushed.iter().map(|p| p.took).collect(),
        })
    }

    /// One build host: `runs` records, one after the other, each pushed.
    fn writer(&self, clone: &Path, label: &str, w: usize, runs: usize) -> Result<Vec<Pushed>> {
        let bench = self.bench;
        let mut out = Vec::with_capacity(runs);
        for k in 0..runs {
            let template = TEMPLATES[(w + k) % TEMPLATES_USED];
            let tag = tag(label, w, k);
            let mut cmd = bench.command(&bench.bin);
            cmd.arg("-C")
                .arg(clone)
                .args(["record", "--template", template, "--exit-code", "0"])
                .arg("--log")
                .arg(self.log)
                .arg("--fact")
                .arg(format!("{TAG}={tag}"))
                // `--push` takes an optional remote: last, so it takes nothing else.
                .args(["--json", "--push"])
                // A build host of its own, and never a prompt for credentials.
                .env("GIT_COMMITTER_NAME", format!("Build Host {w}"))
                .env("GIT_TERMINAL_PROMPT", "0");
            let (took, stdout) = bench.run_out(&mut cmd)?;
            let json: serde_json::Value = serde_json::from_str(stdout.trim())
                .map_err(|e| format!("record --json printed no JSON ({e}):\n{stdout}"))?;
            let push = json.get("push").filter(|p| p.is_object()).ok_or_else(|| {
                format!("record --json --push printed no \"push\" object:\n{stdout}")
            })?;
            if push.get("pushed") != Some(&serde_json::Value::Bool(true)) {
                return Err(format!(
                    "record of {tag} exited 0 but did not push:\n{stdout}"
                ));
            }
            let attempts = push
                .get("attempts")
                .and_then(|a| a.as_u64())
                .filter(|&a| a >= 1)
                .ok_or_else(|| format!("\"push\" has no attempts ≥ 1:\n{stdout}"))?;
            out.push(Pushed {
                tag,
                took,
                attempts,
                replayed: count(push.get("replayed")),
                renamed: count(push.get("renamed")) as usize,
            });
        }
        Ok(out)
    }

    /// Fails unless the remote's branch holds every expected proof exactly once, verifies clean,
    /// has no failed-run refs, and contains every writer's branch tip.
    fn check_remote(&self, remote: &Path, clones: &[PathBuf], expected: &[String]) -> Result<()> {
        let bench = self.bench;
        let listing = bench.out(bench.git_in(remote).args([
            "ls-tree",
            "-r",
            "main",
            "--",
            "evidence/builds",
        ]))?;
        let mut proofs = Vec::new();
        for line in listing.lines() {
            let Some((meta, path)) = line.split_once('\t') else {
                continue;
            };
            if path.ends_with("/proof.json") {
                let id = meta
                    .split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned();
                proofs.push((id, path.to_owned()));
            }
        }
        if proofs.len() != expected.len() {
            return Err(format!(
                "the remote {} has {} run folders on main, expected {}",
                remote.display(),
                proofs.len(),
                expected.len()
            ));
        }
        let ids: Vec<&str> = proofs.iter().map(|(id, _)| id.as_str()).collect();
        let blobs = cat_blobs(bench, remote, &ids)?;
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ((_, path), blob) in proofs.iter().zip(&blobs) {
            let json: serde_json::Value = serde_json::from_slice(blob)
                .map_err(|e| format!("{path} in the remote is not JSON: {e}"))?;
            let tag = json
                .get("facts")
                .and_then(|f| f.get(TAG))
                .and_then(|t| t.as_str())
                .ok_or_else(|| format!("{path} in the remote has no fact {TAG}"))?;
            seen.entry(tag.to_owned()).or_default().push(path.clone());
        }
        let missing: Vec<&str> = expected
            .iter()
            .filter(|t| !seen.contains_key(*t))
            .map(String::as_str)
            .collect();
        let twice: Vec<String> = seen
            .iter()
            .filter(|(_, paths)| paths.len() > 1)
            .map(|(t, paths)| format!("{t} at {}", paths.join(", ")))
            .collect();
        if !missing.is_empty() || !twice.is_empty() {
            return Err(format!(
                "the remote {} lost or duplicated evidence: missing {missing:?}, twice {twice:?}",
                remote.display()
            ));
        }

        let verify = bench.out(
            bench
                .command(&bench.bin)
                .arg("-C")
                .arg(remote)
                .arg("verify"),
        )?;
        if !verify.contains(&format!("{} runs checked, 0 problems", expected.len())) {
            return Err(format!(
                "verify of the remote {} is not clean:\n{verify}",
                remote.display()
            ));
        }
        let refs = bench.out(bench.git_in(remote).args(["for-each-ref", "refs/evidence"]))?;
        if !refs.trim().is_empty() {
            return Err(format!(
                "the remote has failed-run refs, none expected:\n{refs}"
            ));
        }
        for clone in clones {
            let tip = bench.out(bench.git_in(clone).args(["rev-parse", "main"]))?;
            let published = bench
                .git_in(remote)
                .args(["merge-base", "--is-ancestor", tip.trim(), "main"])
                .status()
                .map_err(|e| format!("cannot run git merge-base: {e}"))?;
            if !published.success() {
                return Err(format!(
                    "{}'s main ({}) is not on the remote's main: evidence left unpublished",
                    clone.display(),
                    tip.trim()
                ));
            }
        }
        Ok(())
    }
}

impl Bench {
    /// A repository with one ordinary commit on `main`, pushed into every fresh remote.
    fn seed_repo(&self, path: &Path) -> Result<()> {
        self.run(
            self.command("git")
                .args(["init", "-q", "-b", "main"])
                .arg(path),
        )?;
        std::fs::write(path.join("build.pkr.hcl"), "# packer template\n")
            .map_err(|e| format!("cannot write in {}: {e}", path.display()))?;
        self.run(self.git_in(path).args(["add", "build.pkr.hcl"]))?;
        self.run(
            self.git_in(path)
                .args(["commit", "-q", "-m", "Packer templates"]),
        )
    }
}

/// The fact value naming run `k` of writer `w` in one measurement.
fn tag(label: &str, w: usize, k: usize) -> String {
    format!("{label}-w{w}-r{k}")
}

/// A count from the JSON: a number as it is, an array by its length, anything else 0.
fn count(value: Option<&serde_json::Value>) -> u64 {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::Array(a)) => a.len() as u64,
        _ => 0,
    }
}

/// The contents of the given blobs, read with one `git cat-file --batch`.
fn cat_blobs(bench: &Bench, repo: &Path, ids: &[&str]) -> Result<Vec<Vec<u8>>> {
    let mut child = bench
        .git_in(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start git cat-file: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = ids.join("\n") + "\n";
    // Write from a thread: cat-file answers while it reads, and both pipes have limits.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("git cat-file: {e}"))?;
    writer
        .join()
        .map_err(|_| "the cat-file writer panicked".to_owned())?
        .map_err(|e| format!("writing to git cat-file: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git cat-file failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut rest = out.stdout.as_slice();
    let mut blobs = Vec::with_capacity(ids.len());
    for id in ids {
        let eol = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("git cat-file output ended early")?;
        let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let size: usize = header
            .strip_prefix(&format!("{id} blob "))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("git cat-file said {header:?} for {id}"))?;
        let body = rest
            .get(eol + 1..eol + 1 + size)
            .ok_or("git cat-file output ended early")?;
        blobs.push(body.to_vec());
        rest = rest.get(eol + 2 + size..).unwrap_or_default();
    }
    Ok(blobs)
}

/// `git daemon --enable=receive-pack` on 127.0.0.1 serving the remotes; stopped when dropped.
struct Daemon {
    child: Child,
    port: u16,
    drain: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(bench: &Bench, base: &Path) -> Result<Self> {
        // The daemon itself, not the `git` wrapper that would run it as a child: killing the
        // child we hold then stops the server.
        let exec_path = bench.out(bench.command("git").arg("--exec-path"))?;
        let program = Path::new(exec_path.trim()).join("git-daemon");
        let mut last_error = String::new();
        // A free port, asked of the kernel; another process may take it before the daemon
        // listens, so try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot find a free port: {e}"))?
                .port();
            let mut child = bench
                .command(&program)
                .args(["--verbose", "--reuseaddr", "--export-all"])
                .args(["--enable=receive-pack", "--informative-errors"])
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
            let stderr = child.stderr.take().ok_or("no stderr")?;
            let mut reader = BufReader::new(stderr);
            let mut seen = Vec::new();
            let mut ready = false;
            let mut line = String::new();
            // Waits for the line git daemon prints once it listens (with --verbose).
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                seen.push(line.trim_end().to_owned());
                if line.contains("Ready to rumble") {
                    ready = true;
                    break;
                }
                line.clear();
            }
            if ready {
                // Keeps reading what it logs per connection, so its pipe never fills.
                let drain = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut reader, &mut std::io::sink());
                });
                return Ok(Daemon {
                    child,
                    port,
                    drain: Some(drain),
                });
            }
            let _ = child.kill();
            let status = child.wait();
            last_error = format!("git daemon exited ({status:?}):\n{}", seen.join("\n"));
        }
        Err(last_error)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}
