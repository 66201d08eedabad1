//! Performance goal of `git-evidence verify`, as a ratio against a baseline measured in the same
//! run (`make bench`).
//!
//! `git-evidence verify HEAD` (the tree check, which hashes every log) in a repository holding
//! 10,000 proofs with ≈1 GiB of logs costs at most 1.0× the lower bound of reading the same log
//! blobs out of git and hashing them: `git cat-file --batch < ids | sha256sum`.
//!
//! The repository is bare and made with `git fast-import` (two commits: the runs, then the index
//! `evidence/README.md` rendered by the library from that tree), so `verify HEAD` finds it clean.
//! Candidate and baseline are measured interleaved and compared by their medians. The report
//! exits 0 whether the goal is met or not; 1 when a command fails or a result looks wrong.
//! `GIT_EVIDENCE_BENCH_KEEP=1` keeps the scratch folder.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, Utc};
use git_evidence::names::EvidenceRoot;
use git_evidence::proof::Proof;
use sha2::{Digest, Sha256};

mod common;

use common::{Bench, RUNS_PER_TEMPLATE, Result, TEMPLATES, median, ms, say, series, size};

/// Size of each generated log, about: 10,000 of them make 1 GiB.
const LOG_BYTES: usize = (1 << 30) / 10_000;
/// Timed repetitions of each measurement, after one warm-up of each.
const REPS: usize = 3;
const SMALL_LOG: &str = "tests/fixtures/packer-1.6.6/ok.packer.log";

fn main() {
    common::main(run);
}

fn run() -> Result<()> {
    let bench = Bench::start()?;

    say("\n== building the 10,000-proof repository (≈1 GiB of logs)".into());
    let model = model_proof(&bench)?;
    let repo = bench.dir.path().join("proofs-10k.git");
    let built = Instant::now();
    let (proofs, log_total) = build_repo(&bench, &repo, &model)?;
    say(format!(
        "  {proofs} proofs, {} of logs; built in {:.1} s; pack {}",
        size(log_total),
        built.elapsed().as_secs_f64(),
        size(dir_bytes(&repo.join("objects/pack")))
    ));

    // The blob ids of every log, for the baseline.
    let listing = bench.out(bench.git_in(&repo).args(["ls-tree", "-r", "HEAD"]))?;
    let ids: Vec<&str> = listing
        .lines()
        .filter(|l| l.ends_with("/packer.log"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    if ids.len() != proofs {
        return Err(format!("{} logs in the tree, expected {proofs}", ids.len()));
    }
    let ids_file = bench.dir.path().join("log-ids");
    fs::write(&ids_file, ids.join("\n") + "\n").map_err(|e| format!("log-ids: {e}"))?;

    // verify must find the repository clean, or it measures something else.
    let out = bench.out(&mut bench.evidence(&repo))?;
    if !out.contains(&format!("{proofs} runs checked, 0 problems")) {
        return Err(format!("verify HEAD is not clean:\n{out}"));
    }

    say(format!(
        "\n== verify HEAD vs git cat-file --batch | sha256sum, {REPS} repetitions (+1 warm-up), interleaved"
    ));
    let mut verify = Vec::new();
    let mut bound = Vec::new();
    for i in 0..=REPS {
        let mut pipeline = bench.command("sh");
        pipeline
            .arg("-c")
            .arg("git -C \"$1\" cat-file --batch < \"$2\" | sha256sum")
            .arg("sh")
            .arg(&repo)
            .arg(&ids_file);
        let (v, b) = if i % 2 == 0 {
            let v = bench.timed(&mut bench.evidence(&repo))?;
            (v, bench.timed(&mut pipeline)?)
        } else {
            let b = bench.timed(&mut pipeline)?;
            (bench.timed(&mut bench.evidence(&repo))?, b)
        };
        if i > 0 {
            verify.push(v);
            bound.push(b);
        }
    }
    series("git-evidence verify HEAD", &verify);
    series("git cat-file --batch < ids | sha256sum", &bound);
    let (v, b) = (median(&verify), median(&bound));
    let ratio = v.as_secs_f64() / b.as_secs_f64().max(1e-9);
    let verdict = if ratio <= 1.0 { "PASS" } else { "MISS" };
    say("\n== result".into());
    say(format!(
        "{:<44} median {:>9} vs {:>9}   ratio {ratio:.2}×  (goal ≤ 1×)  {verdict}",
        "verify of 10,000 proofs, 1 GiB of logs",
        ms(v),
        ms(b)
    ));
    say(format!(
        "  throughput: verify {:.0} MB/s, bound {:.0} MB/s",
        log_total as f64 / v.as_secs_f64() / 1e6,
        log_total as f64 / b.as_secs_f64() / 1e6
    ));
    Ok(())
}

/// A proof as a real `record` writes it, to copy for every generated run.
fn model_proof(bench: &Bench) -> Result<Proof> {
    let repo = bench.dir.path().join("model");
    bench.run(
        bench
            .command("git")
            .args(["init", "-q", "-b", "main"])
            .arg(&repo),
    )?;
    fs::write(repo.join("build.pkr.hcl"), "# packer template\n").map_err(|e| e.to_string())?;
    bench.run(bench.git_in(&repo).args(["add", "build.pkr.hcl"]))?;
    bench.run(
        bench
            .git_in(&repo)
            .args(["commit", "-q", "-m", "Packer templates"]),
    )?;
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join(SMALL_LOG);
    bench.run(
        bench
            .command(&bench.bin)
            .arg("-C")
            .arg(&repo)
            .args(["record", "--template", "model", "--log"])
            .arg(&log)
            .args([
                "--exit-code",
                "0",
                "--started-at",
                "2026-01-01T00:00:00Z",
                "--finished-at",
                "2026-01-01T00:12:13Z",
                "--fact",
                "node=pve1",
                "-q",
            ]),
    )?;
    let json = bench.out(bench.git_in(&repo).args([
        "cat-file",
        "blob",
        "main:evidence/builds/model/2026-01-01T000000Z/proof.json",
    ]))?;
    serde_json::from_str(&json).map_err(|e| format!("model proof.json: {e}"))
}

/// A Packer-like log of about [`LOG_BYTES`], different for every run: a few line templates
/// with the run, a counter and a timestamp mixed in.
fn packer_log(out: &mut Vec<u8>, template: &str, run: &str, seed: u64) {
    out.clear();
    let mut n = seed;
    let mut i = 0u64;
    while out.len() < LOG_BYTES {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (s, ms) = (i / 40 % 60, (n >> 33) % 1000);
        let _ = match (n >> 60) % 6 {
            0 => writeln!(
                out,
                "2026/01/01 00:{:02}:{s:02} packer-builder-proxmox-iso plugin: [DEBUG] TCP connection to SSH ip/port failed: dial tcp 10.0.{}.{}:22: i/o timeout ({run})",
                i / 2400 % 60,
                n >> 40 & 255,
                n >> 48 & 255
            ),
            1 => writeln!(
                out,
                "    proxmox-iso.{template}: Get:{i} http://archive.ubuntu.com/ubuntu jammy-updates/main amd64 pkg-{:x} [{} kB]",
                n >> 20,
                n >> 50
            ),
            2 => writeln!(
                out,
                "2026/01/01 00:{:02}:{s:02} ui: ==> proxmox-iso.{template}: Waiting for SSH to become available... {ms}ms",
                i / 2400 % 60
            ),
            3 => writeln!(
                out,
                "2026/01/01 00:{:02}:{s:02} packer-provisioner-shell plugin: [INFO] {i} bytes written for 'stdout' run {run} seq {n:016x}",
                i / 2400 % 60
            ),
            4 => writeln!(
                out,
                "    proxmox-iso.{template}: Setting up libssl3:amd64 (3.0.2-0ubuntu1.{}) ...",
                n >> 56
            ),
            _ => writeln!(
                out,
                "2026/01/01 00:{:02}:{s:02} [INFO] (telemetry) Finalizing. {template} {run} {i}",
                i / 2400 % 60
            ),
        };
        i += 1;
    }
}

/// The repository: one fast-import stream, two commits (the runs; then the index rendered from
/// the first commit's tree). Returns the number of proofs and the bytes of logs.
fn build_repo(bench: &Bench, repo: &Path, model: &Proof) -> Result<(usize, u64)> {
    bench.run(
        bench
            .command("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(repo),
    )?;
    let first = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .map_err(|e| e.to_string())?
        .timestamp();
    let mut proofs = 0;
    let mut total = 0u64;
    let mut log = Vec::with_capacity(LOG_BYTES + 512);
    fast_import(bench, repo, |w| {
        let message = "Evidence of 10,000 builds\n";
        write!(
            w,
            "commit refs/heads/main\n\
             author Build Host <builder@example.com> 1767225600 +0000\n\
             committer Build Host <builder@example.com> 1767225600 +0000\n\
             data {}\n{message}",
            message.len()
        )?;
        inline(w, "100644", "build.pkr.hcl", b"# packer template\n")?;
        inline(
            w,
            "100644",
            "evidence/.gitattributes",
            git_evidence::render::GITATTRIBUTES.as_bytes(),
        )?;
        for (t, template) in TEMPLATES.iter().enumerate() {
            let mut last = String::new();
            for r in 0..RUNS_PER_TEMPLATE {
                let secs = first + (r as i64) * 25_200 + (t as i64) * 97;
                let started: DateTime<Utc> = DateTime::from_timestamp(secs, 0).unwrap_or_default();
                let run = started.format("%Y-%m-%dT%H%M%SZ").to_string();
                packer_log(&mut log, template, &run, (t * RUNS_PER_TEMPLATE + r) as u64);
                let mut proof = model.clone();
                proof.template = Some((*template).to_owned());
                proof.run_id = run.clone();
                proof.started_at = git_evidence::proof::format_time(started);
                proof.finished_at = Some(git_evidence::proof::format_time(
                    started + chrono::Duration::seconds(733),
                ));
                proof.log_sha256 = Sha256::digest(&log)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                proof.log_bytes = log.len() as u64;
                proof.vmid = Some(9000 + t as u64);
                let folder = format!("evidence/builds/{template}/{run}");
                let readme = git_evidence::render::run_readme(&proof);
                inline(
                    w,
                    "100644",
                    &format!("{folder}/README.md"),
                    readme.as_bytes(),
                )?;
                inline(
                    w,
                    "100644",
                    &format!("{folder}/proof.json"),
                    proof.to_json().as_bytes(),
                )?;
                inline(w, "100644", &format!("{folder}/packer.log"), &log)?;
                proofs += 1;
                total += log.len() as u64;
                last = run;
            }
            inline(
                w,
                "120000",
                &format!("evidence/builds/{template}/latest"),
                last.as_bytes(),
            )?;
        }
        Ok(())
    })?;
    // The index, as record would write it for this tree.
    let index = {
        let git = git2::Repository::open_bare(repo).map_err(|e| e.to_string())?;
        let tree = git
            .revparse_single("main:evidence")
            .and_then(|o| o.peel_to_tree())
            .map_err(|e| e.to_string())?;
        let root: EvidenceRoot = "evidence".parse().map_err(|e| format!("{e}"))?;
        git_evidence::index_page::render(&git, &root, Some(&tree)).map_err(|e| format!("{e}"))?
    };
    fast_import(bench, repo, |w| {
        let message = "Evidence index\n";
        write!(
            w,
            "commit refs/heads/main\n\
             author Build Host <builder@example.com> 1767225601 +0000\n\
             committer Build Host <builder@example.com> 1767225601 +0000\n\
             data {}\n{message}from refs/heads/main^0\n",
            message.len()
        )?;
        inline(w, "100644", "evidence/README.md", index.as_bytes())
    })?;
    Ok((proofs, total))
}

type Writer = BufWriter<std::process::ChildStdin>;

fn inline(w: &mut Writer, mode: &str, path: &str, data: &[u8]) -> std::io::Result<()> {
    write!(w, "M {mode} inline {path}\ndata {}\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\n")
}

/// Runs `git fast-import` on what `write` produces.
fn fast_import(
    bench: &Bench,
    repo: &Path,
    write: impl FnOnce(&mut Writer) -> std::io::Result<()>,
) -> Result<()> {
    let mut child = bench
        .git_in(repo)
        // Fast to write; the logs still end up deltified and compressed in one pack.
        .args(["-c", "core.compression=1", "fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start git fast-import: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut w = BufWriter::with_capacity(1 << 20, stdin);
    write(&mut w)
        .and_then(|()| w.write_all(b"\ndone\n"))
        .map_err(|e| format!("writing to git fast-import: {e}"))?;
    drop(
        w.into_inner()
            .map_err(|e| format!("writing to git fast-import: {}", e.error()))?,
    );
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
    Ok(())
}

impl Bench {
    /// `git-evidence -C repo verify HEAD`.
    fn evidence(&self, repo: &Path) -> Command {
        let mut cmd = self.command(&self.bin);
        cmd.arg("-C").arg(repo).args(["verify", "HEAD"]);
        cmd
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
