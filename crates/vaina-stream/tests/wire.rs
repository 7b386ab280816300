//! The server against hand-built bytes: the HTTP upgrade, SPDY header names, WebSocket
//! frames and the expected JSON are written here from kubelet's source, not produced by
//! this crate's client, so client and server cannot agree on the same mistake.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use vaina_spdy::{Frame, FrameDecoder, FrameEncoder, Headers};
use vaina_stream::request::ExecRequest;

struct RawSpdy {
    tcp: TcpStream,
    enc: FrameEncoder,
    dec: FrameDecoder,
    buf: BytesMut,
}

impl RawSpdy {
    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode(&frame, &mut out).unwrap();
        self.tcp.write_all(&out).await.unwrap();
    }

    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
                .await
                .expect("frame in time")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn syn(id: u32, stream_type: &str) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated_id: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: Headers::from([("streamtype", stream_type)]),
    }
}

async fn spdy_upgrade(h: &Harness, url: &str, protocol: &str) -> RawSpdy {
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n",
        path_of(url)
    );
    let (tcp, head) = raw_request(h.addr(), &req).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: spdy/3.1\r\n"), "{head}");
    assert!(
        lower.contains(&format!("\r\nx-stream-protocol-version: {protocol}\r\n")),
        "{head}"
    );
    RawSpdy {
        tcp,
        enc: FrameEncoder::new(),
        dec: FrameDecoder::new(1 << 20, 1 << 20),
        buf: BytesMut::new(),
    }
}

/// Collects DATA per stream until every listed stream has sent FIN.
async fn collect(raw: &mut RawSpdy, ids: &[u32]) -> std::collections::HashMap<u32, Vec<u8>> {
    let mut data = std::collections::HashMap::new();
    let mut open: Vec<u32> = ids.to_vec();
    while !open.is_empty() {
        match raw.next().await.expect("connection open") {
            Frame::Data {
                stream_id,
                fin,
                data: d,
            } => {
                data.entry(stream_id)
                    .or_insert_with(Vec::new)
                    .extend_from_slice(&d);
                if fin {
                    open.retain(|i| *i != stream_id);
                }
            }
            Frame::SynReply { stream_id, fin, .. } if fin => open.retain(|i| *i != stream_id),
            Frame::RstStream { stream_id, status } => panic!("stream {stream_id} reset: {status}"),
            _ => {}
        }
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_spdy_v4_exec_reports_exact_status_json() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_exec(ExecRequest {
            container_id: "c".into(),
            cmd: sv(&["sh", "-c", "echo hi; exit 7"]),
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let mut raw = spdy_upgrade(&h, &url, "v4.channel.k8s.io").await;
    raw.send(syn(1, "error")).await;
    raw.send(syn(3, "stdout")).await;
    let data = collect(&mut raw, &[1, 3]).await;
    assert_eq!(data[&3], b"hi\n");
    assert_eq!(
        String::from_utf8_lossy(&data[&1]),
        r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c echo hi; exit 7], exit code 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#
    );
    drop(raw);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_spdy_stdin_fin_and_success_status() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_exec(ExecRequest {
            container_id: "c".into(),
            cmd: sv(&["cat"]),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let mut raw = spdy_upgrade(&h, &url, "v5.channel.k8s.io").await;
    raw.send(syn(1, "error")).await;
    raw.send(syn(3, "stdin")).await;
    raw.send(syn(5, "stdout")).await;
    raw.send(Frame::Data {
        stream_id: 3,
        fin: false,
        data: "ping".into(),
    })
    .await;
    raw.send(Frame::Data {
        stream_id: 3,
        fin: true,
        data: "".into(),
    })
    .await;
    let data = collect(&mut raw, &[1, 5]).await;
    assert_eq!(data[&5], b"ping");
    assert_eq!(
        String::from_utf8_lossy(&data[&1]),
        r#"{"metadata":{},"status":"Success"}"#
    );
    drop(raw);
    h.finish().await;
}

async fn ws_upgrade(h: &Harness, url: &str, protocol: &str) -> WebSocketStream<TcpStream> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
        path_of(url)
    );
    let (tcp, head) = raw_request(h.addr(), &req).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    // RFC 6455's example key and accept value.
    assert!(
        lower.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    assert!(
        lower.contains(&format!("\r\nsec-websocket-protocol: {protocol}\r\n")),
        "{head}"
    );
    WebSocketStream::from_raw_socket(tcp, Role::Client, None).await
}

async fn messages_until_close(ws: &mut WebSocketStream<TcpStream>) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("message in time");
        match m {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return out,
            Some(Ok(m)) => out.push(m),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_websocket_v5_close_signal_ends_stdin() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_exec(ExecRequest {
            container_id: "c".into(),
            cmd: sv(&["cat"]),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let mut ws = ws_upgrade(&h, &url, "v5.channel.k8s.io").await;
    ws.send(Message::Binary(b"\x00hello".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let msgs = messages_until_close(&mut ws).await;
    let mut stdout = Vec::new();
    let mut error = Vec::new();
    assert_eq!(
        msgs[0],
        Message::Binary(vec![1].into()),
        "empty first message on stdout"
    );
    for m in &msgs[1..] {
        let Message::Binary(b) = m else {
            panic!("{m:?}")
        };
        match b[0] {
            1 => stdout.extend_from_slice(&b[1..]),
            3 => error.extend_from_slice(&b[1..]),
            other => panic!("channel {other}"),
        }
    }
    assert_eq!(stdout, b"hello");
    assert_eq!(
        String::from_utf8_lossy(&error),
        r#"{"metadata":{},"status":"Success"}"#
    );
    drop(ws);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_websocket_base64_v1_text_status() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_exec(ExecRequest {
            container_id: "c".into(),
            cmd: sv(&["sh", "-c", "echo hi; exit 2"]),
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let mut ws = ws_upgrade(&h, &url, "base64.channel.k8s.io").await;
    let msgs = messages_until_close(&mut ws).await;
    let texts: Vec<String> = msgs
        .iter()
        .map(|m| match m {
            Message::Text(t) => t.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    // "aGkK" is base64("hi\n"); the status is the v1 text of the failure message.
    use base64::Engine;
    let status = base64::engine::general_purpose::STANDARD.encode(
        "command terminated with non-zero exit code: error executing command [sh -c echo hi; exit 2], exit code 2",
    );
    assert_eq!(
        texts,
        vec!["1".to_owned(), "1aGkK".to_owned(), format!("3{status}")]
    );
    drop(ws);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_websocket_resize_json_reaches_runtime() {
    let h = Harness::start().await;
    let url = h
        .server
        .get_exec(ExecRequest {
            container_id: "c".into(),
            cmd: sv(&["resize-echo", "1"]),
            stdout: true,
            tty: true,
            ..Default::default()
        })
        .unwrap();
    let mut ws = ws_upgrade(&h, &url, "v4.channel.k8s.io").await;
    ws.send(Message::Binary(
        b"\x04{\"Width\":120,\"Height\":40}".to_vec().into(),
    ))
    .await
    .unwrap();
    let msgs = messages_until_close(&mut ws).await;
    assert!(
        msgs.contains(&Message::Binary(b"\x01120x40\n".to_vec().into())),
        "{msgs:?}"
    );
    assert_eq!(*h.runtime.resizes.lock().unwrap(), vec![ts(120, 40)]);
    drop(ws);
    h.finish().await;
}
