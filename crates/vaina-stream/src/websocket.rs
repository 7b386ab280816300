//! The WebSocket transport (`wsstream` in apimachinery) and the exec / attach /
//! port-forward handlers that use it.
//!
//! Every message carries one channel: binary protocols (`channel.k8s.io`,
//! `v4.channel.k8s.io`, `v5.channel.k8s.io`, and no sub-protocol at all) prefix the data
//! with the channel number as one byte; base64 protocols (`base64.channel.k8s.io`,
//! `v4.base64.channel.k8s.io`) send text messages of `'0' + channel` followed by the data
//! in standard base64. `v5.channel.k8s.io` adds the close signal: a client sends
//! `[255, channel]` to half-close a channel (stdin EOF).
//!
//! Remote command channels are 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. When the
//! connection opens the server sends an empty message on the lowest channel it writes
//! (stdout, else stderr, else error) so the client knows it is established. The status
//! is written on channel 3 (JSON `metav1.Status` for v4/v5, text before), then the server
//! closes the WebSocket.
//!
//! Port forwarding (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io` or none) uses two
//! channels per requested port, data `2i` and error `2i+1`; the first message of each
//! carries the port as two little-endian bytes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::handoff::lend;
use crate::idle::Watchdog;
use crate::protocol::{
    CHANNEL_ERROR, CHANNEL_RESIZE, CHANNEL_STDERR, CHANNEL_STDIN, CHANNEL_STDOUT,
    WS_BASE64_CHANNEL, WS_CHANNEL, WS_STREAM_CLOSE, WS_V4_BASE64_CHANNEL, WS_V4_CHANNEL,
    WS_V5_CHANNEL,
};
use crate::remotecommand::{Action, CLOSE_GRACE, Options, run_action};
use crate::resize;
use crate::runtime::{StreamIo, StreamRuntime, TermSize};
use crate::splice::splice;

/// Sub-protocols the server accepts for exec and attach ("" = none offered).
pub const REMOTE_COMMAND_WS_PROTOCOLS: [&str; 6] = [
    "",
    WS_CHANNEL,
    WS_BASE64_CHANNEL,
    WS_V4_CHANNEL,
    WS_V4_BASE64_CHANNEL,
    WS_V5_CHANNEL,
];
/// Sub-protocols the server accepts for port forwarding.
pub const PORT_FORWARD_WS_PROTOCOLS: [&str; 3] = ["", WS_V4_CHANNEL, WS_V4_BASE64_CHANNEL];

const PIPE_SIZE: usize = 64 * 1024;

/// How channel data is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Binary,
    Base64,
}

impl Codec {
    pub(crate) fn for_protocol(protocol: &str) -> Self {
        if protocol.contains("base64") {
            Codec::Base64
        } else {
            Codec::Binary
        }
    }

    pub(crate) fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Codec::Binary => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::Binary(frame.into())
            }
            Codec::Base64 => {
                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                text.push(char::from(b'0'.wrapping_add(channel)));
                STANDARD.encode_string(data, &mut text);
                Message::Text(text.into())
            }
        }
    }
}

enum Outgoing {
    Data(u8, Bytes),
    CloseSignal(u8),
}

/// The channel layout of one connection.
pub(crate) struct MuxSetup {
    pub codec: Codec,
    /// Channels the peer may send on (others' data is dropped).
    pub inbound: Vec<bool>,
    /// Channels we write.
    pub outbound: Vec<bool>,
    /// Server side of v5: honour `[255, channel]` from the peer.
    pub accept_close_signal: bool,
    /// Client side of v5: send `[255, channel]` when we finish writing a channel.
    pub send_close_signal: bool,
    /// Messages sent before any channel data.
    pub initial: Vec<(u8, Vec<u8>)>,
    /// Close the WebSocket once every writer is done (the server's role). A client leaves
    /// closing to the server and only stops when the server has closed.
    pub close_when_written: bool,
}

/// The application's ends of the channels: read what the peer sent on channel `i` from
/// `readers[i]`; write to channel `i` through `writers[i]` (dropping or shutting it down
/// ends the channel).
pub(crate) struct MuxEnds {
    pub readers: Vec<Option<DuplexStream>>,
    pub writers: Vec<Option<DuplexStream>>,
    /// Becomes `true` when the peer's side of the connection has ended.
    pub gone: watch::Receiver<bool>,
}

/// Splits a WebSocket into channels. The returned future drives the connection: it ends
/// after every writer has been dropped (then a close frame is sent and the peer's close
/// awaited briefly) or as soon as the peer goes away.
pub(crate) fn mux<S>(
    ws: WebSocketStream<S>,
    setup: MuxSetup,
) -> (MuxEnds, impl Future<Output = ()> + Send)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let n = setup.inbound.len().max(setup.outbound.len());
    let mut readers = Vec::with_capacity(n);
    let mut inbound = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    let mut pump_ends = Vec::new();
    for ch in 0..n {
        if setup.inbound.get(ch).copied().unwrap_or(false) {
            let (app, ours) = tokio::io::duplex(PIPE_SIZE);
            readers.push(Some(app));
            inbound.push(Some(ours));
        } else {
            readers.push(None);
            inbound.push(None);
        }
        if setup.outbound.get(ch).copied().unwrap_or(false) {
            let (app, ours) = tokio::io::duplex(PIPE_SIZE);
            writers.push(Some(app));
            pump_ends.push((ch as u8, ours));
        } else {
            writers.push(None);
        }
    }
    let (gone_tx, gone) = watch::channel(false);
    let codec = setup.codec;
    let driver = async move {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(32);
        let pumps: FuturesUnordered<_> = pump_ends
            .into_iter()
            .map(|(ch, end)| pump(ch, end, out_tx.clone(), setup.send_close_signal))
            .collect();
        drop(out_tx);
        let initial = setup.initial;
        let close_when_written = setup.close_when_written;
        let writer = async move {
            for (ch, data) in initial {
                if sink.send(codec.encode(ch, &data)).await.is_err() {
                    return;
                }
            }
            while let Some(out) = out_rx.recv().await {
                let msg = match out {
                    Outgoing::Data(ch, data) => codec.encode(ch, &data),
                    Outgoing::CloseSignal(ch) => Message::Binary(vec![WS_STREAM_CLOSE, ch].into()),
                };
                if sink.send(msg).await.is_err() {
                    return;
                }
            }
            if !close_when_written {
                // Keep the sink (and so the connection) until the reader is done.
                std::future::pending::<()>().await;
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
        };
        let accept_close = setup.accept_close_signal;
        let reader = async move {
            while let Some(Ok(msg)) = stream.next().await {
                let data: Bytes = match msg {
                    Message::Binary(b) => b,
                    Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if data.is_empty() {
                    continue;
                }
                if accept_close && data[0] == WS_STREAM_CLOSE {
                    if data.len() != 2 || usize::from(data[1]) >= n {
                        tracing::warn!("invalid stream close signal {:?}", &data[..]);
                        break;
                    }
                    inbound[usize::from(data[1])] = None;
                    continue;
                }
                let mut ch = data[0];
                if codec == Codec::Base64 {
                    ch = ch.wrapping_sub(b'0');
                }
                let ch = usize::from(ch);
                if ch >= n {
                    tracing::debug!("frame for channel {ch}, which does not exist");
                    continue;
                }
                let Some(pipe) = inbound[ch].as_mut() else {
                    continue;
                };
                let payload = match codec {
                    Codec::Binary => data.slice(1..),
                    Codec::Base64 => match STANDARD.decode(&data[1..]) {
                        Ok(d) => d.into(),
                        Err(e) => {
                            tracing::warn!("invalid base64 on channel {ch}: {e}");
                            continue;
                        }
                    },
                };
                if payload.is_empty() {
                    continue;
                }
                if pipe.write_all(&payload).await.is_err() {
                    inbound[ch] = None; // the application stopped reading
                }
            }
            drop(inbound);
            let _ = gone_tx.send(true);
        };
        tokio::pin!(reader);
        let writing = futures::future::join(pumps.collect::<Vec<()>>(), writer);
        tokio::select! {
            _ = &mut reader => return,
            _ = writing => {}
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
    };
    (
        MuxEnds {
            readers,
            writers,
            gone,
        },
        driver,
    )
}

/// Moves what the application writes on one channel into messages.
async fn pump(ch: u8, mut end: DuplexStream, out: mpsc::Sender<Outgoing>, close_signal: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match end.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out
                    .send(Outgoing::Data(ch, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    if close_signal {
        let _ = out.send(Outgoing::CloseSignal(ch)).await;
    }
}

/// Serves exec or attach on an accepted WebSocket.
pub(crate) async fn serve_remote_command<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    opts: Options,
    action: Action,
    runtime: Arc<dyn StreamRuntime>,
    mut watchdog: Watchdog,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let json = matches!(
        protocol,
        WS_V4_CHANNEL | WS_V4_BASE64_CHANNEL | WS_V5_CHANNEL
    );
    let first = if opts.stdout {
        CHANNEL_STDOUT
    } else if opts.stderr {
        CHANNEL_STDERR
    } else {
        CHANNEL_ERROR
    };
    let setup = MuxSetup {
        codec: Codec::for_protocol(protocol),
        inbound: vec![opts.stdin, false, false, false, opts.tty],
        outbound: vec![false, opts.stdout, opts.stderr, true, false],
        accept_close_signal: protocol == WS_V5_CHANNEL,
        send_close_signal: false,
        initial: vec![(first, Vec::new())],
        close_when_written: true,
    };
    let (mut ends, driver) = mux(ws, setup);
    let mut gone = ends.gone.clone();
    let (stdout, stdout_back) = lend_opt(ends.writers[usize::from(CHANNEL_STDOUT)].take());
    let (stderr, stderr_back) = lend_opt(ends.writers[usize::from(CHANNEL_STDERR)].take());
    let mut error = ends.writers[usize::from(CHANNEL_ERROR)].take();
    let (resize_tx, resize_rx) = mpsc::channel::<TermSize>(16);
    let resize_reader = ends.readers[usize::from(CHANNEL_RESIZE)].take();
    let io = StreamIo {
        stdin: ends.readers[usize::from(CHANNEL_STDIN)]
            .take()
            .map(|r| Box::new(r) as _),
        stdout: stdout.map(|w| Box::new(w) as _),
        stderr: stderr.map(|w| Box::new(w) as _),
        tty: opts.tty,
        resize: resize_reader.is_some().then_some(resize_rx),
    };
    let resize_pump = async move {
        match resize_reader {
            Some(r) => resize::pump(r, resize_tx).await,
            None => drop(resize_tx),
        }
        std::future::pending::<()>().await
    };
    let work = async move {
        let status = tokio::select! {
            s = run_action(runtime, &action, io) => s,
            _ = resize_pump => unreachable!("the resize pump never completes"),
        };
        for back in [stdout_back, stderr_back].into_iter().flatten() {
            if let Some(mut w) = back.take() {
                let _ = w.shutdown().await;
            }
        }
        if let Some(e) = error.as_mut() {
            let bytes = if json {
                status.to_json()
            } else {
                status.to_text()
            };
            let _ = e.write_all(&bytes).await;
            let _ = e.shutdown().await;
        }
        drop(error);
    };
    tokio::select! {
        _ = futures::future::join(work, driver) => {}
        _ = crate::idle::until_true(&mut gone) => {}
        _ = watchdog.fired() => {}
    }
}

/// Serves port forwarding on an accepted WebSocket: one data/error channel pair per port.
pub(crate) async fn serve_port_forward<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    sandbox_id: String,
    ports: Vec<u16>,
    runtime: Arc<dyn StreamRuntime>,
    grace: Duration,
    mut watchdog: Watchdog,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let n = ports.len() * 2;
    let mut initial = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        initial.push(((2 * i) as u8, port.to_le_bytes().to_vec()));
        initial.push(((2 * i + 1) as u8, port.to_le_bytes().to_vec()));
    }
    let setup = MuxSetup {
        codec: Codec::for_protocol(protocol),
        inbound: (0..n).map(|ch| ch % 2 == 0).collect(),
        outbound: vec![true; n],
        accept_close_signal: false,
        send_close_signal: false,
        initial,
        close_when_written: true,
    };
    let (mut ends, driver) = mux(ws, setup);
    let mut gone = ends.gone.clone();
    let forwards: FuturesUnordered<_> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let data_rd = ends.readers[2 * i].take();
            let data_wr = ends.writers[2 * i].take();
            let err_wr = ends.writers[2 * i + 1].take();
            let runtime = Arc::clone(&runtime);
            let sandbox_id = sandbox_id.clone();
            async move {
                let (Some(mut data_rd), Some(mut data_wr), Some(mut err_wr)) =
                    (data_rd, data_wr, err_wr)
                else {
                    return;
                };
                match runtime.port_forward(sandbox_id.clone(), port).await {
                    Ok(conn) => splice(&mut data_rd, &mut data_wr, conn, grace).await,
                    Err(e) => {
                        let msg =
                            format!("error forwarding port {port} to pod {sandbox_id}, uid : {e}");
                        tracing::warn!("{msg}");
                        let _ = err_wr.write_all(msg.as_bytes()).await;
                    }
                }
                let _ = err_wr.shutdown().await;
            }
        })
        .collect();
    drop(ends.writers);
    drop(ends.readers);
    let work = forwards.collect::<Vec<()>>();
    tokio::select! {
        _ = futures::future::join(work, driver) => {}
        _ = crate::idle::until_true(&mut gone) => {}
        _ = watchdog.fired() => {}
    }
}

type LentPipe = crate::handoff::Lent<DuplexStream>;

fn lend_opt(
    w: Option<DuplexStream>,
) -> (
    Option<LentPipe>,
    Option<crate::handoff::Reclaim<DuplexStream>>,
) {
    match w {
        Some(w) => {
            let (l, r) = lend(w);
            (Some(l), Some(r))
        }
        None => (None, None),
    }
}
