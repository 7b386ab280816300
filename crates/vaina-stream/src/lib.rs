//! The CRI streaming server: what kubelet's `k8s.io/kubelet/pkg/cri/streaming` serves
//! for `Exec`, `Attach` and `PortForward`, so that crictl, kubectl (through kubelet) and
//! other client-go users work unchanged.
//!
//! # Flow
//!
//! 1. The CRI service validates a request and stores it under a single-use token
//!    ([`StreamServer::get_exec`], [`get_attach`](StreamServer::get_attach),
//!    [`get_port_forward`](StreamServer::get_port_forward)); the URL it returns is
//!    `http://ADDR/exec/TOKEN` (or `attach`, `portforward`). Tokens are 8 base64url
//!    characters, valid for one minute, at most 1000 waiting (kubelet's request cache).
//! 2. The client connects to that URL and upgrades the HTTP/1.1 connection, to SPDY/3.1
//!    (`X-Stream-Protocol-Version` negotiation, the default of client-go) or to a
//!    WebSocket (`Sec-WebSocket-Protocol` negotiation). See [`server`] for the refusals.
//! 3. The session runs on the upgraded connection: streams for
//!    exec/attach over SPDY (module `remotecommand`), channels over WebSocket
//!    ([`websocket`]), or data/error stream pairs for port forwarding (module
//!    `portforward`). The server calls the node's [`StreamRuntime`] to run the command,
//!    attach, or open the port, and reports the outcome as kubelet does (a JSON
//!    `metav1.Status` on the error stream from v4 on, see [`status`]).
//!
//! # Lifetimes and limits
//!
//! A connection with no traffic for [`ServerConfig::stream_idle_timeout`] (4 h) is
//! closed; a client must open all the streams of an exec/attach within
//! [`ServerConfig::stream_creation_timeout`] (30 s), and both streams of a port-forward
//! request within the same time. When the client goes away, or the idle timeout or
//! [`StreamServer::shutdown`] cuts a session, the runtime future is dropped: the runtime
//! treats that as cancellation (see [`runtime`]).
//!
//! # Modules
//!
//! - [`runtime`]: the trait the server calls ([`StreamRuntime`], [`StreamIo`],
//!   [`TermSize`], [`RuntimeError`]).
//! - [`request`]: the CRI requests and their validation.
//! - [`server`]: the HTTP server, token handling, upgrade and negotiation.
//! - `remotecommand`: exec/attach over SPDY (`channel.k8s.io` … `v5.channel.k8s.io`).
//! - [`websocket`]: the channel framing (binary, base64, v5 close signal) and exec /
//!   attach / port-forward over WebSocket.
//! - `portforward`: port forwarding over SPDY (`portforward.k8s.io`).
//! - [`protocol`]: protocol, header and stream names; [`status`]: `metav1.Status`;
//!   [`resize`]: terminal size JSON.
//! - [`client`]: clients for tests and the CLI (SPDY or WebSocket exec/attach returning
//!   the exit code; SPDY and WebSocket port forwarding).
//!
//! SPDY sessions run with flow control off ([`vaina_spdy::Config::flow_control`]):
//! moby/spdystream, the SPDY of client-go, never sends WINDOW_UPDATE.
//!
//! Not covered: TLS (the URLs are `http://`, as kubelet's default CRI streaming server on
//! localhost), and a base URL path prefix.

pub mod client;
mod handoff;
mod idle;
mod portforward;
pub mod protocol;
mod remotecommand;
pub mod request;
pub mod resize;
pub mod runtime;
pub mod server;
mod splice;
pub mod status;
mod token_cache;
pub mod websocket;

pub use request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};
pub use runtime::{
    AsyncReadWrite, BoxConn, BoxFuture, RuntimeError, StreamIo, StreamRuntime, TermSize,
};
pub use server::{ServerConfig, StreamServer};
pub use token_cache::TOKEN_LEN;
