//! The names evidence is filed under: templates, run ids, kinds and the evidence root.
//!
//! Each becomes part of a path in the tree and of a ref name, so each is validated once,
//! here, and carried as its own type afterwards. Nothing downstream re-checks a `&str`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::error::{Error, Result};

/// A Packer template name such as `ubuntu-22.04`: `[a-z0-9][a-z0-9._-]{0,63}`, not `latest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Template(String);

impl Template {
    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Template {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
        // `..` would be harmless as a path component here (no slash is allowed) but git refuses
        // it in ref names, and failed runs live under refs/evidence/failed/builds/<template>/.
        // A trailing `.lock` or `.` is refused by git for the same reason.
        let ref_ok = !s.contains("..") && !s.ends_with(".lock") && !s.ends_with('.');
        if first_ok && rest_ok && ref_ok && bytes.len() <= 64 && s != "latest" {
            Ok(Template(s.to_owned()))
        } else {
            Err(Error::InvalidTemplate(s.to_owned()))
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a run was: a template build, or the one-off `packer init` of the plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Build,
    Init,
}

impl Kind {
    /// The word used in proof.json, trailers and commit subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Build => "build",
            Kind::Init => "init",
        }
    }

    /// The log's file name inside a run folder.
    pub fn log_file_name(self) -> &'static str {
        match self {
            Kind::Build => "packer.log",
            Kind::Init => "init-packer.log",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run id: the UTC start time as `YYYY-MM-DDTHHMMSSZ`, with `-N` (N ≥ 2) when several runs of
/// one template started in the same second.
///
/// Ordering is chronological, then by the suffix (`…Z` < `…Z-2` < `…Z-10`), which plain string
/// comparison gets wrong for suffixes of ten and more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId {
    time: NaiveDateTime,
    seq: u32,
}

const RUN_ID_FORMAT: &str = "%Y-%m-%dT%H%M%SZ";

impl RunId {
    /// The first run id for a run started at `started`.
    pub fn for_start(started: DateTime<Utc>) -> Self {
        use chrono::Timelike;
        let time = started.naive_utc();
        // Sub-second precision is dropped: with_nanosecond(0) is always in range.
        let time = time.with_nanosecond(0).unwrap_or(time);
        RunId { time, seq: 1 }
    }

    /// The id a later run started in the same second gets.
    pub fn next(&self) -> Self {
        RunId {
            time: self.time,
            seq: self.seq + 1,
        }
    }

    /// 1 for the first run in a second, 2 for the second, …
    pub fn sequence(&self) -> u32 {
        self.seq
    }
}

impl FromStr for RunId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Malformed {
            path: s.to_owned(),
            reason: "not a run id (YYYY-MM-DDTHHMMSSZ or YYYY-MM-DDTHHMMSSZ-N)".into(),
        };
        let (stamp, seq) = match s.split_once("Z-") {
            Some((stamp, n)) => {
                let seq: u32 = n.parse().map_err(|_| bad())?;
                if seq < 2 || n.starts_with('0') || n.starts_with('+') {
                    return Err(bad());
                }
                (format!("{stamp}Z"), seq)
            }
            None => (s.to_owned(), 1),
        };
        if stamp.len() != "2026-11-26T101500Z".len() {
            return Err(bad());
        }
        let time = NaiveDateTime::parse_from_str(&stamp, RUN_ID_FORMAT).map_err(|_| bad())?;
        Ok(RunId { time, seq })
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.time.format(RUN_ID_FORMAT))?;
        if self.seq > 1 {
            write!(f, "-{}", self.seq)?;
        }
        Ok(())
    }
}

impl Ord for RunId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

impl PartialOrd for RunId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Where evidence lives inside the repository's tree, `evidence` unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRoot(String);

impl EvidenceRoot {
    /// The root as a slash-separated path without leading or trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `root/rest`.
    pub fn join(&self, rest: &str) -> String {
        format!("{}/{}", self.0, rest)
    }
}

impl Default for EvidenceRoot {
    fn default() -> Self {
        EvidenceRoot("evidence".into())
    }
}

impl FromStr for EvidenceRoot {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let trimmed = s.trim_end_matches('/');
        let ok = !trimmed.is_empty()
            && !trimmed.starts_with('/')
            && !trimmed.contains('\\')
            && !trimmed.bytes().any(|b| b.is_ascii_control())
            && trimmed.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.eq_ignore_ascii_case(".git")
            });
        if ok {
            Ok(EvidenceRoot(trimmed.to_owned()))
        } else {
            Err(Error::InvalidRoot(s.to_owned()))
        }
    }
}

impl fmt::Display for EvidenceRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_follow_the_rule() {
        for good in [
            "ubuntu-22.04",
            "rocky9",
            "win2022_std",
            "a",
            &"a".repeat(64),
        ] {
            assert!(
                good.parse::<Template>().is_ok(),
                "{good} should be accepted"
            );
        }
        for bad in [
            "",
            "latest",
            "../x",
            "a/b",
            "with space",
            "Ubuntu",
            "-x",
            ".x",
            "_x",
            "a..b",
            "x.lock",
            "x.",
            &"a".repeat(65),
            "é",
        ] {
            assert!(
                bad.parse::<Template>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn run_ids_round_trip_and_sort_chronologically() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T10:15:00.750Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = RunId::for_start(t);
        assert_eq!(first.to_string(), "2026-11-26T101500Z");
        let second = first.next();
        assert_eq!(second.to_string(), "2026-11-26T101500Z-2");
        let mut tenth = first.clone();
        for _ in 1..10 {
            tenth = tenth.next();
        }
        assert_eq!(tenth.to_string(), "2026-11-26T101500Z-10");
        assert!(first < second && second < tenth);
        for id in [&first, &second, &tenth] {
            assert_eq!(&id.to_string().parse::<RunId>().unwrap(), id);
        }
        let later: RunId = "2026-11-26T101501Z".parse().unwrap();
        assert!(tenth < later);
        for bad in [
            "",
            "latest",
            "2026-11-26T10:15:00Z",
            "2026-11-26T101500Z-1",
            "2026-11-26T101500Z-02",
            "2026-11-26T101500",
        ] {
            assert!(bad.parse::<RunId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn roots_are_relative_paths_inside_the_repository() {
        assert_eq!(
            "evidence/".parse::<EvidenceRoot>().unwrap().as_str(),
            "evidence"
        );
        assert_eq!(
            "docs/evidence".parse::<EvidenceRoot>().unwrap().as_str(),
            "docs/evidence"
        );
        for bad in ["", "/abs", "../up", "a/../b", ".git", "a//b", "./a"] {
            assert!(
                bad.parse::<EvidenceRoot>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
