//! `git-evidence run` reading the VM a build made back from the Proxmox VE API: against the
//! simulator of `pve_sim`, after a real Packer 1.6.6 `proxmox-iso` build or a plain `sh -c`
//! that writes the VMID and node into `$EVIDENCE_FACTS`.
//!
//! Every run is hermetic (see `common`; only the `PROXMOX_*` variables of each test are added)
//! and bounded in time: a wrapper still running after [`RUN_TIMEOUT`] gets SIGTERM (which it
//! forwards to Packer), then SIGKILL, and the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};

use crate::common::*;
use crate::pve_packer::Template;
use crate::pve_sim::{Auth, PveSim, PveSimOptions, RecordedRequest};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Every ticket the simulator issues to root@pam, and every CSRF token it pairs with one.
fn credential_patterns() -> [Regex; 2] {
    [
        Regex::new(r"PVE:root@pam:[0-9A-F]{8}::[0-9a-f]{40}").unwrap(),
        Regex::new(r"\b[0-9A-F]{8}:[0-9a-f]{27}\b").unwrap(),
    ]
}

/// What one `git-evidence run` left behind: its output, and the recorded run's files.
struct Recorded {
    out: Output,
    stdout: String,
    stderr: String,
    /// `rev:folder` of the run.
    rev_folder: String,
    proof: Value,
    readme: String,
    log: String,
    message: String,
}

impl Recorded {
    fn context(&self) -> String {
        format!(
            "status {}\n--- stdout\n{}\n--- stderr\n{}\n--- log (tail)\n{}",
            self.out.status,
            self.stdout,
            self.stderr,
            tail(&self.log, 30)
        )
    }

    /// Every text a credential must never reach.
    fn texts(&self) -> [(&'static str, &str); 5] {
        [
            ("stdout", &self.stdout),
            ("stderr", &self.stderr),
            ("packer.log", &self.log),
            ("README.md", &self.readme),
            ("commit message", &self.message),
        ]
    }

    fn assert_no_secrets(&self, secrets: &[&str]) {
        let proof = self.proof.to_string();
        let texts = self.texts();
        let all = texts
            .iter()
            .copied()
            .chain([("proof.json", proof.as_str())]);
        for (name, text) in all {
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "{secret:?} leaked into {name} ({})\n{}",
                    self.rev_folder,
                    self.context()
                );
            }
            for pattern in credential_patterns() {
                assert!(
                    !pattern.is_match(text),
                    "a ticket or CSRF token ({pattern}) leaked into {name}\n{}",
                    self.context()
                );
            }
        }
    }

    fn fact(&self, key: &str) -> &Value {
        &self.proof["facts"][key]
    }

    fn source(&self, key: &str) -> &Value {
        &self.proof["fact_sources"][key]
    }

    /// The facts that came from the Proxmox API.
    fn api_facts(&self) -> Vec<String> {
        let sources = self.proof["fact_sources"].as_object().unwrap();
        sources
            .iter()
            .filter(|(_, s)| *s == "proxmox-api")
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A repository for builds, Packer's scratch files ignored.
fn build_repo(env: &Env) -> PathBuf {
    let repo = env.repo("infra");
    std::fs::write(
        repo.join(".gitignore"),
        "packer_cache/\nmanifest.json\npacker.log\n",
    )
    .unwrap();
    env.git(&repo, ["add", ".gitignore"]);
    env.git(&repo, ["commit", "-q", "-m", "ignore Packer's files"]);
    repo
}

/// Runs `git-evidence run --template T flags… -- command…` in `repo` with `vars` added to the
/// hermetic environment, bounded by [`RUN_TIMEOUT`]; returns what it recorded.
fn run(
    env: &Env,
    repo: &Path,
    flags: &[&str],
    command: &[&str],
    vars: &[(&str, &str)],
) -> Recorded {
    let tmp = env.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = env.evidence_cmd(repo);
    cmd.args(["run", "--template", "ubuntu-22.04", "--grace", "5s"])
        .args(flags)
        .arg("--")
        .args(command)
        .env("TMPDIR", &tmp)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_NO_COLOR", "1")
        .env("PACKER_CACHE_DIR", env.path().join("packer_cache"))
        .env("PACKER_CONFIG_DIR", env.path().join("home"));
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let out = bounded(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the run must succeed and be recorded\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // Every run here succeeds, so `latest` names it.
    let dir = "evidence/builds/ubuntu-22.04";
    let latest = env.git(repo, ["cat-file", "blob", &format!("main:{dir}/latest")]);
    let folder = format!("{dir}/{}", latest.trim());
    let file = |name: &str| env.git(repo, ["cat-file", "blob", &format!("main:{folder}/{name}")]);
    Recorded {
        proof: json(&file("proof.json")),
        readme: file("README.md"),
        log: file("packer.log"),
        message: env.git(repo, ["log", "-1", "--format=%B", "main"]),
        rev_folder: format!("main:{folder}"),
        out,
        stdout,
        stderr,
    }
}

/// Runs `cmd`; a wrapper still running after [`RUN_TIMEOUT`] is sent SIGTERM (it forwards it
/// to its command's process group, then kills that group after `--grace`), then SIGKILL.
fn bounded(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(output) => output.expect("wait for git-evidence"),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let output = rx.recv_timeout(Duration::from_secs(30)).ok();
            if output.is_none() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let output = output.or_else(|| rx.recv().ok()).and_then(Result::ok);
            let text = |o: &Option<Output>, err: bool| {
                o.as_ref()
                    .map(|o| String::from_utf8_lossy(if err { &o.stderr } else { &o.stdout }))
                    .unwrap_or_default()
                    .into_owned()
            };
            panic!(
                "{cmd:?} still running after {RUN_TIMEOUT:?}; stopped\n--- stdout\n{}\n--- stderr\n{}",
                text(&output, false),
                text(&output, true)
            );
        }
    }
}

/// `sh -c` writing these facts into `$EVIDENCE_FACTS`, as a provisioner would.
fn facts_command(facts: &[&str]) -> Vec<String> {
    let script: Vec<String> = facts
        .iter()
        .map(|f| format!("echo {f} >> \"$EVIDENCE_FACTS\""))
        .collect();
    vec!["sh".into(), "-c".into(), script.join("; ")]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn lines(requests: &[RecordedRequest]) -> String {
    requests
        .iter()
        .map(|r| {
            format!(
                "{} -> {} ({:?}, csrf {})",
                r.line(),
                r.status,
                r.auth,
                r.csrf_ok
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A simulator with template 9000 already there (as `seed_template` makes it).
fn sim_with_template_9000() -> PveSim {
    PveSim::start(PveSimOptions {
        existing_templates: vec![(9000, "ubuntu-22.04-base".into())],
        ..PveSimOptions::default()
    })
}

/// A loopback port nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_proxmox_iso_build_records_the_template_as_the_api_reports_it() {
    let sim = PveSim::start(PveSimOptions::default());
    let options = sim.options();
    let env = Env::new();
    let repo = build_repo(&env);
    // Packer 1.6.6 and git-evidence take the same variables: the template holds no credential.
    let template = Template {
        username: String::new(),
        password: String::new(),
        ..Template::for_sim(&sim)
    };
    std::fs::write(repo.join("build.pkr.hcl"), template.hcl(&sim)).unwrap();
    env.git(&repo, ["add", "build.pkr.hcl"]);
    env.git(&repo, ["commit", "-q", "-m", "proxmox-iso template"]);
    let url = sim.url();
    let run = run(
        &env,
        &repo,
        &["--manifest", "manifest.json"],
        &["packer", "build", "-color=false", "build.pkr.hcl"],
        &[
            ("PROXMOX_URL", &url),
            ("PROXMOX_USERNAME", &options.username),
            ("PROXMOX_PASSWORD", &options.password),
            ("PROXMOX_NODE", "pve1"),
        ],
    );
    assert!(
        run.log.contains("A template was created: 9000"),
        "{}",
        run.context()
    );
    assert!(!run.stderr.contains("warning"), "{}", run.context());

    let proof = &run.proof;
    assert_eq!(proof["vmid"], 9000, "{}", run.context());
    assert_eq!(run.source("vmid"), "manifest");
    assert_eq!(proof["node"], "pve1");
    assert_eq!(run.source("node"), "env");
    assert_eq!(run.fact("name"), "ubuntu-22.04-base");
    assert_eq!(run.fact("cores"), 2);
    assert_eq!(run.fact("sockets"), 1);
    assert_eq!(
        run.fact("memory"),
        2048,
        "a number, though Proxmox sent a string"
    );
    assert_eq!(run.fact("cpu"), "host");
    assert_eq!(run.fact("ostype"), "l26");
    assert_eq!(run.fact("template"), true);
    assert_eq!(
        run.fact("disks"),
        &json!([{"slot": "scsi0", "volume": "local-lvm:vm-9000-disk-0",
                 "storage": "local-lvm", "size": "20G"}])
    );
    assert_eq!(
        run.fact("cdroms"),
        &json!([
            {"slot": "ide2", "volume": "local:iso/ubuntu-22.04.iso"},
            {"slot": "ide3", "volume": "local-lvm:vm-9000-cloudinit"},
        ])
    );
    assert_eq!(
        run.fact("networks"),
        &json!([{"slot": "net0", "model": "virtio", "mac": "BC:24:11:AA:BB:CC",
                 "bridge": "vmbr0", "vlan": 20}])
    );
    let mut api = run.api_facts();
    api.sort();
    assert_eq!(
        strs(&api),
        [
            "cdroms", "cores", "cpu", "disks", "memory", "name", "networks", "ostype", "sockets",
            "template"
        ]
    );
    assert!(
        run.readme.contains("| cores | 2 | proxmox-api |"),
        "{}",
        run.readme
    );

    // Packer logged in and built; then git-evidence logged in and read the config, once.
    let requests = sim.requests();
    let logins: Vec<usize> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.line() == "POST /access/ticket")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(logins.len(), 2, "{}", lines(&requests));
    let ours = &requests[logins[1]..];
    assert_eq!(ours.len(), 2, "{}", lines(&requests));
    assert_eq!(ours[0].status, 200);
    assert_eq!(ours[0].params["username"], "root@pam");
    let get = &ours[1];
    assert_eq!(get.line(), "GET /nodes/pve1/qemu/9000/config");
    assert_eq!(get.status, 200);
    assert_eq!(get.auth, Auth::Ticket("root@pam".into()));
    assert!(get.csrf_ok, "the CSRF token goes along: {get:?}");
    let packer_done = requests
        .iter()
        .rposition(|r| r.line() == "POST /nodes/pve1/qemu/9000/config")
        .expect("Packer's last step");
    assert!(packer_done < logins[1], "{}", lines(&requests));

    run.assert_no_secrets(&[&options.password]);
    assert_eq!(env.git(&repo, ["status", "--porcelain"]), "");
}

#[test]
fn an_api_token_reads_the_config_and_the_node_can_be_looked_up() {
    let sim = sim_with_template_9000();
    let token = sim.options().api_token.unwrap();
    let full = format!("{}={}", token.id, token.secret);
    let env = Env::new();
    let repo = build_repo(&env);
    let url = sim.url();

    let run1 = run(
        &env,
        &repo,
        &[],
        &strs(&facts_command(&["vmid=9000", "node=pve1"])),
        &[("PROXMOX_URL", &url), ("PROXMOX_TOKEN", &full)],
    );
    assert!(!run1.stderr.contains("warning"), "{}", run1.context());
    assert_eq!(run1.proof["vmid"], 9000);
    assert_eq!(run1.source("vmid"), "facts-file");
    assert_eq!(run1.source("node"), "facts-file");
    assert_eq!(run1.fact("name"), "ubuntu-22.04-base");
    assert_eq!(run1.fact("memory"), 2048);
    assert_eq!(run1.fact("template"), true);
    assert_eq!(
        run1.fact("disks"),
        &json!([{"slot": "scsi0", "volume": "local-lvm:base-9000-disk-0",
                 "storage": "local-lvm", "size": "20G"}])
    );
    assert_eq!(run1.fact("networks")[0]["bridge"], "vmbr0");
    assert_eq!(run1.fact("networks")[0]["vlan"], Value::Null);
    assert_eq!(run1.source("networks"), "proxmox-api");
    let requests = sim.requests();
    assert_eq!(requests.len(), 1, "{}", lines(&requests));
    assert_eq!(requests[0].line(), "GET /nodes/pve1/qemu/9000/config");
    assert_eq!(requests[0].auth, Auth::Token(token.id.clone()));
    assert_eq!(requests[0].status, 200);
    run1.assert_no_secrets(&[&token.secret, &full]);

    // Packer's proxmox plugin style: the token id as user name, the secret alone; no node is
    // known, so the cluster says where VM 9000 is. The URL lacks /api2/json.
    let bare_url = url.trim_end_matches("/api2/json").to_owned();
    let run2 = run(
        &env,
        &repo,
        &[],
        &strs(&facts_command(&["vmid=9000"])),
        &[
            ("PROXMOX_URL", &bare_url),
            ("PROXMOX_USERNAME", &token.id),
            ("PROXMOX_TOKEN", &token.secret),
        ],
    );
    assert!(!run2.stderr.contains("warning"), "{}", run2.context());
    assert_eq!(run2.proof["node"], "pve1");
    assert_eq!(run2.source("node"), "proxmox-api");
    assert_eq!(run2.fact("cores"), 2);
    let requests = sim.requests();
    let ours: Vec<String> = requests[1..].iter().map(RecordedRequest::line).collect();
    assert_eq!(
        ours,
        ["GET /cluster/resources", "GET /nodes/pve1/qemu/9000/config"],
        "{}",
        lines(&requests)
    );
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.auth == Auth::Token(token.id.clone()) && r.status == 200),
        "{}",
        lines(&requests)
    );
    run2.assert_no_secrets(&[&token.secret]);
}

/// The API's problems are warnings on the console and in the stored log; the run is recorded
/// without API facts.
fn assert_warned(run: &Recorded, expected: &str) {
    let console = format!("warning: Proxmox API: {expected}");
    assert!(
        run.stderr.contains(&console),
        "{console:?}\n{}",
        run.context()
    );
    let logged = format!("\n==> git-evidence: warning: Proxmox API: {expected}");
    assert!(run.log.contains(&logged), "{logged:?}\n{}", run.context());
    assert!(run.api_facts().is_empty(), "{}", run.proof);
    assert!(run.fact("cores").is_null(), "{}", run.proof);
    assert_eq!(run.proof["status"], "success");
}

#[test]
fn api_failures_are_warnings_and_the_run_is_recorded_without_api_facts() {
    let sim = sim_with_template_9000();
    let options = sim.options();
    let env = Env::new();
    let repo = build_repo(&env);
    let url = sim.url();
    let facts = facts_command(&["vmid=9000", "node=pve1"]);
    let facts = strs(&facts);
    let wrong_password = "not-the-sim-password-31337";

    let run1 = run(
        &env,
        &repo,
        &[],
        &facts,
        &[
            ("PROXMOX_URL", &url),
            ("PROXMOX_USERNAME", &options.username),
            ("PROXMOX_PASSWORD", wrong_password),
        ],
    );
    assert_warned(
        &run1,
        &format!("cannot log in to {url} as root@pam (POST {url}/access/ticket): HTTP 401"),
    );
    assert_eq!(run1.proof["vmid"], 9000);
    run1.assert_no_secrets(&[wrong_password, &options.password]);
    let requests = sim.requests();
    assert_eq!(requests.len(), 1, "{}", lines(&requests));
    assert_eq!(requests[0].status, 401);

    let port = closed_port();
    let closed = format!("http://127.0.0.1:{port}/api2/json");
    let token = sim.options().api_token.unwrap();
    let full = format!("{}={}", token.id, token.secret);
    let run2 = run(
        &env,
        &repo,
        &[],
        &facts,
        &[("PROXMOX_URL", &closed), ("PROXMOX_TOKEN", &full)],
    );
    assert_warned(
        &run2,
        &format!(
            "cannot read the configuration of VM 9000 (GET {closed}/nodes/pve1/qemu/9000/config): "
        ),
    );
    assert!(run2.stderr.contains("refused"), "{}", run2.context());
    run2.assert_no_secrets(&[&token.secret]);

    // A VM the cluster does not have: Proxmox answers 500.
    let gone = facts_command(&["vmid=9555", "node=pve1"]);
    let run3 = run(
        &env,
        &repo,
        &[],
        &strs(&gone),
        &[("PROXMOX_URL", &url), ("PROXMOX_TOKEN", &full)],
    );
    assert_warned(
        &run3,
        &format!(
            "cannot read the configuration of VM 9555 (GET {url}/nodes/pve1/qemu/9555/config): \
             HTTP 500 Internal Server Error"
        ),
    );

    // Half-configured credentials: nothing is sent.
    let before = sim.requests().len();
    let run4 = run(
        &env,
        &repo,
        &[],
        &facts,
        &[
            ("PROXMOX_URL", &url),
            ("PROXMOX_USERNAME", &options.username),
        ],
    );
    assert_warned(&run4, "PROXMOX_USERNAME is set but PROXMOX_PASSWORD is not");
    assert_eq!(sim.requests().len(), before);

    // No VMID: nothing to read.
    let run5 = run(
        &env,
        &repo,
        &[],
        &strs(&facts_command(&["node=pve1"])),
        &[("PROXMOX_URL", &url), ("PROXMOX_TOKEN", &full)],
    );
    assert_warned(&run5, "no VMID is known");
    assert_eq!(sim.requests().len(), before);
}

#[test]
fn without_proxmox_url_the_api_is_not_asked_and_nothing_is_said() {
    let sim = sim_with_template_9000();
    let env = Env::new();
    let repo = build_repo(&env);
    let token = sim.options().api_token.unwrap();
    let full = format!("{}={}", token.id, token.secret);
    let run = run(
        &env,
        &repo,
        &[],
        &strs(&facts_command(&["vmid=9000", "node=pve1"])),
        &[("PROXMOX_TOKEN", &full)],
    );
    assert!(!run.stderr.contains("Proxmox API"), "{}", run.context());
    assert!(!run.log.contains("Proxmox API"), "{}", run.context());
    assert!(run.api_facts().is_empty());
    assert!(sim.requests().is_empty());
}

#[test]
fn a_failed_build_does_not_ask_the_api() {
    let sim = sim_with_template_9000();
    let env = Env::new();
    let repo = build_repo(&env);
    let token = sim.options().api_token.unwrap();
    let full = format!("{}={}", token.id, token.secret);
    let mut cmd = env.evidence_cmd(&repo);
    cmd.args(["run", "--template", "t", "--", "sh", "-c"])
        .arg("echo vmid=9000 >> \"$EVIDENCE_FACTS\"; echo node=pve1 >> \"$EVIDENCE_FACTS\"; exit 1")
        .env("PROXMOX_URL", sim.url())
        .env("PROXMOX_TOKEN", &full);
    let out = bounded(cmd);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Proxmox API"), "{}", stderr(&out));
    assert!(sim.requests().is_empty(), "{}", lines(&sim.requests()));
}

#[test]
fn https_to_a_plain_http_server_is_a_tls_warning() {
    let sim = sim_with_template_9000();
    let env = Env::new();
    let repo = build_repo(&env);
    let token = sim.options().api_token.unwrap();
    let full = format!("{}={}", token.id, token.secret);
    let url = format!("https://{}/api2/json", sim.addr());
    let run = run(
        &env,
        &repo,
        &[],
        &strs(&facts_command(&["vmid=9000", "node=pve1"])),
        &[("PROXMOX_URL", &url), ("PROXMOX_TOKEN", &full)],
    );
    assert_warned(
        &run,
        &format!(
            "cannot read the configuration of VM 9000 (GET {url}/nodes/pve1/qemu/9000/config): TLS: "
        ),
    );
    // The token never reached the plain-text server: the handshake failed first.
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.auth != Auth::Token(token.id.clone())),
        "{}",
        lines(&sim.requests())
    );
    run.assert_no_secrets(&[&token.secret]);
}

#[test]
fn the_credential_patterns_match_what_the_simulator_issues() {
    // Guards the leak checks above: they look for these shapes.
    let sim = PveSim::start(PveSimOptions::default());
    let options = sim.options();
    let answer = sim.call(
        "POST",
        "/access/ticket",
        &[],
        &[
            ("username", &options.username),
            ("password", &options.password),
        ],
    );
    let data = answer.json()["data"].clone();
    let [ticket, csrf] = credential_patterns();
    assert!(ticket.is_match(data["ticket"].as_str().unwrap()), "{data}");
    assert!(
        csrf.is_match(data["CSRFPreventionToken"].as_str().unwrap()),
        "{data}"
    );
}

// --- TLS ----------------------------------------------------------------------------------------

/// A TLS front for the simulator, as Proxmox serves its API on `https://…:8006`: a certificate
/// for `127.0.0.1` signed by a CA made for the test (as `pve-root-ca.pem` signs `pve-ssl.pem`).
/// Each connection carries one request, passed on to the simulator as is, and its answer back.
/// Serves at most [`TlsFront::MAX_CONNECTIONS`]; dropping it stops it.
struct TlsFront {
    addr: std::net::SocketAddr,
    /// The CA certificate, PEM.
    ca_pem: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    const MAX_CONNECTIONS: usize = 16;

    fn start(sim: &PveSim) -> TlsFront {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "git-evidence test Proxmox CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "pve1");
        let cert = params.signed_by(&key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = sim.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming().take(Self::MAX_CONNECTIONS) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // A client that refuses the certificate ends the handshake: an error
                        // here, and the next connection.
                        let _ = Self::serve(stream, Arc::clone(&config), backend);
                    }
                }
            })
        };
        TlsFront {
            addr,
            ca_pem: ca_cert.pem(),
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://{}/api2/json", self.addr)
    }

    /// One request: read it whole (head, then `Content-Length` bytes), pass it on, answer.
    fn serve(
        stream: std::net::TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
        backend: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let timeout = Some(Duration::from_secs(10));
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        let mut request = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            let n = tls.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            request.extend_from_slice(&buf[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if request.len() > 64 * 1024 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while request.len() < head_end + length {
            let n = tls.read(&mut buf)?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let mut upstream = std::net::TcpStream::connect(backend)?;
        upstream.set_read_timeout(timeout)?;
        upstream.write_all(&request)?;
        let mut answer = Vec::new();
        upstream.read_to_end(&mut answer)?;
        tls.write_all(&answer)?;
        tls.conn.send_close_notify();
        tls.flush()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn tls_is_verified_unless_a_ca_file_or_insecure_says_otherwise() {
    let sim = sim_with_template_9000();
    let front = TlsFront::start(&sim);
    let env = Env::new();
    let repo = build_repo(&env);
    let token = sim.options().api_token.unwrap();
    let full = format!("{}={}", token.id, token.secret);
    let url = front.url();
    let facts = facts_command(&["vmid=9000", "node=pve1"]);
    let facts = strs(&facts);
    let auth = [
        ("PROXMOX_URL", url.as_str()),
        ("PROXMOX_TOKEN", full.as_str()),
    ];

    // Mozilla's roots do not know the test CA: the handshake fails, the token is never sent.
    let refused = run(&env, &repo, &[], &facts, &auth);
    assert_warned(
        &refused,
        &format!(
            "cannot read the configuration of VM 9000 (GET {url}/nodes/pve1/qemu/9000/config): TLS: "
        ),
    );
    assert!(
        refused.stderr.contains("UnknownIssuer") && refused.stderr.contains("PROXMOX_CA_FILE"),
        "{}",
        refused.context()
    );
    assert!(sim.requests().is_empty(), "{}", lines(&sim.requests()));
    refused.assert_no_secrets(&[&token.secret]);

    // The CA file: verified, and read.
    let ca_file = env.file("pve-root-ca.pem", front.ca_pem.as_bytes());
    let ca = ca_file.to_str().unwrap();
    let trusted = run(
        &env,
        &repo,
        &[],
        &facts,
        &[auth[0], auth[1], ("PROXMOX_CA_FILE", ca)],
    );
    assert!(!trusted.stderr.contains("warning"), "{}", trusted.context());
    assert_eq!(trusted.fact("name"), "ubuntu-22.04-base");
    assert_eq!(trusted.source("cores"), "proxmox-api");
    let requests = sim.requests();
    assert_eq!(requests.len(), 1, "{}", lines(&requests));
    assert_eq!(requests[0].auth, Auth::Token(token.id.clone()));

    // A CA file that is not PEM: a warning naming it.
    let junk = env.file("junk.pem", b"not a certificate\n");
    let junk = junk.to_str().unwrap();
    let bad_ca = run(
        &env,
        &repo,
        &[],
        &facts,
        &[auth[0], auth[1], ("PROXMOX_CA_FILE", junk)],
    );
    assert_warned(
        &bad_ca,
        &format!("PROXMOX_CA_FILE {junk} holds no PEM certificate"),
    );

    // PROXMOX_INSECURE=1: no verification.
    let insecure = run(
        &env,
        &repo,
        &[],
        &facts,
        &[auth[0], auth[1], ("PROXMOX_INSECURE", "1")],
    );
    assert!(
        !insecure.stderr.contains("warning"),
        "{}",
        insecure.context()
    );
    assert_eq!(insecure.fact("template"), true);
    assert_eq!(sim.requests().len(), 2, "{}", lines(&sim.requests()));
    insecure.assert_no_secrets(&[&token.secret]);
}
