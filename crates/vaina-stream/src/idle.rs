//! Connection idle timeout: the connection is closed when no byte has moved either way
//! for the configured time (kubelet's `SetIdleTimeout`, 4 hours by default), and the
//! server's shutdown signal, both as one future a session handler can select on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// Wraps a connection and records when bytes last moved.
pub(crate) struct ActivityIo<T> {
    inner: T,
    clock: Arc<Activity>,
}

pub(crate) struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl<T> ActivityIo<T> {
    pub(crate) fn new(inner: T) -> (Self, Arc<Activity>) {
        let clock = Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        (
            Self {
                inner,
                clock: Arc::clone(&clock),
            },
            clock,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a session was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    Idle,
    Shutdown,
}

/// Resolves when the connection has been idle for `timeout` or the server shuts down.
pub(crate) struct Watchdog {
    activity: Arc<Activity>,
    timeout: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Watchdog {
    pub(crate) fn new(
        activity: Arc<Activity>,
        timeout: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            activity,
            timeout,
            shutdown,
        }
    }

    pub(crate) async fn fired(&mut self) -> Cut {
        loop {
            let deadline = self.activity.last() + self.timeout;
            if Instant::now() >= deadline {
                return Cut::Idle;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = until_true(&mut self.shutdown) => return Cut::Shutdown,
            }
        }
    }
}

/// Resolves once the flag is `true` or its sender is gone.
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
