//! Port forwarding over SPDY (`portforward.k8s.io`), as kubelet's
//! `portforward/httpstream.go`.
//!
//! For each forwarded connection the client opens two streams with the same `requestID`
//! header: `streamType: error` and `streamType: data`, both with a `port` header. Streams
//! with a missing or invalid `port` or `streamType` are reset. Once both streams of a
//! request are there the runtime opens the port inside the pod and bytes are copied both
//! ways; failures are written as text on the error stream
//! (`error forwarding port P to pod SANDBOX, uid : REASON`), and both streams are closed
//! when the forward ends. A pair not completed within the stream creation timeout gets
//! `(conn=PEER, request=ID) timed out waiting for streams` on its error stream. Clients
//! without `requestID` get kubelet's fallback: the error stream's id, or the data
//! stream's id minus 2.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use vaina_spdy::{Headers, RstStatus, Session, Stream};

use crate::idle::Watchdog;
use crate::protocol::{
    HEADER_PORT, HEADER_REQUEST_ID, HEADER_STREAM_TYPE, STREAM_TYPE_DATA, STREAM_TYPE_ERROR,
};
use crate::remotecommand::spdy_config;
use crate::runtime::StreamRuntime;
use crate::splice::splice;

struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Instant,
}

/// Checks the headers kubelet's `httpStreamReceived` checks; returns the port.
fn validate(headers: &Headers) -> Result<u16, String> {
    let port = headers.get(HEADER_PORT).unwrap_or("");
    if port.is_empty() {
        return Err(format!("{HEADER_PORT:?} header is required"));
    }
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port < 1 {
        return Err(format!("port \"{port}\" must be > 0"));
    }
    match headers.get(HEADER_STREAM_TYPE).unwrap_or("") {
        "" => Err(format!("{HEADER_STREAM_TYPE:?} header is required")),
        STREAM_TYPE_DATA | STREAM_TYPE_ERROR => Ok(port),
        other => Err(format!("invalid stream type {other:?}")),
    }
}

fn request_id(stream: &Stream) -> String {
    if let Some(id) = stream
        .headers()
        .get(HEADER_REQUEST_ID)
        .filter(|s| !s.is_empty())
    {
        return id.to_owned();
    }
    let id = i64::from(stream.id());
    match stream.headers().get(HEADER_STREAM_TYPE) {
        Some(STREAM_TYPE_DATA) => (id - 2).to_string(),
        _ => id.to_string(),
    }
}

/// Serves one upgraded SPDY connection for port forwarding.
pub(crate) async fn serve_spdy<T>(
    io: T,
    peer: String,
    sandbox_id: String,
    runtime: Arc<dyn StreamRuntime>,
    creation_timeout: Duration,
    grace: Duration,
    mut watchdog: Watchdog,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut incoming) = Session::server(io, spdy_config());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    let mut accepting = true;
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            s = incoming.accept(), if accepting => {
                let Some(stream) = s else {
                    accepting = false;
                    if tasks.is_empty() {
                        break;
                    }
                    continue;
                };
                if let Err(e) = validate(stream.headers()) {
                    tracing::warn!("port forward stream rejected: {e}");
                    stream.reset(RstStatus::Cancel);
                    continue;
                }
                if stream.reply(Headers::new(), false).is_err() {
                    continue;
                }
                let id = request_id(&stream);
                let is_error = stream.headers().get(HEADER_STREAM_TYPE) == Some(STREAM_TYPE_ERROR);
                let pair = pairs.entry(id.clone()).or_insert_with(|| Pair {
                    data: None,
                    error: None,
                    deadline: Instant::now() + creation_timeout,
                });
                let slot = if is_error { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    let which = if is_error { "error" } else { "data" };
                    let msg = format!("error processing stream for request {id}: {which} stream already assigned");
                    tracing::warn!("{msg}");
                    if let Some(err) = pair.error.as_mut() {
                        // Written in place: without flow control a write only waits for
                        // the connection's send queue.
                        let _ = err.write_all(msg.as_bytes()).await;
                    }
                    drop(stream);
                    continue;
                }
                *slot = Some(stream);
                if pair.data.is_some() && pair.error.is_some() {
                    let pair = pairs.remove(&id).expect("pair present");
                    let (Some(data), Some(error)) = (pair.data, pair.error) else { continue };
                    tasks.push(Box::pin(forward(
                        Arc::clone(&runtime),
                        sandbox_id.clone(),
                        data,
                        error,
                        grace,
                    )));
                }
            }
            Some(()) = tasks.next(), if !tasks.is_empty() => {
                if !accepting && tasks.is_empty() {
                    break;
                }
            }
            _ = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    let pair = pairs.remove(&id).expect("pair present");
                    let msg = format!("(conn={peer}, request={id}) timed out waiting for streams");
                    tracing::warn!("{msg}");
                    if let Some(mut err) = pair.error {
                        tasks.push(Box::pin(async move {
                            let _ = err.write_all(msg.as_bytes()).await;
                            let _ = err.shutdown().await;
                        }));
                    }
                }
            }
            _ = session.closed() => break,
            _ = watchdog.fired() => break,
        }
    }
    session.abort();
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn forward(
    runtime: Arc<dyn StreamRuntime>,
    sandbox_id: String,
    data: Stream,
    mut error: Stream,
    grace: Duration,
) {
    let port: u16 = data
        .headers()
        .get(HEADER_PORT)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let (mut rd, mut wr) = tokio::io::split(data);
    match runtime.port_forward(sandbox_id.clone(), port).await {
        Ok(conn) => splice(&mut rd, &mut wr, conn, grace).await,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {sandbox_id}, uid : {e}");
            tracing::warn!("{msg}");
            let _ = error.write_all(msg.as_bytes()).await;
            let _ = wr.shutdown().await;
        }
    }
    let _ = error.shutdown().await;
    // Wait for the client to close its side of the data stream: dropping the stream
    // earlier would reset it, and a reset may overtake data the client has not read yet.
    let _ = tokio::io::copy(&mut rd, &mut tokio::io::sink()).await;
}
