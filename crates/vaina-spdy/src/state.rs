//! What a session's tasks and handles share, and the moves they all make on it: queueing
//! frames, resetting streams, returning flow-control window, ending the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::Error;
use crate::frame::{Frame, GoAwayStatus, RstStatus, StreamId};
use crate::headers::Headers;
use crate::session::Role;
use crate::stream::Stream;

/// A message for the writer task.
pub(crate) enum Outgoing {
    Frame(Frame),
    /// Write what is queued before this, then shut the connection down.
    Close,
}

/// Bytes of DATA one stream may have queued for the writer before `poll_write` waits:
/// bounds memory when flow control does not (peer windows ignored or very large).
const MAX_QUEUED_PER_STREAM: usize = 256 * 1024;

/// Bytes of DATA one stream may have queued; see [`MAX_QUEUED_PER_STREAM`].
pub(crate) fn max_queued(config: &Config) -> usize {
    MAX_QUEUED_PER_STREAM.max(config.max_send_frame_len)
}

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) config: Config,
    pub(crate) role: Role,
    pub(crate) out: mpsc::UnboundedSender<Outgoing>,
    pub(crate) terminated: watch::Sender<bool>,
    /// Notified when a stream stops being active or the session ends: `open` waits on it
    /// when the peer's stream limit is reached.
    pub(crate) slots: Notify,
    /// Notified when the application reads from or drops a stream: the reader waits on it
    /// when flow control is off and a stream's buffer is full.
    pub(crate) progress: Notify,
}

pub(crate) struct State {
    pub(crate) streams: HashMap<StreamId, StreamState>,
    /// Next id we allocate; u64 so exhausting the 31-bit space is observable.
    pub(crate) next_stream_id: u64,
    /// Highest id of a stream the peer opened (GOAWAY's last-good-stream-id).
    pub(crate) last_peer_stream_id: StreamId,
    /// What we may still send on the connection (SPDY/3.1 connection window).
    pub(crate) conn_send_window: i64,
    /// What the peer may still send us on the connection.
    pub(crate) conn_recv_window: i64,
    /// Bytes the application consumed that we have not yet returned by WINDOW_UPDATE.
    pub(crate) conn_recv_unacked: u32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE: the send window of each new stream.
    pub(crate) peer_initial_window: i64,
    pub(crate) peer_max_streams: u32,
    pub(crate) next_ping_id: u32,
    pub(crate) pings: HashMap<u32, oneshot::Sender<()>>,
    pub(crate) accept_tx: Option<mpsc::UnboundedSender<Stream>>,
    pub(crate) goaway_sent: bool,
    pub(crate) goaway_received: Option<StreamId>,
    pub(crate) terminated: bool,
    /// The writer task has exited: nothing queued from now on reaches the peer.
    pub(crate) writer_done: bool,
    pub(crate) error: Option<Error>,
}

impl State {
    /// The error a stream operation reports once the connection is gone.
    pub(crate) fn connection_error(&self) -> Error {
        self.error.clone().unwrap_or(Error::ConnectionClosed)
    }
}

pub(crate) struct StreamState {
    /// We opened it (as opposed to the peer).
    pub(crate) local: bool,
    pub(crate) recv_buf: VecDeque<Bytes>,
    pub(crate) recv_buffered: usize,
    pub(crate) remote_fin: bool,
    /// What the peer may still send on this stream before we return window.
    pub(crate) recv_window: i64,
    pub(crate) recv_unacked: u32,
    pub(crate) read_waker: Option<Waker>,
    /// What we may still send on this stream.
    pub(crate) send_window: i64,
    /// FIN queued (or implied by UNIDIRECTIONAL): we send nothing more.
    pub(crate) local_fin: bool,
    /// DATA bytes and frames queued for the writer but not yet written.
    pub(crate) queued_bytes: usize,
    pub(crate) pending_frames: usize,
    pub(crate) write_waker: Option<Waker>,
    /// Locally opened: SYN_REPLY received. Peer opened: SYN_REPLY sent.
    pub(crate) replied: bool,
    pub(crate) reply: Option<Headers>,
    pub(crate) reply_waker: Option<Waker>,
    pub(crate) extra_headers: Vec<Headers>,
    pub(crate) reset: Option<Error>,
}

impl StreamState {
    pub(crate) fn new(local: bool, send_window: i64, recv_window: i64) -> Self {
        Self {
            local,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            remote_fin: false,
            recv_window,
            recv_unacked: 0,
            read_waker: None,
            send_window,
            local_fin: false,
            queued_bytes: 0,
            pending_frames: 0,
            write_waker: None,
            replied: false,
            reply: None,
            reply_waker: None,
            extra_headers: Vec::new(),
            reset: None,
        }
    }

    /// Still open in at least one direction and not reset.
    pub(crate) fn active(&self) -> bool {
        self.reset.is_none() && !(self.local_fin && self.remote_fin)
    }

    pub(crate) fn wake_all(&mut self) {
        for waker in [
            self.read_waker.take(),
            self.write_waker.take(),
            self.reply_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            waker.wake();
        }
    }

    /// Drops buffered input, returning how many bytes that was (for the connection window).
    pub(crate) fn discard_input(&mut self) -> usize {
        self.recv_buf.clear();
        std::mem::take(&mut self.recv_buffered)
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not turn into panics here: the state stays consistent
        // between statements, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame. Callers hold the state lock, which keeps wire order = state order.
    pub(crate) fn send(&self, frame: Frame) {
        // Fails only once the writer has exited, when nothing can be sent anyway.
        let _ = self.out.send(Outgoing::Frame(frame));
    }

    pub(crate) fn could_have_existed(&self, st: &State, id: StreamId) -> bool {
        if self.role.owns(id) {
            u64::from(id) < st.next_stream_id
        } else {
            id <= st.last_peer_stream_id
        }
    }

    /// Resets stream `id` on our initiative: RST_STREAM to the peer, error locally.
    pub(crate) fn stream_error(&self, st: &mut State, id: StreamId, status: RstStatus) {
        let mut discarded = 0;
        if let Some(s) = st.streams.get_mut(&id) {
            if s.reset.is_some() {
                return;
            }
            s.reset = Some(Error::LocalReset(status));
            discarded = s.discard_input();
            s.wake_all();
        }
        tracing::debug!(stream = id, %status, "resetting SPDY stream");
        if !st.terminated {
            self.send(Frame::RstStream {
                stream_id: id,
                status,
            });
        }
        self.credit_connection(st, discarded);
        self.after_stream_change(st);
    }

    /// The peer broke the connection: GOAWAY with `status`, then tear down.
    pub(crate) fn connection_error(&self, st: &mut State, status: GoAwayStatus, error: Error) {
        if st.terminated {
            return;
        }
        tracing::debug!(%error, "SPDY connection error");
        self.send_goaway(st, status);
        self.terminate(st, Some(error));
    }

    pub(crate) fn send_goaway(&self, st: &mut State, status: GoAwayStatus) {
        if !st.goaway_sent && !st.terminated {
            st.goaway_sent = true;
            self.send(Frame::GoAway {
                last_good_stream_id: st.last_peer_stream_id,
                status,
            });
        }
    }

    /// Starts a graceful close: no new streams either way, and the connection ends once
    /// the active streams have.
    pub(crate) fn go_away(&self, st: &mut State, status: GoAwayStatus) {
        self.send_goaway(st, status);
        st.accept_tx = None;
        self.after_stream_change(st);
    }

    /// Ends the session: fails whatever waits, lets the writer drain and close, stops the
    /// reader. `error` is `None` for an orderly end.
    pub(crate) fn terminate(&self, st: &mut State, error: Option<Error>) {
        if st.terminated {
            return;
        }
        st.terminated = true;
        st.error = error;
        st.accept_tx = None;
        st.pings.clear();
        for s in st.streams.values_mut() {
            s.wake_all();
        }
        let _ = self.out.send(Outgoing::Close);
        self.terminated.send_replace(true);
        self.slots.notify_waiters();
        self.progress.notify_waiters();
    }

    /// To be called whenever a stream may have stopped being active.
    pub(crate) fn after_stream_change(&self, st: &mut State) {
        self.slots.notify_waiters();
        let going_away = st.goaway_sent || st.goaway_received.is_some();
        if going_away && !st.terminated && !st.streams.values().any(StreamState::active) {
            self.terminate(st, None);
        }
    }

    /// The application consumed `n` bytes of stream `id`: return them to the peer's
    /// windows once half a window has accumulated, to keep WINDOW_UPDATEs few.
    pub(crate) fn consumed(&self, st: &mut State, id: StreamId, n: usize) {
        let threshold = (self.config.initial_window_size / 2).max(1);
        if let Some(s) = st.streams.get_mut(&id) {
            if !s.remote_fin && s.reset.is_none() && !st.terminated {
                s.recv_unacked = s.recv_unacked.saturating_add(n as u32);
                if s.recv_unacked >= threshold {
                    let delta = std::mem::take(&mut s.recv_unacked);
                    s.recv_window += i64::from(delta);
                    self.send(Frame::WindowUpdate {
                        stream_id: id,
                        delta,
                    });
                }
            }
        }
        self.credit_connection(st, n);
        if !self.config.flow_control {
            self.progress.notify_waiters();
        }
    }

    /// Returns `n` received bytes to the connection window.
    pub(crate) fn credit_connection(&self, st: &mut State, n: usize) {
        if n == 0 || st.terminated {
            return;
        }
        st.conn_recv_unacked = st.conn_recv_unacked.saturating_add(n as u32);
        if st.conn_recv_unacked >= self.config.connection_window_size / 2 {
            let delta = std::mem::take(&mut st.conn_recv_unacked);
            st.conn_recv_window += i64::from(delta);
            self.send(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
    }

    /// Removes a stream whose handle is gone; an unfinished stream is cancelled.
    pub(crate) fn release_stream(&self, id: StreamId) {
        let mut st = self.lock();
        let Some(s) = st.streams.remove(&id) else {
            return;
        };
        if s.active() && !st.terminated {
            self.send(Frame::RstStream {
                stream_id: id,
                status: RstStatus::Cancel,
            });
        }
        self.credit_connection(&mut st, s.recv_buffered);
        self.progress.notify_waiters();
        self.after_stream_change(&mut st);
    }
}
