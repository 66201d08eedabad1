//! Several `git-evidence record` processes writing into one repository at the same time.
//!
//! Every "process" is a thread that runs the real binary; a `Barrier` starts them together.
//! Nothing waits on a clock: the assertions only look at what landed, which must be the same
//! whatever the interleaving (which record gets which `-N` suffix may vary; the set of run ids,
//! `latest`, the history shape and the logs may not).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Barrier;

use crate::common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs `git args…` in `cwd`, asserting success; returns stdout as raw bytes.
fn git_bytes(env: &Env, cwd: &Path, args: &[&str]) -> Vec<u8> {
    let out = env.git_cmd(cwd).args(args).output().expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed in {cwd:?}: {}",
        stderr(&out)
    );
    out.stdout
}

/// `git ls-tree -r --name-only <rev>` as a set.
fn tree_paths(env: &Env, repo: &Path, rev: &str) -> BTreeSet<String> {
    env.git(repo, ["ls-tree", "-r", "--name-only", rev])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Mode and target of `evidence/builds/<template>/latest` at `rev`.
fn latest_at(env: &Env, repo: &Path, rev: &str, template: &str) -> (String, String) {
    let path = format!("evidence/builds/{template}/latest");
    let line = env.git(repo, ["ls-tree", rev, "--", &path]);
    let mode = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = String::from_utf8(git_bytes(
        env,
        repo,
        &["cat-file", "blob", &format!("{rev}:{path}")],
    ))
    .expect("UTF-8 link target");
    (mode, target)
}

/// Asserts that history of `rev` is linear: no merges, one root, `count` commits in all.
fn assert_linear(env: &Env, repo: &Path, rev: &str, count: usize) -> BTreeMap<String, String> {
    let merges = env.git(repo, ["rev-list", "--merges", rev]);
    assert!(
        merges.trim().is_empty(),
        "merge commits on {rev}:\n{merges}"
    );
    let log = env.git(repo, ["log", "--format=%H %P", rev]);
    let mut parent_of = BTreeMap::new();
    let mut roots = 0;
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let commit = words.next().expect("commit id").to_owned();
        let parents: Vec<&str> = words.collect();
        assert!(parents.len() <= 1, "{commit} has parents {parents:?}");
        match parents.first() {
            Some(p) => {
                parent_of.insert(commit, (*p).to_owned());
            }
            None => {
                roots += 1;
                parent_of.insert(commit, String::new());
            }
        }
    }
    assert_eq!(
        roots, 1,
        "history of {rev} must have exactly one root:\n{log}"
    );
    assert_eq!(parent_of.len(), count, "commits on {rev}:\n{log}");
    let first_parent = env.git(repo, ["rev-list", "--count", "--first-parent", rev]);
    assert_eq!(first_parent.trim(), count.to_string());
    parent_of
}

/// One planned `record`.
#[derive(Debug, Clone)]
struct Job {
    worker: usize,
    template: String,
    started: String,
    log: PathBuf,
    bytes: Vec<u8>,
}

/// A finished `record`: the job, its output and (if it succeeded) what `--json` said.
struct Done {
    job: Job,
    out: Output,
}

impl Done {
    fn json(&self) -> serde_json::Value {
        json(&stdout(&self.out))
    }

    fn field(&self, key: &str) -> String {
        self.json()[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key:?} in {}", stdout(&self.out)))
            .to_owned()
    }
}

/// A log whose bytes are unique to (worker, index) and awkward on purpose: CRLF, NUL, bytes that
/// are not UTF-8, no final newline; every 7th is larger than the store's 256 KiB read chunk.
fn log_bytes(worker: usize, index: usize) -> Vec<u8> {
    let mut bytes = format!(
        "2026/11/26 10:15:00 [INFO] Packer version: 1.6.6 worker={worker} record={index}\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(&[0x00, 0xff, 0xfe, b'\t', 0x1b, b'[', b'0', b'm', b'\n']);
    if index % 7 == 3 {
        for line in 0..6000 {
            bytes.extend_from_slice(
                format!("{worker}:{index}:{line} ==> proxmox-iso: waiting for SSH...\n").as_bytes(),
            );
        }
    }
    bytes.extend_from_slice(format!("end of worker {worker} record {index}").as_bytes());
    bytes
}

/// Runs every worker's jobs: one thread per worker, released together by a barrier, each
/// running its jobs one after the other. Returns every finished record, in no particular order.
fn run_workers(env: &Env, cwd: &Path, workers: Vec<Vec<Job>>, extra: &[&str]) -> Vec<Done> {
    let barrier = Barrier::new(workers.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|jobs| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    jobs.into_iter()
                        .map(|job| {
                            let mut args = record_args(&job.template, &job.log, &job.started);
                            args.push("--json".into());
                            args.extend(extra.iter().map(|s| (*s).to_owned()));
                            let out = env.evidence(cwd, &args);
                            Done { job, out }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread panicked"))
            .collect()
    })
}

/// Asserts every record exited 0, printing all failures at once.
fn assert_all_succeeded(done: &[Done]) {
    let failures: Vec<String> = done
        .iter()
        .filter(|d| !d.out.status.success())
        .map(|d| {
            format!(
                "worker {} {} {}: {}\n{}{}",
                d.job.worker,
                d.job.template,
                d.job.started,
                d.out.status,
                stdout(&d.out),
                stderr(&d.out)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} records failed:\n{}",
        failures.len(),
        done.len(),
        failures.join("\n")
    );
}

/// Asserts the work tree of a non-bare repository is clean, untracked files included (a temp
/// file left behind by a writer would show here).
fn assert_clean(env: &Env, repo: &Path) {
    let status = env.git(repo, ["status", "--porcelain", "--untracked-files=all"]);
    assert!(
        status.is_empty(),
        "work tree of {repo:?} not clean:\n{status}"
    );
}

// ---------------------------------------------------------------------------------------------
// The acceptance test: 3 processes × 16 records
// ---------------------------------------------------------------------------------------------

const WORKERS: usize = 3;
const PER_WORKER: usize = 16;
/// The seconds (of 09:00) of each worker's eight own-template records, in the order recorded:
/// out of order, with two seconds used twice, and an older run last (`latest` must not go back).
const OWN_SECONDS: [u32; 8] = [3, 1, 4, 0, 5, 2, 5, 3];

/// The jobs of one worker: even records on the shared template, odd ones on its own.
///
/// Shared records 1, 3, 5 and 7 start in the same second in every worker (11:00:0k), so three
/// writers race for `T`, `T-2` and `T-3`; the newest shared second is one of those, so `latest`
/// must end on a `-3`. Shared records 0, 2, 4 and 6 start at a time unique to the worker.
fn plan(env: &Env, worker: usize) -> Vec<Job> {
    (0..PER_WORKER)
        .map(|i| {
            let k = i / 2;
            let (template, started) = if i % 2 == 0 {
                let started = if k % 2 == 1 {
                    format!("2026-11-26T11:00:{k:02}Z")
                } else {
                    format!("2026-11-26T10:{worker:02}:{k:02}Z")
                };
                ("shared".to_owned(), started)
            } else {
                (
                    format!("own-{worker}"),
                    format!("2026-11-26T09:00:{:02}Z", OWN_SECONDS[k]),
                )
            };
            let bytes = log_bytes(worker, i);
            let log = env.file(&format!("w{worker}-{i:02}.packer.log"), &bytes);
            Job {
                worker,
                template,
                started,
                log,
                bytes,
            }
        })
        .collect()
}

fn acceptance(bare: bool) {
    let env = Env::new();
    let repo = if bare {
        env.bare_repo("evidence.git")
    } else {
        env.repo("infra")
    };
    let base = env.git(&repo, ["rev-parse", "main"]).trim().to_owned();
    let workers: Vec<Vec<Job>> = (0..WORKERS).map(|w| plan(&env, w)).collect();
    let done = run_workers(&env, &repo, workers, &[]);

    // Every record exited 0 and says what it did.
    assert_eq!(done.len(), WORKERS * PER_WORKER);
    assert_all_succeeded(&done);

    // The run ids: per template exactly T, T-2, … for each second used, none twice.
    let mut templates: BTreeMap<String, Vec<&Done>> = BTreeMap::new();
    for d in &done {
        templates.entry(d.job.template.clone()).or_default().push(d);
    }
    assert_eq!(
        templates.keys().cloned().collect::<Vec<_>>(),
        ["own-0", "own-1", "own-2", "shared"]
    );
    let mut expected_paths: BTreeSet<String> = [
        "build.pkr.hcl",
        "evidence/.gitattributes",
        "evidence/README.md",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut expected_latest = BTreeMap::new();
    for (template, records) in &templates {
        let want = expected_ids(records.iter().map(|d| d.job.started.as_str()));
        let got: Vec<String> = records.iter().map(|d| d.field("run_id")).collect();
        let got_set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(
            got_set.len(),
            got.len(),
            "{template}: a run id twice: {got:?}"
        );
        assert_eq!(got_set, want, "{template}: run ids");
        for d in records {
            let id = d.field("run_id");
            assert!(
                id.starts_with(&base_id(&d.job.started)),
                "{template}: {id} does not name start {}",
                d.job.started
            );
            assert_eq!(
                d.field("folder"),
                format!("evidence/builds/{template}/{id}")
            );
            for file in ["README.md", "proof.json", "packer.log"] {
                expected_paths.insert(format!("evidence/builds/{template}/{id}/{file}"));
            }
        }
        expected_paths.insert(format!("evidence/builds/{template}/latest"));
        expected_latest.insert(template.clone(), newest(&want));
    }
    assert_eq!(expected_latest["shared"], "2026-11-26T110007Z-3");
    for w in 0..WORKERS {
        assert_eq!(expected_latest[&format!("own-{w}")], "2026-11-26T090005Z-2");
    }

    // Own templates are written by one worker each, in order: the ids and whether `latest`
    // moved are deterministic. `latest` moves only forward.
    for w in 0..WORKERS {
        let template = format!("own-{w}");
        let mut records: Vec<&Done> = templates[&template].clone();
        records.sort_by_key(|d| d.job.log.clone()); // w{w}-{i:02}: the order they ran in
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut newest_so_far: Option<(String, u32)> = None;
        for d in records {
            let base = base_id(&d.job.started);
            let id = if seen.contains(&base) {
                format!("{base}-2")
            } else {
                base.clone()
            };
            seen.insert(base);
            assert_eq!(d.field("run_id"), id, "{template} {}", d.job.started);
            let moves = newest_so_far.as_ref().is_none_or(|n| *n < id_key(&id));
            assert_eq!(
                d.json()["latest_moved"].as_bool(),
                Some(moves),
                "{template} {id}: latest_moved"
            );
            if moves {
                newest_so_far = Some(id_key(&id));
            }
        }
    }

    // The tree at the tip holds exactly those folders, three files each, and the links.
    let paths = tree_paths(&env, &repo, "main");
    let missing: Vec<_> = expected_paths.difference(&paths).collect();
    let extra: Vec<_> = paths.difference(&expected_paths).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "tree at main differs:\nmissing {missing:#?}\nextra {extra:#?}"
    );
    for (template, want) in &expected_latest {
        let (mode, target) = latest_at(&env, &repo, "main", template);
        assert_eq!(mode, "120000", "{template}/latest must be a symlink");
        assert_eq!(&target, want, "{template}/latest");
    }

    // The index page was recomputed on every retry: it names each latest run and its count.
    let index = env.git(&repo, ["show", "main:evidence/README.md"]);
    for (template, want) in &expected_latest {
        let row = index
            .lines()
            .find(|l| l.starts_with(&format!("| [{template}](")))
            .unwrap_or_else(|| panic!("no row for {template} in the index:\n{index}"));
        assert!(row.contains(&format!("[{want}](")), "{template} row: {row}");
        let runs = templates[template].len();
        assert!(
            row.ends_with(&format!("| {runs} |")),
            "{template} row: {row}"
        );
    }

    // History: linear, the base commit plus one commit per record, each record's own commit on
    // it with the parent it reported, changing its own run folder and nothing of other runs.
    let parent_of = assert_linear(&env, &repo, "main", WORKERS * PER_WORKER + 1);
    assert_eq!(parent_of.get(&base).map(String::as_str), Some(""));
    let mut commits = BTreeSet::new();
    for d in &done {
        let commit = d.field("commit");
        assert!(commits.insert(commit.clone()), "{commit} reported twice");
        assert_eq!(
            parent_of.get(&commit),
            Some(&d.field("parent")),
            "{commit} of {} {} is not on main with the parent it reported",
            d.job.template,
            d.job.started
        );
        let folder = d.field("folder");
        let template = &d.job.template;
        let changed: BTreeSet<String> = env
            .git(
                &repo,
                ["diff-tree", "--no-commit-id", "-r", "--name-only", &commit],
            )
            .lines()
            .map(str::to_owned)
            .collect();
        for file in ["README.md", "proof.json", "packer.log"] {
            assert!(
                changed.contains(&format!("{folder}/{file}")),
                "{commit}: {changed:?}"
            );
        }
        let latest = format!("evidence/builds/{template}/latest");
        assert_eq!(
            changed.contains(&latest),
            d.json()["latest_moved"].as_bool().unwrap(),
            "{commit}: latest_moved vs {changed:?}"
        );
        for path in &changed {
            assert!(
                path.starts_with(&format!("{folder}/"))
                    || *path == latest
                    || path == "evidence/README.md"
                    || path == "evidence/.gitattributes",
                "{commit} ({folder}) also changed {path}"
            );
        }
    }

    // The logs, byte for byte, at the tip and (non-bare) in the work tree.
    for d in &done {
        let folder = d.field("folder");
        let blob = git_bytes(
            &env,
            &repo,
            &["cat-file", "blob", &format!("main:{folder}/packer.log")],
        );
        assert!(
            blob == d.job.bytes,
            "{folder}/packer.log at main is not the log passed ({} vs {} bytes)",
            blob.len(),
            d.job.bytes.len()
        );
        assert_eq!(blob, std::fs::read(&d.job.log).unwrap(), "source changed?");
        let proof = json(&env.git(&repo, ["show", &format!("main:{folder}/proof.json")]));
        assert_eq!(proof["run_id"].as_str(), Some(d.field("run_id").as_str()));
        assert_eq!(proof["started_at"].as_str(), Some(d.job.started.as_str()));
        assert_eq!(
            proof["log_sha256"].as_str(),
            Some(sha256sum(&d.job.log).as_str())
        );
    }

    assert_fsck(&env, &repo);

    if bare {
        for d in &done {
            assert_eq!(d.json()["worktrees"], serde_json::json!([]));
        }
    } else {
        assert_clean(&env, &repo);
        let diff = env.git(&repo, ["diff", "--cached", "--name-status", "HEAD"]);
        assert!(diff.is_empty(), "index differs from main:\n{diff}");
        for d in &done {
            let on_disk = std::fs::read(repo.join(d.field("folder")).join("packer.log")).unwrap();
            assert!(
                on_disk == d.job.bytes,
                "{} in the work tree",
                d.field("folder")
            );
        }
        for (template, want) in &expected_latest {
            let link = repo.join(format!("evidence/builds/{template}/latest"));
            assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(want));
        }
    }

    // Retries: how many there were depends on scheduling, so this is reported, not required.
    let attempts: Vec<u64> = done
        .iter()
        .map(|d| d.json()["attempts"].as_u64().expect("attempts"))
        .collect();
    assert!(attempts.iter().all(|&a| a >= 1), "attempts {attempts:?}");
    let retried = attempts.iter().filter(|&&a| a > 1).count();
    eprintln!(
        "concurrency ({}): {retried} of {} records retried; attempts total {}, max {}",
        if bare { "bare" } else { "non-bare" },
        attempts.len(),
        attempts.iter().sum::<u64>(),
        attempts.iter().max().unwrap()
    );
}

#[test]
fn three_processes_record_sixteen_runs_each_into_a_checked_out_branch() {
    acceptance(false);
}

#[test]
fn three_processes_record_sixteen_runs_each_into_a_bare_repository() {
    acceptance(true);
}

// ---------------------------------------------------------------------------------------------
// Same template, same second
// ---------------------------------------------------------------------------------------------

/// `n` records of `template` started at `started`, all released at once, each its own process.
fn same_second(env: &Env, repo: &Path, template: &str, started: &str, n: usize) -> Vec<Done> {
    let workers = (0..n)
        .map(|w| {
            let bytes = log_bytes(w, 0);
            let log = env.file(&format!("same-{w}.packer.log"), &bytes);
            vec![Job {
                worker: w,
                template: template.to_owned(),
                started: started.to_owned(),
                log,
                bytes,
            }]
        })
        .collect();
    let done = run_workers(env, repo, workers, &[]);
    assert_all_succeeded(&done);
    done
}

#[test]
fn two_records_of_one_template_in_the_same_second_get_t_and_t_2() {
    let env = Env::new();
    let repo = env.repo("infra");
    let done = same_second(&env, &repo, "ubuntu-22.04", "2026-11-26T10:15:00Z", 2);

    let ids: BTreeSet<String> = done.iter().map(|d| d.field("run_id")).collect();
    let want: BTreeSet<String> = ["2026-11-26T101500Z", "2026-11-26T101500Z-2"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, want);

    let paths = tree_paths(&env, &repo, "main");
    for d in &done {
        let folder = d.field("folder");
        for file in ["README.md", "proof.json", "packer.log"] {
            assert!(
                paths.contains(&format!("{folder}/{file}")),
                "{folder}/{file}"
            );
        }
        let blob = git_bytes(
            &env,
            &repo,
            &["cat-file", "blob", &format!("main:{folder}/packer.log")],
        );
        assert!(
            blob == d.job.bytes,
            "{folder}/packer.log is not its own log"
        );
    }
    assert_eq!(
        latest_at(&env, &repo, "main", "ubuntu-22.04"),
        ("120000".to_owned(), "2026-11-26T101500Z-2".to_owned())
    );
    assert_linear(&env, &repo, "main", 3);
    assert_fsck(&env, &repo);
    assert_clean(&env, &repo);
}

/// Twelve at once: suffixes go past 9, and `latest` must be `-12` (run-id order), not `-9`
/// (string order).
#[test]
fn twelve_records_in_the_same_second_order_suffixes_numerically() {
    let env = Env::new();
    let repo = env.repo("infra");
    let started = "2026-11-26T10:15:00Z";
    let done = same_second(&env, &repo, "rocky9", started, 12);

    let ids: BTreeSet<String> = done.iter().map(|d| d.field("run_id")).collect();
    assert_eq!(ids, expected_ids(std::iter::repeat_n(started, 12)));
    assert_eq!(
        latest_at(&env, &repo, "main", "rocky9"),
        ("120000".to_owned(), "2026-11-26T101500Z-12".to_owned())
    );
    assert_eq!(
        std::fs::read_link(repo.join("evidence/builds/rocky9/latest")).unwrap(),
        Path::new("2026-11-26T101500Z-12")
    );
    for d in &done {
        let blob = git_bytes(
            &env,
            &repo,
            &[
                "cat-file",
                "blob",
                &format!("main:{}/packer.log", d.field("folder")),
            ],
        );
        assert!(
            blob == d.job.bytes,
            "{} is not its own log",
            d.field("folder")
        );
    }
    assert_linear(&env, &repo, "main", 13);
    assert_fsck(&env, &repo);
    assert_clean(&env, &repo);
}

/// Two first records into a repository whose branch is unborn: one creates the branch, the
/// other must notice and build on it rather than fail or start a second root.
#[test]
fn concurrent_first_records_into_an_empty_repository_share_one_root() {
    let env = Env::new();
    let repo = env.empty_repo("fresh");
    let workers = (0..4)
        .map(|w| {
            let bytes = log_bytes(w, 1);
            let log = env.file(&format!("fresh-{w}.packer.log"), &bytes);
            vec![Job {
                worker: w,
                template: format!("t{w}"),
                started: format!("2026-11-26T10:15:0{w}Z"),
                log,
                bytes,
            }]
        })
        .collect();
    let done = run_workers(&env, &repo, workers, &[]);
    assert_all_succeeded(&done);
    assert_linear(&env, &repo, "main", 4);
    let paths = tree_paths(&env, &repo, "main");
    for d in &done {
        assert!(
            paths.contains(&format!("{}/packer.log", d.field("folder"))),
            "{} missing from main: {paths:#?}",
            d.field("folder")
        );
    }
    assert_fsck(&env, &repo);
    assert_clean(&env, &repo);
}

/// A success and a failed run of one template that start in the same second must not share a
/// run id: the success's folder on the branch and the failed run's ref
/// `refs/evidence/failed/builds/<template>/<run-id>` would name two different runs the same way.
/// Run one after the other they get `T` and `T-2` (`choose_run_id` looks at both places); run
/// concurrently, nothing makes the two writers see each other.
#[test]
fn concurrent_success_and_failure_never_share_a_run_id() {
    let env = Env::new();
    let repo = env.repo("infra");
    // Five rounds of three successes and three failures started in the same second.
    let mut collisions = Vec::new();
    for round in 0..5 {
        let started = format!("2026-11-26T10:15:{round:02}Z");
        let workers: Vec<Vec<Job>> = (0..6)
            .map(|w| {
                let bytes = log_bytes(w, round);
                let log = env.file(&format!("r{round}-w{w}.packer.log"), &bytes);
                vec![Job {
                    worker: w,
                    template: "debian12".to_owned(),
                    started: started.clone(),
                    log,
                    bytes,
                }]
            })
            .collect();
        let barrier = Barrier::new(workers.len());
        let done: Vec<Done> = std::thread::scope(|scope| {
            let handles: Vec<_> = workers
                .into_iter()
                .map(|jobs| {
                    let (barrier, env, repo) = (&barrier, &env, &repo);
                    scope.spawn(move || {
                        let job = jobs.into_iter().next().unwrap();
                        let mut args = record_args(&job.template, &job.log, &job.started);
                        // Odd workers record a failed run.
                        let code = if job.worker % 2 == 1 { "1" } else { "0" };
                        args[6] = code.into();
                        args.push("--json".into());
                        barrier.wait();
                        let out = env.evidence(repo, &args);
                        Done { job, out }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_all_succeeded(&done);
        let ids: Vec<String> = done.iter().map(|d| d.field("run_id")).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        if unique.len() != ids.len() {
            collisions.push(format!("round {round}: {ids:?}"));
        }
    }
    // Cross-check with git: no id is both a folder on main and a failed-run ref.
    let on_branch: BTreeSet<String> = env
        .git(
            &repo,
            ["ls-tree", "--name-only", "main:evidence/builds/debian12"],
        )
        .lines()
        .filter(|n| *n != "latest")
        .map(str::to_owned)
        .collect();
    let failed: BTreeSet<String> = env
        .git(
            &repo,
            [
                "for-each-ref",
                "--format=%(refname:lstrip=5)",
                "refs/evidence/failed/builds/debian12/",
            ],
        )
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(on_branch.len(), 15, "successes on main: {on_branch:?}");
    assert_eq!(failed.len(), 15, "failed-run refs: {failed:?}");
    let shared: Vec<_> = on_branch.intersection(&failed).collect();
    assert!(
        shared.is_empty() && collisions.is_empty(),
        "run ids used by a success and a failed run at once: {shared:?}\n{}",
        collisions.join("\n")
    );
    assert_fsck(&env, &repo);
}
