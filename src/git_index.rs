//! Stages a few paths in a work tree's git index without loading all of it into libgit2.
//!
//! libgit2 reads a whole index into memory, verifies its checksum on the way in and recomputes it
//! on the way out with collision-detecting SHA-1, so adding five entries to a 30,000-entry index
//! cost most of a record. This stage does what `git update-index --add` does for those few paths,
//! and no more: it takes `index.lock` the way git does, reads the index (format 2 or 3) as
//! bytes, answers "what is staged at P", and writes the index again into the lock file — every
//! other entry copied byte for byte, the new ones inserted in git's order — then renames the lock
//! over the index. The trailing checksum is computed with a plain (hardware-accelerated) SHA-1;
//! like git, the old one is not verified on read, but the structure is.
//!
//! It must never guess. An index it does not fully understand — format 4, a split or sparse
//! index, an unknown mandatory extension, entries out of order, a path that is unmerged or
//! collides with a directory — is reported as [`Opened::Unsupported`] before anything is
//! written, so the caller can take the slow libgit2 path instead. It must never remove a lock
//! file it did not create, never write the index other than through the lock file, and never
//! keep an extension that the new entries would make wrong: the cache-tree is invalidated along
//! the new paths (as `git add` does), the untracked cache, file-system-monitor data and offset
//! tables are dropped, and racily clean entries are smudged. git smudges only those whose
//! content it finds changed; this stage does not read the work tree and smudges them all, which
//! merely makes git compare their content once more.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::{Digest, Sha1};

/// A raw SHA-1 object id.
pub type Oid = [u8; 20];

const HEADER_LEN: usize = 12;
const HASH_LEN: usize = 20;
const ENTRY_MTIME_SEC: usize = 8;
const ENTRY_MODE: usize = 24;
const ENTRY_SIZE: usize = 36;
const ENTRY_ID: usize = 40;
const ENTRY_FLAGS: usize = 60;
/// Stat data, id and flags; two more bytes of extended flags follow when `FLAG_EXTENDED` is set.
const ENTRY_FIXED: usize = 62;
const FLAG_EXTENDED: u16 = 0x4000;
const FLAG_STAGE: u16 = 0x3000;
const NAME_MASK: u16 = 0x0fff;
/// Intent-to-add and skip-worktree: the only extended flags git defines (it refuses others).
const KNOWN_EXTENDED_FLAGS: u16 = 0x2000 | 0x4000;
const MODE_GITLINK: u32 = 0o160000;

/// Why the index could not be updated.
#[derive(Debug)]
pub enum Error {
    /// `index.lock` existed all the while we retried: another git command is at work.
    Locked(PathBuf),
    Io {
        context: String,
        source: io::Error,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Locked(lock) => write!(f, "{} stayed locked", lock.display()),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

fn io_error(context: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// The result of [`LockedIndex::open`].
#[derive(Debug)]
pub enum Opened {
    /// The index is locked and understood; update it, then [`LockedIndex::commit`].
    Ready(LockedIndex),
    /// The index uses something this module does not handle (the reason says what); the lock
    /// is already released, nothing was written.
    Unsupported(String),
}

/// An index entry to insert (or to replace the stage-0 entry of its path with), already in its
/// on-disk form.
#[derive(Debug, Clone)]
pub struct NewEntry {
    path: Vec<u8>,
    bytes: Vec<u8>,
}

impl NewEntry {
    /// A stage-0 entry for `path` with the stat data of `meta`, so git need not re-hash the file.
    /// Fields are truncated to 32 bits exactly as git truncates them.
    pub fn new(path: &str, id: Oid, mode: u32, meta: &fs::Metadata) -> Self {
        let path = path.as_bytes().to_vec();
        let mut bytes = Vec::with_capacity(ENTRY_FIXED + path.len() + 8);
        for field in [
            meta.ctime() as u32,
            meta.ctime_nsec() as u32,
            meta.mtime() as u32,
            meta.mtime_nsec() as u32,
            meta.dev() as u32,
            meta.ino() as u32,
            mode,
            meta.uid(),
            meta.gid(),
            meta.len() as u32,
        ] {
            bytes.extend_from_slice(&field.to_be_bytes());
        }
        bytes.extend_from_slice(&id);
        bytes.extend_from_slice(&(path.len().min(NAME_MASK as usize) as u16).to_be_bytes());
        bytes.extend_from_slice(&path);
        let padded = entry_len(ENTRY_FIXED, path.len());
        bytes.resize(padded, 0);
        NewEntry { path, bytes }
    }
}

/// The on-disk length of an entry (formats 2 and 3): padded with 1 to 8 NULs to a multiple of 8.
fn entry_len(fixed: usize, name_len: usize) -> usize {
    (fixed + name_len + 8) & !7
}

/// How long to wait for another process's `index.lock` before each retry: 2.6 s in all,
/// enough for any git command that updates an index of this size.
fn default_pauses() -> Vec<Duration> {
    let mut pauses = Vec::new();
    let mut pause = Duration::from_millis(5);
    for _ in 0..11 {
        pauses.push(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    pauses
}

/// `index.lock`, created by us; removed again on drop unless it was renamed over the index.
#[derive(Debug)]
struct Lock {
    path: PathBuf,
    file: Option<File>,
    armed: bool,
}

impl Lock {
    fn acquire(path: PathBuf, pauses: &[Duration]) -> Result<Lock, Error> {
        let mut pauses = pauses.iter();
        loop {
            // create_new is O_CREAT|O_EXCL, with mode 0666 minus the umask, as git creates it.
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Lock {
                        path,
                        file: Some(file),
                        armed: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match pauses.next() {
                    Some(pause) => std::thread::sleep(*pause),
                    None => return Err(Error::Locked(path)),
                },
                Err(e) => return Err(io_error(format!("cannot create {}", path.display()))(e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.file = None;
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Where things are in the index bytes; everything else is copied without being looked at.
#[derive(Debug)]
struct Layout {
    version: u32,
    /// Start of each entry, in file order (which was checked to be git's order).
    entries: Vec<usize>,
    entries_end: usize,
    /// Extensions to carry over: signature and the range of the whole extension (header too).
    extensions: Vec<([u8; 4], std::ops::Range<usize>)>,
    /// Entries that are racily clean against the old index's time, to be smudged when copied.
    racy: Vec<usize>,
}

/// An index held under `index.lock`, with the entries to stage into it.
#[derive(Debug)]
pub struct LockedIndex {
    lock: Lock,
    index: PathBuf,
    data: Vec<u8>,
    layout: Layout,
    staged: Vec<NewEntry>,
}

impl LockedIndex {
    /// Locks and reads the index of the work tree whose git dir is `gitdir`.
    pub fn open(gitdir: &Path) -> Result<Opened, Error> {
        Self::open_with_pauses(gitdir, &default_pauses())
    }

    fn open_with_pauses(gitdir: &Path, pauses: &[Duration]) -> Result<Opened, Error> {
        let index = gitdir.join("index");
        let lock = Lock::acquire(gitdir.join("index.lock"), pauses)?;
        // git writes through such a link to its target; renaming over it would replace the link.
        if fs::symlink_metadata(&index).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok(Opened::Unsupported("the index is a symbolic link".into()));
        }
        // Read only under the lock: what we write back must be based on the latest index.
        let (data, mtime) = match File::open(&index) {
            Ok(mut file) => {
                let read = |e| io_error(format!("cannot read {}", index.display()))(e);
                let meta = file.metadata().map_err(read)?;
                let mut data = Vec::with_capacity(meta.len() as usize + 1);
                file.read_to_end(&mut data).map_err(read)?;
                // git keeps only the low 32 bits of times, in the index and in its racy check.
                (data, meta.mtime() as u32)
            }
            // git treats a missing index as an empty one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut data = b"DIRC\0\0\0\x02\0\0\0\0".to_vec();
                data.extend_from_slice(&[0; HASH_LEN]);
                (data, 0)
            }
            Err(e) => return Err(io_error(format!("cannot open {}", index.display()))(e)),
        };
        match parse(&data, mtime) {
            Ok(layout) => Ok(Opened::Ready(LockedIndex {
                lock,
                index,
                data,
                layout,
                staged: Vec::new(),
            })),
            Err(reason) => Ok(Opened::Unsupported(reason)),
        }
    }

    fn name(&self, i: usize) -> &[u8] {
        entry_name(&self.data, self.layout.entries[i])
    }

    fn stage(&self, i: usize) -> u16 {
        entry_stage(&self.data, self.layout.entries[i])
    }

    /// The index of the first entry at or after (`path`, stage 0) in git's order.
    fn lower_bound(&self, path: &[u8]) -> usize {
        self.layout
            .entries
            .partition_point(|&off| entry_name(&self.data, off) < path)
    }

    /// Why `path` cannot be staged here (so the caller must take the libgit2 path), if it cannot:
    /// an invalid path, unmerged entries, or a file/directory collision, which git resolves by
    /// removing entries — more than this module does.
    pub fn unsupported(&self, path: &str) -> Option<String> {
        let p = path.as_bytes();
        let valid = !p.is_empty()
            && p.len() < u32::MAX as usize / 2
            && !p.contains(&0)
            && p.split(|&b| b == b'/').all(|part| {
                !part.is_empty()
                    && part != b"."
                    && part != b".."
                    && !part.eq_ignore_ascii_case(b".git")
            });
        if !valid {
            return Some(format!("{path:?} is not a path git can stage"));
        }
        let n = self.layout.entries.len();
        let mut i = self.lower_bound(p);
        while i < n && self.name(i) == p {
            if self.stage(i) != 0 {
                return Some(format!("{path} is unmerged"));
            }
            i += 1;
        }
        let mut under = p.to_vec();
        under.push(b'/');
        let i = self.lower_bound(&under);
        if i < n && self.name(i).starts_with(&under) {
            return Some(format!("{path} is a directory in the index"));
        }
        for (k, _) in p.iter().enumerate().filter(|&(_, &b)| b == b'/') {
            let dir = &p[..k];
            let i = self.lower_bound(dir);
            if i < n && self.name(i) == dir {
                return Some(format!("{} is a file in the index", path_text(dir)));
            }
        }
        None
    }

    /// The object id and mode staged at `path` (stage 0), if any.
    pub fn get(&self, path: &str) -> Option<(Oid, u32)> {
        let p = path.as_bytes();
        let i = self.lower_bound(p);
        if i < self.layout.entries.len() && self.name(i) == p && self.stage(i) == 0 {
            let off = self.layout.entries[i];
            let mut id = [0; 20];
            id.copy_from_slice(&self.data[off + ENTRY_ID..off + ENTRY_ID + 20]);
            return Some((id, be32(&self.data, off + ENTRY_MODE)));
        }
        None
    }

    /// Stages `entry`, replacing what is staged at its path (check [`Self::unsupported`] first).
    pub fn add(&mut self, entry: NewEntry) {
        self.staged.retain(|e| e.path != entry.path);
        self.staged.push(entry);
    }

    /// Writes the index with the staged entries into `index.lock` and renames it over the index.
    /// On error the lock is removed and the index left as it was.
    pub fn commit(mut self) -> Result<(), Error> {
        let (owned, plan) = self.render();
        let pieces: Vec<&[u8]> = plan
            .iter()
            .map(|piece| match piece {
                Piece::Old(range) => &self.data[range.clone()],
                Piece::New(i) => owned[*i].as_slice(),
            })
            .collect();
        let lock = &mut self.lock;
        let file = lock
            .file
            .take()
            .expect("the lock file is open until commit");
        write_with_checksum(file, &pieces)
            .map_err(io_error(format!("cannot write {}", lock.path.display())))?;
        fs::rename(&lock.path, &self.index).map_err(io_error(format!(
            "cannot rename {} to {}",
            lock.path.display(),
            self.index.display()
        )))?;
        lock.armed = false;
        Ok(())
    }

    /// The new index file, checksum excepted, as pieces: unchanged runs of the old file, and
    /// new bytes (in the returned buffers). Copying megabytes into one buffer first would cost
    /// more than all the rest.
    fn render(&mut self) -> (Vec<Vec<u8>>, Vec<Piece>) {
        self.staged.sort_by(|a, b| a.path.cmp(&b.path));
        let (data, layout) = (&self.data, &self.layout);
        let n = layout.entries.len();
        let start = |i: usize| layout.entries.get(i).copied().unwrap_or(layout.entries_end);
        // Where each new entry goes, and whether it replaces the stage-0 entry found there.
        let plan: Vec<(usize, bool)> = self
            .staged
            .iter()
            .map(|e| {
                let i = self.lower_bound(&e.path);
                (i, i < n && self.name(i) == e.path.as_slice())
            })
            .collect();
        let replaced = plan.iter().filter(|(_, r)| *r).count();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(b"DIRC");
        header.extend_from_slice(&layout.version.to_be_bytes());
        header.extend_from_slice(&((n - replaced + self.staged.len()) as u32).to_be_bytes());
        let mut owned = vec![header];
        let mut pieces = vec![Piece::New(0)];
        let mut racy = layout.racy.iter().copied().peekable();
        let mut copy = |owned: &mut Vec<Vec<u8>>, pieces: &mut Vec<Piece>, from, to| {
            let (mut a, b) = (start(from), start(to));
            while let Some(&r) = racy.peek() {
                if r >= b {
                    break;
                }
                racy.next();
                if r < a {
                    continue; // replaced, not copied
                }
                // git's ce_smudge_racily_clean_entry: a size that cannot match makes git
                // compare the content next time instead of trusting the stat data.
                let end = r + entry_len_at(data, r);
                let mut smudged = data[r..end].to_vec();
                smudged[ENTRY_SIZE..ENTRY_SIZE + 4].fill(0);
                pieces.push(Piece::Old(a..r));
                pieces.push(Piece::New(owned.len()));
                owned.push(smudged);
                a = end;
            }
            pieces.push(Piece::Old(a..b));
        };
        let mut next = 0;
        for (entry, &(at, replaces)) in self.staged.iter().zip(&plan) {
            copy(&mut owned, &mut pieces, next, at);
            pieces.push(Piece::New(owned.len()));
            owned.push(entry.bytes.clone());
            next = at + usize::from(replaces);
        }
        copy(&mut owned, &mut pieces, next, n);
        let targets: Vec<&[u8]> = self.staged.iter().map(|e| e.path.as_slice()).collect();
        for (signature, range) in &layout.extensions {
            match signature {
                b"TREE" => {
                    let mut tree = Vec::with_capacity(range.len() + 64);
                    tree.extend_from_slice(b"TREE\0\0\0\0");
                    // git drops a cache-tree it cannot parse; so do we, it is only a cache.
                    if invalidate_tree(&data[range.start + 8..range.end], &targets, &mut tree)
                        .is_some()
                    {
                        let len = (tree.len() - 8) as u32;
                        tree[4..8].copy_from_slice(&len.to_be_bytes());
                        pieces.push(Piece::New(owned.len()));
                        owned.push(tree);
                    }
                }
                _ => pieces.push(Piece::Old(range.clone())),
            }
        }
        pieces.retain(|p| !matches!(p, Piece::Old(r) if r.is_empty()));
        (owned, pieces)
    }
}

/// Part of the new index file: a range of the old one, or one of the new buffers.
enum Piece {
    Old(std::ops::Range<usize>),
    New(usize),
}

/// Writes `pieces` and their SHA-1 to `file`, hashing each chunk just before writing it, while
/// it is still in the CPU cache.
fn write_with_checksum(file: File, pieces: &[&[u8]]) -> io::Result<()> {
    let mut sha1 = Sha1::new();
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    for chunk in pieces.iter().flat_map(|piece| piece.chunks(128 * 1024)) {
        sha1.update(chunk);
        out.write_all(chunk)?;
    }
    out.write_all(&sha1.finalize())?;
    out.flush()
}

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(data[at..at + 2].try_into().expect("2 bytes"))
}

fn path_text(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// The fixed length of the entry at `off` and the length of its name (valid entries only).
fn entry_shape(data: &[u8], off: usize) -> (usize, usize) {
    let flags = be16(data, off + ENTRY_FLAGS);
    let fixed = ENTRY_FIXED + if flags & FLAG_EXTENDED != 0 { 2 } else { 0 };
    let len = match flags & NAME_MASK {
        NAME_MASK => data[off + fixed..]
            .iter()
            .position(|&b| b == 0)
            .expect("checked by parse"),
        len => len as usize,
    };
    (fixed, len)
}

fn entry_len_at(data: &[u8], off: usize) -> usize {
    let (fixed, len) = entry_shape(data, off);
    entry_len(fixed, len)
}

fn entry_name(data: &[u8], off: usize) -> &[u8] {
    let (fixed, len) = entry_shape(data, off);
    &data[off + fixed..off + fixed + len]
}

fn entry_stage(data: &[u8], off: usize) -> u16 {
    (be16(data, off + ENTRY_FLAGS) & FLAG_STAGE) >> 12
}

/// Checks the structure of a format 2 or 3 index and finds its entries and extensions; `Err`
/// says what this module does not handle. `mtime` is the index file's (low 32 bits of) seconds.
fn parse(data: &[u8], mtime: u32) -> Result<Layout, String> {
    if data.len() < HEADER_LEN + HASH_LEN || &data[..4] != b"DIRC" {
        return Err("not an index file (no DIRC header)".into());
    }
    let version = be32(data, 4);
    if version != 2 && version != 3 {
        return Err(format!("index format {version}"));
    }
    let count = be32(data, 8) as usize;
    let body_end = data.len() - HASH_LEN;
    let truncated = || Err("the index is truncated".to_owned());
    // Each entry takes at least 64 bytes: a count that cannot fit is a broken file, not a reason
    // to allocate.
    if count > (body_end - HEADER_LEN) / 64 {
        return truncated();
    }
    let mut entries = Vec::with_capacity(count);
    let mut racy = Vec::new();
    let mut pos = HEADER_LEN;
    let mut previous: Option<(&[u8], u16)> = None;
    for _ in 0..count {
        if pos + ENTRY_FIXED > body_end {
            return truncated();
        }
        let flags = be16(data, pos + ENTRY_FLAGS);
        let mut fixed = ENTRY_FIXED;
        if flags & FLAG_EXTENDED != 0 {
            if version < 3 {
                return Err("extended entry flags in a format 2 index".into());
            }
            if pos + ENTRY_FIXED + 2 > body_end {
                return truncated();
            }
            let extended = be16(data, pos + ENTRY_FIXED);
            if extended & !KNOWN_EXTENDED_FLAGS != 0 {
                return Err(format!("unknown extended entry flags {extended:#06x}"));
            }
            fixed += 2;
        }
        let name_at = pos + fixed;
        let len = match flags & NAME_MASK {
            NAME_MASK => match data[name_at..body_end].iter().position(|&b| b == 0) {
                Some(len) => len,
                None => return truncated(),
            },
            len => len as usize,
        };
        let end = pos + entry_len(fixed, len);
        if end > body_end {
            return truncated();
        }
        if data[name_at + len] != 0 {
            return Err("an entry's name length does not match its name".into());
        }
        let key = (&data[name_at..name_at + len], (flags & FLAG_STAGE) >> 12);
        if previous.is_some_and(|p| p >= key) {
            return Err("index entries are not in git's order".into());
        }
        previous = Some(key);
        // git's is_racy_timestamp with second granularity: it also covers a git built with
        // nanosecond checks, and a git that reads this file with second granularity.
        if mtime != 0
            && be32(data, pos + ENTRY_MTIME_SEC) >= mtime
            && be32(data, pos + ENTRY_MODE) & 0o170000 != MODE_GITLINK
            && be32(data, pos + ENTRY_SIZE) != 0
        {
            racy.push(pos);
        }
        entries.push(pos);
        pos = end;
    }
    let entries_end = pos;
    let mut extensions = Vec::new();
    while pos + 8 <= body_end {
        let signature: [u8; 4] = data[pos..pos + 4].try_into().expect("4 bytes");
        let end = pos
            .checked_add(8 + be32(data, pos + 4) as usize)
            .filter(|&end| end <= body_end);
        let Some(end) = end else {
            return truncated();
        };
        match &signature {
            // Kept: the cache-tree (invalidated along the new paths when written) and the
            // resolve-undo records, which no stage-0 addition of ours affects.
            b"TREE" | b"REUC" => extensions.push((signature, pos..end)),
            // Dropped, as git drops what it cannot keep up to date: the untracked cache and
            // the fsmonitor state describe the work tree we are changing, and the end-of-index
            // and offset tables describe a layout that is about to move. git rebuilds them.
            b"UNTR" | b"FSMN" | b"EOIE" | b"IEOT" => {}
            // An optional extension we do not know: git ignores it on read and does not write
            // it back; neither do we.
            [b'A'..=b'Z', ..] => {}
            // Mandatory ones (split index `link`, sparse `sdir`, anything new) change what the
            // entries mean.
            _ => {
                return Err(format!(
                    "index extension {}",
                    String::from_utf8_lossy(&signature)
                ));
            }
        }
        pos = end;
    }
    if pos != body_end {
        return truncated();
    }
    Ok(Layout {
        version,
        entries,
        entries_end,
        extensions,
        racy,
    })
}

/// One cache-tree node as stored: its name, whether it is valid (has an entry count and an
/// object id), how many subtrees follow it, and where its own part ends.
struct TreeNode<'a> {
    name: &'a [u8],
    subtrees: usize,
    end: usize,
}

/// Parses the node at `pos` the way git's `read_one` does, more strictly; `None` if malformed.
fn tree_node(data: &[u8], pos: usize) -> Option<TreeNode<'_>> {
    let rest = data.get(pos..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let header_at = pos + nul + 1;
    let newline = header_at + data[header_at..].iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&data[header_at..newline]).ok()?;
    let (count, subtrees) = header.split_once(' ')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let valid = if count == "-1" {
        false
    } else if digits(count) {
        true
    } else {
        return None;
    };
    if !digits(subtrees) {
        return None;
    }
    let subtrees = subtrees.parse().ok()?;
    let end = newline + 1 + if valid { 20 } else { 0 };
    (end <= data.len()).then_some(TreeNode {
        name: &rest[..nul],
        subtrees,
        end,
    })
}

/// The end of the node at `pos` and all its subtrees.
fn skip_tree(data: &[u8], mut pos: usize) -> Option<usize> {
    let mut pending: usize = 1;
    while pending > 0 {
        let node = tree_node(data, pos)?;
        pending = (pending - 1).checked_add(node.subtrees)?;
        pos = node.end;
    }
    Some(pos)
}

/// Whether `dir` (a cache-tree path, "" for the root) contains `path`.
fn contains(dir: &[u8], path: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// Writes the cache-tree `data` to `out` as git's `cache_tree_invalidate_path` leaves it after
/// adding each of `targets`: every directory on the way to a target invalid (count -1, no id),
/// a subtree that a target replaces removed, everything else — valid ids of untouched
/// directories included — as it was. `None` if `data` is malformed.
fn invalidate_tree(data: &[u8], targets: &[&[u8]], out: &mut Vec<u8>) -> Option<()> {
    let mut path = Vec::new();
    let end = invalidate_node(data, 0, &mut path, targets, out)?;
    (end == data.len()).then_some(())
}

/// [`invalidate_tree`] for the node at `pos`, whose full path is `path`.
fn invalidate_node(
    data: &[u8],
    pos: usize,
    path: &mut Vec<u8>,
    targets: &[&[u8]],
    out: &mut Vec<u8>,
) -> Option<usize> {
    let node = tree_node(data, pos)?;
    let header_at = out.len();
    let mut kept = 0;
    let mut at = node.end;
    for _ in 0..node.subtrees {
        let child = tree_node(data, at)?;
        // Only the root has an empty name; a subtree's name is one path component.
        if child.name.is_empty() || child.name.contains(&b'/') {
            return None;
        }
        let depth = path.len();
        if depth > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(child.name);
        let end = if targets.contains(&path.as_slice()) {
            skip_tree(data, at)?
        } else if targets.iter().any(|t| contains(path, t)) {
            kept += 1;
            invalidate_node(data, at, path, targets, out)?
        } else {
            kept += 1;
            let end = skip_tree(data, at)?;
            out.extend_from_slice(&data[at..end]);
            end
        };
        path.truncate(depth);
        at = end;
    }
    // The header goes before the subtrees but its count is only known now: moving the few
    // hundred kilobytes written since is cheaper than parsing them twice.
    let mut header = node.name.to_vec();
    header.push(0);
    header.extend_from_slice(format!("-1 {kept}\n").as_bytes());
    out.splice(header_at..header_at, header);
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A hermetic repository driven by the real git CLI.
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new() -> Repo {
            let dir = tempfile::tempdir().expect("temp dir");
            let repo = Repo { dir };
            repo.git(&["init", "-q", "-b", "main", "."]);
            repo
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn gitdir(&self) -> PathBuf {
            self.root().join(".git")
        }

        fn index(&self) -> PathBuf {
            self.gitdir().join("index")
        }

        fn command(&self, args: &[&str]) -> Command {
            let mut cmd = Command::new("git");
            cmd.args(args)
                .current_dir(self.root())
                .env_remove("GIT_DIR")
                .env_remove("GIT_INDEX_FILE")
                .env_remove("GIT_WORK_TREE")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", self.root())
                .env("GIT_AUTHOR_NAME", "Test")
                .env("GIT_AUTHOR_EMAIL", "test@example.com")
                .env("GIT_COMMITTER_NAME", "Test")
                .env("GIT_COMMITTER_EMAIL", "test@example.com")
                .env("LC_ALL", "C");
            cmd
        }

        /// Runs git, asserting success; returns stdout.
        fn git(&self, args: &[&str]) -> String {
            self.git_in(args, b"")
        }

        fn git_in(&self, args: &[&str], stdin: &[u8]) -> String {
            use std::process::Stdio;
            let mut child = self
                .command(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run git");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(stdin)
                .expect("write stdin");
            let out = child.wait_with_output().expect("wait for git");
            assert!(
                out.status.success(),
                "git {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("utf-8 output")
        }

        fn write(&self, path: &str, content: &str) {
            let file = self.root().join(path);
            fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            fs::write(file, content).expect("write file");
        }

        fn commit_all(&self, message: &str) {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "-m", message]);
        }

        /// Writes `content` at `path` and stores it as a blob, as record does before syncing.
        fn file_entry(&self, path: &str, content: &str) -> NewEntry {
            self.write(path, content);
            let id = self.git(&["hash-object", "-w", path]);
            self.entry(path, id.trim(), 0o100644)
        }

        fn entry(&self, path: &str, id: &str, mode: u32) -> NewEntry {
            let meta = fs::symlink_metadata(self.root().join(path)).expect("stat");
            NewEntry::new(path, oid(id), mode, &meta)
        }

        fn open(&self) -> LockedIndex {
            match LockedIndex::open(&self.gitdir()).expect("open the index") {
                Opened::Ready(index) => index,
                Opened::Unsupported(why) => panic!("unexpectedly unsupported: {why}"),
            }
        }

        fn status(&self) -> String {
            self.git(&["status", "--porcelain", "--untracked-files=all"])
        }

        /// The tree git computes from the index entries alone, ignoring any cache-tree.
        fn tree_from_entries(&self) -> String {
            let listing = self.git(&["ls-files", "-s"]);
            let scratch = self.root().join(".git/scratch-index");
            let _ = fs::remove_file(&scratch);
            let scratch_env = scratch.to_str().expect("utf-8 path");
            let run = |args: &[&str], stdin: &[u8]| {
                let mut child = self
                    .command(args)
                    .env("GIT_INDEX_FILE", scratch_env)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("run git");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(stdin)
                    .expect("stdin");
                let out = child.wait_with_output().expect("git");
                assert!(out.status.success(), "git {args:?} failed");
                String::from_utf8(out.stdout).expect("utf-8")
            };
            run(&["update-index", "--index-info"], listing.as_bytes());
            run(&["write-tree"], b"").trim().to_owned()
        }

        /// Checks what every rewrite must leave: a sound repository, the cache-tree agreeing
        /// with the entries, and no lock behind.
        fn assert_sound(&self) {
            self.git(&["fsck", "--no-progress", "--strict"]);
            assert_eq!(
                self.git(&["write-tree"]).trim(),
                self.tree_from_entries(),
                "the cache-tree disagrees with the entries"
            );
            assert!(
                !self.gitdir().join("index.lock").exists(),
                "lock left behind"
            );
        }
    }

    fn oid(hex: &str) -> Oid {
        let mut id = [0; 20];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
        }
        id
    }

    /// The extension signatures of an index file, in order.
    fn extensions(index: &[u8]) -> Vec<String> {
        let mut pos = parse(index, 0).expect("parse").entries_end;
        let mut sigs = Vec::new();
        while pos + 8 <= index.len() - HASH_LEN {
            sigs.push(String::from_utf8_lossy(&index[pos..pos + 4]).into_owned());
            pos += 8 + be32(index, pos + 4) as usize;
        }
        sigs
    }

    /// (path, valid) of every cache-tree node of an index file, in stored order.
    fn cache_tree(index: &[u8]) -> Vec<(String, bool)> {
        let layout = parse(index, 0).expect("parse");
        let Some((_, range)) = layout.extensions.iter().find(|(s, _)| s == b"TREE") else {
            return Vec::new();
        };
        let data = &index[range.start + 8..range.end];
        let mut nodes = Vec::new();
        let mut stack: Vec<(String, usize)> = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let node = tree_node(data, pos).expect("node");
            while stack.last().is_some_and(|(_, left)| *left == 0) {
                stack.pop();
            }
            let parent = stack.last_mut().map(|(p, left)| {
                *left -= 1;
                p.clone()
            });
            let name = String::from_utf8_lossy(node.name).into_owned();
            let full = match parent {
                None => String::new(),
                Some(p) if p.is_empty() => name,
                Some(p) => format!("{p}/{name}"),
            };
            let valid = !data[pos + node.name.len() + 1..].starts_with(b"-1 ");
            nodes.push((full.clone(), valid));
            stack.push((full, node.subtrees));
            pos = node.end;
        }
        nodes
    }

    fn valid(nodes: &[(String, bool)], path: &str) -> Option<bool> {
        nodes.iter().find(|(p, _)| p == path).map(|(_, v)| *v)
    }

    /// A repository with a few committed files in nested folders and a cache-tree.
    fn seeded() -> Repo {
        let repo = Repo::new();
        repo.write("build.pkr.hcl", "# template\n");
        repo.write("evidence/README.md", "index v1\n");
        repo.write("evidence/builds/a/r1/proof.json", "{}\n");
        repo.write("evidence/builds/b/r1/proof.json", "{\"b\":1}\n");
        repo.write("other/x.txt", "x\n");
        repo.commit_all("seed");
        repo
    }

    #[test]
    fn new_and_replaced_entries_leave_a_clean_status_and_a_right_commit() {
        let repo = seeded();
        assert!(cache_tree(&fs::read(repo.index()).unwrap()).len() >= 5);
        let mut index = repo.open();
        let before = index.get("evidence/README.md").expect("staged");
        assert_eq!(before.1, 0o100644);
        assert_eq!(index.get("evidence/builds/a/r2/proof.json"), None);
        let paths = [
            "evidence/README.md",
            "evidence/builds/a/r2/proof.json",
            "evidence/builds/a/r2/packer.log",
            "zzz-last",
            "0-first",
        ];
        for path in paths {
            assert_eq!(index.unsupported(path), None);
            index.add(repo.file_entry(path, &format!("content of {path}\n")));
        }
        index.commit().expect("commit");
        repo.assert_sound();
        // Every new file is staged with the right id and mode, and git trusts the stat data.
        let staged = repo.git(&["ls-files", "-s"]);
        for path in paths {
            let id = repo.git(&["hash-object", path]);
            assert!(
                staged.contains(&format!("100644 {} 0\t{path}\n", id.trim())),
                "{path} not staged right:\n{staged}"
            );
        }
        assert_eq!(staged.lines().count(), 9);
        assert_eq!(repo.git(&["diff", "--name-only"]), "");
        // What is staged is exactly what git add would have staged, and a commit records it.
        let mut expected = paths.to_vec();
        expected.sort();
        assert_eq!(
            repo.git(&["diff", "--cached", "--name-only"]),
            expected
                .iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>()
        );
        repo.git(&["commit", "-q", "-m", "second"]);
        assert_eq!(repo.status(), "");
        assert_eq!(repo.git(&["diff", "HEAD", "--stat"]), "");
        let tree = repo.git(&["ls-tree", "-r", "--name-only", "HEAD"]);
        assert!(tree.contains("evidence/builds/a/r2/packer.log\n"), "{tree}");
        assert_eq!(
            repo.git(&["rev-parse", "HEAD:evidence/README.md"]),
            repo.git(&["hash-object", "evidence/README.md"])
        );
    }

    #[test]
    fn cache_tree_is_invalidated_only_along_the_new_paths() {
        let repo = seeded();
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/builds/a/r2/proof.json", "{\"new\":1}\n"));
        index.commit().expect("commit");
        let nodes = cache_tree(&fs::read(repo.index()).unwrap());
        for on_path in ["", "evidence", "evidence/builds", "evidence/builds/a"] {
            assert_eq!(valid(&nodes, on_path), Some(false), "{on_path}: {nodes:?}");
        }
        for untouched in ["other", "evidence/builds/b", "evidence/builds/a/r1"] {
            assert_eq!(
                valid(&nodes, untouched),
                Some(true),
                "{untouched}: {nodes:?}"
            );
        }
        repo.assert_sound();
        // git write-tree used the untouched subtrees' ids and recomputed the rest.
        repo.git(&["commit", "-q", "-m", "with r2"]);
        assert_eq!(repo.status(), "");
        assert_eq!(
            repo.git(&["rev-parse", "HEAD:evidence/builds/a/r2/proof.json"]),
            repo.git(&["hash-object", "evidence/builds/a/r2/proof.json"])
        );
    }

    #[test]
    fn a_file_that_replaces_a_stale_cache_tree_directory_removes_that_subtree() {
        let repo = seeded();
        // git rm leaves an invalid "other" node behind in the cache-tree.
        repo.git(&["rm", "-q", "other/x.txt"]);
        fs::remove_dir_all(repo.root().join("other")).ok();
        assert_eq!(
            valid(&cache_tree(&fs::read(repo.index()).unwrap()), "other"),
            Some(false)
        );
        let mut index = repo.open();
        assert_eq!(index.unsupported("other"), None);
        index.add(repo.file_entry("other", "now a file\n"));
        index.commit().expect("commit");
        let nodes = cache_tree(&fs::read(repo.index()).unwrap());
        assert_eq!(valid(&nodes, "other"), None, "{nodes:?}");
        assert_eq!(valid(&nodes, "evidence"), Some(true), "{nodes:?}");
        repo.assert_sound();
    }

    #[test]
    fn symlinks_and_executables_keep_their_modes() {
        let repo = seeded();
        std::os::unix::fs::symlink("r1", repo.root().join("evidence/builds/a/latest")).unwrap();
        let link = repo.git_in(&["hash-object", "-w", "--stdin"], b"r1");
        repo.write("run.sh", "#!/bin/sh\n");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            repo.root().join("run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let script = repo.git(&["hash-object", "-w", "run.sh"]);
        let mut index = repo.open();
        index.add(repo.entry("evidence/builds/a/latest", link.trim(), 0o120000));
        index.add(repo.entry("run.sh", script.trim(), 0o100755));
        index.commit().expect("commit");
        let staged = repo.git(&["ls-files", "-s", "evidence/builds/a/latest", "run.sh"]);
        assert_eq!(
            staged,
            format!(
                "120000 {} 0\tevidence/builds/a/latest\n100755 {} 0\trun.sh\n",
                link.trim(),
                script.trim()
            )
        );
        assert_eq!(repo.git(&["diff", "--name-only"]), "");
        repo.assert_sound();
    }

    #[test]
    fn a_missing_index_is_created() {
        let repo = Repo::new();
        assert!(!repo.index().exists());
        let mut index = repo.open();
        assert_eq!(index.get("a/b"), None);
        index.add(repo.file_entry("a/b", "b\n"));
        index.commit().expect("commit");
        assert_eq!(repo.status(), "A  a/b\n");
        repo.assert_sound();
    }

    #[test]
    fn a_long_path_uses_the_name_length_overflow_form() {
        let repo = seeded();
        let long = format!("{}/{}", "d".repeat(200), "f".repeat(4000));
        let long = long.as_str();
        // Longer than most file systems allow for a name, so stage it without a file.
        let meta = fs::symlink_metadata(repo.root().join("build.pkr.hcl")).unwrap();
        let id = repo.git_in(&["hash-object", "-w", "--stdin"], b"x");
        let mut index = repo.open();
        index.add(NewEntry::new(long, oid(id.trim()), 0o100644, &meta));
        index.commit().expect("commit");
        let staged = repo.git(&["ls-files", "-s"]);
        assert!(staged.contains(&format!("\t{long}\n")), "{staged}");
        // Read back through this module too: the overflow entry must parse.
        let mut index = repo.open();
        assert_eq!(index.get(long), Some((oid(id.trim()), 0o100644)));
        index.add(repo.file_entry("evidence/zz", "zz\n"));
        index.commit().expect("commit");
        assert!(
            repo.git(&["ls-files", "-s"])
                .contains(&format!("\t{long}\n"))
        );
        repo.git(&["fsck", "--no-progress"]);
    }

    #[test]
    fn index_v3_with_skip_worktree_and_intent_to_add_is_kept() {
        let repo = seeded();
        repo.git(&["update-index", "--skip-worktree", "other/x.txt"]);
        repo.write("planned.txt", "later\n");
        repo.git(&["add", "--intent-to-add", "planned.txt"]);
        assert_eq!(be32(&fs::read(repo.index()).unwrap(), 4), 3);
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        index.commit().expect("commit");
        assert_eq!(be32(&fs::read(repo.index()).unwrap(), 4), 3);
        assert_eq!(
            repo.git(&["ls-files", "-v", "other/x.txt"]),
            "S other/x.txt\n"
        );
        assert_eq!(
            repo.git(&["status", "--porcelain"]),
            "A  evidence/new.txt\n A planned.txt\n"
        );
        // write-tree leaves intent-to-add entries out, an index rebuilt from ls-files would not.
        repo.git(&["rm", "-q", "--cached", "planned.txt"]);
        repo.assert_sound();
    }

    #[test]
    fn index_v4_is_unsupported_and_left_alone() {
        let repo = seeded();
        repo.git(&["update-index", "--index-version", "4"]);
        let before = fs::read(repo.index()).unwrap();
        match LockedIndex::open(&repo.gitdir()).expect("open") {
            Opened::Unsupported(why) => assert!(why.contains('4'), "{why}"),
            Opened::Ready(_) => panic!("format 4 must not be handled"),
        }
        assert_eq!(fs::read(repo.index()).unwrap(), before);
        assert!(!repo.gitdir().join("index.lock").exists());
    }

    fn unsupported_reason(repo: &Repo) -> String {
        match LockedIndex::open(&repo.gitdir()).expect("open") {
            Opened::Unsupported(why) => why,
            Opened::Ready(_) => panic!("unexpectedly supported"),
        }
    }

    #[test]
    fn split_and_sparse_indexes_are_unsupported() {
        let repo = seeded();
        repo.git(&["update-index", "--split-index"]);
        // Depending on the entries the base index holds, the empty-named placeholder entries of
        // a split index or its `link` extension tell first; either must stop us.
        let why = unsupported_reason(&repo);
        assert!(why.contains("link") || why.contains("order"), "{why}");
        repo.git(&["update-index", "--no-split-index"]);
        repo.git(&[
            "sparse-checkout",
            "set",
            "--cone",
            "--sparse-index",
            "evidence",
        ]);
        let why = unsupported_reason(&repo);
        assert!(why.contains("sdir"), "{why}");
        assert!(!repo.gitdir().join("index.lock").exists());
    }

    #[test]
    fn untracked_cache_is_dropped_and_rebuilt_by_git() {
        let repo = seeded();
        repo.git(&["config", "core.untrackedCache", "true"]);
        repo.write("evidence/stray.txt", "not tracked\n");
        assert_eq!(repo.status(), "?? evidence/stray.txt\n");
        assert!(extensions(&fs::read(repo.index()).unwrap()).contains(&"UNTR".to_owned()));
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/builds/a/r2/proof.json", "{}\n"));
        index.commit().expect("commit");
        let sigs = extensions(&fs::read(repo.index()).unwrap());
        assert!(!sigs.contains(&"UNTR".to_owned()), "{sigs:?}");
        assert!(sigs.contains(&"TREE".to_owned()), "{sigs:?}");
        // A new untracked file next to the staged one must show, the staged one must not.
        repo.write("evidence/builds/a/r2/stray.log", "x\n");
        assert_eq!(
            repo.status(),
            "A  evidence/builds/a/r2/proof.json\n?? evidence/builds/a/r2/stray.log\n?? evidence/stray.txt\n"
        );
        repo.assert_sound();
    }

    #[test]
    fn resolve_undo_is_kept_verbatim() {
        let repo = seeded();
        repo.git(&["checkout", "-q", "-b", "side"]);
        repo.write("other/x.txt", "side\n");
        repo.commit_all("side");
        repo.git(&["checkout", "-q", "main"]);
        repo.write("other/x.txt", "main\n");
        repo.commit_all("main");
        let merge = repo
            .command(&["merge", "-q", "side"])
            .output()
            .expect("merge");
        assert!(!merge.status.success(), "the merge must conflict");
        repo.write("other/x.txt", "resolved\n");
        repo.git(&["add", "other/x.txt"]);
        let before = fs::read(repo.index()).unwrap();
        let reuc = |index: &[u8]| {
            let layout = parse(index, 0).expect("parse");
            let (_, range) = layout
                .extensions
                .iter()
                .find(|(s, _)| s == b"REUC")
                .expect("REUC")
                .clone();
            index[range].to_vec()
        };
        let reuc_before = reuc(&before);
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        index.commit().expect("commit");
        assert_eq!(reuc(&fs::read(repo.index()).unwrap()), reuc_before);
        // git can still undo the resolution from it.
        repo.git(&["checkout", "-m", "other/x.txt"]);
        assert_eq!(
            repo.git(&["ls-files", "-u", "other/x.txt"]).lines().count(),
            3
        );
    }

    #[test]
    fn unmerged_and_colliding_paths_are_unsupported() {
        let repo = seeded();
        let index = repo.open();
        assert!(index.unsupported("evidence").is_some(), "a directory");
        assert!(index.unsupported("other/x.txt/y").is_some(), "under a file");
        assert!(
            index.unsupported("build.pkr.hcl/z").is_some(),
            "under a file"
        );
        for bad in [
            "", "/abs", "a//b", "a/./b", "a/../b", ".git/x", "a/.GIT/b", "a/",
        ] {
            assert!(index.unsupported(bad).is_some(), "{bad:?}");
        }
        assert_eq!(index.unsupported("evidence.txt"), None);
        assert_eq!(index.unsupported("evidence/builds/c/r1/proof.json"), None);
        drop(index);
        assert!(
            !repo.gitdir().join("index.lock").exists(),
            "drop releases the lock"
        );

        repo.git(&["checkout", "-q", "-b", "side"]);
        repo.write("other/x.txt", "side\n");
        repo.commit_all("side");
        repo.git(&["checkout", "-q", "main"]);
        repo.write("other/x.txt", "main\n");
        repo.commit_all("main");
        let _ = repo.command(&["merge", "-q", "side"]).output();
        let index = repo.open();
        assert!(index.unsupported("other/x.txt").is_some());
        assert_eq!(index.get("other/x.txt"), None, "no stage-0 entry");
    }

    #[test]
    fn a_held_lock_is_reported_and_nothing_changes() {
        let repo = seeded();
        let lock = repo.gitdir().join("index.lock");
        fs::write(&lock, b"someone else's").unwrap();
        let before = fs::read(repo.index()).unwrap();
        let pauses = [Duration::from_millis(1), Duration::from_millis(2)];
        match LockedIndex::open_with_pauses(&repo.gitdir(), &pauses) {
            Err(Error::Locked(path)) => assert_eq!(path, lock),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(fs::read(&lock).unwrap(), b"someone else's", "not our lock");
        assert_eq!(fs::read(repo.index()).unwrap(), before);
        fs::remove_file(&lock).unwrap();
        repo.git(&["status", "--porcelain"]);
    }

    #[test]
    fn the_lock_excludes_git_while_held_and_an_abandoned_update_leaves_no_trace() {
        let repo = seeded();
        let before = fs::read(repo.index()).unwrap();
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        let add = repo
            .command(&["add", "evidence/new.txt"])
            .output()
            .expect("git add");
        assert!(!add.status.success(), "git must see index.lock");
        assert!(String::from_utf8_lossy(&add.stderr).contains("index.lock"));
        drop(index);
        assert_eq!(fs::read(repo.index()).unwrap(), before);
        assert!(!repo.gitdir().join("index.lock").exists());
    }

    #[test]
    fn racily_clean_entries_are_smudged_so_git_rechecks_them() {
        let repo = seeded();
        repo.git(&["config", "core.trustctime", "false"]);
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let set_mtime = |path: &Path, secs: u64| {
            File::options()
                .write(true)
                .open(repo.root().join(path))
                .unwrap()
                .set_modified(at(secs))
                .unwrap();
        };
        let long_ago = 1_000_000_000;
        for path in ["build.pkr.hcl", "evidence/README.md", "other/x.txt"] {
            set_mtime(Path::new(path), long_ago - 100);
        }
        set_mtime(Path::new("other/x.txt"), long_ago);
        repo.git(&["update-index", "-q", "--refresh"]);
        // Same size, same inode, same mtime, new content: only the content tells.
        fs::write(repo.root().join("other/x.txt"), "y\n").unwrap();
        set_mtime(Path::new("other/x.txt"), long_ago);
        // As if the index had been written in the second the file was last stat'ed and then
        // changed: racily clean. Once the index is rewritten later, only a smudge still tells.
        set_mtime(Path::new(".git/index"), long_ago);
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        index.commit().expect("commit");
        let data = fs::read(repo.index()).unwrap();
        let layout = parse(&data, 0).unwrap();
        let sizes: Vec<(String, u32)> = layout
            .entries
            .iter()
            .map(|&off| {
                (
                    path_text(entry_name(&data, off)),
                    be32(&data, off + ENTRY_SIZE),
                )
            })
            .collect();
        assert!(sizes.contains(&("other/x.txt".into(), 0)), "{sizes:?}");
        assert!(
            sizes.contains(&("evidence/new.txt".into(), 4)),
            "new entries keep their size: {sizes:?}"
        );
        assert!(
            sizes.contains(&("build.pkr.hcl".into(), 11)),
            "entries older than the index are not racy: {sizes:?}"
        );
        assert_eq!(repo.git(&["diff", "--name-only"]), "other/x.txt\n");
        repo.assert_sound();
    }

    #[test]
    fn every_racy_entry_is_smudged_around_replaced_and_inserted_ones() {
        let repo = seeded();
        // Every entry is at least as new as the index: all racily clean.
        File::options()
            .write(true)
            .open(repo.index())
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            .unwrap();
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/README.md", "index v2, longer\n"));
        index.add(repo.file_entry("evidence/builds/a/r0/proof.json", "{\"r0\":1}\n"));
        index.add(repo.file_entry("zzz", "last\n"));
        index.commit().expect("commit");
        let data = fs::read(repo.index()).unwrap();
        let layout = parse(&data, 0).unwrap();
        let sizes: Vec<(String, u32)> = layout
            .entries
            .iter()
            .map(|&off| {
                (
                    path_text(entry_name(&data, off)),
                    be32(&data, off + ENTRY_SIZE),
                )
            })
            .collect();
        let expected: Vec<(String, u32)> = [
            ("build.pkr.hcl", 0),
            ("evidence/README.md", 17),
            ("evidence/builds/a/r0/proof.json", 9),
            ("evidence/builds/a/r1/proof.json", 0),
            ("evidence/builds/b/r1/proof.json", 0),
            ("other/x.txt", 0),
            ("zzz", 5),
        ]
        .iter()
        .map(|(p, s)| (p.to_string(), *s))
        .collect();
        assert_eq!(sizes, expected);
        // Smudged entries are only re-checked, not reported.
        assert_eq!(repo.git(&["diff", "--name-only"]), "");
        repo.assert_sound();
    }

    #[test]
    fn broken_indexes_are_unsupported_not_misread() {
        let repo = seeded();
        let good = fs::read(repo.index()).unwrap();
        let layout = parse(&good, 0).expect("a git-written index parses");
        let second = layout.entries[1];
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut bad = good.clone();
        bad[0] = b'X';
        cases.push(("signature", bad));
        let mut bad = good.clone();
        bad[11] += 1;
        cases.push(("count", bad));
        cases.push(("truncated", good[..good.len() - 30].to_vec()));
        let mut bad = good.clone();
        bad[second + ENTRY_FLAGS + 1] -= 1;
        cases.push(("name length", bad));
        let mut bad = good.clone();
        bad[second + ENTRY_FIXED] = b'a';
        cases.push(("order", bad));
        for signature in ["link", "sdir", "abcd"] {
            let mut bad = good[..good.len() - HASH_LEN].to_vec();
            bad.extend_from_slice(signature.as_bytes());
            bad.extend_from_slice(b"\0\0\0\0");
            bad.extend_from_slice(&[0; HASH_LEN]);
            cases.push((signature, bad));
        }
        for (what, data) in cases {
            match parse(&data, 0) {
                Ok(_) => panic!("{what} accepted"),
                Err(why) if what.len() == 4 => assert!(why.contains(what), "{why}"),
                Err(_) => {}
            }
        }
        // Optional extensions git may write, and an unknown one: fine, and not carried over.
        repo.git(&[
            "-c",
            "index.recordEndOfIndexEntries=true",
            "update-index",
            "--force-write-index",
        ]);
        let good = fs::read(repo.index()).unwrap();
        assert_eq!(extensions(&good), ["TREE", "EOIE"]);
        let mut ok = good[..good.len() - HASH_LEN].to_vec();
        ok.extend_from_slice(b"ZZZZ\0\0\0\x01z");
        ok.extend_from_slice(&[0; HASH_LEN]);
        fs::write(repo.index(), &ok).unwrap();
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        index.commit().expect("commit");
        assert_eq!(extensions(&fs::read(repo.index()).unwrap()), ["TREE"]);
        repo.assert_sound();
    }

    #[test]
    fn a_cache_tree_that_does_not_parse_is_dropped() {
        let repo = seeded();
        let mut data = fs::read(repo.index()).unwrap();
        let layout = parse(&data, 0).unwrap();
        let (_, range) = layout
            .extensions
            .iter()
            .find(|(s, _)| s == b"TREE")
            .expect("TREE")
            .clone();
        // The root's entry count, right after its empty name: now not a number.
        assert!(data[range.start + 9].is_ascii_digit());
        data[range.start + 9] = b'x';
        let body = data.len() - HASH_LEN;
        let hash = Sha1::digest(&data[..body]);
        data[body..].copy_from_slice(&hash);
        fs::write(repo.index(), &data).unwrap();
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        index.commit().expect("commit");
        assert_eq!(
            extensions(&fs::read(repo.index()).unwrap()),
            Vec::<String>::new()
        );
        repo.assert_sound();
    }

    #[test]
    fn a_symlinked_index_is_unsupported() {
        let repo = seeded();
        fs::rename(repo.index(), repo.gitdir().join("real-index")).unwrap();
        std::os::unix::fs::symlink("real-index", repo.index()).unwrap();
        let why = unsupported_reason(&repo);
        assert!(why.contains("symbolic link"), "{why}");
        assert!(
            fs::symlink_metadata(repo.index())
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!repo.gitdir().join("index.lock").exists());
    }

    #[test]
    fn the_checksum_is_a_plain_sha1_that_git_fsck_verifies() {
        let repo = seeded();
        let mut index = repo.open();
        index.add(repo.file_entry("evidence/new.txt", "new\n"));
        index.commit().expect("commit");
        let data = fs::read(repo.index()).unwrap();
        let (body, hash) = data.split_at(data.len() - HASH_LEN);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let mut sha1sum = Command::new("sha1sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha1sum");
        sha1sum.stdin.take().unwrap().write_all(body).unwrap();
        let sum = sha1sum.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&sum.stdout[..40]), hex);
        // git fsck verifies the index checksum (git's commands do not): it must pass, and it
        // must catch a wrong one.
        repo.git(&["fsck", "--no-progress"]);
        let mut wrong = data.clone();
        *wrong.last_mut().unwrap() ^= 1;
        fs::write(repo.index(), &wrong).unwrap();
        let fsck = repo
            .command(&["fsck", "--no-progress"])
            .output()
            .expect("git fsck");
        assert!(!fsck.status.success(), "fsck accepted a wrong checksum");
    }
}
