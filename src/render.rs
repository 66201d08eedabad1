//! The human-readable texts of a proof: the run's README.md, the commit message with its
//! trailers, and the root's .gitattributes.
//!
//! Everything here is a pure function of a [`Proof`]: the same proof always renders to the same
//! bytes, which is what lets `verify` regenerate and compare.

use std::fmt::Write as _;

use crate::names::Kind;
use crate::proof::{Proof, Status};

/// The root's .gitattributes: logs are stored byte for byte (`-text`: no end-of-line
/// conversion on any checkout, so `sha256sum` keeps matching) and collapsed in pull-request
/// diffs (`linguist-generated`).
pub const GITATTRIBUTES: &str = "\
# Written by git-evidence. Logs are evidence: byte for byte, never converted.
*.log -text linguist-generated=true
";

/// Escapes text for a Markdown table cell: one line, pipes escaped.
pub fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '|' => out.push_str("\\|"),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Makes a value safe for a one-line trailer.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// `12m 05s`, `1h 02m 03s`, `4.25s`.
pub fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else {
        format!("{m}m {s:02}s")
    }
}

/// A duration in seconds as `1h02m03s`, `12m13s` or `45s`; `-` when unknown.
pub fn human_duration(seconds: Option<f64>) -> String {
    let Some(s) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    let s = s.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

/// A size in bytes as `812 B`, `7.5 KiB`, `3.2 MiB`; `-` when unknown.
pub fn human_bytes(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b < 1024 => format!("{b} B"),
        Some(b) if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / 1048576.0),
        Some(b) => format!("{:.1} GiB", b as f64 / 1073741824.0),
    }
}

fn or_unknown(value: Option<&str>) -> String {
    value.map(cell).unwrap_or_else(|| "unknown".into())
}

fn what(proof: &Proof) -> String {
    match (&proof.kind, &proof.template) {
        (Kind::Build, Some(t)) => format!("Packer build of {t}"),
        _ => "Packer init".to_owned(),
    }
}

/// The run folder's README.md.
pub fn run_readme(proof: &Proof) -> String {
    let mut s = String::new();
    let title = match &proof.template {
        Some(t) => format!("{t} — {}", proof.run_id),
        None => format!("packer init — {}", proof.run_id),
    };
    let _ = writeln!(s, "# {title}\n");
    let verdict = match proof.status {
        Status::Success => "succeeded",
        Status::Failed => "failed",
        Status::Cancelled => "was cancelled",
    };
    let _ = writeln!(
        s,
        "**Status: {}** — {} {} (exit code {}).\n",
        proof.status,
        what(proof),
        verdict,
        proof.exit_code
    );
    let _ = writeln!(s, "| | |\n| --- | --- |");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {v} |");
    };
    row("Status", proof.status.to_string());
    row("Kind", proof.kind.to_string());
    if let Some(t) = &proof.template {
        row("Template", cell(t));
    }
    row("Run", proof.run_id.clone());
    row("Started", proof.started_at.clone());
    row("Finished", or_unknown(proof.finished_at.as_deref()));
    row(
        "Duration",
        proof
            .duration_seconds
            .map(duration)
            .unwrap_or_else(|| "unknown".into()),
    );
    row("Host", or_unknown(proof.host.as_deref()));
    row(
        "VMID",
        proof
            .vmid
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into()),
    );
    row("Node", or_unknown(proof.node.as_deref()));
    let dirty = match proof.source_dirty {
        Some(true) => " (with uncommitted changes in the work tree)",
        _ => "",
    };
    row(
        "Source commit",
        proof
            .source_commit
            .as_deref()
            .map(|c| format!("`{c}`{dirty}"))
            .unwrap_or_else(|| "none (unborn branch)".into()),
    );
    if !proof.command.is_empty() {
        row(
            "Command",
            format!("`{}`", cell(&proof.command.join(" ")).replace('`', "'")),
        );
    }
    row("Tool", cell(&proof.tool.to_string()));

    s.push_str("\n## Facts\n\n");
    if proof.facts.is_empty() && proof.vmid.is_none() && proof.node.is_none() {
        s.push_str("No facts were recorded.\n");
    } else {
        s.push_str("| Fact | Value | Source |\n| --- | --- | --- |\n");
        let source = |k: &str| {
            proof
                .fact_sources
                .get(k)
                .map(|v| cell(v))
                .unwrap_or_else(|| "—".into())
        };
        if let Some(v) = proof.vmid {
            let _ = writeln!(s, "| vmid | {v} | {} |", source("vmid"));
        }
        if let Some(n) = &proof.node {
            let _ = writeln!(s, "| node | {} | {} |", cell(n), source("node"));
        }
        for (k, v) in &proof.facts {
            let value = match v {
                serde_json::Value::String(text) => cell(text),
                other => cell(&other.to_string()),
            };
            let _ = writeln!(s, "| {} | {value} | {} |", cell(k), source(k));
        }
    }

    if let Some(v) = &proof.validation {
        let _ = write!(s, "\n## Validation\n\n**{}**", cell(&v.status));
        if let Some(code) = v.exit_code {
            let _ = write!(s, " (exit code {code}");
            if let Some(d) = v.duration_seconds {
                let _ = write!(s, ", {}", duration(d));
            }
            s.push(')');
        }
        s.push_str(
            ". Its output follows the build's in the log, after `==> git-evidence: validation:`.\n",
        );
    }

    if !proof.assets.is_empty() {
        s.push_str("\n## Assets\n\n| File | Bytes | SHA-256 |\n| --- | --- | --- |\n");
        for a in &proof.assets {
            let _ = writeln!(s, "| {} | {} | `{}` |", cell(&a.path), a.bytes, a.sha256);
        }
    }

    if !proof.redactions.is_empty() {
        let total: u64 = proof.redactions.values().sum();
        let rules: Vec<String> = proof
            .redactions
            .iter()
            .map(|(rule, n)| format!("{} ({n})", cell(rule)))
            .collect();
        let _ = writeln!(
            s,
            "\n## Redactions\n\n{total} secret value(s) were replaced in the log before it was stored: {}.",
            rules.join(", ")
        );
    }

    let _ = write!(
        s,
        "\n## Log\n\n\
         `{file}` — {bytes} bytes, SHA-256 `{sha}`.\n\n\
         Check it from a checkout of this folder:\n\n\
         ```sh\n\
         sha256sum {file}\n\
         # {sha}  {file}\n\
         ```\n\n\
         The same hash is in `proof.json` (`log_sha256`) and in the commit's `Evidence-Log-SHA256` trailer.\n",
        file = proof.log_file,
        bytes = proof.log_bytes,
        sha = proof.log_sha256,
    );
    s
}

/// The commit message: subject, a short body, then the trailers.
pub fn commit_message(proof: &Proof, log_path: &str, signoff: Option<&str>) -> String {
    let mut s = String::new();
    let _ = write!(s, "evidence({}): ", proof.kind);
    match &proof.template {
        Some(t) => {
            let _ = write!(s, "{t} {}", proof.run_id);
        }
        None => s.push_str(&proof.run_id),
    }
    if let Some(vmid) = proof.vmid {
        let _ = write!(s, " vmid {vmid}");
    }
    if proof.status != Status::Success {
        let _ = write!(s, " ({})", proof.status);
    }
    s.push_str("\n\n");
    let verdict = match proof.status {
        Status::Success => "succeeded",
        Status::Failed => "failed",
        Status::Cancelled => "was cancelled",
    };
    let _ = write!(s, "{} {verdict}", what(proof));
    if let Some(host) = &proof.host {
        let _ = write!(s, " on {}", one_line(host));
    }
    let _ = writeln!(s, " (exit code {}).", proof.exit_code);
    let _ = write!(s, "Started {}", proof.started_at);
    if let Some(finished) = &proof.finished_at {
        let _ = write!(s, ", finished {finished}");
    }
    if let Some(d) = proof.duration_seconds {
        let _ = write!(s, " ({})", duration(d));
    }
    s.push_str(".\n");
    let _ = writeln!(s, "Log: {log_path} ({} bytes).", proof.log_bytes);
    s.push('\n');
    for (key, value) in trailers(proof) {
        let _ = writeln!(s, "{key}: {value}");
    }
    if let Some(who) = signoff {
        let _ = writeln!(s, "Signed-off-by: {}", one_line(who));
    }
    s
}

/// The `Evidence-*` trailers of a proof's commit, in order.
pub fn trailers(proof: &Proof) -> Vec<(&'static str, String)> {
    let mut t = vec![("Evidence-Kind", proof.kind.to_string())];
    if let Some(template) = &proof.template {
        t.push(("Evidence-Template", template.clone()));
    }
    t.push(("Evidence-Run", proof.run_id.clone()));
    t.push(("Evidence-Status", proof.status.to_string()));
    t.push(("Evidence-Log-SHA256", proof.log_sha256.clone()));
    t.push(("Evidence-Log-Bytes", proof.log_bytes.to_string()));
    if let Some(vmid) = proof.vmid {
        t.push(("Evidence-VMID", vmid.to_string()));
    }
    if let Some(node) = &proof.node {
        t.push(("Evidence-Node", one_line(node)));
    }
    if let Some(host) = &proof.host {
        t.push(("Evidence-Host", one_line(host)));
    }
    t.push(("Evidence-Tool", proof.tool.to_string()));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(4.25), "4.25s");
        assert_eq!(duration(0.0), "0s");
        assert_eq!(duration(59.0), "59s");
        assert_eq!(duration(725.0), "12m 05s");
        assert_eq!(duration(3723.0), "1h 02m 03s");
    }

    #[test]
    fn cells_stay_in_their_cell() {
        assert_eq!(cell("a|b\nc<d>"), "a\\|b c&lt;d&gt;");
    }
}
