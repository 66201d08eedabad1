//! Facts from the Proxmox VE API: once a build is over, the VM it made is read back from the
//! cluster (`GET /nodes/{node}/qemu/{vmid}/config`) and its hardware recorded — cores, sockets,
//! memory, CPU type, OS type, name, template flag, disks, CD-ROMs and network adapters.
//!
//! Configured from the environment, as Packer's `proxmox` builders are: `PROXMOX_URL` (with or
//! without the `/api2/json` suffix), and either an API token (`PROXMOX_TOKEN`) or a user name
//! and password (`PROXMOX_USERNAME`, `PROXMOX_PASSWORD`, exchanged for a ticket). TLS is
//! verified against Mozilla's roots, or against the CAs of `PROXMOX_CA_FILE`; only
//! `PROXMOX_INSECURE=1` turns verification off. Requests go to the configured URL only (no
//! proxy, no redirect), with bounded timeouts.
//!
//! This stage never fails a run: whatever goes wrong (no route, TLS, 401, a timeout, an answer
//! that is not the expected JSON) becomes a warning. And it must never leak a credential: the
//! password, the token secret, the ticket and the CSRF token are held in [`Secret`]s that do
//! not print, every message is built from the URL, the node and the VMID only, and is scrubbed
//! of every secret before it leaves this module, so none can reach proof.json, README.md, the
//! stored log, the console or an error message.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use ureq::http::{Response, StatusCode};
use ureq::tls::{PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use crate::facts::{FactSet, Source};

/// Time allowed to open a connection (TLS handshake included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one whole request, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a VM config is a few kilobytes).
const MAX_ANSWER: u64 = 8 * 1024 * 1024;

/// A credential: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How requests authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: PVEAPIToken={id}={secret}`; `id` is `user@realm!tokenid`.
    Token { id: String, secret: Secret },
    /// A ticket from `POST /access/ticket`, sent as the `PVEAuthCookie` cookie with its
    /// `CSRFPreventionToken`.
    Password { username: String, password: Secret },
}

/// Which certificates the server's must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Mozilla's root certificates, built in.
    Default,
    /// The certificates of this PEM file (`PROXMOX_CA_FILE`).
    CaFile(PathBuf),
    /// No verification at all (`PROXMOX_INSECURE=1`).
    Insecure,
}

/// Where the API is and how to talk to it.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `scheme://host[:port]/…/api2/json`, without a trailing slash.
    base: String,
    pub credentials: Credentials,
    pub trust: Trust,
}

impl ApiConfig {
    /// The configuration in the environment: `None` when `PROXMOX_URL` is unset or empty; an
    /// error (to be shown as a warning) when it is set but unusable, or the credentials are
    /// missing or incomplete. Error messages never quote a credential.
    pub fn from_env() -> Option<Result<ApiConfig, String>> {
        ApiConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// [`ApiConfig::from_env`] with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Result<ApiConfig, String>> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let url = var("PROXMOX_URL")?;
        Some(ApiConfig::parse(url.trim(), &var))
    }

    fn parse(url: &str, var: &impl Fn(&str) -> Option<String>) -> Result<ApiConfig, String> {
        let base = api_base(url)?;
        let credentials = credentials(var)?;
        let trust = if var("PROXMOX_INSECURE").is_some_and(|v| is_yes(&v)) {
            Trust::Insecure
        } else if let Some(file) = var("PROXMOX_CA_FILE") {
            Trust::CaFile(PathBuf::from(file))
        } else {
            Trust::Default
        };
        Ok(ApiConfig {
            base,
            credentials,
            trust,
        })
    }

    /// The API's base URL, `…/api2/json`: safe to show (it never holds credentials).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Every secret value, for [`scrub`].
    fn secrets(&self) -> Vec<String> {
        match &self.credentials {
            Credentials::Token { secret, .. } => vec![secret.expose().to_owned()],
            Credentials::Password { password, .. } => vec![password.expose().to_owned()],
        }
    }
}

fn is_yes(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// `PROXMOX_URL` as `scheme://authority/…/api2/json`: http or https, no user info, no query.
fn api_base(url: &str) -> Result<String, String> {
    let example = "such as https://pve.example.com:8006/api2/json";
    // A URL with user info may hold a password: it is never quoted.
    let shown = if url.contains('@') {
        "(not shown)".to_owned()
    } else {
        format!("{url:?}")
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("PROXMOX_URL {shown} is not an http:// or https:// URL {example}")
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "PROXMOX_URL {shown} must name a host and no credentials, {example}"
        ));
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "PROXMOX_URL {shown} is not a plain API URL {example}"
        ));
    }
    let trimmed = url.trim_end_matches('/');
    Ok(if trimmed.ends_with("/api2/json") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/api2/json")
    })
}

const TOKEN_FORMAT: &str = "PROXMOX_TOKEN must be user@realm!tokenid=secret, e.g. \
    packer@pve!git-evidence=<secret> (or the secret alone, with PROXMOX_USERNAME=user@realm!tokenid)";

/// The credentials: `PROXMOX_TOKEN` (`user@realm!tokenid=secret`, or the secret alone with
/// `PROXMOX_USERNAME=user@realm!tokenid`, as Packer's proxmox plugin takes them) first, else
/// `PROXMOX_USERNAME` and `PROXMOX_PASSWORD`.
fn credentials(var: &impl Fn(&str) -> Option<String>) -> Result<Credentials, String> {
    let username = var("PROXMOX_USERNAME").map(|u| u.trim().to_owned());
    if let Some(token) = var("PROXMOX_TOKEN") {
        let token = token.trim();
        let (id, secret) = match token.split_once('=') {
            Some((id, secret)) => (id.to_owned(), secret.to_owned()),
            None => match &username {
                Some(user) if user.contains('!') => (user.clone(), token.to_owned()),
                _ => return Err(TOKEN_FORMAT.into()),
            },
        };
        let id_ok = id
            .split_once('!')
            .is_some_and(|(user, name)| user.contains('@') && !name.is_empty());
        if !id_ok || secret.is_empty() {
            return Err(TOKEN_FORMAT.into());
        }
        return Ok(Credentials::Token {
            id,
            secret: Secret(secret),
        });
    }
    match (username, var("PROXMOX_PASSWORD")) {
        (Some(username), Some(password)) => Ok(Credentials::Password {
            username,
            password: Secret(password),
        }),
        (Some(_), None) => Err("PROXMOX_USERNAME is set but PROXMOX_PASSWORD is not".into()),
        (None, Some(_)) => Err("PROXMOX_PASSWORD is set but PROXMOX_USERNAME is not".into()),
        (None, None) => Err(
            "PROXMOX_URL is set but no credentials are: set PROXMOX_TOKEN, or PROXMOX_USERNAME \
             and PROXMOX_PASSWORD"
                .into(),
        ),
    }
}

/// Replaces every secret in `text` with `<redacted>`: the last guard before a message leaves.
fn scrub(mut text: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "<redacted>");
        }
    }
    text
}

/// Why the API could not be read. The message names the request and its URL, never a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(String);

/// An authenticated connection to the API: the agent and what every request must carry.
pub struct Session<'a> {
    cfg: &'a ApiConfig,
    agent: Agent,
    /// `Authorization`, or `Cookie` and `CSRFPreventionToken`.
    headers: Vec<(&'static str, Secret)>,
    secrets: Vec<String>,
}

impl fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.cfg.url())
            .finish_non_exhaustive()
    }
}

impl<'a> Session<'a> {
    /// Prepares the client and authenticates: an API token needs no request, a password is
    /// exchanged for a ticket (`POST /access/ticket`).
    pub fn open(cfg: &'a ApiConfig) -> Result<Session<'a>, ApiError> {
        let secrets = cfg.secrets();
        let agent = agent(cfg).map_err(|e| ApiError(scrub(e, &secrets)))?;
        let mut session = Session {
            cfg,
            agent,
            headers: Vec::new(),
            secrets,
        };
        match &cfg.credentials {
            Credentials::Token { id, secret } => {
                let value = format!("PVEAPIToken={id}={}", secret.expose());
                session.secrets.push(value.clone());
                session.headers.push(("Authorization", Secret(value)));
            }
            Credentials::Password { username, password } => {
                session.login(username, password)?;
            }
        }
        Ok(session)
    }

    fn login(&mut self, username: &str, password: &Secret) -> Result<(), ApiError> {
        let url = format!("{}/access/ticket", self.cfg.url());
        let what = format!(
            "cannot log in to {} as {username} (POST {url})",
            self.cfg.url()
        );
        let answer = self
            .agent
            .post(&url)
            .send_form([("username", username), ("password", password.expose())]);
        let data = self.data(&what, answer)?;
        let field = |name: &str| {
            data.get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (Some(ticket), Some(csrf)) = (field("ticket"), field("CSRFPreventionToken")) else {
            return Err(self.error(format!(
                "{what}: the answer has no ticket or no CSRFPreventionToken"
            )));
        };
        let cookie = format!("PVEAuthCookie={ticket}");
        self.secrets.extend([ticket, csrf.clone(), cookie.clone()]);
        self.headers.push(("Cookie", Secret(cookie)));
        self.headers.push(("CSRFPreventionToken", Secret(csrf)));
        Ok(())
    }

    /// `GET /nodes/{node}/qemu/{vmid}/config`: the VM's configuration as Proxmox stores it.
    pub fn vm_config(&self, node: &str, vmid: u64) -> Result<Map<String, Value>, ApiError> {
        let url = format!("{}/nodes/{node}/qemu/{vmid}/config", self.cfg.url());
        let what = format!("cannot read the configuration of VM {vmid} (GET {url})");
        if !valid_node(node) {
            return Err(self.error(format!("{what}: {node:?} is not a node name")));
        }
        match self.get(&what, &url, &[])? {
            Value::Object(config) => Ok(config),
            other => Err(self.error(format!(
                "{what}: expected an object in \"data\", got {}",
                kind_of(&other)
            ))),
        }
    }

    /// The node VM `vmid` is on, from `GET /cluster/resources?type=vm`; `None` when the
    /// cluster does not list it.
    pub fn find_node(&self, vmid: u64) -> Result<Option<String>, ApiError> {
        let url = format!("{}/cluster/resources", self.cfg.url());
        let what = format!("cannot find the node of VM {vmid} (GET {url}?type=vm)");
        let list = self.get(&what, &url, &[("type", "vm")])?;
        let Value::Array(list) = list else {
            return Err(self.error(format!(
                "{what}: expected an array in \"data\", got {}",
                kind_of(&list)
            )));
        };
        Ok(list
            .iter()
            .filter(|r| r.get("type").and_then(Value::as_str) != Some("lxc"))
            .find(|r| r.get("vmid").and_then(integer) == Some(vmid))
            .and_then(|r| r.get("node").and_then(Value::as_str))
            .filter(|n| valid_node(n))
            .map(str::to_owned))
    }

    fn get(&self, what: &str, url: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        let mut request = self.agent.get(url);
        for (name, value) in query {
            request = request.query(*name, *value);
        }
        for (name, value) in &self.headers {
            request = request.header(*name, value.expose());
        }
        self.data(what, request.call())
    }

    /// The `data` of a Proxmox answer, or what went wrong.
    fn data(
        &self,
        what: &str,
        answer: Result<Response<Body>, ureq::Error>,
    ) -> Result<Value, ApiError> {
        let url = self.cfg.url();
        let mut response =
            answer.map_err(|e| self.error(format!("{what}: {}", describe(&e, url))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.error(format!("{what}: {}", describe_status(status))));
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.error(format!("{what}: {}", describe(&e, url))))?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("{what}: the answer is not JSON ({e})")))?;
        match doc {
            Value::Object(mut map) => match map.remove("data") {
                Some(Value::Null) | None => {
                    Err(self.error(format!("{what}: the answer has no \"data\"")))
                }
                Some(data) => Ok(data),
            },
            other => Err(self.error(format!(
                "{what}: expected a JSON object, got {}",
                kind_of(&other)
            ))),
        }
    }

    fn error(&self, message: String) -> ApiError {
        ApiError(scrub(message, &self.secrets))
    }
}

/// The VM's configuration, in one call (see [`Session`]).
pub fn vm_config(cfg: &ApiConfig, node: &str, vmid: u64) -> Result<Map<String, Value>, ApiError> {
    Session::open(cfg)?.vm_config(node, vmid)
}

/// An agent that talks to the configured URL only: no proxy, no redirects, bounded timeouts.
fn agent(cfg: &ApiConfig) -> Result<Agent, String> {
    let tls = match &cfg.trust {
        Trust::Default => TlsConfig::builder().build(),
        Trust::Insecure => TlsConfig::builder().disable_verification(true).build(),
        Trust::CaFile(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read PROXMOX_CA_FILE {}: {e}", path.display()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(PemItem::Certificate(cert)) => certs.push(cert),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!(
                            "PROXMOX_CA_FILE {} is not a PEM file: {e}",
                            path.display()
                        ));
                    }
                }
            }
            if certs.is_empty() {
                return Err(format!(
                    "PROXMOX_CA_FILE {} holds no PEM certificate",
                    path.display()
                ));
            }
            TlsConfig::builder()
                .root_certs(RootCerts::Specific(Arc::new(certs)))
                .build()
        }
    };
    Ok(Agent::config_builder()
        .tls_config(tls)
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .user_agent(concat!("git-evidence/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

/// A transport error in words.
fn describe(error: &ureq::Error, url: &str) -> String {
    let tls = |text: String| {
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            format!(
                "TLS: {text} (PROXMOX_CA_FILE names the CA that signed the server's \
                 certificate; PROXMOX_INSECURE=1 turns verification off)"
            )
        } else {
            format!("TLS: {text}")
        }
    };
    match error {
        // rustls reports handshake failures as invalid data on the socket.
        ureq::Error::Io(e)
            if url.starts_with("https://") && e.kind() == std::io::ErrorKind::InvalidData =>
        {
            tls(e.to_string())
        }
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Rustls(e) => tls(e.to_string()),
        ureq::Error::Tls(e) => tls(e.to_string()),
        ureq::Error::BodyExceedsLimit(n) => format!("the answer is larger than {n} bytes"),
        other => other.to_string(),
    }
}

/// An HTTP status other than 2xx in words.
fn describe_status(status: StatusCode) -> String {
    let mut text = format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if status == StatusCode::UNAUTHORIZED {
        text.push_str(
            " (check PROXMOX_TOKEN, or PROXMOX_USERNAME and PROXMOX_PASSWORD, and the user's \
             permissions)",
        );
    } else if status.is_redirection() {
        text.push_str(" (redirects are not followed: check PROXMOX_URL)");
    }
    text.trim_end().to_owned()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Proxmox node names are host names.
fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// An integer from a JSON number or a numeric string (Proxmox versions differ).
fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// From a VM config to facts
// ---------------------------------------------------------------------------------------------

/// Splits a Proxmox property string (`virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,tag=20`,
/// `local-lvm:vm-9000-disk-0,size=20G`) into `(key, value)` pairs in order; a first item
/// without `=` is the value of `default_key`.
pub fn parse_property_string(text: &str, default_key: &str) -> Vec<(String, String)> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .enumerate()
        .map(|(i, item)| match item.split_once('=') {
            Some((key, value)) => (key.trim().to_owned(), value.trim().to_owned()),
            None if i == 0 => (default_key.to_owned(), item.to_owned()),
            None => (item.to_owned(), String::new()),
        })
        .collect()
}

fn prop<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A config value as text (property strings are strings; some numbers come as numbers).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `scsi12` → `Some(("scsi", 12))` for the given prefixes.
fn slot<'a>(key: &'a str, prefixes: &[&'a str]) -> Option<(&'a str, u32)> {
    prefixes.iter().find_map(|p| {
        let n = key.strip_prefix(p)?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse().ok().map(|n| (*p, n)))
            .flatten()
    })
}

/// The keys of `config` in slot order (`scsi2` before `scsi10`), for these prefixes.
fn slots<'a>(config: &'a Map<String, Value>, prefixes: &[&'a str]) -> Vec<(&'a str, &'a Value)> {
    let mut found: Vec<_> = config
        .iter()
        .filter_map(|(k, v)| {
            let order = slot(k, prefixes)?;
            let rank = prefixes.iter().position(|p| *p == order.0)?;
            Some(((rank, order.1), k.as_str(), v))
        })
        .collect();
    found.sort_by_key(|(order, _, _)| *order);
    found.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// NIC properties that are not a model.
const NET_KEYS: &[&str] = &[
    "bridge",
    "firewall",
    "link_down",
    "macaddr",
    "model",
    "mtu",
    "queues",
    "rate",
    "tag",
    "trunks",
];

/// The facts of a VM config: `cores`, `sockets`, `memory` (MiB), `cpu`, `ostype`, `name`,
/// `template`, `disks` (`[{slot, volume, storage, size}]`), `cdroms` (`[{slot, volume}]`) and
/// `networks` (`[{slot, model, mac, bridge, vlan}]`). Keys absent from the config are left
/// out, except `template` (absent means not a template) and the three lists.
pub fn facts_from_config(config: &Map<String, Value>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let number_or_text = |value: &Value, default_key: &str| -> Value {
        let raw = text(value);
        let props = parse_property_string(&raw, default_key);
        match prop(&props, default_key).and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => Value::from(n),
            None => Value::from(raw),
        }
    };
    for key in ["cores", "sockets"] {
        if let Some(v) = config.get(key) {
            out.push((key.into(), number_or_text(v, key)));
        }
    }
    if let Some(v) = config.get("memory") {
        // PVE ≥ 8.1 allows `current=2048`; versions send a number or a string.
        out.push(("memory".into(), number_or_text(v, "current")));
    }
    if let Some(v) = config.get("cpu") {
        let raw = text(v);
        let props = parse_property_string(&raw, "cputype");
        let cpu = prop(&props, "cputype").map(str::to_owned).unwrap_or(raw);
        out.push(("cpu".into(), Value::from(cpu)));
    }
    for key in ["ostype", "name"] {
        if let Some(v) = config.get(key) {
            out.push((key.into(), Value::from(text(v))));
        }
    }
    let template = config.get("template").is_some_and(|v| match v {
        Value::Bool(b) => *b,
        other => is_yes(&text(other)),
    });
    out.push(("template".into(), Value::from(template)));

    let mut disks = Vec::new();
    let mut cdroms = Vec::new();
    for (key, value) in slots(config, &["ide", "sata", "scsi", "virtio"]) {
        let props = parse_property_string(&text(value), "file");
        let volume = prop(&props, "file").unwrap_or_default();
        if prop(&props, "media") == Some("cdrom") || volume == "cdrom" {
            cdroms.push(json!({ "slot": key, "volume": volume }));
        } else {
            let storage = volume
                .split_once(':')
                .map(|(storage, _)| storage)
                .filter(|s| !s.is_empty() && !s.starts_with('/'));
            disks.push(json!({
                "slot": key,
                "volume": volume,
                "storage": storage,
                "size": prop(&props, "size"),
            }));
        }
    }
    out.push(("disks".into(), Value::from(disks)));
    out.push(("cdroms".into(), Value::from(cdroms)));

    let mut networks = Vec::new();
    for (key, value) in slots(config, &["net"]) {
        let props = parse_property_string(&text(value), "model");
        // `virtio=MAC` names the model by its key; `model=virtio,macaddr=MAC` is the long form.
        let (model, mac) = match props.first() {
            Some((k, v)) if !NET_KEYS.contains(&k.as_str()) => (Some(k.as_str()), Some(v.as_str())),
            _ => (prop(&props, "model"), prop(&props, "macaddr")),
        };
        let vlan = prop(&props, "tag").map(|t| match t.parse::<u64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::from(t),
        });
        networks.push(json!({
            "slot": key,
            "model": model,
            "mac": mac.filter(|m| !m.is_empty()),
            "bridge": prop(&props, "bridge"),
            "vlan": vlan,
        }));
    }
    out.push(("networks".into(), Value::from(networks)));
    out
}

// ---------------------------------------------------------------------------------------------
// The stage
// ---------------------------------------------------------------------------------------------

/// When `PROXMOX_URL` is set, reads the configuration of the VM the facts so far name (`vmid`,
/// and `node` — looked up in the cluster when no other source gave it) and offers its facts
/// as [`Source::ProxmoxApi`]. Returns the warnings, each starting `Proxmox API: `; never fails.
pub fn offer_facts(set: &mut FactSet) -> Vec<String> {
    let warn = |message: String| vec![format!("Proxmox API: {message}")];
    let cfg = match ApiConfig::from_env() {
        None => return Vec::new(),
        Some(Err(e)) => return warn(e),
        Some(Ok(cfg)) => cfg,
    };
    let Some(vmid) = set.get("vmid").and_then(integer) else {
        return warn(format!(
            "no VMID is known (from the log, the manifest, the facts file or --fact), so no VM \
             configuration was read from {}",
            cfg.url()
        ));
    };
    let session = match Session::open(&cfg) {
        Ok(s) => s,
        Err(e) => return warn(e.to_string()),
    };
    let known = set
        .get("node")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let node = match known {
        Some(node) => node,
        None => match session.find_node(vmid) {
            Ok(Some(node)) => {
                set.offer("node", Value::from(node.as_str()), Source::ProxmoxApi);
                node
            }
            Ok(None) => {
                return warn(format!(
                    "no node is known (--node, PROXMOX_NODE or a fact) and {} lists no VM {vmid}",
                    cfg.url()
                ));
            }
            Err(e) => return warn(e.to_string()),
        },
    };
    match session.vm_config(&node, vmid) {
        Ok(config) => {
            tracing::info!(
                "read the configuration of VM {vmid} on {node} from {}",
                cfg.url()
            );
            set.offer_all(facts_from_config(&config), Source::ProxmoxApi);
            Vec::new()
        }
        Err(e) => warn(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn config(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn facts(value: Value) -> BTreeMap<String, Value> {
        facts_from_config(&config(value)).into_iter().collect()
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn property_strings_split_into_ordered_pairs() {
        let pairs = |s: &str, d: &str| -> Vec<(String, String)> { parse_property_string(s, d) };
        let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            pairs(
                "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=0,tag=20",
                "model"
            ),
            owned(&[
                ("virtio", "BC:24:11:AA:BB:CC"),
                ("bridge", "vmbr0"),
                ("firewall", "0"),
                ("tag", "20")
            ])
        );
        assert_eq!(
            pairs("local-lvm:vm-9000-disk-0,iothread=0,size=20G", "file"),
            owned(&[
                ("file", "local-lvm:vm-9000-disk-0"),
                ("iothread", "0"),
                ("size", "20G")
            ])
        );
        assert_eq!(
            pairs("local:iso/ubuntu-22.04.iso,media=cdrom", "file"),
            owned(&[("file", "local:iso/ubuntu-22.04.iso"), ("media", "cdrom")])
        );
        assert_eq!(
            pairs("none,media=cdrom", "file"),
            owned(&[("file", "none"), ("media", "cdrom")])
        );
        assert_eq!(pairs("2048", "current"), owned(&[("current", "2048")]));
        assert_eq!(
            pairs("current=4096", "current"),
            owned(&[("current", "4096")])
        );
        assert_eq!(pairs("", "file"), owned(&[]));
        assert_eq!(pairs("a,,b", "file"), owned(&[("file", "a"), ("b", "")]));
    }

    #[test]
    fn a_packer_template_config_becomes_facts() {
        // What the simulator (and Proxmox VE 8) answers for the template Packer made.
        let f = facts(json!({
            "name": "ubuntu-22.04-base", "cores": 2, "sockets": 1, "memory": "2048",
            "cpu": "host", "ostype": "l26", "template": 1, "agent": "1", "kvm": 1,
            "scsihw": "virtio-scsi-pci", "boot": "order=scsi0;ide2;net0",
            "ide2": "local:iso/ubuntu-22.04.iso,media=cdrom",
            "ide3": "local-lvm:vm-9000-cloudinit,media=cdrom",
            "scsi0": "local-lvm:vm-9000-disk-0,iothread=0,size=20G",
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=0,tag=20",
            "digest": "0123456789abcdef0123456789abcdef01234567",
        }));
        assert_eq!(f["cores"], 2);
        assert_eq!(f["sockets"], 1);
        assert_eq!(f["memory"], 2048, "a string becomes a number");
        assert_eq!(f["cpu"], "host");
        assert_eq!(f["ostype"], "l26");
        assert_eq!(f["name"], "ubuntu-22.04-base");
        assert_eq!(f["template"], true);
        assert_eq!(
            f["disks"],
            json!([{"slot": "scsi0", "volume": "local-lvm:vm-9000-disk-0",
                    "storage": "local-lvm", "size": "20G"}])
        );
        assert_eq!(
            f["cdroms"],
            json!([
                {"slot": "ide2", "volume": "local:iso/ubuntu-22.04.iso"},
                {"slot": "ide3", "volume": "local-lvm:vm-9000-cloudinit"},
            ])
        );
        assert_eq!(
            f["networks"],
            json!([{"slot": "net0", "model": "virtio", "mac": "BC:24:11:AA:BB:CC",
                    "bridge": "vmbr0", "vlan": 20}])
        );
        let keys: Vec<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cdroms", "cores", "cpu", "disks", "memory", "name", "networks", "ostype",
                "sockets", "template"
            ],
            "nothing else: no digest, boot order or agent"
        );
        for key in keys {
            assert!(crate::facts::valid_key(key), "{key}");
        }
    }

    #[test]
    fn values_come_as_numbers_or_strings_and_slots_sort_by_number() {
        let f = facts(json!({
            "cores": "4", "sockets": 2, "memory": 8192, "template": "0",
            "cpu": "cputype=x86-64-v2-AES,flags=+aes",
            "scsi10": "local-lvm:vm-1-disk-2,size=1G",
            "scsi2": "local-lvm:vm-1-disk-1,size=2G",
            "virtio0": "/dev/disk/by-id/ata-X,size=100G",
            "sata1": "ceph:vm-1-disk-3",
            "ide0": "cdrom,media=cdrom",
            "ide2": "none,media=cdrom",
            "net1": "model=e1000,macaddr=aa:bb:cc:dd:ee:ff,bridge=vmbr1",
            "net0": "virtio,bridge=vmbr0",
            "net10": "vmxnet3=02:00:00:00:00:01,bridge=vmbr2,tag=100",
            "netx": "ignored",
            "unused0": "local-lvm:vm-1-disk-9",
        }));
        assert_eq!(f["cores"], 4);
        assert_eq!(f["sockets"], 2);
        assert_eq!(f["memory"], 8192);
        assert_eq!(f["template"], false);
        assert_eq!(f["cpu"], "x86-64-v2-AES");
        let slots = |list: &Value| -> Vec<String> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|d| d["slot"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(slots(&f["disks"]), ["sata1", "scsi2", "scsi10", "virtio0"]);
        assert_eq!(f["disks"][0]["size"], Value::Null);
        assert_eq!(f["disks"][0]["storage"], "ceph");
        assert_eq!(f["disks"][3]["storage"], Value::Null, "a raw device");
        assert_eq!(
            f["cdroms"],
            json!([{"slot": "ide0", "volume": "cdrom"}, {"slot": "ide2", "volume": "none"}])
        );
        assert_eq!(slots(&f["networks"]), ["net0", "net1", "net10"]);
        assert_eq!(
            f["networks"][0],
            json!({"slot": "net0", "model": "virtio", "mac": null, "bridge": "vmbr0",
                   "vlan": null})
        );
        assert_eq!(f["networks"][1]["model"], "e1000");
        assert_eq!(f["networks"][1]["mac"], "aa:bb:cc:dd:ee:ff");
        assert_eq!(f["networks"][2]["model"], "vmxnet3");
        assert_eq!(f["networks"][2]["vlan"], 100);
    }

    #[test]
    fn memory_as_a_property_string_and_odd_values_are_kept() {
        let f = facts(json!({ "memory": "current=4096", "cores": "many" }));
        assert_eq!(f["memory"], 4096);
        assert_eq!(f["cores"], "many", "kept as given rather than lost");
        assert_eq!(f["template"], false);
        assert_eq!(f["disks"], json!([]));
        assert!(!f.contains_key("name") && !f.contains_key("sockets"));
        let f = facts(json!({ "template": true }));
        assert_eq!(f["template"], true);
    }

    #[test]
    fn the_url_is_taken_with_or_without_the_api_suffix() {
        for (given, base) in [
            (
                "https://pve.example.com:8006/api2/json",
                "https://pve.example.com:8006/api2/json",
            ),
            (
                "https://pve.example.com:8006/api2/json/",
                "https://pve.example.com:8006/api2/json",
            ),
            (
                "https://pve.example.com:8006",
                "https://pve.example.com:8006/api2/json",
            ),
            (
                "https://pve.example.com:8006/",
                "https://pve.example.com:8006/api2/json",
            ),
            ("http://127.0.0.1:1234", "http://127.0.0.1:1234/api2/json"),
        ] {
            assert_eq!(api_base(given).as_deref(), Ok(base), "{given}");
        }
        for bad in [
            "pve.example.com:8006",
            "ftp://pve",
            "https://",
            "https:///api2/json",
            "https://pve:8006/api2/json?x=1",
        ] {
            let e = api_base(bad).unwrap_err();
            assert!(e.contains(bad), "the URL is named: {e}");
        }
        let e = api_base("https://root:hunter22@pve:8006").unwrap_err();
        assert!(!e.contains("hunter22"), "{e}");
        assert!(e.contains("no credentials"), "{e}");
    }

    #[test]
    fn credentials_come_from_a_token_or_a_user_and_password() {
        let url = ("PROXMOX_URL", "https://pve:8006");
        assert!(ApiConfig::from_vars(vars(&[])).is_none());
        assert!(ApiConfig::from_vars(vars(&[("PROXMOX_URL", " ")])).is_none());

        let cfg = ApiConfig::from_vars(vars(&[url, ("PROXMOX_TOKEN", "ci@pve!ge=s3cr3t-uuid")]))
            .unwrap()
            .unwrap();
        assert_eq!(cfg.url(), "https://pve:8006/api2/json");
        assert_eq!(
            cfg.credentials,
            Credentials::Token {
                id: "ci@pve!ge".into(),
                secret: Secret("s3cr3t-uuid".into())
            }
        );
        assert_eq!(cfg.trust, Trust::Default);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        // Packer's proxmox plugin: the token id as user name, the secret alone as token.
        let cfg = ApiConfig::from_vars(vars(&[
            url,
            ("PROXMOX_USERNAME", "ci@pve!ge"),
            ("PROXMOX_TOKEN", "s3cr3t-uuid"),
            ("PROXMOX_PASSWORD", "unused"),
            ("PROXMOX_CA_FILE", "/etc/pve/pve-root-ca.pem"),
        ]))
        .unwrap()
        .unwrap();
        assert!(matches!(&cfg.credentials, Credentials::Token { id, .. } if id == "ci@pve!ge"));
        assert_eq!(cfg.trust, Trust::CaFile("/etc/pve/pve-root-ca.pem".into()));

        let cfg = ApiConfig::from_vars(vars(&[
            url,
            ("PROXMOX_USERNAME", "root@pam"),
            ("PROXMOX_PASSWORD", "pa55word"),
            ("PROXMOX_INSECURE", "1"),
            ("PROXMOX_CA_FILE", "/ignored.pem"),
        ]))
        .unwrap()
        .unwrap();
        assert!(
            matches!(&cfg.credentials, Credentials::Password { username, .. }
            if username == "root@pam")
        );
        assert_eq!(cfg.trust, Trust::Insecure);
        assert!(!format!("{cfg:?}").contains("pa55word"));

        for (set, expected) in [
            (vec![url], "no credentials"),
            (
                vec![url, ("PROXMOX_USERNAME", "root@pam")],
                "PROXMOX_PASSWORD is not",
            ),
            (
                vec![url, ("PROXMOX_PASSWORD", "pa55word")],
                "PROXMOX_USERNAME is not",
            ),
            (
                vec![url, ("PROXMOX_TOKEN", "just-a-s3cr3t")],
                "PROXMOX_TOKEN must be",
            ),
            (
                vec![url, ("PROXMOX_TOKEN", "nouser=s3cr3t")],
                "PROXMOX_TOKEN must be",
            ),
            (
                vec![
                    ("PROXMOX_URL", "pve:8006"),
                    ("PROXMOX_TOKEN", "a@b!c=s3cr3t"),
                ],
                "PROXMOX_URL \"pve:8006\"",
            ),
        ] {
            let e = ApiConfig::from_vars(vars(&set)).unwrap().unwrap_err();
            assert!(e.contains(expected), "{set:?}: {e}");
            assert!(!e.contains("s3cr3t") && !e.contains("pa55word"), "{e}");
        }
        assert_eq!(
            ApiConfig::from_vars(vars(&[
                url,
                ("PROXMOX_TOKEN", "a@b!c=s"),
                ("PROXMOX_INSECURE", "0")
            ]))
            .unwrap()
            .unwrap()
            .trust,
            Trust::Default
        );
    }

    #[test]
    fn messages_are_scrubbed_of_secrets() {
        let secrets = vec!["s3cr3t".to_owned(), String::new()];
        assert_eq!(
            scrub("token s3cr3t and s3cr3t again".into(), &secrets),
            "token <redacted> and <redacted> again"
        );
        assert_eq!(scrub("nothing here".into(), &secrets), "nothing here");
    }

    #[test]
    fn an_unreachable_api_is_an_error_naming_the_url_not_the_secret() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = ApiConfig::from_vars(vars(&[
            ("PROXMOX_URL", &format!("http://127.0.0.1:{port}")),
            ("PROXMOX_USERNAME", "root@pam"),
            ("PROXMOX_PASSWORD", "pa55word-xyz"),
        ]))
        .unwrap()
        .unwrap();
        let e = vm_config(&cfg, "pve1", 9000).unwrap_err().to_string();
        assert!(
            e.contains(&format!("http://127.0.0.1:{port}/api2/json/access/ticket")),
            "{e}"
        );
        assert!(!e.contains("pa55word"), "{e}");

        let cfg = ApiConfig {
            trust: Trust::CaFile("/nonexistent/ca.pem".into()),
            ..cfg
        };
        let e = vm_config(&cfg, "pve1", 9000).unwrap_err().to_string();
        assert!(
            e.contains("cannot read PROXMOX_CA_FILE /nonexistent/ca.pem"),
            "{e}"
        );
    }

    /// Answers each connection on a loopback port with the next of `answers`, then stops.
    fn canned_server(answers: &[&str]) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answers: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
        let server = std::thread::spawn(move || {
            for answer in answers {
                let (mut stream, _) = listener.accept().unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        (url, server)
    }

    #[test]
    fn answers_that_are_not_a_proxmox_vm_config_are_errors() {
        let (url, server) = canned_server(&[
            "<html>not json</html>",
            r#"{"data": null}"#,
            r#"{"data": ["not", "an", "object"]}"#,
            r#"["no", "envelope"]"#,
            r#"{"data": {"cores": 2, "name": "ok"}}"#,
        ]);
        let cfg = ApiConfig::from_vars(vars(&[
            ("PROXMOX_URL", &url),
            ("PROXMOX_TOKEN", "ci@pve!ge=s3cr3t-uuid"),
        ]))
        .unwrap()
        .unwrap();
        let what = format!(
            "cannot read the configuration of VM 9000 (GET {url}/api2/json/nodes/pve1/qemu/9000/config): "
        );
        for expected in [
            "the answer is not JSON",
            "the answer has no \"data\"",
            "expected an object in \"data\", got an array",
            "expected a JSON object, got an array",
        ] {
            let e = vm_config(&cfg, "pve1", 9000).unwrap_err().to_string();
            assert!(e.starts_with(&what), "{e}");
            assert!(e.contains(expected), "{expected:?} in {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        let config = vm_config(&cfg, "pve1", 9000).unwrap();
        assert_eq!(config["name"], "ok");
        server.join().unwrap();
    }

    #[test]
    fn node_names_are_checked_before_they_go_into_a_path() {
        assert!(valid_node("pve1") && valid_node("pve-01.lab"));
        assert!(!valid_node("") && !valid_node("../x") && !valid_node("a/b") && !valid_node("a b"));
    }
}
