//! Failed and cancelled runs: kept in git, on refs of their own, never on the branch.

use crate::common::*;

fn failed_args(template: &str, log: &std::path::Path, started: &str, code: &str) -> Vec<String> {
    let mut args = record_args(template, log, started);
    let at = args.iter().position(|a| a == "--exit-code").unwrap();
    args[at + 1] = code.into();
    args
}

#[test]
fn a_failed_run_goes_to_its_own_ref_and_the_branch_stays() {
    let env = Env::new();
    let repo = env.repo("repo");
    let tip = env.git(&repo, ["rev-parse", "main"]);
    let log = fixture("fail.packer.log");
    let out = env.evidence_ok(
        &repo,
        failed_args("ubuntu-22.04", &log, "2026-11-26T10:15:00Z", "1"),
    );
    assert!(out.contains("Recorded failed run"), "{out}");
    let name = "refs/evidence/failed/builds/ubuntu-22.04/2026-11-26T101500Z";
    assert!(out.contains(name), "{out}");

    assert_eq!(
        env.git(&repo, ["rev-parse", "main"]),
        tip,
        "branch unchanged"
    );
    assert_eq!(
        env.git(&repo, ["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
    assert!(!repo.join("evidence").exists());

    // Parent = branch tip; tree = the run folder alone, at its usual path.
    let parent = env.git(&repo, ["rev-parse", &format!("{name}^")]);
    assert_eq!(parent, tip);
    let files = env.git(&repo, ["ls-tree", "-r", "--name-only", name]);
    let run = "evidence/builds/ubuntu-22.04/2026-11-26T101500Z";
    assert_eq!(
        files,
        format!("{run}/README.md\n{run}/packer.log\n{run}/proof.json\n")
    );

    let proof = json(&env.git(
        &repo,
        ["cat-file", "blob", &format!("{name}:{run}/proof.json")],
    ));
    assert_eq!(proof["status"], "failed");
    assert_eq!(proof["exit_code"], 1);
    assert_eq!(proof["log_sha256"], sha256sum(&log).as_str());
    let status = env.git(
        &repo,
        [
            "log",
            "-1",
            "--format=%(trailers:key=Evidence-Status,valueonly)",
            name,
        ],
    );
    assert_eq!(status.trim(), "failed");
    let subject = env.git(&repo, ["log", "-1", "--format=%s", name]);
    assert_eq!(
        subject.trim(),
        "evidence(build): ubuntu-22.04 2026-11-26T101500Z (failed)"
    );

    // The ref has a reflog entry saying what made it.
    let reflog = env.git(&repo, ["reflog", "show", "--format=%gs", name]);
    assert_eq!(
        reflog.trim(),
        "git-evidence: record ubuntu-22.04 2026-11-26T101500Z (failed)"
    );
    assert_fsck(&env, &repo);
}

#[test]
fn cancellations_are_recorded_as_cancelled() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = fixture("proxmox-sigint.packer.log");
    env.evidence_ok(&repo, failed_args("t", &log, "2026-11-26T10:00:00Z", "130"));
    let mut args = failed_args("t", &log, "2026-11-26T11:00:00Z", "1");
    args.extend(["--status".into(), "cancelled".into()]);
    env.evidence_ok(&repo, &args);
    for id in ["2026-11-26T100000Z", "2026-11-26T110000Z"] {
        let name = format!("refs/evidence/failed/builds/t/{id}");
        let status = env.git(
            &repo,
            [
                "log",
                "-1",
                "--format=%(trailers:key=Evidence-Status,valueonly)",
                &name,
            ],
        );
        assert_eq!(status.trim(), "cancelled", "{name}");
    }
    assert!(
        !env.git(&repo, ["ls-tree", "-r", "--name-only", "main"])
            .contains("evidence/")
    );
}

#[test]
fn failed_and_successful_runs_never_share_a_run_id() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("packer.log", b"log\n");
    env.evidence_ok(&repo, failed_args("t", &log, "2026-11-26T10:00:00Z", "1"));
    env.evidence_ok(&repo, record_args("t", &log, "2026-11-26T10:00:00Z"));
    env.evidence_ok(&repo, failed_args("t", &log, "2026-11-26T10:00:00Z", "2"));
    let refs = env.git(
        &repo,
        ["for-each-ref", "--format=%(refname)", "refs/evidence/"],
    );
    assert_eq!(
        refs,
        "refs/evidence/failed/builds/t/2026-11-26T100000Z\nrefs/evidence/failed/builds/t/2026-11-26T100000Z-3\n"
    );
    let latest = env.git(&repo, ["cat-file", "blob", "main:evidence/builds/t/latest"]);
    assert_eq!(latest, "2026-11-26T100000Z-2");
}

#[test]
fn a_failed_run_on_an_unborn_branch_has_no_parent_and_leaves_it_unborn() {
    let env = Env::new();
    let repo = env.empty_repo("repo");
    let log = env.file("packer.log", b"log\n");
    env.evidence_ok(&repo, failed_args("t", &log, "2026-11-26T10:00:00Z", "1"));
    let name = "refs/evidence/failed/builds/t/2026-11-26T100000Z";
    let parents = env.git(&repo, ["rev-list", "--parents", name]);
    assert_eq!(parents.split_whitespace().count(), 1, "{parents}");
    let mut cmd = env.git_cmd(&repo);
    cmd.args(["rev-parse", "--verify", "-q", "refs/heads/main"]);
    assert!(!cmd.status().unwrap().success(), "main must stay unborn");
}

#[test]
fn a_failed_init_run_has_its_own_ref() {
    let env = Env::new();
    let repo = env.repo("repo");
    let log = env.file("init.log", b"Failed to install plugin\n");
    env.evidence_ok(
        &repo,
        [
            "record",
            "--kind",
            "init",
            "--log",
            log.to_str().unwrap(),
            "--exit-code",
            "1",
            "--started-at",
            "2026-11-26T09:00:00Z",
        ],
    );
    let name = "refs/evidence/failed/init/2026-11-26T090000Z";
    let files = env.git(&repo, ["ls-tree", "-r", "--name-only", name]);
    assert!(
        files.contains("evidence/init/2026-11-26T090000Z/init-packer.log"),
        "{files}"
    );
}
