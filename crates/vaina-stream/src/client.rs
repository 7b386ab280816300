//! Clients of the streaming server, for tests and for the CLI (`vaina exec`, `vaina
//! attach`, `vaina port-forward`). They speak what client-go speaks: SPDY by default
//! (as crictl and kubectl), WebSocket on request. Only `http://` URLs are supported.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vaina_spdy::{Headers, Session, Stream};

use crate::protocol::{
    CHANNEL_ERROR, CHANNEL_RESIZE, CHANNEL_STDERR, CHANNEL_STDIN, CHANNEL_STDOUT,
    HEADER_ACCEPTED_PROTOCOL_VERSIONS, HEADER_PORT, HEADER_PROTOCOL_VERSION, HEADER_REQUEST_ID,
    HEADER_STREAM_TYPE, PORT_FORWARD_PROTOCOL_V1, REMOTE_COMMAND_PROTOCOLS, RemoteCommandVersion,
    SPDY_31, STREAM_TYPE_DATA, STREAM_TYPE_ERROR, STREAM_TYPE_RESIZE, STREAM_TYPE_STDERR,
    STREAM_TYPE_STDIN, STREAM_TYPE_STDOUT, WS_BASE64_CHANNEL, WS_CHANNEL, WS_V4_BASE64_CHANNEL,
    WS_V4_CHANNEL, WS_V5_CHANNEL,
};
use crate::remotecommand::spdy_config;
use crate::resize;
use crate::runtime::StreamIo;
use crate::status::Status;
use crate::websocket::{Codec, MuxSetup, mux};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}: only http://HOST:PORT/PATH is supported")]
    Url(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server refused the upgrade.
    #[error("upgrade refused with HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        /// `X-Accepted-Stream-Protocol-Versions` of a 403.
        accepted: Vec<String>,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("SPDY error: {0}")]
    Spdy(#[from] vaina_spdy::Error),
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    /// The command could not run, or the error stream carried a failure without exit code.
    #[error("{0}")]
    Remote(String),
}

/// How to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Spdy,
    WebSocket,
}

/// What to offer when connecting.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub transport: Transport,
    /// Protocols to offer, preferred first (`X-Stream-Protocol-Version` values for SPDY,
    /// `Sec-WebSocket-Protocol` for WebSocket).
    pub protocols: Vec<String>,
}

impl ClientOptions {
    /// SPDY offering v5 to v1, as client-go.
    pub fn spdy() -> Self {
        Self {
            transport: Transport::Spdy,
            protocols: REMOTE_COMMAND_PROTOCOLS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Binary WebSocket offering v5, v4 and `channel.k8s.io`.
    pub fn websocket() -> Self {
        Self {
            transport: Transport::WebSocket,
            protocols: [WS_V5_CHANNEL, WS_V4_CHANNEL, WS_CHANNEL]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Base64 WebSocket offering `v4.base64.channel.k8s.io` and `base64.channel.k8s.io`.
    pub fn websocket_base64() -> Self {
        Self {
            transport: Transport::WebSocket,
            protocols: [WS_V4_BASE64_CHANNEL, WS_BASE64_CHANNEL]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Offers exactly `protocols`.
    pub fn with_protocols(mut self, protocols: &[&str]) -> Self {
        self.protocols = protocols.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Splits `http://host:port/path?query` into the address and the request target.
fn parse_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok((host.to_owned(), path.to_owned()))
}

/// A connection whose first bytes were already read with the HTTP response.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sends a SPDY upgrade request and returns the upgraded connection and the negotiated
/// `X-Stream-Protocol-Version`.
async fn spdy_upgrade(
    url: &str,
    protocols: &[String],
) -> Result<(Rewind<TcpStream>, String), ClientError> {
    let (host, path) = parse_url(url)?;
    let mut tcp = TcpStream::connect(&host).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {SPDY_31}\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("{HEADER_PROTOCOL_VERSION}: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "connection closed before the HTTP response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp
            .parse(&buf)
            .map_err(|e| ClientError::Protocol(format!("bad HTTP response: {e}")))?;
        let httparse::Status::Complete(len) = parsed else {
            if buf.len() > 64 * 1024 {
                return Err(ClientError::Protocol(
                    "HTTP response headers too long".into(),
                ));
            }
            continue;
        };
        let code = resp.code.unwrap_or(0);
        let get_all = |name: &str| -> Vec<String> {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                .collect()
        };
        if code != 101 {
            let accepted = get_all(HEADER_ACCEPTED_PROTOCOL_VERSIONS);
            let content_len: usize = get_all("content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                .min(64 * 1024);
            let mut body = buf[len..].to_vec();
            while body.len() < content_len {
                let n = tcp.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Err(ClientError::Http {
                status: code,
                message: String::from_utf8_lossy(&body).trim_end().to_owned(),
                accepted,
            });
        }
        let protocol = get_all(HEADER_PROTOCOL_VERSION)
            .into_iter()
            .next()
            .unwrap_or_default();
        let prefix = buf[len..].to_vec();
        return Ok((
            Rewind {
                prefix,
                pos: 0,
                inner: tcp,
            },
            protocol,
        ));
    }
}

/// Runs an exec or attach session at `url` (from `GetExec` / `GetAttach`) with the given
/// stdio, and returns the exit code the server reported (0 on success). The streams
/// opened follow `io`: stdin if `io.stdin` is set, and so on; they must match the request
/// the URL was made for. With `io.tty` and a resize channel, sizes are sent as they come.
pub async fn remote_command(
    url: &str,
    options: &ClientOptions,
    io: StreamIo,
) -> Result<i32, ClientError> {
    match options.transport {
        Transport::Spdy => spdy_remote_command(url, &options.protocols, io).await,
        Transport::WebSocket => ws_remote_command(url, &options.protocols, io).await,
    }
}

async fn open_typed(session: &Session, kind: &str) -> Result<Stream, ClientError> {
    let stream = session
        .open(Headers::from([(HEADER_STREAM_TYPE, kind)]), false)
        .await?;
    stream.response().await?;
    Ok(stream)
}

fn decode_status(bytes: &[u8], json: bool) -> Result<i32, ClientError> {
    if bytes.is_empty() {
        return Ok(0);
    }
    if !json {
        return Err(ClientError::Remote(
            String::from_utf8_lossy(bytes).into_owned(),
        ));
    }
    let status: Status = serde_json::from_slice(bytes).map_err(|e| {
        ClientError::Protocol(format!(
            "error stream protocol error: {e} in {:?}",
            String::from_utf8_lossy(bytes)
        ))
    })?;
    status.exit_code().map_err(ClientError::Remote)
}

async fn copy_out<R: AsyncRead + Unpin>(mut from: R, to: Option<&mut crate::runtime::BoxWrite>) {
    match to {
        Some(w) => {
            let _ = tokio::io::copy(&mut from, w).await;
            let _ = w.flush().await;
        }
        None => {
            let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
        }
    }
}

async fn spdy_remote_command(
    url: &str,
    protocols: &[String],
    mut io: StreamIo,
) -> Result<i32, ClientError> {
    let (conn, protocol) = spdy_upgrade(url, protocols).await?;
    let version = RemoteCommandVersion::from_spdy_protocol(&protocol).ok_or_else(|| {
        ClientError::Protocol(format!("server chose unknown protocol {protocol:?}"))
    })?;
    let (session, _incoming) = Session::client(conn, spdy_config());
    // client-go's order: error, stdin, stdout, stderr, resize; each waits for its reply.
    let mut error = open_typed(&session, STREAM_TYPE_ERROR).await?;
    let stdin = match io.stdin.is_some() {
        true => Some(open_typed(&session, STREAM_TYPE_STDIN).await?),
        false => None,
    };
    let stdout = match io.stdout.is_some() {
        true => Some(open_typed(&session, STREAM_TYPE_STDOUT).await?),
        false => None,
    };
    let stderr = match io.stderr.is_some() {
        true => Some(open_typed(&session, STREAM_TYPE_STDERR).await?),
        false => None,
    };
    let resize_stream = match io.tty && version.supports_resize() {
        true => Some(open_typed(&session, STREAM_TYPE_RESIZE).await?),
        false => None,
    };
    // We never write on these: half-close them so that the server's FIN ends them.
    let _ = error.shutdown().await;
    let mut stdout = stdout;
    let mut stderr = stderr;
    for s in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = s.shutdown().await;
    }

    let mut stdin_src = io.stdin.take();
    let stdin_fut = async move {
        if let (Some(mut dst), Some(src)) = (stdin, stdin_src.as_mut()) {
            let _ = tokio::io::copy(src, &mut dst).await;
            let _ = dst.shutdown().await;
            // Keep the stream until the session ends: dropping it would reset it.
            std::future::pending::<()>().await;
        }
        std::future::pending::<()>().await
    };
    let mut resize_rx = io.resize.take();
    let resize_fut = async move {
        if let (Some(mut dst), Some(rx)) = (resize_stream, resize_rx.as_mut()) {
            while let Some(size) = rx.recv().await {
                if dst.write_all(&resize::encode(size)).await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await
    };
    let mut out = io.stdout.take();
    let mut err = io.stderr.take();
    let outputs = async {
        let o = async {
            if let Some(s) = stdout {
                copy_out(s, out.as_mut()).await;
            }
        };
        let e = async {
            if let Some(s) = stderr {
                copy_out(s, err.as_mut()).await;
            }
        };
        let status = async {
            let mut bytes = Vec::new();
            let _ = error.read_to_end(&mut bytes).await;
            bytes
        };
        let ((), (), bytes) = tokio::join!(o, e, status);
        bytes
    };
    let bytes = tokio::select! {
        b = outputs => b,
        _ = stdin_fut => unreachable!(),
        _ = resize_fut => unreachable!(),
    };
    session.abort();
    decode_status(&bytes, version.status_json())
}

async fn ws_connect(
    url: &str,
    protocols: &[String],
) -> Result<(tokio_tungstenite::WebSocketStream<TcpStream>, String), ClientError> {
    let (host, path) = parse_url(url)?;
    let mut request = format!("ws://{host}{path}")
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(Box::new(e)))?;
    if !protocols.is_empty() {
        let value = protocols.join(", ");
        request.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            value
                .parse()
                .map_err(|_| ClientError::Url(url.to_owned()))?,
        );
    }
    let tcp = TcpStream::connect(&host).await?;
    tcp.set_nodelay(true)?;
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, resp)) => {
            let protocol = resp
                .headers()
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            Ok((ws, protocol))
        }
        Err(tungstenite::Error::Http(resp)) => Err(ClientError::Http {
            status: resp.status().as_u16(),
            message: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim_end().to_owned())
                .unwrap_or_default(),
            accepted: Vec::new(),
        }),
        Err(e) => Err(ClientError::WebSocket(Box::new(e))),
    }
}

async fn ws_remote_command(
    url: &str,
    protocols: &[String],
    mut io: StreamIo,
) -> Result<i32, ClientError> {
    let (ws, protocol) = ws_connect(url, protocols).await?;
    let json = matches!(
        protocol.as_str(),
        WS_V4_CHANNEL | WS_V4_BASE64_CHANNEL | WS_V5_CHANNEL
    );
    let setup = MuxSetup {
        codec: Codec::for_protocol(&protocol),
        inbound: vec![false, true, true, true, false],
        outbound: vec![io.stdin.is_some(), false, false, false, io.tty],
        accept_close_signal: false,
        send_close_signal: protocol == WS_V5_CHANNEL,
        initial: Vec::new(),
        close_when_written: false,
    };
    let (mut ends, driver) = mux(ws, setup);
    let stdin_dst = ends.writers[usize::from(CHANNEL_STDIN)].take();
    let mut stdin_src = io.stdin.take();
    let stdin_fut = async move {
        if let (Some(mut dst), Some(src)) = (stdin_dst, stdin_src.as_mut()) {
            let _ = tokio::io::copy(src, &mut dst).await;
            let _ = dst.shutdown().await;
        }
        std::future::pending::<()>().await
    };
    let resize_dst = ends.writers[usize::from(CHANNEL_RESIZE)].take();
    let mut resize_rx = io.resize.take();
    let resize_fut = async move {
        if let (Some(mut dst), Some(rx)) = (resize_dst, resize_rx.as_mut()) {
            while let Some(size) = rx.recv().await {
                if dst.write_all(&resize::encode(size)).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        }
        std::future::pending::<()>().await
    };
    let stdout = ends.readers[usize::from(CHANNEL_STDOUT)].take();
    let stderr = ends.readers[usize::from(CHANNEL_STDERR)].take();
    let error = ends.readers[usize::from(CHANNEL_ERROR)].take();
    drop(ends);
    let mut out = io.stdout.take();
    let mut err = io.stderr.take();
    let outputs = async {
        let o = async {
            if let Some(s) = stdout {
                copy_out(s, out.as_mut()).await;
            }
        };
        let e = async {
            if let Some(s) = stderr {
                copy_out(s, err.as_mut()).await;
            }
        };
        let status = async {
            let mut bytes = Vec::new();
            if let Some(mut r) = error {
                let _ = r.read_to_end(&mut bytes).await;
            }
            bytes
        };
        let ((), (), bytes) = tokio::join!(o, e, status);
        bytes
    };
    let (_, bytes) = tokio::select! {
        r = futures::future::join(driver, outputs) => r,
        _ = stdin_fut => unreachable!(),
        _ = resize_fut => unreachable!(),
    };
    decode_status(&bytes, json)
}

/// A SPDY port-forward connection (`portforward.k8s.io`), as kubectl's.
#[derive(Clone)]
pub struct PortForwardClient {
    session: Session,
    next_request: Arc<AtomicU64>,
}

impl std::fmt::Debug for PortForwardClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwardClient").finish_non_exhaustive()
    }
}

/// One forwarded connection: reads and writes go to the port in the pod; `shutdown`
/// half-closes.
pub struct ForwardedConn {
    data: Stream,
    error: Stream,
}

impl PortForwardClient {
    /// Connects to a URL from `GetPortForward`.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let (conn, protocol) = spdy_upgrade(url, &[PORT_FORWARD_PROTOCOL_V1.to_owned()]).await?;
        if protocol != PORT_FORWARD_PROTOCOL_V1 {
            return Err(ClientError::Protocol(format!(
                "server chose protocol {protocol:?}"
            )));
        }
        let (session, _incoming) = Session::client(conn, spdy_config());
        Ok(Self {
            session,
            next_request: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Opens a connection to `port` in the pod: an error stream (half-closed at once, we
    /// never write on it) and a data stream sharing a new `requestID`.
    pub async fn open(&self, port: u16) -> Result<ForwardedConn, ClientError> {
        let id = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let port = port.to_string();
        let headers = |kind: &str| {
            Headers::from([
                (HEADER_STREAM_TYPE, kind),
                (HEADER_PORT, port.as_str()),
                (HEADER_REQUEST_ID, id.as_str()),
            ])
        };
        let mut error = self.session.open(headers(STREAM_TYPE_ERROR), false).await?;
        error.response().await?;
        error.shutdown().await?;
        let data = self.session.open(headers(STREAM_TYPE_DATA), false).await?;
        data.response().await?;
        Ok(ForwardedConn { data, error })
    }

    /// Forwards every connection accepted on `listener` to `port` in the pod, until the
    /// session ends. Errors the server reports are logged.
    pub async fn serve(&self, listener: TcpListener, port: u16) -> Result<(), ClientError> {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = self.session.closed() => return Ok(()),
            };
            let conn = self.open(port).await?;
            tokio::spawn(async move {
                if let Some(msg) = conn.forward(tcp).await {
                    tracing::warn!("an error occurred forwarding to port {port}: {msg}");
                }
            });
        }
    }

    /// Closes the session (GOAWAY, then the connection once streams are done).
    pub async fn close(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.session.close()).await;
        self.session.abort();
    }
}

impl ForwardedConn {
    /// Reads the error stream to its end: `Some(message)` when the server reported one.
    pub async fn error_message(&mut self) -> Option<String> {
        let mut bytes = Vec::new();
        let _ = self.error.read_to_end(&mut bytes).await;
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Copies between `local` and the pod like kubectl: remote → local until the remote
    /// end closes, local → remote with a FIN at local EOF; then returns the server's error
    /// message, if any.
    pub async fn forward(mut self, local: TcpStream) -> Option<String> {
        let (mut lr, mut lw) = local.into_split();
        {
            let (mut dr, mut dw) = tokio::io::split(&mut self.data);
            let up = async {
                let _ = tokio::io::copy(&mut lr, &mut dw).await;
                let _ = dw.shutdown().await;
                std::future::pending::<()>().await
            };
            let down = async {
                let _ = tokio::io::copy(&mut dr, &mut lw).await;
                let _ = lw.shutdown().await;
            };
            tokio::select! {
                _ = down => {}
                _ = up => {}
            }
        }
        self.error_message().await
    }
}

impl AsyncRead for ForwardedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.data).poll_read(cx, buf)
    }
}

impl AsyncWrite for ForwardedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.data).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.data).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.data).poll_shutdown(cx)
    }
}

/// A WebSocket port forward: one data/error channel pair per port of the request.
pub struct WsPortForward {
    /// One entry per port, in the request's order.
    pub ports: Vec<WsForwardedPort>,
    driver: JoinHandle<()>,
}

impl Drop for WsPortForward {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The channels of one forwarded port.
pub struct WsForwardedPort {
    pub port: u16,
    pub data: ChannelIo,
    pub error: DuplexStream,
}

/// A channel's two directions as one stream (write = to the pod, read = from it).
pub struct ChannelIo {
    rd: DuplexStream,
    wr: DuplexStream,
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for ChannelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.wr).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.wr).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.wr).poll_shutdown(cx)
    }
}

impl WsPortForward {
    /// Connects to a port-forward URL over WebSocket. `ports` must be the ports of the
    /// request (or are sent as `port` query parameters when the request had none); the
    /// port prefix the server sends first on every channel is checked and removed.
    pub async fn connect(url: &str, ports: &[u16], base64: bool) -> Result<Self, ClientError> {
        let url = if url.contains('?') || ports.is_empty() {
            url.to_owned()
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("{url}?port={}", list.join(","))
        };
        let protocol = if base64 {
            WS_V4_BASE64_CHANNEL
        } else {
            WS_V4_CHANNEL
        };
        let (ws, chosen) = ws_connect(&url, &[protocol.to_owned()]).await?;
        let n = ports.len() * 2;
        let setup = MuxSetup {
            codec: Codec::for_protocol(&chosen),
            inbound: vec![true; n],
            outbound: (0..n).map(|ch| ch % 2 == 0).collect(),
            accept_close_signal: false,
            send_close_signal: false,
            initial: Vec::new(),
            close_when_written: false,
        };
        let (mut ends, driver) = mux(ws, setup);
        let driver = tokio::spawn(driver);
        let mut out = Vec::with_capacity(ports.len());
        for (i, &port) in ports.iter().enumerate() {
            let (Some(mut rd), Some(wr), Some(mut error)) = (
                ends.readers[2 * i].take(),
                ends.writers[2 * i].take(),
                ends.readers[2 * i + 1].take(),
            ) else {
                driver.abort();
                return Err(ClientError::Protocol("missing channel".into()));
            };
            for r in [&mut rd, &mut error] {
                let mut prefix = [0u8; 2];
                r.read_exact(&mut prefix).await?;
                if u16::from_le_bytes(prefix) != port {
                    driver.abort();
                    return Err(ClientError::Protocol(format!(
                        "channel of port {port} announced port {}",
                        u16::from_le_bytes(prefix)
                    )));
                }
            }
            out.push(WsForwardedPort {
                port,
                data: ChannelIo { rd, wr },
                error,
            });
        }
        Ok(Self { ports: out, driver })
    }
}
