//! The runtime side of the CRI's streaming calls: an interactive exec (pipes or a TTY)
//! and a TCP connection into a pod's network namespace for port-forward. The protocol
//! side (SPDY, WebSocket, tokens) lives in `vaina-stream`; this module only moves bytes
//! between a process or a socket and the streams it is given.
//!
//! Exec runs `<runtime> exec` from the daemon, as ExecSync does: an exec session does
//! not outlive `vainad`, as with containerd, where a shim restart ends it too. With a
//! TTY, the runtime creates the pseudo-terminal inside the container and hands its
//! master side back over a console socket (SCM_RIGHTS), as the OCI runtimes define it.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use vaina_pod::console::ConsoleReceiver;
use vaina_pod::protocol::{self as sup, Request, Response, attach};

use crate::error::{Error, Result};
use crate::sandbox::Runtime;

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// The client's side of an exec: which streams it asked for, and resize events.
#[derive(Default)]
pub struct ExecIo {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    /// Ignored with a TTY (a terminal has one output stream).
    pub stderr: Option<BoxWrite>,
    pub tty: bool,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// How long the OCI runtime may take to hand over the TTY's master side.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    /// Runs `cmd` in a running container with the client's streams and returns its exit
    /// code (128 + signal when killed). Returns once the process exited and its output
    /// was delivered.
    pub async fn exec_stream(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        io: ExecIo,
    ) -> Result<i32> {
        let rec = self.exec_target(id, &cmd)?;
        let mut c = tokio::process::Command::from(vaina_pod::oci::command(&rec.runtime));
        let serial = &crate::sandbox::new_id()[..16];
        // A session that ends early (client gone) kills the process it started.
        let mut guard = ExecGuard {
            pid_file: self.config().state_dir.join(format!("exec-{serial}.pid")),
            done: false,
        };
        c.arg("--root")
            .arg(&rec.runtime_root)
            .arg("exec")
            .arg("--pid-file")
            .arg(&guard.pid_file);
        let console = if io.tty {
            // A short unique name: the runtime connects by path (108-byte limit).
            let name = format!("exec-{serial}.sock");
            let rx = ConsoleReceiver::listen(&self.config().state_dir.join(name), CONSOLE_TIMEOUT)
                .map_err(|e| Error::failed("listen on a console socket", e))?;
            c.arg("--tty")
                .arg("--console-socket")
                .arg(rx.connect_path());
            Some(rx)
        } else {
            None
        };
        // Not kill_on_drop: killing the runtime would orphan the process in the container;
        // the guard kills that process, the runtime then exits and tokio reaps it.
        c.arg(&rec.id).args(&cmd);
        if io.tty {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
        } else {
            c.stdin(pipe_if(io.stdin.is_some()))
                .stdout(pipe_if(io.stdout.is_some()))
                .stderr(pipe_if(io.stderr.is_some()));
        }
        let mut child = c
            .spawn()
            .map_err(|e| Error::failed(format!("run {}", rec.runtime.display()), e))?;

        let code = match console {
            Some(rx) => {
                let mut runtime_err = child.stderr.take().expect("piped");
                let received = tokio::task::spawn_blocking(move || rx.wait());
                let master = tokio::select! {
                    m = received => m
                        .map_err(|e| Error::Internal(e.to_string()))?
                        .map_err(|e| Error::failed("receive the terminal from the OCI runtime", e))?,
                    status = child.wait() => {
                        let mut err = String::new();
                        let _ = runtime_err.read_to_string(&mut err).await;
                        return Err(Error::Internal(format!(
                            "exec in {}: the runtime exited ({}) before handing over the terminal: {}",
                            rec.id,
                            status.map(|s| s.to_string()).unwrap_or_default(),
                            err.trim()
                        )));
                    }
                };
                let status = run_tty(master, io, &mut child).await?;
                exit_code(status)
            }
            None => {
                let stdin = child.stdin.take();
                let stdout = child.stdout.take();
                let stderr = child.stderr.take();
                let ExecIo {
                    stdin: client_in,
                    stdout: client_out,
                    stderr: client_err,
                    ..
                } = io;
                // Input ends with the client's EOF (closing the pipe) or with the process.
                let input = tokio::spawn(async move {
                    if let (Some(mut from), Some(mut to)) = (client_in, stdin) {
                        let _ = tokio::io::copy(&mut from, &mut to).await;
                        let _ = to.shutdown().await;
                    }
                });
                let out = copy_out(stdout, client_out);
                let err = copy_out(stderr, client_err);
                let (status, _, _) = tokio::join!(child.wait(), out, err);
                input.abort();
                exit_code(status.map_err(|e| Error::failed("wait for exec", e))?)
            }
        };
        guard.done = true;
        Ok(code)
    }

    /// Attaches the client's streams to a running container's stdio, through its pod
    /// supervisor (which keeps the container's pipes or terminal). Returns when the
    /// container's output has ended (it exited) or the client went away.
    pub async fn attach_stream(self: &Arc<Self>, id: &str, io: ExecIo) -> Result<()> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let rec = self.running_container(id)?;
        if io.stdin.is_some() && !rec.config.stdin {
            return Err(Error::InvalidArgument(format!(
                "container {} was not created with stdin: cannot attach stdin",
                rec.id
            )));
        }
        let path = sup::socket_path(&self.config().pods_dir().join(&rec.sandbox_id));
        let std_conn = sup::with_socket_path(&path, |p| std::os::unix::net::UnixStream::connect(p))
            .and_then(|c| c.set_nonblocking(true).map(|()| c))
            .map_err(|e| Error::failed("connect to the pod supervisor", e))?;
        let conn = tokio::net::UnixStream::from_std(std_conn)
            .map_err(|e| Error::failed("pod supervisor connection", e))?;
        let (read_half, mut write_half) = conn.into_split();
        let mut reader = BufReader::new(read_half);
        let req = Request::Attach {
            id: rec.id.clone(),
            stdin: io.stdin.is_some(),
            stdout: io.stdout.is_some(),
            stderr: io.stderr.is_some(),
        };
        let mut line = serde_json::to_vec(&req).expect("request serializes");
        line.push(b'\n');
        write_half
            .write_all(&line)
            .await
            .map_err(|e| Error::failed("attach request", e))?;
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .await
            .map_err(|e| Error::failed("attach answer", e))?;
        match serde_json::from_str::<Response>(&answer) {
            Ok(Response::Attached { .. }) => {}
            Ok(Response::Error { message, .. }) => return Err(Error::InvalidArgument(message)),
            other => {
                return Err(Error::Internal(format!(
                    "unexpected supervisor answer to attach: {other:?}"
                )));
            }
        }
        let ExecIo {
            stdin,
            mut stdout,
            mut stderr,
            resize,
            ..
        } = io;
        // Client → container: input frames, its end, resizes.
        let input = tokio::spawn(async move {
            let (tx, mut frames) = mpsc::channel::<Vec<u8>>(16);
            if let Some(mut resize) = resize {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(size) = resize.recv().await {
                        let mut f = Vec::new();
                        let mut p = size.width.to_be_bytes().to_vec();
                        p.extend_from_slice(&size.height.to_be_bytes());
                        attach::encode(attach::RESIZE, &p, &mut f);
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                });
            }
            if let Some(mut stdin) = stdin {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        let mut f = Vec::new();
                        match stdin.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                attach::encode(attach::STDIN_CLOSE, &[], &mut f);
                                let _ = tx.send(f).await;
                                return;
                            }
                            Ok(n) => attach::encode(attach::STDIN, &buf[..n], &mut f),
                        }
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                });
            } else {
                drop(tx);
            }
            while let Some(f) = frames.recv().await {
                if write_half.write_all(&f).await.is_err() {
                    return;
                }
            }
            // Keep the connection open for output: dropping the write half would only
            // half-close it, which the supervisor reads as the client's end.
            std::future::pending::<()>().await;
        });
        // Container → client: output frames until the supervisor closes.
        let mut header = [0u8; attach::HEADER];
        let mut payload = Vec::new();
        loop {
            if reader.read_exact(&mut header).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            payload.resize(len, 0);
            if reader.read_exact(&mut payload).await.is_err() {
                break;
            }
            let to = match header[0] {
                attach::STDOUT => stdout.as_mut(),
                attach::STDERR => stderr.as_mut(),
                _ => None,
            };
            if let Some(to) = to
                && to.write_all(&payload).await.is_err()
            {
                break;
            }
        }
        input.abort();
        for w in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
            let _ = w.shutdown().await;
        }
        Ok(())
    }

    /// A TCP connection to `port` on the pod's loopback, made from inside its network
    /// namespace (not through the node), as kubelet's port-forward does.
    pub async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let rec = self.get(&self.resolve(sandbox_id)?)?;
        if rec.state != crate::sandbox::SandboxState::Ready {
            return Err(Error::InvalidArgument(format!(
                "sandbox {} is not ready",
                rec.id
            )));
        }
        let netns = rec.netns.clone();
        let id = rec.id.clone();
        let stream = tokio::task::spawn_blocking(move || -> Result<std::net::TcpStream> {
            let connect = || {
                std::net::TcpStream::connect_timeout(
                    &(std::net::Ipv4Addr::LOCALHOST, port).into(),
                    Duration::from_secs(10),
                )
            };
            let conn = match netns {
                // A socket belongs to the netns it was created in: create it on a
                // throwaway thread inside the pod's.
                Some(path) => vaina_net::netns::Netns::open(&path)
                    .and_then(|ns| ns.run(connect))
                    .map_err(|e| Error::failed(format!("enter the netns of sandbox {id}"), e))?,
                None => connect(),
            };
            conn.map_err(|e| Error::failed(format!("connect to port {port} in sandbox {id}"), e))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
            .map_err(|e| Error::failed("port-forward socket", e))
    }
}

/// Kills the exec'd process (its pid from the runtime's `--pid-file`) if the session is
/// dropped before it exited; removes the pid file either way.
struct ExecGuard {
    pid_file: std::path::PathBuf,
    done: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.done
            && let Some(pid) = std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|p| *p > 0)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn pipe_if(on: bool) -> Stdio {
    if on { Stdio::piped() } else { Stdio::null() }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

async fn copy_out<R: AsyncRead + Unpin>(from: Option<R>, to: Option<BoxWrite>) {
    if let (Some(mut from), Some(mut to)) = (from, to) {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        let _ = to.shutdown().await;
    }
}

/// Copies between the client and the terminal until the process exits and the terminal
/// has nothing left to read; applies resize events meanwhile.
async fn run_tty(
    master: OwnedFd,
    io: ExecIo,
    child: &mut tokio::process::Child,
) -> Result<std::process::ExitStatus> {
    let master = Arc::new(Pty::new(master).map_err(|e| Error::failed("terminal", e))?);
    let ExecIo {
        stdin,
        stdout,
        resize,
        ..
    } = io;
    if let Some(mut resize) = resize {
        let m = master.clone();
        tokio::spawn(async move {
            while let Some(size) = resize.recv().await {
                m.resize(size);
            }
        });
    }
    let input = stdin.map(|mut from| {
        let mut to = PtyHandle(master.clone());
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
        })
    });
    let output = {
        let mut from = PtyHandle(master.clone());
        async move {
            match stdout {
                Some(mut to) => {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.shutdown().await;
                }
                // Nobody reads: drain, so the process does not block on a full terminal.
                None => {
                    let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
                }
            }
        }
    };
    let (status, ()) = tokio::join!(child.wait(), output);
    if let Some(i) = input {
        i.abort();
    }
    status.map_err(|e| Error::failed("wait for exec", e))
}

/// The master side of a pseudo-terminal, non-blocking under tokio's reactor.
struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn new(fd: OwnedFd) -> io::Result<Pty> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: an OwnedFd stays open and refers to the same file until it is dropped,
        // which happens with the AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Pty { fd })
    }

    fn resize(&self, size: TermSize) {
        let _ = vaina_pod::console::set_size(self.fd.get_ref(), size.width, size.height);
    }
}

/// One reader or writer over a shared [`Pty`].
struct PtyHandle(Arc<Pty>);

impl AsyncRead for PtyHandle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave side is closed, the process is gone: end of output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyHandle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
