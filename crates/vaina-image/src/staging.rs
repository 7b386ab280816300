//! File locks on the downloads in `<root>/ingest/`, which pulls share
//! without the store lock, in this process and in others.
//!
//! `<hex>.partial` is a download in progress: whoever holds its flock
//! (exclusive) is its only writer, so a blob is fetched once however many
//! pulls want it; the others wait for the lock and then find the blob done.
//! A finished download is verified and renamed to `<hex>`, and its pulls
//! hold a shared flock on it until they commit. gc removes only files it can
//! lock exclusively, so it never takes a download from under a pull, and a
//! partial file left by a killed pull (its lock died with it) goes with the
//! next gc or is overwritten by the next download of that blob.
//!
//! Files are renamed and removed while locked, so a lock counts only if,
//! once taken, the path still names the locked file (same inode).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// What [`lock`] found.
pub(crate) enum Locked {
    Held(Flock<File>),
    /// Someone else holds it (non-blocking modes only).
    Busy,
    /// No file at the path (only without `create`).
    Missing,
}

/// Locks the file at `path` as `arg` says, creating it (empty, 0644) if
/// `create` is set.
pub(crate) fn lock(path: &Path, arg: FlockArg, create: bool) -> io::Result<Locked> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            .mode(0o644)
            .open(path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(Locked::Missing),
            Err(e) => return Err(e),
        };
        let held = match Flock::lock(file, arg) {
            Ok(held) => held,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(Locked::Busy),
            Err((_, e)) => return Err(e.into()),
        };
        let locked = held.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                return Ok(Locked::Held(held));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => {
                return Ok(Locked::Missing);
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            // Renamed or removed while we waited: lock what is there now.
            _ => {}
        }
    }
}

/// Removes every file in `dir` that no one holds a lock on; returns how
/// many.
pub(crate) fn remove_unheld(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Locked::Held(_held) = lock(&path, FlockArg::LockExclusiveNonblock, false)? {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_follow_renames_and_gc_spares_held_files() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        let done = dir.path().join("x");
        let Locked::Held(writer) = lock(&partial, FlockArg::LockExclusive, true).unwrap() else {
            panic!("not locked");
        };
        assert!(matches!(
            lock(&partial, FlockArg::LockExclusiveNonblock, true).unwrap(),
            Locked::Busy
        ));
        assert_eq!(remove_unheld(dir.path()).unwrap(), 0);
        std::fs::rename(&partial, &done).unwrap();
        writer.relock(FlockArg::LockShared).unwrap();
        // A reader shares it; gc cannot take it.
        let Locked::Held(_reader) = lock(&done, FlockArg::LockSharedNonblock, false).unwrap()
        else {
            panic!("not shared");
        };
        assert_eq!(remove_unheld(dir.path()).unwrap(), 0);
        drop(writer);
        drop(_reader);
        assert!(matches!(
            lock(&partial, FlockArg::LockSharedNonblock, false).unwrap(),
            Locked::Missing
        ));
        assert_eq!(remove_unheld(dir.path()).unwrap(), 1);
        assert!(!done.exists());
    }
}
