//! Brings checked-out work trees up to date after the branch moved under them.
//!
//! git-evidence commits without touching any index, so a work tree that has the branch checked
//! out would afterwards show the new evidence as staged deletions — and a careless `git commit
//! -a` would delete it. This stage writes the new files into every work tree (main or linked)
//! that has the branch checked out and records them in its index with full stat data, so
//! `git status` is clean.
//!
//! It never overwrites anything it did not write: a path whose work-tree file or index entry
//! differs from what git-evidence last wrote is reported as a conflict and left alone. The
//! commit stands either way. Updates of one work tree are serialised with an advisory lock, and
//! always bring a path to the branch tip *at that moment*, so concurrent recorders converge.
//! Its index is held under git's own `index.lock` from the first look to the write (see
//! [`git_index`]), so a concurrent git command is refused rather than having its update lost.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{ErrorCode, IndexEntry, IndexTime, ObjectType, Oid, Repository};

use crate::error::{Error, Result};
use crate::git_index::{self, LockedIndex, NewEntry, Opened};

/// A path of one work tree that was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub worktree: PathBuf,
    pub path: String,
    pub reason: String,
}

/// What syncing did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Work trees that have the branch checked out.
    pub worktrees: Vec<PathBuf>,
    /// Files written into them.
    pub written: usize,
    pub conflicts: Vec<Conflict>,
}

/// A local file known to hold the same bytes as a blob (the log just stored): copying it is
/// cheaper than inflating the object, and reading it does not map the whole object into memory.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub blob: Oid,
    pub file: &'a Path,
}

/// Updates every work tree that has `branch` checked out so that `paths` match the branch tip.
pub fn sync(
    repo: &Repository,
    branch: &str,
    paths: &[String],
    sources: &[Source<'_>],
) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    for wt in checked_out(repo, branch)? {
        let Some(workdir) = wt.workdir().map(Path::to_path_buf) else {
            continue;
        };
        report.worktrees.push(workdir.clone());
        sync_one(&wt, &workdir, branch, paths, sources, &mut report)?;
    }
    Ok(report)
}

/// The folders of the work trees (main and linked) that have `branch` checked out, each
/// locked the way [`sync`] locks it until the guards are dropped: a branch moved under its work
/// trees by something else (`push` replaying onto another host's runs) does not interleave with
/// a recorder's update of the same work tree.
pub fn lock_checked_out(repo: &Repository, branch: &str) -> Result<Vec<(PathBuf, WorktreeLock)>> {
    let mut out = Vec::new();
    for wt in checked_out(repo, branch)? {
        if let Some(dir) = wt.workdir() {
            out.push((dir.to_path_buf(), WorktreeLock::acquire(wt.path())?));
        }
    }
    Ok(out)
}

/// The repositories (main and linked work trees) whose HEAD is `branch`.
fn checked_out(repo: &Repository, branch: &str) -> Result<Vec<Repository>> {
    let common = repo.commondir().to_path_buf();
    let main = Repository::open(&common)
        .map_err(|e| Error::git(format!("cannot open {}", common.display()), e))?;
    let mut found = Vec::new();
    let names = main
        .worktrees()
        .map_err(|e| Error::git("cannot list work trees", e))?;
    for name in names.iter().filter_map(|n| n.ok().flatten()) {
        let Ok(wt) = main.find_worktree(name) else {
            continue;
        };
        // A work tree whose folder is gone (prunable) has nothing to update.
        if wt.validate().is_err() {
            continue;
        }
        if let Ok(linked) = Repository::open_from_worktree(&wt)
            && head_is(&linked, branch)
        {
            found.push(linked);
        }
    }
    if !main.is_bare() && head_is(&main, branch) {
        found.insert(0, main);
    }
    Ok(found)
}

fn head_is(repo: &Repository, branch: &str) -> bool {
    repo.find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().ok().flatten().map(|t| t == branch))
        .unwrap_or(false)
}

/// Holds an exclusive advisory lock on a file in the work tree's git dir until dropped. Unlike a
/// `.lock` file it is released by the kernel if the process dies.
pub struct WorktreeLock(#[allow(dead_code)] File);

impl WorktreeLock {
    fn acquire(gitdir: &Path) -> Result<Self> {
        let path = gitdir.join("git-evidence.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        file.lock()
            .map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))?;
        Ok(WorktreeLock(file))
    }
}

fn sync_one(
    wt: &Repository,
    workdir: &Path,
    branch: &str,
    paths: &[String],
    sources: &[Source<'_>],
    report: &mut SyncReport,
) -> Result<()> {
    let _lock = WorktreeLock::acquire(wt.path())?;
    let tip_commit = wt
        .find_reference(branch)
        .and_then(|r| r.peel_to_commit())
        .map_err(|e| Error::git(format!("cannot read {branch}"), e))?;
    let tip = tip_commit
        .tree()
        .map_err(|e| Error::git(format!("cannot read {branch}"), e))?;
    let mut index = Staging::open(wt, workdir, paths)?;
    let symlinks = wt
        .config()
        .and_then(|c| c.get_bool("core.symlinks"))
        .unwrap_or(cfg!(unix));
    let conflict = |path: &str, reason: &str| Conflict {
        worktree: workdir.to_path_buf(),
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let mut touched = false;
    for path in paths {
        let Ok(entry) = tip.get_path(Path::new(path)) else {
            continue; // gone from the tip again: nothing to bring in
        };
        let (id, mode) = (entry.id(), entry.filemode() as u32);
        let staged = index.get(path);
        if staged == Some((id, mode)) {
            continue; // already there: another recorder synced it
        }
        let file = workdir.join(path);
        let on_disk = fs::symlink_metadata(&file).ok();
        match (&staged, &on_disk) {
            (None, None) => {}
            (None, Some(_)) => {
                if blob_id_of(&file)? != Some(id) {
                    report
                        .conflicts
                        .push(conflict(path, "an untracked file is in the way"));
                    continue;
                }
            }
            (Some(_), None) => {
                report
                    .conflicts
                    .push(conflict(path, "deleted in the work tree"));
                continue;
            }
            (Some((staged_id, _)), Some(_)) => {
                if blob_id_of(&file)? != Some(*staged_id) {
                    report.conflicts.push(conflict(path, "has local changes"));
                    continue;
                }
                if !written_by_us(&tip_commit, path, *staged_id) {
                    report.conflicts.push(conflict(path, "has staged changes"));
                    continue;
                }
            }
        }
        let source = sources.iter().find(|s| s.blob == id).map(|s| s.file);
        write_path(wt, &file, id, mode, symlinks, source)?;
        report.written += 1;
        let meta = fs::symlink_metadata(&file)
            .map_err(|e| Error::io(format!("cannot stat {}", file.display()), e))?;
        index.add(path, id, mode, &meta)?;
        touched = true;
    }
    if touched {
        index.write(workdir)?;
    }
    Ok(())
}

/// How far back a staged version is looked for among the branch's earlier versions of a path.
/// Work trees lag the branch by at most the recorders whose sync is still pending.
const HISTORY_DEPTH: usize = 256;

/// Whether `id` is a version of `path` that the branch had before its tip, i.e. one that
/// git-evidence (or a reviewer's commit) wrote, not a user's staged edit.
fn written_by_us(tip: &git2::Commit<'_>, path: &str, id: Oid) -> bool {
    let mut commit = tip.parent(0).ok();
    for _ in 0..HISTORY_DEPTH {
        let Some(c) = commit else { return false };
        if c.tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(path)).ok())
            .is_some_and(|e| e.id() == id)
        {
            return true;
        }
        commit = c.parent(0).ok();
    }
    false
}

/// The index of one work tree while it is being updated.
enum Staging {
    /// Held under `index.lock` from the first look to the write, and rewritten in place: the
    /// fast path, independent of the index's size.
    Locked(LockedIndex),
    /// Loaded whole by libgit2: for indexes the fast path does not handle.
    Loaded(git2::Index),
}

impl Staging {
    fn open(wt: &Repository, workdir: &Path, paths: &[String]) -> Result<Staging> {
        let sha1 = wt
            .config()
            .and_then(|c| c.get_string("extensions.objectformat"))
            .map_or(true, |format| format.eq_ignore_ascii_case("sha1"));
        if sha1 {
            let opened = LockedIndex::open(wt.path()).map_err(|e| index_error(workdir, e))?;
            let why = match opened {
                Opened::Ready(index) => match paths.iter().find_map(|p| index.unsupported(p)) {
                    None => return Ok(Staging::Locked(index)),
                    Some(why) => why, // dropping `index` releases the lock
                },
                Opened::Unsupported(why) => why,
            };
            tracing::debug!(worktree = %workdir.display(), "updating the index with libgit2: {why}");
        }
        wt.index()
            .map(Staging::Loaded)
            .map_err(|e| Error::git(format!("cannot read the index of {}", workdir.display()), e))
    }

    /// The id and mode staged at `path` (stage 0).
    fn get(&self, path: &str) -> Option<(Oid, u32)> {
        match self {
            Staging::Locked(index) => index
                .get(path)
                .map(|(id, mode)| (Oid::from_bytes(&id).expect("20-byte id"), mode)),
            Staging::Loaded(index) => index.get_path(Path::new(path), 0).map(|e| (e.id, e.mode)),
        }
    }

    fn add(&mut self, path: &str, id: Oid, mode: u32, meta: &fs::Metadata) -> Result<()> {
        match self {
            Staging::Locked(index) => {
                let raw = id.as_bytes().try_into().expect("SHA-1 ids have 20 bytes");
                index.add(NewEntry::new(path, raw, mode, meta));
                Ok(())
            }
            Staging::Loaded(index) => index
                .add(&index_entry(path, id, mode, meta))
                .map_err(|e| Error::git(format!("cannot stage {path}"), e)),
        }
    }

    fn write(self, workdir: &Path) -> Result<()> {
        match self {
            Staging::Locked(index) => index.commit().map_err(|e| index_error(workdir, e)),
            Staging::Loaded(mut index) => write_index(&mut index, workdir),
        }
    }
}

fn index_error(workdir: &Path, e: git_index::Error) -> Error {
    let context = format!("cannot write the index of {}", workdir.display());
    match e {
        git_index::Error::Locked(_) => locked(context),
        git_index::Error::Io {
            context: what,
            source,
        } => Error::Io {
            context: format!("{context}: {what}"),
            source,
        },
    }
}

fn locked(context: String) -> Error {
    Error::Io {
        context,
        source: io::Error::new(
            io::ErrorKind::WouldBlock,
            "index.lock stayed locked by another git process",
        ),
    }
}

/// Writes the index, waiting a little for a concurrent git command to release `index.lock`.
fn write_index(index: &mut git2::Index, workdir: &Path) -> Result<()> {
    let mut pause = Duration::from_millis(5);
    for _ in 0..12 {
        match index.write() {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == ErrorCode::Locked => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(Error::git(
                    format!("cannot write the index of {}", workdir.display()),
                    e,
                ));
            }
        }
    }
    Err(locked(format!(
        "cannot write the index of {}",
        workdir.display()
    )))
}

/// The blob id git would give the file (or link) at `path`, `None` for a directory.
fn blob_id_of(path: &Path) -> Result<Option<Oid>> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map_err(|e| Error::io(format!("cannot read link {}", path.display()), e))?;
        let bytes = target.as_os_str().as_encoded_bytes().to_vec();
        return Oid::hash_object(ObjectType::Blob, &bytes)
            .map(Some)
            .map_err(|e| Error::git(format!("cannot hash {}", path.display()), e));
    }
    if !meta.is_file() {
        return Ok(None);
    }
    Oid::hash_file(ObjectType::Blob, path)
        .map(Some)
        .map_err(|e| Error::git(format!("cannot hash {}", path.display()), e))
}

/// Writes blob `id` to `file` atomically (temp file + rename), as a symlink for mode 120000.
/// `source`, when given, is a file expected to hold the blob's bytes; it is used only if its
/// content hashes to `id`.
fn write_path(
    repo: &Repository,
    file: &Path,
    id: Oid,
    mode: u32,
    symlinks: bool,
    source: Option<&Path>,
) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let io_err = |e| Error::io(format!("cannot write {}", file.display()), e);
    let odb = repo
        .odb()
        .map_err(|e| Error::git("cannot open the object database", e))?;
    if mode == 0o120000 && symlinks {
        let blob = repo
            .find_blob(id)
            .map_err(|e| Error::git(format!("cannot read {id}"), e))?;
        let target = std::str::from_utf8(blob.content()).map_err(|_| Error::Malformed {
            path: file.display().to_string(),
            reason: "link target is not UTF-8".into(),
        })?;
        let tmp = dir.join(format!(".git-evidence-{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(io_err)?;
        return fs::rename(&tmp, file).map_err(io_err);
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".git-evidence-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    let copied = match source {
        Some(src) => copy_verified(src, tmp.as_file_mut(), id).unwrap_or(false),
        None => false,
    };
    if !copied {
        let out = tmp.as_file_mut();
        out.set_len(0).map_err(io_err)?;
        io::Seek::rewind(out).map_err(io_err)?;
        copy_blob(&odb, repo, id, out).map_err(|e| match e {
            CopyError::Git(e) => Error::git(format!("cannot read {id}"), e),
            CopyError::Io(e) => io_err(e),
        })?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = if mode == 0o100755 { 0o755 } else { 0o644 };
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(perms)).map_err(io_err)?;
    }
    tmp.persist(file).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// Copies `src` into `out`, hashing it the way git names a blob; true when the copy is blob
/// `id` byte for byte (false when the file changed since it was stored).
fn copy_verified(src: &Path, out: &mut File, id: Oid) -> io::Result<bool> {
    use sha1::Digest as _;
    let mut input = File::open(src)?;
    let len = input.metadata()?.len();
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
    out.flush()?;
    let digest = hasher.finalize();
    Ok(copied == len && Oid::from_bytes(&digest).is_ok_and(|o| o == id))
}

enum CopyError {
    Git(git2::Error),
    Io(io::Error),
}

/// Streams a blob into `out` without holding it in memory (loose objects), falling back to a
/// whole read for packed ones, which are small here: logs are written loose and read back at once.
fn copy_blob(
    odb: &git2::Odb<'_>,
    repo: &Repository,
    id: Oid,
    out: &mut File,
) -> Result<(), CopyError> {
    match odb.reader(id) {
        Ok((mut reader, _, _)) => {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf).map_err(CopyError::Io)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(CopyError::Io)?;
            }
        }
        Err(_) => {
            let blob = repo.find_blob(id).map_err(CopyError::Git)?;
            out.write_all(blob.content()).map_err(CopyError::Io)?;
        }
    }
    out.flush().map_err(CopyError::Io)
}

/// An index entry for `path` with the stat data git compares, so `git status` need not re-hash.
fn index_entry(path: &str, id: Oid, mode: u32, meta: &fs::Metadata) -> IndexEntry {
    use std::os::unix::fs::MetadataExt;
    IndexEntry {
        ctime: IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32),
        mtime: IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32),
        dev: meta.dev() as u32,
        ino: meta.ino() as u32,
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
        file_size: meta.len() as u32,
        id,
        flags: path.len().min(0xfff) as u16,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A hermetic repository on `main` with one commit, driven by the real git CLI.
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new() -> Repo {
            let repo = Repo {
                dir: tempfile::tempdir().expect("temp dir"),
            };
            repo.git(&["init", "-q", "-b", "main", "."], None);
            fs::create_dir_all(repo.root().join("evidence")).unwrap();
            fs::write(repo.root().join("evidence/README.md"), "v1\n").unwrap();
            fs::write(repo.root().join("build.pkr.hcl"), "# template\n").unwrap();
            repo.git(&["add", "-A"], None);
            repo.git(&["commit", "-q", "-m", "seed"], None);
            repo
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn command(&self, args: &[&str]) -> Command {
            let mut cmd = Command::new("git");
            cmd.args(args)
                .current_dir(self.root())
                .env_remove("GIT_DIR")
                .env_remove("GIT_WORK_TREE")
                .env_remove("GIT_INDEX_FILE")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", self.root())
                .env("GIT_AUTHOR_NAME", "Test")
                .env("GIT_AUTHOR_EMAIL", "test@example.com")
                .env("GIT_COMMITTER_NAME", "Test")
                .env("GIT_COMMITTER_EMAIL", "test@example.com")
                .stdin(Stdio::null());
            cmd
        }

        fn git(&self, args: &[&str], index: Option<&Path>) -> String {
            let mut cmd = self.command(args);
            if let Some(index) = index {
                cmd.env("GIT_INDEX_FILE", index);
            }
            let out = cmd.output().expect("run git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("utf-8")
        }

        /// Commits `files` onto `main` the way record does: without touching the work tree or
        /// its index. Returns the paths, for [`sync`].
        fn commit_behind_the_index(&self, files: &[(&str, &str)]) -> Vec<String> {
            let scratch = self.root().join(".git/scratch-index");
            let _ = fs::remove_file(&scratch);
            self.git(&["read-tree", "main"], Some(&scratch));
            for (path, content) in files {
                let blob = self.root().join(".git/scratch-blob");
                fs::write(&blob, content).unwrap();
                let id = self.git(&["hash-object", "-w", ".git/scratch-blob"], None);
                let info = format!("100644,{},{path}", id.trim());
                self.git(
                    &["update-index", "--add", "--cacheinfo", &info],
                    Some(&scratch),
                );
            }
            let tree = self.git(&["write-tree"], Some(&scratch));
            let commit = self.git(
                &["commit-tree", tree.trim(), "-p", "main", "-m", "record"],
                None,
            );
            self.git(&["update-ref", "refs/heads/main", commit.trim()], None);
            files.iter().map(|(p, _)| p.to_string()).collect()
        }

        fn open(&self) -> Repository {
            Repository::open(self.root()).expect("open")
        }

        fn assert_in_step(&self) {
            assert_eq!(self.git(&["status", "--porcelain"], None), "");
            assert_eq!(
                self.git(&["diff", "--cached", "--name-only", "HEAD"], None),
                ""
            );
            self.git(&["fsck", "--no-progress"], None);
        }
    }

    fn staging_kind(repo: &Repo, paths: &[String]) -> &'static str {
        let wt = repo.open();
        match Staging::open(&wt, repo.root(), paths).expect("open the index") {
            Staging::Locked(_) => "in place",
            Staging::Loaded(_) => "libgit2",
        }
    }

    #[test]
    fn a_plain_index_is_updated_in_place_and_left_in_step_with_the_branch() {
        let repo = Repo::new();
        let paths = repo.commit_behind_the_index(&[
            ("evidence/README.md", "v2\n"),
            ("evidence/builds/t/r1/proof.json", "{}\n"),
        ]);
        assert_eq!(staging_kind(&repo, &paths), "in place");
        let report = sync(&repo.open(), "refs/heads/main", &paths, &[]).expect("sync");
        assert_eq!(report.written, 2);
        assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
        repo.assert_in_step();
        // The cache-tree git relies on for the next commit agrees with the entries.
        repo.git(&["commit", "-q", "--allow-empty", "-m", "by hand"], None);
        assert_eq!(
            repo.git(&["rev-parse", "HEAD^{tree}"], None),
            repo.git(&["rev-parse", "HEAD~1^{tree}"], None)
        );
    }

    #[test]
    fn a_format_4_index_is_updated_by_libgit2() {
        let repo = Repo::new();
        repo.git(&["update-index", "--index-version", "4"], None);
        let paths = repo.commit_behind_the_index(&[("evidence/README.md", "v2\n")]);
        assert_eq!(staging_kind(&repo, &paths), "libgit2");
        let report = sync(&repo.open(), "refs/heads/main", &paths, &[]).expect("sync");
        assert_eq!(report.written, 1);
        repo.assert_in_step();
    }

    #[test]
    fn an_unmerged_path_goes_to_libgit2_and_is_left_alone() {
        let repo = Repo::new();
        repo.git(&["checkout", "-q", "-b", "side"], None);
        fs::write(repo.root().join("evidence/README.md"), "side\n").unwrap();
        repo.git(&["commit", "-q", "-am", "side"], None);
        repo.git(&["checkout", "-q", "main"], None);
        fs::write(repo.root().join("evidence/README.md"), "main\n").unwrap();
        repo.git(&["commit", "-q", "-am", "main"], None);
        let merge = repo
            .command(&["merge", "-q", "side"])
            .output()
            .expect("git merge");
        assert!(!merge.status.success(), "the merge must conflict");
        let paths = repo.commit_behind_the_index(&[("evidence/README.md", "v2\n")]);
        assert_eq!(staging_kind(&repo, &paths), "libgit2");
        let report = sync(&repo.open(), "refs/heads/main", &paths, &[]).expect("sync");
        assert_eq!(report.written, 0);
        assert_eq!(report.conflicts.len(), 1, "{:?}", report.conflicts);
        assert_eq!(
            repo.git(&["ls-files", "-u", "evidence/README.md"], None)
                .lines()
                .count(),
            3,
            "the conflict is still there"
        );
    }
}
