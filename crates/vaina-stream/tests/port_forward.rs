//! Port forwarding over SPDY and WebSocket against local TCP servers.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vaina_stream::client::{PortForwardClient, WsPortForward};
use vaina_stream::request::PortForwardRequest;

fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag.wrapping_add((i % 251) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_three_concurrent_connections_on_two_ports_echo() {
    let h = Harness::start().await;
    let (p1, e1) = echo_server().await;
    let (p2, e2) = echo_server().await;
    let url = h
        .server
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let client = PortForwardClient::connect(&url).await.unwrap();
    let mut jobs = Vec::new();
    for (i, port) in [p1, p2, p1].into_iter().enumerate() {
        let mut conn = client.open(port).await.unwrap();
        jobs.push(tokio::spawn(async move {
            let data = payload(i as u8, 300_000);
            let (mut r, mut w) = tokio::io::split(&mut conn);
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let recv = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(send, recv);
            assert!(got == data, "connection {i}: {} bytes back", got.len());
            assert_eq!(conn.error_message().await, None);
        }));
    }
    for j in jobs {
        tokio::time::timeout(Duration::from_secs(20), j)
            .await
            .unwrap()
            .unwrap();
    }
    client.close().await;
    e1.abort();
    e2.abort();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_http_get_through_a_local_listener() {
    let h = Harness::start().await;
    // A tiny HTTP server answering one fixed response per connection.
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = http.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&b[..n]);
                }
                assert!(req.starts_with(b"GET /hello HTTP/1.1\r\n"));
                s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nworld",
                )
                .await
                .unwrap();
            });
        }
    });
    let url = h
        .server
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let client = PortForwardClient::connect(&url).await.unwrap();
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let c2 = client.clone();
    let fwd = tokio::spawn(async move { c2.serve(local, http_port).await });
    for _ in 0..2 {
        let mut s = TcpStream::connect(local_addr).await.unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
            .await
            .unwrap()
            .unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\nworld"),
            "{resp}"
        );
    }
    fwd.abort();
    let _ = fwd.await;
    client.close().await;
    server.abort();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_three_channels_pairs_on_two_ports_echo() {
    let h = Harness::start().await;
    let (p1, e1) = echo_server().await;
    let (p2, e2) = echo_server().await;
    for base64 in [false, true] {
        let url = h
            .server
            .get_port_forward(PortForwardRequest {
                pod_sandbox_id: "pod".into(),
                ports: vec![i32::from(p1), i32::from(p2), i32::from(p1)],
            })
            .unwrap();
        let mut pf = WsPortForward::connect(&url, &[p1, p2, p1], base64)
            .await
            .unwrap();
        let mut jobs = Vec::new();
        for (i, mut port) in pf.ports.drain(..).enumerate() {
            jobs.push(tokio::spawn(async move {
                let data = payload(i as u8 + 7, 200_000);
                let (mut r, mut w) = tokio::io::split(&mut port.data);
                let send = async { w.write_all(&data).await.unwrap() };
                let recv = async {
                    let mut got = vec![0u8; data.len()];
                    r.read_exact(&mut got).await.unwrap();
                    got
                };
                let ((), got) = tokio::join!(send, recv);
                assert!(got == data, "channel pair {i} (base64 {base64})");
            }));
        }
        for j in jobs {
            tokio::time::timeout(Duration::from_secs(20), j)
                .await
                .unwrap()
                .unwrap();
        }
        drop(pf);
    }
    e1.abort();
    e2.abort();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_errors_are_written_on_the_error_stream() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "missing".into(),
            ports: vec![],
        })
        .unwrap();
    let client = PortForwardClient::connect(&url).await.unwrap();
    let mut conn = client.open(8080).await.unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        conn.error_message().await.as_deref(),
        Some("error forwarding port 8080 to pod missing, uid : pod sandbox \"missing\" not found")
    );
    drop(conn);
    client.close().await;

    let url = h
        .server
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "missing".into(),
            ports: vec![9090],
        })
        .unwrap();
    let mut pf = WsPortForward::connect(&url, &[9090], false).await.unwrap();
    let mut msg = String::new();
    pf.ports[0].error.read_to_string(&mut msg).await.unwrap();
    assert_eq!(
        msg,
        "error forwarding port 9090 to pod missing, uid : pod sandbox \"missing\" not found"
    );
    drop(pf);
    h.finish().await;
}
