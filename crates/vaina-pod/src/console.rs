//! The OCI console socket: with `process.terminal`, the runtime (`create --console-socket`
//! or `exec --tty --console-socket`) creates the pseudo-terminal inside the container and
//! sends its master side over a unix socket (SCM_RIGHTS). Used by the supervisor for TTY
//! containers and by the daemon for TTY execs.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// Takes the terminal's master side out of the runtime's SCM_RIGHTS message on `conn`.
pub fn recv_fd(conn: &UnixStream) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut got = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed these descriptors for us; nothing else
                // owns them. The first is kept, any other is closed.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    got.ok_or_else(|| io::Error::other("no terminal descriptor in the console socket message"))
}

/// Sets the terminal size (`TIOCSWINSZ`) on a terminal's master side.
pub fn set_size(fd: &impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A console socket waited on by a thread, so that an event loop is never blocked by a
/// runtime that is slow (or fails before connecting).
#[derive(Debug)]
pub struct ConsoleReceiver {
    path: PathBuf,
    /// What the runtime is given: `path`, or `/proc/<pid>/fd/<dir>/<name>` when `path`
    /// is too long for a socket address.
    connect_path: PathBuf,
    /// Keeps `connect_path` valid.
    _dir: Option<std::fs::File>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<OwnedFd>>>,
}

impl ConsoleReceiver {
    /// Binds `path` (any length: long paths go through /proc/self/fd) and waits up to
    /// `timeout` for the runtime's descriptor.
    pub fn listen(path: &Path, timeout: Duration) -> io::Result<ConsoleReceiver> {
        let _ = std::fs::remove_file(path);
        let (connect_path, dir) = if path.as_os_str().len() < 100 {
            (path.to_path_buf(), None)
        } else {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let name = path
                .file_name()
                .ok_or_else(|| io::Error::other("console socket path has no file name"))?;
            let dir = std::fs::File::open(parent)?;
            let short = PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                dir.as_raw_fd()
            ))
            .join(name);
            (short, Some(dir))
        };
        let listener = UnixListener::bind(&connect_path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || wait(listener, &flag, Instant::now() + timeout))?;
        Ok(ConsoleReceiver {
            path: path.to_path_buf(),
            connect_path,
            _dir: dir,
            stop,
            thread: Some(thread),
        })
    }

    /// The path to give the runtime (`--console-socket`).
    pub fn connect_path(&self) -> &Path {
        &self.connect_path
    }

    /// Waits for the descriptor (or the timeout given to `listen`).
    pub fn wait(mut self) -> io::Result<OwnedFd> {
        let r = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("console socket thread failed")),
        };
        let _ = std::fs::remove_file(&self.path);
        r
    }

    /// The descriptor, if the runtime sent one (call once the runtime has exited: it has
    /// sent it by then, or never will).
    pub fn finish(mut self) -> io::Result<OwnedFd> {
        self.stop.store(true, Ordering::Relaxed);
        let r = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("console socket thread failed")),
        };
        let _ = std::fs::remove_file(&self.path);
        r
    }
}

impl Drop for ConsoleReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn wait(listener: UnixListener, stop: &AtomicBool, deadline: Instant) -> io::Result<OwnedFd> {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                return recv_fd(&conn);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the OCI runtime did not connect to the console socket",
            ));
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(50u8));
    }
}
