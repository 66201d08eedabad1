//! Redaction: every byte of a run passes through here before it is hashed, stored, committed or
//! shown, and leaves without the secrets we know of or can recognise.
//!
//! What is recognised (each replacement is `[REDACTED:<rule>]`, never keeping a prefix, suffix,
//! length or hash of the secret):
//! - literal secrets — values of secret-looking environment variables, secret-looking `-var`s
//!   and options of the command line, `--redact-env`, `--redact-file` — and their derived forms
//!   (base64 standard and URL-safe at every alignment, URL-, JSON- and shell-escaped, upper and
//!   lower case, reversed);
//! - patterns: `PVEAPIToken=…`, `Authorization:` values, cookies, `CSRFPreventionToken`,
//!   passwords in URLs, `password=`-style key–values, AWS access keys, GitHub tokens, JWTs, and
//!   `git config evidence.redact` expressions;
//! - private-key blocks (every line between BEGIN and END) and typed keystrokes (Packer's
//!   `Sending char 'X'` lines, Proxmox `sendkey` keys), masked line by line so the line count
//!   stays.
//!
//! The stream is processed in bounded windows: no match crosses a line end (multi-line secrets
//! are matched line by line), a line longer than [`MAX_LINE`] is processed in overlapping
//! windows of [`MAX_MATCH`] bytes, and at most `MAX_LINE + MAX_MATCH` bytes are held. What this
//! cannot catch is a secret it was never told about that matches no pattern.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use regex::bytes::{Regex, RegexBuilder};

/// A line longer than this is processed in windows instead of as a whole.
pub const MAX_LINE: usize = 1 << 20;
/// The longest match any rule may make; windows overlap by this much.
pub const MAX_MATCH: usize = 4096;
/// Literal secrets shorter than this are not redacted (they would match everywhere).
pub const MIN_SECRET: usize = 4;
/// Prefixes of a secret this long or longer are redacted as well.
pub const MIN_PREFIX: usize = 8;

/// A pattern rule: the regex, and which capture group holds the secret (0: all of it).
struct Pattern {
    rule: &'static str,
    regex: Regex,
    group: usize,
}

fn pattern(rule: &'static str, group: usize, re: &str) -> Pattern {
    Pattern {
        rule,
        // Byte-oriented: classes match any byte, not just UTF-8 (logs are not always UTF-8),
        // and the automata stay small enough to compile in a few milliseconds at start-up.
        regex: RegexBuilder::new(re)
            .unicode(false)
            .size_limit(1 << 24)
            .build()
            .unwrap_or_else(|e| panic!("built-in pattern {rule} is invalid: {e}")),
        group,
    }
}

/// The built-in patterns. Every repetition is bounded so that no match exceeds [`MAX_MATCH`].
static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    // A secret value: no white space or quote, at most 512 bytes.
    const V: &str = r#"[^\s"'<>]{1,512}"#;
    vec![
        pattern(
            "pve-api-token",
            1,
            &format!(r"PVEAPIToken[=: ][ \t]{{0,4}}({V})"),
        ),
        pattern(
            "authorization",
            1,
            &format!(
                r"(?i)authorization[\x22']?[ \t]{{0,4}}[:=][ \t]{{0,4}}[\x22']?(?:basic|bearer|token|pveapitoken)[ =][ \t]{{0,4}}({V})"
            ),
        ),
        pattern(
            "cookie",
            1,
            r"(?i)(?:set-)?cookie[\x22']?[ \t]{0,4}[:=][ \t]{0,4}[\x22']?([^\r\n\x22']{1,1024})",
        ),
        pattern("cookie", 1, &format!(r"PVEAuthCookie=({V})")),
        pattern(
            "csrf-token",
            1,
            r#"(?i)CSRFPreventionToken[\x22']?[ \t]{0,4}[:=][ \t]{0,4}[\x22']?([A-Za-z0-9:+/=_.-]{4,512})"#,
        ),
        pattern(
            "url-userinfo",
            1,
            r"(?i)\b[a-z][a-z0-9+.-]{0,30}://([^/\s:@\x22']{1,256}:[^/\s@\x22']{1,256})@",
        ),
        // `password=`, `ssh_password: `, `"api_key": "…"`, `secrets=`: the key ends in one of
        // these words (a longer key like `keyboard` does not match, nor does its value).
        pattern(
            "key-value",
            1,
            &format!(
                r#"(?i:pass|secret|token|key|credential|pwd)(?i:word|wd|phrase|s)?[\x22']?[ \t]{{0,4}}[:=][ \t]{{0,4}}[\x22']?({V})"#
            ),
        ),
        pattern(
            "aws-access-key",
            0,
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
        ),
        pattern(
            "github-token",
            0,
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})\b",
        ),
        pattern(
            "jwt",
            0,
            r"\beyJ[A-Za-z0-9_-]{4,1500}\.eyJ[A-Za-z0-9_-]{4,1500}\.[A-Za-z0-9_-]{8,1000}",
        ),
        // A private key written on one line with escaped line ends (JSON, HCL).
        pattern(
            "private-key",
            0,
            r"-----BEGIN [A-Z ]{0,20}PRIVATE KEY-----[A-Za-z0-9+/=\\:,\- ]{1,3800}-----END [A-Z ]{0,20}PRIVATE KEY-----",
        ),
        pattern(
            "keystroke",
            0,
            r"(?i)\bsendkey\b[^\r\n]{0,512}?\bkey=([^\s&\x22',]{1,64})",
        ),
    ]
});

/// Values of key–value pairs that are obviously not secrets (Packer's own vocabulary).
static HARMLESS_VALUES: &[&[u8]] = &[
    b"<sensitive>",
    b"true",
    b"false",
    b"null",
    b"nil",
    b"none",
    b"[]",
    b"{}",
];

/// Packer's keystroke lines: `Sending char 'P', code 0x50, shift true`.
static KEYSTROKE: LazyLock<Regex> = LazyLock::new(|| {
    // `-machine-readable` output spells the commas `%!(PACKER_COMMA)`.
    RegexBuilder::new(
        r"Sending char '?(.{1,4}?)'?(?:,|%!\(PACKER_COMMA\)) code (0x[0-9A-Fa-f]{1,8})(?:,|%!\(PACKER_COMMA\)) shift (true|false)",
    )
    .unicode(false)
    .build()
    .expect("valid keystroke regex")
});

const PEM_BEGIN: &[u8] = b"-----BEGIN ";

/// Searchers for the line markers, built once.
static PEM_BEGIN_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(PEM_BEGIN));
static PEM_END_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"-----END "));
static PRIVATE_KEY_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"PRIVATE KEY-----"));
static KEYSTROKE_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"Sending char "));

/// Where each secret came from, for `[REDACTED:<rule>]` and the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub value: Vec<u8>,
    pub rule: String,
}

/// Everything a redactor needs to know, gathered before the run starts.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Known secret values with the rule that found them (`env`, `argv`, `redact-env`, …).
    pub secrets: Vec<Secret>,
    /// Extra regular expressions (`git config evidence.redact`), whole match redacted.
    pub extra: Vec<String>,
}

/// A span of the window to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: usize,
    end: usize,
    rule: usize,
    /// Lines of a private-key block are counted once per block, not per line.
    counted: bool,
    /// A known secret (rather than a pattern).
    literal: bool,
}

/// The streaming redactor. Feed it with [`Redactor::push`], end with [`Redactor::finish`].
pub struct Redactor {
    literals: Option<AhoCorasick>,
    /// Rule index of each literal pattern.
    literal_rules: Vec<usize>,
    /// For a literal that is the first MIN_PREFIX bytes of a secret, the secret: a match is
    /// extended over as much of it as follows, so a truncated copy (`cut -c1-10`, a line cut
    /// short) goes too. Shorter prefixes would match ordinary text.
    literal_prefix_of: Vec<Option<Vec<u8>>>,
    extra: Vec<Regex>,
    /// Rule names, each once; spans refer to them by index.
    rules: Vec<String>,
    /// Rule index of each built-in pattern.
    pattern_rules: Vec<usize>,
    keystroke_rule: usize,
    pem_rule: usize,
    config_rule: usize,
    counts: Vec<u64>,
    /// Bytes not yet settled (the start of a line, or a window's overlap).
    pending: Vec<u8>,
    /// Inside a private-key block.
    in_pem: bool,
    /// Lines masked in the current block: a BEGIN line without an END (a script that only
    /// mentions one) must not mask the rest of the log.
    pem_lines: usize,
}

/// No private key is longer (an RSA 8192-bit key in PEM is about 100 lines).
const MAX_PEM_LINES: usize = 128;

/// Splits a name like `PKR_VAR_api_key` or `apiKey` into upper-case words.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = ch.is_ascii_lowercase() || ch.is_ascii_digit();
        cur.push(ch.to_ascii_uppercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether an environment variable or `-var` name looks like it holds a secret.
///
/// A name is split into words (`_`, `-`, `.`, camelCase). Secret words: TOKEN, SECRET, PASSWORD,
/// PASSWD, PASS, PWD, KEY, CREDENTIAL(S), AUTH, COOKIE, PASSPHRASE, and words ending in TOKEN,
/// SECRET, PASSWORD, PASSWD or KEY after a known prefix (APITOKEN, APIKEY, PRIVATEKEY…). Not
/// secret: `PWD` and `OLDPWD` (paths), `SSH_AUTH_SOCK` (a socket path), and false friends
/// such as KEYBOARD, KEYMAP, MONKEY, PASSENGER, AUTHOR, BYPASS.
pub fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if matches!(
        upper.as_str(),
        "PWD" | "OLDPWD" | "SSH_AUTH_SOCK" | "XAUTHORITY" | "GPG_AGENT_INFO"
    ) {
        return false;
    }
    const EXACT: &[&str] = &[
        "TOKEN",
        "TOKENS",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWORDS",
        "PASSWD",
        "PASS",
        "PWD",
        "KEY",
        "KEYS",
        "CREDENTIAL",
        "CREDENTIALS",
        "CREDS",
        "AUTH",
        "COOKIE",
        "COOKIES",
        "PASSPHRASE",
        "PSK",
    ];
    const SUFFIXES: &[&str] = &["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE"];
    const KEY_PREFIXES: &[&str] = &[
        "API",
        "PRIVATE",
        "ACCESS",
        "SECRET",
        "SIGNING",
        "ENCRYPTION",
        "MASTER",
        "SSH",
    ];
    words(name).iter().any(|w| {
        EXACT.contains(&w.as_str())
            || SUFFIXES.iter().any(|s| w.len() > s.len() && w.ends_with(s))
            || KEY_PREFIXES
                .iter()
                .any(|p| w.len() == p.len() + 3 && w.starts_with(p) && w.ends_with("KEY"))
    })
}

/// The forms a secret may take in a log besides itself.
pub fn derived_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms: Vec<Vec<u8>> = Vec::new();
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        // The secret may start at any of the three positions of a base64 group: encode it
        // after 0, 1 and 2 filler bytes and keep only the characters that depend on it alone.
        for lead in 0..3usize {
            let mut padded = vec![0u8; lead];
            padded.extend_from_slice(secret);
            let encoded = engine.encode(&padded);
            let start = (lead * 8).div_ceil(6);
            let end = ((lead + secret.len()) * 8) / 6;
            if end > start + 5 {
                forms.push(encoded.as_bytes()[start..end].to_vec());
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(secret) {
        let url = percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        forms.push(url.clone().into_bytes());
        forms.push(url.to_lowercase().into_bytes());
        if let Ok(json) = serde_json::to_string(text) {
            forms.push(json.as_bytes()[1..json.len() - 1].to_vec());
        }
        let single_quoted = text.replace('\'', r"'\''");
        forms.push(single_quoted.into_bytes());
        let mut backslashed = String::with_capacity(text.len() * 2);
        for ch in text.chars() {
            if !(ch.is_ascii_alphanumeric() || "-_./:@,+=%".contains(ch)) {
                backslashed.push('\\');
            }
            backslashed.push(ch);
        }
        forms.push(backslashed.into_bytes());
        if secret.len() >= 8 {
            forms.push(text.to_uppercase().into_bytes());
            forms.push(text.to_lowercase().into_bytes());
            forms.push(text.chars().rev().collect::<String>().into_bytes());
        }
    }
    forms.retain(|f| f.len() >= MIN_SECRET && f != secret);
    forms.sort();
    forms.dedup();
    forms
}

impl Redactor {
    /// Builds a redactor for the known secrets and extra expressions.
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut rules: Vec<String> = Vec::new();
        let rule_index =
            |name: &str, rules: &mut Vec<String>| match rules.iter().position(|r| r == name) {
                Some(i) => i,
                None => {
                    rules.push(name.to_owned());
                    rules.len() - 1
                }
            };
        let pattern_rules = PATTERNS
            .iter()
            .map(|p| rule_index(p.rule, &mut rules))
            .collect();
        let keystroke_rule = rule_index("keystroke", &mut rules);
        let pem_rule = rule_index("private-key", &mut rules);
        let config_rule = rule_index("config", &mut rules);
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut literal_rules = Vec::new();
        let mut literal_prefix_of = Vec::new();
        for secret in &config.secrets {
            // Multi-line secrets (a key in a variable) are matched line by line.
            for line in secret.value.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() < MIN_SECRET || line.len() > MAX_MATCH {
                    continue;
                }
                let rule = rule_index(&secret.rule, &mut rules);
                for form in std::iter::once(line.to_vec()).chain(derived_forms(line)) {
                    if form.len() <= MAX_MATCH && !literals.contains(&form) {
                        literals.push(form);
                        literal_rules.push(rule);
                        literal_prefix_of.push(None);
                    }
                }
                if line.len() > MIN_PREFIX {
                    literals.push(line[..MIN_PREFIX].to_vec());
                    literal_rules.push(rule);
                    literal_prefix_of.push(Some(line.to_vec()));
                }
            }
        }
        let literals_ac = if literals.is_empty() {
            None
        } else {
            Some(
                // Every occurrence, overlapping ones too: two secrets that overlap in the
                // text must both go, which leftmost matching would not guarantee.
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&literals)
                    .map_err(|e| format!("cannot build the secret matcher: {e}"))?,
            )
        };
        let mut extra = Vec::new();
        for re in &config.extra {
            let regex = RegexBuilder::new(re)
                .size_limit(1 << 24)
                .build()
                .map_err(|e| format!("invalid evidence.redact expression {re:?}: {e}"))?;
            extra.push(regex);
        }
        let counts = vec![0; rules.len()];
        Ok(Redactor {
            literals: literals_ac,
            literal_rules,
            literal_prefix_of,
            extra,
            rules,
            pattern_rules,
            keystroke_rule,
            pem_rule,
            config_rule,
            counts,
            pending: Vec::new(),
            in_pem: false,
            pem_lines: 0,
        })
    }

    /// Replacements made so far, per rule (rules that never fired are left out).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.rules
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.clone(), *n))
            .collect()
    }

    /// Redacts the next bytes of the stream, appending what is settled to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        loop {
            // Everything up to the last line end is settled; an over-long line is settled up
            // to MAX_MATCH before its end (no match is longer, so none is cut).
            let settled = match memchr::memrchr(b'\n', &self.pending) {
                Some(i) => i + 1,
                None if self.pending.len() > MAX_LINE => self.pending.len() - MAX_MATCH,
                None => return,
            };
            let window = std::mem::take(&mut self.pending);
            let emitted = self.redact_window(&window, settled, false, out);
            self.pending = window[emitted..].to_vec();
            if emitted == window.len() || self.pending.len() <= MAX_LINE {
                return;
            }
        }
    }

    /// Redacts what is left at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let window = std::mem::take(&mut self.pending);
        let len = window.len();
        self.redact_window(&window, len, true, out);
        self.in_pem = false;
    }

    /// Redacts a whole value at once (an argument, a fact, a message).
    pub fn redact_bytes(&mut self, value: &[u8]) -> Vec<u8> {
        let saved_pem = std::mem::replace(&mut self.in_pem, false);
        let saved = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(value.len());
        self.push(value, &mut out);
        self.finish(&mut out);
        self.pending = saved;
        self.in_pem = saved_pem;
        out
    }

    /// [`Redactor::redact_bytes`] for text.
    pub fn redact_str(&mut self, value: &str) -> String {
        String::from_utf8_lossy(&self.redact_bytes(value.as_bytes())).into_owned()
    }

    /// Redacts `window[..settled]` (looking at the whole window for context), writes it to
    /// `out`, and returns how many bytes of the window were consumed (≥ `settled`, when a match
    /// that starts before `settled` ends after it).
    fn redact_window(
        &mut self,
        window: &[u8],
        settled: usize,
        at_end: bool,
        out: &mut Vec<u8>,
    ) -> usize {
        let mut spans = Vec::new();
        self.line_rules(window, settled, at_end, &mut spans);
        if let Some(ac) = &self.literals {
            for m in ac.find_overlapping_iter(window) {
                if m.start() >= settled {
                    continue;
                }
                let id = m.pattern().as_usize();
                let end = match &self.literal_prefix_of[id] {
                    Some(secret) => {
                        let rest = &window[m.start()..];
                        rest.iter().zip(secret).take_while(|(a, b)| a == b).count() + m.start()
                    }
                    None => m.end(),
                };
                spans.push(Span {
                    start: m.start(),
                    end,
                    rule: self.literal_rules[id],
                    counted: true,
                    literal: true,
                });
            }
        }
        for (rule, p) in PATTERNS.iter().enumerate() {
            // The fast engines find where a pattern matches; only that stretch is then searched
            // again for the capture group, which is slower and needs memory by haystack size.
            for whole in p.regex.find_iter(window) {
                if whole.start() >= settled {
                    break;
                }
                let m = if p.group == 0 {
                    whole
                } else {
                    match p
                        .regex
                        .captures_at(&window[..whole.end()], whole.start())
                        .and_then(|c| c.get(p.group))
                    {
                        Some(m) => m,
                        None => continue,
                    }
                };
                if p.rule == "key-value" && HARMLESS_VALUES.contains(&m.as_bytes()) {
                    continue;
                }
                spans.push(Span {
                    start: m.start(),
                    end: m.end(),
                    rule: self.pattern_rules[rule],
                    counted: true,
                    literal: false,
                });
            }
        }
        if !self.extra.is_empty() {
            let rule = self.config_rule;
            for re in &self.extra {
                for m in re.find_iter(window) {
                    if m.start() >= settled {
                        break;
                    }
                    if m.end() > m.start() {
                        spans.push(Span {
                            start: m.start(),
                            end: m.end(),
                            rule,
                            counted: true,
                            literal: false,
                        });
                    }
                }
            }
        }
        // Where spans start together, a known secret names the replacement before a pattern.
        spans.sort_by_key(|s| (s.start, !s.literal, s.end, s.rule));
        let mut pos = 0;
        let mut last: Option<Span> = None;
        for span in spans {
            match &mut last {
                Some(l) if span.start < l.end => {
                    l.end = l.end.max(span.end);
                    l.counted |= span.counted;
                }
                _ => {
                    if let Some(l) = last.take() {
                        pos = self.replace(window, pos, l, out);
                    }
                    last = Some(span);
                }
            }
        }
        if let Some(l) = last {
            pos = self.replace(window, pos, l, out);
        }
        let end = settled.max(pos);
        out.extend_from_slice(&window[pos..end]);
        end
    }

    fn replace(&mut self, window: &[u8], pos: usize, span: Span, out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(&window[pos..span.start]);
        out.extend_from_slice(b"[REDACTED:");
        out.extend_from_slice(self.rules[span.rule].as_bytes());
        out.push(b']');
        if span.counted {
            self.counts[span.rule] += 1;
        }
        span.end
    }

    /// Keystroke lines and private-key blocks in `window[..settled]`. Lines are looked at one
    /// by one only inside a key block; elsewhere the markers are searched for in the whole
    /// region, so ordinary lines cost nothing here.
    fn line_rules(&mut self, window: &[u8], settled: usize, at_end: bool, spans: &mut Vec<Span>) {
        let region = &window[..settled];
        let line_at = |start: usize| {
            let end = memchr::memchr(b'\n', &region[start..]).map_or(region.len(), |i| start + i);
            // A line without its end is only whole at the end of the stream.
            (end, end < region.len() || at_end)
        };
        let mut pos = 0;
        while pos < region.len() {
            if self.in_pem {
                let (end, complete) = line_at(pos);
                let line = &region[pos..end];
                let body_end = if line.ends_with(b"\r") { end - 1 } else { end };
                let ends = complete && PEM_END_FINDER.find(line).is_some();
                if ends || self.pem_lines >= MAX_PEM_LINES {
                    self.in_pem = false;
                } else if body_end > pos {
                    if complete {
                        self.pem_lines += 1;
                    }
                    spans.push(Span {
                        start: pos,
                        end: body_end,
                        rule: self.pem_rule,
                        counted: false,
                        literal: false,
                    });
                }
                pos = end + 1;
                continue;
            }
            let rest = &region[pos..];
            let begin = PEM_BEGIN_FINDER.find(rest);
            let key = KEYSTROKE_FINDER.find(rest);
            let Some(hit) = begin.into_iter().chain(key).min() else {
                break;
            };
            let hit = pos + hit;
            let line_start = memchr::memrchr(b'\n', &region[..hit]).map_or(0, |i| i + 1);
            let (end, complete) = line_at(hit);
            let line = &region[line_start..end];
            if complete
                && let Some(i) = PEM_BEGIN_FINDER.find(line)
                && PRIVATE_KEY_FINDER.find(&line[i..]).is_some()
                && PEM_END_FINDER.find(&line[i + PEM_BEGIN.len()..]).is_none()
            {
                self.in_pem = true;
                self.pem_lines = 0;
                self.counts[self.pem_rule] += 1;
            } else if complete && let Some(caps) = KEYSTROKE.captures(line) {
                for m in (1..=3).filter_map(|g| caps.get(g)) {
                    spans.push(Span {
                        start: line_start + m.start(),
                        end: line_start + m.end(),
                        rule: self.keystroke_rule,
                        counted: true,
                        literal: false,
                    });
                }
            }
            pos = end + 1;
        }
    }
}

/// Where the secrets to redact come from, as the command line and git config say.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--redact-env NAME`: variables whose values are secret whatever their names.
    pub redact_env: Vec<String>,
    /// `--redact-file FILE`: one secret per line.
    pub redact_files: Vec<std::path::PathBuf>,
    /// `git config evidence.redact`: regular expressions.
    pub expressions: Vec<String>,
}

/// Gathers the secrets of this process's environment, the wrapped command's argv and the
/// configured sources into a [`Config`]. Errors name the file or expression at fault.
pub fn gather(argv: &[std::ffi::OsString], sources: &Sources) -> Result<Config, String> {
    let mut secrets = Vec::new();
    let mut add = |value: &[u8], rule: &str| {
        if value.len() >= MIN_SECRET {
            secrets.push(Secret {
                value: value.to_vec(),
                rule: rule.to_owned(),
            });
        }
    };
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let forced = sources.redact_env.iter().any(|n| *n == name);
        if !(forced || secret_name(&name)) {
            continue;
        }
        let value = value.as_encoded_bytes();
        let rule = if forced { "redact-env" } else { "env" };
        add(value, rule);
        // `user@realm!tokenid=secret`: the secret part alone may be logged too.
        if let Some(i) = value.iter().rposition(|&b| b == b'=')
            && value[..i].contains(&b'!')
        {
            add(&value[i + 1..], rule);
        }
    }
    for name in &sources.redact_env {
        if std::env::var_os(name).is_none() {
            tracing::debug!("--redact-env {name}: not set");
        }
    }
    for value in argv_secrets(argv) {
        add(&value, "argv");
    }
    for path in &sources.redact_files {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read --redact-file {}: {e}", path.display()))?;
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            add(line, "redact-file");
        }
    }
    let config = Config {
        secrets,
        extra: sources.expressions.clone(),
    };
    // Fail now, with the expression named, rather than when the build has run.
    Redactor::new(&config)?;
    Ok(config)
}

/// Secret values on a command line: `-var name=value` / `-var=name=value` with a secret-looking
/// name, `--password value` / `--password=value` / `-token=value` options, and bare
/// `password=value` arguments.
pub fn argv_secrets(argv: &[std::ffi::OsString]) -> Vec<Vec<u8>> {
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let next = args.get(i + 1);
        let flag = arg.trim_start_matches('-');
        let dashes = arg.len() - flag.len();
        if dashes > 0 && (flag == "var" || flag.starts_with("var=")) {
            let assignment = if flag == "var" {
                i += 1;
                next.map(String::as_str)
            } else {
                Some(&flag["var=".len()..])
            };
            if let Some((name, value)) = assignment.and_then(|a| a.split_once('='))
                && secret_name(name)
            {
                out.push(value.as_bytes().to_vec());
            }
        } else if dashes > 0 {
            match flag.split_once('=') {
                Some((name, value)) if secret_name(name) => out.push(value.as_bytes().to_vec()),
                None if secret_name(flag) => {
                    if let Some(value) = next.filter(|v| !v.starts_with('-')) {
                        out.push(value.as_bytes().to_vec());
                        i += 1;
                    }
                }
                _ => {}
            }
        } else if let Some((name, value)) = arg.split_once('=')
            && secret_name(name)
        {
            out.push(value.as_bytes().to_vec());
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(config: &Config, input: &[u8], chunk: usize) -> (Vec<u8>, BTreeMap<String, u64>) {
        let mut r = Redactor::new(config).unwrap();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            r.push(c, &mut out);
        }
        r.finish(&mut out);
        (out, r.counts())
    }

    fn secrets(values: &[&str]) -> Config {
        Config {
            secrets: values
                .iter()
                .map(|v| Secret {
                    value: v.as_bytes().to_vec(),
                    rule: "env".into(),
                })
                .collect(),
            extra: Vec::new(),
        }
    }

    #[test]
    fn secret_names_and_their_false_friends() {
        for name in [
            "PROXMOX_TOKEN",
            "PROXMOX_PASSWORD",
            "PKR_VAR_ssh_password",
            "PKR_VAR_api_key",
            "API_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "DB_PASS",
            "MYSQL_PWD",
            "apiKey",
            "GITHUB_TOKEN",
            "APITOKEN",
            "VAULT_AUTH",
            "SESSION_COOKIE",
            "GOOGLE_CREDENTIALS",
            "winrm_password",
            "SSHKEY",
            "client_secret",
        ] {
            assert!(secret_name(name), "{name} should be secret");
        }
        for name in [
            "PWD",
            "OLDPWD",
            "KEYBOARD_LAYOUT",
            "XKB_KEYMAP",
            "MONKEY",
            "PASSENGER_HOME",
            "GIT_AUTHOR_NAME",
            "BYPASS_PROXY",
            "SSH_AUTH_SOCK",
            "HOME",
            "PATH",
            "PACKER_LOG",
            "KEYTIMEOUT",
            "TOKENIZER_THREADS",
            "COMPASS",
            "AUTHOR",
        ] {
            assert!(!secret_name(name), "{name} should not be secret");
        }
    }

    #[test]
    fn literal_secrets_and_their_derived_forms_go_whatever_the_chunking() {
        let secret = "s3cr3t-T0KEN-abc123";
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let b64_embedded =
            base64::engine::general_purpose::STANDARD.encode(format!("root:{secret}"));
        let input = format!(
            "a {secret} b\nb64={b64}\nbasic={b64_embedded}\nupper={}\nrev={}\nurl={}\njson={}\npart={}\nclean line\n",
            secret.to_uppercase(),
            secret.chars().rev().collect::<String>(),
            "s3cr3t-T0KEN-abc123".replace('-', "%2D"),
            serde_json::to_string("s3cr3t-T0KEN-abc123").unwrap(),
            &secret[..10],
        );
        for chunk in [1, 3, 17, 4096] {
            let (out, counts) = redact(&secrets(&[secret]), input.as_bytes(), chunk);
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("s3cr3t"), "chunk {chunk}: {out}");
            assert!(
                !out.to_lowercase().contains("s3cr3t"),
                "chunk {chunk}: {out}"
            );
            assert!(!out.contains(&b64[..12]), "chunk {chunk}: {out}");
            assert!(!out.contains("321cba"), "chunk {chunk}: {out}");
            assert!(out.contains("a [REDACTED:env] b\n"), "{out}");
            assert!(out.ends_with("clean line\n"), "{out}");
            assert_eq!(out.lines().count(), input.lines().count());
            assert!(
                out.contains("part=[REDACTED:env]\n"),
                "a truncated copy goes: {out}"
            );
            assert!(counts["env"] >= 8, "{counts:?}");
        }
    }

    #[test]
    fn patterns_catch_what_was_never_declared() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "auth=PVEAPIToken=root@pam!packer=0b7a-1234-5678\n",
                "0b7a",
                "pve-api-token",
            ),
            (
                "Authorization: Bearer abc.def.ghi123\n",
                "abc.def",
                "authorization",
            ),
            (
                "Authorization: Basic dXNlcjpwYXNz\n",
                "dXNlcjpwYXNz",
                "authorization",
            ),
            (
                "Cookie: PVEAuthCookie=PVE:root@pam:65A1::sig\n",
                "65A1",
                "cookie",
            ),
            (
                "\"CSRFPreventionToken\":\"65A1B2C3:Zm9vYmFy\"\n",
                "Zm9vYmFy",
                "csrf-token",
            ),
            (
                "GET https://admin:hunter2@pve.example:8006/api2/json\n",
                "hunter2",
                "url-userinfo",
            ),
            ("ssh_password=Pa55w0rd!Xy\n", "Pa55w0rd", "key-value"),
            ("\"winrm_password\": \"W1nRM-pw\"\n", "W1nRM", "key-value"),
            (
                "export API_TOKEN=s3cr3t-T0KEN-abc123\n",
                "s3cr3t",
                "key-value",
            ),
            (
                "key AKIAIOSFODNN7EXAMPLE used\n",
                "AKIAIOSFODNN7EXAMPLE",
                "aws-access-key",
            ),
            (
                "gh token ghp_0123456789abcdefghijABCDEFGHIJ012345 ok\n",
                "ghp_0123",
                "github-token",
            ),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXNpZw\n",
                "eyJzdWIi",
                "jwt",
            ),
            (
                "POST /nodes/pve1/qemu/9000/sendkey key=shift-p\n",
                "shift-p",
                "keystroke",
            ),
        ];
        for (input, secret, rule) in cases {
            let (out, counts) = redact(&Config::default(), input.as_bytes(), 5);
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains(secret), "{rule}: {out}");
            assert!(out.contains(&format!("[REDACTED:{rule}]")), "{rule}: {out}");
            assert!(counts.contains_key(*rule), "{rule}: {counts:?}");
        }
    }

    #[test]
    fn harmless_lines_pass_unchanged() {
        let harmless = "2026/11/26 19:17:58 [TRACE] validateValue: not active for pm_password, so skipping\n\
            ==> null.x: token-from-env=<sensitive>\n\
            Build 'null.x' finished after 39 milliseconds.\n\
            2026/11/26 19:17:58 packer-builder-proxmox-iso plugin: Disk 0 cache mode not set, using default 'none'\n";
        let (out, counts) = redact(&Config::default(), harmless.as_bytes(), 7);
        assert_eq!(String::from_utf8(out).unwrap(), harmless);
        assert!(counts.is_empty(), "{counts:?}");
    }

    #[test]
    fn keystrokes_and_private_keys_are_masked_line_by_line() {
        let input = b"x: Sending char 'P', code 0x50, shift true\r\n\
            x: Sending char 'a', code 0x61, shift false\n\
            -----BEGIN OPENSSH PRIVATE KEY-----\n\
            b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n\
            AAAAMwAAAAtzc2gtZWQyNTUxOQAAACD\n\
            -----END OPENSSH PRIVATE KEY-----\n\
            after\n";
        for chunk in [1, 9, 1000] {
            let (out, counts) = redact(&Config::default(), input, chunk);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.lines().count(), 7, "{text}");
            assert!(
                !text.contains("'P'") && !text.contains("0x50") && !text.contains("0x61"),
                "{text}"
            );
            assert!(
                !text.contains("b3Blbn") && !text.contains("AAAAMw"),
                "{text}"
            );
            assert!(
                text.contains("-----BEGIN OPENSSH PRIVATE KEY-----\n[REDACTED:private-key]\n"),
                "{text}"
            );
            assert!(
                text.ends_with("-----END OPENSSH PRIVATE KEY-----\nafter\n"),
                "{text}"
            );
            assert!(
                text.starts_with(
                    "x: Sending char '[REDACTED:keystroke]', code [REDACTED:keystroke]"
                ),
                "{text}"
            );
            assert!(text.contains("\r\n"), "line ends kept: {text:?}");
            assert_eq!(counts["private-key"], 1, "{counts:?}");
            assert_eq!(counts["keystroke"], 6, "{counts:?}");
        }
    }

    #[test]
    fn a_begin_line_without_an_end_masks_a_bounded_number_of_lines() {
        let mut input = b"echo -----BEGIN RSA PRIVATE KEY-----\n".to_vec();
        for i in 0..300 {
            input.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        let (out, _) = redact(&Config::default(), &input, 64);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 301);
        assert!(text.contains("line 299\n"), "the rest of the log survives");
        assert_eq!(
            text.matches("[REDACTED:private-key]").count(),
            MAX_PEM_LINES
        );
    }

    #[test]
    fn machine_readable_keystrokes_are_masked_too() {
        let input = b"1795725718,,ui,message,    x: Sending char 'P'%!(PACKER_COMMA) code 0x50%!(PACKER_COMMA) shift true\n";
        let (out, _) = redact(&Config::default(), input, 10);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("0x50") && !text.contains("'P'"), "{text}");
    }

    #[test]
    fn very_long_lines_and_non_utf8_bytes() {
        let secret = "Zq9-long-line-secret";
        let mut input = vec![0xffu8; MAX_LINE + 3 * MAX_MATCH];
        let at = MAX_LINE - 5;
        input[at..at + secret.len()].copy_from_slice(secret.as_bytes());
        input.extend_from_slice(b"\n\xfe\xfd");
        input.extend_from_slice(secret.as_bytes());
        for chunk in [4096, 65536, 1 << 20] {
            let (out, counts) = redact(&secrets(&[secret]), &input, chunk);
            assert!(
                memchr::memmem::find(&out, secret.as_bytes()).is_none(),
                "chunk {chunk}"
            );
            assert_eq!(counts["env"], 2);
            let expected_len = input.len() - 2 * secret.len() + 2 * "[REDACTED:env]".len();
            assert_eq!(out.len(), expected_len);
            assert!(out.starts_with(&[0xff; 100]));
        }
    }

    #[test]
    fn command_line_secrets() {
        let argv: Vec<std::ffi::OsString> = [
            "packer",
            "build",
            "-var",
            "ssh_password=hunter22",
            "-var=api_token=tok-1234",
            "-var",
            "vm_name=ubuntu",
            "--password",
            "pw-5678",
            "-token=t0k3n",
            "db_pass=secretpw",
            "-only=proxmox-iso.ubuntu",
            "--verbose",
            "build.pkr.hcl",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let found: Vec<String> = argv_secrets(&argv)
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect();
        assert_eq!(
            found,
            ["hunter22", "tok-1234", "pw-5678", "t0k3n", "secretpw"]
        );
    }

    #[test]
    fn extra_expressions_and_bad_ones() {
        let config = Config {
            secrets: Vec::new(),
            extra: vec!["corp-[0-9]{6}".into()],
        };
        let (out, counts) = redact(&config, b"ticket corp-123456 filed\n", 4);
        assert_eq!(out, b"ticket [REDACTED:config] filed\n");
        assert_eq!(counts["config"], 1);
        let bad = Config {
            secrets: Vec::new(),
            extra: vec!["(unclosed".into()],
        };
        assert!(
            Redactor::new(&bad)
                .err()
                .unwrap()
                .contains("invalid evidence.redact expression")
        );
    }

    /// Random secrets at random offsets in random logs, read in random chunk sizes: never in
    /// the output, and everything around them unchanged.
    #[test]
    fn property_random_secrets_never_survive() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..60 {
            let n_secrets = 1 + (next() % 6) as usize;
            let secrets_list: Vec<String> = (0..n_secrets)
                .map(|i| {
                    let len = 8 + (next() % 24) as usize;
                    let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
                    let body: String = (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                        .collect();
                    format!("Q{i}{body}")
                })
                .collect();
            // Filler that cannot form a secret: lower-case words and punctuation only.
            let mut log = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..(50 + next() % 200) {
                let filler_len = (next() % 300) as usize;
                let filler: Vec<u8> = (0..filler_len)
                    .map(|_| match next() % 40 {
                        0 => b'\n',
                        1 => 0xff,
                        2 => b' ',
                        n => b'a' + (n % 26) as u8,
                    })
                    .collect();
                log.extend_from_slice(&filler);
                expected.extend_from_slice(&filler);
                if next() % 3 == 0 {
                    let s = &secrets_list[(next() % n_secrets as u64) as usize];
                    log.extend_from_slice(b" ");
                    expected.extend_from_slice(b" ");
                    log.extend_from_slice(s.as_bytes());
                    expected.extend_from_slice(b"[REDACTED:env]");
                    log.extend_from_slice(b" ");
                    expected.extend_from_slice(b" ");
                }
            }
            let refs: Vec<&str> = secrets_list.iter().map(String::as_str).collect();
            let chunk = 1 + (next() % 5000) as usize;
            let (out, _) = redact(&secrets(&refs), &log, chunk);
            for s in &secrets_list {
                assert!(
                    memchr::memmem::find(&out, s.as_bytes()).is_none(),
                    "round {round}: secret survived (chunk {chunk})"
                );
            }
            assert_eq!(out, expected, "round {round}, chunk {chunk}");
        }
    }
}
