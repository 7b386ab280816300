//! The two tasks behind every session: the reader, which decodes frames and applies
//! them, and the writer, which owns the send-side zlib context and the write half.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::frame::{Frame, FrameDecoder, FrameEncoder, GoAwayStatus, StreamId};
use crate::state::{Outgoing, Shared, StreamState};

/// How much the writer gathers into one socket write.
const WRITE_BATCH: usize = 256 * 1024;
/// How much the reader asks the socket for at a time.
const READ_CHUNK: usize = 32 * 1024;

/// Decodes frames from the peer until the connection ends or the session terminates.
pub(crate) async fn reader_task<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut io: R) {
    let mut terminated = shared.terminated.subscribe();
    let mut decoder = FrameDecoder::new(
        shared.config.max_frame_len,
        shared.config.max_header_block_len,
    );
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    tracing::trace!(kind = frame.kind(), "SPDY frame received");
                    if !shared.handle_frame(frame).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let mut st = shared.lock();
                    match e.stream_error() {
                        // The frame was consumed and the zlib context is intact: only the
                        // stream pays.
                        Some((id, status)) => shared.stream_error(&mut st, id, status),
                        None => {
                            shared.connection_error(
                                &mut st,
                                GoAwayStatus::ProtocolError,
                                Error::Frame(e),
                            );
                            return;
                        }
                    }
                }
            }
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            read = io.read_buf(&mut buf) => match read {
                Ok(0) => {
                    let mut st = shared.lock();
                    match decoder.finish(&buf) {
                        Err(e) => shared.connection_error(&mut st, GoAwayStatus::ProtocolError, Error::Frame(e)),
                        Ok(()) => {
                            // The peer hung up. Streams it had finished read to their end;
                            // the others learn the connection is gone.
                            let open = st.streams.values().any(StreamState::active);
                            shared.terminate(&mut st, open.then_some(Error::ConnectionClosed));
                        }
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    let mut st = shared.lock();
                    shared.terminate(&mut st, Some(Error::Io(Arc::new(e))));
                    return;
                }
            },
            _ = terminated.wait_for(|t| *t) => return,
        }
    }
}

/// Writes queued frames in order, batching what is ready into one write.
pub(crate) async fn writer_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    io: W,
    rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    write_frames(&shared, io, rx).await;
    let mut st = shared.lock();
    st.writer_done = true;
    for s in st.streams.values_mut() {
        if let Some(w) = s.write_waker.take() {
            w.wake();
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    shared: &Shared,
    mut io: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut encoder = FrameEncoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut written: Vec<(StreamId, usize)> = Vec::new();
    while let Some(mut msg) = rx.recv().await {
        let mut close = false;
        loop {
            match msg {
                Outgoing::Frame(frame) => {
                    tracing::trace!(kind = frame.kind(), "SPDY frame sent");
                    if let Frame::Data {
                        stream_id, data, ..
                    } = &frame
                    {
                        written.push((*stream_id, data.len()));
                    }
                    if let Err(e) = encoder.encode(&frame, &mut buf) {
                        // Only frames we built reach here, and the session validates what
                        // goes into them; should one still fail, end the session cleanly.
                        tracing::error!(error = %e, kind = frame.kind(), "failed to encode SPDY frame");
                        let mut st = shared.lock();
                        shared.connection_error(
                            &mut st,
                            GoAwayStatus::InternalError,
                            Error::Frame(e),
                        );
                    }
                }
                Outgoing::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() >= WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            let result = async {
                io.write_all(&buf).await?;
                io.flush().await
            }
            .await;
            buf.clear();
            if let Err(e) = result {
                let mut st = shared.lock();
                shared.terminate(&mut st, Some(Error::Io(Arc::new(e))));
                return;
            }
        }
        if !written.is_empty() {
            let mut st = shared.lock();
            for (id, n) in written.drain(..) {
                if let Some(s) = st.streams.get_mut(&id) {
                    s.queued_bytes = s.queued_bytes.saturating_sub(n);
                    s.pending_frames = s.pending_frames.saturating_sub(1);
                    if let Some(w) = s.write_waker.take() {
                        w.wake();
                    }
                }
            }
        }
        if close {
            let _ = io.shutdown().await;
            return;
        }
    }
}
