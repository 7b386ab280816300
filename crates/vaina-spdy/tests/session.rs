//! Two sessions talking over an in-memory pipe, with a wiretap between them where the test
//! needs to see the frames.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{Dir, pattern, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaina_spdy::{Config, Error, Frame, GoAwayStatus, Headers, Incoming, RstStatus, Session};

/// Accepts streams and, for each, replies with its `streamtype`, reads to the end and
/// writes everything back before half-closing.
fn spawn_echo_server(mut incoming: Incoming) {
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.accept().await {
            tokio::spawn(async move {
                let kind = stream.headers().get("streamtype").unwrap_or("").to_owned();
                stream
                    .reply(Headers::from([("streamtype", kind)]), false)
                    .unwrap();
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await.unwrap();
                stream.write_all(&data).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
}

fn pair(config: Config) -> (Session, Incoming, Session, Incoming) {
    let (c, s) = tokio::io::duplex(16 * 1024);
    let (server, server_in) = Session::server(s, config.clone());
    let (client, client_in) = Session::client(c, config);
    (client, client_in, server, server_in)
}

#[tokio::test]
async fn five_concurrent_streams_echo_with_headers() {
    within(20, async {
        let (client, _cin, _server, server_in) = pair(Config::default());
        spawn_echo_server(server_in);
        let mut tasks = Vec::new();
        for i in 0..5u8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let kind = format!("kind-{i}");
                let mut stream = client
                    .open(Headers::from([("streamType", kind.as_str())]), false)
                    .await
                    .unwrap();
                assert_eq!(stream.id() % 2, 1, "client streams are odd");
                let payload = pattern(50_000 + usize::from(i) * 1000, i);
                // Write and read concurrently so neither side's window can deadlock us.
                let (mut rd, mut wr) = tokio::io::split(stream);
                let to_send = payload.clone();
                let writer = tokio::spawn(async move {
                    wr.write_all(&to_send).await.unwrap();
                    wr.shutdown().await.unwrap();
                    wr
                });
                let mut echo = Vec::new();
                rd.read_to_end(&mut echo).await.unwrap();
                let wr = writer.await.unwrap();
                stream = rd.unsplit(wr);
                assert_eq!(
                    stream.response().await.unwrap().get("streamtype"),
                    Some(kind.as_str())
                );
                assert!(echo == payload, "stream {i} echo differs");
                stream.id()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.sort();
        assert_eq!(ids, [1, 3, 5, 7, 9]);
    })
    .await;
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    within(10, async {
        let (client, _cin, _server, mut server_in) = pair(Config::default());
        let mut stream = client
            .open(Headers::from([("streamtype", "stdin")]), false)
            .await
            .unwrap();
        stream.write_all(b"request").await.unwrap();
        stream.shutdown().await.unwrap();
        assert!(
            stream.write_all(b"more").await.is_err(),
            "no writes after FIN"
        );

        let mut srv = server_in.accept().await.unwrap();
        srv.reply(Headers::new(), false).unwrap();
        let mut got = Vec::new();
        srv.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The client's FIN closed only its side: the server still writes, twice.
        srv.write_all(b"first ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        srv.write_all(b"second").await.unwrap();
        srv.shutdown().await.unwrap();

        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"first second");
        assert_eq!(
            stream.read(&mut [0u8; 8]).await.unwrap(),
            0,
            "EOF stays EOF"
        );
    })
    .await;
}

#[tokio::test]
async fn one_mib_each_way_is_flow_controlled() {
    within(30, async {
        let (c, s, log) = common::wiretap(8 * 1024);
        let (server, mut server_in) = Session::server(s, Config::default());
        let (client, _cin) = Session::client(c, Config::default());
        const LEN: usize = 1024 * 1024;

        let server_task = tokio::spawn(async move {
            let stream = server_in.accept().await.unwrap();
            stream.reply(Headers::new(), false).unwrap();
            let (mut rd, mut wr) = tokio::io::split(stream);
            let writer = tokio::spawn(async move {
                wr.write_all(&pattern(LEN, 2)).await.unwrap();
                wr.shutdown().await.unwrap();
                wr
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            let _wr = writer.await.unwrap();
            got
        });

        let stream = client
            .open(Headers::from([("streamtype", "data")]), false)
            .await
            .unwrap();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            wr.write_all(&pattern(LEN, 1)).await.unwrap();
            wr.shutdown().await.unwrap();
            wr
        });
        let mut from_server = Vec::new();
        rd.read_to_end(&mut from_server).await.unwrap();
        let _wr = writer.await.unwrap();
        let from_client = server_task.await.unwrap();
        assert!(
            from_client == pattern(LEN, 1),
            "client->server data corrupted"
        );
        assert!(
            from_server == pattern(LEN, 2),
            "server->client data corrupted"
        );
        drop(server);

        let log = log.lock().unwrap();
        assert!(
            log.violations.is_empty(),
            "flow control violated: {:?}",
            log.violations
        );
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            let stream_updates = log.count(
                dir,
                |f| matches!(f, Frame::WindowUpdate { stream_id, .. } if *stream_id != 0),
            );
            let conn_updates = log.count(dir, |f| {
                matches!(f, Frame::WindowUpdate { stream_id: 0, .. })
            });
            // 1 MiB through a 64 KiB stream window needs at least 15 returns of window.
            assert!(
                stream_updates >= 15,
                "{dir:?}: only {stream_updates} stream WINDOW_UPDATEs"
            );
            assert!(
                conn_updates >= 2,
                "{dir:?}: only {conn_updates} connection WINDOW_UPDATEs"
            );
            assert!(
                log.max_data_len(dir) <= 16 * 1024,
                "{dir:?}: DATA frame above max_send_frame_len"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn peer_initial_window_setting_is_honoured() {
    within(20, async {
        let (c, s, log) = common::wiretap(8 * 1024);
        let mut small = Config::default();
        small.initial_window_size = 4096;
        let (_server, mut server_in) = Session::server(s, small);
        let (client, _cin) = Session::client(c, Config::default());
        // The server's SETTINGS precede its PING reply, so after this the client knows.
        client.ping().await.unwrap();

        let reader = tokio::spawn(async move {
            let mut stream = server_in.accept().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            stream.shutdown().await.unwrap();
            got.len()
        });
        let mut stream = client.open(Headers::new(), false).await.unwrap();
        stream.write_all(&pattern(100_000, 3)).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), 100_000);

        let log = log.lock().unwrap();
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        assert!(
            log.max_data_len(Dir::ClientToServer) <= 4096,
            "frames split to the 4 KiB window"
        );
    })
    .await;
}

#[tokio::test]
async fn peer_reset_fails_reads_writes_and_the_reply() {
    within(10, async {
        let (client, _cin, _server, mut server_in) = pair(Config::default());
        let mut stream = client
            .open(Headers::from([("streamtype", "stdout")]), false)
            .await
            .unwrap();
        let srv = server_in.accept().await.unwrap();
        srv.reset(RstStatus::RefusedStream);

        assert!(matches!(
            stream.response().await,
            Err(Error::RemoteReset(RstStatus::RefusedStream))
        ));
        let err = stream.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert!(err.to_string().contains("RefusedStream"), "{err}");
        assert_eq!(
            stream.write_all(b"x").await.unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );
        // Our side of the reset fails too.
        let mut srv = srv;
        assert_eq!(
            srv.read(&mut [0u8; 4]).await.unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );

        // The session itself is unaffected.
        client.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn local_reset_reaches_the_peer_mid_transfer() {
    within(10, async {
        let (client, _cin, _server, mut server_in) = pair(Config::default());
        let mut stream = client.open(Headers::new(), false).await.unwrap();
        stream.write_all(b"partial").await.unwrap();
        stream.flush().await.unwrap();
        let mut srv = server_in.accept().await.unwrap();
        let mut buf = [0u8; 7];
        srv.read_exact(&mut buf).await.unwrap();
        stream.reset(RstStatus::Cancel);
        let err = srv.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert!(matches!(
            stream.read(&mut buf).await.unwrap_err().kind(),
            ErrorKind::ConnectionReset
        ));
    })
    .await;
}

#[tokio::test]
async fn dropping_an_unfinished_stream_cancels_it() {
    within(10, async {
        let (client, _cin, _server, mut server_in) = pair(Config::default());
        let stream = client.open(Headers::new(), false).await.unwrap();
        let mut srv = server_in.accept().await.unwrap();
        drop(stream);
        let err = srv.read(&mut [0u8; 1]).await.unwrap_err();
        assert!(err.to_string().contains("Cancel"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn ping_round_trips_both_ways() {
    within(10, async {
        let (client, _cin, server, _sin) = pair(Config::default());
        for _ in 0..3 {
            client.ping().await.unwrap();
            server.ping().await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn goaway_lets_open_streams_finish_and_refuses_new_ones() {
    within(10, async {
        let (client, _cin, server, mut server_in) = pair(Config::default());
        let mut stream = client
            .open(Headers::from([("streamtype", "stdout")]), false)
            .await
            .unwrap();
        let mut srv = server_in.accept().await.unwrap();
        srv.reply(Headers::new(), false).unwrap();

        let closing = tokio::spawn({
            let client = client.clone();
            async move { client.close().await }
        });
        // The server sees the GOAWAY: no more streams to accept, none to open.
        assert!(server_in.accept().await.is_none());
        assert!(matches!(
            server.open(Headers::new(), false).await,
            Err(Error::GoingAway)
        ));
        assert!(matches!(
            client.open(Headers::new(), false).await,
            Err(Error::GoingAway)
        ));
        assert_eq!(
            server.peer_went_away(),
            Some(0),
            "client had accepted no server streams"
        );

        // The stream opened before the GOAWAY still works both ways.
        srv.write_all(b"still here").await.unwrap();
        srv.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"still here");
        assert!(!closing.is_finished(), "close waits for open streams");
        stream.write_all(b"bye").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        srv.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");

        closing.await.unwrap().unwrap();
        server.closed().await.unwrap();
        assert!(client.is_closed() && server.is_closed());
        assert!(client.ping().await.is_err());
    })
    .await;
}

#[tokio::test]
async fn dropping_every_handle_sends_goaway_and_closes() {
    within(10, async {
        let (c, s, log) = common::wiretap(16 * 1024);
        let (server, _server_in) = Session::server(s, Config::default());
        let (client, client_in) = Session::client(c, Config::default());
        client.ping().await.unwrap();
        drop(client);
        drop(client_in);
        server.closed().await.unwrap();
        let log = log.lock().unwrap();
        assert_eq!(
            log.count(Dir::ClientToServer, |f| matches!(
                f,
                Frame::GoAway {
                    status: GoAwayStatus::Ok,
                    ..
                }
            )),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn peer_stream_limit_makes_open_wait_and_excess_streams_are_refused() {
    within(10, async {
        let mut limited = Config::default();
        limited.max_concurrent_streams = 2;
        let (client, _cin, _server, mut server_in) = pair(limited);
        client.ping().await.unwrap(); // SETTINGS(MAX_CONCURRENT_STREAMS=2) has arrived

        let a = client.open(Headers::new(), false).await.unwrap();
        let _b = client.open(Headers::new(), false).await.unwrap();
        let third = tokio::time::timeout(
            Duration::from_millis(100),
            client.open(Headers::new(), false),
        )
        .await;
        assert!(
            third.is_err(),
            "a third concurrent stream must wait for a slot"
        );

        let mut srv_a = server_in.accept().await.unwrap();
        let _srv_b = server_in.accept().await.unwrap();
        drop(a); // RST(CANCEL) frees a slot on both sides
        assert!(srv_a.read(&mut [0u8; 1]).await.is_err());
        let c = client.open(Headers::new(), false).await.unwrap();
        assert_eq!(c.id(), 5);
        assert_eq!(server_in.accept().await.unwrap().id(), 5);
    })
    .await;
}

#[tokio::test]
async fn server_refuses_streams_beyond_its_limit_even_from_a_hasty_client() {
    within(10, async {
        let mut limited = Config::default();
        limited.max_concurrent_streams = 1;
        let (c, s) = tokio::io::duplex(16 * 1024);
        let (_server, mut server_in) = Session::server(s, limited);
        let mut raw = common::RawPeer::new(c);
        for id in [1, 3] {
            raw.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new(),
            })
            .await;
        }
        assert_eq!(
            raw.next_significant().await,
            Some(Frame::RstStream {
                stream_id: 3,
                status: RstStatus::RefusedStream
            })
        );
        assert_eq!(server_in.accept().await.unwrap().id(), 1);
    })
    .await;
}

#[tokio::test]
async fn without_flow_control_a_peer_that_never_updates_windows_gets_everything() {
    within(20, async {
        // moby/spdystream never sends WINDOW_UPDATE; a raw peer stands in for it.
        async fn transfer(flow_control: bool) -> usize {
            let mut config = Config::default();
            config.flow_control = flow_control;
            let (c, s) = tokio::io::duplex(64 * 1024);
            let (_server, mut server_in) = Session::server(s, config);
            let mut raw = common::RawPeer::new(c);
            raw.send(Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                slot: 0,
                fin: true,
                unidirectional: false,
                headers: Headers::from([("streamtype", "stdout")]),
            })
            .await;
            let mut srv = server_in.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = srv.write_all(&pattern(300_000, 4)).await;
                let _ = srv.shutdown().await;
                // Keep the stream until the peer has everything.
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
            let mut received = 0;
            loop {
                match tokio::time::timeout(Duration::from_secs(1), raw.next()).await {
                    Ok(Some(Frame::Data { data, fin, .. })) => {
                        received += data.len();
                        if fin {
                            return received;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return received,
                }
            }
        }
        assert_eq!(transfer(false).await, 300_000);
        assert_eq!(
            transfer(true).await,
            65_536,
            "with flow control, the stream window stops the writer"
        );
    })
    .await;
}

#[tokio::test]
async fn without_flow_control_an_overrunning_peer_is_throttled_not_reset() {
    within(20, async {
        let mut config = Config::default();
        config.flow_control = false;
        let (c, s) = tokio::io::duplex(16 * 1024);
        let (_server, mut server_in) = Session::server(s, config);
        let mut raw = common::RawPeer::new(c);
        raw.send(Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new(),
        })
        .await;
        let mut srv = server_in.accept().await.unwrap();
        // 1 MiB in 32 KiB frames, ignoring every window, as moby/spdystream does.
        let (mut raw_rd, mut raw_wr) = tokio::io::split(raw.io);
        let sender = tokio::spawn(async move {
            let mut enc = vaina_spdy::FrameEncoder::new();
            for (i, chunk) in pattern(1024 * 1024, 5).chunks(32 * 1024).enumerate() {
                let mut out = bytes::BytesMut::new();
                let frame = Frame::Data {
                    stream_id: 1,
                    fin: i == 31,
                    data: bytes::Bytes::copy_from_slice(chunk),
                };
                enc.encode(&frame, &mut out).unwrap();
                raw_wr.write_all(&out).await.unwrap();
            }
            raw_wr
        });
        // Keep the session's output flowing so only the input side can push back.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = raw_rd.read_to_end(&mut sink).await;
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !sender.is_finished(),
            "the session must stop reading while the stream buffer is full"
        );

        let mut got = Vec::new();
        srv.read_to_end(&mut got).await.unwrap();
        assert!(
            got == pattern(1024 * 1024, 5),
            "all data, in order, no reset"
        );
        sender.await.unwrap();
    })
    .await;
}
