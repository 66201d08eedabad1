//! `git evidence verify`: checks that the evidence in a repository is what git-evidence wrote,
//! and that its history only ever grew.
//!
//! It reads git objects only — trees, blobs, commits and refs through libgit2 — and never
//! writes anything, nor needs a work tree, so it works the same in a bare repository.
//!
//! **The tree at a revision.** Every run folder (`<root>/builds/<template>/<run-id>/`,
//! `<root>/init/<run-id>/`) holds exactly `README.md`, `proof.json` and its log; proof.json has
//! every schema-1 key with the right JSON type and names the folder it is in; the log's SHA-256
//! and size equal proof.json's; README.md equals the one rendered from proof.json, byte for
//! byte; each `latest` is a symlink to the newest successful run beside it; the root's
//! README.md equals the index regenerated from the tree, and its `.gitattributes` is ours.
//!
//! **History.** Walking a range oldest first along first parents (the way the branch moved;
//! side branches brought in by merges are judged by the merge's result), each commit that
//! changes the evidence root is compared with its first parent: run folders are only added,
//! never modified, renamed or deleted; `latest` only moves forward, to a run that exists; and a
//! non-merge commit adding a run adds exactly one, with `Evidence-*` trailers equal to its
//! proof.json. Merges are not expected to carry trailers.
//!
//! **Failed runs** (`--failed`): every `refs/evidence/failed/*` commit holds exactly one run
//! folder, failed or cancelled, whose trailers match.

use std::collections::BTreeMap;
use std::io::Read as _;

use git2::{ObjectType, Oid, Repository, Tree};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::index_page;
use crate::logstore::hex;
use crate::names::{EvidenceRoot, Kind, RunId};
use crate::proof::{Proof, Status};
use crate::render;

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `REV` (tree only) or `A..B` (tree at B and history A..B); `None`: the tree at HEAD and
    /// the whole first-parent history of HEAD.
    pub rev: Option<String>,
    /// Also check every `refs/evidence/failed/*` commit.
    pub failed: bool,
    /// The evidence root; `git config evidence.root` or `evidence` when `None`.
    pub root: Option<EvidenceRoot>,
}

/// One thing that is not as git-evidence wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Short commit id, or `tree` for the tree at the revision checked.
    pub commit: String,
    pub path: String,
    pub problem: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub runs_checked: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, commit: &str, path: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(Problem {
            commit: commit.to_owned(),
            path: path.into(),
            problem: problem.into(),
        });
    }
}

/// The keys of a schema-1 proof and the JSON types each may have.
const SCHEMA: &[(&str, &[&str])] = &[
    ("schema_version", &["integer"]),
    ("kind", &["string"]),
    ("template", &["string", "null"]),
    ("run_id", &["string"]),
    ("status", &["string"]),
    ("started_at", &["string"]),
    ("finished_at", &["string", "null"]),
    ("duration_seconds", &["number", "integer", "null"]),
    ("host", &["string", "null"]),
    ("command", &["array"]),
    ("exit_code", &["integer"]),
    ("vmid", &["integer", "null"]),
    ("node", &["string", "null"]),
    ("facts", &["object"]),
    ("fact_sources", &["object"]),
    ("log_file", &["string"]),
    ("log_sha256", &["string"]),
    ("log_bytes", &["integer"]),
    ("redactions", &["object"]),
    ("tool", &["object"]),
    ("source_commit", &["string", "null"]),
    ("source_dirty", &["boolean", "null"]),
    ("validation", &["object", "null"]),
    ("assets", &["array"]),
];

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// A folder of runs: `builds/<template>` or `init`, relative to the root.
#[derive(Debug, Default, Clone)]
struct RunsDir {
    kind: Option<Kind>,
    template: Option<String>,
    /// Run folder name → tree id.
    runs: BTreeMap<String, Oid>,
    /// `latest`: (file mode, blob id).
    latest: Option<(i32, Oid)>,
    /// Entries that are neither run folders nor `latest`.
    strays: Vec<String>,
}

/// The evidence root's layout, relative paths → runs dirs.
#[derive(Debug, Default)]
struct Layout {
    dirs: BTreeMap<String, RunsDir>,
    strays: Vec<String>,
}

impl Layout {
    fn runs(&self) -> BTreeMap<String, Oid> {
        let mut all = BTreeMap::new();
        for (dir, d) in &self.dirs {
            for (id, oid) in &d.runs {
                all.insert(format!("{dir}/{id}"), *oid);
            }
        }
        all
    }
}

fn git_err(what: &str) -> impl FnOnce(git2::Error) -> Error + '_ {
    move |e| Error::git(format!("cannot read {what}"), e)
}

fn runs_dir(tree: &Tree<'_>, kind: Kind, template: Option<String>) -> RunsDir {
    let mut d = RunsDir {
        kind: Some(kind),
        template,
        ..RunsDir::default()
    };
    for e in tree.iter() {
        let name = e.name().unwrap_or("?").to_owned();
        match (name.as_str(), e.kind()) {
            ("latest", _) => d.latest = Some((e.filemode(), e.id())),
            (_, Some(ObjectType::Tree)) => {
                d.runs.insert(name, e.id());
            }
            _ => d.strays.push(name),
        }
    }
    d
}

fn layout(repo: &Repository, root_tree: &Tree<'_>) -> Result<Layout> {
    let mut l = Layout::default();
    for e in root_tree.iter() {
        let name = e.name().unwrap_or("?").to_owned();
        match (name.as_str(), e.kind()) {
            ("builds", Some(ObjectType::Tree)) => {
                let builds = repo.find_tree(e.id()).map_err(git_err("builds"))?;
                for t in builds.iter() {
                    let tname = t.name().unwrap_or("?").to_owned();
                    if t.kind() != Some(ObjectType::Tree) {
                        l.strays.push(format!("builds/{tname}"));
                        continue;
                    }
                    let tree = repo.find_tree(t.id()).map_err(git_err(&tname))?;
                    let d = runs_dir(&tree, Kind::Build, Some(tname.clone()));
                    l.dirs.insert(format!("builds/{tname}"), d);
                }
            }
            ("init", Some(ObjectType::Tree)) => {
                let tree = repo.find_tree(e.id()).map_err(git_err("init"))?;
                l.dirs
                    .insert("init".into(), runs_dir(&tree, Kind::Init, None));
            }
            ("README.md" | ".gitattributes", Some(ObjectType::Blob)) => {}
            _ => l.strays.push(name),
        }
    }
    Ok(l)
}

/// The subtree at `root` in `tree`, if there is one.
fn root_tree<'r>(repo: &'r Repository, tree: &Tree<'_>, root: &EvidenceRoot) -> Option<Tree<'r>> {
    let entry = tree.get_path(std::path::Path::new(root.as_str())).ok()?;
    repo.find_tree(entry.id()).ok()
}

fn blob_bytes(repo: &Repository, oid: Oid, what: &str) -> Result<Vec<u8>> {
    Ok(repo
        .find_blob(oid)
        .map_err(git_err(what))?
        .content()
        .to_vec())
}

/// SHA-256 and size of a blob, streamed from a loose object; packed objects (which libgit2's
/// streaming reader does not support) are read whole with `find_blob`.
fn hash_blob(repo: &Repository, oid: Oid, what: &str) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let odb = repo.odb().map_err(git_err(what))?;
    match odb.reader(oid) {
        Ok((mut reader, _, _)) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| Error::io(format!("cannot read {what}"), e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
        }
        Err(_) => {
            let blob = repo.find_blob(oid).map_err(git_err(what))?;
            hasher.update(blob.content());
            size = blob.size() as u64;
        }
    }
    Ok((hex(&hasher.finalize()), size))
}

/// Parses and type-checks a proof.json; `Err` is the problem to report.
fn parse_proof(bytes: &[u8]) -> std::result::Result<Proof, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("proof.json is not JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("proof.json is not a JSON object".into());
    };
    let mut wrong = Vec::new();
    for (key, types) in SCHEMA {
        match obj.get(*key) {
            None => wrong.push(format!("missing key {key:?}")),
            Some(v) if !types.contains(&json_type(v)) => wrong.push(format!(
                "key {key:?} is {}, expected {}",
                json_type(v),
                types.join(" or ")
            )),
            Some(_) => {}
        }
    }
    if !wrong.is_empty() {
        return Err(format!("proof.json: {}", wrong.join("; ")));
    }
    if obj["schema_version"] != 1 {
        return Err(format!(
            "proof.json: schema_version is {}, expected 1",
            obj["schema_version"]
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("proof.json: {e}"))
}

/// Whether progress is shown: only to a person watching a terminal, never into a CI log or a
/// pipe.
static SHOW_PROGRESS: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::io::IsTerminal::is_terminal(&std::io::stderr()));

/// Every 100 runs, `verify: N runs checked` on stderr, rewritten in place.
fn progress(runs: usize) {
    if *SHOW_PROGRESS && runs.is_multiple_of(100) {
        eprint!("\rverify: {runs} runs checked");
    }
}

/// Clears the progress line, if one was shown.
fn end_progress(runs: usize) {
    if *SHOW_PROGRESS && runs >= 100 {
        eprint!("\r\x1b[K");
    }
}

/// Checks one run folder; returns its proof when it could be read.
fn check_run(
    repo: &Repository,
    report: &mut Report,
    commit: &str,
    root: &EvidenceRoot,
    dir: &str,
    d: &RunsDir,
    (id, oid): (&str, Oid),
) -> Result<Option<Proof>> {
    let path = root.join(&format!("{dir}/{id}"));
    let kind = d.kind.unwrap_or(Kind::Build);
    let log_name = kind.log_file_name();
    report.runs_checked += 1;
    progress(report.runs_checked);
    if id.parse::<RunId>().is_err() {
        report.problem(commit, &path, "the folder name is not a run id");
    }
    let tree = repo.find_tree(oid).map_err(git_err(&path))?;
    let mut files: BTreeMap<String, Oid> = BTreeMap::new();
    for e in tree.iter() {
        let name = e.name().unwrap_or("?").to_owned();
        let expected = name == "README.md" || name == "proof.json" || name == log_name;
        if !expected {
            report.problem(
                commit,
                format!("{path}/{name}"),
                "unexpected file in a run folder",
            );
        } else if e.kind() != Some(ObjectType::Blob) || e.filemode() != 0o100644 {
            report.problem(
                commit,
                format!("{path}/{name}"),
                format!("not a regular file (mode {:o})", e.filemode()),
            );
        } else {
            files.insert(name, e.id());
        }
    }
    for name in ["README.md", "proof.json", log_name] {
        if !files.contains_key(name) && tree.get_name(name).is_none() {
            report.problem(commit, format!("{path}/{name}"), "missing");
        }
    }
    let Some(proof_oid) = files.get("proof.json") else {
        return Ok(None);
    };
    let proof_path = format!("{path}/proof.json");
    let proof = match parse_proof(&blob_bytes(repo, *proof_oid, &proof_path)?) {
        Ok(p) => p,
        Err(problem) => {
            report.problem(commit, &proof_path, problem);
            return Ok(None);
        }
    };
    if proof.run_id != id {
        report.problem(
            commit,
            &proof_path,
            format!("run_id is {:?} but the folder is {id:?}", proof.run_id),
        );
    }
    if proof.kind != kind {
        report.problem(
            commit,
            &proof_path,
            format!("kind is {} but the folder is under {dir}", proof.kind),
        );
    }
    if proof.template != d.template {
        report.problem(
            commit,
            &proof_path,
            format!(
                "template is {:?} but the folder is under {dir}",
                proof.template
            ),
        );
    }
    if proof.log_file != log_name {
        report.problem(
            commit,
            &proof_path,
            format!("log_file is {:?}, expected {log_name:?}", proof.log_file),
        );
    }
    if let Some(log_oid) = files.get(log_name) {
        let log_path = format!("{path}/{log_name}");
        let (sha, bytes) = hash_blob(repo, *log_oid, &log_path)?;
        if sha != proof.log_sha256 {
            report.problem(
                commit,
                &log_path,
                format!("SHA-256 is {sha}, proof.json says {}", proof.log_sha256),
            );
        }
        if bytes != proof.log_bytes {
            report.problem(
                commit,
                &log_path,
                format!("{bytes} bytes, proof.json says {}", proof.log_bytes),
            );
        }
    }
    if let Some(readme_oid) = files.get("README.md") {
        let readme_path = format!("{path}/README.md");
        let readme = blob_bytes(repo, *readme_oid, &readme_path)?;
        if readme != render::run_readme(&proof).as_bytes() {
            let problem = if String::from_utf8_lossy(&readme).contains(&proof.log_sha256) {
                "differs from the README rendered from proof.json"
            } else {
                "differs from the README rendered from proof.json (and does not state its log_sha256)"
            };
            report.problem(commit, &readme_path, problem);
        }
    }
    Ok(Some(proof))
}

/// The run id a `latest` link names, when it is a symlink.
fn latest_target(repo: &Repository, latest: Option<(i32, Oid)>) -> Option<String> {
    let (mode, oid) = latest?;
    if mode != 0o120000 {
        return None;
    }
    let blob = repo.find_blob(oid).ok()?;
    String::from_utf8(blob.content().to_vec()).ok()
}

/// Checks the evidence tree under `root` in `tree`.
fn check_tree(
    repo: &Repository,
    report: &mut Report,
    commit: &str,
    root: &EvidenceRoot,
    tree: &Tree<'_>,
) -> Result<()> {
    let Some(rtree) = root_tree(repo, tree, root) else {
        return Ok(());
    };
    let l = layout(repo, &rtree)?;
    for stray in &l.strays {
        report.problem(
            commit,
            root.join(stray),
            "unexpected entry in the evidence root",
        );
    }
    for (dir, d) in &l.dirs {
        let mut proofs = BTreeMap::new();
        for stray in &d.strays {
            report.problem(
                commit,
                root.join(&format!("{dir}/{stray}")),
                "unexpected entry beside the run folders",
            );
        }
        for (id, oid) in &d.runs {
            if let Some(p) = check_run(repo, report, commit, root, dir, d, (id, *oid))? {
                proofs.insert(id.clone(), p);
            }
        }
        let newest = proofs
            .iter()
            .filter(|(_, p)| p.status == Status::Success)
            .filter_map(|(id, _)| id.parse::<RunId>().ok())
            .max();
        let latest_path = root.join(&format!("{dir}/latest"));
        match (d.latest, &newest) {
            (None, None) => {}
            (None, Some(n)) => report.problem(
                commit,
                &latest_path,
                format!("missing; the newest successful run is {n}"),
            ),
            (Some((mode, _)), _) if mode != 0o120000 => report.problem(
                commit,
                &latest_path,
                format!("not a symbolic link (mode {mode:o})"),
            ),
            (Some(_), _) => {
                let target = latest_target(repo, d.latest).unwrap_or_default();
                if !d.runs.contains_key(&target) {
                    report.problem(
                        commit,
                        &latest_path,
                        format!("points at {target:?}, which is not a run folder here"),
                    );
                } else if proofs.get(&target).map(|p| p.status) != Some(Status::Success)
                    && proofs.contains_key(&target)
                {
                    report.problem(
                        commit,
                        &latest_path,
                        format!("points at {target}, which did not succeed"),
                    );
                } else if let Some(n) = &newest
                    && target.parse::<RunId>().ok().as_ref() != Some(n)
                {
                    report.problem(
                        commit,
                        &latest_path,
                        format!("points at {target}, but the newest successful run is {n}"),
                    );
                }
            }
        }
    }
    let expected_index = index_page::render(repo, root, Some(&rtree))?;
    check_blob(
        repo,
        report,
        commit,
        &rtree,
        root,
        "README.md",
        expected_index.as_bytes(),
        "differs from the index regenerated from the evidence tree",
    )?;
    check_blob(
        repo,
        report,
        commit,
        &rtree,
        root,
        ".gitattributes",
        render::GITATTRIBUTES.as_bytes(),
        "differs from the one git-evidence writes",
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_blob(
    repo: &Repository,
    report: &mut Report,
    commit: &str,
    rtree: &Tree<'_>,
    root: &EvidenceRoot,
    name: &str,
    expected: &[u8],
    problem: &str,
) -> Result<()> {
    let path = root.join(name);
    match rtree.get_name(name) {
        Some(e) if e.kind() == Some(ObjectType::Blob) => {
            if blob_bytes(repo, e.id(), &path)? != expected {
                report.problem(commit, path, problem);
            }
        }
        _ => report.problem(commit, path, "missing"),
    }
    Ok(())
}

/// The trailers of a commit message: the `Key: value` lines of its last paragraph.
pub fn parse_trailers(message: &str) -> Vec<(String, String)> {
    // A one-paragraph message is only a subject: it has no trailers.
    let Some((_, last)) = message.trim_end().rsplit_once("\n\n") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in last.lines() {
        match line.split_once(": ") {
            Some((k, v)) if !k.is_empty() && !k.contains(' ') => {
                out.push((k.to_owned(), v.trim().to_owned()))
            }
            _ => return Vec::new(),
        }
    }
    out
}

/// Compares a commit's `Evidence-*` trailers with those its proof renders to.
fn check_trailers(report: &mut Report, commit: &str, path: &str, message: &str, proof: &Proof) {
    let actual: BTreeMap<String, String> = parse_trailers(message)
        .into_iter()
        .filter(|(k, _)| k.starts_with("Evidence-"))
        .collect();
    let expected: BTreeMap<String, String> = render::trailers(proof)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if actual.is_empty() {
        report.problem(
            commit,
            path,
            "the commit adding this run has no Evidence-* trailers",
        );
        return;
    }
    for (k, v) in &expected {
        match actual.get(k) {
            None => report.problem(
                commit,
                path,
                format!("trailer {k} is missing (proof.json: {v})"),
            ),
            Some(a) if a != v => report.problem(
                commit,
                path,
                format!("trailer {k} is {a:?}, proof.json says {v:?}"),
            ),
            Some(_) => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        report.problem(commit, path, format!("trailer {k} is not in proof.json"));
    }
}

fn short(id: Oid) -> String {
    id.to_string()[..10].to_owned()
}

/// Compares one commit with its first parent.
fn check_commit(
    repo: &Repository,
    report: &mut Report,
    root: &EvidenceRoot,
    commit: &git2::Commit<'_>,
) -> Result<()> {
    let label = short(commit.id());
    let tree = commit.tree().map_err(git_err(&label))?;
    let parent = commit.parents().next();
    let parent_tree = match &parent {
        Some(p) => Some(p.tree().map_err(git_err(&label))?),
        None => None,
    };
    let new_root = root_tree(repo, &tree, root);
    let old_root = parent_tree.as_ref().and_then(|t| root_tree(repo, t, root));
    if new_root.as_ref().map(|t| t.id()) == old_root.as_ref().map(|t| t.id()) {
        return Ok(());
    }
    let new = match &new_root {
        Some(t) => layout(repo, t)?,
        None => Layout::default(),
    };
    let old = match &old_root {
        Some(t) => layout(repo, t)?,
        None => Layout::default(),
    };
    let (new_runs, old_runs) = (new.runs(), old.runs());
    for (path, oid) in &old_runs {
        match new_runs.get(path) {
            None => report.problem(
                &label,
                root.join(path),
                "run folder deleted or renamed (runs are only ever added)",
            ),
            Some(n) if n != oid => report.problem(
                &label,
                root.join(path),
                "run folder modified (runs are only ever added)",
            ),
            Some(_) => {}
        }
    }
    let added: Vec<&String> = new_runs
        .keys()
        .filter(|p| !old_runs.contains_key(*p))
        .collect();
    for (dir, d) in &new.dirs {
        let old_target = old
            .dirs
            .get(dir)
            .and_then(|o| latest_target(repo, o.latest));
        let new_target = latest_target(repo, d.latest);
        if old_target == new_target {
            continue;
        }
        let path = root.join(&format!("{dir}/latest"));
        match (&old_target, &new_target) {
            (Some(o), None) => report.problem(&label, path, format!("removed (was {o})")),
            (_, Some(n)) if !d.runs.contains_key(n) => report.problem(
                &label,
                path,
                format!("moved to {n:?}, which is not a run folder"),
            ),
            (Some(o), Some(n)) => {
                let (o_id, n_id) = (o.parse::<RunId>().ok(), n.parse::<RunId>().ok());
                if n_id.is_none() || (o_id.is_some() && n_id <= o_id) {
                    report.problem(&label, path, format!("moved back from {o} to {n}"));
                }
            }
            _ => {}
        }
    }
    if commit.parent_count() > 1 || added.is_empty() {
        return Ok(());
    }
    if added.len() > 1 {
        report.problem(
            &label,
            root.as_str(),
            format!("adds {} run folders; a commit adds one", added.len()),
        );
        return Ok(());
    }
    let run_path = root.join(added[0]);
    let proof_path = format!("{run_path}/proof.json");
    let proof = tree
        .get_path(std::path::Path::new(&proof_path))
        .ok()
        .and_then(|e| repo.find_blob(e.id()).ok())
        .and_then(|b| parse_proof(b.content()).ok());
    match proof {
        Some(p) => check_trailers(
            report,
            &label,
            &run_path,
            commit.message().unwrap_or_default(),
            &p,
        ),
        None => report.problem(
            &label,
            &run_path,
            "added without a readable proof.json to check its trailers against",
        ),
    }
    Ok(())
}

fn check_failed_refs(repo: &Repository, report: &mut Report, root: &EvidenceRoot) -> Result<()> {
    let refs = repo
        .references_glob("refs/evidence/failed/*")
        .map_err(git_err("refs/evidence/failed/"))?;
    let mut names = Vec::new();
    for r in refs {
        let r = r.map_err(git_err("refs/evidence/failed/"))?;
        if let (Ok(name), Ok(c)) = (r.name(), r.peel_to_commit()) {
            names.push((name.to_owned(), c.id()));
        }
    }
    for (name, id) in names {
        check_failed_commit(repo, report, root, &name, id)?;
    }
    Ok(())
}

/// Checks one `refs/evidence/failed/*` commit (`name` is the full ref name), as `--failed` does.
pub fn check_failed_commit(
    repo: &Repository,
    report: &mut Report,
    root: &EvidenceRoot,
    name: &str,
    id: Oid,
) -> Result<()> {
    let name = name.to_owned();
    let commit = repo.find_commit(id).map_err(git_err(&name))?;
    let label = short(id);
    let tree = commit.tree().map_err(git_err(&name))?;
    let Some(rtree) = root_tree(repo, &tree, root) else {
        report.problem(
            &label,
            &name,
            format!("no {} folder in its tree", root.as_str()),
        );
        return Ok(());
    };
    let l = layout(repo, &rtree)?;
    let runs = l.runs();
    let strays = tree.len() != 1
        || !l.strays.is_empty()
        || l.dirs
            .values()
            .any(|d| !d.strays.is_empty() || d.latest.is_some());
    if strays {
        report.problem(&label, &name, "its tree holds more than the run folder");
    }
    if runs.len() != 1 {
        report.problem(
            &label,
            &name,
            format!("its tree holds {} run folders, expected one", runs.len()),
        );
        return Ok(());
    }
    let (rel, oid) = runs.iter().next().expect("one run");
    let (dir, id) = rel.rsplit_once('/').expect("dir/id");
    if name.trim_start_matches("refs/evidence/failed/") != rel {
        report.problem(&label, &name, format!("names another run than {rel}"));
    }
    let d = &l.dirs[dir];
    if let Some(p) = check_run(repo, report, &label, root, dir, d, (id, *oid))? {
        let run_path = root.join(rel);
        if p.status == Status::Success {
            report.problem(&label, &run_path, "a successful run on a failed-runs ref");
        }
        check_trailers(
            report,
            &label,
            &run_path,
            commit.message().unwrap_or_default(),
            &p,
        );
    }
    Ok(())
}

pub fn resolve(repo: &Repository, rev: &str) -> Result<Oid> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| Error::BadRevision {
            rev: rev.to_owned(),
            source: e,
        })
}

/// Verifies the evidence; problems found are in the report, `Err` means it could not run.
pub fn verify(repo: &Repository, req: &Request) -> Result<Report> {
    let root = crate::record::resolve_root(repo, req.root.as_ref())?;
    let mut report = Report::default();
    let (tip, base, history) = match req.rev.as_deref() {
        None => (resolve(repo, "HEAD")?, None, true),
        Some(r) => match r.split_once("..") {
            Some((a, b)) => {
                let b = if b.is_empty() { "HEAD" } else { b };
                let a = if a.is_empty() {
                    None
                } else {
                    Some(resolve(repo, a)?)
                };
                (resolve(repo, b)?, a, true)
            }
            None => (resolve(repo, r)?, None, false),
        },
    };
    let tip_commit = repo.find_commit(tip).map_err(git_err("the revision"))?;
    let tree = tip_commit.tree().map_err(git_err("the revision's tree"))?;
    check_tree(repo, &mut report, "tree", &root, &tree)?;
    if history {
        let mut walk = repo.revwalk().map_err(git_err("history"))?;
        walk.simplify_first_parent().map_err(git_err("history"))?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
            .map_err(git_err("history"))?;
        walk.push(tip).map_err(git_err("history"))?;
        if let Some(a) = base {
            walk.hide(a).map_err(git_err("history"))?;
        }
        for id in walk {
            let id = id.map_err(git_err("history"))?;
            let commit = repo.find_commit(id).map_err(git_err("history"))?;
            check_commit(repo, &mut report, &root, &commit)?;
        }
    }
    if req.failed {
        check_failed_refs(repo, &mut report, &root)?;
    }
    end_progress(report.runs_checked);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_are_the_last_paragraph_of_key_value_lines() {
        let msg = "subject\n\nbody: not a trailer\nmore text\n\nEvidence-Kind: build\nEvidence-Run: 2026-11-26T100000Z\n";
        assert_eq!(
            parse_trailers(msg),
            vec![
                ("Evidence-Kind".to_owned(), "build".to_owned()),
                ("Evidence-Run".to_owned(), "2026-11-26T100000Z".to_owned()),
            ]
        );
        assert!(parse_trailers("subject\n\njust prose here\n").is_empty());
        assert!(parse_trailers("Evidence-Kind: build").is_empty());
    }

    #[test]
    fn proofs_are_type_checked() {
        assert!(
            parse_proof(b"[]")
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(parse_proof(b"{").unwrap_err().contains("not JSON"));
        let err = parse_proof(br#"{"schema_version": "1"}"#).unwrap_err();
        assert!(err.contains("key \"schema_version\" is string"), "{err}");
        assert!(err.contains("missing key \"assets\""), "{err}");
    }
}
