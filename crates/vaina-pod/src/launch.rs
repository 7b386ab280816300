//! Starting a pod supervisor: `vaina-pod --id ID --dir DIR [--netns PATH] [--hostname NAME]
//! [--uts] [--ipc] [--pid]`.
//!
//! The launching process (started by the daemon, stdio on /dev/null) joins or creates the
//! pod's namespaces, then forks the long-lived supervisor and waits on a pipe until the
//! supervisor is ready (socket bound, pid file written) or has failed. It exits 0 only in the
//! first case; in the second it prints the reason and exits 1 once the supervisor has undone
//! its setup and exited, so a failed launch leaves no socket, pid file or process.
//!
//! Namespaces are changed on the launcher's only thread, before the fork. This is the
//! exception to "setns only on a throwaway thread": the whole process is meant to live in the
//! pod's namespaces, and nothing else runs in it.
//!
//! With `--pid`, the pod's PID namespace gets a separate init (PID 1, forked by the
//! supervisor). The supervisor itself stays in the daemon's PID namespace: the OCI runtime it
//! runs records PIDs as seen from its own namespace, and the daemon (which runs `start`,
//! `kill`, `delete` itself) must see the same PIDs. A container's init still becomes the
//! supervisor's child: the runtime's process that forks it lives in the daemon's namespace,
//! and the kernel hands orphans to the nearest subreaper at that level.

use std::ffi::{CStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, setsid};

use crate::protocol::{self, Namespaces, PROTOCOL_VERSION, PodInfo};
use crate::supervisor::Supervisor;

pub const USAGE: &str =
    "usage: vaina-pod --id ID --dir DIR [--netns PATH] [--hostname NAME] [--uts] [--ipc] [--pid]";

/// Longest hostname the kernel accepts (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The pod sandbox id (names the supervisor in errors).
    pub id: String,
    /// The pod's state directory: socket, pid file, `containers/`.
    pub dir: PathBuf,
    /// A network namespace to join (created and pinned by the daemon); none: the daemon's.
    pub netns: Option<PathBuf>,
    /// Hostname to set in the new UTS namespace (needs `uts`).
    pub hostname: Option<String>,
    /// New UTS namespace.
    pub uts: bool,
    /// New IPC namespace.
    pub ipc: bool,
    /// New PID namespace, with its own init.
    pub pid: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("help requested")]
    Help,
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("invalid pod id {0:?}: use letters, digits, '_', '-', '.'")]
    InvalidId(String),
    #[error("--hostname needs --uts (it would rename the node)")]
    HostnameWithoutUts,
    #[error("invalid hostname {0:?}: 1 to 64 bytes, no NUL")]
    InvalidHostname(String),
}

impl Options {
    /// Parses the arguments after the program name. Values come as `--flag VALUE` or
    /// `--flag=VALUE`.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Options, UsageError> {
        let mut opts = Options::default();
        let mut id = None;
        let mut dir = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg.to_string_lossy().into_owned();
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &'static str| -> Result<OsString, UsageError> {
                match &inline {
                    Some(v) => Ok(v.into()),
                    None => args.next().ok_or(UsageError::MissingValue(name)),
                }
            };
            match flag.as_str() {
                "--id" => id = Some(value("--id")?.to_string_lossy().into_owned()),
                "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
                "--netns" => opts.netns = Some(PathBuf::from(value("--netns")?)),
                "--hostname" => {
                    opts.hostname = Some(value("--hostname")?.to_string_lossy().into_owned())
                }
                "--uts" if inline.is_none() => opts.uts = true,
                "--ipc" if inline.is_none() => opts.ipc = true,
                "--pid" if inline.is_none() => opts.pid = true,
                "-h" | "--help" => return Err(UsageError::Help),
                _ => return Err(UsageError::Unknown(arg)),
            }
        }
        opts.id = id.ok_or(UsageError::Missing("--id"))?;
        opts.dir = dir.ok_or(UsageError::Missing("--dir"))?;
        if !protocol::valid_id(&opts.id) {
            return Err(UsageError::InvalidId(opts.id));
        }
        if let Some(h) = &opts.hostname {
            if !opts.uts {
                return Err(UsageError::HostnameWithoutUts);
            }
            if h.is_empty() || h.len() > HOST_NAME_MAX || h.contains('\0') {
                return Err(UsageError::InvalidHostname(h.clone()));
            }
        }
        Ok(opts)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot open network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("cannot {op}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot set hostname {name:?}")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The supervisor's own report (it crossed a pipe, so it is text).
    #[error("supervisor setup failed: {0}")]
    Supervisor(String),
    #[error("supervisor exited during setup without a reason ({0})")]
    SupervisorDied(String),
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> LaunchError {
    move |e| LaunchError::Sys {
        op,
        source: e.into(),
    }
}

/// `e` and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// Sets up the namespaces and starts the supervisor. Returns in the launching process only:
/// the forked supervisor never returns from here (it exits the process when it stops).
pub fn run(opts: &Options) -> Result<(), LaunchError> {
    if let Some(path) = &opts.netns {
        enter_netns(path)?;
    }
    if opts.uts {
        unshare(CloneFlags::CLONE_NEWUTS).map_err(sys("create UTS namespace"))?;
        if let Some(name) = &opts.hostname {
            nix::unistd::sethostname(name).map_err(|e| LaunchError::Hostname {
                name: name.clone(),
                source: e.into(),
            })?;
        }
    }
    if opts.ipc {
        unshare(CloneFlags::CLONE_NEWIPC).map_err(sys("create IPC namespace"))?;
    }
    let (ready_r, ready_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create readiness pipe"))?;
    // SAFETY: the launcher has a single thread, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(sys("fork the supervisor"))? {
        ForkResult::Child => {
            drop(ready_r);
            let code = supervise(opts, ready_w);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            wait_ready(ready_r, child)
        }
    }
}

fn enter_netns(path: &Path) -> Result<(), LaunchError> {
    let ns = File::open(path).map_err(|source| LaunchError::OpenNetns {
        path: path.into(),
        source,
    })?;
    // NS_GET_NSTYPE (_IO(0xb7, 0x3)): the kernel's word. The fd's /proc link text is no
    // witness: for a bind-mounted namespace (the daemon's pin) it is the mount path.
    // (vaina-net has the same check; the supervisor stays free of its dependencies.)
    // SAFETY: the ioctl touches no memory of ours; a non-nsfs fd gets an error.
    let ns_type = unsafe { libc::ioctl(ns.as_raw_fd(), 0xb703 as _) };
    if ns_type != libc::CLONE_NEWNET {
        return Err(LaunchError::NotNetns { path: path.into() });
    }
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(sys("enter network namespace"))
}

/// Waits for the supervisor's "ok", or for its error and exit.
fn wait_ready(ready: OwnedFd, child: Pid) -> Result<(), LaunchError> {
    let mut msg = Vec::new();
    // EOF comes when the supervisor closes its end (after "ok", or when it exits).
    let _ = File::from(ready).read_to_end(&mut msg);
    if msg == b"ok\n" {
        return Ok(());
    }
    let status = waitpid(child, None);
    let text = String::from_utf8_lossy(&msg).trim().to_string();
    if text.is_empty() {
        let how = match status {
            Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("wait failed: {e}"),
        };
        return Err(LaunchError::SupervisorDied(how));
    }
    Err(LaunchError::Supervisor(text))
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot {op}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another supervisor is serving {path}")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket")]
    NotSocket { path: PathBuf },
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write pid file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn setup_sys(op: &'static str) -> impl FnOnce(nix::Error) -> SetupError {
    move |e| SetupError::Sys {
        op,
        source: e.into(),
    }
}

/// What a failed setup must undo, in reverse order of creation.
#[derive(Default)]
struct Undo {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    init: Option<Pid>,
}

impl Undo {
    fn run(self) {
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
        if let Some(pid) = self.init {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        // Only directories this setup created, and only if still empty.
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The supervisor process: sets up, reports to the launcher, runs. Returns the exit code.
fn supervise(opts: &Options, ready: OwnedFd) -> i32 {
    let mut undo = Undo::default();
    let ready_fd = ready.as_raw_fd();
    let mut ready = File::from(ready);
    match setup(opts, &mut undo, ready_fd) {
        Ok(sup) => {
            // If the launcher is gone (killed), the pod still exists; the daemon finds it by
            // its pid file and socket.
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            sup.run()
        }
        Err(e) => {
            undo.run();
            let _ = ready.write_all(format!("{}\n", error_chain(&e)).as_bytes());
            1
        }
    }
}

fn setup(opts: &Options, undo: &mut Undo, ready: RawFd) -> Result<Supervisor, SetupError> {
    setsid().map_err(setup_sys("start a new session"))?;
    detach_stdio()?;
    close_inherited_fds(ready);
    std::env::set_current_dir("/").map_err(|source| SetupError::Sys {
        op: "change directory to /",
        source,
    })?;
    // Blocked before any fork so that the pod init inherits the mask it sigwaits with, and
    // so that no SIGCHLD is lost before the signalfd exists.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(setup_sys("block signals"))?;
    prctl::set_child_subreaper(true).map_err(setup_sys("become a child subreaper"))?;

    let init_pid = if opts.pid {
        Some(start_pid_namespace(undo)?)
    } else {
        None
    };

    create_dir(&opts.dir, undo)?;
    create_dir(&protocol::containers_dir(&opts.dir), undo)?;
    let listener = bind_socket(&protocol::socket_path(&opts.dir), undo)?;
    write_pid_file(&opts.dir, undo)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(setup_sys("create signalfd"))?;

    let me = std::process::id();
    let ns = |kind: &str, pid: u32| Some(PathBuf::from(format!("/proc/{pid}/ns/{kind}")));
    let info = PodInfo {
        protocol: PROTOCOL_VERSION,
        pid: me,
        init_pid: init_pid.map(|p| p.as_raw() as u32),
        namespaces: Namespaces {
            network: opts.netns.as_ref().and_then(|_| ns("net", me)),
            uts: opts.uts.then(|| ns("uts", me)).flatten(),
            ipc: opts.ipc.then(|| ns("ipc", me)).flatten(),
            pid: init_pid.and_then(|p| ns("pid", p.as_raw() as u32)),
        },
    };
    Ok(Supervisor::new(
        opts.dir.clone(),
        info,
        listener,
        signals,
        init_pid,
    ))
}

/// The supervisor must not hold the launcher's stdio: a caller reading the launcher's
/// output would wait for the supervisor's end.
fn detach_stdio() -> Result<(), SetupError> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| SetupError::Sys {
            op: "open /dev/null",
            source,
        })?;
    nix::unistd::dup2_stdin(&null).map_err(setup_sys("redirect stdin"))?;
    nix::unistd::dup2_stdout(&null).map_err(setup_sys("redirect stdout"))?;
    nix::unistd::dup2_stderr(&null).map_err(setup_sys("redirect stderr"))?;
    Ok(())
}

/// Closes every fd but stdio and `keep`. A long-lived process must not hold what its
/// launcher's caller leaked to it without `O_CLOEXEC` (the end of someone's pipe would never
/// see EOF).
fn close_inherited_fds(keep: RawFd) {
    let keep = keep as u32;
    if keep > 3 {
        close_range(3, keep - 1);
    }
    close_range(keep.max(2) + 1, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: closes fd numbers only; callers pass ranges nothing in this process uses.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory's own fd may be among them and is gone already.
        unsafe { libc::close(fd as i32) };
    }
}

/// Creates the pod's PID namespace and its init; the supervisor's later children (the OCI
/// runtime) are born in the daemon's PID namespace again.
fn start_pid_namespace(undo: &mut Undo) -> Result<Pid, SetupError> {
    let ours = File::open("/proc/self/ns/pid").map_err(|source| SetupError::Sys {
        op: "open own PID namespace",
        source,
    })?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(setup_sys("create PID namespace"))?;
    // SAFETY: the supervisor has a single thread.
    match unsafe { fork() }.map_err(setup_sys("fork the PID namespace init"))? {
        ForkResult::Child => pid_namespace_init(),
        ForkResult::Parent { child } => {
            undo.init = Some(child);
            // Back to our own namespace for children: allowed, it is our active one.
            setns(&ours, CloneFlags::CLONE_NEWPID)
                .map_err(setup_sys("return to own PID namespace"))?;
            Ok(child)
        }
    }
}

/// PID 1 of the pod's PID namespace: reaps the pod's orphans, nothing else. It dies with the
/// supervisor (parent-death signal), and the kernel then kills every process in the
/// namespace. SIGCHLD is blocked (inherited) and waited for synchronously.
fn pid_namespace_init() -> ! {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    const NAME: &CStr = c"vaina-pod-init";
    let _ = prctl::set_name(NAME);
    // Drop every inherited fd (readiness pipe): only the supervisor may hold them.
    close_range(3, u32::MAX);
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    loop {
        let _ = chld.wait();
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

fn create_dir(dir: &Path, undo: &mut Undo) -> Result<(), SetupError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(|source| SetupError::Dir {
        path: dir.into(),
        source,
    })?;
    undo.dirs.extend(missing.into_iter().rev());
    Ok(())
}

/// Binds the socket with mode 0600. A socket left by a dead supervisor is replaced; a live
/// one (it accepts connections) is an error.
fn bind_socket(path: &Path, undo: &mut Undo) -> Result<UnixListener, SetupError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(SetupError::NotSocket { path: path.into() });
        }
        Ok(_) => {
            if protocol::with_socket_path(path, |p| UnixStream::connect(p)).is_ok() {
                return Err(SetupError::InUse { path: path.into() });
            }
            std::fs::remove_file(path).map_err(|source| SetupError::Bind {
                path: path.into(),
                source,
            })?;
        }
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = protocol::with_socket_path(path, |p| UnixListener::bind(p));
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|source| SetupError::Bind {
        path: path.into(),
        source,
    })?;
    undo.files.push(path.into());
    listener
        .set_nonblocking(true)
        .map_err(|source| SetupError::Bind {
            path: path.into(),
            source,
        })?;
    Ok(listener)
}

/// `DIR/supervisor.pid`, written to a temp file and renamed so readers never see half.
fn write_pid_file(dir: &Path, undo: &mut Undo) -> Result<(), SetupError> {
    let path = protocol::pid_path(dir);
    let tmp = dir.join(".supervisor.pid.tmp");
    let err = |source| SetupError::PidFile {
        path: path.clone(),
        source,
    };
    std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(err)?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    undo.files.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, UsageError> {
        Options::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_all_flags() {
        let o = parse(&[
            "--id",
            "p1",
            "--dir=/run/p1",
            "--netns",
            "/run/netns/p1",
            "--uts",
            "--hostname",
            "web",
            "--ipc",
            "--pid",
        ])
        .unwrap();
        assert_eq!(
            o,
            Options {
                id: "p1".into(),
                dir: "/run/p1".into(),
                netns: Some("/run/netns/p1".into()),
                hostname: Some("web".into()),
                uts: true,
                ipc: true,
                pid: true,
            }
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert_eq!(parse(&["--dir", "/d"]), Err(UsageError::Missing("--id")));
        assert_eq!(parse(&["--id", "p"]), Err(UsageError::Missing("--dir")));
        assert_eq!(parse(&["--id"]), Err(UsageError::MissingValue("--id")));
        assert_eq!(
            parse(&["--id", "p", "--dir", "/d", "--hostname", "h"]),
            Err(UsageError::HostnameWithoutUts)
        );
        assert_eq!(
            parse(&["--id", "p", "--dir", "/d", "--bogus"]),
            Err(UsageError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(&["--id", "p", "--dir", "/d", "--pid=1"]),
            Err(UsageError::Unknown("--pid=1".into()))
        );
        assert_eq!(
            parse(&["--id", "../p", "--dir", "/d"]),
            Err(UsageError::InvalidId("../p".into()))
        );
        let long = "h".repeat(65);
        assert_eq!(
            parse(&["--id", "p", "--dir", "/d", "--uts", "--hostname", &long]),
            Err(UsageError::InvalidHostname(long.clone()))
        );
    }
}
