//! Streams a finished log into the object database, hashing it on the way.
//!
//! The log is read once, in fixed-size chunks: each chunk updates the SHA-256 and goes straight
//! into a streaming blob writer. Memory stays bounded whatever the log's size, and the blob
//! holds the bytes exactly as read (no newline or encoding conversion), so `sha256sum` of a
//! checkout equals `log_sha256`.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use git2::{ObjectType, Repository};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::proof::LogDigest;

/// Read size: large enough that syscalls and FFI calls are noise, small enough to stay in cache.
const CHUNK: usize = 256 * 1024;

/// Stores the log file at `path` as a blob and returns its digest.
pub fn store_file(repo: &Repository, path: &Path) -> Result<LogDigest> {
    let unreadable = |source| Error::LogUnreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(unreadable(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let expected = meta.len();
    let (digest, actual) = store_reader(repo, &mut file, expected).map_err(|e| match e {
        StoreError::Read(source) => unreadable(source),
        StoreError::Git(source) => {
            Error::git("cannot store the log in the object database", source)
        }
        StoreError::Short(actual) => Error::LogChanged {
            path: path.to_owned(),
            expected,
            actual,
        },
    })?;
    // A writer still appending would make the blob a prefix of the final log: refuse it.
    let mut probe = [0u8; 1];
    match file.read(&mut probe) {
        Ok(0) => Ok(digest),
        Ok(_) => Err(Error::LogChanged {
            path: path.to_owned(),
            expected,
            actual: actual + 1,
        }),
        Err(e) => Err(unreadable(e)),
    }
}

/// Why streaming a log failed.
#[derive(Debug)]
pub enum StoreError {
    Read(std::io::Error),
    Git(git2::Error),
    /// The reader ended after this many bytes, before the announced size.
    Short(u64),
}

/// Streams exactly `size` bytes from `reader` into a blob. Returns the digest and bytes read.
pub fn store_reader(
    repo: &Repository,
    reader: &mut dyn Read,
    size: u64,
) -> std::result::Result<(LogDigest, u64), StoreError> {
    let odb = repo.odb().map_err(StoreError::Git)?;
    let len = usize::try_from(size).map_err(|_| {
        StoreError::Read(std::io::Error::new(
            ErrorKind::InvalidInput,
            "log too large for this platform",
        ))
    })?;
    let mut writer = odb.writer(len, ObjectType::Blob).map_err(StoreError::Git)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    while done < size {
        let want = usize::try_from((size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(StoreError::Short(done)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::Read(e)),
        };
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(|e| StoreError::Git(git2::Error::from_str(&e.to_string())))?;
        done += n as u64;
    }
    let blob = writer.finalize().map_err(StoreError::Git)?;
    let sha256 = hex(&hasher.finalize());
    Ok((
        LogDigest {
            blob,
            sha256,
            bytes: size,
        },
        done,
    ))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
