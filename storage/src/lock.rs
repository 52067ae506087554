//! [`DirLock`]: one writing process per store directory.
//!
//! A store directory has one writer at a time: the process that holds an
//! exclusive `flock` on its `LOCK` file. The lock is taken before anything
//! in the directory is read for a restore or written, and held for as long
//! as any [`Store`](crate::Store) or job of the process uses the directory.
//! A second process gets [`LockError::Locked`] naming the holder's pid (read
//! from the file, where every holder writes its own).
//!
//! Why `flock`: the kernel drops it when the holder's last descriptor of the
//! lock file closes, which a SIGKILL does too, so a crashed job never leaves
//! a stale lock. And it cannot outlive a dead holder's in-flight writes:
//! Linux's `do_exit` cancels and waits for every io_uring request of an
//! exiting thread (`io_uring_files_cancel`) before it drops the thread's
//! file table (`exit_files`), and the lock goes with the last thread's file
//! table. So when the next process holds the lock, no write of the previous
//! one can still land in a segment.
//!
//! Within one process the lock is shared: [`DirLock::acquire`] of a
//! directory the process already holds returns the same lock (a benchmark
//! that plans a run and the job it starts, a supervisor's restarts).
//! Two jobs of one process on one directory are refused by the engine
//! through [`DirLock::begin_use`].
//!
//! Readers ([`StoreReader`](crate::StoreReader), `spate-ckpt`, outside
//! garbage collection) never take the lock: they work beside a writer.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The lock file's name in a store directory.
pub const LOCK_FILE: &str = "LOCK";

/// Taking a directory's lock failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the directory.
    #[error("{} is in use by another process{}: one job writes a state directory at a time", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// A job of this process already uses the directory.
    #[error("{} is already used by another job of this process: one job writes a state directory at a time", dir.display())]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
    /// The lock file could not be created, locked or written.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock of a store directory, held while the value lives.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    /// Holds the `flock` (released when the last clone of the `Arc` drops).
    _file: File,
    in_use: AtomicBool,
}

/// The locks this process holds, by canonical directory.
static HELD: Mutex<Vec<(PathBuf, Weak<DirLock>)>> = Mutex::new(Vec::new());

impl DirLock {
    /// Locks `dir` (created if missing) for this process, or returns the
    /// lock the process already holds on it.
    ///
    /// # Errors
    /// [`LockError::Locked`] if another process holds it; [`LockError::Io`]
    /// if the directory or lock file cannot be created or locked.
    pub fn acquire(dir: &Path) -> Result<Arc<DirLock>, LockError> {
        let io_err = |source| LockError::Io {
            path: dir.join(LOCK_FILE),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let canonical = dir.canonicalize().map_err(io_err)?;
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(lock) = held
            .iter()
            .find(|(d, _)| *d == canonical)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(lock);
        }
        let path = canonical.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: `flock` on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Locked {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(io_err(e));
        }
        // The holder's pid, for the error of the next one (not synced: it
        // only names the holder while the holder lives).
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_err)?;
        let lock = Arc::new(DirLock {
            dir: canonical.clone(),
            _file: file,
            in_use: AtomicBool::new(false),
        });
        held.push((canonical, Arc::downgrade(&lock)));
        Ok(lock)
    }

    /// Marks the directory as used by one job of this process until the
    /// returned guard drops.
    ///
    /// # Errors
    /// [`LockError::InUse`] if another job of this process uses it.
    pub fn begin_use(self: &Arc<Self>) -> Result<DirUse, LockError> {
        if self.in_use.swap(true, Ordering::SeqCst) {
            return Err(LockError::InUse {
                dir: self.dir.clone(),
            });
        }
        Ok(DirUse(self.clone()))
    }
}

/// One job's use of a locked directory (see [`DirLock::begin_use`]); also
/// keeps the lock held.
#[derive(Debug)]
pub struct DirUse(Arc<DirLock>);

impl Drop for DirUse {
    fn drop(&mut self) {
        let was = self.0.in_use.swap(false, Ordering::SeqCst);
        debug_assert!(was, "a directory use ends once");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_within_a_process_and_exclusive_per_job() {
        let dir = std::env::temp_dir().join(format!("spate-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = DirLock::acquire(&dir).unwrap();
        let b = DirLock::acquire(&dir).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one lock per directory and process");
        let pid: u32 = std::fs::read_to_string(dir.join(LOCK_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
        let first = a.begin_use().unwrap();
        assert!(matches!(b.begin_use(), Err(LockError::InUse { .. })));
        drop(first);
        let again = b.begin_use().unwrap();
        drop(again);
        // A second open file description of the same file is refused, as
        // another process's would be.
        let other = File::open(dir.join(LOCK_FILE)).unwrap();
        // SAFETY: `flock` on a descriptor this test owns.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(rc, 0, "the lock is exclusive");
        drop((a, b));
        // SAFETY: as above.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "released when the last holder drops");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
