//! Redaction throughput (`make bench`): a 100 MiB Packer-like log with 50 known secrets and every
//! built-in pattern on, redacted by the streaming redactor, against plain copying of the same log
//! with `cat` — both measured in the same run, interleaved, medians compared.
//!
//! Goal: capture with redaction at 100 MB/s or more on this machine class, far above what
//! Packer can print.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use git_evidence::redact::{Config, Redactor, Secret};

const LOG_BYTES: usize = 100 * 1024 * 1024;
const SECRETS: usize = 50;
const REPS: usize = 5;

/// xorshift: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn secret(i: usize, rng: &mut Rng) -> String {
    let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let body: String = (0..24)
        .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize] as char)
        .collect();
    format!("s{i}-{body}")
}

/// Lines shaped like a Packer debug log, one in 200 carrying a secret or a pattern.
fn write_log(path: &Path, secrets: &[String], rng: &mut Rng) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let templates = [
        "packer-builder-proxmox-iso plugin: [DEBUG] Waiting for state to become: running",
        "packer-provisioner-shell plugin: [INFO] RPC client: Communicator ended with: 0",
        "ui:     proxmox-iso.ubuntu: Setting up linux-image-5.15.0-91-generic (5.15.0-91.101) ...",
        "packer-builder-proxmox-iso plugin: [INFO] 200 OK GET /api2/json/nodes/pve1/qemu/9000/status/current",
        "ui:     proxmox-iso.ubuntu: Unpacking libssl3:amd64 (3.0.2-0ubuntu1.12) over (3.0.2-0ubuntu1.10) ...",
    ];
    let mut written = 0;
    let mut n = 0u64;
    while written < LOG_BYTES {
        let line = match rng.next() % 200 {
            0 => format!(
                "2026/11/26 10:{:02}:{:02} ui:     token={}\n",
                n % 60,
                n % 59,
                secrets[(rng.next() % secrets.len() as u64) as usize]
            ),
            1 => "2026/11/26 10:15:00 Authorization: PVEAPIToken=root@pam!packer=0b7a2c1d-1111-2222-3333-444455556666\n".to_owned(),
            _ => format!(
                "2026/11/26 10:{:02}:{:02} {}\n",
                n % 60,
                n % 59,
                templates[(rng.next() % templates.len() as u64) as usize]
            ),
        };
        out.write_all(line.as_bytes()).unwrap();
        written += line.len();
        n += 1;
    }
    out.flush().unwrap();
}

fn redact_file(config: &Config, from: &Path, to: &Path) -> Duration {
    let start = Instant::now();
    let mut redactor = Redactor::new(config).unwrap();
    let mut input = File::open(from).unwrap();
    let mut output = BufWriter::new(File::create(to).unwrap());
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() * 2);
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.clear();
        redactor.push(&buf[..n], &mut out);
        output.write_all(&out).unwrap();
    }
    out.clear();
    redactor.finish(&mut out);
    output.write_all(&out).unwrap();
    output.flush().unwrap();
    start.elapsed()
}

fn cat(from: &Path, to: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' > '{}'", from.display(), to.display()))
        .status()
        .unwrap();
    assert!(status.success());
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("packer.log");
    let out = dir.path().join("out.log");
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let secrets: Vec<String> = (0..SECRETS).map(|i| secret(i, &mut rng)).collect();
    write_log(&log, &secrets, &mut rng);
    let config = Config {
        secrets: secrets
            .iter()
            .map(|s| Secret {
                value: s.as_bytes().to_vec(),
                rule: "env".into(),
            })
            .collect(),
        extra: vec!["corp-[0-9]{6}".into()],
    };
    let mb = LOG_BYTES as f64 / 1e6;
    println!(
        "== redaction: {mb:.0} MB Packer-like log, {SECRETS} secrets (+ derived forms), all patterns"
    );
    let (mut red, mut copy) = (Vec::new(), Vec::new());
    for i in 0..REPS {
        // Alternate the order so neither side always runs with a warmer cache.
        if i % 2 == 0 {
            red.push(redact_file(&config, &log, &out));
            copy.push(cat(&log, &out));
        } else {
            copy.push(cat(&log, &out));
            red.push(redact_file(&config, &log, &out));
        }
    }
    let (r, c) = (median(red), median(copy));
    let throughput = mb / r.as_secs_f64();
    println!(
        "redact vs cat (100 MiB)                       median {:>7.3} s vs {:>7.3} s   ratio {:.2}×   redaction {:.0} MB/s  (goal ≥ 100 MB/s)  {}",
        r.as_secs_f64(),
        c.as_secs_f64(),
        r.as_secs_f64() / c.as_secs_f64(),
        throughput,
        if throughput >= 100.0 { "PASS" } else { "MISS" }
    );
}
