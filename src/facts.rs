//! Facts about a run, gathered from every source, each kept with where it came from.
//!
//! Precedence, highest first: `--fact` on the command line, the facts file the command (or a
//! provisioner, or the validation) wrote to `$EVIDENCE_FACTS`, the Proxmox API, Packer's
//! manifest, and the log. A lower source never overrides a higher one; every fact records its
//! source in `fact_sources`. A source that cannot be read is a warning, never a failed run.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::bytes::Regex;
use serde_json::Value;

/// Where a fact came from, in order of precedence (highest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cli,
    FactsFile,
    /// `PROXMOX_NODE` and similar settings of the environment.
    Env,
    ProxmoxApi,
    Manifest,
    Log,
}

impl Source {
    /// The word recorded in `fact_sources`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::FactsFile => "facts-file",
            Source::Env => "env",
            Source::ProxmoxApi => "proxmox-api",
            Source::Manifest => "manifest",
            Source::Log => "log",
        }
    }
}

/// Facts with their sources; the highest-precedence offer of a key wins.
#[derive(Debug, Clone, Default)]
pub struct FactSet {
    entries: BTreeMap<String, (Value, Source)>,
}

impl FactSet {
    /// Offers `key = value` from `source`; kept unless a higher source already gave the key.
    /// A later offer from the same source replaces an earlier one.
    pub fn offer(&mut self, key: &str, value: Value, source: Source) {
        match self.entries.get(key) {
            Some((_, have)) if *have < source => {}
            _ => {
                self.entries.insert(key.to_owned(), (value, source));
            }
        }
    }

    /// Offers every pair from one source.
    pub fn offer_all(&mut self, pairs: impl IntoIterator<Item = (String, Value)>, source: Source) {
        for (k, v) in pairs {
            self.offer(&k, v, source);
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key).map(|(v, _)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value, Source)> {
        self.entries.iter().map(|(k, (v, s))| (k, v, *s))
    }
}

/// Facts read from one source, as name–value pairs.
pub type Pairs = Vec<(String, Value)>;

/// Whether `key` is acceptable as a fact name (the `--fact` rule).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

static VMID_PATTERNS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:A template was created: |template_id: |artifact_id: )(\d{1,10})\b")
        .expect("valid regex")
});
static PACKER_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[INFO\] Packer version: ([0-9][0-9A-Za-z.+-]*)").expect("valid regex")
});
static BUILD_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Starting build run: ([^\s]+)").expect("valid regex"));

/// Only the start of a line is examined: facts are short, and a multi-megabyte line must not
/// be held in memory.
const LINE_HEAD: usize = 4096;

/// Reads facts out of the log as it streams by: the VMID (`A template was created: N`,
/// `template_id: N`, `artifact_id: N`), the Packer version, and the builds that ran.
#[derive(Debug, Default)]
pub struct LogScanner {
    line: Vec<u8>,
    /// Bytes of the current line beyond [`LINE_HEAD`] are skipped.
    skipping: bool,
    vmid: Option<u64>,
    packer_version: Option<String>,
    builds: Vec<String>,
}

impl LogScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the log.
    pub fn feed(&mut self, bytes: &[u8]) {
        for part in bytes.split_inclusive(|&b| b == b'\n') {
            if !self.skipping {
                let room = LINE_HEAD - self.line.len();
                let take = room.min(part.len());
                self.line.extend_from_slice(&part[..take]);
                if self.line.len() >= LINE_HEAD {
                    self.skipping = true;
                }
            }
            if part.last() == Some(&b'\n') {
                self.scan_line();
            }
        }
    }

    fn scan_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        self.skipping = false;
        if let Some(c) = VMID_PATTERNS.captures(&line)
            && let Some(n) = std::str::from_utf8(&c[1]).ok().and_then(|s| s.parse().ok())
        {
            // The last mention wins: the artifact line comes after any earlier id.
            self.vmid = Some(n);
        }
        if self.packer_version.is_none()
            && let Some(c) = PACKER_VERSION.captures(&line)
        {
            self.packer_version = Some(String::from_utf8_lossy(&c[1]).into_owned());
        }
        if let Some(c) = BUILD_RUN.captures(&line) {
            let name = String::from_utf8_lossy(&c[1]).into_owned();
            if !self.builds.contains(&name) {
                self.builds.push(name);
            }
        }
        self.line = line;
        self.line.clear();
    }

    /// The facts found, after the last bytes were fed.
    pub fn finish(mut self) -> Vec<(String, Value)> {
        if !self.line.is_empty() {
            self.scan_line();
        }
        let mut out = Vec::new();
        if let Some(v) = self.vmid {
            out.push(("vmid".to_owned(), Value::from(v)));
        }
        if let Some(v) = self.packer_version {
            out.push(("packer_version".to_owned(), Value::from(v)));
        }
        if !self.builds.is_empty() {
            out.push(("builds".to_owned(), Value::from(self.builds)));
        }
        out
    }
}

/// Facts from Packer's manifest post-processor file, if it was written during this run
/// (modified at or after `since`): the builds of its `last_run_uuid` only, since Packer appends
/// every run to the same file. Gives `artifact_id`, `builder_type`, every `custom_data` key, and
/// `vmid` when a Proxmox builder's artifact id is a number.
pub fn from_manifest(path: &Path, since: DateTime<Utc>) -> Result<Pairs, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read manifest {}: {e}", path.display())),
    };
    let modified: DateTime<Utc> = meta
        .modified()
        .map_err(|e| format!("cannot read manifest {}: {e}", path.display()))?
        .into();
    if modified < since {
        tracing::debug!("manifest {} predates this run: ignored", path.display());
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read manifest {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| format!("manifest {} is not JSON: {e}", path.display()))?;
    let last = doc.get("last_run_uuid").and_then(Value::as_str);
    let builds = doc
        .get("builds")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for build in builds
        .iter()
        .filter(|b| last.is_none() || b.get("packer_run_uuid").and_then(Value::as_str) == last)
    {
        let builder = build.get("builder_type").and_then(Value::as_str);
        if let Some(id) = build.get("artifact_id").and_then(Value::as_str) {
            out.push(("artifact_id".to_owned(), Value::from(id)));
            if builder.is_some_and(|b| b.starts_with("proxmox"))
                && let Ok(vmid) = id.parse::<u64>()
            {
                out.push(("vmid".to_owned(), Value::from(vmid)));
            }
        }
        if let Some(b) = builder {
            out.push(("builder_type".to_owned(), Value::from(b)));
        }
        if let Some(custom) = build.get("custom_data").and_then(Value::as_object) {
            for (k, v) in custom {
                if valid_key(k) {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
    }
    Ok(out)
}

/// Facts from the facts file: a JSON object, or `key=value` lines (blank lines and `#`
/// comments ignored). Lines that are not `key=value` are reported, not fatal.
pub fn from_facts_file(path: &Path) -> Result<(Pairs, Vec<String>), String> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(format!("cannot read the facts file: {e}")),
    };
    let text = String::from_utf8_lossy(&text);
    let trimmed = text.trim_start();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    if trimmed.starts_with('{') {
        let doc: serde_json::Map<String, Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("the facts file is not a JSON object: {e}"))?;
        for (k, v) in doc {
            if valid_key(&k) {
                out.push((k, v));
            } else {
                problems.push(format!("facts file: invalid key {k:?} ignored"));
            }
        }
        return Ok((out, problems));
    }
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if valid_key(k.trim()) => {
                out.push((k.trim().to_owned(), Value::from(v.trim())));
            }
            _ => problems.push(format!(
                "facts file line {}: expected key=value, ignored",
                n + 1
            )),
        }
    }
    Ok((out, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/packer-1.6.6")
            .join(name)
    }

    fn scan(bytes: &[u8], chunk: usize) -> BTreeMap<String, Value> {
        let mut s = LogScanner::new();
        for c in bytes.chunks(chunk.max(1)) {
            s.feed(c);
        }
        s.finish().into_iter().collect()
    }

    #[test]
    fn the_log_gives_vmid_version_and_builds_whatever_the_chunking() {
        let log = fs::read(fixture("proxmox-fake.packer.log")).unwrap();
        for chunk in [1, 7, 4096, log.len()] {
            let facts = scan(&log, chunk);
            assert_eq!(facts["vmid"], 9000, "chunk {chunk}");
            assert_eq!(facts["packer_version"], "1.6.6");
            assert_eq!(facts["builds"], serde_json::json!(["proxmox-iso.debian"]));
        }
        let facts = scan(&fs::read(fixture("ok.packer.log")).unwrap(), 100);
        assert!(!facts.contains_key("vmid"), "the null builder makes no VM");
        assert_eq!(facts["builds"], serde_json::json!(["null.x"]));
    }

    #[test]
    fn very_long_lines_do_not_hide_facts_or_grow_memory() {
        let mut log = vec![b'x'; 10 * LINE_HEAD];
        log.extend_from_slice(b" A template was created: 1\nA template was created: 9001\n");
        let facts = scan(&log, 333);
        assert_eq!(facts["vmid"], 9001);
    }

    #[test]
    fn precedence_is_cli_then_file_then_api_then_manifest_then_log() {
        let mut set = FactSet::default();
        set.offer("vmid", Value::from(1), Source::Log);
        set.offer("vmid", Value::from(2), Source::Manifest);
        assert_eq!(set.get("vmid"), Some(&Value::from(2)));
        set.offer("vmid", Value::from(5), Source::Cli);
        set.offer("vmid", Value::from(3), Source::ProxmoxApi);
        set.offer("vmid", Value::from(4), Source::FactsFile);
        assert_eq!(set.get("vmid"), Some(&Value::from(5)));
        let sources: Vec<_> = set.iter().map(|(_, _, s)| s.as_str()).collect();
        assert_eq!(sources, ["cli"]);
    }

    #[test]
    fn only_the_last_run_of_a_manifest_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packer-manifest.json");
        fs::copy(fixture("manifest-accumulated.json"), &path).unwrap();
        let long_ago = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        let facts: BTreeMap<_, _> = from_manifest(&path, long_ago)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(facts["artifact_id"], "Null");
        assert_eq!(facts["builder_type"], "null");
        assert_eq!(facts["note"], "sample");
        assert!(!facts.contains_key("vmid"));

        fs::copy(fixture("proxmox-fake-manifest.json"), &path).unwrap();
        let facts: BTreeMap<_, _> = from_manifest(&path, long_ago)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(facts["vmid"], 9000);

        let future = Utc::now() + chrono::Duration::hours(1);
        assert!(
            from_manifest(&path, future).unwrap().is_empty(),
            "an old manifest is ignored"
        );
        assert!(
            from_manifest(&dir.path().join("none.json"), long_ago)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn facts_files_are_key_value_lines_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("facts");
        fs::write(
            &path,
            "# comment\nvmid=9000\r\nnode = pve1\n\nbad line\niso=local:iso/x.iso=1\n",
        )
        .unwrap();
        let (facts, problems) = from_facts_file(&path).unwrap();
        let facts: BTreeMap<_, _> = facts.into_iter().collect();
        assert_eq!(facts["vmid"], "9000");
        assert_eq!(facts["node"], "pve1");
        assert_eq!(facts["iso"], "local:iso/x.iso=1");
        assert_eq!(problems, ["facts file line 5: expected key=value, ignored"]);

        fs::write(
            &path,
            r#"{"vmid": 9001, "storage": "local-lvm", "bad key": 1}"#,
        )
        .unwrap();
        let (facts, problems) = from_facts_file(&path).unwrap();
        let facts: BTreeMap<_, _> = facts.into_iter().collect();
        assert_eq!(facts["vmid"], 9001);
        assert_eq!(facts["storage"], "local-lvm");
        assert_eq!(problems.len(), 1);
        assert!(
            from_facts_file(&dir.path().join("missing"))
                .unwrap()
                .0
                .is_empty()
        );
    }
}
