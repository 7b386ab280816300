//! Shared test support: a fake runtime running local processes, a server harness that
//! checks for leaked tasks and file descriptors, and raw protocol helpers.
#![allow(dead_code)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use vaina_stream::client::{ClientError, ClientOptions, remote_command};
use vaina_stream::runtime::{BoxConn, BoxFuture, RuntimeError, StreamIo, StreamRuntime, TermSize};
use vaina_stream::server::{ServerConfig, StreamServer};

#[derive(Default)]
pub struct FakeRuntime {
    pub resizes: Arc<Mutex<Vec<TermSize>>>,
    pub execs: AtomicUsize,
}

impl StreamRuntime for FakeRuntime {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> BoxFuture<'static, Result<i32, RuntimeError>> {
        self.execs.fetch_add(1, Ordering::SeqCst);
        let resizes = Arc::clone(&self.resizes);
        Box::pin(async move {
            if container_id == "missing" {
                return Err(RuntimeError::not_found("container \"missing\" not found"));
            }
            if cmd[0] == "resize-echo" {
                let n: usize = cmd[1].parse().unwrap();
                let mut io = io;
                let mut rx = io.resize.take().expect("resize channel");
                let mut out = io.stdout.take().expect("stdout");
                for _ in 0..n {
                    let Some(size) = rx.recv().await else { break };
                    resizes.lock().unwrap().push(size);
                    out.write_all(format!("{}x{}\n", size.width, size.height).as_bytes())
                        .await
                        .unwrap();
                }
                return Ok(0);
            }
            run_process(cmd, io).await
        })
    }

    fn attach(
        &self,
        container_id: String,
        mut io: StreamIo,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        Box::pin(async move {
            if container_id == "missing" {
                return Err(RuntimeError::not_found("container \"missing\" not found"));
            }
            if let (Some(mut i), Some(mut o)) = (io.stdin.take(), io.stdout.take()) {
                tokio::io::copy(&mut i, &mut o)
                    .await
                    .map_err(RuntimeError::from)?;
            }
            Ok(())
        })
    }

    fn port_forward(
        &self,
        sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'static, Result<BoxConn, RuntimeError>> {
        Box::pin(async move {
            if sandbox_id == "missing" {
                return Err(RuntimeError::not_found("pod sandbox \"missing\" not found"));
            }
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| {
                RuntimeError::new(format!("failed to connect to localhost:{port}: {e}"))
            })?;
            Ok(Box::new(tcp) as BoxConn)
        })
    }
}

async fn run_process(cmd: Vec<String>, mut io: StreamIo) -> Result<i32, RuntimeError> {
    let mut c = tokio::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .stdin(if io.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if io.stdout.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if io.stderr.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let mut child = c.spawn()?;
    let mut child_in = child.stdin.take();
    let mut child_out = child.stdout.take();
    let mut child_err = child.stderr.take();
    let stdin = async {
        if let (Some(src), Some(dst)) = (io.stdin.as_mut(), child_in.as_mut()) {
            let _ = tokio::io::copy(src, dst).await;
        }
        drop(child_in.take());
        std::future::pending::<()>().await
    };
    let out = async {
        if let (Some(src), Some(dst)) = (child_out.as_mut(), io.stdout.as_mut()) {
            let _ = tokio::io::copy(src, dst).await;
        }
    };
    let err = async {
        if let (Some(src), Some(dst)) = (child_err.as_mut(), io.stderr.as_mut()) {
            let _ = tokio::io::copy(src, dst).await;
        }
    };
    let status = tokio::select! {
        r = async { tokio::join!(out, err, child.wait()).2 } => r?,
        _ = stdin => unreachable!(),
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// An `AsyncWrite` collecting into a shared buffer.
#[derive(Clone, Default)]
pub struct Collect(pub Arc<Mutex<Vec<u8>>>);

impl Collect {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl AsyncWrite for Collect {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A running server plus the baseline it must return to.
pub struct Harness {
    pub server: StreamServer,
    pub runtime: Arc<FakeRuntime>,
    fds: usize,
    tasks: usize,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with_config(ServerConfig::default()).await
    }

    pub async fn with_config(config: ServerConfig) -> Self {
        let fds = fd_count();
        let tasks = alive_tasks();
        let runtime = Arc::new(FakeRuntime::default());
        let server = StreamServer::start(config, runtime.clone()).await.unwrap();
        Self {
            server,
            runtime,
            fds,
            tasks,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Shuts the server down and checks that no task or fd is left.
    pub async fn finish(self) {
        let Harness {
            server,
            runtime,
            fds,
            tasks,
        } = self;
        server.shutdown().await;
        drop(runtime);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (f, t) = (fd_count(), alive_tasks());
            if f <= fds && t <= tasks {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "leak after shutdown: fds {f} (baseline {fds}), tasks {t} (baseline {tasks})"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn sv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub struct Output {
    pub result: Result<i32, ClientError>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a remote command with the given stdin bytes and resize events.
pub async fn run(
    url: &str,
    opts: &ClientOptions,
    stdin: Option<&[u8]>,
    stdout: bool,
    stderr: bool,
    tty: bool,
    resizes: Vec<TermSize>,
) -> Output {
    let out = Collect::default();
    let err = Collect::default();
    let (tx, rx) = mpsc::channel(8);
    for r in resizes {
        tx.send(r).await.unwrap();
    }
    let io = StreamIo {
        stdin: stdin.map(|b| Box::new(Cursor::new(b.to_vec())) as _),
        stdout: stdout.then(|| Box::new(out.clone()) as _),
        stderr: stderr.then(|| Box::new(err.clone()) as _),
        tty,
        resize: tty.then_some(rx),
    };
    let result = tokio::time::timeout(Duration::from_secs(20), remote_command(url, opts, io))
        .await
        .expect("remote command timed out");
    drop(tx);
    Output {
        result,
        stdout: out.text(),
        stderr: err.text(),
    }
}

/// Sends a hand-written HTTP request and reads the response head byte by byte (so no
/// byte after it is consumed). Returns the connection and the head.
pub async fn raw_request(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut b).await.unwrap();
        assert!(
            n == 1,
            "connection closed in the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}

/// Reads a response body announced by Content-Length.
pub async fn read_body(tcp: &mut TcpStream, head: &str) -> String {
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();
    String::from_utf8(body).unwrap()
}

/// The path part of a URL the server handed out.
pub fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    rest[rest.find('/').unwrap()..].to_owned()
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            conns.spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, h)
}

pub fn ts(width: u16, height: u16) -> TermSize {
    TermSize { width, height }
}

pub fn reader_of(bytes: &'static [u8]) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(bytes)
}
