//! The error a session, stream or open/accept call reports.

use std::io;
use std::sync::Arc;

use crate::frame::{FrameError, GoAwayStatus, RstStatus, StreamId};
use crate::headers::HeaderError;

/// Why a session or stream operation failed. Cloneable because one connection failure is
/// reported to every stream that was using it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("stream reset by peer ({0})")]
    RemoteReset(RstStatus),
    #[error("stream reset locally ({0})")]
    LocalReset(RstStatus),
    /// The peer's GOAWAY named a last stream below this one, so the peer never processed
    /// it and the request may safely be retried on another connection.
    #[error("stream {stream_id} was not processed before the peer went away ({status})")]
    Refused {
        stream_id: StreamId,
        status: GoAwayStatus,
    },
    #[error("session is going away: no new streams")]
    GoingAway,
    #[error("connection closed")]
    ConnectionClosed,
    /// The peer broke the framing rules; a GOAWAY(PROTOCOL_ERROR) was sent.
    #[error("protocol error: {0}")]
    Frame(FrameError),
    /// The peer broke a session rule (stream ids, windows); a GOAWAY was sent.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("I/O error: {0}")]
    Io(Arc<io::Error>),
    #[error("no stream ids left on this connection")]
    StreamIdsExhausted,
    #[error("invalid headers: {0}")]
    InvalidHeaders(HeaderError),
    /// The call does not fit the stream's state (e.g. replying twice).
    #[error("{0}")]
    InvalidState(&'static str),
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::RemoteReset(_) | Error::LocalReset(_) => io::ErrorKind::ConnectionReset,
            Error::Refused { .. } => io::ErrorKind::ConnectionRefused,
            Error::GoingAway | Error::ConnectionClosed => io::ErrorKind::BrokenPipe,
            Error::Frame(_) | Error::Protocol(_) => io::ErrorKind::InvalidData,
            Error::Io(e) => e.kind(),
            Error::InvalidHeaders(_) => io::ErrorKind::InvalidInput,
            Error::StreamIdsExhausted | Error::InvalidState(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}
