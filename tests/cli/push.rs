//! `git evidence push`, `record --push`, `run --push` and `setup`: evidence pushed by several
//! build hosts to one real server, over `git://` (a `git daemon` on loopback, see `daemon`) and
//! over the file system, then checked from a fresh clone with the git CLI and `verify`.
//!
//! Nothing waits on a clock: concurrent writers are threads released by a barrier, a server is
//! ready when its daemon says so, and the assertions only look at what landed on the server,
//! which must be the same whatever the interleaving (which host gets which `-N` suffix may vary;
//! the set of run ids, `latest`, the history shape and the logs may not).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Barrier;

use serde_json::Value;

use crate::common::*;
use crate::daemon::{GitDaemon, served_repo};

/// The exit code of a command whose evidence is committed locally but could not be pushed.
const EXIT_NOT_PUSHED: i32 = 76;

/// The refspec `setup` adds.
const EVIDENCE_REFSPEC: &str = "+refs/evidence/*:refs/evidence/*";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `record` of `log` for `template` started at `started`, with exit code `code`.
fn record_with_code(template: &str, log: &Path, started: &str, code: i32) -> Vec<String> {
    let mut args = record_args(template, log, started);
    let at = args.iter().position(|a| a == "--exit-code").unwrap();
    args[at + 1] = code.to_string();
    args
}

/// `args` followed by `more`.
fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| (*s).to_owned()));
    args
}

/// Whether `id` looks like a run id: `YYYY-MM-DDTHHMMSSZ`, maybe with `-N`.
fn is_run_id(id: &str) -> bool {
    let (stamp, _) = id_key(id);
    let b = stamp.as_bytes();
    b.len() == 18
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[17] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 17) || c.is_ascii_digit())
}

/// Everything about a finished command, for assertion messages.
fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Asserts the exit code of `out`.
fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit code {code}, got {}",
        describe(out)
    );
}

/// The JSON object on stdout. `run` streams the command's own stdout first, so the object is
/// the text from the first line that is just `{`.
fn json_of(out: &Output) -> Value {
    let text = stdout(out);
    let at = if text.starts_with("{\n") {
        0
    } else {
        text.find("\n{\n")
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("no JSON object on stdout: {}", describe(out)))
    };
    json(&text[at..])
}

/// The `push` object that `record --json --push` / `run --json --push` add to their output.
fn push_of(out: &Output) -> Value {
    let value = json_of(out);
    let push = value["push"].clone();
    assert!(
        push.is_object(),
        "no \"push\" object in the output: {}",
        describe(out)
    );
    assert_push_object(&push);
    push
}

/// The object `push --json` prints.
fn push_json(out: &Output) -> Value {
    let push = json_of(out);
    assert_push_object(&push);
    push
}

/// Asserts the keys every push result has: `pushed`, `remote`, `branch` (a full ref), `commit`
/// (the pushed tip, null when nothing was pushed), `attempts`, `replayed`, `renamed`,
/// `failed_refs`, whether the push succeeded or not.
fn assert_push_object(push: &Value) {
    let obj = push
        .as_object()
        .unwrap_or_else(|| panic!("a push result must be an object: {push:#}"));
    let missing: Vec<&str> = [
        "pushed",
        "remote",
        "branch",
        "commit",
        "attempts",
        "replayed",
        "renamed",
        "failed_refs",
    ]
    .into_iter()
    .filter(|k| !obj.contains_key(*k))
    .collect();
    assert!(
        missing.is_empty(),
        "push result lacks {missing:?}: {push:#}"
    );
    let pushed = push["pushed"].as_bool().expect("pushed is a bool");
    assert!(push["remote"].is_string(), "remote: {push:#}");
    assert!(
        push["branch"]
            .as_str()
            .is_some_and(|b| b.starts_with("refs/heads/")),
        "branch must be a full ref: {push:#}"
    );
    if pushed {
        assert!(
            push["commit"].as_str().is_some_and(|c| c.len() == 40),
            "commit: {push:#}"
        );
    } else {
        assert_eq!(push["commit"], Value::Null, "nothing pushed: {push:#}");
    }
    assert!(push["attempts"].is_u64(), "attempts: {push:#}");
    assert!(push["replayed"].is_u64(), "replayed: {push:#}");
    assert!(push["renamed"].is_array(), "renamed: {push:#}");
    assert!(push["failed_refs"].is_array(), "failed_refs: {push:#}");
}

/// `push.attempts` as a number.
fn attempts_of(push: &Value) -> u64 {
    push["attempts"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric \"attempts\" in {push:#}"))
}

/// The `{from, to}` pairs of `push.renamed`.
fn renames_of(push: &Value) -> Vec<(String, String)> {
    push["renamed"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"renamed\" array in {push:#}"))
        .iter()
        .map(|r| {
            (
                r["from"].as_str().expect("renamed.from").to_owned(),
                r["to"].as_str().expect("renamed.to").to_owned(),
            )
        })
        .collect()
}

/// The strings of `push.failed_refs`.
fn failed_refs_of(push: &Value) -> Vec<String> {
    push["failed_refs"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"failed_refs\" array in {push:#}"))
        .iter()
        .map(|r| r.as_str().expect("failed ref name").to_owned())
        .collect()
}

/// A clone of `url` as `name` in the env dir: a build host. Bare, or with `main` checked out.
fn host(env: &Env, url: &str, name: &str, bare: bool) -> PathBuf {
    let mut args = vec!["clone", "-q"];
    if bare {
        args.push("--bare");
    }
    args.extend([url, name]);
    env.git(env.path(), &args);
    env.path().join(name)
}

/// A fresh clone of `url` as a reviewer has it, `refs/evidence/*` fetched too.
fn review_clone(env: &Env, url: &str, name: &str) -> PathBuf {
    let repo = host(env, url, name, false);
    env.git(&repo, ["fetch", "-q", "origin", EVIDENCE_REFSPEC]);
    repo
}

/// `git rev-parse --verify <what>`.
fn rev(env: &Env, repo: &Path, what: &str) -> String {
    env.git(repo, ["rev-parse", "--verify", "-q", what])
        .trim()
        .to_owned()
}

/// Number of commits reachable from `rev`.
fn count(env: &Env, repo: &Path, rev: &str) -> usize {
    env.git(repo, ["rev-list", "--count", rev])
        .trim()
        .parse()
        .unwrap()
}

/// The run folders of `template` in `rev`'s tree (`latest` left out); none if no such folder.
fn runs_at(env: &Env, repo: &Path, rev: &str, template: &str) -> BTreeSet<String> {
    let out = env
        .git_cmd(repo)
        .args([
            "ls-tree",
            "--name-only",
            &format!("{rev}:evidence/builds/{template}"),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return BTreeSet::new();
    }
    stdout(&out)
        .lines()
        .filter(|n| *n != "latest")
        .map(str::to_owned)
        .collect()
}

/// The target of `evidence/builds/<template>/latest` at `rev`, checked to be a symlink.
fn latest_at(env: &Env, repo: &Path, rev: &str, template: &str) -> String {
    let path = format!("evidence/builds/{template}/latest");
    let line = env.git(repo, ["ls-tree", rev, "--", &path]);
    assert!(
        line.starts_with("120000 "),
        "{path} at {rev} must be a symlink: {line:?}"
    );
    env.git(repo, ["cat-file", "blob", &format!("{rev}:{path}")])
}

/// The bytes of `path` at `rev`.
fn blob(env: &Env, repo: &Path, rev: &str, path: &str) -> Vec<u8> {
    let out = env
        .git_cmd(repo)
        .args(["cat-file", "blob", &format!("{rev}:{path}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no {path} at {rev} in {repo:?}: {}",
        stderr(&out)
    );
    out.stdout
}

/// The refs a repository has under `refs/evidence/`, name → commit.
fn local_evidence_refs(env: &Env, repo: &Path) -> BTreeMap<String, String> {
    env.git(
        repo,
        [
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/evidence/",
        ],
    )
    .lines()
    .map(|l| {
        let (name, oid) = l.split_once(' ').unwrap();
        (name.to_owned(), oid.to_owned())
    })
    .collect()
}

/// The refs the remote `url` advertises matching `pattern` (`git ls-remote`), name → commit.
fn remote_refs(env: &Env, cwd: &Path, url: &str, pattern: &str) -> BTreeMap<String, String> {
    env.git(cwd, ["ls-remote", url, pattern])
        .lines()
        .map(|l| {
            let (oid, name) = l.split_once('\t').unwrap();
            (name.to_owned(), oid.to_owned())
        })
        .collect()
}

/// Failed-run refs grouped by template: `refs/evidence/failed/builds/<t>/<id>` → t → {id}.
fn failed_ids<'a>(
    refs: impl IntoIterator<Item = &'a String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_template: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in refs {
        let rest = name
            .strip_prefix("refs/evidence/failed/builds/")
            .unwrap_or_else(|| panic!("unexpected failed ref {name}"));
        let (template, id) = rest.split_once('/').expect("template/run-id");
        by_template
            .entry(template.to_owned())
            .or_default()
            .insert(id.to_owned());
    }
    by_template
}

/// `verify` and `verify --failed` exit 0 in `repo`.
fn assert_verify_clean(env: &Env, repo: &Path) {
    for args in [vec!["verify"], vec!["verify", "--failed"]] {
        let out = env.evidence(repo, &args);
        assert_code(&out, 0, &format!("git evidence {}", args.join(" ")));
    }
}

/// The work tree is clean, untracked files included.
fn assert_clean(env: &Env, repo: &Path) {
    let status = env.git(repo, ["status", "--porcelain", "--untracked-files=all"]);
    assert!(
        status.is_empty(),
        "work tree of {repo:?} not clean:\n{status}"
    );
}

/// History of `rev` has no merge commit.
fn assert_no_merges(env: &Env, repo: &Path, rev: &str) {
    let merges = env.git(repo, ["rev-list", "--merges", rev]);
    assert!(
        merges.trim().is_empty(),
        "merge commits on {rev}:\n{merges}"
    );
}

/// A small push budget, so that a push that cannot succeed gives up quickly.
fn quick_budget(env: &Env, repo: &Path) {
    env.git(repo, ["config", "evidence.pushAttempts", "3"]);
    env.git(repo, ["config", "evidence.pushTimeout", "10s"]);
}

/// Writes the executable hook `name` of the repository whose hooks folder is `hooks`.
fn install_hook(hooks: &Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(hooks).unwrap();
    let hook = hooks.join(name);
    std::fs::write(&hook, script).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    hook
}

/// A `pre-receive` hook on `server` that refuses every push with `message` on stderr.
fn refusing_hook(server: &Path, message: &str) {
    install_hook(
        &server.join("hooks"),
        "pre-receive",
        &format!("#!/bin/sh\ncat >/dev/null\necho '{message}' >&2\nexit 1\n"),
    );
}

/// A bare repository served from `<env>/srv` (seeded like [`served_repo`]), reached by path.
fn path_server(env: &Env) -> PathBuf {
    served_repo(env, &env.path().join("srv"), "evidence.git")
}

/// A log whose bytes name who wrote it.
fn log_file(env: &Env, name: &str) -> (PathBuf, Vec<u8>) {
    let bytes = format!(
        "2026/11/26 10:15:00 [INFO] Packer version: 1.6.6\n==> proxmox-iso: {name}\r\n\
         Build 'proxmox-iso.{name}' finished.\n"
    )
    .into_bytes();
    (env.file(&format!("{name}.packer.log"), &bytes), bytes)
}

// ---------------------------------------------------------------------------------------------
// The acceptance test: 8 build hosts × 25 runs, pushing to one server at once
// ---------------------------------------------------------------------------------------------

const WRITERS: usize = 8;
const RUNS_PER_WRITER: usize = 25;
const TEMPLATES: [&str; 3] = ["ubuntu-22.04", "rocky9", "win2022"];

#[derive(Debug, Clone)]
enum Action {
    /// `record --json --push`.
    Record {
        template: String,
        started: String,
        code: i32,
        log: PathBuf,
    },
    /// `run --json --push -- sh -c 'echo …; exit code'`.
    Run { template: String, code: i32 },
}

#[derive(Debug, Clone)]
struct Job {
    writer: usize,
    index: usize,
    action: Action,
}

struct Done {
    job: Job,
    out: Output,
}

/// The 25 runs of one writer:
/// - every 5th (0, 5, 10, 15, 20) is a `shared` run started in the same second by all eight
///   writers (so the ids `T` … `T-8` are fought over), successes for 0, 10, 20 and failures
///   for 5 and 15 (a success and a failure never share a second, so the ids are predictable);
/// - 4, 16 and 22 are `run --push` of a shell command: 16 fails (exit 3, template
///   `wrapped-bad`), the others succeed (template `wrapped`); their start time is the clock's;
/// - the rest are records of the three templates at a second unique to the writer, 3, 17 and
///   24 failing (exit code 1).
fn plan(env: &Env, writer: usize) -> Vec<Job> {
    (0..RUNS_PER_WRITER)
        .map(|index| {
            let action = if index % 5 == 0 {
                let (log, _) = log_file(env, &format!("w{writer}-r{index:02}"));
                Action::Record {
                    template: "shared".to_owned(),
                    started: format!("2026-11-26T12:00:{index:02}Z"),
                    code: if (index / 5) % 2 == 1 { 1 } else { 0 },
                    log,
                }
            } else if index % 6 == 4 {
                let code = if index == 16 { 3 } else { 0 };
                let template = if code == 0 { "wrapped" } else { "wrapped-bad" };
                Action::Run {
                    template: template.to_owned(),
                    code,
                }
            } else {
                let (log, _) = log_file(env, &format!("w{writer}-r{index:02}"));
                Action::Record {
                    template: TEMPLATES[index % 3].to_owned(),
                    started: format!("2026-11-26T10:{writer:02}:{index:02}Z"),
                    code: if index % 7 == 3 { 1 } else { 0 },
                    log,
                }
            };
            Job {
                writer,
                index,
                action,
            }
        })
        .collect()
}

fn run_job(env: &Env, repo: &Path, job: &Job) -> Output {
    let args: Vec<String> = match &job.action {
        Action::Record {
            template,
            started,
            code,
            log,
        } => with(
            record_with_code(template, log, started, *code),
            &["--json", "--push"],
        ),
        Action::Run { template, code } => {
            let script = format!(
                "echo building {template} on writer {} run {}; exit {code}",
                job.writer, job.index
            );
            with(
                vec![],
                &[
                    "run",
                    "--template",
                    template,
                    "--json",
                    "--push",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ],
            )
        }
    };
    env.evidence(repo, &args)
}

#[test]
fn eight_hosts_push_twenty_five_runs_each_to_one_server_at_once() {
    let env = Env::new();
    let base = env.path().join("srv");
    let server = served_repo(&env, &base, "evidence.git");
    let daemon = GitDaemon::start(&env, &base);
    let url = daemon.url("evidence.git");
    let seed = rev(&env, &server, "main");

    // Four hosts clone over git://, four over the file system; on each side two are bare and
    // two have main checked out.
    let writers: Vec<(PathBuf, bool)> = (0..WRITERS)
        .map(|w| {
            let source = if w < WRITERS / 2 {
                url.clone()
            } else {
                server.display().to_string()
            };
            let bare = w % 2 == 1;
            let repo = host(&env, &source, &format!("writer-{w}"), bare);
            // This test is about every proof landing, not about the default budget: on a
            // loaded CI machine a host may need more rounds and time than a real one would.
            env.git(&repo, ["config", "evidence.pushAttempts", "1000"]);
            env.git(&repo, ["config", "evidence.pushTimeout", "15m"]);
            (repo, bare)
        })
        .collect();
    let plans: Vec<Vec<Job>> = (0..WRITERS).map(|w| plan(&env, w)).collect();

    let barrier = Barrier::new(WRITERS);
    let done: Vec<Done> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .into_iter()
            .zip(&writers)
            .map(|(jobs, (repo, _))| {
                let (env, barrier) = (&env, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    jobs.into_iter()
                        .map(|job| {
                            let out = run_job(env, repo, &job);
                            Done { job, out }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread panicked"))
            .collect()
    });
    assert_eq!(done.len(), WRITERS * RUNS_PER_WRITER);

    // Every command exited as it should (records 0, runs with their build's code) and pushed.
    let mut problems = Vec::new();
    let mut attempts = Vec::new();
    let (mut replayed, mut renamed) = (0, 0);
    for d in &done {
        let want = match d.job.action {
            Action::Record { .. } => 0,
            Action::Run { code, .. } => code,
        };
        if d.out.status.code() != Some(want) {
            problems.push(format!(
                "writer {} run {} ({:?}): expected exit code {want}: {}",
                d.job.writer,
                d.job.index,
                d.job.action,
                describe(&d.out)
            ));
            continue;
        }
        let push = push_of(&d.out);
        if push["pushed"] != Value::Bool(true) {
            problems.push(format!(
                "writer {} run {}: not pushed: {push:#}",
                d.job.writer, d.job.index
            ));
        }
        let failed = match d.job.action {
            Action::Record { code, .. } | Action::Run { code, .. } => code != 0,
        };
        if failed && failed_refs_of(&push).is_empty() {
            problems.push(format!(
                "writer {} run {}: a failed run but no failed ref pushed: {push:#}",
                d.job.writer, d.job.index
            ));
        }
        attempts.push(attempts_of(&push));
        replayed += push["replayed"].as_u64().expect("replayed");
        renamed += renames_of(&push).len();
    }
    assert!(
        problems.is_empty(),
        "{} of {} commands went wrong:\n{}",
        problems.len(),
        done.len(),
        problems.join("\n")
    );
    assert!(attempts.iter().all(|&a| a >= 1), "attempts {attempts:?}");
    let total: u64 = attempts.iter().sum();
    let retries = total - attempts.len() as u64;
    eprintln!(
        "push concurrency: {} proofs, {retries} retries in all ({:.2} per proof), \
         {} pushes retried, max attempts {}, {replayed} commits replayed, {renamed} run ids renamed",
        attempts.len(),
        retries as f64 / attempts.len() as f64,
        attempts.iter().filter(|&&a| a > 1).count(),
        attempts.iter().max().unwrap()
    );

    // What should have landed, per template.
    let mut success_starts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failed_starts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut run_counts: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for d in &done {
        match &d.job.action {
            Action::Record {
                template,
                started,
                code,
                ..
            } => {
                let into = if *code == 0 {
                    &mut success_starts
                } else {
                    &mut failed_starts
                };
                into.entry(template.clone())
                    .or_default()
                    .push(started.clone());
            }
            Action::Run { template, code } => {
                *run_counts
                    .entry((template.clone(), *code == 0))
                    .or_default() += 1;
            }
        }
    }
    let successes: usize = success_starts.values().map(Vec::len).sum::<usize>()
        + run_counts
            .iter()
            .filter(|((_, ok), _)| *ok)
            .map(|(_, n)| n)
            .sum::<usize>();
    assert_eq!(successes, WRITERS * 19);

    // A fresh clone sees every success on the branch, history linear, one commit per success.
    let review = review_clone(&env, &url, "reviewer");
    assert_eq!(rev(&env, &review, "main"), rev(&env, &server, "main"));
    assert_no_merges(&env, &review, "main");
    assert_eq!(
        count(&env, &review, "main"),
        1 + successes,
        "one commit per successful run on top of the seed"
    );
    assert_eq!(
        env.git(&review, ["rev-list", "--max-parents=0", "main"])
            .trim(),
        seed,
        "the seed commit stays the root"
    );
    let templates_on_branch: BTreeSet<String> = env
        .git(&review, ["ls-tree", "--name-only", "main:evidence/builds"])
        .lines()
        .map(str::to_owned)
        .collect();
    let mut want_templates: BTreeSet<String> = success_starts.keys().cloned().collect();
    want_templates.insert("wrapped".to_owned());
    assert_eq!(templates_on_branch, want_templates);
    for (template, starts) in &success_starts {
        let got = runs_at(&env, &review, "main", template);
        let want = expected_ids(starts.iter().map(String::as_str));
        assert_eq!(got, want, "{template}: runs on the server's branch");
    }
    let wrapped = runs_at(&env, &review, "main", "wrapped");
    assert_eq!(
        wrapped.len(),
        run_counts[&("wrapped".to_owned(), true)],
        "wrapped: {wrapped:?}"
    );
    assert!(wrapped.iter().all(|id| is_run_id(id)), "{wrapped:?}");

    // Each template's latest is its greatest run id.
    for template in &want_templates {
        let runs = runs_at(&env, &review, "main", template);
        assert_eq!(
            latest_at(&env, &review, "main", template),
            newest(&runs),
            "{template}/latest"
        );
    }
    assert_eq!(
        latest_at(&env, &review, "main", "shared"),
        "2026-11-26T120020Z-8"
    );

    // Every failure has its ref on the server.
    let remote_failed = remote_refs(&env, &review, &url, "refs/evidence/failed/*");
    let failed = failed_ids(remote_failed.keys());
    let mut want_failed_templates: BTreeSet<String> = failed_starts.keys().cloned().collect();
    want_failed_templates.insert("wrapped-bad".to_owned());
    assert_eq!(
        failed.keys().cloned().collect::<BTreeSet<_>>(),
        want_failed_templates,
        "templates with failed refs on the server: {remote_failed:#?}"
    );
    for (template, starts) in &failed_starts {
        let want = expected_ids(starts.iter().map(String::as_str));
        assert_eq!(
            failed[template], want,
            "{template}: failed refs on the server"
        );
    }
    assert_eq!(
        failed["wrapped-bad"].len(),
        run_counts[&("wrapped-bad".to_owned(), false)]
    );
    assert_eq!(
        remote_failed.len(),
        WRITERS * 6,
        "one failed ref per failed run"
    );
    // The reviewer fetched exactly those.
    assert_eq!(local_evidence_refs(&env, &review), remote_failed);

    // The evidence verifies, branch and failed runs.
    assert_verify_clean(&env, &review);
    assert_fsck(&env, &server);

    // Every host ends on the server's branch or behind it, never beside it; checked-out ones
    // clean.
    for (w, (repo, bare)) in writers.iter().enumerate() {
        let tip = rev(&env, repo, "refs/heads/main");
        let out = env
            .git_cmd(&server)
            .args(["merge-base", "--is-ancestor", &tip, "main"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "writer {w}: its main {tip} is not on the server's main: {}",
            stderr(&out)
        );
        if !bare {
            assert_clean(&env, repo);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Failing pushes
// ---------------------------------------------------------------------------------------------

/// Server down: the record is committed locally, exit 76 with the retry command; another host
/// pushes meanwhile; once the server is back, `git evidence push` replays and pushes.
#[test]
fn a_record_made_while_the_server_is_down_is_pushed_once_it_is_back() {
    let env = Env::new();
    let base = env.path().join("srv");
    let server = served_repo(&env, &base, "evidence.git");
    let mut daemon = GitDaemon::start(&env, &base);
    let url = daemon.url("evidence.git");
    let a = host(&env, &url, "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", false);
    quick_budget(&env, &a);
    let seed = rev(&env, &server, "main");

    daemon.stop();
    let (log_a, bytes_a) = log_file(&env, "host-a");
    let out = env.evidence(
        &a,
        with(
            record_with_code("ubuntu-22.04", &log_a, "2026-11-26T10:15:00Z", 0),
            &["--json", "--push"],
        ),
    );
    assert_code(&out, EXIT_NOT_PUSHED, "record --push with the server down");
    assert!(
        stderr(&out).contains("git evidence push"),
        "the message must say how to retry: {}",
        describe(&out)
    );
    let result = json_of(&out);
    assert_eq!(result["recorded"], true, "{result:#}");
    let push = push_of(&out);
    assert_eq!(push["pushed"], false, "{push:#}");
    assert_eq!(push["commit"], Value::Null, "{push:#}");
    let tries = attempts_of(&push);
    assert!(
        (1..=3).contains(&tries),
        "evidence.pushAttempts=3 bounds the attempts: {tries}"
    );
    // Committed locally, work tree following, server untouched.
    assert_eq!(
        runs_at(&env, &a, "main", "ubuntu-22.04"),
        BTreeSet::from(["2026-11-26T101500Z".to_owned()])
    );
    assert_eq!(count(&env, &a, "main"), 2);
    let a_tip = rev(&env, &a, "main");
    assert_eq!(result["commit"], a_tip.as_str());
    assert_clean(&env, &a);
    assert_eq!(rev(&env, &server, "main"), seed);

    // `push` while still down: the flags bound it, nothing moves.
    let out = env.evidence(&a, ["push", "--attempts", "1", "--timeout", "5s", "--json"]);
    assert_code(&out, EXIT_NOT_PUSHED, "push with the server down");
    assert!(
        stderr(&out).contains("git evidence push"),
        "{}",
        describe(&out)
    );
    let push = push_json(&out);
    assert_eq!(push["pushed"], false, "{push:#}");
    assert_eq!(attempts_of(&push), 1, "--attempts 1: {push:#}");
    assert_eq!(rev(&env, &a, "main"), a_tip);

    // Meanwhile host B pushes its own proof through the file system.
    let (log_b, bytes_b) = log_file(&env, "host-b");
    let out = env.evidence(
        &b,
        with(
            record_args("ubuntu-22.04", &log_b, "2026-11-26T10:20:00Z"),
            &["--json", "--push"],
        ),
    );
    assert_code(&out, 0, "host B's record --push");
    assert_eq!(push_of(&out)["pushed"], true);
    assert_eq!(rev(&env, &server, "main"), rev(&env, &b, "main"));

    // The server comes back; host A pushes.
    daemon.restart();
    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "push once the server is back");
    let push = push_json(&out);
    assert_eq!(push["pushed"], true, "{push:#}");
    assert_eq!(push["remote"], "origin", "{push:#}");
    assert_eq!(push["branch"], "refs/heads/main", "{push:#}");
    assert_eq!(
        push["replayed"], 1,
        "A's one commit is replayed on B's: {push:#}"
    );
    let tip = rev(&env, &server, "main");
    assert_eq!(push["commit"], tip.as_str(), "{push:#}");
    assert_eq!(rev(&env, &a, "main"), tip, "A's branch is the server's");

    // Both hosts' runs, B's still latest (A's started earlier), linear, verified.
    assert_eq!(
        runs_at(&env, &server, "main", "ubuntu-22.04"),
        BTreeSet::from([
            "2026-11-26T101500Z".to_owned(),
            "2026-11-26T102000Z".to_owned()
        ])
    );
    assert_eq!(
        latest_at(&env, &server, "main", "ubuntu-22.04"),
        "2026-11-26T102000Z"
    );
    assert_eq!(count(&env, &server, "main"), 3);
    assert_no_merges(&env, &server, "main");
    assert_eq!(
        blob(
            &env,
            &server,
            "main",
            "evidence/builds/ubuntu-22.04/2026-11-26T101500Z/packer.log"
        ),
        bytes_a
    );
    assert_eq!(
        blob(
            &env,
            &server,
            "main",
            "evidence/builds/ubuntu-22.04/2026-11-26T102000Z/packer.log"
        ),
        bytes_b
    );
    assert_clean(&env, &a);
    let review = review_clone(&env, &url, "reviewer");
    assert_verify_clean(&env, &review);
}

/// A pre-receive hook refuses the push: exit 76, the server's own words on stderr, the evidence
/// committed locally, the server unchanged.
#[test]
fn a_push_refused_by_a_server_hook_keeps_the_evidence_and_shows_the_servers_message() {
    const MESSAGE: &str = "POLICY-7F3A: evidence pushes are frozen until the audit ends";
    let env = Env::new();
    let base = env.path().join("srv");
    let server = served_repo(&env, &base, "evidence.git");
    refusing_hook(&server, MESSAGE);
    let daemon = GitDaemon::start(&env, &base);
    let url = daemon.url("evidence.git");
    let repo = host(&env, &url, "host", false);
    quick_budget(&env, &repo);
    let seed = rev(&env, &server, "main");

    let (log, bytes) = log_file(&env, "refused");
    let out = env.evidence(
        &repo,
        with(
            record_args("ubuntu-22.04", &log, "2026-11-26T10:15:00Z"),
            &["--json", "--push"],
        ),
    );
    assert_code(&out, EXIT_NOT_PUSHED, "record --push refused by the hook");
    let err = stderr(&out);
    assert!(
        err.contains(MESSAGE),
        "the hook's message must be shown: {}",
        describe(&out)
    );
    assert!(err.contains("git evidence push"), "{}", describe(&out));
    let push = push_of(&out);
    assert_eq!(push["pushed"], false, "{push:#}");
    eprintln!(
        "hook rejection: {} push attempt(s) before giving up",
        attempts_of(&push)
    );

    // The local commit and branch are intact.
    let tip = rev(&env, &repo, "main");
    assert_eq!(json_of(&out)["commit"], tip.as_str());
    assert_eq!(rev(&env, &repo, "main~1"), seed);
    assert_eq!(
        blob(
            &env,
            &repo,
            "main",
            "evidence/builds/ubuntu-22.04/2026-11-26T101500Z/packer.log"
        ),
        bytes
    );
    assert_verify_clean(&env, &repo);
    assert_clean(&env, &repo);

    // A failed run is refused the same way and kept on its local ref.
    let out = env.evidence(
        &repo,
        with(
            record_with_code("ubuntu-22.04", &log, "2026-11-26T11:00:00Z", 1),
            &["--push"],
        ),
    );
    assert_code(&out, EXIT_NOT_PUSHED, "failed run, record --push refused");
    assert!(stderr(&out).contains(MESSAGE), "{}", describe(&out));
    assert_eq!(
        local_evidence_refs(&env, &repo)
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["refs/evidence/failed/builds/ubuntu-22.04/2026-11-26T110000Z"]
    );
    assert_eq!(rev(&env, &repo, "main"), tip);

    // The server is unchanged.
    assert_eq!(rev(&env, &server, "main"), seed);
    assert!(local_evidence_refs(&env, &server).is_empty());
}

/// `run --push`: a successful build whose push failed exits 76; a failed build exits with the
/// build's code even though the push failed too. Both are recorded locally.
#[test]
fn run_push_exit_codes_when_the_push_fails() {
    let env = Env::new();
    let server = env.bare_repo("server.git");
    refusing_hook(&server, "REFUSED-BY-TEST-HOOK");
    let repo = host(&env, server.to_str().unwrap(), "host", false);
    quick_budget(&env, &repo);
    let seed = rev(&env, &server, "main");

    let out = env.evidence(
        &repo,
        [
            "run",
            "--template",
            "t",
            "--push",
            "--",
            "sh",
            "-c",
            "echo build ok; exit 0",
        ],
    );
    assert_code(&out, EXIT_NOT_PUSHED, "successful build, push refused");
    assert!(
        stderr(&out).contains("git evidence push"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("REFUSED-BY-TEST-HOOK"),
        "{}",
        describe(&out)
    );
    assert_eq!(runs_at(&env, &repo, "main", "t").len(), 1);
    assert_eq!(rev(&env, &repo, "main~1"), seed);

    let out = env.evidence(
        &repo,
        [
            "run",
            "--template",
            "t",
            "--push",
            "--",
            "sh",
            "-c",
            "echo build broke; exit 4",
        ],
    );
    assert_code(&out, 4, "failed build, push refused: the build's code wins");
    let failed = local_evidence_refs(&env, &repo);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed
            .keys()
            .all(|r| r.starts_with("refs/evidence/failed/builds/t/")),
        "{failed:?}"
    );
    assert_eq!(rev(&env, &server, "main"), seed);
    assert!(local_evidence_refs(&env, &server).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Remote resolution
// ---------------------------------------------------------------------------------------------

/// Explicit argument, else `evidence.remote`, else the branch's upstream remote, else `origin`.
#[test]
fn the_remote_is_the_argument_else_evidence_remote_else_the_upstream_else_origin() {
    let env = Env::new();
    let origin = env.bare_repo("origin.git");
    let names = ["origin", "up", "cfg", "arg"];
    let mut paths = BTreeMap::from([("origin", origin.clone())]);
    for name in &names[1..] {
        let path = env.path().join(format!("{name}.git"));
        env.git(
            env.path(),
            [
                "clone",
                "-q",
                "--bare",
                origin.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        );
        paths.insert(*name, path);
    }
    let repo = host(&env, origin.to_str().unwrap(), "host", false);
    for name in &names[1..] {
        env.git(
            &repo,
            ["remote", "add", name, paths[name].to_str().unwrap()],
        );
    }
    let tips = || -> BTreeMap<&str, String> {
        paths
            .iter()
            .map(|(name, path)| (*name, rev(&env, path, "main")))
            .collect()
    };
    let mut want = tips();
    let mut n = 0;
    let mut record = |extra: &[&str]| -> Output {
        n += 1;
        let (log, _) = log_file(&env, &format!("run-{n}"));
        let started = format!("2026-11-26T10:{n:02}:00Z");
        env.evidence(&repo, with(record_args("t", &log, &started), extra))
    };
    let check = |out: &Output, remote: &str, want: &mut BTreeMap<&str, String>, what: &str| {
        assert_code(out, 0, what);
        let push = match json_of(out).get("push") {
            Some(p) => p.clone(),
            None => json_of(out),
        };
        assert_push_object(&push);
        assert_eq!(push["pushed"], true, "{what}: {push:#}");
        assert_eq!(push["remote"], remote, "{what}: {push:#}");
        let tip = rev(&env, &repo, "main");
        assert_eq!(push["commit"], tip.as_str(), "{what}: {push:#}");
        *want.get_mut(remote).unwrap() = tip;
        assert_eq!(&tips(), want, "{what}: which remote received the push");
    };

    // No upstream, no evidence.remote: origin.
    env.git(&repo, ["config", "--unset", "branch.main.remote"]);
    let out = record(&["--json"]);
    assert_code(&out, 0, "record");
    let out = env.evidence(&repo, ["push", "--json"]);
    check(&out, "origin", &mut want, "push, no configuration");

    // The branch's upstream remote beats origin.
    env.git(&repo, ["config", "branch.main.remote", "up"]);
    let out = record(&["--push", "--json"]);
    check(&out, "up", &mut want, "record --push, upstream up");

    // evidence.remote beats the upstream.
    env.git(&repo, ["config", "evidence.remote", "cfg"]);
    let out = record(&["--json", "--push"]);
    check(&out, "cfg", &mut want, "record --push, evidence.remote cfg");

    // The argument beats evidence.remote: record --push REMOTE …
    let out = record(&["--json", "--push", "arg"]);
    check(&out, "arg", &mut want, "record --push arg");

    // … and push REMOTE.
    let out = record(&["--json"]);
    assert_code(&out, 0, "record");
    let out = env.evidence(&repo, ["push", "up", "--json"]);
    check(&out, "up", &mut want, "push up");
}

// ---------------------------------------------------------------------------------------------
// Commits that are not git-evidence's
// ---------------------------------------------------------------------------------------------

/// A hand-made commit on the host's branch, not on the server.
fn hand_commit(env: &Env, repo: &Path) -> String {
    std::fs::write(repo.join("build.pkr.hcl"), "# packer template\n# tuned\n").unwrap();
    env.git(repo, ["commit", "-q", "-a", "-m", "Tune the template"]);
    rev(env, repo, "main")
}

/// A non-evidence commit would be pushed by a fast-forward: refused (76), nothing rewritten,
/// nothing pushed; a dedicated `--branch` gets the evidence out.
#[test]
fn a_local_commit_that_is_not_evidence_is_never_pushed() {
    let env = Env::new();
    let server = env.bare_repo("server.git");
    let repo = host(&env, server.to_str().unwrap(), "host", false);
    quick_budget(&env, &repo);
    let seed = rev(&env, &server, "main");
    let mine = hand_commit(&env, &repo);

    let (log, _) = log_file(&env, "after-hand-commit");
    let out = env.evidence(
        &repo,
        with(record_args("t", &log, "2026-11-26T10:15:00Z"), &["--push"]),
    );
    assert_code(
        &out,
        EXIT_NOT_PUSHED,
        "record --push over a hand-made commit",
    );
    assert!(
        stderr(&out).contains("--branch"),
        "the message must suggest pushing it first or a dedicated --branch: {}",
        describe(&out)
    );
    let tip = rev(&env, &repo, "main");
    assert_eq!(
        rev(&env, &repo, "main~1"),
        mine,
        "the hand-made commit is kept"
    );
    assert_eq!(runs_at(&env, &repo, "main", "t").len(), 1);

    let out = env.evidence(&repo, ["push"]);
    assert_code(&out, EXIT_NOT_PUSHED, "push over a hand-made commit");
    assert!(stderr(&out).contains("--branch"), "{}", describe(&out));
    assert_eq!(rev(&env, &repo, "main"), tip, "nothing rewritten locally");
    assert_eq!(rev(&env, &server, "main"), seed, "nothing pushed");
    assert!(local_evidence_refs(&env, &server).is_empty());

    // A dedicated branch holds only evidence: it is pushed.
    let out = env.evidence(
        &repo,
        with(
            record_args("t", &log, "2026-11-26T11:15:00Z"),
            &["--branch", "evidence", "--json", "--push"],
        ),
    );
    assert_code(&out, 0, "record --branch evidence --push");
    let push = push_of(&out);
    assert_eq!(push["branch"], "refs/heads/evidence", "{push:#}");
    assert_eq!(
        rev(&env, &server, "refs/heads/evidence"),
        rev(&env, &repo, "refs/heads/evidence")
    );
    assert_eq!(rev(&env, &server, "main"), seed);
    assert_eq!(rev(&env, &repo, "main"), tip);
}

/// The server moved too, so pushing would mean replaying the hand-made commit: refused the same
/// way, nothing rewritten.
#[test]
fn a_local_commit_that_is_not_evidence_is_never_replayed() {
    let env = Env::new();
    let server = env.bare_repo("server.git");
    let a = host(&env, server.to_str().unwrap(), "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);
    quick_budget(&env, &a);

    let (log_b, _) = log_file(&env, "host-b");
    let out = env.evidence(
        &b,
        with(
            record_args("t", &log_b, "2026-11-26T10:00:00Z"),
            &["--push"],
        ),
    );
    assert_code(&out, 0, "host B's record --push");
    let server_tip = rev(&env, &server, "main");

    let mine = hand_commit(&env, &a);
    let (log_a, _) = log_file(&env, "host-a");
    env.evidence_ok(&a, record_args("t", &log_a, "2026-11-26T10:30:00Z"));
    let tip = rev(&env, &a, "main");
    assert_eq!(rev(&env, &a, "main~1"), mine);

    let out = env.evidence(&a, ["push"]);
    assert_code(
        &out,
        EXIT_NOT_PUSHED,
        "push over a hand-made commit, server moved",
    );
    assert!(stderr(&out).contains("--branch"), "{}", describe(&out));
    assert_eq!(rev(&env, &a, "main"), tip, "nothing rewritten locally");
    assert_eq!(rev(&env, &a, "main~1"), mine);
    assert_eq!(rev(&env, &server, "main"), server_tip, "server unchanged");
    assert_clean(&env, &a);
}

// ---------------------------------------------------------------------------------------------
// Run-id collisions between hosts
// ---------------------------------------------------------------------------------------------

/// Two hosts record the same template started in the same second, a success and a failure
/// each: the second to push gets `-2` for both, and says so.
#[test]
fn same_run_ids_on_two_hosts_get_the_next_suffix_when_pushed() {
    const OK_AT: &str = "2026-11-26T10:15:00Z";
    const FAILED_AT: &str = "2026-11-26T11:00:00Z";
    let env = Env::new();
    let base = env.path().join("srv");
    let server = served_repo(&env, &base, "evidence.git");
    let daemon = GitDaemon::start(&env, &base);
    let url = daemon.url("evidence.git");
    let a = host(&env, &url, "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", false);

    let mut logs = BTreeMap::new();
    for (name, repo) in [("a", &a), ("b", &b)] {
        let (ok_log, ok_bytes) = log_file(&env, &format!("{name}-ok"));
        let (bad_log, bad_bytes) = log_file(&env, &format!("{name}-failed"));
        env.evidence_ok(repo, record_args("ubuntu-22.04", &ok_log, OK_AT));
        env.evidence_ok(
            repo,
            record_with_code("ubuntu-22.04", &bad_log, FAILED_AT, 1),
        );
        logs.insert(name, (ok_bytes, bad_bytes));
    }
    let ok_id = base_id(OK_AT);
    let failed_id = base_id(FAILED_AT);
    let failed_ref = |id: &str| format!("refs/evidence/failed/builds/ubuntu-22.04/{id}");

    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "host A's push");
    let push = push_json(&out);
    assert_eq!(push["pushed"], true, "{push:#}");
    assert!(renames_of(&push).is_empty(), "{push:#}");
    assert!(
        failed_refs_of(&push).contains(&failed_ref(&failed_id)),
        "{push:#}"
    );

    let out = env.evidence(&b, ["push", "--json"]);
    assert_code(&out, 0, "host B's push");
    let push = push_json(&out);
    assert_eq!(push["pushed"], true, "{push:#}");
    assert_eq!(push["replayed"], 1, "{push:#}");
    let renames = renames_of(&push);
    for id in [&ok_id, &failed_id] {
        assert!(
            renames
                .iter()
                .any(|(from, to)| from.ends_with(id.as_str()) && to.ends_with(&format!("{id}-2"))),
            "renamed must list {id} -> {id}-2: {push:#}"
        );
    }
    assert_eq!(renames.len(), 2, "{push:#}");
    assert!(
        failed_refs_of(&push).contains(&failed_ref(&format!("{failed_id}-2"))),
        "{push:#}"
    );
    assert_eq!(rev(&env, &b, "main"), rev(&env, &server, "main"));

    // The server has both runs, each with its own log; latest is the greatest id.
    let ok2 = format!("{ok_id}-2");
    assert_eq!(
        runs_at(&env, &server, "main", "ubuntu-22.04"),
        BTreeSet::from([ok_id.clone(), ok2.clone()])
    );
    let folder = |id: &str| format!("evidence/builds/ubuntu-22.04/{id}");
    assert_eq!(
        blob(
            &env,
            &server,
            "main",
            &format!("{}/packer.log", folder(&ok_id))
        ),
        logs["a"].0
    );
    assert_eq!(
        blob(
            &env,
            &server,
            "main",
            &format!("{}/packer.log", folder(&ok2))
        ),
        logs["b"].0
    );
    let proof = json(
        &String::from_utf8(blob(
            &env,
            &server,
            "main",
            &format!("{}/proof.json", folder(&ok2)),
        ))
        .unwrap(),
    );
    assert_eq!(proof["run_id"], ok2.as_str());
    assert_eq!(latest_at(&env, &server, "main", "ubuntu-22.04"), ok2);
    assert_eq!(count(&env, &server, "main"), 3);
    assert_no_merges(&env, &server, "main");

    // Both failed refs, each with its own log.
    let failed2 = format!("{failed_id}-2");
    let refs = local_evidence_refs(&env, &server);
    assert_eq!(
        refs.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([failed_ref(&failed_id), failed_ref(&failed2)])
    );
    assert_eq!(
        blob(
            &env,
            &server,
            &failed_ref(&failed_id),
            &format!("{}/packer.log", folder(&failed_id))
        ),
        logs["a"].1
    );
    assert_eq!(
        blob(
            &env,
            &server,
            &failed_ref(&failed2),
            &format!("{}/packer.log", folder(&failed2))
        ),
        logs["b"].1
    );

    let review = review_clone(&env, &url, "reviewer");
    assert_verify_clean(&env, &review);
    let listed = json(&env.evidence_ok(&review, ["list", "--json", "--failed"]));
    let ids: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            ok_id.clone(),
            ok2.clone(),
            failed_id.clone(),
            failed2.clone()
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Reviewers and checked-out writers
// ---------------------------------------------------------------------------------------------

/// `setup` adds the evidence refspec once; a plain `git fetch` then brings the failed runs.
#[test]
fn setup_is_idempotent_and_makes_a_plain_fetch_bring_failed_runs() {
    let env = Env::new();
    let server = env.bare_repo("server.git");
    let builder = host(&env, server.to_str().unwrap(), "builder", true);
    let review = host(&env, server.to_str().unwrap(), "reviewer", false);

    let (log, _) = log_file(&env, "builder");
    for (started, code) in [("2026-11-26T10:00:00Z", 0), ("2026-11-26T11:00:00Z", 1)] {
        let out = env.evidence(
            &builder,
            with(record_with_code("t", &log, started, code), &["--push"]),
        );
        assert_code(&out, 0, "builder's record --push");
    }
    let on_server = local_evidence_refs(&env, &server);
    assert_eq!(on_server.len(), 1, "{on_server:?}");

    // Without setup, a plain fetch leaves the failed runs on the server.
    env.git(&review, ["fetch", "-q"]);
    assert!(local_evidence_refs(&env, &review).is_empty());

    let fetch_specs = |remote: &str| -> Vec<String> {
        let out = env
            .git_cmd(&review)
            .args(["config", "--get-all", &format!("remote.{remote}.fetch")])
            .output()
            .unwrap();
        stdout(&out).lines().map(str::to_owned).collect()
    };
    let before = fetch_specs("origin");
    let out = env.evidence(&review, ["setup"]);
    assert_code(&out, 0, "setup");
    let first = stdout(&out) + &stderr(&out);
    assert!(
        first.contains(EVIDENCE_REFSPEC),
        "setup must say what it added: {first}"
    );
    let mut want = before.clone();
    want.push(EVIDENCE_REFSPEC.to_owned());
    assert_eq!(fetch_specs("origin"), want);
    let config = std::fs::read(review.join(".git/config")).unwrap();

    let out = env.evidence(&review, ["setup"]);
    assert_code(&out, 0, "setup again");
    let second = stdout(&out) + &stderr(&out);
    assert!(
        !second.trim().is_empty() && second != first,
        "the second setup must say nothing changed:\nfirst: {first}\nsecond: {second}"
    );
    assert_eq!(
        std::fs::read(review.join(".git/config")).unwrap(),
        config,
        "the second setup changes nothing"
    );

    // A plain fetch now brings the failed runs, and they verify.
    env.git(&review, ["fetch", "-q"]);
    assert_eq!(local_evidence_refs(&env, &review), on_server);
    env.git(&review, ["merge", "-q", "--ff-only", "origin/main"]);
    assert_verify_clean(&env, &review);
    let listed = json(&env.evidence_ok(&review, ["list", "--json", "--failed"]));
    let refs: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["ref"].as_str())
        .collect();
    assert_eq!(
        refs,
        ["refs/evidence/failed/builds/t/2026-11-26T110000Z"],
        "{listed:#}"
    );

    // An explicit remote gets the refspec, origin's is left as it is.
    env.git(
        &review,
        ["remote", "add", "mirror", server.to_str().unwrap()],
    );
    let origin_specs = fetch_specs("origin");
    let out = env.evidence(&review, ["setup", "mirror"]);
    assert_code(&out, 0, "setup mirror");
    assert!(
        fetch_specs("mirror").contains(&EVIDENCE_REFSPEC.to_owned()),
        "{:?}",
        fetch_specs("mirror")
    );
    assert_eq!(fetch_specs("origin"), origin_specs);
}

/// A writer with main checked out whose push needed a replay: its work tree follows the
/// replayed branch (the other host's run appears, `latest` as on the server), nothing to commit.
#[test]
fn a_checked_out_writer_whose_push_replayed_ends_clean_with_the_other_hosts_run() {
    let env = Env::new();
    let base = env.path().join("srv");
    let server = served_repo(&env, &base, "evidence.git");
    let daemon = GitDaemon::start(&env, &base);
    let url = daemon.url("evidence.git");
    let a = host(&env, &url, "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);

    let (log_b, bytes_b) = log_file(&env, "host-b");
    let out = env.evidence(
        &b,
        with(
            record_args("rocky9", &log_b, "2026-11-26T10:00:00Z"),
            &["--push"],
        ),
    );
    assert_code(&out, 0, "host B's record --push");

    // A's run started earlier than B's: after the replay, latest must stay on B's.
    let (log_a, bytes_a) = log_file(&env, "host-a");
    let out = env.evidence(
        &a,
        with(
            record_args("rocky9", &log_a, "2026-11-26T09:30:00Z"),
            &["--json", "--push"],
        ),
    );
    assert_code(&out, 0, "host A's record --push");
    let push = push_of(&out);
    assert_eq!(push["pushed"], true, "{push:#}");
    assert_eq!(push["replayed"], 1, "{push:#}");
    let tip = rev(&env, &server, "main");
    assert_eq!(rev(&env, &a, "main"), tip);
    assert_eq!(rev(&env, &a, "HEAD"), tip);

    assert_clean(&env, &a);
    let staged = env.git(&a, ["diff", "--cached", "--name-status", "HEAD"]);
    assert!(staged.is_empty(), "index differs from HEAD:\n{staged}");
    let folder = a.join("evidence/builds/rocky9");
    assert_eq!(
        std::fs::read(folder.join("2026-11-26T100000Z/packer.log")).unwrap(),
        bytes_b,
        "B's run is in A's work tree"
    );
    assert_eq!(
        std::fs::read(folder.join("2026-11-26T093000Z/packer.log")).unwrap(),
        bytes_a
    );
    assert_eq!(
        std::fs::read_link(folder.join("latest")).unwrap(),
        Path::new("2026-11-26T100000Z"),
        "latest never moves backwards"
    );
    assert_eq!(
        latest_at(&env, &server, "main", "rocky9"),
        "2026-11-26T100000Z"
    );
    let index = std::fs::read_to_string(a.join("evidence/README.md")).unwrap();
    assert_eq!(
        index.as_bytes(),
        blob(&env, &server, "main", "evidence/README.md"),
        "the index in the work tree is the server's"
    );
    assert_verify_clean(&env, &a);
}

/// A push that landed on the server but ended before the local branch moved (the host crashed,
/// or was killed) is pushed again: the runs the server already has, renamed or not, are not
/// added a second time, and the local branch catches up with the server.
#[test]
fn a_push_cut_short_before_the_local_branch_moved_adds_nothing_twice() {
    const AT: &str = "2026-11-26T10:15:00Z";
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", true);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);
    let (a_log, _) = log_file(&env, "a-ok");
    let (b_log, _) = log_file(&env, "b-ok");
    let (a_later, _) = log_file(&env, "a-later");
    env.evidence_ok(&b, with(record_args("t", &b_log, AT), &["--push"]));
    // Host A: one run with B's id (renamed when pushed) and one of its own.
    env.evidence_ok(&a, record_args("t", &a_log, AT));
    env.evidence_ok(&a, record_args("t", &a_later, "2026-11-26T10:20:00Z"));
    let before = rev(&env, &a, "main");

    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "host A's push");
    assert_eq!(push_json(&out)["replayed"], 2);
    let landed = rev(&env, &server, "main");
    assert_eq!(rev(&env, &a, "main"), landed);

    // As if the push had been cut short after the server took it: A's branch is back where
    // it was, holding the runs as they were before the replay.
    env.git(&a, ["update-ref", "refs/heads/main", &before]);
    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "host A's second push");
    let push = push_json(&out);
    assert_eq!(push["pushed"], true, "{push:#}");
    assert_eq!(push["replayed"], 0, "{push:#}");
    assert_eq!(
        rev(&env, &server, "main"),
        landed,
        "nothing new may land: {push:#}"
    );
    assert_eq!(
        rev(&env, &a, "main"),
        landed,
        "A catches up with the server"
    );
    let base_id = base_id(AT);
    assert_eq!(
        runs_at(&env, &server, "main", "t"),
        BTreeSet::from([
            base_id.clone(),
            format!("{base_id}-2"),
            "2026-11-26T102000Z".to_owned()
        ])
    );
    assert_verify_clean(&env, &server);
}

/// A checked-out writer whose replayed branch its work tree cannot follow (a local edit where
/// the branch changes): the push lands, the local branch and the edit stay as they were, with a
/// warning; once the edit is gone, the next push catches the branch up.
#[test]
fn a_work_tree_with_local_changes_in_the_way_keeps_its_branch_and_catches_up_later() {
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);
    let (a_log, _) = log_file(&env, "a-ok");
    let (b_log, _) = log_file(&env, "b-ok");
    let (a_first, _) = log_file(&env, "a-first");
    // The index page exists on both sides before the race, so the edit is to a tracked file.
    env.evidence_ok(
        &a,
        with(
            record_args("t", &a_first, "2026-11-26T09:00:00Z"),
            &["--push"],
        ),
    );
    env.git(
        &b,
        ["fetch", "-q", "origin", "+refs/heads/main:refs/heads/main"],
    );
    env.evidence_ok(
        &b,
        with(
            record_args("t", &b_log, "2026-11-26T10:00:00Z"),
            &["--push"],
        ),
    );
    env.evidence_ok(&a, record_args("t", &a_log, "2026-11-26T10:05:00Z"));
    let before = rev(&env, &a, "main");
    let index = a.join("evidence/README.md");
    let edited = format!("{}\nmy notes\n", std::fs::read_to_string(&index).unwrap());
    std::fs::write(&index, &edited).unwrap();

    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "the push itself lands");
    let push = push_json(&out);
    assert_eq!(push["replayed"], 1, "{push:#}");
    let warnings = push["warnings"].to_string();
    assert!(
        warnings.contains("local changes in the way"),
        "a warning names the work tree: {push:#}"
    );
    let landed = rev(&env, &server, "main");
    assert_eq!(push["commit"], landed.as_str());
    assert_eq!(rev(&env, &a, "main"), before, "the branch stays");
    assert_eq!(
        std::fs::read_to_string(&index).unwrap(),
        edited,
        "the edit stays"
    );

    env.git(&a, ["checkout", "--", "evidence/README.md"]);
    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "the catching-up push");
    let push = push_json(&out);
    assert_eq!(push["warnings"], serde_json::json!([]), "{push:#}");
    assert_eq!(rev(&env, &server, "main"), landed, "nothing new lands");
    assert_eq!(rev(&env, &a, "main"), landed);
    assert_clean(&env, &a);
    assert_eq!(
        runs_at(&env, &a, "HEAD", "t").len(),
        3,
        "the work tree's branch has all three runs"
    );
    assert!(
        a.join("evidence/builds/t/2026-11-26T100000Z/packer.log")
            .is_file()
    );
}

/// A failed run whose push landed but whose local rename did not happen (the host went down in
/// between) is recognised on the remote under its new name: nothing is sent twice, and the local
/// ref takes the remote's name and commit.
#[test]
fn a_failed_run_already_on_the_remote_under_a_new_id_is_not_sent_twice() {
    const AT: &str = "2026-11-26T11:00:00Z";
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", true);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);
    let (a_log, _) = log_file(&env, "a-failed");
    let (b_log, _) = log_file(&env, "b-failed");
    env.evidence_ok(&b, with(record_with_code("t", &b_log, AT, 1), &["--push"]));
    env.evidence_ok(&a, record_with_code("t", &a_log, AT, 1));
    let id = base_id(AT);
    let name = |id: &str| format!("refs/evidence/failed/builds/t/{id}");
    let before = rev(&env, &a, &name(&id));

    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "host A's push");
    assert_eq!(
        failed_refs_of(&push_json(&out)),
        vec![name(&format!("{id}-2"))]
    );
    let server_refs = remote_refs(&env, &a, server.to_str().unwrap(), "refs/evidence/*");
    assert_eq!(server_refs.len(), 2, "{server_refs:?}");

    // As if the host had gone down after the server took the push: the old local ref is back,
    // the renamed one is gone.
    env.git(&a, ["update-ref", &name(&id), &before]);
    env.git(&a, ["update-ref", "-d", &name(&format!("{id}-2"))]);
    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "host A's second push");
    let push = push_json(&out);
    assert!(
        failed_refs_of(&push).is_empty(),
        "nothing is sent: {push:#}"
    );
    assert_eq!(
        remote_refs(&env, &a, server.to_str().unwrap(), "refs/evidence/*"),
        server_refs,
        "the server's refs are unchanged"
    );
    assert_eq!(
        rev(&env, &a, &name(&format!("{id}-2"))),
        server_refs[&name(&format!("{id}-2"))],
        "the local ref takes the remote's name and commit"
    );
    let gone = env
        .git_cmd(&a)
        .args(["rev-parse", "--verify", "-q", &name(&id)])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the old name is gone locally");
}

/// A local pre-push hook that refuses is a refusal, not a network problem: one attempt, exit 76,
/// the hook's words on stderr.
#[test]
fn a_refusing_pre_push_hook_is_not_retried() {
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", false);
    install_hook(
        &a.join(".git/hooks"),
        "pre-push",
        "#!/bin/sh\necho 'LOCAL-POLICY-42: no pushes from here' >&2\nexit 1\n",
    );
    let (log, _) = log_file(&env, "a-ok");
    let out = env.evidence(
        &a,
        with(
            record_args("t", &log, "2026-11-26T10:00:00Z"),
            &["--json", "--push"],
        ),
    );
    assert_code(&out, 76, "record --push with a refusing pre-push hook");
    assert_eq!(push_of(&out)["attempts"], 1, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LOCAL-POLICY-42"),
        "{}",
        describe(&out)
    );
}

/// A `--push` that cannot work is bad input, found before anything is recorded; `push --branch`
/// with a branch that does not exist is an error, not "up to date".
#[test]
fn push_mistakes_are_input_errors_before_anything_is_recorded() {
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", false);
    let head = rev(&env, &a, "main");
    let (log, _) = log_file(&env, "a-ok");
    let out = env.evidence(
        &a,
        with(
            record_args("t", &log, "2026-11-26T10:00:00Z"),
            &["--push", "nosuch"],
        ),
    );
    assert_code(&out, 2, "record --push to a remote that does not exist");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch"),
        "{}",
        describe(&out)
    );
    assert_eq!(rev(&env, &a, "main"), head, "nothing was recorded");

    let out = env.evidence(&a, ["push", "--branch", "evidnce"]);
    assert_code(&out, 2, "push --branch with a typo");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("evidnce"),
        "{}",
        describe(&out)
    );
}

/// A server that lets the hosts write the branch but not `refs/evidence/*` refuses the failed
/// runs; the successful runs land all the same, and the exit code says not everything did.
#[test]
fn failed_runs_the_server_refuses_do_not_hold_back_the_branch() {
    let env = Env::new();
    let server = path_server(&env);
    install_hook(
        &server.join("hooks"),
        "update",
        "#!/bin/sh\ncase \"$1\" in refs/heads/*) exit 0;; esac\necho \"BRANCH-ONLY: $1\" >&2\nexit 1\n",
    );
    let a = host(&env, server.to_str().unwrap(), "host-a", true);
    quick_budget(&env, &a);
    let (ok1, _) = log_file(&env, "ok-1");
    let (bad, _) = log_file(&env, "bad");
    let (ok2, _) = log_file(&env, "ok-2");
    let push = ["--push"];
    let out = env.evidence(
        &a,
        with(record_args("t", &ok1, "2026-11-26T10:00:00Z"), &push),
    );
    assert_code(&out, 0, "the first success");
    let out = env.evidence(
        &a,
        with(
            record_with_code("t", &bad, "2026-11-26T10:01:00Z", 1),
            &push,
        ),
    );
    assert_code(&out, 76, "the failed run is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BRANCH-ONLY"),
        "{}",
        describe(&out)
    );
    let out = env.evidence(
        &a,
        with(record_args("t", &ok2, "2026-11-26T10:02:00Z"), &push),
    );
    assert_code(&out, 76, "the failed run is still refused");
    assert_eq!(
        rev(&env, &server, "main"),
        rev(&env, &a, "main"),
        "the branch landed"
    );
    assert_eq!(runs_at(&env, &server, "main", "t").len(), 2);
    assert!(remote_refs(&env, &a, server.to_str().unwrap(), "refs/evidence/*").is_empty());
    assert!(rev(&env, &a, "refs/evidence/failed/builds/t/2026-11-26T100100Z").len() == 40);
}

/// A success pushed with the id another host's failed run has on the remote gets the next id:
/// a run id names one run, successful or not, on the remote as it does locally.
#[test]
fn a_success_never_takes_the_id_of_another_hosts_failed_run() {
    const AT: &str = "2026-11-26T12:00:00Z";
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);
    let (a_log, _) = log_file(&env, "a-ok");
    let (b_log, _) = log_file(&env, "b-failed");
    env.evidence_ok(&b, with(record_with_code("t", &b_log, AT, 1), &["--push"]));
    env.evidence_ok(&a, record_args("t", &a_log, AT));
    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "host A's push");
    let push = push_json(&out);
    let id = base_id(AT);
    assert_eq!(renames_of(&push).len(), 1, "{push:#}");
    assert_eq!(
        runs_at(&env, &server, "main", "t"),
        BTreeSet::from([format!("{id}-2")])
    );
    assert_eq!(rev(&env, &a, "main"), rev(&env, &server, "main"));
    assert_clean(&env, &a);
    assert_verify_clean(&env, &server);
}

/// A run recorded here while a push that replays is under way (the server holds the push until
/// the record is done) is not lost: once the push lands, the local branch becomes what was
/// pushed with the new run replayed on top, the work tree follows, and the next push sends it.
#[test]
fn a_record_made_while_a_push_runs_is_replayed_on_top_of_what_was_pushed() {
    let env = Env::new();
    let server = path_server(&env);
    let a = host(&env, server.to_str().unwrap(), "host-a", false);
    let b = host(&env, server.to_str().unwrap(), "host-b", true);
    let (a1, _) = log_file(&env, "a-1");
    let (a2, _) = log_file(&env, "a-2");
    let (b1, _) = log_file(&env, "b-1");
    env.evidence_ok(
        &b,
        with(record_args("t", &b1, "2026-11-26T10:00:00Z"), &["--push"]),
    );
    env.evidence_ok(&a, record_args("t", &a1, "2026-11-26T10:05:00Z"));

    // The server's hook says when the push arrived and waits to be released.
    let arrived = env.path().join("arrived.fifo");
    let release = env.path().join("release.fifo");
    for fifo in [&arrived, &release] {
        let made = std::process::Command::new("mkfifo")
            .arg(fifo)
            .status()
            .unwrap();
        assert!(made.success());
    }
    let hook = install_hook(
        &server.join("hooks"),
        "pre-receive",
        &format!(
            "#!/bin/sh\ncat >/dev/null\necho arrived > '{}'\nread go < '{}'\nexit 0\n",
            arrived.display(),
            release.display()
        ),
    );

    let pusher = env
        .evidence_cmd(&a)
        .args(["push", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A guard, not a pause: a push that never reaches the server fails the test, not hangs it.
    let (tx, rx) = std::sync::mpsc::channel();
    let arrived_path = arrived.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(arrived_path));
    });
    let said = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the push reaches the server's hook");
    assert_eq!(said.unwrap().trim(), "arrived");
    env.evidence_ok(&a, record_args("t", &a2, "2026-11-26T10:10:00Z"));
    std::fs::write(&release, "go\n").unwrap();
    let out = pusher.wait_with_output().unwrap();
    assert_code(&out, 0, "the push held by the server");
    let push = push_json(&out);
    assert_eq!(push["warnings"], serde_json::json!([]), "{push:#}");
    let landed = rev(&env, &server, "main");
    assert_eq!(push["commit"], landed.as_str());

    // Locally: what was pushed, plus the run recorded meanwhile, and a clean work tree.
    assert_eq!(rev(&env, &a, "main~1"), landed);
    assert_eq!(runs_at(&env, &a, "main", "t").len(), 3);
    assert_eq!(latest_at(&env, &a, "main", "t"), "2026-11-26T101000Z");
    assert_clean(&env, &a);
    std::fs::remove_file(&hook).unwrap();
    let out = env.evidence(&a, ["push", "--json"]);
    assert_code(&out, 0, "the next push");
    assert_eq!(rev(&env, &server, "main"), rev(&env, &a, "main"));
    assert_eq!(runs_at(&env, &server, "main", "t").len(), 3);
    assert_verify_clean(&env, &server);
}
