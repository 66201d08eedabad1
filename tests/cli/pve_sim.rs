//! A Proxmox VE API simulator for the test suite: enough of `/api2/json` for the real
//! `proxmox-iso` builder of Packer 1.6.6 to create a template, and for an API client to read a
//! VM's config back.
//!
//! The server is std-only HTTP/1.1 on `127.0.0.1` (plain `http://`, which Packer 1.6.6 accepts:
//! it only `url.Parse`s `proxmox_url`). [`PveSim::start`] binds before returning its URL, serves
//! every connection on a thread of its own (one request per connection, `Connection: close`,
//! 5 s socket timeouts) and stops by itself after [`PveSimOptions::max_lifetime`] or
//! [`PveSimOptions::max_connections`]; dropping the [`PveSim`] stops it and joins every thread.
//! A malformed request gets a 4xx answer, never a panic.
//!
//! # What is simulated
//!
//! * Authentication as Proxmox does it: `POST /access/ticket` (username/password, or a ticket as
//!   password to renew it) returns a ticket for the `PVEAuthCookie` cookie and a
//!   `CSRFPreventionToken`, which every non-GET request authenticated by cookie must send back;
//!   or an API token, `Authorization: PVEAPIToken=user@realm!tokenid=secret`, with no CSRF
//!   token. Anything else is `401`. Every request is recorded with the auth it used
//!   ([`PveSim::requests`]). Authenticated callers may do everything (no ACLs).
//! * The endpoints the Packer 1.6.6 `proxmox-iso` builder (and its vendored `proxmox-api-go`)
//!   calls, plus a few a client needs: `/version`, `/nodes`, `/cluster/nextid`,
//!   `/cluster/resources`; on `/nodes/{node}`: `qemu` (list, create), `qemu/{vmid}` (index,
//!   `DELETE`), `…/config` (GET; POST async, PUT sync; `delete=` and `digest=`),
//!   `…/status/current`, `…/status/{start,stop,shutdown,reboot,reset,suspend,resume}`,
//!   `…/template`, `…/sendkey`, `…/agent/network-get-interfaces`, `tasks`, `tasks/{upid}/status`
//!   and `/log`, `storage`, `storage/{storage}/content` (list, allocate a disk),
//!   `storage/{storage}/content/{volume}` (`DELETE`), `storage/{storage}/upload` (multipart).
//! * Proxmox's conventions: the `{"data": …}` envelope; errors as the HTTP status *reason* with
//!   `{"data": null}` (plus `"errors"` for `400` parameter errors); `501` for an unknown method
//!   or path; asynchronous operations answer a UPID (`UPID:pve1:…:qmstart:9000:root@pam:`)
//!   and their task is already finished, `{"status":"stopped","exitstatus":"OK"}`, when polled.
//! * A VM config as Proxmox stores it: drive and NIC property strings are normalised (volume or
//!   `model=MAC` first, other keys sorted, booleans as `0`/`1`, `media=disk` dropped,
//!   `storage:SIZE` and `storage:cloudinit` allocate a volume), PVE 8 adds `boot`, `smbios1`,
//!   `vmgenid` and `meta`, and `GET …/config` adds a `digest`. Integer options (`cores`,
//!   `sockets`, `template`, …) come back as JSON numbers; `memory` is a string, as in PVE ≥ 8.1.
//!   Config keys are checked against (most of) the qemu-server schema: an unknown key is a `400`.
//! * Some of Proxmox's refusals: a missing ISO or disk volume, starting a template, converting a
//!   running VM, destroying a running VM, sendkey to a stopped VM, an existing VMID.
//! * Failure injection for VM creation ([`CreateFailure`]).
//!
//! # What is not
//!
//! TLS, keep-alive, permissions, pools, HA, clusters of more than one node, LXC, clones,
//! snapshots, backups, the QEMU monitor, time (tasks finish instantly, VMs boot instantly), and
//! the contents of disks. With [`PveSimOptions::rename_disks_on_template`] off (the default),
//! converting to a template keeps `vm-ID-disk-N` volume names; real Proxmox renames them
//! `base-ID-disk-N` on most storage types.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// An API token the simulator accepts: `Authorization: PVEAPIToken={id}={secret}`.
#[derive(Clone, Debug)]
pub struct ApiToken {
    /// `user@realm!tokenid`
    pub id: String,
    pub secret: String,
}

/// How VM creation fails, when it should.
#[derive(Clone, Debug)]
pub enum CreateFailure {
    /// `POST /nodes/{node}/storage/{storage}/content` answers `200` without a volume id, so
    /// `proxmox-api-go` reports `Cannot create VM disk local-lvm:vm-9000-disk-0` and Packer
    /// prints the VM parameters (the `proxmox-fake-createfail` fixture).
    DiskNotAllocated,
    /// `POST /nodes/{node}/qemu` answers `500 {reason}`, as Proxmox does when it refuses a VM.
    Rejected(String),
}

/// What the simulator accepts and how it behaves.
#[derive(Clone, Debug)]
pub struct PveSimOptions {
    pub node: String,
    /// `user@realm` for `POST /access/ticket`.
    pub username: String,
    pub password: String,
    pub api_token: Option<ApiToken>,
    /// What `/cluster/nextid` answers when free (it skips VMIDs in use).
    pub next_vmid: u32,
    /// VMs that exist before the test, as `(vmid, name)`: stopped templates.
    pub existing_templates: Vec<(u32, String)>,
    /// ISO volumes present on storage, e.g. `local:iso/ubuntu-22.04.iso`.
    pub isos: Vec<String>,
    pub create_failure: Option<CreateFailure>,
    /// IPv4 address the QEMU guest agent reports for `eth0`; `None`: the agent is not running.
    pub guest_ip: Option<String>,
    /// Rename `vm-ID-disk-N` volumes `base-ID-disk-N` on template conversion, as Proxmox does.
    pub rename_disks_on_template: bool,
    /// What `/version` reports.
    pub version: String,
    /// The server stops by itself after this long…
    pub max_lifetime: Duration,
    /// …or after accepting this many connections.
    pub max_connections: usize,
}

impl Default for PveSimOptions {
    fn default() -> Self {
        PveSimOptions {
            node: "pve1".into(),
            username: "root@pam".into(),
            password: "sim-password".into(),
            api_token: Some(ApiToken {
                id: "root@pam!git-evidence".into(),
                secret: "5f1c8e0a-3b7d-4c2e-9a61-0d4b2f7e8c13".into(),
            }),
            next_vmid: 9000,
            existing_templates: Vec::new(),
            isos: vec![
                "local:iso/ubuntu-22.04.iso".into(),
                "local:iso/debian-12.5.0-amd64-netinst.iso".into(),
            ],
            create_failure: None,
            guest_ip: None,
            rename_disks_on_template: false,
            version: "8.2.4".into(),
            max_lifetime: Duration::from_secs(600),
            max_connections: 10_000,
        }
    }
}

/// How a request authenticated itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// A valid `PVEAuthCookie` ticket of this user.
    Ticket(String),
    /// A valid API token with this id (`user@realm!tokenid`).
    Token(String),
    /// Credentials were sent but are not valid.
    Invalid,
}

/// One request the simulator answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path below `/api2/json`, percent-decoded, e.g. `/nodes/pve1/qemu/9000/config`.
    pub path: String,
    /// Query string and form or JSON body parameters; passwords are `<redacted>`.
    pub params: BTreeMap<String, String>,
    pub auth: Auth,
    /// Whether a cookie-authenticated request carried the right `CSRFPreventionToken`.
    pub csrf_ok: bool,
    pub status: u16,
}

impl RecordedRequest {
    /// `"POST /nodes/pve1/qemu"`
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A qemu VM as the simulator holds it.
#[derive(Clone, Debug)]
pub struct Vm {
    pub vmid: u32,
    pub node: String,
    /// The config as `GET …/config` returns it (without `digest`), values as strings.
    pub config: BTreeMap<String, String>,
    /// The parameters of the create request, as sent.
    pub create_params: BTreeMap<String, String>,
    pub running: bool,
    /// Every `sendkey` key, in order (`shift-a`, `ret`, …).
    pub keys: Vec<String>,
    /// Deleted with `DELETE /nodes/{node}/qemu/{vmid}`.
    pub destroyed: bool,
}

impl Vm {
    pub fn is_template(&self) -> bool {
        self.config.get("template").map(String::as_str) == Some("1")
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

/// A task (UPID) the simulator started.
#[derive(Clone, Debug)]
pub struct Task {
    pub upid: String,
    /// `qmcreate`, `qmstart`, `qmshutdown`, `qmtemplate`, …
    pub kind: String,
    pub id: String,
    pub user: String,
    pub exitstatus: String,
}

/// A response read by [`PveSim::send_raw`] or [`PveSim::call`].
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }
}

/// A running simulator; dropping it stops the server.
pub struct PveSim {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl PveSim {
    /// Binds `127.0.0.1:0` and serves on a background thread; the URL is usable on return.
    pub fn start(options: PveSimOptions) -> PveSim {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let limits = (options.max_lifetime, options.max_connections);
        let state = Arc::new(Mutex::new(State::new(options)));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            thread::Builder::new()
                .name("pve-sim".into())
                .spawn(move || accept_loop(listener, state, stop, limits))
                .expect("spawn server thread")
        };
        PveSim {
            addr,
            state,
            stop,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:PORT/api2/json`, what Packer calls `proxmox_url`.
    pub fn url(&self) -> String {
        format!("http://{}/api2/json", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn options(&self) -> PveSimOptions {
        self.lock().options.clone()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Every VM ever created or seeded (destroyed ones included), by VMID.
    pub fn vms(&self) -> Vec<Vm> {
        self.lock().vms.values().cloned().collect()
    }

    pub fn vm(&self, vmid: u32) -> Option<Vm> {
        self.lock().vms.get(&vmid).cloned()
    }

    pub fn tasks(&self) -> Vec<Task> {
        self.lock().tasks.clone()
    }

    /// Volume ids on storage (`local:iso/…`, `local-lvm:vm-9000-disk-0`, …).
    pub fn volumes(&self) -> Vec<String> {
        self.lock().volumes.keys().cloned().collect()
    }

    /// The `Authorization` header value of the configured API token.
    pub fn token_header(&self) -> String {
        let token = self
            .options()
            .api_token
            .expect("an API token is configured");
        format!("PVEAPIToken={}={}", token.id, token.secret)
    }

    /// Sends `request` as is on a new connection and reads the whole answer.
    pub fn send_raw(&self, request: &[u8]) -> RawResponse {
        let mut stream = TcpStream::connect(self.addr).expect("connect to the simulator");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream.write_all(request).expect("send request");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read answer");
        parse_raw_response(&answer)
    }

    /// A well-formed request: `path` below `/api2/json`; `params` go in the query string of a
    /// GET or DELETE and in a form body otherwise.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        params: &[(&str, &str)],
    ) -> RawResponse {
        let encoded = form_encode(params);
        let has_body = !matches!(method, "GET" | "DELETE");
        let mut target = format!("/api2/json{path}");
        if !has_body && !encoded.is_empty() {
            target = format!("{target}?{encoded}");
        }
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if has_body {
            request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            request.push_str(&format!("Content-Length: {}\r\n", encoded.len()));
        }
        request.push_str("\r\n");
        if has_body {
            request.push_str(&encoded);
        }
        self.send_raw(request.as_bytes())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for PveSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server loop
// ---------------------------------------------------------------------------------------------

const POLL: Duration = Duration::from_millis(2);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepts until stopped, too old or too busy; then joins the connection threads.
fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    (max_lifetime, max_connections): (Duration, usize),
) {
    let started = Instant::now();
    let mut accepted = 0;
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst)
        && started.elapsed() < max_lifetime
        && accepted < max_connections
    {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted += 1;
                let state = Arc::clone(&state);
                let worker = thread::Builder::new()
                    .name("pve-sim-conn".into())
                    .spawn(move || serve_connection(stream, &state));
                workers.retain(|w| !w.is_finished());
                if let Ok(worker) = worker {
                    workers.push(worker);
                }
            }
            // Nothing to accept (or a transient error): poll again for stop and limits.
            Err(_) => thread::sleep(POLL),
        }
    }
    drop(listener);
    for worker in workers {
        let _ = worker.join();
    }
}

/// One request, one answer, then close.
fn serve_connection(stream: TcpStream, state: &Mutex<State>) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(SOCKET_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(SOCKET_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    let reply = match read_request(&mut reader, &mut writer) {
        Ok(Some(request)) => handle(state, &request),
        Ok(None) => return,
        Err(reply) => reply,
    };
    let _ = write_reply(&mut writer, &reply);
    linger_close(&mut reader, &writer);
}

/// Half-closes, then drains what the client still sends (bounded), so that it reads our
/// answer instead of a reset.
fn linger_close(reader: &mut BufReader<TcpStream>, writer: &TcpStream) {
    let _ = writer.shutdown(Shutdown::Write);
    let _ = writer.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 8192];
    let mut left: usize = 1024 * 1024;
    while left > 0 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------------------

struct HttpRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, reason phrase and JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    reason: String,
    body: Value,
}

impl Reply {
    fn data(data: Value) -> Reply {
        Reply {
            status: 200,
            reason: "OK".into(),
            body: json!({ "data": data }),
        }
    }

    fn error(status: u16, reason: impl Into<String>) -> Reply {
        Reply {
            status,
            reason: reason.into(),
            body: json!({ "data": null }),
        }
    }

    /// `400 Parameter verification failed.` with the per-parameter messages.
    fn bad_param(name: &str, message: &str) -> Reply {
        Reply {
            status: 400,
            reason: "Parameter verification failed.".into(),
            body: json!({ "data": null, "errors": { name: message } }),
        }
    }
}

type ApiResult = Result<Value, Reply>;

/// Reads one request; `Ok(None)` when the client closed without sending anything.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Option<HttpRequest>, Reply> {
    let Some(head) = read_head(reader)? else {
        return Ok(None);
    };
    let mut lines = head.lines();
    let (method, target) = parse_request_line(lines.next().unwrap_or_default())?;
    let headers = lines
        .filter(|line| !line.is_empty())
        .map(parse_header)
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = HttpRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if request
        .header("Expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let _ = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    request.body = read_body(reader, &request)?;
    Ok(Some(request))
}

/// The request line and headers, up to the empty line, as text.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Option<String>, Reply> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut line)
            .map_err(|_| Reply::error(408, "Request Timeout"))?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(Reply::error(400, "incomplete request head"));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(Reply::error(431, "Request Header Fields Too Large"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let head = String::from_utf8(head).map_err(|_| Reply::error(400, "request head not UTF-8"))?;
    Ok(Some(head))
}

fn parse_request_line(line: &str) -> Result<(String, String), Reply> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reply::error(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Reply::error(400, "malformed method"));
    }
    if !target.starts_with('/') {
        return Err(Reply::error(400, "malformed request target"));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(Reply::error(505, "HTTP Version Not Supported"));
    }
    Ok((method.to_owned(), target.to_owned()))
}

fn parse_header(line: &str) -> Result<(String, String), Reply> {
    match line.split_once(':') {
        Some((name, value)) if !name.is_empty() && !name.contains(' ') => {
            Ok((name.to_owned(), value.trim().to_owned()))
        }
        _ => Err(Reply::error(400, "malformed header line")),
    }
}

fn read_body(reader: &mut BufReader<TcpStream>, request: &HttpRequest) -> Result<Vec<u8>, Reply> {
    if let Some(encoding) = request.header("Transfer-Encoding") {
        if !encoding.eq_ignore_ascii_case("chunked") {
            return Err(Reply::error(501, "unsupported transfer encoding"));
        }
        return read_chunked(reader);
    }
    let Some(length) = request.header("Content-Length") else {
        return Ok(Vec::new());
    };
    let length: usize = length
        .parse()
        .map_err(|_| Reply::error(400, "malformed Content-Length"))?;
    if length > MAX_BODY {
        return Err(Reply::error(413, "Request Entity Too Large"));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|_| Reply::error(400, "body shorter than Content-Length"))?;
    Ok(body)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Reply> {
    let malformed = || Reply::error(400, "malformed chunked body");
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader
            .by_ref()
            .take(1024)
            .read_line(&mut size_line)
            .map_err(|_| malformed())?;
        let size_hex = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| malformed())?;
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(Reply::error(413, "Request Entity Too Large"));
        }
        let mut chunk = vec![0; size + 2];
        if size == 0 {
            // Trailers are not supported: expect the final CRLF.
            chunk.truncate(2);
        }
        reader.read_exact(&mut chunk).map_err(|_| malformed())?;
        if !chunk.ends_with(b"\r\n") {
            return Err(malformed());
        }
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let body = reply.body.to_string();
    let reason: String = reply
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nServer: pve-api-daemon/3.0\r\n\
         Content-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\n\
         Cache-Control: max-age=0\r\nPragma: no-cache\r\nConnection: close\r\n\r\n",
        reply.status,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn parse_raw_response(answer: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        reason,
        headers,
        body: body.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------------------------

fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn form_decode(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(name, true)?, percent_decode(value, true)?))
        })
        .collect()
}

fn form_encode(params: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A file sent to `…/upload`.
struct Upload {
    content: String,
    filename: String,
    size: usize,
}

/// The parameters of a request: query string plus form, JSON or multipart body.
#[derive(Default)]
struct Params {
    map: BTreeMap<String, String>,
    upload: Option<Upload>,
}

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    fn require(&self, name: &str) -> Result<&str, Reply> {
        self.get(name)
            .ok_or_else(|| Reply::bad_param(name, "property is missing and it is not optional"))
    }
}

fn request_params(request: &HttpRequest, query: &str) -> Result<Params, Reply> {
    let malformed = |what: &str| Reply::error(400, format!("malformed {what}"));
    let mut params = Params::default();
    params
        .map
        .extend(form_decode(query).ok_or_else(|| malformed("query string"))?);
    if request.body.is_empty() {
        return Ok(params);
    }
    let content_type = request.header("Content-Type").unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    match mime {
        "application/json" => params.map.extend(json_params(&request.body)?),
        "multipart/form-data" => {
            let (fields, upload) = multipart(content_type, &request.body)?;
            params.map.extend(fields);
            params.upload = upload;
        }
        _ => {
            let body = std::str::from_utf8(&request.body).map_err(|_| malformed("form body"))?;
            params
                .map
                .extend(form_decode(body).ok_or_else(|| malformed("form body"))?);
        }
    }
    Ok(params)
}

/// A flat JSON object of scalars, as Proxmox accepts instead of a form.
fn json_params(body: &[u8]) -> Result<Vec<(String, String)>, Reply> {
    let not_object = || Reply::error(400, "JSON body must be an object of scalars");
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return Err(not_object());
    };
    object
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => s,
                Value::Bool(b) => if b { "1" } else { "0" }.to_owned(),
                Value::Number(n) => n.to_string(),
                _ => return Err(not_object()),
            };
            Ok((name, text))
        })
        .collect()
}

type Fields = Vec<(String, String)>;

/// Text fields and the (first) file of a `multipart/form-data` body.
fn multipart(content_type: &str, body: &[u8]) -> Result<(Fields, Option<Upload>), Reply> {
    let malformed = || Reply::error(400, "malformed multipart body");
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| format!("--{}", b.trim_matches('"')))
        .ok_or_else(malformed)?;
    let mut fields = Vec::new();
    let mut upload = None;
    let parts = split_bytes(body, boundary.as_bytes());
    // Before the first boundary is a preamble; after the last, `--` and an epilogue.
    for part in parts.iter().skip(1) {
        if part.starts_with(b"--") {
            break;
        }
        let part = part.strip_prefix(b"\r\n").ok_or_else(malformed)?;
        let part = part.strip_suffix(b"\r\n").ok_or_else(malformed)?;
        let end = find(part, b"\r\n\r\n").ok_or_else(malformed)?;
        let head = std::str::from_utf8(&part[..end]).map_err(|_| malformed())?;
        let content = &part[end + 4..];
        let name = disposition_param(head, "name").ok_or_else(malformed)?;
        match disposition_param(head, "filename") {
            Some(filename) if upload.is_none() => {
                upload = Some(Upload {
                    content: String::new(),
                    filename,
                    size: content.len(),
                })
            }
            Some(_) => {}
            None => fields.push((
                name,
                String::from_utf8(content.to_vec()).map_err(|_| malformed())?,
            )),
        }
    }
    if let Some(upload) = &mut upload {
        upload.content = fields
            .iter()
            .find(|(n, _)| n == "content")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
    }
    Ok((fields, upload))
}

fn disposition_param(head: &str, name: &str) -> Option<String> {
    let line = head
        .split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    line.split(';').find_map(|p| {
        let (key, value) = p.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes<'a>(mut data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(at) = find(data, separator) {
        parts.push(&data[..at]);
        data = &data[at + separator.len()..];
    }
    parts.push(data);
    parts
}

// ---------------------------------------------------------------------------------------------
// Request handling: auth, routing, recording
// ---------------------------------------------------------------------------------------------

/// The Proxmox API of one request, recorded whatever its outcome.
fn handle(state: &Mutex<State>, request: &HttpRequest) -> Reply {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let mut state = lock(state);
    let decoded = percent_decode(path, false).unwrap_or_else(|| path.to_owned());
    let mut record = RecordedRequest {
        method: request.method.clone(),
        path: match decoded.strip_prefix("/api2/json") {
            Some(below) => below.to_owned(),
            None => decoded.clone(),
        },
        params: BTreeMap::new(),
        auth: Auth::None,
        csrf_ok: false,
        status: 0,
    };
    let reply = match request_params(request, query) {
        Ok(params) => {
            record.params = redacted(&params);
            state.authorised(request, path, &params, &mut record)
        }
        Err(reply) => reply,
    };
    record.status = reply.status;
    state.requests.push(record);
    reply
}

fn redacted(params: &Params) -> BTreeMap<String, String> {
    let mut map = params.map.clone();
    for (name, value) in map.iter_mut() {
        if name.contains("password") {
            *value = "<redacted>".into();
        }
    }
    if let Some(upload) = &params.upload {
        map.insert("filename".into(), upload.filename.clone());
        map.insert("size".into(), upload.size.to_string());
    }
    map
}

struct Session {
    user: String,
    csrf: String,
}

/// A parsed `/api2/json/…` path.
fn api_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/api2/json")?;
    rest.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// State and the API proper
// ---------------------------------------------------------------------------------------------

struct Volume {
    content: &'static str,
    size: u64,
    vmid: Option<u32>,
}

struct State {
    options: PveSimOptions,
    vms: BTreeMap<u32, Vm>,
    volumes: BTreeMap<String, Volume>,
    sessions: HashMap<String, Session>,
    tasks: Vec<Task>,
    requests: Vec<RecordedRequest>,
    counter: u64,
}

/// `(storage, type, content types)` of the simulated node.
const STORAGES: [(&str, &str, &str); 2] = [
    ("local", "dir", "iso,vztmpl,backup"),
    ("local-lvm", "lvmthin", "images,rootdir"),
];

const GIB: u64 = 1024 * 1024 * 1024;

impl State {
    fn new(options: PveSimOptions) -> State {
        let mut state = State {
            options,
            vms: BTreeMap::new(),
            volumes: BTreeMap::new(),
            sessions: HashMap::new(),
            tasks: Vec::new(),
            requests: Vec::new(),
            counter: 0,
        };
        for iso in state.options.isos.clone() {
            state.add_volume(&iso, "iso", 2 * GIB, None);
        }
        for (vmid, name) in state.options.existing_templates.clone() {
            state.seed_template(vmid, &name);
        }
        state
    }

    fn seed_template(&mut self, vmid: u32, name: &str) {
        let disk = format!("local-lvm:base-{vmid}-disk-0");
        self.add_volume(&disk, "images", 20 * GIB, Some(vmid));
        let config = [
            ("name", name.to_owned()),
            ("cores", "2".into()),
            ("sockets", "1".into()),
            ("memory", "2048".into()),
            ("ostype", "l26".into()),
            ("scsihw", "virtio-scsi-pci".into()),
            ("scsi0", format!("{disk},size=20G")),
            ("net0", format!("virtio={},bridge=vmbr0", mac_for(vmid, 0))),
            ("boot", "order=scsi0;net0".into()),
            ("template", "1".into()),
        ];
        let vm = Vm {
            vmid,
            node: self.options.node.clone(),
            config: config.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            create_params: BTreeMap::new(),
            running: false,
            keys: Vec::new(),
            destroyed: false,
        };
        self.vms.insert(vmid, vm);
    }

    fn add_volume(&mut self, volid: &str, content: &'static str, size: u64, vmid: Option<u32>) {
        let volume = Volume {
            content,
            size,
            vmid,
        };
        self.volumes.insert(volid.to_owned(), volume);
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Authenticates, checks CSRF, then routes.
    fn authorised(
        &mut self,
        request: &HttpRequest,
        path: &str,
        params: &Params,
        record: &mut RecordedRequest,
    ) -> Reply {
        let Some(segments) = api_segments(path) else {
            return Reply::error(
                501,
                format!("Method '{} {path}' not implemented", request.method),
            );
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = request.method.as_str();
        if let ("POST", ["access", "ticket"]) = (method, segments.as_slice()) {
            return into_reply(self.login(params));
        }
        let (auth, csrf) = self.caller(request);
        record.auth = auth.clone();
        let user = match auth {
            Auth::Ticket(user) => user,
            Auth::Token(id) => {
                record.csrf_ok = true;
                id
            }
            Auth::None => return Reply::error(401, "No ticket"),
            Auth::Invalid if request.header("Authorization").is_some() => {
                return Reply::error(401, "permission denied - invalid API token");
            }
            Auth::Invalid => return Reply::error(401, "permission denied - invalid PVE ticket"),
        };
        if let Some(csrf_ok) = csrf {
            record.csrf_ok = csrf_ok;
            if method != "GET" && !csrf_ok {
                return Reply::error(401, "Permission denied - invalid csrf token");
            }
        }
        into_reply(self.route(method, &segments, params, &user))
    }

    /// The caller, and for a ticket whether the CSRF token matches.
    fn caller(&self, request: &HttpRequest) -> (Auth, Option<bool>) {
        if let Some(header) = request.header("Authorization") {
            return (self.token_auth(header), None);
        }
        let Some(ticket) = request.headers_named("Cookie").find_map(auth_cookie) else {
            return (Auth::None, None);
        };
        match self.sessions.get(&ticket) {
            Some(session) => {
                let csrf = request.header("CSRFPreventionToken") == Some(session.csrf.as_str());
                (Auth::Ticket(session.user.clone()), Some(csrf))
            }
            None => (Auth::Invalid, None),
        }
    }

    fn token_auth(&self, header: &str) -> Auth {
        let token = header
            .strip_prefix("PVEAPIToken=")
            .and_then(|t| t.split_once('='));
        match (token, &self.options.api_token) {
            (Some((id, secret)), Some(known)) if id == known.id && secret == known.secret => {
                Auth::Token(id.to_owned())
            }
            _ => Auth::Invalid,
        }
    }

    fn route(&mut self, method: &str, segments: &[&str], params: &Params, user: &str) -> ApiResult {
        match (method, segments) {
            ("GET", ["version"]) => Ok(self.version()),
            ("GET", ["nodes"]) => Ok(self.nodes()),
            ("GET", ["cluster", "nextid"]) => self.next_id(params),
            ("GET", ["cluster", "resources"]) => Ok(self.resources(params)),
            (_, ["nodes", node, rest @ ..]) => {
                if *node != self.options.node {
                    return Err(Reply::error(
                        500,
                        format!(
                            "hostname lookup '{node}' failed - failed to get address info for: \
                             {node}: Name or service not known"
                        ),
                    ));
                }
                self.route_node(method, rest, params, user)
            }
            _ => Err(not_implemented(method, segments)),
        }
    }

    fn route_node(
        &mut self,
        method: &str,
        segments: &[&str],
        params: &Params,
        user: &str,
    ) -> ApiResult {
        match (method, segments) {
            ("GET", ["qemu"]) => Ok(self.qemu_list()),
            ("POST", ["qemu"]) => self.qemu_create(params, user),
            (_, ["qemu", vmid, rest @ ..]) => {
                let vmid = parse_vmid(vmid)?;
                self.route_vm(method, vmid, rest, params, user)
            }
            ("GET", ["tasks"]) => Ok(self.task_list()),
            ("GET", ["tasks", upid, "status"]) => self.task_status(upid),
            ("GET", ["tasks", upid, "log"]) => self.task_log(upid),
            ("GET", ["storage"]) => Ok(storage_list()),
            ("GET", ["storage", storage, "content"]) => self.content_list(storage, params),
            ("POST", ["storage", storage, "content"]) => self.allocate_disk(storage, params),
            ("DELETE", ["storage", storage, "content", volume]) => {
                self.delete_volume(storage, volume, user)
            }
            ("POST", ["storage", _, "content", _]) => Err(Reply::bad_param(
                "target",
                "property is missing and it is not optional",
            )),
            ("POST", ["storage", storage, "upload"]) => self.upload(storage, params, user),
            _ => Err(not_implemented(
                method,
                &[&["nodes", "{node}"], segments].concat(),
            )),
        }
    }

    fn route_vm(
        &mut self,
        method: &str,
        vmid: u32,
        segments: &[&str],
        params: &Params,
        user: &str,
    ) -> ApiResult {
        self.existing_vm(vmid)?;
        match (method, segments) {
            ("GET", []) => Ok(vm_index()),
            ("DELETE", []) => self.vm_destroy(vmid, user),
            ("GET", ["config"]) => self.vm_config(vmid),
            ("POST", ["config"]) => self.vm_set_config(vmid, params, Some(user)),
            ("PUT", ["config"]) => self.vm_set_config(vmid, params, None),
            ("GET", ["status", "current"]) => self.vm_status(vmid),
            ("POST", ["status", action]) => self.vm_status_change(vmid, action, user),
            ("POST", ["template"]) => self.vm_template(vmid, user),
            ("PUT", ["sendkey"]) => self.vm_sendkey(vmid, params),
            ("GET", ["agent", "network-get-interfaces"]) => self.vm_agent_interfaces(vmid),
            _ => Err(not_implemented(
                method,
                &[&["nodes", "{node}", "qemu", "{vmid}"], segments].concat(),
            )),
        }
    }

    // --- access, version, cluster --------------------------------------------------------

    fn login(&mut self, params: &Params) -> ApiResult {
        let failure = || Reply::error(401, "authentication failure");
        let mut username = params.require("username")?.to_owned();
        let password = params.require("password")?;
        if let (false, Some(realm)) = (username.contains('@'), params.get("realm")) {
            username = format!("{username}@{realm}");
        }
        let renewal = self
            .sessions
            .get(password)
            .is_some_and(|session| session.user == username);
        if username != self.options.username || (password != self.options.password && !renewal) {
            return Err(failure());
        }
        let stamp = unix_time();
        let n = self.next();
        let ticket = format!(
            "PVE:{username}:{stamp:08X}::{}",
            digest(&(&username, stamp, n, "ticket"))
        );
        let csrf = format!("{stamp:08X}:{}", &digest(&(n, "csrf"))[..27]);
        let session = Session {
            user: username.clone(),
            csrf: csrf.clone(),
        };
        self.sessions.insert(ticket.clone(), session);
        Ok(json!({
            "username": username,
            "ticket": ticket,
            "CSRFPreventionToken": csrf,
            "cap": { "vms": { "VM.Allocate": 1, "VM.Config.Options": 1, "VM.PowerMgmt": 1 } },
        }))
    }

    fn version(&self) -> Value {
        let version = &self.options.version;
        let release = version
            .rsplit_once('.')
            .map_or(version.as_str(), |(r, _)| r);
        json!({ "version": version, "release": release, "repoid": "b46aac3b42da5d15" })
    }

    fn nodes(&self) -> Value {
        let node = &self.options.node;
        json!([{
            "node": node, "id": format!("node/{node}"), "type": "node", "status": "online",
            "maxcpu": 16, "maxmem": 64 * GIB, "cpu": 0.01, "mem": 4 * GIB, "uptime": 86400,
            "level": "",
        }])
    }

    fn next_id(&self, params: &Params) -> ApiResult {
        if let Some(wanted) = params.get("vmid") {
            let vmid = parse_vmid(wanted)?;
            if self.live_vm(vmid).is_some() {
                return Err(Reply::bad_param(
                    "vmid",
                    &format!("VM {vmid} already exists"),
                ));
            }
            return Ok(json!(vmid.to_string()));
        }
        let free = (self.options.next_vmid..)
            .find(|id| self.live_vm(*id).is_none())
            .unwrap_or(self.options.next_vmid);
        Ok(json!(free.to_string()))
    }

    fn resources(&self, params: &Params) -> Value {
        let wanted = params.get("type");
        let mut list = Vec::new();
        if matches!(wanted, None | Some("vm")) {
            list.extend(self.live_vms().map(|vm| self.vm_resource(vm)));
        }
        if matches!(wanted, None | Some("node")) {
            list.extend(self.nodes().as_array().cloned().unwrap_or_default());
        }
        if matches!(wanted, None | Some("storage")) {
            list.extend(STORAGES.iter().map(|(storage, kind, content)| {
                json!({
                    "id": format!("storage/{}/{storage}", self.options.node), "type": "storage",
                    "storage": storage, "node": self.options.node, "plugintype": kind,
                    "content": content, "status": "available", "shared": 0,
                    "maxdisk": 500 * GIB, "disk": 40 * GIB,
                })
            }));
        }
        Value::Array(list)
    }

    fn vm_resource(&self, vm: &Vm) -> Value {
        json!({
            "id": format!("qemu/{}", vm.vmid), "type": "qemu", "vmid": vm.vmid, "node": vm.node,
            "name": vm.get("name").unwrap_or_default(), "status": run_state(vm),
            "template": u8::from(vm.is_template()), "maxcpu": cpus(vm), "maxmem": max_mem(vm),
            "maxdisk": self.disk_bytes(vm), "cpu": 0, "mem": 0, "disk": 0, "uptime": 0,
            "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
        })
    }

    // --- qemu ------------------------------------------------------------------------------

    fn live_vm(&self, vmid: u32) -> Option<&Vm> {
        self.vms.get(&vmid).filter(|vm| !vm.destroyed)
    }

    fn live_vms(&self) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(|vm| !vm.destroyed)
    }

    fn existing_vm(&self, vmid: u32) -> Result<&Vm, Reply> {
        self.live_vm(vmid)
            .ok_or_else(|| missing_vm(&self.options.node, vmid))
    }

    fn vm_mut(&mut self, vmid: u32) -> Result<&mut Vm, Reply> {
        let node = &self.options.node;
        self.vms
            .get_mut(&vmid)
            .filter(|vm| !vm.destroyed)
            .ok_or_else(|| missing_vm(node, vmid))
    }

    fn qemu_list(&self) -> Value {
        Value::Array(
            self.live_vms()
                .map(|vm| {
                    json!({
                        "vmid": vm.vmid, "name": vm.get("name").unwrap_or_default(),
                        "status": run_state(vm), "template": u8::from(vm.is_template()),
                        "cpus": cpus(vm), "maxmem": max_mem(vm), "maxdisk": self.disk_bytes(vm),
                    })
                })
                .collect(),
        )
    }

    fn qemu_create(&mut self, params: &Params, user: &str) -> ApiResult {
        let vmid = parse_vmid(params.require("vmid")?)?;
        check_config_keys(params.map.keys(), CREATE_ONLY_KEYS)?;
        if let Some(CreateFailure::Rejected(reason)) = &self.options.create_failure {
            return Err(Reply::error(500, reason.clone()));
        }
        if self.live_vm(vmid).is_some() {
            return Err(Reply::error(
                500,
                format!(
                    "unable to create VM {vmid} - VM {vmid} already exists on node '{}'",
                    self.options.node
                ),
            ));
        }
        let mut config = BTreeMap::new();
        for (key, value) in &params.map {
            if !CREATE_ONLY_KEYS.contains(&key.as_str()) {
                config.insert(key.clone(), self.normalise(key, value, vmid)?);
            }
        }
        self.add_server_keys(vmid, &mut config);
        let start = params.get("start").is_some_and(is_true);
        let vm = Vm {
            vmid,
            node: self.options.node.clone(),
            config,
            create_params: params.map.clone(),
            running: start,
            keys: Vec::new(),
            destroyed: false,
        };
        self.vms.insert(vmid, vm);
        Ok(json!(self.task("qmcreate", vmid, user, "OK")))
    }

    /// What Proxmox VE 8 adds to a new VM's config.
    fn add_server_keys(&mut self, vmid: u32, config: &mut BTreeMap<String, String>) {
        let n = self.next();
        if !config.contains_key("boot") {
            config.insert("boot".into(), default_boot_order(config));
        }
        config
            .entry("smbios1".into())
            .or_insert_with(|| format!("uuid={}", uuid(&(vmid, n, "smbios"))));
        config
            .entry("vmgenid".into())
            .or_insert_with(|| uuid(&(vmid, n, "vmgenid")));
        config.insert(
            "meta".into(),
            format!("creation-qemu=8.1.5,ctime={}", unix_time()),
        );
    }

    fn vm_destroy(&mut self, vmid: u32, user: &str) -> ApiResult {
        if self.vm_mut(vmid)?.running {
            return Err(Reply::error(
                500,
                format!("VM {vmid} is running - destroy failed"),
            ));
        }
        self.vm_mut(vmid)?.destroyed = true;
        self.volumes.retain(|_, volume| volume.vmid != Some(vmid));
        Ok(json!(self.task("qmdestroy", vmid, user, "OK")))
    }

    fn vm_config(&self, vmid: u32) -> ApiResult {
        let vm = self.existing_vm(vmid)?;
        let mut object = serde_json::Map::new();
        for (key, value) in &vm.config {
            object.insert(key.clone(), config_value(key, value));
        }
        object.insert("digest".into(), json!(config_digest(&vm.config)));
        Ok(Value::Object(object))
    }

    /// POST (asynchronous: a task) or PUT (synchronous: null) `…/config`.
    fn vm_set_config(&mut self, vmid: u32, params: &Params, task_user: Option<&str>) -> ApiResult {
        check_config_keys(params.map.keys(), &["delete", "digest", "revert", "force"])?;
        let current = config_digest(&self.vm_mut(vmid)?.config);
        if params.get("digest").is_some_and(|d| d != current) {
            return Err(Reply::error(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let mut changes = Vec::new();
        for (key, value) in &params.map {
            if !["delete", "digest", "revert", "force"].contains(&key.as_str()) {
                changes.push((key.clone(), self.normalise(key, value, vmid)?));
            }
        }
        let deleted: Vec<String> = params
            .get("delete")
            .unwrap_or_default()
            .split([',', ';', ' '])
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        check_config_keys(deleted.iter(), &[])?;
        let vm = self.vm_mut(vmid)?;
        for key in deleted {
            vm.config.remove(&key);
        }
        vm.config.extend(changes);
        Ok(match task_user {
            Some(user) => json!(self.task("qmconfig", vmid, user, "OK")),
            None => Value::Null,
        })
    }

    fn vm_status(&self, vmid: u32) -> ApiResult {
        let vm = self.existing_vm(vmid)?;
        let mut status = json!({
            "vmid": vmid, "name": vm.get("name").unwrap_or_default(),
            "status": run_state(vm), "qmpstatus": run_state(vm), "cpus": cpus(vm),
            "maxmem": max_mem(vm), "maxdisk": self.disk_bytes(vm), "mem": 0, "cpu": 0,
            "uptime": if vm.running { 42 } else { 0 }, "ha": { "managed": 0 },
            "agent": u8::from(agent_enabled(vm)),
        });
        if vm.is_template() {
            status["template"] = json!(1);
        }
        if vm.running {
            status["pid"] = json!(10_000 + vmid);
        }
        Ok(status)
    }

    fn vm_status_change(&mut self, vmid: u32, action: &str, user: &str) -> ApiResult {
        let vm = self.vm_mut(vmid)?;
        let (kind, running_after) = match action {
            "start" | "resume" => (format!("qm{action}"), true),
            "stop" | "shutdown" | "suspend" => (format!("qm{action}"), false),
            "reboot" | "reset" => (format!("qm{action}"), true),
            _ => {
                return Err(not_implemented(
                    "POST",
                    &["nodes", "{node}", "qemu", "{vmid}", "status", action],
                ));
            }
        };
        if action == "start" && vm.is_template() {
            return Err(Reply::error(500, "you can't start a vm if it's a template"));
        }
        let exitstatus = match (action, vm.running) {
            ("start", true) => format!("VM {vmid} already running"),
            ("reboot" | "reset" | "suspend" | "resume", false) => {
                format!("VM {vmid} not running")
            }
            _ => {
                vm.running = running_after;
                "OK".into()
            }
        };
        Ok(json!(self.task(&kind, vmid, user, &exitstatus)))
    }

    fn vm_template(&mut self, vmid: u32, user: &str) -> ApiResult {
        let vm = self.vm_mut(vmid)?;
        if vm.running {
            return Err(Reply::error(
                500,
                "you can't convert a VM to template if VM is running",
            ));
        }
        if vm.is_template() {
            return Err(Reply::error(
                500,
                "you can't convert a template to a template",
            ));
        }
        vm.config.insert("template".into(), "1".into());
        if self.options.rename_disks_on_template {
            self.rename_disks(vmid)?;
        }
        Ok(json!(self.task("qmtemplate", vmid, user, "OK")))
    }

    /// `local-lvm:vm-9000-disk-0` becomes `local-lvm:base-9000-disk-0`, in the config and on
    /// storage.
    fn rename_disks(&mut self, vmid: u32) -> Result<(), Reply> {
        let from = format!(":vm-{vmid}-disk-");
        let to = format!(":base-{vmid}-disk-");
        let renamed: Vec<String> = self
            .volumes
            .keys()
            .filter(|volid| volid.contains(&from))
            .cloned()
            .collect();
        for volid in renamed {
            if let Some(volume) = self.volumes.remove(&volid) {
                self.volumes.insert(volid.replace(&from, &to), volume);
            }
        }
        for value in self.vm_mut(vmid)?.config.values_mut() {
            *value = value.replace(&from, &to);
        }
        Ok(())
    }

    fn vm_sendkey(&mut self, vmid: u32, params: &Params) -> ApiResult {
        let key = params.require("key")?.to_owned();
        let vm = self.vm_mut(vmid)?;
        if !vm.running {
            return Err(Reply::error(500, format!("VM {vmid} not running")));
        }
        vm.keys.push(key);
        Ok(Value::Null)
    }

    fn vm_agent_interfaces(&mut self, vmid: u32) -> ApiResult {
        let guest_ip = self.options.guest_ip.clone();
        let vm = self.vm_mut(vmid)?;
        if !vm.running {
            return Err(Reply::error(500, format!("VM {vmid} is not running")));
        }
        if !agent_enabled(vm) {
            return Err(Reply::error(500, "No QEMU guest agent configured"));
        }
        let Some(ip) = guest_ip else {
            return Err(Reply::error(500, "QEMU guest agent is not running"));
        };
        let mac = vm
            .get("net0")
            .and_then(|net| net.split(',').next())
            .and_then(|first| first.split_once('='))
            .map_or(String::new(), |(_, mac)| mac.to_ascii_lowercase());
        Ok(json!({ "result": [
            { "name": "lo", "hardware-address": "00:00:00:00:00:00",
              "ip-addresses": [{ "ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8 }] },
            { "name": "eth0", "hardware-address": mac,
              "ip-addresses": [{ "ip-address": ip, "ip-address-type": "ipv4", "prefix": 24 }] },
        ]}))
    }

    // --- config values ---------------------------------------------------------------------

    /// A config value as Proxmox stores it; allocates or checks the volumes it names.
    fn normalise(&mut self, key: &str, value: &str, vmid: u32) -> Result<String, Reply> {
        if is_drive_key(key) {
            self.normalise_drive(key, value, vmid)
        } else if is_indexed(key, "net") {
            normalise_net(key, value, vmid)
        } else if BOOLEAN_KEYS.contains(&key) {
            bool_value(value).ok_or_else(|| Reply::bad_param(key, "type check ('boolean') failed"))
        } else {
            Ok(value.to_owned())
        }
    }

    fn normalise_drive(&mut self, key: &str, value: &str, vmid: u32) -> Result<String, Reply> {
        let mut props = parse_props(key, value, "file")?;
        let file = props
            .remove("file")
            .ok_or_else(|| Reply::bad_param(key, "missing volume"))?;
        let cdrom = props.get("media").map(String::as_str) == Some("cdrom");
        if props.get("media").map(String::as_str) == Some("disk") {
            props.remove("media");
        }
        let file = if cdrom {
            self.cdrom_volume(&file, vmid)?
        } else if let Some(cloudinit) = self.cloudinit_volume(&file, vmid) {
            props.insert("media".into(), "cdrom".into());
            cloudinit
        } else {
            self.disk_volume(&file, vmid, &mut props)?
        };
        Ok(print_props(&file, &props))
    }

    fn cdrom_volume(&mut self, file: &str, vmid: u32) -> Result<String, Reply> {
        if file == "none" || file == "cdrom" {
            return Ok(file.to_owned());
        }
        if let Some(cloudinit) = self.cloudinit_volume(file, vmid) {
            return Ok(cloudinit);
        }
        self.require_volume(file)?;
        Ok(file.to_owned())
    }

    /// `local-lvm:cloudinit` allocates `local-lvm:vm-ID-cloudinit`.
    fn cloudinit_volume(&mut self, file: &str, vmid: u32) -> Option<String> {
        let storage = file.strip_suffix(":cloudinit")?;
        let volid = format!("{storage}:vm-{vmid}-cloudinit");
        self.add_volume(&volid, "images", 4 * 1024 * 1024, Some(vmid));
        Some(volid)
    }

    /// `storage:SIZE` allocates the next `vm-ID-disk-N`; anything else must exist.
    fn disk_volume(
        &mut self,
        file: &str,
        vmid: u32,
        props: &mut BTreeMap<String, String>,
    ) -> Result<String, Reply> {
        let allocation = file
            .split_once(':')
            .and_then(|(storage, size)| Some((storage, size.parse::<u64>().ok()?)));
        if let Some((storage, gib)) = allocation {
            props.insert("size".into(), format!("{gib}G"));
            return self.allocate_volume(storage, gib, vmid);
        }
        let size = self.require_volume(file)?.size;
        props
            .entry("size".into())
            .or_insert_with(|| format!("{}G", size / GIB));
        Ok(file.to_owned())
    }

    fn allocate_volume(&mut self, storage: &str, gib: u64, vmid: u32) -> Result<String, Reply> {
        self.require_storage(storage, "images")?;
        let bytes = gib
            .checked_mul(GIB)
            .ok_or_else(|| Reply::bad_param("size", "too large"))?;
        let volid = (0u32..)
            .map(|n| format!("{storage}:vm-{vmid}-disk-{n}"))
            .find(|volid| !self.volumes.contains_key(volid))
            .unwrap_or_default();
        self.add_volume(&volid, "images", bytes, Some(vmid));
        Ok(volid)
    }

    fn require_volume(&self, volid: &str) -> Result<&Volume, Reply> {
        self.volumes
            .get(volid)
            .ok_or_else(|| Reply::error(500, format!("volume '{volid}' does not exist")))
    }

    fn require_storage(&self, storage: &str, content: &str) -> Result<(), Reply> {
        let Some((_, _, contents)) = STORAGES.iter().find(|(name, _, _)| *name == storage) else {
            return Err(Reply::error(
                500,
                format!("storage '{storage}' does not exist"),
            ));
        };
        if content != STORAGE_ANY && !contents.split(',').any(|c| c == content) {
            return Err(Reply::error(
                500,
                format!("storage '{storage}' does not support content-type '{content}'"),
            ));
        }
        Ok(())
    }

    fn disk_bytes(&self, vm: &Vm) -> u64 {
        vm.config
            .iter()
            .filter(|(key, value)| is_drive_key(key) && !value.contains("media=cdrom"))
            .filter_map(|(_, value)| value.split(',').next())
            .filter_map(|volid| self.volumes.get(volid))
            .map(|volume| volume.size)
            .sum()
    }

    // --- tasks -----------------------------------------------------------------------------

    /// Starts (and finishes) a task; returns its UPID.
    fn task(&mut self, kind: &str, vmid: u32, user: &str, exitstatus: &str) -> String {
        let n = self.next();
        let upid = format!(
            "UPID:{}:{:08X}:{:08X}:{:08X}:{kind}:{vmid}:{user}:",
            self.options.node,
            4000 + n,
            1_000_000 + n,
            unix_time()
        );
        self.tasks.push(Task {
            upid: upid.clone(),
            kind: kind.to_owned(),
            id: vmid.to_string(),
            user: user.to_owned(),
            exitstatus: exitstatus.to_owned(),
        });
        upid
    }

    fn find_task(&self, upid: &str) -> Result<&Task, Reply> {
        self.tasks
            .iter()
            .find(|t| t.upid == upid)
            .ok_or_else(|| Reply::error(500, format!("no such task: '{upid}'")))
    }

    fn task_list(&self) -> Value {
        Value::Array(
            self.tasks
                .iter()
                .map(|t| {
                    json!({ "upid": t.upid, "type": t.kind, "id": t.id, "user": t.user,
                            "node": self.options.node, "status": t.exitstatus })
                })
                .collect(),
        )
    }

    fn task_status(&self, upid: &str) -> ApiResult {
        let task = self.find_task(upid)?;
        Ok(json!({
            "upid": task.upid, "node": self.options.node, "type": task.kind, "id": task.id,
            "user": task.user, "status": "stopped", "exitstatus": task.exitstatus,
            "starttime": unix_time(), "pid": 4000, "pstart": 1_000_000,
        }))
    }

    fn task_log(&self, upid: &str) -> ApiResult {
        let task = self.find_task(upid)?;
        let last = if task.exitstatus == "OK" {
            "TASK OK".to_owned()
        } else {
            format!("TASK ERROR: {}", task.exitstatus)
        };
        Ok(json!([{ "n": 1, "t": last }]))
    }

    // --- storage ---------------------------------------------------------------------------

    fn content_list(&self, storage: &str, params: &Params) -> ApiResult {
        self.require_storage(storage, STORAGE_ANY)?;
        let prefix = format!("{storage}:");
        let list = self
            .volumes
            .iter()
            .filter(|(volid, _)| volid.starts_with(&prefix))
            .filter(|(_, v)| params.get("content").is_none_or(|c| c == v.content))
            .filter(|(_, v)| {
                params
                    .get("vmid")
                    .is_none_or(|id| Some(id) == v.vmid.map(|n| n.to_string()).as_deref())
            })
            .map(|(volid, v)| {
                let format = if v.content == "iso" { "iso" } else { "raw" };
                let mut entry = json!({ "volid": volid, "content": v.content, "format": format,
                                        "size": v.size, "ctime": unix_time() });
                if let Some(vmid) = v.vmid {
                    entry["vmid"] = json!(vmid);
                }
                entry
            })
            .collect();
        Ok(Value::Array(list))
    }

    /// `POST …/content` `vmid, filename, size`: allocates a disk image.
    fn allocate_disk(&mut self, storage: &str, params: &Params) -> ApiResult {
        let vmid = parse_vmid(params.require("vmid")?)?;
        let filename = params.require("filename")?.to_owned();
        let size = params.require("size")?;
        let bytes = size_bytes(size).ok_or_else(|| Reply::bad_param("size", "invalid size"))?;
        self.require_storage(storage, "images")?;
        if let Some(CreateFailure::DiskNotAllocated) = self.options.create_failure {
            return Ok(Value::Null);
        }
        if !filename.starts_with(&format!("vm-{vmid}-")) {
            return Err(Reply::error(
                500,
                format!("illegal name '{filename}' - should be 'vm-{vmid}-*'"),
            ));
        }
        let volid = format!("{storage}:{filename}");
        if self.volumes.contains_key(&volid) {
            return Err(Reply::error(
                500,
                format!("volume '{volid}' already exists"),
            ));
        }
        self.add_volume(&volid, "images", bytes, Some(vmid));
        Ok(json!(volid))
    }

    fn delete_volume(&mut self, storage: &str, volume: &str, user: &str) -> ApiResult {
        self.require_storage(storage, STORAGE_ANY)?;
        let volid = if volume.contains(':') {
            volume.to_owned()
        } else {
            format!("{storage}:{volume}")
        };
        let vmid = self.require_volume(&volid)?.vmid.unwrap_or(0);
        self.volumes.remove(&volid);
        Ok(json!(self.task("imgdel", vmid, user, "OK")))
    }

    fn upload(&mut self, storage: &str, params: &Params, user: &str) -> ApiResult {
        let Some(upload) = &params.upload else {
            return Err(Reply::bad_param(
                "filename",
                "property is missing and it is not optional",
            ));
        };
        let content = match upload.content.as_str() {
            "iso" => "iso",
            "vztmpl" => "vztmpl",
            _ => return Err(Reply::bad_param("content", "value must be iso or vztmpl")),
        };
        self.require_storage(storage, content)?;
        let volid = format!("{storage}:{content}/{}", upload.filename);
        self.add_volume(&volid, content, upload.size as u64, None);
        Ok(json!(self.task("imgcopy", 0, user, "OK")))
    }
}

/// Matches any content type in `require_storage`.
const STORAGE_ANY: &str = "";

fn into_reply(result: ApiResult) -> Reply {
    match result {
        Ok(data) => Reply::data(data),
        Err(reply) => reply,
    }
}

fn missing_vm(node: &str, vmid: u32) -> Reply {
    Reply::error(
        500,
        format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"),
    )
}

fn not_implemented(method: &str, segments: &[&str]) -> Reply {
    Reply::error(
        501,
        format!(
            "Method '{method} /api2/json/{}' not implemented",
            segments.join("/")
        ),
    )
}

fn auth_cookie(header: &str) -> Option<String> {
    header.split(';').find_map(|cookie| {
        let value = cookie.trim().strip_prefix("PVEAuthCookie=")?;
        percent_decode(value, false)
    })
}

fn parse_vmid(text: &str) -> Result<u32, Reply> {
    text.parse::<u32>()
        .ok()
        .filter(|id| (100..1_000_000_000).contains(id))
        .ok_or_else(|| Reply::bad_param("vmid", "value does not look like a valid VM ID"))
}

fn vm_index() -> Value {
    let dirs = [
        "config", "status", "sendkey", "template", "agent", "firewall", "rrd",
    ];
    Value::Array(dirs.iter().map(|d| json!({ "subdir": d })).collect())
}

fn storage_list() -> Value {
    Value::Array(
        STORAGES
            .iter()
            .map(|(storage, kind, content)| {
                json!({ "storage": storage, "type": kind, "content": content, "active": 1,
                        "enabled": 1, "shared": 0, "total": 500 * GIB, "used": 40 * GIB,
                        "avail": 460 * GIB })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The qemu config schema, as far as simulated
// ---------------------------------------------------------------------------------------------

/// Parameters of `POST /nodes/{node}/qemu` that are not config keys.
#[rustfmt::skip]
const CREATE_ONLY_KEYS: &[&str] = &[
    "vmid", "pool", "start", "storage", "unique", "force", "archive", "live-restore",
];

#[rustfmt::skip]
const CONFIG_KEYS: &[&str] = &[
    "acpi", "affinity", "agent", "arch", "args", "audio0", "autostart", "balloon", "bios",
    "boot", "bootdisk", "cdrom", "cicustom", "cipassword", "citype", "ciupgrade", "ciuser",
    "cores", "cpu", "cpulimit", "cpuunits", "description", "efidisk0", "freeze", "hookscript",
    "hotplug", "hugepages", "keyboard", "kvm", "localtime", "lock", "machine", "memory",
    "meta", "migrate_downtime", "migrate_speed", "name", "nameserver", "numa", "onboot",
    "ostype", "protection", "reboot", "rng0", "scsihw", "searchdomain", "shares", "smbios1",
    "smp", "sockets", "spice_enhancements", "sshkeys", "startdate", "startup", "tablet",
    "tags", "tdf", "template", "tpmstate0", "vcpus", "vga", "vmgenid", "vmstatestorage",
    "watchdog",
];

/// Config keys with an index: `net0`, `ide2`, `scsi0`, …
const INDEXED_KEYS: &[&str] = &[
    "hostpci", "ide", "ipconfig", "net", "numa", "parallel", "sata", "scsi", "serial", "unused",
    "usb", "virtio",
];

#[rustfmt::skip]
const BOOLEAN_KEYS: &[&str] = &[
    "acpi", "autostart", "freeze", "kvm", "localtime", "numa", "onboot", "protection",
    "reboot", "tablet", "tdf", "template",
];

/// Returned as JSON numbers by `GET …/config`.
const INTEGER_KEYS: &[&str] = &["balloon", "cores", "cpuunits", "shares", "sockets", "vcpus"];

/// Boolean options inside drive and NIC property strings.
#[rustfmt::skip]
const BOOLEAN_PROPS: &[&str] = &[
    "backup", "firewall", "iothread", "link_down", "replicate", "ro", "shared", "ssd",
];

#[rustfmt::skip]
const NIC_MODELS: &[&str] = &[
    "e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e", "i82551", "i82557b",
    "i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139", "virtio", "vmxnet3",
];

fn is_indexed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_drive_key(key: &str) -> bool {
    ["ide", "sata", "scsi", "virtio"]
        .iter()
        .any(|p| is_indexed(key, p))
        || key == "efidisk0"
        || key == "tpmstate0"
}

/// Unknown keys are a `400`, as in Proxmox's schema check.
fn check_config_keys<'a>(
    keys: impl Iterator<Item = &'a String>,
    also_allowed: &[&str],
) -> Result<(), Reply> {
    for key in keys {
        let known = CONFIG_KEYS.contains(&key.as_str())
            || also_allowed.contains(&key.as_str())
            || INDEXED_KEYS.iter().any(|p| is_indexed(key, p));
        if !known {
            return Err(Reply::bad_param(
                key,
                "property is not defined in schema and the schema does not allow additional \
                 properties",
            ));
        }
    }
    Ok(())
}

fn is_true(value: &str) -> bool {
    bool_value(value).as_deref() == Some("1")
}

fn bool_value(value: &str) -> Option<String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some("1".into()),
        "0" | "false" | "no" | "off" => Some("0".into()),
        _ => None,
    }
}

/// `a,b=c,d=e` with `default_key` naming a bare first value.
fn parse_props(
    key: &str,
    value: &str,
    default_key: &str,
) -> Result<BTreeMap<String, String>, Reply> {
    let mut props = BTreeMap::new();
    for (i, item) in value.split(',').filter(|s| !s.is_empty()).enumerate() {
        let (name, val) = match item.split_once('=') {
            Some((name, val)) => (name.to_owned(), val.to_owned()),
            None if i == 0 => (default_key.to_owned(), item.to_owned()),
            None => return Err(Reply::bad_param(key, &format!("invalid format - '{item}'"))),
        };
        let val = if BOOLEAN_PROPS.contains(&name.as_str()) {
            bool_value(&val).ok_or_else(|| Reply::bad_param(key, "invalid boolean"))?
        } else {
            val
        };
        props.insert(name, val);
    }
    Ok(props)
}

fn print_props(first: &str, props: &BTreeMap<String, String>) -> String {
    std::iter::once(first.to_owned())
        .chain(props.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// `virtio=MAC,bridge=…,…` whether the NIC came as `model=MAC` or `model=…,macaddr=…`.
fn normalise_net(key: &str, value: &str, vmid: u32) -> Result<String, Reply> {
    let mut props = parse_props(key, value, "model")?;
    let named_model = props.remove("model");
    let shorthand = props
        .keys()
        .find(|k| NIC_MODELS.contains(&k.as_str()))
        .cloned();
    let (model, mac) = match (shorthand, named_model) {
        (Some(model), _) => {
            let mac = props.remove(&model).unwrap_or_default();
            (model, mac)
        }
        (None, Some(model)) if NIC_MODELS.contains(&model.as_str()) => {
            (model, props.remove("macaddr").unwrap_or_default())
        }
        _ => return Err(Reply::bad_param(key, "invalid network device model")),
    };
    let index = key.trim_start_matches("net").parse().unwrap_or(0);
    let mac = if mac.is_empty() {
        mac_for(vmid, index)
    } else {
        mac.to_ascii_uppercase()
    };
    Ok(print_props(&format!("{model}={mac}"), &props))
}

/// A stable MAC in Proxmox's `BC:24:11` range.
fn mac_for(vmid: u32, index: u32) -> String {
    let [_, a, b, c] = (vmid.wrapping_mul(16).wrapping_add(index)).to_be_bytes();
    format!("BC:24:11:{a:02X}:{b:02X}:{c:02X}")
}

/// PVE ≥ 7 without `boot`: the first disk, then CD-ROMs, then NICs.
fn default_boot_order(config: &BTreeMap<String, String>) -> String {
    let disk = config
        .iter()
        .find(|(k, v)| is_drive_key(k) && !v.contains("media=cdrom"))
        .map(|(k, _)| k.clone());
    let cdroms = config
        .iter()
        .filter(|(k, v)| is_drive_key(k) && v.contains("media=cdrom"))
        .map(|(k, _)| k.clone());
    let nics = config.keys().filter(|k| is_indexed(k, "net")).cloned();
    let order: Vec<String> = disk.into_iter().chain(cdroms).chain(nics).collect();
    format!("order={}", order.join(";"))
}

fn config_value(key: &str, value: &str) -> Value {
    let numeric = INTEGER_KEYS.contains(&key) || BOOLEAN_KEYS.contains(&key);
    match value.parse::<i64>() {
        Ok(n) if numeric => json!(n),
        _ => json!(value),
    }
}

fn size_bytes(size: &str) -> Option<u64> {
    let (number, unit) = match size.char_indices().last()? {
        (at, c) if c.is_ascii_alphabetic() => (&size[..at], c.to_ascii_uppercase()),
        _ => (size, 'K'),
    };
    let n: u64 = number.parse().ok()?;
    let factor = match unit {
        'K' => 1024,
        'M' => 1024 * 1024,
        'G' => GIB,
        'T' => 1024 * GIB,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn run_state(vm: &Vm) -> &'static str {
    if vm.running { "running" } else { "stopped" }
}

fn agent_enabled(vm: &Vm) -> bool {
    vm.get("agent")
        .and_then(|a| a.split(',').next())
        .is_some_and(|first| matches!(first, "1" | "enabled=1"))
}

fn cpus(vm: &Vm) -> u64 {
    let get = |k: &str| vm.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1);
    get("sockets") * get("cores")
}

fn max_mem(vm: &Vm) -> u64 {
    let mib = vm
        .get("memory")
        .and_then(|m| m.split(',').next())
        .and_then(|m| m.trim_start_matches("current=").parse::<u64>().ok())
        .unwrap_or(512);
    mib * 1024 * 1024
}

// ---------------------------------------------------------------------------------------------
// Identifiers
// ---------------------------------------------------------------------------------------------

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hash64(value: &impl Hash, salt: u8) -> u64 {
    let mut hasher = DefaultHasher::new();
    salt.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

/// 40 hex digits, shaped like Proxmox's SHA-1 digests (not one).
fn digest(value: &impl Hash) -> String {
    format!(
        "{:016x}{:016x}{:08x}",
        hash64(value, 1),
        hash64(value, 2),
        hash64(value, 3) as u32
    )
}

fn config_digest(config: &BTreeMap<String, String>) -> String {
    digest(config)
}

fn uuid(value: &impl Hash) -> String {
    let d = digest(value);
    format!(
        "{}-{}-4{}-8{}-{}",
        &d[0..8],
        &d[8..12],
        &d[13..16],
        &d[17..20],
        &d[20..32]
    )
}
