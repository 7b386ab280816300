//! What `vainad` and a pod supervisor say to each other, and where the supervisor keeps its
//! files. The daemon depends on this module only.
//!
//! Transport: the unix socket `DIR/supervisor.sock` (mode 0600). Each request is one line of
//! JSON, answered by one line of JSON, in order; a connection may carry any number of
//! requests. The `type` field names the variant (`{"type":"state"}`).
//!
//! Compatibility: supervisors outlive daemon upgrades, so unknown fields are ignored and
//! [`PROTOCOL_VERSION`] (in [`PodInfo`]) lets a newer daemon know what an older supervisor
//! understands.
//!
//! Files under the pod directory `DIR` (see the `*_path` functions):
//! - `supervisor.pid`: the supervisor's PID in the daemon's PID namespace.
//! - `supervisor.sock`: the socket.
//! - `containers/ID.exit`: an [`ExitRecord`] written (atomically) when container `ID`'s
//!   init is reaped, so the daemon learns exit codes even if the supervisor is gone by then.
//! - `containers/ID.pid`: the OCI runtime's `--pid-file`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bumped when a request or response changes meaning.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the supervisor accepts; longer lines get an error and the connection
/// is closed.
pub const MAX_REQUEST_LINE: usize = 1024 * 1024;

/// Longest response line the client accepts.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Runs `<runtime> --root <runtime_root> create --bundle <bundle> --pid-file
    /// DIR/containers/<id>.pid <id>` with pipes as the container's stdout/stderr, whose lines
    /// go to `log_path` in CRI format. Answered with [`Response::Created`] once the runtime
    /// exited; the container then waits for `<runtime> start`.
    Create {
        id: String,
        /// Path of the OCI runtime binary (crun, runc).
        runtime: PathBuf,
        /// The runtime's `--root` (its state directory).
        runtime_root: PathBuf,
        bundle: PathBuf,
        log_path: PathBuf,
        /// Give the container a stdin pipe (held by the supervisor) instead of /dev/null.
        #[serde(default)]
        stdin: bool,
        /// Close the container's stdin when the first attach session that had stdin
        /// closes it (CRI `stdin_once`).
        #[serde(default)]
        stdin_once: bool,
        /// Give the container a pseudo-terminal (the runtime's `--console-socket`); its
        /// output goes to the log as stdout, attach sessions read and write the terminal.
        #[serde(default)]
        tty: bool,
    },
    /// All containers the supervisor knows, running or exited.
    State,
    /// The supervisor's PID and the namespaces containers should join.
    Info,
    /// Reopens the container's log file at its path (after log rotation moved it away).
    ReopenLog { id: String },
    /// Drops the record of an exited container (after the daemon removed it) and its files
    /// under `DIR/containers`. Unknown ids are fine (idempotent).
    Forget { id: String },
    /// Answers, then exits, if no container is running; an error otherwise.
    Shutdown,
    /// Sends `signal` to the container's init. The supervisor is its reaper, so the pid
    /// cannot have been recycled; an init that has exited is not signalled (`Ok` anyway).
    Kill { id: String, signal: i32 },
    /// Answered with [`Response::Waited`] as soon as the container has exited, or after
    /// `timeout_ms` with `exited: false`.
    Wait { id: String, timeout_ms: u64 },
    /// Attaches this connection to the container's stdio: answered with
    /// [`Response::Attached`], after which the connection carries [`attach`] frames, not
    /// request lines. The supervisor closes it once the container's output has ended.
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

/// The frames of an attached connection: `[kind: u8][length: u32 BE][payload]`.
pub mod attach {
    /// Supervisor → client: container output.
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// Client → supervisor: input for the container.
    pub const STDIN: u8 = 0;
    /// Client → supervisor: the client's stdin ended (closes the container's stdin if it
    /// was created with `stdin_once`).
    pub const STDIN_CLOSE: u8 = 3;
    /// Client → supervisor: terminal size, payload `[width: u16 BE][height: u16 BE]`.
    pub const RESIZE: u8 = 4;
    /// Largest payload accepted from a client.
    pub const MAX_PAYLOAD: usize = 64 * 1024;
    pub const HEADER: usize = 5;

    pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// One decoded frame: kind, payload, bytes it took.
    pub type Frame<'a> = (u8, &'a [u8], usize);

    /// Splits one frame off the front of `buf`: `Ok(None)` until a whole frame is there.
    pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, String> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!("attach frame of {len} bytes (max {MAX_PAYLOAD})"));
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        Ok(Some((buf[0], &buf[HEADER..HEADER + len], HEADER + len)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The container exists and waits for `start`; `pid` is its init process, in the
    /// daemon's PID namespace.
    Created {
        pid: u32,
    },
    State {
        containers: Vec<ContainerState>,
    },
    Info(PodInfo),
    /// The request was carried out (`ReopenLog`, `Forget`, `Shutdown`, `Kill`).
    Ok,
    /// The answer to `Wait`.
    Waited {
        exited: bool,
    },
    /// The connection is attached; `tty` says whether the container has a terminal (then
    /// all output comes as stdout).
    Attached {
        tty: bool,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// What a caller branches on; the message says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request line is not valid JSON, not a known request, or has invalid fields.
    InvalidRequest,
    /// No container with that id.
    NotFound,
    /// A container with that id exists or is being created.
    AlreadyExists,
    /// The operation needs the container (or all containers) to have exited.
    Running,
    /// The OCI runtime failed; the message carries its error output.
    Runtime,
    /// A file operation of the supervisor failed (log file, pid file).
    Io,
    /// Valid, but not implemented yet (e.g. `tty`).
    Unsupported,
    /// A kind this client does not know (a newer supervisor).
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// The container's init, in the daemon's PID namespace.
    pub pid: u32,
    /// When the runtime's `create` finished (RFC 3339, nanoseconds, UTC).
    pub created_at: String,
    pub exited: bool,
    /// The exit status; 128 + signal for a container killed by a signal (as shells report).
    pub exit_code: Option<i32>,
    /// The signal that killed the container, if one did.
    pub signal: Option<i32>,
    /// When the supervisor reaped the container's init (RFC 3339, nanoseconds, UTC).
    pub finished_at: Option<String>,
    /// Writes to the log file that failed (disk full, file system gone): that output is lost.
    #[serde(default)]
    pub log_write_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub protocol: u32,
    /// The supervisor, in the daemon's PID namespace.
    pub pid: u32,
    /// PID 1 of the pod's PID namespace, when the pod has one (`--pid`). It is a separate,
    /// forked process: the supervisor itself stays in the daemon's PID namespace so that the
    /// OCI runtime it runs records host PIDs in its state, as it does when the daemon runs it.
    pub init_pid: Option<u32>,
    pub namespaces: Namespaces,
}

/// Paths of the pod's own namespaces, for the `path` of the OCI config's
/// `linux.namespaces`. `None`: the pod does not have one of that kind (it shares the
/// daemon's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub network: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

/// Content of `DIR/containers/ID.exit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub id: String,
    pub pid: u32,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("supervisor.sock")
}

pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("supervisor.pid")
}

pub fn containers_dir(dir: &Path) -> PathBuf {
    dir.join("containers")
}

pub fn exit_path(dir: &Path, id: &str) -> PathBuf {
    containers_dir(dir).join(format!("{id}.exit"))
}

pub fn container_pid_path(dir: &Path, id: &str) -> PathBuf {
    containers_dir(dir).join(format!("{id}.pid"))
}

/// Reads `DIR/containers/ID.exit`; `Ok(None)` when the container has not exited (or the
/// supervisor died before reaping it).
pub fn read_exit_record(dir: &Path, id: &str) -> io::Result<Option<ExitRecord>> {
    match std::fs::read(exit_path(dir, id)) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Container ids end up in file names and runtime arguments: letters, digits, `_`, `-`,
/// `.`, not starting with `.` or `-`, at most 128 bytes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to pod supervisor at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod supervisor at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("i/o error talking to pod supervisor at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod supervisor at {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("pod supervisor at {path} sent an invalid response")]
    BadResponse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("pod supervisor at {path} sent a response line longer than {MAX_RESPONSE_LINE} bytes")]
    ResponseTooLong { path: PathBuf },
    #[error(
        "connection to pod supervisor at {path} is unusable after an earlier failure; reconnect"
    )]
    Poisoned { path: PathBuf },
}

/// A blocking connection to a supervisor. One call at a time; after a failed call (timeout,
/// i/o error) a late answer could be taken for the next one, so the client refuses further
/// calls ([`ClientError::Poisoned`]).
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    timeout: Duration,
    /// Bytes read past the last response line.
    buf: Vec<u8>,
    poisoned: bool,
}

/// Runs `f` (a bind or connect) with a path to `path` short enough for a unix socket
/// address (108 bytes): long paths (deep state roots, 64-hex pod ids) go through
/// `/proc/self/fd/<parent dir>/<name>`.
pub fn with_socket_path<R>(path: &Path, f: impl FnOnce(&Path) -> io::Result<R>) -> io::Result<R> {
    if path.as_os_str().len() < 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let d = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    ))
    .join(name);
    f(&short)
}

impl Client {
    /// Default time a call may take; `Create` waits for the OCI runtime, which takes tens of
    /// milliseconds for crun and can take seconds on a loaded node.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = with_socket_path(&path, |p| UnixStream::connect(p)).map_err(|source| {
            ClientError::Connect {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Client {
            path,
            stream,
            timeout: Self::DEFAULT_TIMEOUT,
            buf: Vec::new(),
            poisoned: false,
        })
    }

    /// Sets the limit for each whole call (send and answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        self.call_raw(&line)
    }

    /// Sends `line` as is (it should end with a newline) and reads one response: for tests and
    /// for talking to a supervisor newer than this client.
    pub fn call_raw(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        if self.poisoned {
            return Err(ClientError::Poisoned {
                path: self.path.clone(),
            });
        }
        let result = self.exchange(line);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn exchange(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.stream
            .set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))
            .map_err(|e| self.io(e))?;
        self.stream.write_all(line).map_err(|e| self.io(e))?;
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let resp = serde_json::from_slice(&self.buf[..nl]).map_err(|source| {
                    ClientError::BadResponse {
                        path: self.path.clone(),
                        source,
                    }
                });
                self.buf.drain(..=nl);
                return resp;
            }
            if self.buf.len() > MAX_RESPONSE_LINE {
                return Err(ClientError::ResponseTooLong {
                    path: self.path.clone(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.io(e))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        path: self.path.clone(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timed_out());
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn io(&self, source: io::Error) -> ClientError {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return self.timed_out();
        }
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            path: self.path.clone(),
            timeout: self.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let req = Request::ReopenLog { id: "c1".into() };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"type":"reopen_log","id":"c1"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"type":"state"}"#).unwrap(),
            Request::State
        );
        // Optional flags default to false; unknown fields are ignored.
        let create: Request = serde_json::from_str(
            r#"{"type":"create","id":"a","runtime":"/usr/bin/crun","runtime_root":"/r",
                "bundle":"/b","log_path":"/l","future_field":1}"#,
        )
        .unwrap();
        assert!(matches!(
            create,
            Request::Create {
                stdin: false,
                tty: false,
                ..
            }
        ));
    }

    #[test]
    fn unknown_error_kinds_are_other() {
        let resp: Response =
            serde_json::from_str(r#"{"type":"error","kind":"brand_new","message":"m"}"#).unwrap();
        assert_eq!(resp, Response::error(ErrorKind::Other, "m"));
    }

    #[test]
    fn ids_that_could_escape_a_directory_are_invalid() {
        for ok in ["a", "abc-DEF_1.2", &"x".repeat(128)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-rf",
            ".hidden",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
