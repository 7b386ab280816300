//! Refusals: unknown, expired and reused tokens, bad upgrade requests, clients that never
//! open their streams, malformed resize JSON, idle connections.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaina_spdy::{Headers, Session};
use vaina_stream::client::{ClientError, ClientOptions};
use vaina_stream::request::{ExecRequest, PortForwardRequest, RequestError};
use vaina_stream::server::ServerConfig;

fn exec_req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "c".into(),
        cmd: sv(cmd),
        stdout: true,
        ..Default::default()
    }
}

fn spdy_req(path: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{extra}\r\n")
}

const GOOD: &str =
    "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_and_reused_tokens_get_404() {
    let h = Harness::with_config(ServerConfig {
        token_ttl: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let (mut tcp, head) = raw_request(h.addr(), &spdy_req("/exec/AAAAAAAA", GOOD)).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    assert_eq!(read_body(&mut tcp, &head).await, "404 page not found\n");
    drop(tcp);

    // Used once (successfully), then refused.
    let url = h.server.get_exec(exec_req(&["true"])).unwrap();
    let o = run(
        &url,
        &ClientOptions::spdy(),
        None,
        true,
        false,
        false,
        vec![],
    )
    .await;
    assert_eq!(o.result.unwrap(), 0);
    let (_, head) = raw_request(h.addr(), &spdy_req(&path_of(&url), GOOD)).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");

    // A token for exec does not open an attach.
    let url = h.server.get_exec(exec_req(&["true"])).unwrap();
    let path = path_of(&url).replace("/exec/", "/attach/");
    let (_, head) = raw_request(h.addr(), &spdy_req(&path, GOOD)).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");

    // Expired.
    let url = h.server.get_exec(exec_req(&["true"])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, head) = raw_request(h.addr(), &spdy_req(&path_of(&url), GOOD)).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    assert_eq!(h.runtime.execs.load(Ordering::SeqCst), 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_validated_and_in_flight_tokens_limited() {
    let h = Harness::with_config(ServerConfig {
        max_in_flight: 2,
        ..Default::default()
    })
    .await;
    let bad = ExecRequest {
        tty: true,
        stderr: true,
        ..exec_req(&["sh"])
    };
    assert!(matches!(
        h.server.get_exec(bad),
        Err(RequestError::InvalidArgument(_))
    ));
    assert!(
        h.server
            .get_port_forward(PortForwardRequest::default())
            .is_err()
    );
    h.server.get_exec(exec_req(&["true"])).unwrap();
    h.server.get_exec(exec_req(&["true"])).unwrap();
    assert_eq!(
        h.server.get_exec(exec_req(&["true"])),
        Err(RequestError::TooManyInFlight)
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrade_requests_are_refused_like_kubelet() {
    let h = Harness::start().await;
    let cases: [(&str, &str, &str); 5] = [
        // No protocol header at all.
        (
            "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
            "400",
            "unable to upgrade: X-Stream-Protocol-Version is required",
        ),
        // No common protocol.
        (
            "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.channel.k8s.io\r\n",
            "403",
            "unable to upgrade: unable to negotiate protocol",
        ),
        // Protocol fine, upgrade headers missing or wrong.
        (
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
            "400",
            "unable to upgrade: missing upgrade headers in request",
        ),
        (
            "Connection: Upgrade\r\nUpgrade: h2c\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
            "400",
            "unable to upgrade: missing upgrade headers in request",
        ),
        // WebSocket with an unsupported sub-protocol.
        (
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v9.channel.k8s.io\r\n",
            "403",
            "requested protocol(s) are not supported",
        ),
    ];
    for (headers, code, message) in cases {
        let url = h.server.get_exec(exec_req(&["true"])).unwrap();
        let (mut tcp, head) = raw_request(h.addr(), &spdy_req(&path_of(&url), headers)).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {code} ")),
            "{headers}: {head}"
        );
        let body = read_body(&mut tcp, &head).await;
        assert!(body.starts_with(message), "{headers}: {body}");
        if code == "403" && headers.contains("X-Stream") {
            let accepted: Vec<&str> = head
                .lines()
                .filter_map(|l| l.split_once(": "))
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-accepted-stream-protocol-versions"))
                .map(|(_, v)| v)
                .collect();
            assert_eq!(
                accepted,
                [
                    "v5.channel.k8s.io",
                    "v4.channel.k8s.io",
                    "v3.channel.k8s.io",
                    "v2.channel.k8s.io",
                    "channel.k8s.io"
                ]
            );
        }
    }
    // The client reports a refusal as an HTTP error.
    let url = h.server.get_exec(exec_req(&["true"])).unwrap();
    let o = run(
        &url,
        &ClientOptions::spdy().with_protocols(&["v9"]),
        None,
        true,
        false,
        false,
        vec![],
    )
    .await;
    match o.result {
        Err(ClientError::Http {
            status: 403,
            accepted,
            ..
        }) => assert_eq!(accepted.len(), 5),
        other => panic!("{other:?}"),
    }
    let url = h.server.get_exec(exec_req(&["true"])).unwrap();
    let o = run(
        &url,
        &ClientOptions::websocket().with_protocols(&["v9"]),
        None,
        true,
        false,
        false,
        vec![],
    )
    .await;
    assert!(
        matches!(o.result, Err(ClientError::Http { status: 403, .. })),
        "{:?}",
        o.result
    );
    let (_, head) = raw_request(h.addr(), "DELETE /exec/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert_eq!(h.runtime.execs.load(Ordering::SeqCst), 0);
    h.finish().await;
}

async fn raw_session(h: &Harness, url: &str) -> (Session, vaina_spdy::Incoming) {
    let (tcp, head) = raw_request(h.addr(), &spdy_req(&path_of(url), GOOD)).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut cfg = vaina_spdy::Config::default();
    cfg.flow_control = false;
    Session::client(tcp, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_opens_its_streams_is_cut_off() {
    let h = Harness::with_config(ServerConfig {
        stream_creation_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let url = h.server.get_exec(exec_req(&["true"])).unwrap();
    let (session, _incoming) = raw_session(&h, &url).await;
    // Only the error stream; stdout never comes.
    let err = session
        .open(Headers::from([("streamType", "error")]), false)
        .await
        .unwrap();
    err.response().await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), session.closed())
        .await
        .expect("server closed the session")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(h.runtime.execs.load(Ordering::SeqCst), 0);
    drop(err);
    drop(session);

    // Port forward: a request with only an error stream gets kubelet's timeout message.
    let url = h
        .server
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let (tcp, head) = raw_request(
        h.addr(),
        &spdy_req(&path_of(&url), "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut cfg = vaina_spdy::Config::default();
    cfg.flow_control = false;
    let (session, _incoming) = Session::client(tcp, cfg);
    let mut err = session
        .open(
            Headers::from([("streamType", "error"), ("port", "80"), ("requestID", "7")]),
            false,
        )
        .await
        .unwrap();
    err.response().await.unwrap();
    err.shutdown().await.unwrap();
    let mut msg = String::new();
    tokio::time::timeout(Duration::from_secs(5), err.read_to_string(&mut msg))
        .await
        .unwrap()
        .unwrap();
    assert!(
        msg.starts_with("(conn=127.0.0.1:")
            && msg.ends_with(", request=7) timed out waiting for streams"),
        "{msg}"
    );
    // A stream without a port is reset.
    let bad = session
        .open(Headers::from([("streamType", "data")]), false)
        .await
        .unwrap();
    assert!(bad.response().await.is_err());
    drop((bad, err, session));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resize_json_stops_resizes_but_not_the_session() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_exec(ExecRequest {
            tty: true,
            ..exec_req(&["resize-echo", "3"])
        })
        .unwrap();
    let (session, _incoming) = raw_session(&h, &url).await;
    let mut streams = Vec::new();
    for t in ["error", "stdout", "resize"] {
        let s = session
            .open(Headers::from([("streamType", t)]), false)
            .await
            .unwrap();
        s.response().await.unwrap();
        streams.push(s);
    }
    streams[2]
        .write_all(br#"{"Width":80,"Height":24}{"Width":"wide"}{"Width":1,"Height":1}"#)
        .await
        .unwrap();
    let mut out = String::new();
    streams[1].read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "80x24\n");
    let mut status = String::new();
    streams[0].read_to_string(&mut status).await.unwrap();
    assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);
    drop((streams, session));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_the_runtime_future_dropped() {
    let h = Harness::with_config(ServerConfig {
        stream_idle_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    for opts in [ClientOptions::spdy(), ClientOptions::websocket()] {
        let url = h.server.get_exec(exec_req(&["sleep", "30"])).unwrap();
        let started = Instant::now();
        let _ = run(&url, &opts, None, true, false, false, vec![]).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{opts:?}: {:?}",
            started.elapsed()
        );
    }
    h.finish().await;
    // kill_on_drop reaped `sleep`: no child of ours is left.
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        std::process::id(),
        std::process::id()
    ))
    .unwrap_or_default();
    assert!(children.trim().is_empty(), "children left: {children}");
}
