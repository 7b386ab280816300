//! A CRI v1 client over a unix socket, for vainad or any CRI runtime (containerd, CRI-O).

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

pub const DEFAULT_ENDPOINT: &str = "unix:///run/vaina/vaina.sock";

pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
}

/// `unix:///path` or a plain path.
fn socket_path(endpoint: &str) -> Result<String> {
    if let Some(p) = endpoint.strip_prefix("unix://") {
        return Ok(p.to_string());
    }
    if endpoint.starts_with('/') {
        return Ok(endpoint.to_string());
    }
    bail!("unsupported endpoint {endpoint:?}: use unix:///path/to/socket")
}

pub async fn connect(endpoint: &str) -> Result<Cri> {
    let path = socket_path(endpoint)?;
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .with_context(|| format!("connect to {endpoint}"))?;
    Ok(Cri {
        runtime: RuntimeServiceClient::new(channel.clone()),
        image: ImageServiceClient::new(channel),
    })
}
