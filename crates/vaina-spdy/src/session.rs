//! A SPDY/3.1 session: one connection multiplexing many [`Stream`]s.
//!
//! Two tasks run per session. The reader decodes frames and applies them to the shared
//! state; the writer owns the write half and the send-side zlib context, and writes
//! frames in the order they were queued. All state sits behind one `std` mutex that is
//! never held across an await, and every frame is queued while that mutex is held, so
//! the wire order always matches the order of the state changes (stream ids of
//! SYN_STREAMs increase, a FIN follows the data before it, and so on).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::Error;
use crate::frame::{
    DEFAULT_WINDOW, Frame, GoAwayStatus, MAX_STREAM_ID, Setting, StreamId, setting,
};
use crate::headers::Headers;
use crate::state::{Shared, State, StreamState};
use crate::stream::Stream;
use crate::tasks::{reader_task, writer_task};

/// Which end of the connection we are: it fixes the parity of the stream and ping ids we
/// allocate (odd for the client, even for the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub(crate) fn first_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    /// Whether `id` (of a stream or a ping) is one we allocate.
    pub(crate) fn owns(self, id: u32) -> bool {
        (id % 2 == 1) == (self == Role::Client)
    }
}

/// Options for [`Session::open_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Send FIN with the SYN_STREAM: we will send no data.
    pub fin: bool,
    /// The peer may not send on this stream (and will not reply).
    pub unidirectional: bool,
    /// 0 (highest) to 7. Sent to the peer; this crate itself writes frames in FIFO order.
    pub priority: u8,
    /// Stream this one is associated with (server push); 0 for none.
    pub associated_id: StreamId,
}

/// Keeps the session alive for the application: when the last [`Session`] clone and the
/// [`Incoming`] are gone, nobody can open or accept streams any more, so we go away.
struct HandleGuard(Arc<Shared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        self.0.go_away(&mut st, GoAwayStatus::Ok);
    }
}

/// A handle on a SPDY session. Cheap to clone; the session is closed gracefully (GOAWAY,
/// then the connection ends once the open streams have) when all clones and the
/// [`Incoming`] are dropped, or at once with [`Session::abort`].
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    _guard: Arc<HandleGuard>,
}

/// Streams the peer opens, in the order it opened them.
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Stream>,
    _guard: Arc<HandleGuard>,
}

impl Incoming {
    /// The next stream the peer opened, with its SYN_STREAM headers in
    /// [`Stream::headers`]. It must be answered with [`Stream::reply`] (or it is replied to
    /// with empty headers on the first write). `None` once the session goes away or ends.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.shared.role)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Runs the server end of a session over `io`. Must be called inside a Tokio runtime:
    /// it spawns the reader and writer tasks.
    pub fn server<T>(io: T, config: Config) -> (Session, Incoming)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, config, Role::Server)
    }

    /// Runs the client end of a session over `io` (see [`Session::server`]).
    pub fn client<T>(io: T, config: Config) -> (Session, Incoming)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, config, Role::Client)
    }

    fn start<T>(io: T, config: Config, role: Role) -> (Session, Incoming)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = config.normalized();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let state = State {
            streams: HashMap::new(),
            next_stream_id: u64::from(role.first_id()),
            last_peer_stream_id: 0,
            conn_send_window: i64::from(DEFAULT_WINDOW),
            conn_recv_window: i64::from(config.connection_window_size),
            conn_recv_unacked: 0,
            peer_initial_window: i64::from(DEFAULT_WINDOW),
            peer_max_streams: u32::MAX,
            next_ping_id: role.first_id(),
            pings: HashMap::new(),
            accept_tx: Some(accept_tx),
            goaway_sent: false,
            goaway_received: None,
            terminated: false,
            writer_done: false,
            error: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            out: out_tx,
            terminated: watch::channel(false).0,
            slots: Notify::new(),
            progress: Notify::new(),
            role,
            config,
        });

        // Announce our limits first thing, so the peer sizes its sends before any stream.
        let cfg = &shared.config;
        shared.send(Frame::Settings {
            clear_persisted: false,
            entries: vec![
                Setting {
                    flags: 0,
                    id: setting::MAX_CONCURRENT_STREAMS,
                    value: cfg.max_concurrent_streams,
                },
                Setting {
                    flags: 0,
                    id: setting::INITIAL_WINDOW_SIZE,
                    value: cfg.initial_window_size,
                },
            ],
        });
        if cfg.connection_window_size > DEFAULT_WINDOW {
            let delta = cfg.connection_window_size - DEFAULT_WINDOW;
            shared.send(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }

        let (read_half, write_half) = tokio::io::split(io);
        tokio::spawn(writer_task(Arc::clone(&shared), write_half, out_rx));
        tokio::spawn(reader_task(Arc::clone(&shared), read_half));

        let guard = Arc::new(HandleGuard(Arc::clone(&shared)));
        let session = Session {
            shared,
            _guard: Arc::clone(&guard),
        };
        (
            session,
            Incoming {
                rx: accept_rx,
                _guard: guard,
            },
        )
    }

    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// Opens a stream: sends SYN_STREAM with `headers` (FIN too when `fin`) and returns at
    /// once, without waiting for the peer's SYN_REPLY; data may be written right away.
    /// Await [`Stream::response`] for the reply. Waits only while the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream, Error> {
        self.open_with(
            headers,
            OpenOptions {
                fin,
                ..OpenOptions::default()
            },
        )
        .await
    }

    /// [`Session::open`] with all SYN_STREAM options.
    pub async fn open_with(&self, headers: Headers, options: OpenOptions) -> Result<Stream, Error> {
        headers.validate().map_err(Error::InvalidHeaders)?;
        if options.priority > 7 {
            return Err(Error::InvalidState("priority must be within 0..=7"));
        }
        if options.associated_id > MAX_STREAM_ID {
            return Err(Error::InvalidState("associated stream id exceeds 31 bits"));
        }
        loop {
            let notified = self.shared.slots.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if st.terminated {
                    return Err(st.connection_error());
                }
                if st.goaway_sent || st.goaway_received.is_some() {
                    return Err(Error::GoingAway);
                }
                let open_by_us = st
                    .streams
                    .values()
                    .filter(|s| s.local && s.active())
                    .count();
                if open_by_us < st.peer_max_streams as usize {
                    return self.open_locked(&mut st, headers, options);
                }
            }
            notified.await;
        }
    }

    fn open_locked(
        &self,
        st: &mut State,
        headers: Headers,
        options: OpenOptions,
    ) -> Result<Stream, Error> {
        if st.next_stream_id > u64::from(MAX_STREAM_ID) {
            return Err(Error::StreamIdsExhausted);
        }
        let id = st.next_stream_id as StreamId;
        st.next_stream_id += 2;
        let mut s = StreamState::new(
            true,
            st.peer_initial_window,
            i64::from(self.shared.config.initial_window_size),
        );
        s.local_fin = options.fin;
        // UNIDIRECTIONAL: the peer neither replies nor sends.
        s.remote_fin = options.unidirectional;
        s.replied = options.unidirectional;
        st.streams.insert(id, s);
        self.shared.send(Frame::SynStream {
            stream_id: id,
            associated_id: options.associated_id,
            priority: options.priority,
            slot: 0,
            fin: options.fin,
            unidirectional: options.unidirectional,
            headers: headers.clone(),
        });
        if options.fin {
            self.shared.after_stream_change(st);
        }
        Ok(Stream::new(
            Arc::clone(&self.shared),
            id,
            headers,
            options.priority,
            options.associated_id,
        ))
    }

    /// Sends a PING and waits for the peer to echo it; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            if st.terminated {
                return Err(st.connection_error());
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id > MAX_STREAM_ID - 2 {
                self.shared.role.first_id()
            } else {
                id + 2
            };
            st.pings.insert(id, tx);
            self.shared.send(Frame::Ping { id });
            id
        };
        let started = Instant::now();
        match rx.await {
            Ok(()) => Ok(started.elapsed()),
            Err(_) => {
                let mut st = self.shared.lock();
                st.pings.remove(&id);
                Err(st.connection_error())
            }
        }
    }

    /// Sends GOAWAY(OK) and waits until the streams already open have finished and the
    /// connection is closed. New streams are refused from now on, both ways.
    pub async fn close(&self) -> Result<(), Error> {
        {
            let mut st = self.shared.lock();
            self.shared.go_away(&mut st, GoAwayStatus::Ok);
        }
        self.closed().await
    }

    /// Sends GOAWAY with `status` without waiting; see [`Session::close`].
    pub fn go_away(&self, status: GoAwayStatus) {
        let mut st = self.shared.lock();
        self.shared.go_away(&mut st, status);
    }

    /// Ends the session now: a GOAWAY is sent if none was, and streams still open fail
    /// with [`Error::ConnectionClosed`].
    pub fn abort(&self) {
        let mut st = self.shared.lock();
        self.shared.send_goaway(&mut st, GoAwayStatus::Ok);
        self.shared
            .terminate(&mut st, Some(Error::ConnectionClosed));
    }

    /// Waits for the session to end: `Ok` for an orderly close, else what broke it.
    pub async fn closed(&self) -> Result<(), Error> {
        let mut terminated = self.shared.terminated.subscribe();
        let _ = terminated.wait_for(|t| *t).await;
        let st = self.shared.lock();
        match &st.error {
            None | Some(Error::ConnectionClosed) => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().terminated
    }

    /// Whether the peer sent GOAWAY, and the last stream it says it processed.
    pub fn peer_went_away(&self) -> Option<StreamId> {
        self.shared.lock().goaway_received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_own_ids_of_their_parity() {
        assert!(Role::Client.owns(1) && Role::Client.owns(3) && !Role::Client.owns(2));
        assert!(Role::Server.owns(2) && !Role::Server.owns(1));
        assert_eq!(Role::Client.first_id(), 1);
        assert_eq!(Role::Server.first_id(), 2);
    }
}
