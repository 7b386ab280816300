//! Copying a forwarded connection both ways with half-close propagation.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Copies `client_rd` → `conn` and `conn` → `client_wr`. The end of one direction is
/// passed on as a half-close (FIN / `shutdown`). When the target closes its side first,
/// the client gets `grace` to finish sending (containerd waits 1 s the same way) before
/// the forward ends; when the client finishes first, the target's answer is copied to its
/// end.
pub(crate) async fn splice<R, W, C>(client_rd: &mut R, client_wr: &mut W, conn: C, grace: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut conn_rd, mut conn_wr) = tokio::io::split(conn);
    let up = async {
        let r = tokio::io::copy(client_rd, &mut conn_wr).await;
        let _ = conn_wr.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut conn_rd, client_wr).await;
        let _ = client_wr.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => {
            if let Err(e) = r {
                tracing::debug!("port forward: copy from target ended: {e}");
            }
            let _ = tokio::time::timeout(grace, &mut up).await;
        }
        r = &mut up => {
            if let Err(e) = r {
                tracing::debug!("port forward: copy from client ended: {e}");
            }
            let _ = down.await;
        }
    }
}
