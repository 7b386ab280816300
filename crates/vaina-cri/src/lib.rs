//! CRI v1 over a unix socket: thin tonic adapters from the CRI's RPCs to
//! `vaina_runtime::Runtime`. One file per RPC group; error mapping in `status`;
//! [`client`] dials any CRI runtime's socket (used by the CLI and the tests).

pub mod client;
mod convert;
mod image_service;
mod runtime_service;
mod stats;
mod status;
pub mod streaming;

use std::future::Future;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use vaina_runtime::Runtime;

pub use runtime_service::{RUNTIME_NAME, RUNTIME_VERSION};

/// Serves RuntimeService and ImageService on `listener` until `shutdown` resolves;
/// Exec/Attach/PortForward hand out URLs of `streams`.
pub async fn serve(
    runtime: Arc<Runtime>,
    streams: Arc<vaina_stream::server::StreamServer>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime_service::Service::new(
            runtime.clone(),
            streams,
        )))
        .add_service(ImageServiceServer::new(image_service::Service::new(
            runtime,
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}
