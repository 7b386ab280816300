//! Network namespaces as file descriptors.
//!
//! A namespace lives as long as something holds it: a process inside, an open fd, or a bind
//! mount of its nsfs file. vaina holds pods' namespaces with bind mounts (`pin`) so they
//! outlive the daemon; tests hold them with fds so nothing is left on the filesystem.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("cannot {op} network namespace")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} network namespace at {path}")]
    Mount {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("thread running inside a network namespace panicked")]
    ThreadPanicked,
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Opens the namespace at `path` (a bind mount, `/proc/PID/ns/net`, or `/proc/PID/fd/N`).
    /// A missing path is [`NetnsError::NotFound`] so that teardown can treat it as done.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound { path: path.into() },
            _ => NetnsError::Open {
                path: path.into(),
                source,
            },
        })?;
        let ns = Netns { fd: file.into() };
        if !ns.is_netns() {
            return Err(NetnsError::NotNetns { path: path.into() });
        }
        Ok(ns)
    }

    /// Creates a new, empty network namespace (only `lo`, down). The namespace lives while
    /// the returned handle (or a pin of it) does.
    pub fn create() -> Result<Netns> {
        run_on_thread(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Sys {
                op: "unshare",
                source: e.into(),
            })?;
            Self::current()
        })
    }

    /// Runs `f` inside this namespace on a new OS thread that exits afterwards, so no
    /// thread of the caller (and no async worker) ever changes namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd.as_fd();
        run_on_thread(|| {
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Sys {
                op: "enter",
                source: e.into(),
            })?;
            Ok(f())
        })
    }

    /// A path other processes can open to reach this namespace while the handle lives:
    /// `/proc/<our pid>/fd/<fd>`. Used by tests, where a bind mount would be a leak risk.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// Keeps the namespace alive at `path` with a bind mount, as `ip netns add` does.
    /// The file is created if missing; on failure nothing is left at `path`.
    pub fn pin(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mount_err = |op, source| NetnsError::Mount {
            op,
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| mount_err("create directory for", e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| mount_err("create pin file for", e))?;
        let source = self.fd_path();
        if let Err(e) = nix::mount::mount(
            Some(&source),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(path);
            return Err(mount_err("bind mount", e.into()));
        }
        Ok(())
    }

    /// Removes a pin made by [`Netns::pin`]: lazy unmount, then unlink. Missing is success,
    /// so teardown can be repeated.
    pub fn unpin(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => {
                return Err(NetnsError::Mount {
                    op: "unmount",
                    path: path.into(),
                    source: e.into(),
                });
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetnsError::Mount {
                op: "remove pin of",
                path: path.into(),
                source: e,
            }),
        }
    }

    /// True when both handles name the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &Netns) -> bool {
        match (
            nix::sys::stat::fstat(&self.fd),
            nix::sys::stat::fstat(&other.fd),
        ) {
            (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
            _ => false,
        }
    }

    /// The namespace's inode number, as `ip netns identify` and `lsns` show it.
    pub fn inode(&self) -> u64 {
        nix::sys::stat::fstat(&self.fd)
            .map(|s| s.st_ino)
            .unwrap_or(0)
    }

    fn is_netns(&self) -> bool {
        is_netns_fd(self.fd.as_raw_fd())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// True when `fd` is a network namespace. Asks the kernel (`NS_GET_NSTYPE`): the fd's
/// `/proc/self/fd` link text is no witness, since for a bind-mounted namespace (a pin) it
/// shows the mount path rather than `net:[…]`.
pub fn is_netns_fd(fd: std::os::fd::RawFd) -> bool {
    // NS_GET_NSTYPE = _IO(0xb7, 0x3), Linux 4.11+.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl reads no memory of ours; a non-nsfs fd gets an error back.
    let t = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    t == libc::CLONE_NEWNET
}

/// Runs `f` on a fresh OS thread and returns its result. A thread that changed namespace is
/// never reused, so there is nothing to restore.
fn run_on_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| s.spawn(f).join()).map_err(|_| NetnsError::ThreadPanicked)?
}
