//! Which local commits are git-evidence's, and rebuilding them on top of what the remote has:
//! evidence commits replayed onto the remote tip (ids that are taken get the next one), and
//! failed-run commits renamed or re-parented, or recognised as on the remote already.

use super::*;

/// A commit git-evidence made on the branch: it adds one run folder (plus `latest`, the index
/// and `.gitattributes`) and says so in its trailers.
pub(super) struct EvidenceCommit {
    pub(super) id: Oid,
    /// `builds/<template>` or `init`, relative to the root.
    pub(super) runs: String,
    pub(super) run_id: RunId,
    pub(super) kind: Kind,
}

/// The first-parent commits from `tip` back to (not including) `base`, oldest first; `None`
/// when `base` is not on that path (merges in between).
pub(super) fn first_parent_range(
    repo: &Repository,
    tip: Oid,
    base: Option<Oid>,
) -> Result<Option<Vec<Oid>>> {
    let mut out = Vec::new();
    let mut at = Some(tip);
    while let Some(id) = at {
        if Some(id) == base {
            out.reverse();
            return Ok(Some(out));
        }
        let commit = repo
            .find_commit(id)
            .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
        out.push(id);
        at = commit.parent_id(0).ok();
    }
    if base.is_none() {
        out.reverse();
        Ok(Some(out))
    } else {
        Ok(None)
    }
}

/// The commits on `tip` that `base` lacks (all of them, merges included), oldest first.
pub(super) fn unpushed(repo: &Repository, tip: Oid, base: Option<Oid>) -> Result<Vec<Oid>> {
    let mut walk = repo
        .revwalk()
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.push(tip)
        .map_err(|e| Error::git("cannot walk history", e))?;
    if let Some(b) = base {
        walk.hide(b)
            .map_err(|e| Error::git("cannot walk history", e))?;
    }
    walk.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::git("cannot walk history", e))
}

/// Commits of `tip` that no remote-tracking branch of the remote has (the remote lacks the
/// branch, so this is the best local knowledge of what it has).
pub(super) fn unpublished(ctx: &Context<'_>, tip: Oid) -> Result<Vec<Oid>> {
    let repo = ctx.repo;
    let mut walk = repo
        .revwalk()
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(|e| Error::git("cannot walk history", e))?;
    walk.push(tip)
        .map_err(|e| Error::git("cannot walk history", e))?;
    if is_named_remote(repo, ctx.remote) {
        let _ = walk.hide_glob(&format!("refs/remotes/{}/*", ctx.remote));
    }
    walk.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::git("cannot walk history", e))
}

/// Whether one of the (evidence) `commits` adds a run whose id is a failed run's on the remote.
pub(super) fn takes_failed_id(
    ctx: &Context<'_>,
    remote: &RemoteState,
    commits: &[Oid],
) -> Result<bool> {
    for &id in commits {
        if let Some(c) = evidence_commit(ctx.repo, ctx.root, id)?
            && remote
                .failed
                .contains_key(&format!("{}/{}", c.runs, c.run_id))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses when any of `commits` is not git-evidence's.
pub(super) fn check_ours(ctx: &Context<'_>, commits: &[Oid]) -> Result<()> {
    let mut foreign = Vec::new();
    for &id in commits {
        if evidence_commit(ctx.repo, ctx.root, id)?.is_none() {
            foreign.push(id);
        }
    }
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(foreign_error(ctx, &foreign))
    }
}

pub(super) fn foreign_error(ctx: &Context<'_>, foreign: &[Oid]) -> Error {
    let commits = foreign
        .iter()
        .take(5)
        .map(|id| {
            let subject = ctx
                .repo
                .find_commit(*id)
                .ok()
                .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
                .unwrap_or_default();
            format!("{} {subject:?}", &id.to_string()[..10])
        })
        .chain((foreign.len() > 5).then(|| format!("and {} more", foreign.len() - 5)))
        .collect();
    Error::ForeignCommits {
        branch: ctx.branch.trim_start_matches("refs/heads/").to_owned(),
        remote: ctx.remote.to_owned(),
        commits,
    }
}

/// Reads `id` as one of git-evidence's branch commits, or `None` when it is anything else.
pub(super) fn evidence_commit(
    repo: &Repository,
    root: &EvidenceRoot,
    id: Oid,
) -> Result<Option<EvidenceCommit>> {
    let commit = repo
        .find_commit(id)
        .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
    if commit.parent_count() > 1 {
        return Ok(None);
    }
    let message = String::from_utf8_lossy(commit.message_bytes());
    let trailers: BTreeMap<String, String> = parse_trailers(&message).into_iter().collect();
    let (Some(kind), Some(run)) = (trailers.get("Evidence-Kind"), trailers.get("Evidence-Run"))
    else {
        return Ok(None);
    };
    let Ok(run_id) = run.parse::<RunId>() else {
        return Ok(None);
    };
    let (kind, runs) = match (kind.as_str(), trailers.get("Evidence-Template")) {
        ("build", Some(t)) if t.parse::<crate::names::Template>().is_ok() => {
            (Kind::Build, format!("builds/{t}"))
        }
        ("init", None) => (Kind::Init, "init".to_owned()),
        _ => return Ok(None),
    };
    if trailers.get("Evidence-Status").map(String::as_str) != Some("success") {
        return Ok(None);
    }
    let dir = root.join(&runs);
    let folder = format!("{dir}/{run_id}");
    let tree = commit
        .tree()
        .map_err(|e| Error::git(format!("cannot read commit {id}"), e))?;
    if tree
        .get_path(Path::new(&folder))
        .map(|e| e.kind() != Some(ObjectType::Tree))
        .unwrap_or(true)
    {
        return Ok(None);
    }
    let parent_tree = match commit.parent(0) {
        Ok(p) => Some(
            p.tree()
                .map_err(|e| Error::git(format!("cannot read commit {}", p.id()), e))?,
        ),
        Err(_) => None,
    };
    if parent_tree
        .as_ref()
        .is_some_and(|t| t.get_path(Path::new(&folder)).is_ok())
    {
        return Ok(None); // the folder was there before: not an addition
    }
    // Everything the commit changes is the run folder, `latest`, the index or .gitattributes.
    let diff = repo
        .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)
        .map_err(|e| Error::git(format!("cannot diff commit {id}"), e))?;
    let allowed_exact = [
        format!("{dir}/latest"),
        root.join("README.md"),
        root.join(".gitattributes"),
    ];
    let folder_prefix = format!("{folder}/");
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            let Some(path) = file.path().and_then(Path::to_str) else {
                return Ok(None);
            };
            if !(path.starts_with(&folder_prefix) || allowed_exact.iter().any(|p| p == path)) {
                return Ok(None);
            }
        }
    }
    Ok(Some(EvidenceCommit {
        id,
        runs,
        run_id,
        kind,
    }))
}

// ---------------------------------------------------------------------------------------------
// Replaying.

/// The branch as it should be pushed.
pub(super) struct BranchPlan {
    /// The tip to push (and to move the local branch to); `None` when the branch has no commits.
    pub(super) new_tip: Option<Oid>,
    /// Replaced local commit → its replacement (or the remote commit that already had its run).
    pub(super) map: HashMap<Oid, Oid>,
    pub(super) replayed: usize,
    pub(super) renamed: Vec<Renamed>,
}

/// Run ids that are taken in a runs folder: on the base tree, on the remote's failed refs, and
/// on local failed refs.
pub(super) fn taken(
    repo: &Repository,
    remote: &RemoteState,
    dir: Option<&Tree<'_>>,
    runs: &str,
    id: &RunId,
) -> bool {
    let name = id.to_string();
    let key = format!("{runs}/{name}");
    dir.is_some_and(|d| d.get_name(&name).is_some())
        || remote.failed.contains_key(&key)
        || repo
            .find_reference(&format!("{FAILED_PREFIX}{key}"))
            .is_ok()
}

/// Rebuilds the local evidence commits the remote lacks on top of the remote tip `r`.
pub(super) fn replay(
    ctx: &Context<'_>,
    remote: &RemoteState,
    local: Oid,
    r: Oid,
) -> Result<BranchPlan> {
    let repo = ctx.repo;
    let base = repo.merge_base(local, r).ok();
    let commits = evidence_range(ctx, local, base, r)?;
    replay_onto(ctx, remote, commits, r)
}

/// The commits from `tip` back to `base` (first parents), which must all be git-evidence's.
pub(super) fn evidence_range(
    ctx: &Context<'_>,
    tip: Oid,
    base: Option<Oid>,
    other: Oid,
) -> Result<Vec<EvidenceCommit>> {
    let repo = ctx.repo;
    let Some(range) = first_parent_range(repo, tip, base)? else {
        return Err(foreign_error(ctx, &unpushed(repo, tip, Some(other))?));
    };
    let mut commits = Vec::new();
    let mut foreign = Vec::new();
    for id in range {
        match evidence_commit(repo, ctx.root, id)? {
            Some(c) => commits.push(c),
            None => foreign.push(id),
        }
    }
    if !foreign.is_empty() {
        return Err(foreign_error(ctx, &foreign));
    }
    Ok(commits)
}

/// Rebuilds `commits` (oldest first), one on top of the other, starting from `r`.
pub(super) fn replay_onto(
    ctx: &Context<'_>,
    remote: &RemoteState,
    commits: Vec<EvidenceCommit>,
    r: Oid,
) -> Result<BranchPlan> {
    let repo = ctx.repo;
    let (_, committer) = commit::identity(repo)?;
    let mut plan = BranchPlan {
        new_tip: Some(r),
        map: HashMap::new(),
        replayed: 0,
        renamed: Vec::new(),
    };
    let mut tip = r;
    for c in commits {
        let old = repo
            .find_commit(c.id)
            .map_err(|e| Error::git(format!("cannot read commit {}", c.id), e))?;
        let base_tree = commit_tree(repo, tip)?;
        let dir_path = ctx.root.join(&c.runs);
        let dir = subtree(repo, &base_tree, &dir_path)?;
        let old_folder = format!("{dir_path}/{}", c.run_id);
        let old_tree = commit_tree(repo, c.id)?;
        let folder_entry = old_tree
            .get_path(Path::new(&old_folder))
            .map_err(|e| Error::git(format!("cannot read {old_folder}"), e))?;
        let folder_tree = repo
            .find_tree(folder_entry.id())
            .map_err(|e| Error::git(format!("cannot read {old_folder}"), e))?;
        // Already there (pushed before, under this id or, renamed, under a later one; e.g. when
        // a push landed but the process ended before it moved the local branch).
        if already_there(repo, dir.as_ref(), &c.run_id, &folder_tree)? {
            plan.map.insert(c.id, tip);
            continue;
        }
        let mut run_id = c.run_id.clone();
        while taken(repo, remote, dir.as_ref(), &c.runs, &run_id) {
            run_id = run_id.next();
        }
        let message = String::from_utf8_lossy(old.message_bytes()).into_owned();
        let (files, message) = if run_id == c.run_id {
            (folder_files(&folder_tree), message)
        } else {
            plan.renamed.push(Renamed {
                runs: c.runs.clone(),
                from: c.run_id.to_string(),
                to: run_id.to_string(),
            });
            renamed_folder(
                repo,
                &folder_tree,
                &old_folder,
                &dir_path,
                &run_id,
                c.kind,
                &message,
            )?
        };
        let folder = format!("{dir_path}/{run_id}");
        let mut update = git2::build::TreeUpdateBuilder::new();
        for (name, id, mode) in &files {
            update.upsert(format!("{folder}/{name}").as_str(), *id, *mode);
        }
        let mut changed = Vec::new();
        let (tree, _) = commit::success_tree(
            repo,
            ctx.root,
            &base_tree,
            (dir.as_ref(), &dir_path),
            &run_id,
            update,
            &mut changed,
        )?;
        let new = write_commit(repo, &old.author(), &committer, &message, tree, Some(tip))?;
        plan.map.insert(c.id, new);
        plan.replayed += 1;
        tip = new;
    }
    plan.new_tip = Some(tip);
    Ok(plan)
}

/// Whether the runs folder `dir` holds this run already: the folder itself, or the same log and
/// proof under `id` or one of the ids after it (a rename).
pub(super) fn already_there(
    repo: &Repository,
    dir: Option<&Tree<'_>>,
    id: &RunId,
    folder: &Tree<'_>,
) -> Result<bool> {
    let Some(dir) = dir else { return Ok(false) };
    let mut candidate = id.clone();
    while let Some(entry) = dir.get_name(&candidate.to_string()) {
        if entry.id() == folder.id() {
            return Ok(true);
        }
        if entry.kind() == Some(ObjectType::Tree) {
            let theirs = repo
                .find_tree(entry.id())
                .map_err(|e| Error::git(format!("cannot read run {candidate}"), e))?;
            if same_run(repo, &theirs, folder) {
                return Ok(true);
            }
        }
        candidate = candidate.next();
    }
    Ok(false)
}

/// Whether two run folders hold the same run: the same log, and proofs equal but for the run id.
pub(super) fn same_run(repo: &Repository, a: &Tree<'_>, b: &Tree<'_>) -> bool {
    let logs = |t: &Tree<'_>| -> Vec<(String, Oid)> {
        t.iter()
            .filter_map(|e| {
                let name = e.name().ok()?.to_owned();
                (name != "README.md" && name != "proof.json").then(|| (name, e.id()))
            })
            .collect()
    };
    let proof = |t: &Tree<'_>| -> Option<serde_json::Value> {
        let blob = repo.find_blob(t.get_name("proof.json")?.id()).ok()?;
        let mut v: serde_json::Value = serde_json::from_slice(blob.content()).ok()?;
        v.as_object_mut()?.remove("run_id");
        Some(v)
    };
    logs(a) == logs(b) && proof(a).is_some() && proof(a) == proof(b)
}

/// A run folder's entries: (name, blob, mode).
pub(super) type FolderFiles = Vec<(String, Oid, FileMode)>;

/// The entries of a run folder's tree.
pub(super) fn folder_files(tree: &Tree<'_>) -> FolderFiles {
    tree.iter()
        .map(|e| {
            let mode = if e.filemode() == 0o100755 {
                FileMode::BlobExecutable
            } else {
                FileMode::Blob
            };
            (
                String::from_utf8_lossy(e.name_bytes()).into_owned(),
                e.id(),
                mode,
            )
        })
        .collect()
}

/// The files and commit message of a run folder moved to a new run id: proof.json and
/// README.md rendered again with the new id, the log as it was, the message rendered again
/// (keeping a sign-off).
pub(super) fn renamed_folder(
    repo: &Repository,
    folder_tree: &Tree<'_>,
    old_folder: &str,
    dir_path: &str,
    run_id: &RunId,
    kind: Kind,
    old_message: &str,
) -> Result<(FolderFiles, String)> {
    let proof_entry = folder_tree
        .get_name("proof.json")
        .ok_or_else(|| Error::Malformed {
            path: format!("{old_folder}/proof.json"),
            reason: "missing".into(),
        })?;
    let blob = repo
        .find_blob(proof_entry.id())
        .map_err(|e| Error::git(format!("cannot read {old_folder}/proof.json"), e))?;
    let mut proof: Proof =
        serde_json::from_slice(blob.content()).map_err(|e| Error::Malformed {
            path: format!("{old_folder}/proof.json"),
            reason: e.to_string(),
        })?;
    proof.run_id = run_id.to_string();
    let readme = repo
        .blob(render::run_readme(&proof).as_bytes())
        .map_err(|e| Error::git("cannot write README.md", e))?;
    let json = repo
        .blob(proof.to_json().as_bytes())
        .map_err(|e| Error::git("cannot write proof.json", e))?;
    let mut files: Vec<_> = folder_files(folder_tree)
        .into_iter()
        .filter(|(name, _, _)| name != "README.md" && name != "proof.json")
        .collect();
    files.push(("README.md".into(), readme, FileMode::Blob));
    files.push(("proof.json".into(), json, FileMode::Blob));
    let signoff = parse_trailers(old_message)
        .into_iter()
        .filter(|(k, _)| k == "Signed-off-by")
        .map(|(_, v)| v)
        .next_back();
    let log_path = format!("{dir_path}/{run_id}/{}", kind.log_file_name());
    Ok((
        files,
        render::commit_message(&proof, &log_path, signoff.as_deref()),
    ))
}

// ---------------------------------------------------------------------------------------------
// Failed runs.

/// A failed-run ref to send.
#[derive(Clone)]
pub(super) struct FailedPush {
    /// Full ref name, as it will be on both sides.
    pub(super) name: String,
    pub(super) commit: Oid,
    /// The local ref it replaces when it was renamed or rebuilt: (old name, old id).
    pub(super) replaces: Option<(String, Oid)>,
    pub(super) renamed: Option<Renamed>,
    /// The remote has this run under `name` already: only the local ref changes.
    pub(super) adopted: bool,
}

/// The local failed-run refs the remote lacks, rebuilt where needed: renamed when the remote
/// has the name (or the branch has the id), re-parented when the parent is not on what the
/// branch will be.
pub(super) fn plan_failed(
    ctx: &Context<'_>,
    remote: &RemoteState,
    local_tip: Option<Oid>,
    plan: &BranchPlan,
) -> Result<Vec<FailedPush>> {
    let repo = ctx.repo;
    let refs = repo
        .references_glob(&format!("{FAILED_PREFIX}*"))
        .map_err(|e| Error::git("cannot list failed-run refs", e))?;
    let mut local = BTreeMap::new();
    for r in refs.flatten() {
        if let (Ok(name), Some(id)) = (r.name(), r.target()) {
            local.insert(name.to_owned(), id);
        }
    }
    let final_tip = plan.new_tip.or(remote.tip);
    let tip_tree = final_tip.map(|t| commit_tree(repo, t)).transpose()?;
    let (_, committer) = commit::identity(repo)?;
    let mut out = Vec::new();
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    for (name, id) in &local {
        let key = &name[FAILED_PREFIX.len()..];
        if remote.failed.get(key) == Some(id) {
            continue;
        }
        let Some((runs, run)) = key.rsplit_once('/') else {
            continue;
        };
        let Ok(run_id) = run.parse::<RunId>() else {
            continue;
        };
        let old = repo
            .find_commit(*id)
            .map_err(|e| Error::git(format!("cannot read {name}"), e))?;
        let dir_path = ctx.root.join(runs);
        // Runs filed under another evidence root, or against another branch, travel with
        // that root's or that branch's push.
        let folder = format!("{dir_path}/{run_id}");
        if old
            .tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(&folder)).ok())
            .is_none()
        {
            continue;
        }
        if let Some(p) = old.parent_id(0).ok()
            && !plan.map.contains_key(&p)
            && !reaches(repo, local_tip, p)?
            && !reaches(repo, remote.tip, p)?
        {
            continue;
        }
        let dir = match &tip_tree {
            Some(t) => subtree(repo, t, &dir_path)?,
            None => None,
        };
        // The remote may have this very run already, under this id or a later one (a push that
        // landed but ended before the local ref was renamed): then it is not sent again.
        if let Some((remote_key, remote_id)) =
            on_remote_already(repo, ctx.root, remote, runs, &run_id, &old)?
        {
            out.push(FailedPush {
                name: format!("{FAILED_PREFIX}{remote_key}"),
                commit: remote_id,
                replaces: Some((name.clone(), *id)),
                renamed: None,
                adopted: true,
            });
            claimed.insert(remote_key);
            continue;
        }
        // A new id when the remote has this one (another host's run) or the branch has it.
        let collides = |candidate: &RunId| {
            let n = candidate.to_string();
            let k = format!("{runs}/{n}");
            remote.failed.contains_key(&k)
                || dir.as_ref().is_some_and(|d| d.get_name(&n).is_some())
                || claimed.contains(&k)
        };
        let mut new_id = run_id.clone();
        if collides(&new_id) {
            new_id = new_id.next();
            while collides(&new_id)
                || local.contains_key(&format!("{FAILED_PREFIX}{runs}/{new_id}"))
            {
                new_id = new_id.next();
            }
        }
        claimed.insert(format!("{runs}/{new_id}"));
        // The parent: its replacement when it was replayed; kept when the branch will have it;
        // else the new tip, so that nothing unpublished travels along.
        let parent = old.parent_id(0).ok();
        let new_parent = match parent {
            Some(p) if plan.map.contains_key(&p) => Some(plan.map[&p]),
            Some(p) => match final_tip {
                Some(t) if t == p => Some(p),
                Some(t) => {
                    let on_branch = repo
                        .graph_descendant_of(t, p)
                        .map_err(|e| Error::git("cannot walk history", e))?;
                    if on_branch { Some(p) } else { Some(t) }
                }
                None => None,
            },
            None => None,
        };
        if new_id == run_id && new_parent == parent {
            out.push(FailedPush {
                name: name.clone(),
                commit: *id,
                replaces: None,
                renamed: None,
                adopted: false,
            });
            continue;
        }
        let message = String::from_utf8_lossy(old.message_bytes()).into_owned();
        let (tree, message, renamed) =
            if new_id == run_id {
                (old.tree_id(), message, None)
            } else {
                let old_folder = format!("{dir_path}/{run_id}");
                let folder_tree = subtree(repo, &commit_tree(repo, *id)?, &old_folder)?
                    .ok_or_else(|| Error::Malformed {
                        path: format!("{name}:{old_folder}"),
                        reason: "the failed run's folder is missing".into(),
                    })?;
                let kind = if runs == "init" {
                    Kind::Init
                } else {
                    Kind::Build
                };
                let (files, message) = renamed_folder(
                    repo,
                    &folder_tree,
                    &old_folder,
                    &dir_path,
                    &new_id,
                    kind,
                    &message,
                )?;
                let mut update = git2::build::TreeUpdateBuilder::new();
                for (file, blob, mode) in &files {
                    update.upsert(format!("{dir_path}/{new_id}/{file}").as_str(), *blob, *mode);
                }
                let empty = repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .and_then(|id| repo.find_tree(id))
                    .map_err(|e| Error::git("cannot write the empty tree", e))?;
                let tree = update
                    .create_updated(repo, &empty)
                    .map_err(|e| Error::git("cannot build the failed run's tree", e))?;
                let renamed = Renamed {
                    runs: runs.to_owned(),
                    from: run_id.to_string(),
                    to: new_id.to_string(),
                };
                (tree, message, Some(renamed))
            };
        let commit = write_commit(repo, &old.author(), &committer, &message, tree, new_parent)?;
        out.push(FailedPush {
            name: format!("{FAILED_PREFIX}{runs}/{new_id}"),
            commit,
            replaces: Some((name.clone(), *id)),
            renamed,
            adopted: false,
        });
    }
    Ok(out)
}

/// The remote's failed-run ref (key, id) holding the same run as the local commit `ours`
/// (`runs/run_id`), under its id or a later one; its objects must have been fetched (see
/// [`fetch_suspects`]).
pub(super) fn on_remote_already(
    repo: &Repository,
    root: &EvidenceRoot,
    remote: &RemoteState,
    runs: &str,
    run_id: &RunId,
    ours: &git2::Commit<'_>,
) -> Result<Option<(String, Oid)>> {
    let folder_of = |commit: &git2::Commit<'_>, id: &RunId| -> Option<Oid> {
        let path = root.join(&format!("{runs}/{id}"));
        commit
            .tree()
            .ok()?
            .get_path(Path::new(&path))
            .ok()
            .map(|e| e.id())
    };
    let Some(mine) = folder_of(ours, run_id).and_then(|id| repo.find_tree(id).ok()) else {
        return Ok(None);
    };
    let mut candidate = run_id.clone();
    while let Some(remote_id) = remote.failed.get(&format!("{runs}/{candidate}")) {
        if let Ok(theirs) = repo.find_commit(*remote_id)
            && let Some(folder) = folder_of(&theirs, &candidate)
            && let Ok(tree) = repo.find_tree(folder)
            && (tree.id() == mine.id() || same_run(repo, &tree, &mine))
        {
            return Ok(Some((format!("{runs}/{candidate}"), *remote_id)));
        }
        candidate = candidate.next();
    }
    Ok(None)
}

/// Fetches the objects of the remote's failed-run refs that have the name of a local one with
/// other contents (and of the ids after it), so that [`on_remote_already`] can compare them.
pub(super) fn fetch_suspects(
    ctx: &Context<'_>,
    remote: &RemoteState,
    deadline: Instant,
) -> RoundResult<()> {
    let repo = ctx.repo;
    let mut wanted = Vec::new();
    let refs = repo
        .references_glob(&format!("{FAILED_PREFIX}*"))
        .map_err(|e| Error::git("cannot list failed-run refs", e))?;
    for r in refs.flatten() {
        let (Ok(name), Some(id)) = (r.name(), r.target()) else {
            continue;
        };
        let key = &name[FAILED_PREFIX.len()..];
        let Some((runs, run)) = key.rsplit_once('/') else {
            continue;
        };
        let Ok(mut candidate) = run.parse::<RunId>() else {
            continue;
        };
        if remote.failed.get(key).is_none_or(|r| *r == id) {
            continue;
        }
        while let Some(remote_id) = remote.failed.get(&format!("{runs}/{candidate}")) {
            if repo.find_commit(*remote_id).is_err() {
                wanted.push(format!("{FAILED_PREFIX}{runs}/{candidate}"));
            }
            candidate = candidate.next();
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    wanted.sort();
    wanted.dedup();
    let mut a = args([
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--",
        ctx.remote,
    ]);
    a.extend(wanted.iter().map(OsString::from));
    let out = git(ctx, &a, deadline)?;
    if !out.success {
        return Err(connection_failure(ctx, &out.stderr));
    }
    Ok(())
}

/// Whether `commit` is `tip` or one of its ancestors.
pub(super) fn reaches(repo: &Repository, tip: Option<Oid>, commit: Oid) -> Result<bool> {
    match tip {
        Some(t) if t == commit => Ok(true),
        Some(t) => repo
            .graph_descendant_of(t, commit)
            .map_err(|e| Error::git("cannot walk history", e)),
        None => Ok(false),
    }
}
