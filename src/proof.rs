//! The proof: what one run was, as data (`proof.json`, schema version 1).
//!
//! The schema is a promise to everyone who reads evidence with `jq`: keys are only ever added,
//! never renamed or removed, and every key is present in every proof (`null` where unknown).
//! It is documented in docs/proof-schema.md; keep the two in step.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::facts::{FactSet, Source};
use crate::names::{Kind, RunId, Template};

/// The schema version written into every proof.json.
pub const SCHEMA_VERSION: u32 = 1;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failed,
    Cancelled,
}

impl Status {
    /// The status a plain exit code implies: 0 is success, 129/130/143 (SIGHUP, SIGINT, SIGTERM
    /// as shells report them) are cancellations, anything else failed.
    pub fn from_exit_code(code: i32) -> Status {
        match code {
            0 => Status::Success,
            129 | 130 | 143 => Status::Cancelled,
            _ => Status::Failed,
        }
    }

    /// The word used in proof.json and trailers.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "success" => Ok(Status::Success),
            "failed" => Ok(Status::Failed),
            "cancelled" => Ok(Status::Cancelled),
            _ => Err(Error::Inconsistent(format!(
                "unknown status {s:?}: use success, failed or cancelled"
            ))),
        }
    }
}

/// One `KEY=VALUE` fact, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub key: String,
    pub value: String,
}

/// Checks command-line facts: a `vmid` must be a non-negative integer and a `node` non-empty,
/// so that a typo fails the command instead of vanishing from the proof.
pub fn check_cli_facts(facts: &[Fact]) -> Result<()> {
    for fact in facts {
        let bad = |reason: &str| Error::InvalidFact {
            fact: format!("{}={}", fact.key, fact.value),
            reason: reason.into(),
        };
        match fact.key.as_str() {
            "vmid" if fact.value.parse::<u64>().is_err() => {
                return Err(bad("vmid must be a non-negative integer"));
            }
            "node" if fact.value.is_empty() => return Err(bad("node must not be empty")),
            _ => {}
        }
    }
    Ok(())
}

/// Offers command-line facts to a fact set (last one of a key wins).
pub fn offer_cli_facts(set: &mut FactSet, facts: &[Fact]) {
    for fact in facts {
        set.offer(
            &fact.key,
            serde_json::Value::String(fact.value.clone()),
            Source::Cli,
        );
    }
}

/// Redacts the strings inside a JSON value.
fn redact_value(value: &mut serde_json::Value, redactor: &mut crate::redact::Redactor) {
    match value {
        serde_json::Value::String(s) => *s = redactor.redact_str(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, redactor)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| redact_value(v, redactor)),
        _ => {}
    }
}

/// A VMID from a JSON number or a numeric string.
fn vmid_of(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl FromStr for Fact {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidFact {
            fact: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| invalid("expected KEY=VALUE"))?;
        if key.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if key.len() > 64
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(invalid(
                "keys are 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'",
            ));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(invalid("the value contains a control character"));
        }
        Ok(Fact {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// The tool that wrote a proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Tool {
    /// This build of git-evidence.
    pub fn this() -> Tool {
        Tool {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// proof.json, field for field, in the order written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    pub schema_version: u32,
    pub kind: Kind,
    /// The template for builds; `null` for init runs.
    pub template: Option<String>,
    pub run_id: String,
    pub status: Status,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_seconds: Option<f64>,
    pub host: Option<String>,
    /// The wrapped command's argv; empty when the run was recorded after the fact.
    pub command: Vec<String>,
    pub exit_code: i32,
    pub vmid: Option<u64>,
    pub node: Option<String>,
    pub facts: BTreeMap<String, serde_json::Value>,
    /// Fact name → where it came from (`cli`, `facts-file`, `proxmox-api`, `manifest`, `log`).
    pub fact_sources: BTreeMap<String, String>,
    pub log_file: String,
    pub log_sha256: String,
    pub log_bytes: u64,
    /// Redaction rule → number of replacements made in the log.
    pub redactions: BTreeMap<String, u64>,
    pub tool: Tool,
    /// The commit checked out when the run started (the branch tip in a bare repository);
    /// `null` when there is none.
    pub source_commit: Option<String>,
    /// Whether the work tree had uncommitted changes when the run started; `null` when unknown.
    pub source_dirty: Option<bool>,
    /// The post-build validation (`run --validate`); `null` when none was configured.
    pub validation: Option<Validation>,
    /// Rendered unattended-install files the build used (`run --asset`), with their hashes.
    pub assets: Vec<Asset>,
}

/// The outcome of the validation command run after a successful build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// `passed`, `failed`, or `not_run` (the build itself failed).
    pub status: String,
    pub exit_code: Option<i32>,
    pub duration_seconds: Option<f64>,
}

/// A file that went into the build (autoinstall `user-data`, kickstart, `Autounattend.xml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    /// Relative to the top of the repository.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// Formats a time the way proofs store it: RFC 3339, UTC, `Z`, milliseconds only when present.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.trunc_subsecs(3)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The current time at the precision proofs keep (milliseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// Parses an RFC 3339 time argument into UTC.
pub fn parse_time(what: &'static str, value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(3))
        .map_err(|_| Error::InvalidTime {
            what,
            value: value.to_owned(),
        })
}

/// Everything known about a run before it is filed (the run id is chosen at commit time).
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub kind: Kind,
    pub template: Option<Template>,
    pub status: Status,
    pub exit_code: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub host: Option<String>,
    pub command: Vec<String>,
    pub vmid: Option<u64>,
    pub node: Option<String>,
    pub facts: BTreeMap<String, serde_json::Value>,
    pub fact_sources: BTreeMap<String, String>,
    pub redactions: BTreeMap<String, u64>,
    pub source_commit: Option<git2::Oid>,
    pub source_dirty: Option<bool>,
    pub validation: Option<Validation>,
    pub assets: Vec<Asset>,
}

impl RunFacts {
    /// Takes gathered facts: `vmid` and `node` fill their own fields, the rest go to `facts`;
    /// every one is noted in `fact_sources`. Returns warnings for values that cannot be used
    /// (a `vmid` that is not a number, an empty `node`), which are left out.
    pub fn apply_facts(&mut self, set: &FactSet) -> Vec<String> {
        let mut warnings = Vec::new();
        for (key, value, source) in set.iter() {
            match key.as_str() {
                "vmid" => match vmid_of(value) {
                    Some(v) => self.vmid = Some(v),
                    None => {
                        warnings.push(format!(
                            "ignored vmid {value} from {}: not a non-negative integer",
                            source.as_str()
                        ));
                        continue;
                    }
                },
                "node" => match value.as_str().filter(|n| !n.is_empty()) {
                    Some(n) => self.node = Some(n.to_owned()),
                    None => {
                        warnings.push(format!("ignored node {value} from {}", source.as_str()));
                        continue;
                    }
                },
                _ => {
                    self.facts.insert(key.clone(), value.clone());
                }
            }
            self.fact_sources
                .insert(key.clone(), source.as_str().to_owned());
        }
        warnings
    }

    /// Redacts every text the proof will show: the command, the node, fact values (deep), and
    /// the host name.
    pub fn redact(&mut self, redactor: &mut crate::redact::Redactor) {
        for arg in &mut self.command {
            *arg = redactor.redact_str(arg);
        }
        if let Some(node) = &mut self.node {
            *node = redactor.redact_str(node);
        }
        if let Some(host) = &mut self.host {
            *host = redactor.redact_str(host);
        }
        for value in self.facts.values_mut() {
            redact_value(value, redactor);
        }
    }

    /// Checks that the facts agree with each other.
    pub fn check(&self) -> Result<()> {
        if let Some(finished) = self.finished_at
            && finished < self.started_at
        {
            return Err(Error::Inconsistent(format!(
                "--finished-at {} is before --started-at {}",
                format_time(finished),
                format_time(self.started_at)
            )));
        }
        if (self.status == Status::Success) != (self.exit_code == 0) {
            return Err(Error::Inconsistent(format!(
                "status {} does not match exit code {}",
                self.status, self.exit_code
            )));
        }
        if (self.kind == Kind::Build) != self.template.is_some() {
            return Err(Error::Inconsistent(match self.kind {
                Kind::Build => "a build needs --template".into(),
                Kind::Init => "an init run takes no --template".into(),
            }));
        }
        Ok(())
    }

    /// The proof for this run filed as `run_id`, with the stored log's digest.
    pub fn proof(&self, run_id: &RunId, log: &LogDigest) -> Proof {
        let duration_seconds = self.finished_at.map(|finished| {
            let millis = (finished - self.started_at).num_milliseconds();
            millis as f64 / 1000.0
        });
        Proof {
            schema_version: SCHEMA_VERSION,
            kind: self.kind,
            template: self.template.as_ref().map(|t| t.to_string()),
            run_id: run_id.to_string(),
            status: self.status,
            started_at: format_time(self.started_at),
            finished_at: self.finished_at.map(format_time),
            duration_seconds,
            host: self.host.clone(),
            command: self.command.clone(),
            exit_code: self.exit_code,
            vmid: self.vmid,
            node: self.node.clone(),
            facts: self.facts.clone(),
            fact_sources: self.fact_sources.clone(),
            log_file: self.kind.log_file_name().to_owned(),
            log_sha256: log.sha256.clone(),
            log_bytes: log.bytes,
            redactions: self.redactions.clone(),
            tool: Tool::this(),
            source_commit: self.source_commit.map(|c| c.to_string()),
            source_dirty: self.source_dirty,
            validation: self.validation.clone(),
            assets: self.assets.clone(),
        }
    }
}

/// A log stored in the object database: its blob id, SHA-256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDigest {
    pub blob: git2::Oid,
    pub sha256: String,
    pub bytes: u64,
}

impl Proof {
    /// The bytes of proof.json: pretty-printed, keys in schema order, trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| unreachable!("a proof always serialises: {e}"));
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_parse_and_refuse_malformed_input() {
        let f: Fact = "vmid=9000".parse().unwrap();
        assert_eq!((f.key.as_str(), f.value.as_str()), ("vmid", "9000"));
        let f: Fact = "iso=ubuntu.iso=x".parse().unwrap();
        assert_eq!(f.value, "ubuntu.iso=x");
        let f: Fact = "empty=".parse().unwrap();
        assert_eq!(f.value, "");
        for bad in [
            "novalue",
            "=x",
            "a b=c",
            "k=line\nbreak",
            &format!("{}=x", "k".repeat(65)),
        ] {
            assert!(bad.parse::<Fact>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn exit_codes_map_to_statuses() {
        assert_eq!(Status::from_exit_code(0), Status::Success);
        assert_eq!(Status::from_exit_code(1), Status::Failed);
        assert_eq!(Status::from_exit_code(130), Status::Cancelled);
        assert_eq!(Status::from_exit_code(143), Status::Cancelled);
        assert_eq!(Status::from_exit_code(-1), Status::Failed);
    }
}
