//! Prints medians of: exec round trip (`echo hi` run as `/bin/echo` by a local runtime)
//! over SPDY and WebSocket, and port-forward throughput to a local echo server.
//!
//! `stream-bench [ITERATIONS]` (default 100 exec round trips, 5 throughput runs).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vaina_stream::client::{ClientOptions, PortForwardClient, WsPortForward, remote_command};
use vaina_stream::request::{ExecRequest, PortForwardRequest};
use vaina_stream::runtime::{BoxConn, BoxFuture, RuntimeError, StreamIo, StreamRuntime};
use vaina_stream::server::{ServerConfig, StreamServer};

/// Runs commands as local processes and forwards to 127.0.0.1.
struct LocalRuntime;

impl StreamRuntime for LocalRuntime {
    fn exec(
        &self,
        _: String,
        cmd: Vec<String>,
        mut io: StreamIo,
    ) -> BoxFuture<'static, Result<i32, RuntimeError>> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            if let (Some(mut out), Some(dst)) = (child.stdout.take(), io.stdout.as_mut()) {
                tokio::io::copy(&mut out, dst).await?;
            }
            Ok(child.wait().await?.code().unwrap_or(128))
        })
    }

    fn attach(&self, _: String, _: StreamIo) -> BoxFuture<'static, Result<(), RuntimeError>> {
        Box::pin(async { Err(RuntimeError::new("attach is not benchmarked")) })
    }

    fn port_forward(
        &self,
        _: String,
        port: u16,
    ) -> BoxFuture<'static, Result<BoxConn, RuntimeError>> {
        Box::pin(
            async move { Ok(Box::new(TcpStream::connect(("127.0.0.1", port)).await?) as BoxConn) },
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn exec_round_trips(server: &StreamServer, opts: &ClientOptions, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let url = server
            .get_exec(ExecRequest {
                container_id: "bench".into(),
                cmd: vec!["/bin/echo".into(), "hi".into()],
                stdout: true,
                ..Default::default()
            })
            .expect("get_exec");
        let out = Box::new(Vec::<u8>::new());
        let io = StreamIo {
            stdin: None,
            stdout: Some(out),
            stderr: None,
            tty: false,
            resize: None,
        };
        let code = remote_command(&url, opts, io).await.expect("exec");
        assert_eq!(code, 0);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Writes `total` bytes and reads them back; returns MiB/s of payload.
async fn echo_through<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
    total: usize,
) -> f64 {
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(conn);
    let send = async {
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            w.write_all(&chunk[..n]).await.unwrap();
            sent += n;
        }
    };
    let recv = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "echo ended early");
            got += n;
        }
    };
    tokio::join!(send, recv);
    total as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let server = StreamServer::start(ServerConfig::default(), Arc::new(LocalRuntime))
        .await
        .expect("server");
    let spdy = exec_round_trips(&server, &ClientOptions::spdy(), n).await;
    let ws = exec_round_trips(&server, &ClientOptions::websocket(), n).await;
    println!(
        "exec round trip (/bin/echo hi), median of {n}: SPDY {spdy:.2} ms, WebSocket {ws:.2} ms"
    );

    let port = echo_server().await;
    let total = 64 * 1024 * 1024;
    let mut spdy_rates = Vec::new();
    let mut ws_rates = Vec::new();
    for _ in 0..5 {
        let url = server
            .get_port_forward(PortForwardRequest {
                pod_sandbox_id: "bench".into(),
                ports: vec![],
            })
            .unwrap();
        let client = PortForwardClient::connect(&url).await.unwrap();
        let mut conn = client.open(port).await.unwrap();
        spdy_rates.push(echo_through(&mut conn, total).await);
        drop(conn);
        client.close().await;

        let url = server
            .get_port_forward(PortForwardRequest {
                pod_sandbox_id: "bench".into(),
                ports: vec![i32::from(port)],
            })
            .unwrap();
        let mut pf = WsPortForward::connect(&url, &[port], false).await.unwrap();
        ws_rates.push(echo_through(&mut pf.ports[0].data, total).await);
        drop(pf);
    }
    println!(
        "port-forward echo throughput (64 MiB each way), median of 5: SPDY {:.0} MiB/s, WebSocket {:.0} MiB/s",
        median(spdy_rates),
        median(ws_rates)
    );
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .ok();
}
