//! The HTTP side of the streaming server: hands out URLs for validated requests, then
//! serves `/exec/TOKEN`, `/attach/TOKEN` and `/portforward/TOKEN` (GET or POST) as
//! kubelet's `cri/streaming/server.go` does.
//!
//! A token is consumed by the first request that names it, whatever happens next. Unknown,
//! expired or reused tokens get 404. A WebSocket request (`Upgrade: websocket`,
//! `Connection: upgrade`, `Sec-WebSocket-Key`) is answered by the WebSocket transport;
//! anything else by SPDY, which needs `X-Stream-Protocol-Version` (else 400), a protocol
//! both sides support (else 403 listing ours in `X-Accepted-Stream-Protocol-Versions`) and
//! `Connection: Upgrade` + `Upgrade: SPDY/3.1` (else 400). WebSocket sub-protocol
//! negotiation failures get 403.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::idle::{ActivityIo, Watchdog};
use crate::protocol::{
    HEADER_ACCEPTED_PROTOCOL_VERSIONS, HEADER_PROTOCOL_VERSION, PORT_FORWARD_PROTOCOLS,
    REMOTE_COMMAND_PROTOCOLS, RemoteCommandVersion, SPDY_31, negotiate,
};
use crate::remotecommand::{Action, Options};
use crate::request::{AttachRequest, ExecRequest, Pending, PortForwardRequest, RequestError};
use crate::runtime::StreamRuntime;
use crate::token_cache::TokenCache;
use crate::websocket::{PORT_FORWARD_WS_PROTOCOLS, REMOTE_COMMAND_WS_PROTOCOLS};

/// Streaming server settings; defaults are kubelet's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port ([`StreamServer::local_addr`] tells it).
    pub addr: SocketAddr,
    /// Base of the URLs handed out, e.g. `http://10.0.0.5:10010`; default
    /// `http://LOCAL_ADDR`.
    pub base_url: Option<String>,
    /// A connection without traffic for this long is closed (kubelet: 4 hours).
    pub stream_idle_timeout: Duration,
    /// Time the client has to open all the streams of a session (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
    /// How long a token stays valid (kubelet: 1 minute).
    pub token_ttl: Duration,
    /// Most tokens waiting at once (kubelet: 1000).
    pub max_in_flight: usize,
    /// After a forwarded port's target closes its side, how long the client may still
    /// send before the forward ends (containerd: 1 s).
    pub port_forward_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            token_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
            port_forward_grace: Duration::from_secs(1),
        }
    }
}

/// Counts the server's tasks so shutdown can wait for all of them.
#[derive(Default)]
struct Tasks {
    live: AtomicUsize,
    idle: Notify,
}

struct TaskGuard(Arc<Tasks>);

impl TaskGuard {
    fn new(tasks: &Arc<Tasks>) -> Self {
        tasks.live.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(tasks))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

struct Inner {
    config: ServerConfig,
    cache: TokenCache,
    runtime: Arc<dyn StreamRuntime>,
    shutdown: watch::Receiver<bool>,
    tasks: Arc<Tasks>,
}

/// The CRI streaming server. Dropping it without [`StreamServer::shutdown`] stops
/// accepting connections but lets running sessions finish.
pub struct StreamServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    base_url: String,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("local_addr", &self.local_addr)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl StreamServer {
    /// Binds `config.addr` and starts serving. Must run inside a Tokio runtime.
    pub async fn start(config: ServerConfig, runtime: Arc<dyn StreamRuntime>) -> io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        let local_addr = listener.local_addr()?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            cache: TokenCache::new(config.token_ttl, config.max_in_flight),
            config,
            runtime,
            shutdown: shutdown_rx,
            tasks: Arc::new(Tasks::default()),
        });
        let guard = TaskGuard::new(&inner.tasks);
        tokio::spawn(accept_loop(
            listener,
            Arc::downgrade(&inner),
            inner.shutdown.clone(),
            guard,
        ));
        Ok(Self {
            inner,
            local_addr,
            base_url,
            shutdown: shutdown_tx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The prefix of the URLs handed out, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, request: Pending) -> Result<String, RequestError> {
        let method = request.method();
        let token = self.inner.cache.insert(request)?;
        Ok(format!("{}/{method}/{token}", self.base_url))
    }

    /// Validates an exec request and returns the URL to stream it from.
    pub fn get_exec(&self, request: ExecRequest) -> Result<String, RequestError> {
        request.validate()?;
        self.url(Pending::Exec(request))
    }

    /// Validates an attach request and returns the URL to stream it from.
    pub fn get_attach(&self, request: AttachRequest) -> Result<String, RequestError> {
        request.validate()?;
        self.url(Pending::Attach(request))
    }

    /// Validates a port-forward request and returns the URL to stream it from.
    pub fn get_port_forward(&self, request: PortForwardRequest) -> Result<String, RequestError> {
        request.validate()?;
        self.url(Pending::PortForward(request))
    }

    /// Stops accepting, cuts every open session (dropping the runtime futures) and waits
    /// until all the server's tasks have ended.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let tasks = Arc::clone(&self.inner.tasks);
        drop(self);
        loop {
            let notified = tasks.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if tasks.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inner: std::sync::Weak<Inner>,
    mut shutdown: watch::Receiver<bool>,
    _guard: TaskGuard,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("streaming server accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::idle::until_true(&mut shutdown) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let guard = TaskGuard::new(&inner.tasks);
        let mut conn_shutdown = inner.shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _ = tcp.set_nodelay(true);
            let svc_inner = Arc::clone(&inner);
            let svc = service_fn(move |req| {
                let inner = Arc::clone(&svc_inner);
                async move { Ok::<_, Infallible>(handle(inner, req, peer)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            drop(inner);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!("streaming connection from {peer}: {e}");
                    }
                }
                _ = crate::idle::until_true(&mut conn_shutdown) => {}
            }
        });
    }
}

type Body = Full<Bytes>;

/// A plain-text error response, as Go's `http.Error`.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_found() -> Response<Body> {
    error_response(StatusCode::NOT_FOUND, "404 page not found")
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// `wsstream.IsWebSocketRequest`.
fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn handle(inner: Arc<Inner>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((method, token)) = path.split_once('/') else {
        return not_found();
    };
    if token.is_empty() || token.contains('/') {
        return not_found();
    }
    let Some(pending) = inner.cache.consume(token) else {
        return not_found();
    };
    if pending.method() != method {
        return not_found();
    }
    match pending {
        Pending::Exec(r) => {
            let opts = Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            };
            let action = Action::Exec {
                container_id: r.container_id,
                cmd: r.cmd,
            };
            remote_command(inner, req, opts, action)
        }
        Pending::Attach(r) => {
            let opts = Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            };
            remote_command(
                inner,
                req,
                opts,
                Action::Attach {
                    container_id: r.container_id,
                },
            )
        }
        Pending::PortForward(r) => port_forward(inner, req, r, peer),
    }
}

/// `httpstream.Handshake` followed by the SPDY upgrade checks of `spdy.ResponseUpgrader`.
fn spdy_handshake(
    req: &Request<Incoming>,
    supported: &[&str],
) -> Result<String, Box<Response<Body>>> {
    let offered: Vec<String> = req
        .headers()
        .get_all(HEADER_PROTOCOL_VERSION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if offered.is_empty() {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            &format!("unable to upgrade: {HEADER_PROTOCOL_VERSION} is required"),
        )));
    }
    let Some(chosen) = negotiate(&offered, supported) else {
        let mut resp = error_response(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]",
                offered.join(" "),
                supported.join(" ")
            ),
        );
        for p in supported {
            resp.headers_mut().append(
                HEADER_ACCEPTED_PROTOCOL_VERSIONS,
                HeaderValue::from_str(p).expect("protocol names are valid headers"),
            );
        }
        return Err(Box::new(resp));
    };
    let upgrade_ok = header_has_token(req.headers(), header::CONNECTION, "upgrade")
        && req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.to_ascii_lowercase()
                    .contains(&SPDY_31.to_ascii_lowercase())
            });
    if !upgrade_ok {
        let show = |name: header::HeaderName| {
            req.headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "unable to upgrade: missing upgrade headers in request: Connection: {:?}, Upgrade: {:?}",
                show(header::CONNECTION),
                show(header::UPGRADE)
            ),
        )));
    }
    Ok(chosen.to_owned())
}

fn switching(upgrade: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    resp
}

/// WebSocket handshake: the first sub-protocol the client offers that we support ("" when
/// it offers none), as wsstream's `handshake`.
fn ws_handshake(
    req: &Request<Incoming>,
    supported: &[&str],
) -> Result<(String, Response<Body>), Box<Response<Body>>> {
    let version = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if version.trim() != "13" {
        let mut resp = error_response(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let chosen = if offered.is_empty() {
        supported.contains(&"").then(String::new)
    } else {
        negotiate(&offered, supported).map(str::to_owned)
    };
    let Some(chosen) = chosen else {
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            &format!(
                "requested protocol(s) are not supported: [{}]; supports [{}]",
                offered.join(" "),
                supported.join(" ")
            ),
        )));
    };
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .unwrap_or_default();
    let mut resp = switching("websocket");
    let accept = HeaderValue::from_str(&derive_accept_key(key)).expect("base64 is a valid header");
    resp.headers_mut()
        .insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if !chosen.is_empty() {
        let p = HeaderValue::from_str(&chosen).expect("negotiated protocol is a valid header");
        resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok((chosen, resp))
}

/// Runs `serve` on the upgraded connection in a tracked task.
fn on_upgrade<F, Fut>(inner: &Arc<Inner>, req: &mut Request<Incoming>, serve: F)
where
    F: FnOnce(ActivityIo<TokioIo<hyper::upgrade::Upgraded>>, Watchdog) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(req);
    let guard = TaskGuard::new(&inner.tasks);
    let idle = inner.config.stream_idle_timeout;
    let mut shutdown = inner.shutdown.clone();
    let shutdown_for_watchdog = inner.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let upgraded = tokio::select! {
            u = upgrade => match u {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!("streaming upgrade failed: {e}");
                    return;
                }
            },
            _ = crate::idle::until_true(&mut shutdown) => return,
        };
        let (io, activity) = ActivityIo::new(TokioIo::new(upgraded));
        let watchdog = Watchdog::new(activity, idle, shutdown_for_watchdog);
        serve(io, watchdog).await;
    });
}

fn remote_command(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
    opts: Options,
    action: Action,
) -> Response<Body> {
    let runtime = Arc::clone(&inner.runtime);
    if is_websocket(&req) {
        let (protocol, resp) = match ws_handshake(&req, &REMOTE_COMMAND_WS_PROTOCOLS) {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        on_upgrade(&inner, &mut req, move |io, watchdog| async move {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            crate::websocket::serve_remote_command(ws, &protocol, opts, action, runtime, watchdog)
                .await;
        });
        return resp;
    }
    let protocol = match spdy_handshake(&req, &REMOTE_COMMAND_PROTOCOLS) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let version =
        RemoteCommandVersion::from_spdy_protocol(&protocol).expect("negotiated a known protocol");
    let creation = inner.config.stream_creation_timeout;
    on_upgrade(&inner, &mut req, move |io, watchdog| {
        crate::remotecommand::serve_spdy(io, version, opts, action, runtime, creation, watchdog)
    });
    let mut resp = switching(SPDY_31);
    resp.headers_mut().insert(
        HEADER_PROTOCOL_VERSION,
        HeaderValue::from_str(&protocol).expect("protocol is a valid header"),
    );
    resp
}

/// Ports of a WebSocket port forward: the request's, else `port` query parameters
/// (kubelet's `NewV4Options`).
fn ws_ports(req: &Request<Incoming>, pf: &PortForwardRequest) -> Result<Vec<u16>, String> {
    if !pf.ports.is_empty() {
        return Ok(pf.ports.iter().map(|&p| p as u16).collect());
    }
    let mut ports = Vec::new();
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        if k != "port" {
            continue;
        }
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split("%2C").flat_map(|s| s.split(',')) {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {v:?} as a port: {e}"))?;
            if port < 1 {
                return Err(format!("port {v:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

fn port_forward(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
    pf: PortForwardRequest,
    peer: SocketAddr,
) -> Response<Body> {
    let runtime = Arc::clone(&inner.runtime);
    let grace = inner.config.port_forward_grace;
    let sandbox = pf.pod_sandbox_id.clone();
    if is_websocket(&req) {
        let ports = match ws_ports(&req, &pf) {
            Ok(p) => p,
            Err(msg) => return error_response(StatusCode::BAD_REQUEST, &msg),
        };
        let (protocol, resp) = match ws_handshake(&req, &PORT_FORWARD_WS_PROTOCOLS) {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        on_upgrade(&inner, &mut req, move |io, watchdog| async move {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            crate::websocket::serve_port_forward(
                ws, &protocol, sandbox, ports, runtime, grace, watchdog,
            )
            .await;
        });
        return resp;
    }
    let protocol = match spdy_handshake(&req, &PORT_FORWARD_PROTOCOLS) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let creation = inner.config.stream_creation_timeout;
    on_upgrade(&inner, &mut req, move |io, watchdog| {
        crate::portforward::serve_spdy(
            io,
            peer.to_string(),
            sandbox,
            runtime,
            creation,
            grace,
            watchdog,
        )
    });
    let mut resp = switching(SPDY_31);
    resp.headers_mut().insert(
        HEADER_PROTOCOL_VERSION,
        HeaderValue::from_str(&protocol).expect("protocol is a valid header"),
    );
    resp
}
