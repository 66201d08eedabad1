//! `git evidence review A..B`: what a pull request adds to the evidence — the new runs, the
//! `latest` moves and the `verify A..B` result — as Markdown (to paste or post as a PR comment)
//! or JSON. Read-only, like `list` and `verify`: git objects only, bare repositories included.

use std::collections::BTreeMap;

use git2::{Oid, Repository, Tree};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::list::{self, RunEntry};
use crate::names::{EvidenceRoot, RunId};
use crate::render;
use crate::verify;

/// What to review.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `A..B` (`A..` means `A..HEAD`).
    pub range: String,
    /// The evidence root; `git config evidence.root` or `evidence` when `None`.
    pub root: Option<EvidenceRoot>,
}

/// A `latest` link that points elsewhere at B than at A.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatestMove {
    /// The template, or `init`.
    pub template: String,
    /// The run `latest` pointed at in A (`None`: no `latest` yet).
    pub from: Option<String>,
    /// The run it points at in B (`None`: removed).
    pub to: Option<String>,
}

/// What the range adds.
#[derive(Debug, Clone)]
pub struct Review {
    pub range: String,
    /// Runs in B's tree that are not in A's, newest first.
    pub runs: Vec<RunEntry>,
    pub latest_moves: Vec<LatestMove>,
    pub verify: verify::Report,
}

/// Template (or `init`) → the run its `latest` points at.
type Latest = BTreeMap<String, Option<RunId>>;

/// The runs under `root` in `tree`, and where each runs directory's `latest` points.
fn runs_in(
    repo: &Repository,
    tree: &Tree<'_>,
    root: &EvidenceRoot,
) -> Result<(Vec<RunEntry>, Latest)> {
    let mut runs = Vec::new();
    let mut latest = BTreeMap::new();
    for (template, dir_path) in list::runs_dirs(repo, tree, root, None)? {
        let Some(dir) = list::subtree(repo, tree, &dir_path)? else {
            continue;
        };
        let label = template.clone().unwrap_or_else(|| "init".into());
        latest.insert(label, list::latest_of(repo, &dir));
        for run_id in list::run_ids(&dir) {
            let path = format!("{dir_path}/{run_id}");
            runs.push(RunEntry {
                template: template.clone(),
                proof: list::read_proof(repo, tree, &path),
                run_id,
                path,
                commit: None,
                reference: None,
            });
        }
    }
    Ok((runs, latest))
}

/// Splits `A..B` into its two revisions (`B` defaults to `HEAD`).
fn split_range(range: &str) -> Result<(&str, &str)> {
    match range.split_once("..") {
        Some((a, b)) if !a.is_empty() && !b.starts_with('.') => {
            Ok((a, if b.is_empty() { "HEAD" } else { b }))
        }
        _ => Err(Error::BadRevision {
            rev: range.to_owned(),
            source: git2::Error::from_str("review needs a range A..B, e.g. origin/main..HEAD"),
        }),
    }
}

/// Reviews the range; problems verify finds are in the result, `Err` means it could not run.
pub fn review(repo: &Repository, req: &Request) -> Result<Review> {
    let (a, b) = split_range(&req.range)?;
    let root = crate::record::resolve_root(repo, req.root.as_ref())?;
    let (a_id, b_id): (Oid, Oid) = (verify::resolve(repo, a)?, verify::resolve(repo, b)?);
    let (old_runs, old_latest) = runs_in(repo, &list::commit_tree(repo, a_id)?, &root)?;
    let (mut runs, new_latest) = runs_in(repo, &list::commit_tree(repo, b_id)?, &root)?;
    let old_paths: std::collections::BTreeSet<&str> =
        old_runs.iter().map(|r| r.path.as_str()).collect();
    runs.retain(|r| !old_paths.contains(r.path.as_str()));
    let adders = list::adding_commits(repo, b_id, runs.iter().map(|r| r.path.as_str()))?;
    for run in &mut runs {
        run.commit = adders.get(&run.path).copied();
    }
    runs.sort_by(|x, y| {
        y.run_id
            .cmp(&x.run_id)
            .then_with(|| x.label().cmp(y.label()))
    });
    let mut latest_moves = Vec::new();
    let labels: std::collections::BTreeSet<&String> =
        old_latest.keys().chain(new_latest.keys()).collect();
    for label in labels {
        let from = old_latest.get(label).cloned().flatten();
        let to = new_latest.get(label).cloned().flatten();
        if from != to {
            latest_moves.push(LatestMove {
                template: label.clone(),
                from: from.map(|r| r.to_string()),
                to: to.map(|r| r.to_string()),
            });
        }
    }
    let report = verify::verify(
        repo,
        &verify::Request {
            rev: Some(format!("{a}..{b}")),
            failed: false,
            root: Some(root),
        },
    )?;
    Ok(Review {
        range: req.range.clone(),
        runs,
        latest_moves,
        verify: report,
    })
}

/// Text for a Markdown table cell: `-` for null, `|` and newlines escaped.
fn cell(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

impl Review {
    /// True when verify found nothing.
    pub fn ok(&self) -> bool {
        self.verify.ok()
    }

    /// The review as Markdown, ready to post as a pull-request comment.
    pub fn markdown(&self) -> String {
        let mut s = format!("### git-evidence review `{}`\n\n", self.range);
        if self.runs.is_empty() {
            s.push_str("No new evidence: the range adds no run.\n\n");
        } else {
            let n = self.runs.len();
            s.push_str(&format!(
                "{n} new run{}:\n\n",
                if n == 1 { "" } else { "s" }
            ));
            s.push_str("| template | run | status | VMID / node | duration | log | SHA-256 |\n");
            s.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
            for r in &self.runs {
                let p = &r.proof;
                let sha = p["log_sha256"].as_str().unwrap_or("-");
                s.push_str(&format!(
                    "| {} | `{}` | {} | {} / {} | {} | {} | `{}` |\n",
                    r.label(),
                    r.run_id,
                    cell(&p["status"]),
                    cell(&p["vmid"]),
                    cell(&p["node"]),
                    render::human_duration(p["duration_seconds"].as_f64()),
                    render::human_bytes(p["log_bytes"].as_u64()),
                    sha.get(..12).unwrap_or(sha),
                ));
            }
            s.push('\n');
        }
        if !self.latest_moves.is_empty() {
            s.push_str("`latest` moves:\n\n");
            for m in &self.latest_moves {
                let side = |r: &Option<String>| match r {
                    Some(r) => format!("`{r}`"),
                    None => "(none)".to_owned(),
                };
                s.push_str(&format!(
                    "- {}: {} → {}\n",
                    m.template,
                    side(&m.from),
                    side(&m.to)
                ));
            }
            s.push('\n');
        }
        let v = &self.verify;
        if v.ok() {
            s.push_str(&format!(
                "**verify `{}`: OK** ({} runs checked, 0 problems)\n",
                self.range, v.runs_checked
            ));
        } else {
            s.push_str(&format!(
                "**verify `{}`: {} problem{}** ({} runs checked)\n\n",
                self.range,
                v.problems.len(),
                if v.problems.len() == 1 { "" } else { "s" },
                v.runs_checked
            ));
            for p in &v.problems {
                s.push_str(&format!(
                    "- `{}` `{}`: {}\n",
                    p.commit,
                    p.path,
                    p.problem.replace(['\n', '\r'], " ")
                ));
            }
        }
        s
    }

    /// The review as JSON: `range`, `runs` (as `list --json`), `latest_moves`, `verify`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "range": self.range,
            "ok": self.ok(),
            "runs": self.runs.iter().map(RunEntry::to_json).collect::<Vec<_>>(),
            "latest_moves": self.latest_moves,
            "verify": {
                "ok": self.verify.ok(),
                "runs_checked": self.verify.runs_checked,
                "problems": self.verify.problems,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_need_two_dots() {
        assert_eq!(split_range("a..b").unwrap(), ("a", "b"));
        assert_eq!(split_range("a..").unwrap(), ("a", "HEAD"));
        assert!(split_range("a").is_err());
        assert!(split_range("..b").is_err());
        assert!(split_range("a...b").is_err());
    }
}
