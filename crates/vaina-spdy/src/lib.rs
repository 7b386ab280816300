//! SPDY/3.1 as kubelet's CRI streaming server speaks it (Exec, Attach, PortForward, with
//! kubectl and crictl on the other end through moby/spdystream).
//!
//! This crate is the transport only: frames, header compression and multiplexed
//! streams. The HTTP upgrade that precedes SPDY and the meaning Kubernetes gives to
//! streams and headers live above it.
//!
//! # Layers
//!
//! - [`frame`]: typed frames and an incremental decoder / encoder. Every length is checked
//!   from the 8-byte header before the payload is buffered; unknown control frame types
//!   are skipped as the spec asks.
//! - [`headers`]: name/value blocks and their zlib compression with the SPDY/3
//!   dictionary. One zlib stream per direction spans the whole connection, so header
//!   frames must be encoded and decoded in wire order, each block ending in a SYNC_FLUSH.
//! - [`Session`] / [`Stream`]: a reader task and a writer task per connection (private
//!   module `tasks`) around one state mutex (`state`); `inbound` applies the peer's frames.
//!   Streams are `AsyncRead + AsyncWrite`; `shutdown` sends FIN (half close). PINGs are
//!   answered, GOAWAY is sent on close and honoured when received, and SPDY/3.1 flow
//!   control runs per stream and per connection: WINDOW_UPDATEs go out as the application
//!   reads, writers wait while the peer's window is empty, and DATA is split to fit.
//!   Protocol errors become RST_STREAM (one stream) or GOAWAY (the connection), never
//!   panics.
//!
//! [`Session::open`] does not wait for the SYN_REPLY (await [`Stream::response`] for it);
//! accepted streams are answered with [`Stream::reply`]. Dropping a stream that is still
//! open either way resets it with CANCEL; `shutdown` and reading to EOF close it cleanly.
//!
//! # Peers without flow control
//!
//! moby/spdystream (kubectl, crictl and other Go clients) neither sends WINDOW_UPDATE nor
//! honours it. Against it a writer would stall after the first 64 KiB, so set
//! [`Config::flow_control`] to `false` there: our writers then ignore windows, and a peer
//! outrunning our reader is slowed by TCP backpressure instead of being reset.
//!
//! # Example
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use vaina_spdy::{Config, Headers, Session};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client_io, server_io) = tokio::io::duplex(64 * 1024);
//! let (_server, mut incoming) = Session::server(server_io, Config::default());
//! let (client, _pushed) = Session::client(client_io, Config::default());
//!
//! // Server: answer each stream, echo what it reads, then half-close.
//! tokio::spawn(async move {
//!     while let Some(mut stream) = incoming.accept().await {
//!         let kind = stream.headers().get("streamtype").unwrap_or("").to_owned();
//!         stream.reply(Headers::from([("streamtype", kind)]), false).unwrap();
//!         tokio::spawn(async move {
//!             let mut buf = Vec::new();
//!             stream.read_to_end(&mut buf).await.unwrap();
//!             stream.write_all(&buf).await.unwrap();
//!             stream.shutdown().await.unwrap();
//!         });
//!     }
//! });
//!
//! // Client: open a stream, send, half-close, read the echo.
//! let mut stream = client.open(Headers::from([("streamType", "stdin")]), false).await?;
//! assert_eq!(stream.response().await?.get("streamtype"), Some("stdin"));
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?;
//! let mut echo = Vec::new();
//! stream.read_to_end(&mut echo).await?;
//! assert_eq!(echo, b"hello");
//! client.close().await?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod error;
pub mod frame;
pub mod headers;
mod inbound;
pub mod session;
mod state;
pub mod stream;
mod tasks;

pub use config::Config;
pub use error::Error;
pub use frame::{Frame, FrameDecoder, FrameEncoder, FrameError, GoAwayStatus, RstStatus, StreamId};
pub use headers::{HeaderError, Headers};
pub use session::{Incoming, OpenOptions, Role, Session};
pub use stream::Stream;
