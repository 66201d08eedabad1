//! Redaction end to end: nothing secret reaches the object database, the work tree, the console
//! or a leftover file.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const TOKEN_SECRET: &str = "9f2c4e1a-77b0-4d3e-a5c6-0e8d1b2f3a4c";
const SSH_PASSWORD: &str = "Pa55w0rd!Xy-zz";
const FILE_SECRET: &str = "from-a-file-Kq81";
const ENV_FORCED: &str = "forced-by-name-Lm22";
const CONFIG_SECRET: &str = "corp-778899";

/// Every object in the repository, content included, as one byte string.
fn all_objects(env: &Env, repo: &Path) -> Vec<u8> {
    let mut cmd = env.git_cmd(repo);
    cmd.args(["cat-file", "--batch-all-objects", "--batch", "--unordered"]);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Every file under `dir`, content included.
fn all_files(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.extend_from_slice(path.to_string_lossy().as_bytes());
        out.push(b'\n');
        if path.is_dir() && !path.is_symlink() {
            out.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

/// Asserts that none of `secrets`, nor an 8-byte prefix of one, is in `haystack`.
fn assert_clean(what: &str, haystack: &[u8], secrets: &[&str]) {
    for s in secrets {
        for probe in [s.as_bytes(), &s.as_bytes()[..8]] {
            if let Some(at) = memchr::memmem::find(haystack, probe) {
                let context =
                    &haystack[at.saturating_sub(80)..(at + probe.len() + 40).min(haystack.len())];
                panic!(
                    "{what} contains {:?} (from a secret): …{}…",
                    String::from_utf8_lossy(probe),
                    String::from_utf8_lossy(context)
                );
            }
        }
    }
}

fn template() -> String {
    // A shell-local script printing every kind of secret a log can carry.
    let script = [
        "echo ssh_password=$SSH_PW",
        "echo auth=PVEAPIToken=root@pam!packer=$TOKEN_SECRET",
        "echo 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJidWlsZCJ9.c2lnbmF0dXJlLWJ1aWxk'",
        "echo 'Cookie: PVEAuthCookie=PVE:root@pam:65A1B2C3::c2lnbmF0dXJlLWNvb2tpZQ'",
        "echo '{\"CSRFPreventionToken\":\"65A1B2C3:Y3NyZi10b2tlbi12YWx1ZQ\"}'",
        "echo 'GET https://admin:UrlPa55word@pve.example:8006/api2/json'",
        "echo 'aws AKIAIOSFODNN7EXAMPLE gh ghp_0123456789abcdefghijABCDEFGHIJ012345'",
        "echo -----BEGIN OPENSSH PRIVATE KEY-----",
        "echo b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
        "echo -----END OPENSSH PRIVATE KEY-----",
        "echo b64=$(printf %s \"$TOKEN_SECRET\" | base64 -w0)",
        "echo json='\"'$TOKEN_SECRET'\"'",
        "echo file=$FROM_FILE forced=$FORCED config=$TICKET_NO",
        "echo \"packer-builder-qemu plugin: Sending char 'P', code 0x50, shift true\"",
        "echo still readable",
    ];
    let inline: Vec<String> = script.iter().map(|l| format!("      {l:?},")).collect();
    format!(
        r#"variable "ssh_password" {{
  type      = string
  sensitive = true
}}
source "null" "x" {{
  communicator = "none"
}}
build {{
  sources = ["source.null.x"]
  provisioner "shell-local" {{
    environment_vars = ["SSH_PW=${{var.ssh_password}}"]
    inline = [
{}
    ]
  }}
}}
"#,
        inline.join("\n")
    )
}

#[test]
fn a_real_build_leaks_no_secret_anywhere() {
    let env = Env::new();
    let repo = env.repo("infra");
    // The template stays outside the repository: it spells out the secrets it prints, and the
    // object database must hold only what git-evidence wrote.
    let template_path = env.file("build.pkr.hcl", template().as_bytes());
    std::fs::write(repo.join(".gitignore"), "packer_cache/\n").unwrap();
    env.git(&repo, ["add", "."]);
    env.git(&repo, ["commit", "-q", "-m", "ignore Packer's cache"]);
    env.git(&repo, ["config", "evidence.redact", "corp-[0-9]{6}"]);
    let secrets_file = env.file("secrets.txt", format!("{FILE_SECRET}\n").as_bytes());
    let tmp = env.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    let mut cmd = env.evidence_cmd(&repo);
    cmd.args([
        "run",
        "--template",
        "t",
        "--redact-env",
        "FORCED",
        "--redact-file",
    ])
    .arg(&secrets_file)
    .args(["--", "packer", "build", "-machine-readable"])
    .arg(format!("-var=ssh_password={SSH_PASSWORD}"))
    .arg(&template_path)
    .env("PROXMOX_TOKEN", format!("root@pam!packer={TOKEN_SECRET}"))
    .env("TOKEN_SECRET", TOKEN_SECRET)
    .env("FROM_FILE", FILE_SECRET)
    .env("FORCED", ENV_FORCED)
    .env("TICKET_NO", CONFIG_SECRET)
    .env("TMPDIR", &tmp)
    .env("CHECKPOINT_DISABLE", "1")
    .env("PACKER_CACHE_DIR", env.path().join("packer_cache"));
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );

    let secrets = [
        TOKEN_SECRET,
        SSH_PASSWORD,
        FILE_SECRET,
        ENV_FORCED,
        CONFIG_SECRET,
        "UrlPa55word",
        "c2lnbmF0dXJlLWJ1aWxk",
        "c2lnbmF0dXJlLWNvb2tpZQ",
        "Y3NyZi10b2tlbi12YWx1ZQ",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghij",
        "b3BlbnNzaC1rZXktdjEAAAAA",
    ];
    let b64 = {
        let mut c = Command::new("sh");
        c.args(["-c", &format!("printf %s '{TOKEN_SECRET}' | base64 -w0")]);
        ok(&mut c)
    };
    let mut all = secrets.to_vec();
    all.push(&b64);
    assert_clean("the object database", &all_objects(&env, &repo), &all);
    assert_clean("the console", &out.stdout, &all);
    assert_clean("stderr", &out.stderr, &all);
    assert_clean("the work tree", &all_files(&repo.join("evidence")), &all);
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("git-evidence"))
        .collect();
    assert!(leftovers.is_empty(), "leftover temp files: {leftovers:?}");
    assert_clean("the temp area", &all_files(&tmp), &all);

    // What was redacted is counted and shown, and the rest is still readable.
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    let counts = proof["redactions"].as_object().unwrap();
    for rule in [
        "argv",
        "env",
        "redact-env",
        "redact-file",
        "config",
        "authorization",
        "cookie",
        "csrf-token",
        "url-userinfo",
        "aws-access-key",
        "github-token",
        "private-key",
        "keystroke",
    ] {
        assert!(counts.contains_key(rule), "no {rule} in {counts:?}");
    }
    let command = proof["command"].as_array().unwrap();
    assert_eq!(command[3], "-var=ssh_password=[REDACTED:argv]");
    let readme = latest_file(&env, &repo, "main", "evidence/builds/t", "README.md");
    assert!(readme.contains("## Redactions"), "{readme}");
    let log = latest_file(&env, &repo, "main", "evidence/builds/t", "packer.log");
    assert!(log.contains("still readable"), "{log}");
    // PROXMOX_TOKEN's whole value is a known secret, so it goes whole and is named after its
    // source.
    assert!(log.contains("auth=PVEAPIToken=[REDACTED:env]\n"), "{log}");
    assert!(log.contains("Sending char '[REDACTED:keystroke]'"), "{log}");
}

#[test]
fn record_redacts_a_log_on_the_way_in_and_leaves_the_file_alone() {
    let env = Env::new();
    let repo = env.repo("repo");
    let text =
        format!("login root\npassword: {SSH_PASSWORD}\nPVEAPIToken=u@pve!id={TOKEN_SECRET}\nend\n");
    let log = env.file("packer.log", text.as_bytes());
    let mut cmd = env.evidence_cmd(&repo);
    cmd.args(record_args("t", &log, "2026-11-26T10:00:00Z"))
        .args(["--fact", &format!("note=token {TOKEN_SECRET}")])
        .env("PKR_VAR_ssh_password", SSH_PASSWORD)
        .env("PROXMOX_TOKEN", format!("u@pve!id={TOKEN_SECRET}"));
    ok(&mut cmd);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        text,
        "the caller's file is untouched"
    );
    assert_clean(
        "the object database",
        &all_objects(&env, &repo),
        &[SSH_PASSWORD, TOKEN_SECRET],
    );
    let proof = json(&latest_file(
        &env,
        &repo,
        "main",
        "evidence/builds/t",
        "proof.json",
    ));
    assert_eq!(proof["facts"]["note"], "token [REDACTED:env]");
    assert_eq!(
        proof["redactions"]["env"], 3,
        "password, token, fact: {proof}"
    );
    let stored = latest_file(&env, &repo, "main", "evidence/builds/t", "packer.log");
    assert_eq!(stored.lines().count(), 4);
    assert!(
        stored.starts_with("login root\n") && stored.ends_with("end\n"),
        "{stored}"
    );
    assert_eq!(proof["log_sha256"], sha256sum_text(&stored));
}

fn sha256sum_text(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared Packer samples: with the secrets known, none survives; lines without one come
/// through unchanged.
#[test]
fn the_packer_samples_are_cleaned_and_their_harmless_lines_kept() {
    /// A sample, the secrets known from the environment, and what must not survive.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "leak.packer.log",
            &[("API_TOKEN", "s3cr3t-T0KEN-abc123")],
            &[
                "s3cr3t-T0KEN-abc123",
                "czNjcjN0LVQwS0VOLWFiYzEyMw",
                "S3CR3T-T0KEN-ABC123",
                "321cba-NEK0T-t3rc3s",
            ],
        ),
        (
            "leak.stdout",
            &[("API_TOKEN", "s3cr3t-T0KEN-abc123")],
            &[
                "s3cr3t-T0KEN-abc123",
                "czNjcjN0LVQwS0VOLWFiYzEyMw",
                "S3CR3T-T0KEN-ABC123",
                "321cba-NEK0T-t3rc3s",
            ],
        ),
        (
            "ok.machine-readable.stdout",
            &[("PKR_VAR_api_token", "s3cr3t-T0KEN-abc123")],
            &["s3cr3t-T0KEN-abc123"],
        ),
        (
            "qemu-secret.packer.log",
            &[("PKR_VAR_root_password", "Pa55w0rd!Xy")],
            &["Pa55w0rd!Xy", "code 0x50"],
        ),
    ];
    for (name, env_secrets, forbidden) in cases {
        let env = Env::new();
        let repo = env.repo("repo");
        let mut cmd = env.evidence_cmd(&repo);
        cmd.args(record_args("t", &fixture(name), "2026-11-26T10:00:00Z"));
        for (k, v) in *env_secrets {
            cmd.env(k, v);
        }
        ok(&mut cmd);
        let stored = latest_file(&env, &repo, "main", "evidence/builds/t", "packer.log");
        assert_clean(name, stored.as_bytes(), forbidden);
        let original = std::fs::read_to_string(fixture(name)).unwrap();
        assert_eq!(
            stored.lines().count(),
            original.lines().count(),
            "{name}: line count kept"
        );
        let changed = original
            .lines()
            .zip(stored.lines())
            .filter(|(a, b)| a != b)
            .count();
        let holding: usize = original
            .lines()
            .filter(|l| {
                forbidden.iter().any(|f| l.contains(&f[..8]))
                    || l.contains("Sending char")
                    || l.contains("PVEAPIToken")
                    || l.to_lowercase().contains("password=")
            })
            .count();
        assert!(
            changed <= holding,
            "{name}: {changed} lines changed, only {holding} hold a secret"
        );
    }
}
