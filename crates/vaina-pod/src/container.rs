//! One container as the supervisor sees it: the OCI runtime's `create` (run asynchronously,
//! finished when the supervisor reaps the runtime), the container's output pipes and log file,
//! and its exit record.
//!
//! The container's stdout/stderr are pipes whose read ends the supervisor keeps. The OCI
//! runtime hands its own stdio to the container, so the same pipes are the runtime's
//! stdout/stderr while `create` runs: what arrives on them before `create` exits is the
//! runtime's output (the container process waits for `start` and has printed nothing), and is
//! kept for the error message instead of going to the log. The runtime's `--log` file (JSON)
//! is read too: runc reports its errors there, crun mostly on stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde::Deserialize;

use crate::cri_log::{LineFramer, Stream};
use crate::protocol::{self, ContainerState, ErrorKind, ExitRecord, Response};
use crate::timefmt::rfc3339_nano;

/// How long the runtime's `create` may take before the supervisor kills it.
pub(crate) const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a cleanup `delete --force` may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// Runtime output kept for an error message.
const MAX_RUNTIME_OUTPUT: usize = 8 * 1024;

/// The fields of a `Create` request.
#[derive(Debug)]
pub(crate) struct CreateSpec {
    pub id: String,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

impl CreateSpec {
    /// Checks what the supervisor can check before running anything.
    pub fn validate(&self) -> Result<(), Response> {
        let invalid = |m: String| Err(Response::error(ErrorKind::InvalidRequest, m));
        if !protocol::valid_id(&self.id) {
            return invalid(format!(
                "invalid container id {:?}: use 1 to 128 letters, digits, '_', '-', '.', not starting with '.' or '-'",
                self.id
            ));
        }
        for (name, path) in [
            ("runtime_root", &self.runtime_root),
            ("bundle", &self.bundle),
            ("log_path", &self.log_path),
        ] {
            if !path.is_absolute() {
                return invalid(format!(
                    "{name} of container {} must be an absolute path, got {path:?}",
                    self.id
                ));
            }
        }
        // A bare name is looked up in PATH; anything else must not depend on our cwd.
        if self.runtime.components().count() != 1 && !self.runtime.is_absolute() {
            return invalid(format!(
                "runtime of container {} must be an absolute path or a name in PATH, got {:?}",
                self.id, self.runtime
            ));
        }
        Ok(())
    }
}

/// The read end of a container's stdout or stderr pipe (non-blocking).
#[derive(Debug)]
pub(crate) struct Pipe {
    pub file: File,
    pub framer: LineFramer,
}

pub(crate) enum ReadOutcome {
    Data(usize),
    WouldBlock,
    /// End of stream, or an error that ends it.
    Eof,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: Stream) -> io::Result<Pipe> {
        set_nonblocking(&fd)?;
        Ok(Pipe {
            file: File::from(fd),
            framer: LineFramer::new(stream),
        })
    }

    pub fn read(&mut self, buf: &mut [u8]) -> ReadOutcome {
        loop {
            return match self.file.read(buf) {
                Ok(0) => ReadOutcome::Eof,
                Ok(n) => ReadOutcome::Data(n),
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) if e.kind() == IoKind::WouldBlock => ReadOutcome::WouldBlock,
                Err(_) => ReadOutcome::Eof,
            };
        }
    }
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        fd.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// A container's CRI log file, opened in append mode. Write errors (disk full) lose the
/// records but never stop the supervisor; they are counted.
#[derive(Debug)]
pub(crate) struct LogFile {
    pub path: PathBuf,
    file: Option<File>,
    pub lost_writes: u64,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Some(open_log(path)?),
            lost_writes: 0,
        })
    }

    /// Opens the file at the path again; on failure the old file stays in use. A log that
    /// was closed (both streams ended) stays closed.
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            self.file = Some(open_log(&self.path)?);
        }
        Ok(())
    }

    pub fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let written = match &mut self.file {
            Some(f) => f.write_all(data).is_ok(),
            None => false,
        };
        if !written {
            self.lost_writes += 1;
        }
    }

    pub fn close(&mut self) {
        self.file = None;
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit {
    pub code: i32,
    pub signal: Option<i32>,
    pub at: SystemTime,
}

impl Exit {
    /// The exit of a terminated child; `None` for stop/continue notifications.
    pub fn from_status(status: WaitStatus) -> Option<Exit> {
        let at = SystemTime::now();
        match status {
            WaitStatus::Exited(_, code) => Some(Exit {
                code,
                signal: None,
                at,
            }),
            WaitStatus::Signaled(_, sig, _) => Some(Exit {
                code: 128 + sig as i32,
                signal: Some(sig as i32),
                at,
            }),
            _ => None,
        }
    }
}

/// A container whose `create` succeeded.
#[derive(Debug)]
pub(crate) struct Container {
    pub serial: u64,
    pub id: String,
    pub pid: Pid,
    pub created_at: SystemTime,
    pub log: LogFile,
    pub stdout: Option<Pipe>,
    pub stderr: Option<Pipe>,
    /// Write end of the container's stdin (the terminal's master side with a TTY), kept
    /// for attach; closed when the container exits. Non-blocking.
    pub stdin: Option<File>,
    /// Attach input the container has not read yet.
    pub stdin_pending: Vec<u8>,
    /// Close stdin once the pending input is written (`stdin_once` after an attach).
    pub stdin_closing: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub exit: Option<Exit>,
}

impl Container {
    pub fn pipe_mut(&mut self, stream: Stream) -> &mut Option<Pipe> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    pub fn state(&self) -> ContainerState {
        ContainerState {
            id: self.id.clone(),
            pid: self.pid.as_raw() as u32,
            created_at: rfc3339_nano(self.created_at),
            exited: self.exit.is_some(),
            exit_code: self.exit.map(|e| e.code),
            signal: self.exit.and_then(|e| e.signal),
            finished_at: self.exit.map(|e| rfc3339_nano(e.at)),
            log_write_errors: self.log.lost_writes,
        }
    }

    pub fn exit_record(&self, exit: &Exit) -> ExitRecord {
        ExitRecord {
            id: self.id.clone(),
            pid: self.pid.as_raw() as u32,
            exit_code: exit.code,
            signal: exit.signal,
            finished_at: rfc3339_nano(exit.at),
        }
    }
}

/// A `create` in progress: the runtime runs, the requesting connection waits.
#[derive(Debug)]
pub(crate) struct Creating {
    pub serial: u64,
    /// The connection to answer (it may be gone by then).
    pub conn: u64,
    pub spec: CreateSpec,
    pub log: LogFile,
    pub stdout: Option<Pipe>,
    pub stderr: Option<Pipe>,
    pub stdin: Option<File>,
    /// Where the runtime sends a TTY container's terminal.
    pub console: Option<crate::console::ConsoleReceiver>,
    pub runtime_pid: Pid,
    pub started: Instant,
    pub deadline: Instant,
    pub timed_out: bool,
    /// What the runtime printed on the container's pipes (bounded).
    pub output: Vec<u8>,
}

impl Creating {
    pub fn pipe_mut(&mut self, stream: Stream) -> &mut Option<Pipe> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    pub fn keep_output(&mut self, data: &[u8]) {
        let room = MAX_RUNTIME_OUTPUT.saturating_sub(self.output.len());
        self.output.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn runtime_log_path(&self, dir: &Path) -> PathBuf {
        runtime_log_path(dir, &self.spec.id)
    }
}

fn runtime_log_path(dir: &Path, id: &str) -> PathBuf {
    protocol::containers_dir(dir).join(format!("{id}.runtime.log"))
}

/// Opens the log, makes the pipes and starts `<runtime> create`. Nothing is left behind on
/// error (the log file may have been created, empty).
pub(crate) fn spawn_create(
    dir: &Path,
    serial: u64,
    conn: u64,
    spec: CreateSpec,
) -> Result<Creating, Response> {
    let id = &spec.id;
    let log = LogFile::open(&spec.log_path).map_err(|e| {
        Response::error(
            ErrorKind::Io,
            format!(
                "cannot open log file {} of container {id}: {e}",
                spec.log_path.display()
            ),
        )
    })?;
    let io_err = |what: &str, e: io::Error| {
        Response::error(
            ErrorKind::Io,
            format!("cannot {what} for container {id}: {e}"),
        )
    };
    let (out_r, out_w) = cloexec_pipe().map_err(|e| io_err("create stdout pipe", e))?;
    let (err_r, err_w) = cloexec_pipe().map_err(|e| io_err("create stderr pipe", e))?;
    let (stdin_child, stdin_keep) = if spec.stdin {
        let (r, w) = cloexec_pipe().map_err(|e| io_err("create stdin pipe", e))?;
        (Stdio::from(r), Some(File::from(w)))
    } else {
        (Stdio::null(), None)
    };
    let stdout = Pipe::new(out_r, Stream::Stdout).map_err(|e| io_err("set up stdout pipe", e))?;
    let stderr = Pipe::new(err_r, Stream::Stderr).map_err(|e| io_err("set up stderr pipe", e))?;

    let pid_file = protocol::container_pid_path(dir, id);
    let runtime_log = runtime_log_path(dir, id);
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&runtime_log);
    let console = if spec.tty {
        let path = protocol::containers_dir(dir).join(format!("{id}.console"));
        Some(
            crate::console::ConsoleReceiver::listen(&path, CREATE_TIMEOUT)
                .map_err(|e| io_err("listen on the console socket", e))?,
        )
    } else {
        None
    };
    let mut cmd = crate::oci::command(&spec.runtime);
    cmd.arg("--root")
        .arg(&spec.runtime_root)
        .arg("--log")
        .arg(&runtime_log)
        .arg("--log-format")
        .arg("json")
        .arg("create");
    if let Some(c) = &console {
        cmd.arg("--console-socket").arg(c.connect_path());
    }
    let child = cmd
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdin(stdin_child)
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .spawn()
        .map_err(|e| {
            Response::error(
                ErrorKind::Runtime,
                format!(
                    "cannot run OCI runtime {} for container {id}: {e}",
                    spec.runtime.display()
                ),
            )
        })?;
    // The supervisor reaps its children with waitpid(-1); dropping `Child` neither waits nor
    // kills.
    let runtime_pid = Pid::from_raw(child.id() as i32);
    drop(child);
    let started = Instant::now();
    Ok(Creating {
        serial,
        conn,
        spec,
        log,
        stdout: Some(stdout),
        stderr: Some(stderr),
        stdin: stdin_keep,
        console,
        runtime_pid,
        started,
        deadline: started + CREATE_TIMEOUT,
        timed_out: false,
        output: Vec::new(),
    })
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// What became of a container's init by the time `create` finished.
pub(crate) enum InitState {
    /// Alive (or a zombie not yet reaped), and our child.
    Ours,
    /// Already reaped by the supervisor, with this exit.
    Exited(Exit),
}

/// Finishes a `create` whose runtime exited with `status`: reads the pid file and checks that
/// the container's init is now our child. `reaped` looks up exits the supervisor collected
/// for pids it did not know yet (an init that died before `create` finished). On failure,
/// the container is killed and deleted, and the error names the runtime's output.
pub(crate) fn finish_create(
    dir: &Path,
    mut c: Creating,
    status: WaitStatus,
    reaped: impl Fn(Pid, Instant) -> Option<Exit>,
) -> Result<(Container, Option<Exit>), Response> {
    let id = c.spec.id.clone();
    let runtime_log = c.runtime_log_path(dir);
    let runtime_errors = read_runtime_log(&runtime_log);
    let _ = std::fs::remove_file(&runtime_log);
    if !matches!(status, WaitStatus::Exited(_, 0)) {
        let how = match status {
            WaitStatus::Exited(_, code) => format!("exit status {code}"),
            WaitStatus::Signaled(_, sig, _) if c.timed_out => {
                format!("killed ({sig}) after {}s", CREATE_TIMEOUT.as_secs())
            }
            WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
            other => format!("{other:?}"),
        };
        let detail = runtime_message(&runtime_errors, &c.output);
        force_delete(&c.spec, None);
        return Err(Response::error(
            ErrorKind::Runtime,
            format!(
                "{} create of container {id} failed ({how}): {detail}",
                c.spec.runtime.display()
            ),
        ));
    }
    let pid_file = protocol::container_pid_path(dir, &id);
    let pid = match read_pid_file(&pid_file) {
        Ok(pid) => pid,
        Err(e) => {
            force_delete(&c.spec, None);
            return Err(Response::error(
                ErrorKind::Runtime,
                format!(
                    "{} create of container {id} succeeded but its pid file {} is unusable: {e}",
                    c.spec.runtime.display(),
                    pid_file.display()
                ),
            ));
        }
    };
    if let Some(console) = c.console.take() {
        // With a terminal, the container's output and input are the master side; the
        // pipes only carried the runtime's own output.
        let master = match console.finish().and_then(|fd| {
            set_nonblocking(&fd)?;
            Ok(fd)
        }) {
            Ok(fd) => fd,
            Err(e) => {
                force_delete(&c.spec, Some(pid));
                return Err(Response::error(
                    ErrorKind::Runtime,
                    format!("container {id}: no terminal from the runtime: {e}"),
                ));
            }
        };
        let input = master.try_clone().map(File::from);
        match (Pipe::new(master, Stream::Stdout), input) {
            (Ok(out), Ok(input)) => {
                c.stdout = Some(out);
                c.stderr = None;
                c.stdin = Some(input);
            }
            (Err(e), _) | (_, Err(e)) => {
                force_delete(&c.spec, Some(pid));
                return Err(Response::error(
                    ErrorKind::Io,
                    format!("container {id}: terminal: {e}"),
                ));
            }
        }
    } else if let Some(stdin) = &c.stdin {
        let _ = set_nonblocking(stdin);
    }
    let early_exit = match init_state(pid, c.started, reaped) {
        Ok(InitState::Ours) => None,
        Ok(InitState::Exited(exit)) => Some(exit),
        Err(message) => {
            force_delete(&c.spec, Some(pid));
            return Err(Response::error(
                ErrorKind::Runtime,
                format!("container {id}: {message}"),
            ));
        }
    };
    let container = Container {
        serial: c.serial,
        id,
        pid,
        created_at: SystemTime::now(),
        log: c.log,
        stdout: c.stdout.take(),
        stderr: c.stderr.take(),
        stdin: c.stdin.take(),
        stdin_pending: Vec::new(),
        stdin_closing: false,
        stdin_once: c.spec.stdin_once,
        tty: c.spec.tty,
        exit: None,
    };
    Ok((container, early_exit))
}

/// The container's init must be our child, else its exit status would go to someone else.
/// It is, when the runtime's last process that was its parent lived in our PID namespace
/// level: the kernel hands orphans to the nearest subreaper at the orphan's parent's level.
fn init_state(
    pid: Pid,
    since: Instant,
    reaped: impl Fn(Pid, Instant) -> Option<Exit>,
) -> Result<InitState, String> {
    match parent_of(pid) {
        Ok(ppid) if ppid == nix::unistd::getpid() => Ok(InitState::Ours),
        Ok(ppid) => Err(format!(
            "its init {pid} is a child of {ppid}, not of the supervisor, which could not collect its exit status"
        )),
        Err(_) => match reaped(pid, since) {
            Some(exit) => Ok(InitState::Exited(exit)),
            None => Err(format!("its init {pid} is gone")),
        },
    }
}

/// The parent PID from `/proc/PID/stat` (the field after the parenthesised command name,
/// which may itself contain spaces and parentheses).
fn parent_of(pid: Pid) -> io::Result<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(IoKind::InvalidData, "no command name"))?;
    let ppid = after
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(IoKind::InvalidData, "no parent pid"))?;
    Ok(Pid::from_raw(ppid))
}

fn read_pid_file(path: &Path) -> io::Result<Pid> {
    let text = std::fs::read_to_string(path)?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Pid::from_raw(pid)),
        _ => Err(io::Error::new(
            IoKind::InvalidData,
            format!("not a pid: {:?}", text.trim()),
        )),
    }
}

#[derive(Deserialize)]
struct RuntimeLogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The error and warning messages of the runtime's JSON log.
fn read_runtime_log(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<RuntimeLogLine>(l).ok())
        .filter(|l| matches!(l.level.as_str(), "error" | "fatal" | "panic" | "warning"))
        .map(|l| l.msg)
        .filter(|m| !m.is_empty())
        .collect()
}

/// What to tell the daemon about a failed `create`: the runtime's stderr and its log's
/// errors (both, since crun and runc put different things in each), without repeats.
fn runtime_message(log_errors: &[String], output: &[u8]) -> String {
    let output = String::from_utf8_lossy(output);
    let mut parts: Vec<&str> = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !parts.contains(&line) {
            parts.push(line);
        }
    }
    for m in log_errors {
        let m = m.trim();
        if !parts.iter().any(|p| p.contains(m) || m.contains(*p)) {
            parts.push(m);
        }
    }
    if parts.is_empty() {
        "the runtime printed no error".to_string()
    } else {
        parts.join("; ")
    }
}

/// Undoes a `create`: kills the init if known and runs `<runtime> delete --force`. Runs
/// synchronously (bounded by [`DELETE_TIMEOUT`]): it is the rare failure path.
pub(crate) fn force_delete(spec: &CreateSpec, pid: Option<Pid>) {
    if let Some(pid) = pid {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let child = crate::oci::command_without_cgroups(&spec.runtime)
        .arg("--root")
        .arg(&spec.runtime_root)
        .arg("delete")
        .arg("--force")
        .arg(&spec.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = Instant::now() + DELETE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Writes `DIR/containers/ID.exit` atomically (temp file, then rename), so a reader sees the
/// whole record or none.
pub(crate) fn write_exit_record(dir: &Path, record: &ExitRecord) -> io::Result<()> {
    let path = protocol::exit_path(dir, &record.id);
    let tmp = protocol::containers_dir(dir).join(format!(".{}.exit.tmp", record.id));
    let data = serde_json::to_vec(record).map_err(io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes what the supervisor keeps for container `id` under `DIR/containers`.
pub(crate) fn remove_files(dir: &Path, id: &str) {
    for path in [
        protocol::exit_path(dir, id),
        protocol::container_pid_path(dir, id),
        runtime_log_path(dir, id),
    ] {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_reads_past_odd_command_names() {
        let me = nix::unistd::getpid();
        assert_eq!(parent_of(me).unwrap(), nix::unistd::getppid());
    }

    #[test]
    fn runtime_message_merges_stderr_and_log() {
        let log = vec!["runc create failed: chdir /x: no such file".to_string()];
        assert_eq!(
            runtime_message(&log, b"runc create failed: chdir /x: no such file\n"),
            "runc create failed: chdir /x: no such file"
        );
        assert_eq!(
            runtime_message(&[], b"chdir `/x` failed\n\n"),
            "chdir `/x` failed"
        );
        assert_eq!(runtime_message(&[], b""), "the runtime printed no error");
    }

    #[test]
    fn spec_validation_names_the_field() {
        let spec = |id: &str, bundle: &str, runtime: &str| CreateSpec {
            id: id.into(),
            runtime: runtime.into(),
            runtime_root: "/run/r".into(),
            bundle: bundle.into(),
            log_path: "/var/log/x.log".into(),
            stdin: false,
            stdin_once: false,
            tty: false,
        };
        assert!(spec("c", "/b", "crun").validate().is_ok());
        assert!(spec("c", "/b", "/usr/bin/crun").validate().is_ok());
        let msg = |r: Result<(), Response>| match r {
            Err(Response::Error { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(msg(spec("../c", "/b", "crun").validate()).contains("invalid container id"));
        assert!(msg(spec("c", "b", "crun").validate()).contains("bundle"));
        assert!(msg(spec("c", "/b", "./crun").validate()).contains("runtime"));
    }
}
