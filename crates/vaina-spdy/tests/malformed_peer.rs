//! A raw peer sends what no correct implementation would; the session must answer with
//! RST_STREAM or GOAWAY as the spec says, end cleanly, and never hang or panic.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{PlainCompressor, RawPeer, raw_block, syn_stream_bytes, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaina_spdy::frame::FrameError;
use vaina_spdy::{Config, Error, Frame, GoAwayStatus, Headers, Incoming, RstStatus, Session};

fn server_with_raw_client(config: Config) -> (Session, Incoming, RawPeer) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (server, incoming) = Session::server(s, config);
    (server, incoming, RawPeer::new(c))
}

fn syn(stream_id: u32, headers: Headers) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_id: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers,
    }
}

/// Expects GOAWAY(PROTOCOL_ERROR), then the session hanging up, then `closed()` reporting
/// the error; returns that error.
async fn expect_goaway_and_close(server: &Session, raw: &mut RawPeer) -> Error {
    let frame = raw.next_significant().await;
    assert!(
        matches!(
            frame,
            Some(Frame::GoAway {
                status: GoAwayStatus::ProtocolError,
                ..
            })
        ),
        "expected GOAWAY(PROTOCOL_ERROR), got {frame:?}"
    );
    assert!(
        raw.drain()
            .await
            .iter()
            .all(|f| !matches!(f, Frame::Data { .. })),
        "nothing after GOAWAY"
    );
    server.closed().await.unwrap_err()
}

#[tokio::test]
async fn syn_stream_with_stream_id_zero_gets_goaway() {
    within(5, async {
        let (server, _in, mut raw) = server_with_raw_client(Config::default());
        let block = PlainCompressor::new().block(&raw_block(&[("streamtype", "stdin")]));
        raw.send_bytes(&syn_stream_bytes(0, 0, &block)).await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(
            matches!(
                common::frame_error(&err),
                Some(FrameError::ZeroStreamId { kind: "SYN_STREAM" })
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn even_stream_id_from_a_client_is_reset_and_the_session_goes_on() {
    within(5, async {
        let (_server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        raw.send(syn(2, Headers::from([("streamtype", "stdin")])))
            .await;
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: RstStatus::ProtocolError
            })
        );
        raw.send(syn(3, Headers::from([("streamtype", "stdout")])))
            .await;
        let stream = incoming.accept().await.unwrap();
        assert_eq!(
            (stream.id(), stream.headers().get("streamtype")),
            (3, Some("stdout"))
        );
    })
    .await;
}

#[tokio::test]
async fn decreasing_stream_id_gets_goaway() {
    within(5, async {
        let (server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        raw.send(syn(5, Headers::new())).await;
        let _five = incoming.accept().await.unwrap();
        raw.send(syn(3, Headers::new())).await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn wrong_version_gets_goaway() {
    within(5, async {
        let (server, _in, mut raw) = server_with_raw_client(Config::default());
        // A SPDY/2 PING.
        raw.send_bytes(&[
            0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
        ])
        .await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(
            matches!(
                common::frame_error(&err),
                Some(FrameError::UnsupportedVersion(2))
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn oversized_frame_gets_goaway_without_waiting_for_its_payload() {
    within(5, async {
        let mut config = Config::default();
        config.max_frame_len = 16 * 1024;
        let (server, _in, mut raw) = server_with_raw_client(config);
        // DATA header announcing 1 MiB; the payload never comes.
        raw.send_bytes(&[0x00, 0x00, 0x00, 0x01, 0x00, 0x10, 0x00, 0x00])
            .await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(
            matches!(
                common::frame_error(&err),
                Some(FrameError::FrameTooLarge { .. })
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn truncated_frame_then_eof_ends_the_session() {
    within(5, async {
        let (server, _in, raw) = server_with_raw_client(Config::default());
        let mut io = raw.io;
        io.write_all(&[0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00])
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        let err = server.closed().await.unwrap_err();
        assert!(
            matches!(
                common::frame_error(&err),
                Some(FrameError::Truncated {
                    buffered: 9,
                    needed: 12
                })
            ),
            "{err}"
        );
        // The session hung up its side too.
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn garbage_zlib_block_gets_goaway() {
    within(5, async {
        let (server, _in, mut raw) = server_with_raw_client(Config::default());
        raw.send_bytes(&syn_stream_bytes(
            1,
            0,
            &[0x78, 0xf9, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02],
        ))
        .await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(
            matches!(common::frame_error(&err), Some(FrameError::Compression(_))),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn decompression_bomb_gets_goaway() {
    within(10, async {
        let mut config = Config::default();
        config.max_header_block_len = 16 * 1024;
        let (server, mut incoming, mut raw) = server_with_raw_client(config);
        // 2 MiB of 'a' in one header value, a few KiB on the wire.
        let value = "a".repeat(2 * 1024 * 1024);
        let block = PlainCompressor::new().block(&raw_block(&[("x", &value)]));
        assert!(block.len() < 64 * 1024);
        raw.send_bytes(&syn_stream_bytes(1, 0, &block)).await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(
            matches!(
                common::frame_error(&err),
                Some(FrameError::Compression(
                    vaina_spdy::HeaderError::DecompressedTooLarge { limit: 16384 }
                ))
            ),
            "{err}"
        );
        assert!(incoming.accept().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn invalid_header_names_reset_only_their_stream() {
    within(5, async {
        let (_server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        let mut zlib = PlainCompressor::new();
        let upper = zlib.block(&raw_block(&[("StreamType", "stdin")]));
        let duplicate = zlib.block(&raw_block(&[("a", "1"), ("a", "2")]));
        let fine = zlib.block(&raw_block(&[("streamtype", "stdin")]));
        raw.send_bytes(&syn_stream_bytes(1, 0, &upper)).await;
        raw.send_bytes(&syn_stream_bytes(3, 0, &duplicate)).await;
        raw.send_bytes(&syn_stream_bytes(5, 0, &fine)).await;
        for id in [1, 3] {
            assert_eq!(
                raw.next_significant().await,
                Some(Frame::RstStream {
                    stream_id: id,
                    status: RstStatus::ProtocolError
                })
            );
        }
        // The zlib context survived: stream 5's block, which depends on the others, decodes.
        let stream = incoming.accept().await.unwrap();
        assert_eq!(
            (stream.id(), stream.headers().get("streamtype")),
            (5, Some("stdin"))
        );
    })
    .await;
}

#[tokio::test]
async fn data_beyond_the_stream_window_is_a_flow_control_error() {
    within(5, async {
        let (_server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        raw.send(syn(1, Headers::new())).await;
        let mut stream = incoming.accept().await.unwrap();
        // 64 KiB fit the window exactly; one byte more does not.
        raw.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from(vec![7u8; 65_536]),
        })
        .await;
        raw.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"!"),
        })
        .await;
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::FlowControlError
            })
        );
        let err = stream.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(err.to_string().contains("FlowControlError"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn data_beyond_the_connection_window_gets_goaway() {
    within(5, async {
        let mut config = Config::default();
        config.connection_window_size = 65_536;
        config.initial_window_size = 1 << 20;
        let (server, mut incoming, mut raw) = server_with_raw_client(config);
        raw.send(syn(1, Headers::new())).await;
        let _stream = incoming.accept().await.unwrap();
        raw.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from(vec![0u8; 65_537]),
        })
        .await;
        let err = expect_goaway_and_close(&server, &mut raw).await;
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn frames_for_streams_that_never_existed_are_invalid_stream() {
    within(5, async {
        let (_server, _in, mut raw) = server_with_raw_client(Config::default());
        raw.send(Frame::Data {
            stream_id: 9,
            fin: false,
            data: Bytes::from_static(b"?"),
        })
        .await;
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 9,
                status: RstStatus::InvalidStream
            })
        );
        raw.send(Frame::SynReply {
            stream_id: 4,
            fin: false,
            headers: Headers::new(),
        })
        .await;
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 4,
                status: RstStatus::InvalidStream
            })
        );
    })
    .await;
}

#[tokio::test]
async fn data_after_fin_is_stream_already_closed() {
    within(5, async {
        let (_server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        raw.send(syn(1, Headers::new())).await;
        let _stream = incoming.accept().await.unwrap();
        raw.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"end"),
        })
        .await;
        raw.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"more"),
        })
        .await;
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::StreamAlreadyClosed
            })
        );
    })
    .await;
}

#[tokio::test]
async fn pings_are_answered_and_unknown_control_frames_skipped() {
    within(5, async {
        let (_server, _in, mut raw) = server_with_raw_client(Config::default());
        // CREDENTIAL (type 10), which this crate does not implement, then a PING.
        raw.send_bytes(&[
            0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x03, 0x01, 0x02, 0x03,
        ])
        .await;
        raw.send(Frame::Ping { id: 7 }).await;
        assert_eq!(raw.next_significant().await, Some(Frame::Ping { id: 7 }));
        // A PING with the server's own parity is a reply to nothing: not echoed.
        raw.send(Frame::Ping { id: 8 }).await;
        raw.send(Frame::Ping { id: 9 }).await;
        assert_eq!(raw.next_significant().await, Some(Frame::Ping { id: 9 }));
    })
    .await;
}

#[tokio::test]
async fn duplicate_syn_reply_is_stream_in_use() {
    within(5, async {
        let (s, c) = tokio::io::duplex(64 * 1024);
        let (client, _in) = Session::client(c, Config::default());
        let mut raw = RawPeer::new(s);
        let stream = client.open(Headers::new(), false).await.unwrap();
        assert!(matches!(
            raw.next_significant().await,
            Some(Frame::SynStream { stream_id: 1, .. })
        ));
        raw.send(Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::from([("a", "1")]),
        })
        .await;
        assert_eq!(stream.response().await.unwrap().get("a"), Some("1"));
        raw.send(Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new(),
        })
        .await;
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::StreamInUse
            })
        );
    })
    .await;
}

#[tokio::test]
async fn goaway_from_the_peer_refuses_streams_it_did_not_process() {
    within(5, async {
        let (s, c) = tokio::io::duplex(64 * 1024);
        let (client, _in) = Session::client(c, Config::default());
        let mut raw = RawPeer::new(s);
        let mut processed = client.open(Headers::new(), false).await.unwrap();
        let mut unprocessed = client.open(Headers::new(), false).await.unwrap();
        raw.send(Frame::GoAway {
            last_good_stream_id: 1,
            status: GoAwayStatus::Ok,
        })
        .await;
        let err = unprocessed.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(matches!(
            client.open(Headers::new(), false).await,
            Err(Error::GoingAway)
        ));
        // Stream 1 goes on until it is done; then the client hangs up by itself.
        raw.send(Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new(),
        })
        .await;
        raw.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"ok"),
        })
        .await;
        let mut got = Vec::new();
        processed.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
        assert!(!client.is_closed());
        processed.shutdown().await.unwrap();
        client.closed().await.unwrap();
        let rest = raw.drain().await;
        assert!(
            rest.contains(&Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new()
            }),
            "{rest:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn unknown_rst_status_is_reported_faithfully() {
    within(5, async {
        let (_server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        raw.send(syn(1, Headers::new())).await;
        let mut stream = incoming.accept().await.unwrap();
        raw.send_bytes(&[
            0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 1, 0, 0, 0, 99,
        ])
        .await;
        let err = stream.read(&mut [0u8; 1]).await.unwrap_err();
        assert!(err.to_string().contains("status 99"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn eof_mid_stream_fails_open_streams_but_not_finished_ones() {
    within(5, async {
        let (_server, mut incoming, mut raw) = server_with_raw_client(Config::default());
        raw.send(syn(1, Headers::new())).await;
        raw.send(syn(3, Headers::new())).await;
        raw.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"done"),
        })
        .await;
        let mut finished = incoming.accept().await.unwrap();
        let mut open = incoming.accept().await.unwrap();
        drop(raw);
        let mut got = Vec::new();
        finished.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"done");
        assert!(open.read(&mut [0u8; 1]).await.is_err());
        assert!(open.write_all(b"x").await.is_err());
        assert!(incoming.accept().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn random_garbage_never_hangs_or_panics_a_session() {
    within(30, async {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let (server, _in, mut raw) = server_with_raw_client(Config::default());
            // Start well-formed half the time so later garbage reaches deeper code.
            if round % 2 == 0 {
                raw.send(syn(1, Headers::from([("streamtype", "stdin")])))
                    .await;
            }
            let len = 1 + (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 && bytes.len() >= 8 {
                bytes[..4].copy_from_slice(&[0x80, 0x03, 0x00, (next() % 10) as u8]);
            }
            raw.send_bytes(&bytes).await;
            drop(raw);
            // Whatever the bytes were, the session ends by itself once the peer is gone.
            tokio::time::timeout(Duration::from_secs(2), server.closed())
                .await
                .unwrap_or_else(|_| panic!("round {round}: session did not end"))
                .ok();
            assert!(server.is_closed());
        }
    })
    .await;
}
