//! Performance goals of `git-evidence record`, each as a ratio against a baseline measured in
//! the same run (`make bench`).
//!
//! 1. Recording into a repository holding 10,000 proofs costs at most 1.2× recording into one
//!    holding none: the tool must not scale with the size of the evidence.
//! 2. Recording into that repository costs at most 0.2× what `git add -A && git commit` of the
//!    same files costs: the tool must not scan the work tree the way git does.
//! 3. Recording a 100 MiB log costs at most 1.3× `git hash-object -w` of it: storing the log is
//!    the work, everything else is noise.
//!
//! Machines are shared and noisy, so candidate and baseline are measured interleaved (in an
//! order that rotates every repetition) and compared by their medians. Every command runs
//! hermetically: own HOME, no global or system git config, fixed identities. The report exits 0
//! whether goals are met or not; it exits 1 when a command fails or a result looks wrong.
//!
//! Set `GIT_EVIDENCE_BENCH_KEEP=1` to keep the scratch folder (its path is printed first), e.g.
//! to profile a record in the 10,000-proof repository with `perf`.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

mod common;

use common::{Bench, RUNS_PER_TEMPLATE, Result, TEMPLATES, median, ms, say, series, size};

/// The template every measured record goes to.
const TEMPLATE: &str = TEMPLATES[0];
/// Timed repetitions of the small-record measurements (goals 1 and 2), after the warm-ups.
const LATENCY_REPS: usize = 31;
const LATENCY_WARMUPS: usize = 2;
/// Timed repetitions of each 100 MiB measurement (goal 3).
const BIG_REPS: usize = 7;
const BIG_LOG_BYTES: usize = 100 * 1024 * 1024;

/// The small log every latency measurement records (a real Packer 1.6.6 log, ~9 KiB).
const SMALL_LOG: &str = "tests/fixtures/packer-1.6.6/ok.packer.log";

fn main() {
    common::main(run);
}

fn run() -> Result<()> {
    let bench = Bench::start()?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let small_log = manifest.join(SMALL_LOG);
    let small_log_bytes =
        fs::read(&small_log).map_err(|e| format!("cannot read {}: {e}", small_log.display()))?;

    let model = ProofModel::from_real_record(&bench, &small_log)?;
    let mut clock = Clock::new();

    say("\n== building the 10,000-proof repository".into());
    let big = bench.dir.path().join("proofs-10k");
    let built = Instant::now();
    let facts = build_big_repo(&bench, &big, &model)?;
    say(format!(
        "  {} proofs ({} templates × {} runs), {} files in the tree, {} in the work tree and index; built in {:.1} s",
        facts.proofs,
        TEMPLATES.len(),
        RUNS_PER_TEMPLATE,
        facts.tree_files,
        facts.tree_files,
        built.elapsed().as_secs_f64()
    ));
    say(format!(
        "  index {}, pack {}",
        size(facts.index_bytes),
        size(facts.pack_bytes)
    ));
    let empty = bench.dir.path().join("empty");
    bench.plain_repo(&empty)?;
    say("  empty repository: one commit (build.pkr.hcl), no evidence".into());

    say(format!(
        "\n== goals 1 and 2: record of a {} log, {} repetitions (+{} warm-ups), interleaved",
        size(small_log_bytes.len() as u64),
        LATENCY_REPS,
        LATENCY_WARMUPS
    ));
    let mut rec_empty = Vec::new();
    let mut rec_big = Vec::new();
    let mut add_commit = Vec::new();
    for i in 0..LATENCY_WARMUPS + LATENCY_REPS {
        let timed = i >= LATENCY_WARMUPS;
        for step in 0..3 {
            match (step + i) % 3 {
                0 => {
                    let t = bench.record(&empty, &small_log, clock.next())?;
                    if timed {
                        rec_empty.push(t);
                    }
                }
                1 => {
                    let t = bench.record(&big, &small_log, clock.next())?;
                    if timed {
                        rec_big.push(t);
                    }
                }
                _ => {
                    stage_like_record(&big, &model, &small_log_bytes, clock.next())?;
                    let t = bench.timed(bench.git_in(&big).args(["add", "-A"]))?
                        + bench.timed(bench.git_in(&big).args([
                            "commit",
                            "-q",
                            "-m",
                            "Record by hand",
                        ]))?;
                    if timed {
                        add_commit.push(t);
                    }
                }
            }
        }
        if i + 1 == LATENCY_WARMUPS {
            bench.expect_clean(&big)?;
        }
    }
    bench.expect_clean(&big)?;
    bench.expect_clean(&empty)?;
    let runs = bench.runs_of(&big)?;
    if runs != RUNS_PER_TEMPLATE + 2 * (LATENCY_WARMUPS + LATENCY_REPS) {
        return Err(format!(
            "{TEMPLATE} has {runs} runs on main, expected {}",
            RUNS_PER_TEMPLATE + 2 * (LATENCY_WARMUPS + LATENCY_REPS)
        ));
    }
    series("record, empty repository", &rec_empty);
    series("record, 10k-proof repository", &rec_big);
    series("git add -A + git commit, 10k-proof repository", &add_commit);

    say(format!(
        "\n== goal 3: record of a {} log, {} repetitions of each, interleaved, a fresh repository each",
        size(BIG_LOG_BYTES as u64),
        BIG_REPS
    ));
    let big_log = bench.dir.path().join("big.packer.log");
    let generated = Instant::now();
    write_big_log(&big_log)?;
    let expected = bench
        .out(
            bench
                .git_in(bench.dir.path())
                .args(["hash-object", "--no-filters"])
                .arg(&big_log),
        )?
        .trim()
        .to_owned();
    say(format!(
        "  generated a Packer-like log in {:.1} s: {} lines, blob {}",
        generated.elapsed().as_secs_f64(),
        count_lines(&big_log)?,
        &expected[..10]
    ));
    let [mut rec_wt, mut hash_wt, mut rec_bare, mut hash_bare] =
        [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut loose_bytes = 0;
    for i in 0..BIG_REPS {
        for step in 0..4 {
            let case = (step + i) % 4;
            let repo = bench.dir.path().join(format!("big-{i}-{case}"));
            let bare = case >= 2;
            if bare {
                bench.run(
                    bench
                        .git_in(bench.dir.path())
                        .args(["init", "-q", "--bare", "-b", "main"])
                        .arg(&repo),
                )?;
            } else {
                bench.plain_repo(&repo)?;
            }
            sync()?;
            let t = if case % 2 == 0 {
                let t = bench.record(&repo, &big_log, clock.next())?;
                check_big_record(&bench, &repo, bare, &expected)?;
                t
            } else {
                let t = bench.timed(
                    bench
                        .git_in(&repo)
                        .args(["hash-object", "-w"])
                        .arg(&big_log),
                )?;
                loose_bytes = check_loose(&bench, &repo, &expected)?;
                t
            };
            [&mut rec_wt, &mut hash_wt, &mut rec_bare, &mut hash_bare][case].push(t);
            fs::remove_dir_all(&repo)
                .map_err(|e| format!("cannot remove {}: {e}", repo.display()))?;
            sync()?;
        }
    }
    say(format!(
        "  the log is a {} zlib-compressed loose object",
        size(loose_bytes)
    ));
    series("record, non-bare (work tree gets a copy)", &rec_wt);
    series("git hash-object -w, non-bare", &hash_wt);
    series("record, bare", &rec_bare);
    series("git hash-object -w, bare", &hash_bare);

    let goals = [
        Goal::new(
            "record latency: 10k proofs vs empty",
            &rec_big,
            &rec_empty,
            1.2,
        ),
        Goal::new(
            "record vs git add -A && git commit (10k)",
            &rec_big,
            &add_commit,
            0.2,
        ),
        Goal::new(
            "record 100 MiB log vs git hash-object -w",
            &rec_wt,
            &hash_wt,
            1.3,
        ),
        Goal::new(
            "  same, bare repository (not a goal)",
            &rec_bare,
            &hash_bare,
            1.3,
        ),
    ];
    say("\n== results (medians; candidate vs baseline)".into());
    for goal in &goals {
        say(goal.line());
    }
    Ok(())
}

impl Bench {
    /// Times `git-evidence -C repo record` of a successful build of [`TEMPLATE`].
    fn record(&self, repo: &Path, log: &Path, started: DateTime<Utc>) -> Result<Duration> {
        let mut cmd = self.command(&self.bin);
        cmd.arg("-C")
            .arg(repo)
            .args(["record", "--template", TEMPLATE, "--exit-code", "0"])
            .args(["--fact", "vmid=9000", "--fact", "node=pve1"])
            .arg("--started-at")
            .arg(started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .arg("--log")
            .arg(log);
        let (took, _) = self.run_out(&mut cmd)?;
        Ok(took)
    }

    /// A non-bare repository with one ordinary commit on `main`.
    fn plain_repo(&self, path: &Path) -> Result<()> {
        self.run(
            self.git_in(self.dir.path())
                .args(["init", "-q", "-b", "main"])
                .arg(path),
        )?;
        fs::write(path.join("build.pkr.hcl"), "# packer template\n")
            .map_err(|e| format!("cannot write in {}: {e}", path.display()))?;
        self.run(self.git_in(path).args(["add", "build.pkr.hcl"]))?;
        self.run(
            self.git_in(path)
                .args(["commit", "-q", "-m", "Packer templates"]),
        )
    }

    /// Fails unless `git status` shows nothing to commit: the record left the index in step.
    fn expect_clean(&self, repo: &Path) -> Result<()> {
        let status = self.out(self.git_in(repo).args(["status", "--porcelain"]))?;
        if status.trim().is_empty() {
            Ok(())
        } else {
            let head: Vec<&str> = status.lines().take(10).collect();
            Err(format!(
                "{} is not clean after recording:\n{}",
                repo.display(),
                head.join("\n")
            ))
        }
    }

    /// How many run folders [`TEMPLATE`] has on `main`.
    fn runs_of(&self, repo: &Path) -> Result<usize> {
        let listing = self.out(
            self.git_in(repo)
                .args(["ls-tree", "-d", "--name-only"])
                .arg(format!("main:evidence/builds/{TEMPLATE}")),
        )?;
        Ok(listing.lines().count())
    }
}

fn sync() -> Result<()> {
    let status = Command::new("sync")
        .status()
        .map_err(|e| format!("cannot run sync: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("sync failed: {status}"))
    }
}

/// Start times for successive runs, a minute apart and later than every generated run, so each
/// record gets a run id of its own and moves `latest` like a new build does.
struct Clock(i64);

impl Clock {
    fn new() -> Self {
        Clock(
            DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
                .map(|t| t.timestamp())
                .unwrap_or(1_780_272_000),
        )
    }

    fn next(&mut self) -> DateTime<Utc> {
        self.0 += 60;
        DateTime::from_timestamp(self.0, 0).unwrap_or_default()
    }
}

fn run_id(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H%M%SZ").to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files of a proof, modelled on a real record so generated ones look exactly like it.
struct ProofModel {
    json: serde_json::Value,
    readme: String,
    index: String,
    attributes: String,
    run_id: String,
    started: String,
    sha256: String,
    bytes: String,
}

impl ProofModel {
    fn from_real_record(bench: &Bench, log: &Path) -> Result<Self> {
        let repo = bench.dir.path().join("model");
        bench.plain_repo(&repo)?;
        let started = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map_err(|e| e.to_string())?
            .with_timezone(&Utc);
        bench.record(&repo, log, started)?;
        let run = run_id(started);
        let folder = repo.join(format!("evidence/builds/{TEMPLATE}/{run}"));
        let read = |p: PathBuf| fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
        let json_text = read(folder.join("proof.json"))?;
        let json: serde_json::Value =
            serde_json::from_str(&json_text).map_err(|e| format!("proof.json: {e}"))?;
        let field = |k: &str| {
            json.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .ok_or_else(|| format!("proof.json has no {k}"))
        };
        let model = ProofModel {
            readme: read(folder.join("README.md"))?,
            index: read(repo.join("evidence/README.md"))?,
            attributes: read(repo.join("evidence/.gitattributes"))?,
            run_id: field("run_id")?,
            started: field("started_at")?,
            sha256: field("log_sha256")?,
            bytes: field("log_bytes")?,
            json,
        };
        fs::remove_dir_all(&repo).map_err(|e| format!("cannot remove {}: {e}", repo.display()))?;
        Ok(model)
    }

    /// proof.json and README.md of a run of `template` with this log.
    fn render(
        &self,
        template: &str,
        started: DateTime<Utc>,
        log: &[u8],
        vmid: u32,
    ) -> (String, String) {
        let run = run_id(started);
        let started_at = started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let sha = sha256_hex(log);
        let mut json = self.json.clone();
        json["template"] = template.into();
        json["run_id"] = run.as_str().into();
        json["started_at"] = started_at.as_str().into();
        json["log_sha256"] = sha.as_str().into();
        json["log_bytes"] = log.len().into();
        json["vmid"] = vmid.into();
        let mut json = serde_json::to_string_pretty(&json).unwrap_or_default();
        json.push('\n');
        let readme = self
            .readme
            .replace(TEMPLATE, template)
            .replace(&self.run_id, &run)
            .replace(&self.started, &started_at)
            .replace(&self.sha256, &sha)
            .replace(
                &format!("{} bytes", self.bytes),
                &format!("{} bytes", log.len()),
            )
            .replace("| VMID | 9000 |", &format!("| VMID | {vmid} |"));
        (json, readme)
    }
}

struct BigRepo {
    proofs: usize,
    tree_files: usize,
    index_bytes: u64,
    pack_bytes: u64,
}

/// The 10,000-proof repository: one commit made with `git fast-import`, then checked out.
fn build_big_repo(bench: &Bench, repo: &Path, model: &ProofModel) -> Result<BigRepo> {
    bench.run(
        bench
            .git_in(bench.dir.path())
            .args(["init", "-q", "-b", "main"])
            .arg(repo),
    )?;
    let mut child = bench
        .git_in(repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start git fast-import: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut w = BufWriter::with_capacity(1 << 20, stdin);
    let io = |e: std::io::Error| format!("writing to git fast-import: {e}");
    let inline = |w: &mut BufWriter<_>, mode: &str, path: &str, data: &[u8]| -> Result<()> {
        write!(w, "M {mode} inline {path}\ndata {}\n", data.len()).map_err(io)?;
        w.write_all(data).map_err(io)?;
        w.write_all(b"\n").map_err(io)
    };
    let message = "Evidence of 10,000 builds\n";
    write!(
        w,
        "commit refs/heads/main\n\
         author Build Host <builder@example.com> 1767225600 +0000\n\
         committer Build Host <builder@example.com> 1767225600 +0000\n\
         data {}\n{message}",
        message.len()
    )
    .map_err(io)?;
    inline(&mut w, "100644", "build.pkr.hcl", b"# packer template\n")?;
    inline(
        &mut w,
        "100644",
        "evidence/.gitattributes",
        model.attributes.as_bytes(),
    )?;
    // A plausible index; the first record rewrites it from the tree anyway.
    inline(
        &mut w,
        "100644",
        "evidence/README.md",
        model.index.as_bytes(),
    )?;
    let first = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .map_err(|e| e.to_string())?
        .timestamp();
    let mut proofs = 0;
    for (t, template) in TEMPLATES.iter().enumerate() {
        let mut last = String::new();
        for r in 0..RUNS_PER_TEMPLATE {
            // Every 7 hours and a bit: distinct, increasing, not in lock-step across templates.
            let secs = first + (r as i64) * 25_200 + (t as i64) * 97;
            let started = DateTime::from_timestamp(secs, 0).ok_or("bad time")?;
            let mut log_gen = LogGen::new((t * RUNS_PER_TEMPLATE + r) as u64, secs, template);
            let mut log = Vec::with_capacity(2048);
            let lines = 12 + log_gen.rng.below(10);
            for _ in 0..lines {
                log_gen.line(&mut log);
            }
            let vmid = 9000 + t as u32;
            let (json, readme) = model.render(template, started, &log, vmid);
            let run = run_id(started);
            let folder = format!("evidence/builds/{template}/{run}");
            inline(
                &mut w,
                "100644",
                &format!("{folder}/README.md"),
                readme.as_bytes(),
            )?;
            inline(
                &mut w,
                "100644",
                &format!("{folder}/proof.json"),
                json.as_bytes(),
            )?;
            inline(&mut w, "100644", &format!("{folder}/packer.log"), &log)?;
            proofs += 1;
            last = run;
        }
        inline(
            &mut w,
            "120000",
            &format!("evidence/builds/{template}/latest"),
            last.as_bytes(),
        )?;
    }
    w.write_all(b"\ndone\n").map_err(io)?;
    drop(w.into_inner().map_err(|e| io(e.into_error()))?);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("git fast-import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git fast-import failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    bench.run(bench.git_in(repo).args(["reset", "-q", "--hard", "main"]))?;
    // Let the checkout's timestamps age past the index's, so no entry is racily clean, and
    // refresh the index: git add then sees the repository the way it sees a long-lived one.
    std::thread::sleep(Duration::from_millis(1100));
    bench.run(bench.git_in(repo).args(["update-index", "-q", "--refresh"]))?;
    bench.expect_clean(repo)?;
    let tree_files = bench
        .out(bench.git_in(repo).args(["ls-files"]))?
        .lines()
        .count();
    let index_bytes = fs::metadata(repo.join(".git/index"))
        .map(|m| m.len())
        .unwrap_or(0);
    let pack_bytes = fs::read_dir(repo.join(".git/objects/pack"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Ok(BigRepo {
        proofs,
        tree_files,
        index_bytes,
        pack_bytes,
    })
}

/// Writes into the work tree what a record of a run started at `started` adds, for git to commit.
fn stage_like_record(
    repo: &Path,
    model: &ProofModel,
    log: &[u8],
    started: DateTime<Utc>,
) -> Result<()> {
    let run = run_id(started);
    let dir = repo.join(format!("evidence/builds/{TEMPLATE}"));
    let folder = dir.join(&run);
    let err = |p: &Path, e: std::io::Error| format!("cannot write {}: {e}", p.display());
    fs::create_dir_all(&folder).map_err(|e| err(&folder, e))?;
    let (json, readme) = model.render(TEMPLATE, started, log, 9000);
    for (name, data) in [
        ("README.md", readme.as_bytes()),
        ("proof.json", json.as_bytes()),
        ("packer.log", log),
    ] {
        let path = folder.join(name);
        fs::write(&path, data).map_err(|e| err(&path, e))?;
    }
    let latest = dir.join("latest");
    let previous = fs::read_link(&latest)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("cannot read {}: {e}", latest.display()))?;
    fs::remove_file(&latest).map_err(|e| err(&latest, e))?;
    std::os::unix::fs::symlink(&run, &latest).map_err(|e| err(&latest, e))?;
    let index = repo.join("evidence/README.md");
    let text = fs::read_to_string(&index).map_err(|e| err(&index, e))?;
    let mut text = text.replace(&previous, &run);
    if !text.contains(&run) {
        text.push_str(&format!("<!-- {run} -->\n"));
    }
    fs::write(&index, text).map_err(|e| err(&index, e))
}

/// Checks that a 100 MiB record stored the log byte for byte (and checked it out if non-bare).
fn check_big_record(bench: &Bench, repo: &Path, bare: bool, expected: &str) -> Result<()> {
    let listing =
        bench.out(
            bench
                .git_in(repo)
                .args(["ls-tree", "-r", "main", "--", "evidence/builds"]),
        )?;
    if !listing
        .lines()
        .any(|l| l.ends_with("/packer.log") && l.contains(expected))
    {
        return Err(format!(
            "the record in {} did not store blob {expected}:\n{listing}",
            repo.display()
        ));
    }
    if !bare {
        let copy = repo.join(format!("evidence/builds/{TEMPLATE}/latest/packer.log"));
        let len = fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
        if len != BIG_LOG_BYTES as u64 {
            return Err(format!(
                "{} has {len} bytes, expected {BIG_LOG_BYTES}",
                copy.display()
            ));
        }
        bench.expect_clean(repo)?;
    }
    Ok(())
}

/// Checks that `git hash-object -w` wrote the loose object; returns its size.
fn check_loose(bench: &Bench, repo: &Path, expected: &str) -> Result<u64> {
    let objects = bench
        .out(
            bench
                .git_in(repo)
                .args(["rev-parse", "--git-path", "objects"]),
        )?
        .trim()
        .to_owned();
    let path = repo.join(objects).join(&expected[..2]).join(&expected[2..]);
    fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|e| format!("no loose object {}: {e}", path.display()))
}

fn count_lines(path: &Path) -> Result<usize> {
    let data = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(data.iter().filter(|&&b| b == b'\n').count())
}

/// Writes a Packer-like log of exactly [`BIG_LOG_BYTES`] bytes: varied lines, not one repeated.
fn write_big_log(path: &Path) -> Result<()> {
    let start = DateTime::parse_from_rfc3339("2026-11-26T10:15:00Z")
        .map_err(|e| e.to_string())?
        .timestamp();
    let mut log_gen = LogGen::new(0x5eed, start, TEMPLATE);
    let mut data = Vec::with_capacity(BIG_LOG_BYTES + 4096);
    while data.len() < BIG_LOG_BYTES {
        log_gen.line(&mut data);
    }
    data.truncate(BIG_LOG_BYTES);
    if let Some(last) = data.last_mut() {
        *last = b'\n';
    }
    fs::write(path, &data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const PACKAGES: [&str; 24] = [
    "libc6",
    "libssl3",
    "openssh-server",
    "cloud-init",
    "qemu-guest-agent",
    "linux-image-generic",
    "python3.10",
    "libpython3.10-minimal",
    "systemd",
    "libsystemd0",
    "apt",
    "curl",
    "ca-certificates",
    "tzdata",
    "e2fsprogs",
    "grub-pc",
    "netplan.io",
    "snapd",
    "ubuntu-minimal",
    "vim-tiny",
    "sudo",
    "rsync",
    "libgnutls30",
    "openssl",
];
const WORDS: [&str; 16] = [
    "waiting",
    "for",
    "SSH",
    "to",
    "become",
    "available",
    "handshake",
    "connection",
    "refused",
    "timeout",
    "retrying",
    "session",
    "channel",
    "remote",
    "command",
    "exited",
];

/// Lines of a Packer 1.6 build of a Proxmox template with PACKER_LOG=1.
struct LogGen {
    rng: Rng,
    secs: i64,
    stamp: String,
    stamp_secs: i64,
    template: String,
}

impl LogGen {
    fn new(seed: u64, secs: i64, template: &str) -> Self {
        LogGen {
            rng: Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5),
            secs,
            stamp: String::new(),
            stamp_secs: i64::MIN,
            template: template.to_owned(),
        }
    }

    fn line(&mut self, out: &mut Vec<u8>) {
        if self.rng.below(8) == 0 {
            self.secs += 1 + self.rng.below(3) as i64;
        }
        if self.secs != self.stamp_secs {
            self.stamp_secs = self.secs;
            self.stamp = DateTime::from_timestamp(self.secs, 0)
                .unwrap_or_default()
                .format("%Y/%m/%d %H:%M:%S")
                .to_string();
        }
        let ts = &self.stamp;
        let tpl = &self.template;
        let r = &mut self.rng;
        let plugin = "packer-builder-proxmox-iso plugin:";
        let _ = match r.below(12) {
            0 => writeln!(
                out,
                "{ts} {plugin} {ts} [DEBUG] TCP connection to SSH ip/port failed: dial tcp 10.{}.{}.{}:22: connect: connection refused",
                r.below(256),
                r.below(256),
                r.below(256)
            ),
            1 => writeln!(
                out,
                "{ts} ui:     proxmox-iso.{tpl}: Get:{} http://archive.ubuntu.com/ubuntu jammy-updates/main amd64 {} amd64 {}.{}.{}-{}ubuntu{} [{} kB]",
                r.below(900) + 1,
                r.pick(&PACKAGES),
                r.below(10),
                r.below(40),
                r.below(100),
                r.below(9) + 1,
                r.below(5),
                r.below(20_000) + 3
            ),
            2 => writeln!(
                out,
                "{ts} ui:     proxmox-iso.{tpl}: Setting up {} ({}.{}.{}-{}) ...",
                r.pick(&PACKAGES),
                r.below(10),
                r.below(40),
                r.below(100),
                r.below(9) + 1
            ),
            3 => writeln!(
                out,
                "{ts} packer-provisioner-shell plugin: Uploading env vars to /tmp/packer-shell-env-{:08x}.sh",
                r.next() as u32
            ),
            4 => writeln!(
                out,
                "{ts} {plugin} {ts} [DEBUG] starting remote command: sudo -E sh -eux '/tmp/script_{}.sh'",
                r.below(10_000)
            ),
            5 => writeln!(
                out,
                "{ts} {plugin} {ts} [INFO] RPC endpoint: Communicator ended with: {}",
                r.below(3)
            ),
            6 => writeln!(
                out,
                "{ts} {plugin} {ts} [TRACE] vm {} task UPID:pve{}:{:08X}:{:08X}:{:08X}:qmstart:{}:root@pam: status running",
                9000 + r.below(100),
                r.below(4) + 1,
                r.next() as u32,
                r.next() as u32,
                r.next() as u32,
                9000 + r.below(100)
            ),
            7 => writeln!(
                out,
                "{ts} ui:     proxmox-iso.{tpl}: Progress: [ {:>2}%] [{}{}]",
                r.below(100),
                "#".repeat(r.below(40) as usize),
                ".".repeat(r.below(20) as usize)
            ),
            8 => writeln!(
                out,
                "{ts} ui:     proxmox-iso.{tpl}: Unpacking {} ({}.{}-{}) over ({}.{}-{}) ...",
                r.pick(&PACKAGES),
                r.below(10),
                r.below(100),
                r.below(9),
                r.below(10),
                r.below(100),
                r.below(9)
            ),
            9 => {
                let words: Vec<&str> = (0..3 + r.below(8)).map(|_| r.pick(&WORDS)).collect();
                writeln!(out, "{ts} {plugin} {ts} [DEBUG] {}", words.join(" "))
            }
            10 => writeln!(
                out,
                "{ts} {plugin} {ts} [DEBUG] Opening new ssh session (channel {}, window {} bytes)",
                r.below(64),
                r.below(2_097_152)
            ),
            _ => writeln!(
                out,
                "{ts} ui:     proxmox-iso.{tpl}: sha256:{:016x}{:016x}  /var/cache/apt/archives/{}_{}.deb",
                r.next(),
                r.next(),
                r.pick(&PACKAGES),
                r.below(1_000_000)
            ),
        };
    }
}

struct Goal {
    name: &'static str,
    candidate: Duration,
    baseline: Duration,
    target: f64,
}

impl Goal {
    fn new(name: &'static str, candidate: &[Duration], baseline: &[Duration], target: f64) -> Self {
        Goal {
            name,
            candidate: median(candidate),
            baseline: median(baseline),
            target,
        }
    }

    fn line(&self) -> String {
        let ratio = self.candidate.as_secs_f64() / self.baseline.as_secs_f64().max(1e-9);
        let verdict = if ratio <= self.target { "PASS" } else { "MISS" };
        format!(
            "{:<44} median {:>9} vs {:>9}   ratio {ratio:.2}×  (goal ≤ {}×)  {verdict}",
            self.name,
            ms(self.candidate),
            ms(self.baseline),
            self.target
        )
    }
}
