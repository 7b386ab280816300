//! One SPDY stream as an `AsyncRead + AsyncWrite` byte pipe.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Error;
use crate::frame::{Frame, RstStatus, StreamId};
use crate::headers::Headers;
use crate::state::{Shared, State, StreamState, max_queued};

/// A stream of a [`Session`](crate::Session).
///
/// Reading yields the peer's DATA and ends (`Ok(0)`) at its FIN; writing sends DATA,
/// split to fit the peer's windows and [`Config::max_send_frame_len`](crate::Config), and
/// waits while the windows are empty. `shutdown` sends FIN: a half close, reading goes on.
/// A reset, by either side, fails reads and writes with `ConnectionReset`.
///
/// Dropping a stream that is still open in either direction resets it with CANCEL, so
/// finish with `shutdown` and read to the end for an orderly close.
pub struct Stream {
    shared: Arc<Shared>,
    id: StreamId,
    headers: Headers,
    priority: u8,
    associated_id: StreamId,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: StreamId,
        headers: Headers,
        priority: u8,
        associated_id: StreamId,
    ) -> Self {
        Self {
            shared,
            id,
            headers,
            priority,
            associated_id,
        }
    }

    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The SYN_STREAM headers: the peer's for an accepted stream, ours for an opened one.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The stream this one is associated with (server push), or 0.
    pub fn associated_id(&self) -> StreamId {
        self.associated_id
    }

    /// Answers a stream the peer opened with SYN_REPLY; `fin` ends our side at once.
    pub fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        headers.validate().map_err(Error::InvalidHeaders)?;
        self.with_open_state(|shared, st, id| {
            let s = stream_mut(st, id)?;
            if s.local {
                return Err(Error::InvalidState(
                    "reply() is for streams the peer opened",
                ));
            }
            if s.replied {
                return Err(Error::InvalidState("stream was already replied to"));
            }
            s.replied = true;
            s.local_fin |= fin;
            shared.send(Frame::SynReply {
                stream_id: id,
                fin,
                headers,
            });
            if fin {
                shared.after_stream_change(st);
            }
            Ok(())
        })
    }

    /// Waits for the peer's SYN_REPLY to a stream we opened and returns its headers.
    pub async fn response(&self) -> Result<Headers, Error> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            let terminated = st.terminated;
            let conn_err = st.connection_error();
            let Some(s) = st.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(conn_err));
            };
            if !s.local {
                return Poll::Ready(Err(Error::InvalidState(
                    "response() is for streams we opened",
                )));
            }
            if let Some(reply) = &s.reply {
                return Poll::Ready(Ok(reply.clone()));
            }
            if s.replied {
                return Poll::Ready(Err(Error::InvalidState(
                    "a unidirectional stream gets no reply",
                )));
            }
            if let Some(e) = &s.reset {
                return Poll::Ready(Err(e.clone()));
            }
            if terminated {
                return Poll::Ready(Err(conn_err));
            }
            s.reply_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Sends a HEADERS frame with more headers; `fin` ends our side.
    pub fn send_headers(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        headers.validate().map_err(Error::InvalidHeaders)?;
        self.with_open_state(|shared, st, id| {
            let s = stream_mut(st, id)?;
            if s.local_fin {
                return Err(Error::InvalidState("stream is already closed for sending"));
            }
            ensure_replied(shared, s, id);
            s.local_fin |= fin;
            shared.send(Frame::Headers {
                stream_id: id,
                fin,
                headers,
            });
            if fin {
                shared.after_stream_change(st);
            }
            Ok(())
        })
    }

    /// Headers the peer sent in HEADERS frames since the last call.
    pub fn take_extra_headers(&self) -> Vec<Headers> {
        let mut st = self.shared.lock();
        st.streams
            .get_mut(&self.id)
            .map(|s| std::mem::take(&mut s.extra_headers))
            .unwrap_or_default()
    }

    /// Aborts the stream with RST_STREAM(`status`); reads and writes fail from now on.
    pub fn reset(&self, status: RstStatus) {
        let mut st = self.shared.lock();
        self.shared.stream_error(&mut st, self.id, status);
    }

    /// Runs `f` on the stream's state if neither the stream nor the session has ended.
    fn with_open_state<T>(
        &self,
        f: impl FnOnce(&Shared, &mut State, StreamId) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut st = self.shared.lock();
        if let Some(e) = st.streams.get(&self.id).and_then(|s| s.reset.clone()) {
            return Err(e);
        }
        if st.terminated {
            return Err(st.connection_error());
        }
        f(&self.shared, &mut st, self.id)
    }
}

fn stream_mut(st: &mut State, id: StreamId) -> Result<&mut StreamState, Error> {
    let err = st.connection_error();
    st.streams.get_mut(&id).ok_or(err)
}

/// The peer expects SYN_REPLY before DATA on a stream it opened (moby/spdystream drops
/// data that comes first), so sending without an explicit reply replies with no headers.
fn ensure_replied(shared: &Shared, s: &mut StreamState, id: StreamId) {
    if !s.local && !s.replied {
        s.replied = true;
        shared.send(Frame::SynReply {
            stream_id: id,
            fin: false,
            headers: Headers::new(),
        });
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let terminated = st.terminated;
        let conn_err = st.connection_error();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(conn_err.into()));
        };
        if let Some(e) = &s.reset {
            return Poll::Ready(Err(e.clone().into()));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(chunk) = s.recv_buf.front_mut() else {
                break;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.advance(n);
            if chunk.is_empty() {
                s.recv_buf.pop_front();
            }
            copied += n;
        }
        if copied > 0 {
            s.recv_buffered -= copied;
            self.shared.consumed(&mut st, self.id, copied);
            return Poll::Ready(Ok(()));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if terminated {
            return Poll::Ready(Err(conn_err.into()));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let shared = &self.shared;
        let config = &shared.config;
        let mut st = shared.lock();
        let terminated = st.terminated;
        let conn_err = st.connection_error();
        let conn_window = st.conn_send_window;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(conn_err.into()));
        };
        if let Some(e) = &s.reset {
            return Poll::Ready(Err(e.clone().into()));
        }
        if terminated {
            return Poll::Ready(Err(conn_err.into()));
        }
        if s.local_fin {
            let err = Error::InvalidState("stream is closed for sending");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, err)));
        }
        if s.queued_bytes >= max_queued(config) {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = buf.len().min(config.max_send_frame_len);
        if config.flow_control {
            let window = s.send_window.min(conn_window).max(0);
            n = n.min(usize::try_from(window).unwrap_or(usize::MAX));
            if n == 0 {
                // Woken by a WINDOW_UPDATE for this stream or the connection.
                s.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        ensure_replied(shared, s, self.id);
        s.send_window -= n as i64;
        s.queued_bytes += n;
        s.pending_frames += 1;
        st.conn_send_window -= n as i64;
        shared.send(Frame::Data {
            stream_id: self.id,
            fin: false,
            data: Bytes::copy_from_slice(&buf[..n]),
        });
        Poll::Ready(Ok(n))
    }

    /// Ready once everything written so far has been handed to the connection.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let writer_done = st.writer_done;
        let conn_err = st.connection_error();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(conn_err.into()));
        };
        // Frames queued before a reset or the session's end are still written, so wait
        // for them either way; only a writer that is gone makes flushing fail.
        if s.pending_frames == 0 {
            return Poll::Ready(Ok(()));
        }
        if writer_done {
            return Poll::Ready(Err(conn_err.into()));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Sends FIN (once) and waits for it to be written: our half of the stream is done.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let shared = &self.shared;
            let mut st = shared.lock();
            let terminated = st.terminated;
            let conn_err = st.connection_error();
            let Some(s) = st.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(conn_err.into()));
            };
            if !s.local_fin {
                if let Some(e) = &s.reset {
                    return Poll::Ready(Err(e.clone().into()));
                }
                if terminated {
                    return Poll::Ready(Err(conn_err.into()));
                }
                ensure_replied(shared, s, self.id);
                s.local_fin = true;
                s.pending_frames += 1;
                shared.send(Frame::Data {
                    stream_id: self.id,
                    fin: true,
                    data: Bytes::new(),
                });
                shared.after_stream_change(&mut st);
            }
        }
        self.poll_flush(cx)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.release_stream(self.id);
    }
}
