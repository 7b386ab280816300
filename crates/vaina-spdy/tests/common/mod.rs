//! Helpers shared by the integration tests: a raw frame-level peer, a wiretap that checks
//! flow control on the wire, and small utilities.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use vaina_spdy::frame::{DEFAULT_WINDOW, setting};
use vaina_spdy::{Frame, FrameDecoder, FrameEncoder, FrameError, StreamId};

/// Every test is bounded: a hang is a failure, not a stuck CI job.
pub async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out (hang)")
}

/// Deterministic payload so corruption and reordering are visible.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

/// A peer that speaks frames directly, to send what a well-behaved session never would.
pub struct RawPeer {
    pub io: DuplexStream,
    pub enc: FrameEncoder,
    pub dec: FrameDecoder,
    buf: BytesMut,
}

impl RawPeer {
    pub fn new(io: DuplexStream) -> Self {
        Self {
            io,
            enc: FrameEncoder::new(),
            dec: FrameDecoder::new(1 << 24, 1 << 20),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.enc
            .encode(&frame, &mut out)
            .expect("test frame encodes");
        self.io.write_all(&out).await.expect("write to session");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The session may already have hung up on us; that is what some tests expect.
        let _ = self.io.write_all(bytes).await;
    }

    /// The next frame from the session, or `None` once it closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => panic!("session sent an undecodable frame: {e}"),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.io.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame that is not connection housekeeping (SETTINGS, WINDOW_UPDATE).
    pub async fn next_significant(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Settings { .. } | Frame::WindowUpdate { .. } => continue,
                frame => return Some(frame),
            }
        }
    }

    /// Reads until the session hangs up, returning everything it sent.
    pub async fn drain(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        frames
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    ClientToServer,
    ServerToClient,
}

/// What the wiretap saw, and its own account of every window.
#[derive(Default)]
pub struct TapLog {
    pub frames: Vec<(Dir, Frame)>,
    /// (sender direction, stream id) -> window as seen on the wire; stream 0 = connection.
    windows: HashMap<(Dir, StreamId), i64>,
    initial: HashMap<Dir, i64>,
    pub violations: Vec<String>,
}

impl TapLog {
    pub fn count(&self, dir: Dir, pred: impl Fn(&Frame) -> bool) -> usize {
        self.frames
            .iter()
            .filter(|(d, f)| *d == dir && pred(f))
            .count()
    }

    pub fn max_data_len(&self, dir: Dir) -> usize {
        self.frames
            .iter()
            .filter_map(|(d, f)| match f {
                Frame::Data { data, .. } if *d == dir => Some(data.len()),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn record(&mut self, dir: Dir, frame: &Frame) {
        let other = match dir {
            Dir::ClientToServer => Dir::ServerToClient,
            Dir::ServerToClient => Dir::ClientToServer,
        };
        match frame {
            Frame::Data {
                stream_id, data, ..
            } => {
                let n = data.len() as i64;
                let initial = *self.initial.get(&dir).unwrap_or(&i64::from(DEFAULT_WINDOW));
                for key in [(dir, *stream_id), (dir, 0)] {
                    let start = if key.1 == 0 {
                        i64::from(DEFAULT_WINDOW)
                    } else {
                        initial
                    };
                    let w = self.windows.entry(key).or_insert(start);
                    *w -= n;
                    if *w < 0 {
                        self.violations.push(format!(
                            "{dir:?} overran window of stream {} by {}",
                            key.1, -*w
                        ));
                    }
                }
            }
            // A WINDOW_UPDATE travelling one way opens the window of the other way.
            Frame::WindowUpdate { stream_id, delta } => {
                let initial = *self
                    .initial
                    .get(&other)
                    .unwrap_or(&i64::from(DEFAULT_WINDOW));
                let start = if *stream_id == 0 {
                    i64::from(DEFAULT_WINDOW)
                } else {
                    initial
                };
                *self.windows.entry((other, *stream_id)).or_insert(start) += i64::from(*delta);
            }
            Frame::Settings { entries, .. } => {
                for e in entries
                    .iter()
                    .filter(|e| e.id == setting::INITIAL_WINDOW_SIZE)
                {
                    let old = *self
                        .initial
                        .get(&other)
                        .unwrap_or(&i64::from(DEFAULT_WINDOW));
                    let delta = i64::from(e.value) - old;
                    self.initial.insert(other, i64::from(e.value));
                    for ((d, id), w) in self.windows.iter_mut() {
                        if *d == other && *id != 0 {
                            *w += delta;
                        }
                    }
                }
            }
            _ => {}
        }
        self.frames.push((dir, frame.clone()));
    }
}

/// Connects two sessions through a relay that decodes every frame on the way (checking
/// flow control as it goes) and forwards the bytes untouched. Returns the client end,
/// the server end and the log.
pub fn wiretap(buffer: usize) -> (DuplexStream, DuplexStream, Arc<Mutex<TapLog>>) {
    let (client_io, tap_client) = tokio::io::duplex(buffer);
    let (tap_server, server_io) = tokio::io::duplex(buffer);
    let log = Arc::new(Mutex::new(TapLog::default()));
    let (c_read, c_write) = tokio::io::split(tap_client);
    let (s_read, s_write) = tokio::io::split(tap_server);
    tokio::spawn(relay(
        c_read,
        s_write,
        Dir::ClientToServer,
        Arc::clone(&log),
    ));
    tokio::spawn(relay(
        s_read,
        c_write,
        Dir::ServerToClient,
        Arc::clone(&log),
    ));
    (client_io, server_io, log)
}

async fn relay<R, W>(mut from: R, mut to: W, dir: Dir, log: Arc<Mutex<TapLog>>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut dec = FrameDecoder::new(1 << 24, 1 << 20);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => log.lock().unwrap().record(dir, &frame),
                Ok(None) => break,
                Err(e) => {
                    log.lock()
                        .unwrap()
                        .violations
                        .push(format!("{dir:?} sent a bad frame: {e}"));
                    break;
                }
            }
        }
        // Forward only after recording, so the log orders frames as the peer sees them.
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Builds an uncompressed header block by hand, independently of the crate's encoder.
pub fn raw_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (headers.len() as u32).to_be_bytes().to_vec();
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A zlib stream primed with the SPDY/3 dictionary, built on flate2 directly.
pub struct PlainCompressor(flate2::Compress);

impl PlainCompressor {
    pub fn new() -> Self {
        let mut c = flate2::Compress::new(flate2::Compression::default(), true);
        c.set_dictionary(vaina_spdy::headers::SPDY3_DICTIONARY)
            .unwrap();
        Self(c)
    }

    /// One SYNC_FLUSH-terminated block.
    pub fn block(&mut self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + 1024);
        let before = self.0.total_in();
        self.0
            .compress_vec(raw, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert_eq!(
            (self.0.total_in() - before) as usize,
            raw.len(),
            "test buffer too small"
        );
        assert!(out.len() < out.capacity(), "test buffer too small");
        out
    }
}

/// SYN_STREAM bytes with an arbitrary stream id and a caller-made compressed block.
pub fn syn_stream_bytes(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    let len = 10 + block.len() as u32;
    let mut out = vec![0x80, 0x03, 0x00, 0x01];
    out.extend_from_slice(&(u32::from(flags) << 24 | len).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(block);
    out
}

pub fn frame_error(err: &vaina_spdy::Error) -> Option<&FrameError> {
    match err {
        vaina_spdy::Error::Frame(e) => Some(e),
        _ => None,
    }
}
