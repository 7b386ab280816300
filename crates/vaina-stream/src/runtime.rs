//! The interface the streaming server calls to reach containers.
//!
//! The server owns the protocol (SPDY or WebSocket framing, stream setup, exit status
//! reporting); a [`StreamRuntime`] only moves bytes between the given stdio and a process
//! or a socket. The runtime of the node implements it; tests implement it with local
//! processes and sockets.
//!
//! # Cancellation
//!
//! Every method returns a boxed future. The server drops that future when the client
//! connection is gone (closed, reset, idle timeout, server shutdown), so an implementation
//! must treat drop as cancellation: kill an exec'd process (e.g. `kill_on_drop`), detach
//! from an attached container, close a forwarded socket.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A `Send` boxed future, as the trait methods return (object safety).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Anything readable and writable: a forwarded connection.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite + ?Sized> AsyncReadWrite for T {}

/// A boxed readable stream (stdin).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed writable stream (stdout, stderr).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
/// A forwarded connection as returned by [`StreamRuntime::port_forward`].
pub type BoxConn = Box<dyn AsyncReadWrite + Send + Unpin>;

/// A terminal size as kubelet's `remotecommand.TerminalSize` (columns, rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// The client's side of an exec or attach session, as the runtime sees it.
///
/// - `stdin` reaches EOF when the client half-closes its stdin (SPDY FIN, WebSocket v5
///   close signal) or goes away.
/// - `stdout` / `stderr` carry the process output to the client; the server sends the
///   end of each stream to the client once the runtime future has completed (the runtime
///   need not shut them down itself, but may).
/// - With `tty`, `stderr` is always `None` (validated before the session starts) and
///   `resize` delivers the client's terminal sizes in order; it ends when the client
///   closes its resize stream or sends malformed JSON. It is `None` without a TTY and for
///   protocol versions without resizing (`channel.k8s.io`, `v2.channel.k8s.io`).
pub struct StreamIo {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    pub tty: bool,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

impl fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.tty)
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// Why the runtime could not run an exec, attach or port-forward.
///
/// The message is shown to the user as kubelet would: inside the `metav1.Status` on the
/// error stream for exec/attach, as text on the error stream for port-forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeError {
    message: String,
    not_found: bool,
}

impl RuntimeError {
    /// A failure of any kind.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            not_found: false,
        }
    }

    /// The container or pod sandbox does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            not_found: true,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_not_found(&self) -> bool {
        self.not_found
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuntimeError {}

impl From<std::io::Error> for RuntimeError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            Self::not_found(e.to_string())
        } else {
            Self::new(e.to_string())
        }
    }
}

/// What the streaming server needs from the container runtime. Object safe: the server
/// holds an `Arc<dyn StreamRuntime>`.
pub trait StreamRuntime: Send + Sync + 'static {
    /// Runs `cmd` inside container `container_id` with the given stdio (a TTY when
    /// `io.tty`), and resolves to the exit code once the process has exited. A process
    /// killed by signal N should report 128 + N (137 for SIGKILL), as containerd does.
    /// `Err` is for failures to run at all (unknown container, exec setup failed).
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> BoxFuture<'static, Result<i32, RuntimeError>>;

    /// Attaches the stdio to the main process of `container_id` and resolves when the
    /// attach ends (container exit, or the stdio is closed).
    fn attach(
        &self,
        container_id: String,
        io: StreamIo,
    ) -> BoxFuture<'static, Result<(), RuntimeError>>;

    /// Opens a TCP connection to `port` on the loopback of the network namespace of pod
    /// sandbox `sandbox_id`. The server copies bytes both ways and propagates half-closes.
    fn port_forward(
        &self,
        sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'static, Result<BoxConn, RuntimeError>>;
}
