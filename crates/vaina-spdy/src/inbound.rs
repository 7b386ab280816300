//! Applying the peer's frames to the session state: stream lifecycle, flow control, and
//! the RST_STREAM or GOAWAY each violation calls for (SPDY/3 section 2.4).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::frame::{Frame, GoAwayStatus, MAX_WINDOW, RstStatus, Setting, StreamId, setting};
use crate::headers::Headers;
use crate::state::{Shared, State, StreamState};
use crate::stream::Stream;

impl Shared {
    /// Applies one frame from the peer. Returns `false` once the session is over.
    pub(crate) async fn handle_frame(self: &Arc<Self>, frame: Frame) -> bool {
        if let Frame::Data { stream_id, .. } = &frame {
            if !self.config.flow_control {
                self.wait_for_room(*stream_id).await;
            }
        }
        let mut rejected: Option<Stream> = None;
        let mut st = self.lock();
        if st.terminated {
            return false;
        }
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.on_data(&mut st, stream_id, fin, data),
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                fin,
                unidirectional,
                headers,
                ..
            } => {
                rejected = self.on_syn_stream(
                    &mut st,
                    stream_id,
                    associated_id,
                    priority,
                    fin,
                    unidirectional,
                    headers,
                );
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => self.on_reply(&mut st, stream_id, fin, headers),
            Frame::RstStream { stream_id, status } => self.on_rst(&mut st, stream_id, status),
            Frame::Settings { entries, .. } => self.on_settings(&mut st, &entries),
            Frame::Ping { id } => {
                if self.role.owns(id) {
                    if let Some(waiter) = st.pings.remove(&id) {
                        let _ = waiter.send(());
                    }
                } else {
                    self.send(Frame::Ping { id });
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => self.on_goaway(&mut st, last_good_stream_id, status),
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => self.on_headers(&mut st, stream_id, fin, headers),
            Frame::WindowUpdate { stream_id, delta } => {
                self.on_window_update(&mut st, stream_id, delta)
            }
        }
        let alive = !st.terminated;
        drop(st);
        // A refused stream's handle locks the state when dropped, so only now.
        drop(rejected);
        alive
    }

    fn on_data(&self, st: &mut State, id: StreamId, fin: bool, data: Bytes) {
        let n = data.len();
        st.conn_recv_window -= n as i64;
        if self.config.flow_control && st.conn_recv_window < 0 {
            let err = Error::Protocol("peer overran the connection flow-control window");
            return self.connection_error(st, GoAwayStatus::ProtocolError, err);
        }
        let could_have_existed = self.could_have_existed(st, id);
        let reset_with = match st.streams.get_mut(&id) {
            None if could_have_existed => None,
            None => Some(RstStatus::InvalidStream),
            Some(s) if s.reset.is_some() => None,
            Some(s) if s.remote_fin => Some(RstStatus::StreamAlreadyClosed),
            Some(s) => {
                s.recv_window -= n as i64;
                if self.config.flow_control && s.recv_window < 0 {
                    Some(RstStatus::FlowControlError)
                } else {
                    if n > 0 {
                        s.recv_buf.push_back(data);
                        s.recv_buffered += n;
                    }
                    s.remote_fin |= fin;
                    if let Some(w) = s.read_waker.take() {
                        w.wake();
                    }
                    if fin {
                        self.after_stream_change(st);
                    }
                    return;
                }
            }
        };
        // Data nobody will read still counts against the connection window: return it.
        self.credit_connection(st, n);
        if let Some(status) = reset_with {
            self.stream_error(st, id, status);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_syn_stream(
        self: &Arc<Self>,
        st: &mut State,
        id: StreamId,
        associated_id: StreamId,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    ) -> Option<Stream> {
        if st.goaway_sent {
            // Section 2.6.6: after GOAWAY, new streams are ignored; the peer learns from
            // our last-good-stream-id that this one was not processed.
            tracing::debug!(stream = id, "ignoring SYN_STREAM after GOAWAY");
            return None;
        }
        if self.role.owns(id) {
            tracing::debug!(stream = id, "peer opened a stream with our id parity");
            self.stream_error(st, id, RstStatus::ProtocolError);
            return None;
        }
        if id <= st.last_peer_stream_id {
            let err = Error::Protocol("new stream ids must increase");
            self.connection_error(st, GoAwayStatus::ProtocolError, err);
            return None;
        }
        st.last_peer_stream_id = id;
        let open_by_peer = st
            .streams
            .values()
            .filter(|s| !s.local && s.active())
            .count();
        let accept_tx = match &st.accept_tx {
            Some(tx)
                if !tx.is_closed()
                    && open_by_peer < self.config.max_concurrent_streams as usize =>
            {
                tx.clone()
            }
            _ => {
                self.stream_error(st, id, RstStatus::RefusedStream);
                return None;
            }
        };
        let mut s = StreamState::new(
            false,
            st.peer_initial_window,
            i64::from(self.config.initial_window_size),
        );
        s.remote_fin = fin;
        // UNIDIRECTIONAL: we may not send, so there is nothing to reply either.
        s.local_fin = unidirectional;
        s.replied = unidirectional;
        st.streams.insert(id, s);
        let stream = Stream::new(Arc::clone(self), id, headers, priority, associated_id);
        match accept_tx.send(stream) {
            Ok(()) => None,
            Err(mpsc::error::SendError(stream)) => Some(stream),
        }
    }

    fn on_reply(&self, st: &mut State, id: StreamId, fin: bool, headers: Headers) {
        let could_have_existed = self.could_have_existed(st, id);
        let reset_with = match st.streams.get_mut(&id) {
            None if could_have_existed => None,
            None => Some(RstStatus::InvalidStream),
            Some(s) if !s.local => Some(RstStatus::ProtocolError),
            Some(s) if s.reset.is_some() => None,
            Some(s) if s.replied => Some(RstStatus::StreamInUse),
            Some(s) => {
                s.replied = true;
                s.reply = Some(headers);
                s.remote_fin |= fin;
                s.wake_all();
                None
            }
        };
        match reset_with {
            Some(status) => self.stream_error(st, id, status),
            None if fin => self.after_stream_change(st),
            None => {}
        }
    }

    fn on_rst(&self, st: &mut State, id: StreamId, status: RstStatus) {
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        tracing::debug!(stream = id, %status, "SPDY stream reset by peer");
        s.reset = Some(Error::RemoteReset(status));
        let discarded = s.discard_input();
        s.wake_all();
        self.credit_connection(st, discarded);
        self.after_stream_change(st);
    }

    fn on_settings(&self, st: &mut State, entries: &[Setting]) {
        for entry in entries {
            match entry.id {
                setting::INITIAL_WINDOW_SIZE => {
                    if entry.value > MAX_WINDOW {
                        let err = Error::Protocol("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1");
                        return self.connection_error(st, GoAwayStatus::ProtocolError, err);
                    }
                    // Section 2.6.8: the change applies to the streams already open too.
                    let delta = i64::from(entry.value) - st.peer_initial_window;
                    st.peer_initial_window = i64::from(entry.value);
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                        if let Some(w) = s.write_waker.take() {
                            w.wake();
                        }
                    }
                }
                setting::MAX_CONCURRENT_STREAMS => {
                    st.peer_max_streams = entry.value;
                    self.slots.notify_waiters();
                }
                _ => {}
            }
        }
    }

    fn on_goaway(&self, st: &mut State, last_good: StreamId, status: GoAwayStatus) {
        if st.goaway_received.is_some() {
            return;
        }
        tracing::debug!(last_good, %status, "SPDY peer sent GOAWAY");
        st.goaway_received = Some(last_good);
        // The sender of GOAWAY opens no more streams (section 2.6.6): accepting is over.
        st.accept_tx = None;
        let mut discarded = 0;
        for (&id, s) in st.streams.iter_mut() {
            if s.local && id > last_good && s.reset.is_none() {
                s.reset = Some(Error::Refused {
                    stream_id: id,
                    status,
                });
                discarded += s.discard_input();
                s.wake_all();
            }
        }
        self.credit_connection(st, discarded);
        self.after_stream_change(st);
    }

    fn on_headers(&self, st: &mut State, id: StreamId, fin: bool, headers: Headers) {
        let could_have_existed = self.could_have_existed(st, id);
        let reset_with = match st.streams.get_mut(&id) {
            None if could_have_existed => None,
            None => Some(RstStatus::InvalidStream),
            Some(s) if s.reset.is_some() => None,
            Some(s) if s.remote_fin => Some(RstStatus::StreamAlreadyClosed),
            Some(s) => {
                s.extra_headers.push(headers);
                s.remote_fin |= fin;
                if let Some(w) = s.read_waker.take() {
                    w.wake();
                }
                None
            }
        };
        match reset_with {
            Some(status) => self.stream_error(st, id, status),
            None if fin => self.after_stream_change(st),
            None => {}
        }
    }

    fn on_window_update(&self, st: &mut State, id: StreamId, delta: u32) {
        let limit = if self.config.flow_control {
            i64::from(MAX_WINDOW)
        } else {
            i64::MAX
        };
        if id == 0 {
            st.conn_send_window = st.conn_send_window.saturating_add(i64::from(delta));
            if st.conn_send_window > limit {
                let err = Error::Protocol("connection window grew beyond 2^31-1");
                return self.connection_error(st, GoAwayStatus::ProtocolError, err);
            }
            for s in st.streams.values_mut() {
                if let Some(w) = s.write_waker.take() {
                    w.wake();
                }
            }
            return;
        }
        // Updates for streams already gone are normal: they crossed our RST or FIN.
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        s.send_window = s.send_window.saturating_add(i64::from(delta));
        if s.send_window > limit {
            return self.stream_error(st, id, RstStatus::FlowControlError);
        }
        if let Some(w) = s.write_waker.take() {
            w.wake();
        }
    }

    /// With flow control off, holds the reader while stream `id` has a full window's worth
    /// buffered: TCP backpressure then reaches the peer instead of our memory growing.
    async fn wait_for_room(&self, id: StreamId) {
        let limit = self.config.initial_window_size as usize;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                match st.streams.get(&id) {
                    Some(s) if !st.terminated && s.reset.is_none() && s.recv_buffered >= limit => {}
                    _ => return,
                }
            }
            notified.await;
        }
    }
}
