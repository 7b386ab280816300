//! Exec and attach over SPDY (`channel.k8s.io` to `v5.channel.k8s.io`), as kubelet's
//! `remotecommand/httpstream.go`.
//!
//! After the upgrade the client opens one stream per role, named by its `streamType`
//! header: `error` always, `stdin` / `stdout` / `stderr` as the request asked, and
//! `resize` with a TTY from v3 on. Each is answered with an empty SYN_REPLY. When all
//! expected streams are there (within the stream creation timeout) the runtime runs;
//! afterwards stdout and stderr get FIN, the exit status is written on the error stream
//! (v1-v3: the failure message as text, nothing on success; v4+: a JSON
//! `metav1.Status`), and the session is closed. v5 over SPDY behaves as v4: half-closing
//! stdin is a FIN. v1 keeps two quirks of kubelet: the error stream is reset once the
//! streams are set up (so no status reaches the client) and the server half-closes stdin.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use vaina_spdy::{Config, Headers, RstStatus, Session, Stream};

use crate::handoff::{Reclaim, lend};
use crate::idle::Watchdog;
use crate::protocol::{
    HEADER_STREAM_TYPE, RemoteCommandVersion, STREAM_TYPE_ERROR, STREAM_TYPE_RESIZE,
    STREAM_TYPE_STDERR, STREAM_TYPE_STDIN, STREAM_TYPE_STDOUT,
};
use crate::resize;
use crate::runtime::{StreamIo, StreamRuntime, TermSize};
use crate::status::Status;

/// How long a finished session waits for the client to close the connection after the
/// status was sent, before closing it itself.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What an exec or attach session runs.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// Which streams the request asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Runs the action and turns its outcome into the status kubelet reports.
pub(crate) async fn run_action(
    runtime: Arc<dyn StreamRuntime>,
    action: &Action,
    io: StreamIo,
) -> Status {
    match action {
        Action::Exec { container_id, cmd } => {
            match runtime.exec(container_id.clone(), cmd.clone(), io).await {
                Ok(0) => Status::success(),
                Ok(code) => Status::non_zero_exit(cmd, code),
                Err(e) => {
                    let msg = format!("error executing command in container: {e}");
                    tracing::warn!("{msg}");
                    Status::internal_error(&msg)
                }
            }
        }
        Action::Attach { container_id } => match runtime.attach(container_id.clone(), io).await {
            Ok(()) => Status::success(),
            Err(e) => {
                let msg = format!("error attaching to container: {e}");
                tracing::warn!("{msg}");
                Status::internal_error(&msg)
            }
        },
    }
}

/// The SPDY session configuration for talking to moby/spdystream peers.
pub(crate) fn spdy_config() -> Config {
    let mut cfg = Config::default();
    cfg.flow_control = false;
    cfg
}

#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Serves one upgraded SPDY connection for exec or attach.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_spdy<T>(
    io: T,
    version: RemoteCommandVersion,
    opts: Options,
    action: Action,
    runtime: Arc<dyn StreamRuntime>,
    creation_timeout: Duration,
    mut watchdog: Watchdog,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, mut incoming) = Session::server(io, spdy_config());

    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version.supports_resize());
    let mut streams = Streams::default();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + creation_timeout;
    while received < expected {
        let stream = tokio::select! {
            s = incoming.accept() => match s {
                Some(s) => s,
                None => return, // the client went away
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("timed out waiting for client to create streams");
                session.abort();
                return;
            }
            _ = watchdog.fired() => {
                session.abort();
                return;
            }
        };
        let kind = stream
            .headers()
            .get(HEADER_STREAM_TYPE)
            .unwrap_or("")
            .to_owned();
        let slot = match kind.as_str() {
            STREAM_TYPE_ERROR => &mut streams.error,
            STREAM_TYPE_STDIN => &mut streams.stdin,
            STREAM_TYPE_STDOUT => &mut streams.stdout,
            STREAM_TYPE_STDERR => &mut streams.stderr,
            STREAM_TYPE_RESIZE if version.supports_resize() => &mut streams.resize,
            other => {
                tracing::warn!("unexpected stream type: {other:?}");
                let _ = stream.reply(Headers::new(), false);
                continue;
            }
        };
        if stream.reply(Headers::new(), false).is_err() {
            session.abort();
            return;
        }
        *slot = Some(stream);
        received += 1;
    }

    if version.0 == 1 {
        // kubelet's v1 handler resets the error stream when the streams are set up and
        // half-closes stdin; old clients expect exactly that.
        if let Some(e) = streams.error.take() {
            e.reset(RstStatus::Cancel);
        }
        if let Some(s) = streams.stdin.as_mut() {
            let _ = s.shutdown().await;
        }
    }

    let (stdin, stdin_back) = split_lend(streams.stdin.take());
    let (stdout, stdout_back) = split_lend(streams.stdout.take());
    let (stderr, stderr_back) = split_lend(streams.stderr.take());
    let (resize_tx, resize_rx) = mpsc::channel::<TermSize>(16);
    let resize_stream = if opts.tty {
        streams.resize.take()
    } else {
        None
    };
    let io = StreamIo {
        stdin: stdin.map(|s| Box::new(s) as _),
        stdout: stdout.map(|s| Box::new(s) as _),
        stderr: stderr.map(|s| Box::new(s) as _),
        tty: opts.tty,
        resize: resize_stream.is_some().then_some(resize_rx),
    };
    let resize_pump = async move {
        match resize_stream {
            Some(s) => resize::pump(s, resize_tx).await,
            None => drop(resize_tx),
        }
        std::future::pending::<()>().await
    };

    let work = run_action(runtime, &action, io);
    let status = tokio::select! {
        s = work => s,
        _ = resize_pump => unreachable!("the resize pump never completes"),
        _ = session.closed() => return,
        _ = watchdog.fired() => {
            session.abort();
            return;
        }
    };

    // Streams are kept until the session is over: dropping one the client has not
    // closed would reset it, and a reset may overtake data the client has not read yet.
    let mut keep = Vec::new();
    for back in [&stdout_back, &stderr_back] {
        if let Some(mut s) = back.as_ref().and_then(Reclaim::take) {
            let _ = s.shutdown().await;
            keep.push(s);
        }
    }
    if let Some(mut e) = streams.error.take() {
        let bytes = if version.status_json() {
            status.to_json()
        } else {
            status.to_text()
        };
        if !bytes.is_empty() {
            let _ = e.write_all(&bytes).await;
        }
        let _ = e.shutdown().await;
        keep.push(e);
    }
    keep.extend(stdin_back.as_ref().and_then(Reclaim::take));
    drop(incoming);
    tokio::select! {
        _ = tokio::time::timeout(CLOSE_GRACE, session.closed()) => {}
        _ = watchdog.fired() => {}
    }
    session.abort();
    drop(keep);
    drop(streams);
}

type Lent = crate::handoff::Lent<Stream>;

fn split_lend(stream: Option<Stream>) -> (Option<Lent>, Option<Reclaim<Stream>>) {
    match stream {
        Some(s) => {
            let (l, r) = lend(s);
            (Some(l), Some(r))
        }
        None => (None, None),
    }
}
