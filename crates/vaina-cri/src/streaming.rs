//! The streaming server's view of the runtime: `vaina-stream` speaks kubelet's protocols
//! and calls this adapter, which hands the client's streams to the runtime core.

use std::sync::Arc;

use tokio::sync::mpsc;
use vaina_runtime::Runtime;
use vaina_runtime::stream::{ExecIo, TermSize};
use vaina_stream::runtime::{BoxConn, BoxFuture, RuntimeError, StreamIo, StreamRuntime};

/// The node's runtime, as the streaming server calls it.
pub struct RuntimeStreams(pub Arc<Runtime>);

impl StreamRuntime for RuntimeStreams {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> BoxFuture<'static, Result<i32, RuntimeError>> {
        let rt = self.0.clone();
        Box::pin(async move {
            rt.exec_stream(&container_id, cmd, exec_io(io))
                .await
                .map_err(runtime_error)
        })
    }

    fn attach(
        &self,
        container_id: String,
        io: StreamIo,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let rt = self.0.clone();
        Box::pin(async move {
            rt.attach_stream(&container_id, exec_io(io))
                .await
                .map_err(runtime_error)
        })
    }

    fn port_forward(
        &self,
        sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'static, Result<BoxConn, RuntimeError>> {
        let rt = self.0.clone();
        Box::pin(async move {
            let conn = rt
                .port_forward(&sandbox_id, port)
                .await
                .map_err(runtime_error)?;
            Ok(Box::new(conn) as BoxConn)
        })
    }
}

fn exec_io(io: StreamIo) -> ExecIo {
    let resize = io.resize.map(|mut from| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(s) = from.recv().await {
                let size = TermSize {
                    width: s.width,
                    height: s.height,
                };
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        });
        rx
    });
    ExecIo {
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
        tty: io.tty,
        resize,
    }
}

fn runtime_error(e: vaina_runtime::Error) -> RuntimeError {
    match e {
        vaina_runtime::Error::NotFound { .. } => RuntimeError::not_found(e.chain()),
        other => RuntimeError::new(other.chain()),
    }
}
