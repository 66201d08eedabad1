//! The real `packer build` (Debian's Packer 1.6.6, `proxmox-iso` builder) against the Proxmox VE
//! API simulator of `pve_sim`, plus direct HTTP checks of what Packer 1.6.6 cannot exercise
//! (API tokens: its proxmox builder only logs in with username/password).
//!
//! Every Packer run is hermetic (own HOME, TMPDIR, config and cache dirs, no checkpoint call,
//! no colours) and killed, with its plugins, if it takes more than a minute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::Env;
use crate::pve_sim::{Auth, CreateFailure, PveSim, PveSimOptions, RawResponse, RecordedRequest};

const PACKER_TIMEOUT: Duration = Duration::from_secs(60);

/// `boot_command` of every build, and the qemu keys Packer must send for it.
const BOOT_COMMAND: &str = r#"["<esc>", "Auto<spacebar>ok<enter>"]"#;
const BOOT_KEYS: [&str; 9] = ["esc", "shift-a", "u", "t", "o", "spc", "o", "k", "ret"];

/// A finished `packer build`.
struct PackerRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// `PACKER_LOG_PATH`
    log: String,
}

impl PackerRun {
    fn context(&self) -> String {
        format!(
            "status {}\n--- stdout\n{}\n--- stderr\n{}\n--- packer.log (tail)\n{}",
            self.status,
            self.stdout,
            self.stderr,
            tail(&self.log, 40)
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What varies between the templates of these tests (also used by `proxmox_api`).
pub(crate) struct Template {
    pub(crate) username: String,
    pub(crate) password: String,
    /// `vm_id = …` when set; Packer picks one otherwise.
    pub(crate) vm_id: Option<u32>,
    pub(crate) unmount_iso: bool,
    /// HCL naming the ISO: `iso_file = …`, or `iso_url` and friends.
    pub(crate) iso: String,
    /// HCL of the communicator.
    pub(crate) communicator: String,
}

impl Template {
    /// The simulator's credentials, `vm_id = 9000`.
    pub(crate) fn for_sim(sim: &PveSim) -> Template {
        let options = sim.options();
        Template {
            username: options.username,
            password: options.password,
            vm_id: Some(9000),
            unmount_iso: false,
            iso: r#"iso_file = "local:iso/ubuntu-22.04.iso""#.into(),
            communicator: r#"communicator = "none""#.into(),
        }
    }

    pub(crate) fn hcl(&self, sim: &PveSim) -> String {
        let vm_id = self
            .vm_id
            .map(|id| format!("vm_id = {id}"))
            .unwrap_or_default();
        format!(
            r#"
source "proxmox-iso" "ubuntu" {{
  proxmox_url       = "{url}"
  username          = "{username}"
  password          = "{password}"
  node              = "{node}"
  {vm_id}
  vm_name           = "packer-ubuntu"
  template_name     = "ubuntu-22.04-base"
  {iso}
  unmount_iso       = {unmount_iso}
  os                = "l26"
  cpu_type          = "host"
  cores             = 2
  sockets           = 1
  memory            = 2048
  scsi_controller   = "virtio-scsi-pci"
  # 1.6.6 documents true as the default, but sends agent=0 for an HCL2 template without it.
  qemu_agent        = true
  network_adapters {{
    model       = "virtio"
    bridge      = "vmbr0"
    vlan_tag    = "20"
    mac_address = "BC:24:11:AA:BB:CC"
  }}
  disks {{
    type              = "scsi"
    disk_size         = "20G"
    storage_pool      = "local-lvm"
    storage_pool_type = "lvm"
  }}
  cloud_init              = true
  cloud_init_storage_pool = "local-lvm"
  http_bind_address       = "127.0.0.1"
  # "0s" means the 10 s default in 1.6.6; a negative duration means none.
  boot_wait               = "-1s"
  boot_command            = {BOOT_COMMAND}
  {communicator}
}}

build {{
  sources = ["source.proxmox-iso.ubuntu"]

  post-processor "manifest" {{
    output = "manifest.json"
  }}
}}
"#,
            url = sim.url(),
            username = self.username,
            password = self.password,
            node = sim.options().node,
            unmount_iso = self.unmount_iso,
            iso = self.iso,
            communicator = self.communicator,
        )
    }
}

/// Writes `hcl` into the env dir and runs `packer build` there.
fn packer_build(env: &Env, hcl: &str) -> PackerRun {
    let dir = env.path();
    std::fs::write(dir.join("build.pkr.hcl"), hcl).unwrap();
    let mut cmd = packer_command(dir);
    cmd.args(["build", "-color=false", "build.pkr.hcl"]);
    let (status, stdout, stderr) = run_bounded(cmd, PACKER_TIMEOUT);
    PackerRun {
        status,
        stdout,
        stderr,
        log: std::fs::read_to_string(dir.join("packer.log")).unwrap_or_default(),
    }
}

/// `packer` with a hermetic environment rooted in `dir`.
fn packer_command(dir: &Path) -> Command {
    let sub = |name: &str| -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let mut cmd = Command::new("packer");
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sub("home"))
        .env("TMPDIR", sub("tmp"))
        .env("PACKER_CONFIG_DIR", sub("packer-config"))
        .env("PACKER_CACHE_DIR", sub("packer-cache"))
        .env("PACKER_LOG", "1")
        .env("PACKER_LOG_PATH", dir.join("packer.log"))
        .env("PACKER_NO_COLOR", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .env("LC_ALL", "C")
        .env("TZ", "UTC");
    cmd
}

/// Runs `cmd` in a process group of its own; kills the group (packer and its plugins) and
/// panics if it is not done within `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output.expect("wait for packer");
            (output.status, text(&output.stdout), text(&output.stderr))
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let output = rx.recv().map(|o| o.ok());
            let (stdout, stderr) = match output {
                Ok(Some(o)) => (text(&o.stdout), text(&o.stderr)),
                _ => Default::default(),
            };
            panic!(
                "{cmd:?} still running after {timeout:?}; killed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
    }
}

/// Index of the first request `method path` in `requests`, or a panic listing them.
fn position(requests: &[RecordedRequest], line: &str) -> usize {
    requests
        .iter()
        .position(|r| r.line() == line)
        .unwrap_or_else(|| panic!("no {line:?} in\n{}", lines(requests)))
}

fn lines(requests: &[RecordedRequest]) -> String {
    requests
        .iter()
        .map(|r| format!("{} -> {} ({:?})", r.line(), r.status, r.auth))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn packer_creates_template_9000_with_a_ticket() {
    let sim = PveSim::start(PveSimOptions::default());
    let env = Env::new();
    let run = packer_build(&env, &Template::for_sim(&sim).hcl(&sim));
    assert!(run.status.success(), "{}", run.context());
    for step in [
        "==> proxmox-iso.ubuntu: Creating VM",
        "==> proxmox-iso.ubuntu: Starting VM",
        "==> proxmox-iso.ubuntu: Typing the boot command",
        "==> proxmox-iso.ubuntu: Stopping VM",
        "==> proxmox-iso.ubuntu: Converting VM to template",
        "==> proxmox-iso.ubuntu: Adding a cloud-init cdrom in storage pool local-lvm",
        "--> proxmox-iso.ubuntu: A template was created: 9000",
    ] {
        assert!(
            run.stdout.contains(step),
            "{step:?} missing\n{}",
            run.context()
        );
    }
    assert!(run.log.contains("template_id: 9000"), "{}", run.context());

    let vm = sim.vm(9000).expect("VM 9000 created");
    assert!(vm.is_template(), "{vm:?}");
    assert!(!vm.running && !vm.destroyed, "{vm:?}");
    assert_eq!(vm.keys, BOOT_KEYS);
    let config: BTreeMap<&str, &str> = vm
        .config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (key, value) in [
        ("name", "ubuntu-22.04-base"),
        ("cores", "2"),
        ("sockets", "1"),
        ("memory", "2048"),
        ("cpu", "host"),
        ("ostype", "l26"),
        ("scsihw", "virtio-scsi-pci"),
        ("agent", "1"),
        ("kvm", "1"),
        ("template", "1"),
        ("ide2", "local:iso/ubuntu-22.04.iso,media=cdrom"),
        ("ide3", "local-lvm:vm-9000-cloudinit,media=cdrom"),
        ("scsi0", "local-lvm:vm-9000-disk-0,iothread=0,size=20G"),
        (
            "net0",
            "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=0,tag=20",
        ),
        ("boot", "order=scsi0;ide2;net0"),
        ("description", "Packer ephemeral build VM"),
    ] {
        assert_eq!(
            config.get(key).copied(),
            Some(value),
            "{key} in {config:#?}"
        );
    }
    assert_eq!(
        vm.create_params.get("name").map(String::as_str),
        Some("packer-ubuntu")
    );

    let requests = sim.requests();
    let login = &requests[0];
    assert_eq!(
        (login.line().as_str(), login.auth.clone()),
        ("POST /access/ticket", Auth::None)
    );
    assert_eq!(login.params["username"], "root@pam");
    assert_eq!(login.params["password"], "<redacted>");
    for r in &requests[1..] {
        assert_eq!(r.auth, Auth::Ticket("root@pam".into()), "{r:?}");
        assert!(r.csrf_ok, "{r:?}");
        assert!(
            (200..300).contains(&r.status),
            "{r:?}\n{}",
            lines(&requests)
        );
    }
    // The builder's steps, in order.
    let order = [
        "POST /nodes/pve1/storage/local-lvm/content",
        "POST /nodes/pve1/qemu",
        "POST /nodes/pve1/qemu/9000/status/start",
        "PUT /nodes/pve1/qemu/9000/sendkey",
        "POST /nodes/pve1/qemu/9000/status/shutdown",
        "POST /nodes/pve1/qemu/9000/template",
        "POST /nodes/pve1/qemu/9000/config",
    ]
    .map(|line| position(&requests, line));
    assert!(order.is_sorted(), "{order:?}\n{}", lines(&requests));
    // Packer waits for these tasks (it ignores the UPID of the template conversion).
    let polled: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.path.strip_prefix("/nodes/pve1/tasks/UPID:pve1:"))
        .filter_map(|rest| rest.strip_suffix(":9000:root@pam:/status"))
        .filter_map(|rest| rest.rsplit(':').next())
        .collect();
    assert_eq!(
        polled,
        ["qmcreate", "qmstart", "qmshutdown", "qmconfig"],
        "{}",
        lines(&requests)
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["builds"][0]["artifact_id"], "9000");
    assert_eq!(manifest["builds"][0]["builder_type"], "proxmox-iso");
}

#[test]
fn packer_without_vm_id_takes_the_highest_vmid_plus_one() {
    // Packer 1.6.6 does not ask /cluster/nextid: it takes max(vmid) + 1 from /cluster/resources.
    let sim = PveSim::start(PveSimOptions {
        existing_templates: vec![(9041, "debian-12-base".into())],
        ..PveSimOptions::default()
    });
    let env = Env::new();
    let template = Template {
        vm_id: None,
        unmount_iso: true,
        ..Template::for_sim(&sim)
    };
    let run = packer_build(&env, &template.hcl(&sim));
    assert!(run.status.success(), "{}", run.context());
    assert!(
        run.stdout
            .contains("No VM ID given, getting next free from Proxmox"),
        "{}",
        run.context()
    );
    assert!(
        run.stdout.contains("A template was created: 9042"),
        "{}",
        run.context()
    );

    let requests = sim.requests();
    let listing = &requests[position(&requests, "GET /cluster/resources")];
    assert_eq!(listing.params.get("type").map(String::as_str), Some("vm"));
    let vm = sim.vm(9042).expect("VM 9042 created");
    assert!(vm.is_template());
    assert_eq!(
        vm.get("ide2"),
        Some("none,media=cdrom"),
        "unmount_iso ejects the ISO"
    );
    assert_eq!(
        vm.get("scsi0"),
        Some("local-lvm:vm-9042-disk-0,iothread=0,size=20G")
    );
    assert!(
        sim.vm(9041)
            .is_some_and(|vm| vm.is_template() && vm.keys.is_empty())
    );
}

#[test]
fn packer_exits_1_when_the_disk_is_not_allocated() {
    let sim = PveSim::start(PveSimOptions {
        create_failure: Some(CreateFailure::DiskNotAllocated),
        ..PveSimOptions::default()
    });
    let env = Env::new();
    let run = packer_build(&env, &Template::for_sim(&sim).hcl(&sim));
    assert_eq!(run.status.code(), Some(1), "{}", run.context());
    // As in the proxmox-fake-createfail fixture: the error, then the VM parameters.
    let error = "Error creating VM: Error creating VM: Cannot create VM disk \
                 local-lvm:vm-9000-disk-0, error status:  (params: map[";
    assert!(run.stdout.contains(error), "{}", run.context());
    assert!(
        run.stdout
            .contains("ide2:local:iso/ubuntu-22.04.iso,media=cdrom"),
        "{}",
        run.context()
    );
    assert!(
        run.stdout
            .contains("Builds finished but no artifacts were created."),
        "{}",
        run.context()
    );
    assert!(
        !run.stdout.contains("A template was created"),
        "{}",
        run.context()
    );
    assert!(sim.vm(9000).is_none());
    let requests = sim.requests();
    assert!(
        !requests.iter().any(|r| r.line() == "POST /nodes/pve1/qemu"),
        "{}",
        lines(&requests)
    );
}

#[test]
fn packer_exits_1_with_proxmox_reason_when_the_vm_is_rejected() {
    let reason = "unable to create VM 9000 - no space left on volume group pve";
    let sim = PveSim::start(PveSimOptions {
        create_failure: Some(CreateFailure::Rejected(reason.into())),
        ..PveSimOptions::default()
    });
    let env = Env::new();
    let run = packer_build(&env, &Template::for_sim(&sim).hcl(&sim));
    assert_eq!(run.status.code(), Some(1), "{}", run.context());
    let error = format!("Error creating VM: Error creating VM: 500 {reason}, error status: ");
    assert!(run.stdout.contains(&error), "{}", run.context());
    assert!(!run.stdout.contains("Starting VM"), "{}", run.context());
    let requests = sim.requests();
    let create = &requests[position(&requests, "POST /nodes/pve1/qemu")];
    assert_eq!(create.status, 500);
    assert_eq!(create.params.get("vmid").map(String::as_str), Some("9000"));
    assert!(sim.vm(9000).is_none());
}

#[test]
fn packer_exits_1_on_a_wrong_password() {
    let sim = PveSim::start(PveSimOptions::default());
    let env = Env::new();
    let template = Template {
        password: "not-the-password".into(),
        ..Template::for_sim(&sim)
    };
    let run = packer_build(&env, &template.hcl(&sim));
    assert_eq!(run.status.code(), Some(1), "{}", run.context());
    assert!(
        run.stdout.contains("401 authentication failure"),
        "{}",
        run.context()
    );
    let requests = sim.requests();
    assert_eq!(requests.len(), 1, "{}", lines(&requests));
    assert_eq!(requests[0].status, 401);
    assert!(sim.vms().is_empty());
}

#[test]
fn packer_uploads_an_iso_url_to_iso_storage() {
    let sim = PveSim::start(PveSimOptions::default());
    let env = Env::new();
    let iso = env.file("tiny.iso", b"not really an ISO 9660 image\n");
    let template = Template {
        iso: format!(
            "iso_url = \"file://{}\"\n  iso_checksum = \"none\"\n  iso_storage_pool = \"local\"",
            iso.display()
        ),
        ..Template::for_sim(&sim)
    };
    let run = packer_build(&env, &template.hcl(&sim));
    assert!(run.status.success(), "{}", run.context());
    assert!(
        run.stdout.contains("A template was created: 9000"),
        "{}",
        run.context()
    );

    let requests = sim.requests();
    let upload = &requests[position(&requests, "POST /nodes/pve1/storage/local/upload")];
    assert_eq!(
        upload.params.get("content").map(String::as_str),
        Some("iso")
    );
    assert_eq!(
        upload.params.get("filename").map(String::as_str),
        Some("tiny.iso")
    );
    assert_eq!(upload.params.get("size").map(String::as_str), Some("29"));
    assert!(sim.volumes().contains(&"local:iso/tiny.iso".to_owned()));
    let vm = sim.vm(9000).expect("VM 9000 created");
    assert_eq!(vm.get("ide2"), Some("local:iso/tiny.iso,media=cdrom"));
}

#[test]
fn packer_stops_and_deletes_the_vm_when_ssh_times_out() {
    // As in the proxmox-sshtimeout fixture: nothing listens on 127.0.0.1:1.
    let sim = PveSim::start(PveSimOptions::default());
    let env = Env::new();
    let template = Template {
        communicator: [
            r#"communicator = "ssh""#,
            r#"ssh_host = "127.0.0.1""#,
            "ssh_port = 1",
            r#"ssh_username = "packer""#,
            r#"ssh_password = "packer""#,
            r#"ssh_timeout = "1s""#,
        ]
        .join("\n  "),
        ..Template::for_sim(&sim)
    };
    let run = packer_build(&env, &template.hcl(&sim));
    assert_eq!(run.status.code(), Some(1), "{}", run.context());
    for step in [
        "==> proxmox-iso.ubuntu: Waiting for SSH to become available...",
        "==> proxmox-iso.ubuntu: Timeout waiting for SSH.",
        "==> proxmox-iso.ubuntu: Stopping VM",
        "==> proxmox-iso.ubuntu: Deleting VM",
    ] {
        assert!(
            run.stdout.contains(step),
            "{step:?} missing\n{}",
            run.context()
        );
    }
    let vm = sim.vm(9000).expect("VM 9000 created");
    assert!(vm.destroyed && !vm.running && !vm.is_template(), "{vm:?}");
    assert!(
        sim.volumes().iter().all(|v| !v.contains("vm-9000-")),
        "{:?}",
        sim.volumes()
    );
    let requests = sim.requests();
    let stop = position(&requests, "POST /nodes/pve1/qemu/9000/status/stop");
    let delete = position(&requests, "DELETE /nodes/pve1/qemu/9000");
    assert!(stop < delete, "{}", lines(&requests));
    assert!(requests[delete].status == 200, "{}", lines(&requests));
}

// --- Direct HTTP: what Packer 1.6.6 does not exercise -----------------------------------------

fn data(response: &RawResponse) -> serde_json::Value {
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["data"].clone()
}

/// A ticket and CSRF token for the simulator's user.
fn login(sim: &PveSim) -> (String, String) {
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
    let data = data(&answer);
    (
        data["ticket"].as_str().unwrap().to_owned(),
        data["CSRFPreventionToken"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn an_api_token_needs_no_csrf_and_reads_the_vm_config() {
    let sim = PveSim::start(PveSimOptions::default());
    let token = sim.token_header();
    let auth = [("Authorization", token.as_str())];

    let version = data(&sim.call("GET", "/version", &auth, &[]));
    assert_eq!(version["version"], "8.2.4");
    assert_eq!(
        data(&sim.call("GET", "/cluster/nextid", &auth, &[])),
        "9000"
    );

    let created = sim.call(
        "POST",
        "/nodes/pve1/qemu",
        &auth,
        &[
            ("vmid", "9000"),
            ("name", "ubuntu-22.04-base"),
            ("cores", "2"),
            ("sockets", "1"),
            ("memory", "2048"),
            ("cpu", "host"),
            ("ostype", "l26"),
            ("scsi0", "local-lvm:20"),
            ("ide2", "local:iso/ubuntu-22.04.iso,media=cdrom"),
            ("net0", "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,tag=20"),
        ],
    );
    let upid = data(&created).as_str().unwrap().to_owned();
    assert!(
        upid.starts_with("UPID:pve1:") && upid.ends_with(":qmcreate:9000:root@pam!git-evidence:"),
        "{upid}"
    );
    let status = data(&sim.call(
        "GET",
        &format!("/nodes/pve1/tasks/{upid}/status"),
        &auth,
        &[],
    ));
    assert_eq!(
        (status["status"].as_str(), status["exitstatus"].as_str()),
        (Some("stopped"), Some("OK"))
    );
    assert_eq!(
        data(&sim.call("POST", "/nodes/pve1/qemu/9000/template", &auth, &[]))
            .as_str()
            .map(|u| u.contains(":qmtemplate:9000:")),
        Some(true)
    );
    assert_eq!(
        data(&sim.call("GET", "/cluster/nextid", &auth, &[])),
        "9001"
    );

    let config = data(&sim.call("GET", "/nodes/pve1/qemu/9000/config", &auth, &[]));
    assert_eq!(config["cores"], 2);
    assert_eq!(config["sockets"], 1);
    assert_eq!(config["memory"], "2048");
    assert_eq!(config["cpu"], "host");
    assert_eq!(config["ostype"], "l26");
    assert_eq!(config["name"], "ubuntu-22.04-base");
    assert_eq!(config["template"], 1);
    assert_eq!(config["scsi0"], "local-lvm:vm-9000-disk-0,size=20G");
    assert_eq!(config["ide2"], "local:iso/ubuntu-22.04.iso,media=cdrom");
    assert_eq!(
        config["net0"],
        "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,tag=20"
    );
    assert_eq!(config["digest"].as_str().map(str::len), Some(40));

    let wrong = "PVEAPIToken=root@pam!git-evidence=00000000-0000-0000-0000-000000000000";
    let denied = sim.call(
        "GET",
        "/nodes/pve1/qemu/9000/config",
        &[("Authorization", wrong)],
        &[],
    );
    assert_eq!(denied.status, 401, "{denied:?}");

    let requests = sim.requests();
    let token_id = Auth::Token("root@pam!git-evidence".into());
    assert!(
        requests[..requests.len() - 1]
            .iter()
            .all(|r| r.auth == token_id),
        "{}",
        lines(&requests)
    );
    assert_eq!(requests.last().unwrap().auth, Auth::Invalid);
}

#[test]
fn a_ticket_needs_the_csrf_token_to_write() {
    let sim = PveSim::start(PveSimOptions::default());
    let (ticket, csrf) = login(&sim);
    let cookie = format!("PVEAuthCookie={ticket}");
    let key = [("key", "ret")];
    let vm = [
        ("vmid", "9000"),
        ("ide2", "local:iso/ubuntu-22.04.iso,media=cdrom"),
    ];

    assert_eq!(sim.call("GET", "/version", &[], &[]).status, 401);
    assert_eq!(
        sim.call("GET", "/version", &[("Cookie", &cookie)], &[])
            .status,
        200
    );
    let no_csrf = sim.call("POST", "/nodes/pve1/qemu", &[("Cookie", &cookie)], &vm);
    assert_eq!(
        (no_csrf.status, no_csrf.reason.as_str()),
        (401, "Permission denied - invalid csrf token")
    );
    assert!(sim.vm(9000).is_none());

    let auth = [
        ("Cookie", cookie.as_str()),
        ("CSRFPreventionToken", csrf.as_str()),
    ];
    data(&sim.call("POST", "/nodes/pve1/qemu", &auth, &vm));
    let stopped = sim.call("PUT", "/nodes/pve1/qemu/9000/sendkey", &auth, &key);
    assert_eq!(
        (stopped.status, stopped.reason.as_str()),
        (500, "VM 9000 not running")
    );
    data(&sim.call("POST", "/nodes/pve1/qemu/9000/status/start", &auth, &[]));
    data(&sim.call("PUT", "/nodes/pve1/qemu/9000/sendkey", &auth, &key));
    let running = sim.call("POST", "/nodes/pve1/qemu/9000/template", &auth, &[]);
    assert_eq!(running.status, 500, "{running:?}");
    let vm = sim.vm(9000).unwrap();
    assert_eq!(
        (vm.running, vm.keys.as_slice(), vm.is_template()),
        (true, &["ret".to_owned()][..], false)
    );

    let requests = sim.requests();
    let csrf_flags: Vec<bool> = requests.iter().map(|r| r.csrf_ok).collect();
    assert_eq!(
        csrf_flags,
        [false, false, false, false, true, true, true, true, true],
        "{}",
        lines(&requests)
    );
}

#[test]
fn malformed_requests_get_a_4xx_and_the_server_keeps_serving() {
    let sim = PveSim::start(PveSimOptions::default());
    for (request, status) in [
        (&b"garbage\r\n\r\n"[..], 400),
        (b"GET /api2/json/version HTTP/2.0\r\n\r\n", 505),
        (
            b"GET /api2/json/version HTTP/1.1\r\nno colon here\r\n\r\n",
            400,
        ),
        (
            b"POST /api2/json/access/ticket HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
            400,
        ),
        (
            b"POST /api2/json/access/ticket HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
            413,
        ),
        (
            b"GET /api2/json/cluster/nextid?vmid=%zz HTTP/1.1\r\n\r\n",
            400,
        ),
        (
            b"GET /api2/json/cluster/nextid?vmid=12 HTTP/1.1\r\n\r\n",
            401,
        ),
        (b"GET /index.html HTTP/1.1\r\n\r\n", 501),
        (b"\xff\xfe HTTP/1.1\r\n\r\n", 400),
        (
            b"POST /api2/json/access/ticket HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (
            b"POST /api2/json/access/ticket HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              ffffffffffffffff\r\n",
            413,
        ),
        (
            b"GET /api2/json/version HTTP/1.1\r\nCookie: PVEAuthCookie=PVE:root@pam:0::forged\r\n\r\n",
            401,
        ),
    ] {
        let answer = sim.send_raw(request);
        assert_eq!(
            answer.status,
            status,
            "{:?} -> {answer:?}",
            String::from_utf8_lossy(request)
        );
        assert!(answer.json()["data"].is_null(), "{answer:?}");
    }
    // A chunked body is decoded (a login with the right password).
    let chunked = b"POST /api2/json/access/ticket HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                    Content-Type: application/x-www-form-urlencoded\r\n\r\n\
                    13\r\nusername=root%40pam\r\n\
                    16\r\n&password=sim-password\r\n0\r\n\r\n";
    let login = sim.send_raw(chunked);
    assert!(
        data(&login)["ticket"]
            .as_str()
            .is_some_and(|t| t.starts_with("PVE:root@pam:"))
    );
    // A bad parameter of an authenticated request: Proxmox's 400 with per-parameter errors.
    let token = sim.token_header();
    let auth = [("Authorization", token.as_str())];
    let bad = sim.call("GET", "/cluster/nextid", &auth, &[("vmid", "12")]);
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.json()["errors"]["vmid"].is_string(), "{bad:?}");
    let unknown = sim.call(
        "POST",
        "/nodes/pve1/qemu",
        &auth,
        &[("vmid", "9000"), ("cores2", "4")],
    );
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert_eq!(
        data(&sim.call("GET", "/version", &auth, &[]))["release"],
        "8.2"
    );
}

#[test]
fn dropping_the_simulator_closes_its_port() {
    let sim = PveSim::start(PveSimOptions::default());
    let addr = sim.addr();
    assert_eq!(sim.call("GET", "/version", &[], &[]).status, 401);
    drop(sim);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "{addr} still accepts connections"
    );
}
