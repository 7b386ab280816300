//! SPDY/3.1 frames and their wire encoding (SPDY/3 section 2.2 and 2.6, plus the 3.1
//! connection-level WINDOW_UPDATE).
//!
//! Every frame starts with 8 bytes. A control frame: `1 | version:15 | type:16 |
//! flags:8 | length:24`; a data frame: `0 | stream-id:31 | flags:8 | length:24`. The
//! decoder is incremental: it is handed a growing buffer and answers `Ok(None)` until a
//! whole frame is there, checking the header first so that an oversized or impossible
//! frame is refused before its payload is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::headers::{HeaderCompressor, HeaderDecompressor, HeaderError, Headers};

/// A stream identifier: 31 bits, odd when the client opened the stream, even for the
/// server, and never 0 (0 names the connection in WINDOW_UPDATE).
pub type StreamId = u32;

/// The only version this crate speaks.
pub const VERSION: u16 = 3;
/// Length of every frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD_LEN: usize = 0x00ff_ffff;
/// Largest stream id (31 bits).
pub const MAX_STREAM_ID: StreamId = 0x7fff_ffff;
/// Flow-control window every stream and the connection start with (section 2.6.8).
pub const DEFAULT_WINDOW: u32 = 65_536;
/// Largest legal flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;

/// FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender's half of the stream ends.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on SYN_STREAM: the recipient starts half-closed and never sends.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame type codes.
pub mod frame_type {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// SETTINGS ids (section 2.6.4).
pub mod setting {
    pub const UPLOAD_BANDWIDTH: u32 = 1;
    pub const DOWNLOAD_BANDWIDTH: u32 = 2;
    pub const ROUND_TRIP_TIME: u32 = 3;
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    pub const CURRENT_CWND: u32 = 5;
    pub const DOWNLOAD_RETRANS_RATE: u32 = 6;
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
    pub const CLIENT_CERTIFICATE_VECTOR_SIZE: u32 = 8;
}

/// RST_STREAM status codes (section 2.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RstStatus {
    ProtocolError,
    InvalidStream,
    RefusedStream,
    UnsupportedVersion,
    Cancel,
    InternalError,
    FlowControlError,
    StreamInUse,
    StreamAlreadyClosed,
    InvalidCredentials,
    FrameTooLarge,
    /// A code this crate does not know; kept so it can be reported faithfully.
    Other(u32),
}

impl RstStatus {
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::ProtocolError,
            2 => Self::InvalidStream,
            3 => Self::RefusedStream,
            4 => Self::UnsupportedVersion,
            5 => Self::Cancel,
            6 => Self::InternalError,
            7 => Self::FlowControlError,
            8 => Self::StreamInUse,
            9 => Self::StreamAlreadyClosed,
            10 => Self::InvalidCredentials,
            11 => Self::FrameTooLarge,
            other => Self::Other(other),
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Self::ProtocolError => 1,
            Self::InvalidStream => 2,
            Self::RefusedStream => 3,
            Self::UnsupportedVersion => 4,
            Self::Cancel => 5,
            Self::InternalError => 6,
            Self::FlowControlError => 7,
            Self::StreamInUse => 8,
            Self::StreamAlreadyClosed => 9,
            Self::InvalidCredentials => 10,
            Self::FrameTooLarge => 11,
            Self::Other(code) => code,
        }
    }
}

impl std::fmt::Display for RstStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(code) => write!(f, "status {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// GOAWAY status codes (section 2.6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoAwayStatus {
    Ok,
    ProtocolError,
    InternalError,
    Other(u32),
}

impl GoAwayStatus {
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Ok,
            1 => Self::ProtocolError,
            2 => Self::InternalError,
            other => Self::Other(other),
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::ProtocolError => 1,
            Self::InternalError => 2,
            Self::Other(code) => code,
        }
    }
}

impl std::fmt::Display for GoAwayStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(code) => write!(f, "status {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// One SETTINGS entry: a 24-bit id, its flags (PERSIST_VALUE = 1, PERSISTED = 2) and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A decoded frame. Header-carrying frames hold decoded [`Headers`]; compression is the
/// codec's business, since the zlib context spans the whole connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: StreamId,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: StreamId,
        associated_id: StreamId,
        /// 0 (highest) to 7 (lowest).
        priority: u8,
        /// Client certificate slot; 0 when unused.
        slot: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: StreamId,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: StreamId,
        status: RstStatus,
    },
    Settings {
        clear_persisted: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: StreamId,
        status: GoAwayStatus,
    },
    Headers {
        stream_id: StreamId,
        fin: bool,
        headers: Headers,
    },
    /// `stream_id` 0 updates the connection window (SPDY/3.1).
    WindowUpdate {
        stream_id: StreamId,
        delta: u32,
    },
}

impl Frame {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        }
    }
}

/// What is wrong with a frame, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("control frame has version {0}, only SPDY/3 is supported")]
    UnsupportedVersion(u16),
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("{kind} frame has invalid length {len}")]
    InvalidLength { kind: &'static str, len: usize },
    #[error("{kind} frame carries stream id 0")]
    ZeroStreamId { kind: &'static str },
    #[error("stream id {0} does not fit in 31 bits")]
    StreamIdOutOfRange(u32),
    #[error("RST_STREAM for stream {0} carries status 0")]
    ZeroRstStatus(StreamId),
    #[error("WINDOW_UPDATE for stream {0} has a zero delta")]
    ZeroWindowDelta(StreamId),
    #[error("PING id 0 is reserved")]
    ZeroPingId,
    #[error("priority {0} is out of range 0..=7")]
    InvalidPriority(u8),
    #[error("connection ended inside a frame ({buffered} of {needed} bytes received)")]
    Truncated { buffered: usize, needed: usize },
    /// The shared zlib context failed, so no later header block can be read either.
    #[error("header compression: {0}")]
    Compression(HeaderError),
    /// The block inflated fine but its contents are invalid: only this stream is affected.
    #[error("stream {stream_id}: invalid header block: {source}")]
    InvalidHeaderBlock {
        stream_id: StreamId,
        source: HeaderError,
    },
}

impl FrameError {
    /// For errors confined to one stream, the stream and the RST_STREAM status to answer
    /// with; `None` means the connection itself can no longer be trusted (GOAWAY).
    pub fn stream_error(&self) -> Option<(StreamId, RstStatus)> {
        match *self {
            FrameError::InvalidHeaderBlock { stream_id, .. } if stream_id != 0 => {
                Some((stream_id, RstStatus::ProtocolError))
            }
            FrameError::ZeroWindowDelta(stream_id) if stream_id != 0 => {
                Some((stream_id, RstStatus::ProtocolError))
            }
            _ => None,
        }
    }
}

/// Reads frames off a byte buffer, keeping the receive-side zlib context.
pub struct FrameDecoder {
    max_frame_len: usize,
    headers: HeaderDecompressor,
    /// Payload bytes of an unknown control frame still to be discarded.
    skip: usize,
}

impl FrameDecoder {
    /// `max_frame_len` caps the payload of any frame we buffer (at most [`MAX_PAYLOAD_LEN`]);
    /// `max_header_block_len` caps each decompressed header block.
    pub fn new(max_frame_len: usize, max_header_block_len: usize) -> Self {
        Self {
            max_frame_len: max_frame_len.min(MAX_PAYLOAD_LEN),
            headers: HeaderDecompressor::new(max_header_block_len),
            skip: 0,
        }
    }

    /// Takes the next whole frame out of `buf`, or returns `Ok(None)` if it is not all there
    /// yet. Unknown control frame types are skipped, as section 2.2.1 requires, without being
    /// buffered.
    ///
    /// After an error whose [`FrameError::stream_error`] is `Some`, the frame has been
    /// consumed and decoding can go on; after any other error the decoder must be dropped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                buf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let Some(head) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
                return Ok(None);
            };
            let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;

            if word & 0x8000_0000 == 0 {
                let stream_id = word & MAX_STREAM_ID;
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId { kind: "DATA" });
                }
                self.check_len(len)?;
                let Some(payload) = take_frame(buf, len) else {
                    return Ok(None);
                };
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    data: payload,
                }));
            }

            let version = ((word >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            let ty = (word & 0xffff) as u16;
            let Some(kind) = Kind::from_type(ty) else {
                tracing::debug!(frame_type = ty, len, "skipping unknown SPDY control frame");
                buf.advance(FRAME_HEADER_LEN);
                self.skip = len;
                continue;
            };
            kind.check_len(len)?;
            self.check_len(len)?;
            let Some(payload) = take_frame(buf, len) else {
                return Ok(None);
            };
            return self.parse_control(kind, flags, payload).map(Some);
        }
    }

    /// To be called when the byte stream ends: a partial frame left over is an error.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if self.skip > 0 {
            return Err(FrameError::Truncated {
                buffered: 0,
                needed: self.skip,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let needed = match buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(h) => FRAME_HEADER_LEN + u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize,
            None => FRAME_HEADER_LEN,
        };
        Err(FrameError::Truncated {
            buffered: buf.len(),
            needed,
        })
    }

    fn check_len(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max_frame_len {
            return Err(FrameError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        Ok(())
    }

    fn parse_control(&mut self, kind: Kind, flags: u8, mut p: Bytes) -> Result<Frame, FrameError> {
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            Kind::SynStream => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let associated_id = p.get_u32() & MAX_STREAM_ID;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                // Inflate before judging the id: the zlib context must see every block.
                let headers = self.header_block(stream_id, &p)?;
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId { kind: kind.name() });
                }
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    slot,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            Kind::SynReply | Kind::Headers => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let headers = self.header_block(stream_id, &p)?;
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId { kind: kind.name() });
                }
                if let Kind::SynReply = kind {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            Kind::RstStream => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let code = p.get_u32();
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId { kind: kind.name() });
                }
                if code == 0 {
                    return Err(FrameError::ZeroRstStatus(stream_id));
                }
                Frame::RstStream {
                    stream_id,
                    status: RstStatus::from_code(code),
                }
            }
            Kind::Settings => {
                let count = p.get_u32() as usize;
                if p.remaining() != count.saturating_mul(8) {
                    return Err(FrameError::InvalidLength {
                        kind: kind.name(),
                        len: p.remaining() + 4,
                    });
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = p.get_u32();
                        Setting {
                            flags: (word >> 24) as u8,
                            id: word & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear_persisted: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            Kind::Ping => {
                let id = p.get_u32();
                if id == 0 {
                    return Err(FrameError::ZeroPingId);
                }
                Frame::Ping { id }
            }
            Kind::GoAway => Frame::GoAway {
                last_good_stream_id: p.get_u32() & MAX_STREAM_ID,
                status: GoAwayStatus::from_code(p.get_u32()),
            },
            Kind::WindowUpdate => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let delta = p.get_u32() & MAX_WINDOW;
                if delta == 0 {
                    return Err(FrameError::ZeroWindowDelta(stream_id));
                }
                Frame::WindowUpdate { stream_id, delta }
            }
        };
        Ok(frame)
    }

    fn header_block(&mut self, stream_id: StreamId, block: &[u8]) -> Result<Headers, FrameError> {
        let raw = self
            .headers
            .decompress_raw(block)
            .map_err(FrameError::Compression)?;
        crate::headers::decode_block(&raw)
            .map_err(|source| FrameError::InvalidHeaderBlock { stream_id, source })
    }
}

/// The control frame types this crate understands.
#[derive(Clone, Copy)]
enum Kind {
    SynStream,
    SynReply,
    RstStream,
    Settings,
    Ping,
    GoAway,
    Headers,
    WindowUpdate,
}

impl Kind {
    fn from_type(ty: u16) -> Option<Kind> {
        Some(match ty {
            frame_type::SYN_STREAM => Kind::SynStream,
            frame_type::SYN_REPLY => Kind::SynReply,
            frame_type::RST_STREAM => Kind::RstStream,
            frame_type::SETTINGS => Kind::Settings,
            frame_type::PING => Kind::Ping,
            frame_type::GOAWAY => Kind::GoAway,
            frame_type::HEADERS => Kind::Headers,
            frame_type::WINDOW_UPDATE => Kind::WindowUpdate,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::SynStream => "SYN_STREAM",
            Kind::SynReply => "SYN_REPLY",
            Kind::RstStream => "RST_STREAM",
            Kind::Settings => "SETTINGS",
            Kind::Ping => "PING",
            Kind::GoAway => "GOAWAY",
            Kind::Headers => "HEADERS",
            Kind::WindowUpdate => "WINDOW_UPDATE",
        }
    }

    /// Rejects a length that cannot belong to this type, before any payload is buffered.
    fn check_len(self, len: usize) -> Result<(), FrameError> {
        let ok = match self {
            Kind::SynStream => len >= 10,
            Kind::SynReply | Kind::Headers => len >= 4,
            Kind::Settings => len >= 4 && len % 8 == 4,
            Kind::Ping => len == 4,
            Kind::RstStream | Kind::GoAway | Kind::WindowUpdate => len == 8,
        };
        if ok {
            Ok(())
        } else {
            Err(FrameError::InvalidLength {
                kind: self.name(),
                len,
            })
        }
    }
}

/// Splits off header + payload once all of it is buffered, returning the payload.
fn take_frame(buf: &mut BytesMut, len: usize) -> Option<Bytes> {
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return None;
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_HEADER_LEN);
    Some(frame)
}

/// Writes frames, keeping the send-side zlib context.
pub struct FrameEncoder {
    headers: HeaderCompressor,
    scratch: Vec<u8>,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    pub fn new() -> Self {
        Self {
            headers: HeaderCompressor::new(),
            scratch: Vec::new(),
        }
    }

    /// Appends the wire form of `frame` to `dst`. Everything that can be wrong with the
    /// frame is checked before the zlib context is touched, so an error leaves the encoder
    /// usable.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                check_stream_id("DATA", *stream_id)?;
                if data.len() > MAX_PAYLOAD_LEN {
                    return Err(FrameError::FrameTooLarge {
                        len: data.len(),
                        max: MAX_PAYLOAD_LEN,
                    });
                }
                dst.reserve(FRAME_HEADER_LEN + data.len());
                dst.put_u32(*stream_id);
                put_flags_len(dst, fin_flag(*fin), data.len());
                dst.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                check_stream_id("SYN_STREAM", *stream_id)?;
                if *associated_id > MAX_STREAM_ID {
                    return Err(FrameError::StreamIdOutOfRange(*associated_id));
                }
                if *priority > 7 {
                    return Err(FrameError::InvalidPriority(*priority));
                }
                let block = self.compress(headers, *stream_id)?;
                let mut flags = fin_flag(*fin);
                if *unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                put_control_header(dst, frame_type::SYN_STREAM, flags, 10 + block.len());
                dst.put_u32(*stream_id);
                dst.put_u32(*associated_id);
                dst.put_u8(priority << 5);
                dst.put_u8(*slot);
                dst.put_slice(block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let (kind, ty) = match frame {
                    Frame::SynReply { .. } => ("SYN_REPLY", frame_type::SYN_REPLY),
                    _ => ("HEADERS", frame_type::HEADERS),
                };
                check_stream_id(kind, *stream_id)?;
                let block = self.compress(headers, *stream_id)?;
                put_control_header(dst, ty, fin_flag(*fin), 4 + block.len());
                dst.put_u32(*stream_id);
                dst.put_slice(block);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id("RST_STREAM", *stream_id)?;
                if status.code() == 0 {
                    return Err(FrameError::ZeroRstStatus(*stream_id));
                }
                put_control_header(dst, frame_type::RST_STREAM, 0, 8);
                dst.put_u32(*stream_id);
                dst.put_u32(status.code());
            }
            Frame::Settings {
                clear_persisted,
                entries,
            } => {
                let len = 4 + entries.len() * 8;
                if len > MAX_PAYLOAD_LEN {
                    return Err(FrameError::FrameTooLarge {
                        len,
                        max: MAX_PAYLOAD_LEN,
                    });
                }
                let flags = if *clear_persisted {
                    FLAG_SETTINGS_CLEAR
                } else {
                    0
                };
                put_control_header(dst, frame_type::SETTINGS, flags, len);
                dst.put_u32(entries.len() as u32);
                for s in entries {
                    dst.put_u32(u32::from(s.flags) << 24 | (s.id & 0x00ff_ffff));
                    dst.put_u32(s.value);
                }
            }
            Frame::Ping { id } => {
                if *id == 0 {
                    return Err(FrameError::ZeroPingId);
                }
                put_control_header(dst, frame_type::PING, 0, 4);
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                if *last_good_stream_id > MAX_STREAM_ID {
                    return Err(FrameError::StreamIdOutOfRange(*last_good_stream_id));
                }
                put_control_header(dst, frame_type::GOAWAY, 0, 8);
                dst.put_u32(*last_good_stream_id);
                dst.put_u32(status.code());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *stream_id > MAX_STREAM_ID {
                    return Err(FrameError::StreamIdOutOfRange(*stream_id));
                }
                if *delta == 0 || *delta > MAX_WINDOW {
                    return Err(FrameError::ZeroWindowDelta(*stream_id));
                }
                put_control_header(dst, frame_type::WINDOW_UPDATE, 0, 8);
                dst.put_u32(*stream_id);
                dst.put_u32(*delta);
            }
        }
        Ok(())
    }

    fn compress(&mut self, headers: &Headers, stream_id: StreamId) -> Result<&[u8], FrameError> {
        // encode_block validates and bounds the block, so compression itself cannot fail
        // half-way for a reason the caller could have avoided.
        let raw = crate::headers::encode_block(headers)
            .map_err(|source| FrameError::InvalidHeaderBlock { stream_id, source })?;
        self.scratch.clear();
        self.headers
            .compress_raw(&raw, &mut self.scratch)
            .map_err(FrameError::Compression)?;
        Ok(&self.scratch)
    }
}

fn check_stream_id(kind: &'static str, id: StreamId) -> Result<(), FrameError> {
    match id {
        0 => Err(FrameError::ZeroStreamId { kind }),
        id if id > MAX_STREAM_ID => Err(FrameError::StreamIdOutOfRange(id)),
        _ => Ok(()),
    }
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

fn put_control_header(dst: &mut BytesMut, ty: u16, flags: u8, len: usize) {
    dst.reserve(FRAME_HEADER_LEN + len);
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(ty);
    put_flags_len(dst, flags, len);
}

fn put_flags_len(dst: &mut BytesMut, flags: u8, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD_LEN);
    dst.put_u32(u32::from(flags) << 24 | len as u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for code in 0..=12 {
            assert_eq!(RstStatus::from_code(code).code(), code);
            assert_eq!(GoAwayStatus::from_code(code).code(), code);
        }
        assert_eq!(RstStatus::from_code(5), RstStatus::Cancel);
        assert_eq!(RstStatus::from_code(11), RstStatus::FrameTooLarge);
        assert_eq!(GoAwayStatus::from_code(2), GoAwayStatus::InternalError);
        assert_eq!(RstStatus::Other(42).to_string(), "status 42");
    }

    #[test]
    fn stream_errors_are_only_the_recoverable_ones() {
        let block = FrameError::InvalidHeaderBlock {
            stream_id: 3,
            source: HeaderError::EmptyName,
        };
        assert_eq!(block.stream_error(), Some((3, RstStatus::ProtocolError)));
        assert_eq!(FrameError::ZeroWindowDelta(0).stream_error(), None);
        assert_eq!(
            FrameError::Compression(HeaderError::Truncated).stream_error(),
            None
        );
        assert_eq!(FrameError::UnsupportedVersion(2).stream_error(), None);
    }

    #[test]
    fn max_frame_len_is_capped_by_the_length_field() {
        let mut dec = FrameDecoder::new(usize::MAX, 1024);
        let mut buf = BytesMut::from(&[0x00, 0x00, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(None),
            "2^24-1 is the largest length and allowed"
        );
    }
}
