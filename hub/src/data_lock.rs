//! One hub per data directory: an advisory lock (`flock`) on `hub.lock` in the directory, taken
//! before the hub touches anything else there (workload sockets, database, certificates) and held
//! for as long as the hub runs. A second hub on the same directory is refused at once and told
//! who holds it, instead of taking over the first one's workload sockets.
//!
//! The lock is the kernel's, so it goes with the process however it ends (a crash, `kill -9`):
//! no stale lock is ever left to clean up. The pid in the file is only for the message.
//!
//! Before the lock, [`create`] makes sure the directory is one: a directory, and this user's.
//!
//! A leaf: depends on nothing else of the hub.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "hub.lock";

/// Why the data directory could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "the data directory {} is in use by another edgetwin hub ({}); stop that hub or \
         give this one another --data-dir",
        dir.display(),
        holder.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file (`None` if unreadable).
        holder: Option<u32>,
    },
    /// The path is a file (or something else that is not a directory).
    #[error(
        "the data directory {} is a file, not a directory: remove it or choose another \
         --data-dir",
        dir.display()
    )]
    NotADirectory {
        /// The data directory.
        dir: PathBuf,
    },
    /// The directory belongs to another user: the hub could not make it private, and would leave
    /// files of its own in someone else's directory.
    #[error(
        "the data directory {} belongs to another user (uid {owner}; this hub runs as uid {me}): \
         the hub keeps its keys there and makes it private to its own user; choose a directory \
         of your own with --data-dir, or run as that user",
        dir.display()
    )]
    NotOurs {
        /// The data directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// The directory could not be created or examined.
    #[error("cannot create the data directory {}: {source}", dir.display())]
    Create {
        /// The data directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock the data directory {}: {source}", dir.display())]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Creates `dir` (and its parents) unless it exists, and checks that it is a directory of this
/// user (any, for root): a file, or another user's directory, is one clear line instead of "File exists" or
/// "Operation not permitted" later.
pub fn create(dir: &Path) -> Result<(), LockError> {
    use std::os::unix::fs::MetadataExt;
    let not_a_directory = || LockError::NotADirectory {
        dir: dir.to_owned(),
    };
    if let Err(source) = std::fs::create_dir_all(dir) {
        return Err(match dir.exists() && !dir.is_dir() {
            true => not_a_directory(),
            false => LockError::Create {
                dir: dir.to_owned(),
                source,
            },
        });
    }
    let metadata = std::fs::metadata(dir).map_err(|source| LockError::Create {
        dir: dir.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(not_a_directory());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // Root may make any directory private (`sudo edgetwin hub` for port 443 on a directory an
    // earlier unprivileged run made), as it always could.
    if metadata.uid() != me && me != 0 {
        return Err(LockError::NotOurs {
            dir: dir.to_owned(),
            owner: metadata.uid(),
            me,
        });
    }
    Ok(())
}

/// The held lock; dropping it (closing the file) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    /// The open lock file: the `flock` lives as long as this descriptor.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist) without waiting, and writes our pid in it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; it does not outlive `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    holder: text.trim().parse().ok(),
                });
            }
            return Err(io(error));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_naming_the_holder_until_the_first_is_dropped()
    {
        let dir = std::env::temp_dir().join(format!("edgetwin-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DataDirLock::acquire(&dir).unwrap();
        let error = DataDirLock::acquire(&dir).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.display().to_string()), "{text}");
        drop(first);
        DataDirLock::acquire(&dir).expect("free again once the first is dropped");
        let _ = std::fs::remove_dir_all(dir);
    }
}
