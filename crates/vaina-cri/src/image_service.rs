//! ImageService over the node's local image store (`vaina_image::ImageStore`).
//!
//! Store calls block (file I/O, and an flock for changes), so each RPC runs its store work
//! on tokio's blocking pool. PullImage only resolves images already in the store: registry
//! pulls are issue 5; until then a missing image is NotFound with a message saying so.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};
use vaina_image::{Image, ImageStore, Reference, StoreError};
use vaina_runtime::Runtime;

pub struct Service {
    images: Arc<ImageStore>,
    rt: Arc<Runtime>,
}

impl Service {
    pub fn new(rt: Arc<Runtime>) -> Service {
        Service {
            images: rt.images(),
            rt,
        }
    }

    /// Runs `f` against the store on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ImageStore) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.images.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("image store task failed: {e}")))?
    }
}

/// The message with its whole source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Store errors → the gRPC codes kubelet branches on.
fn store_status(e: StoreError) -> Status {
    let msg = chain(&e);
    match e {
        StoreError::NotFound(_) => Status::not_found(msg),
        StoreError::Reference(_) | StoreError::Ambiguous { .. } | StoreError::TagWithDigest(_) => {
            Status::invalid_argument(msg)
        }
        _ => Status::internal(msg),
    }
}

/// The image a request names; the CRI makes `image` optional, an empty name is no name.
fn image_name(spec: Option<cri::ImageSpec>, rpc: &str) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument(format!("{rpc} without an image")))
}

/// The config's `User` as the CRI reports it (as containerd does): the part before any
/// `:group`, as a uid when numeric, else as a name.
fn cri_user(user: Option<&str>) -> (Option<cri::Int64Value>, String) {
    let user = user.unwrap_or("").split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(value) => (Some(cri::Int64Value { value }), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

fn cri_image(image: &Image, user: Option<&str>) -> cri::Image {
    let (uid, username) = cri_user(user);
    let id = image.id.to_string();
    cri::Image {
        id: id.clone(),
        repo_tags: image.repo_tags.iter().map(ToString::to_string).collect(),
        repo_digests: image.repo_digests.iter().map(ToString::to_string).collect(),
        size: image.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: id,
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The config's `User`, if any.
fn config_user(store: &ImageStore, image: &Image) -> Result<Option<String>, StoreError> {
    let config = store.config(image)?;
    Ok(config.config().as_ref().and_then(|c| c.user().clone()))
}

#[tonic::async_trait]
impl ImageService for Service {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = self
            .blocking(move |store| {
                let images = match filter {
                    Some(name) => store.get(&name).map_err(store_status)?.into_iter().collect(),
                    None => store.list().map_err(store_status)?,
                };
                Ok(images
                    .iter()
                    .map(|image| {
                        // One unreadable config must not hide every image from kubelet (its
                        // image GC lists them): the image is listed without a user.
                        let user = config_user(store, image).unwrap_or_else(|e| {
                            tracing::warn!(image = %image.id, err = %chain(&e), "image config unreadable");
                            None
                        });
                        cri_image(image, user.as_deref())
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    /// A missing image is not an error: the response has no image, as the CRI says.
    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image, "ImageStatus")?;
        let verbose = req.verbose;
        let resp = self
            .blocking(move |store| {
                let Some(image) = store.get(&name).map_err(store_status)? else {
                    return Ok(cri::ImageStatusResponse::default());
                };
                let config = store.config(&image).map_err(store_status)?;
                let user = config.config().as_ref().and_then(|c| c.user().clone());
                let mut info = HashMap::new();
                if verbose {
                    // containerd's keys (chainID, imageSpec), so tools reading its verbose
                    // status read ours.
                    let chain_ids: Vec<String> =
                        image.chain_ids().map(ToString::to_string).collect();
                    let json = serde_json::json!({
                        "id": image.id.to_string(),
                        "manifestDigest": image.manifest_digest.to_string(),
                        "chainID": chain_ids.last(),
                        "chainIDs": chain_ids,
                        "size": image.size,
                        "created": image.created,
                        "imageSpec": config,
                    });
                    info.insert("info".to_string(), json.to_string());
                }
                Ok(cri::ImageStatusResponse {
                    image: Some(cri_image(&image, user.as_deref())),
                    info,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    /// Resolves the reference in the local store; the auth and sandbox config are unused
    /// until registry pulls exist.
    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let name = image_name(req.into_inner().image, "PullImage")?;
        let image_ref = self
            .blocking(move |store| {
                if let Some(image) = store.get(&name).map_err(store_status)? {
                    return Ok(image.id.to_string());
                }
                let full = Reference::parse(&name)
                    .map_err(|e| Status::invalid_argument(chain(&e)))?
                    .to_string();
                let shown = if full == name {
                    full
                } else {
                    format!("{name} ({full})")
                };
                Err(Status::not_found(format!(
                    "image {shown} not found locally; registry pulls are not implemented yet \
                     (issue 5): import it with `vaina image import`"
                )))
            })
            .await?;
        Ok(Response::new(cri::PullImageResponse { image_ref }))
    }

    /// Removes the image the name resolves to, with all its names, as containerd does (the
    /// CRI removes images, not tags). Removing what is not there succeeds: kubelet retries.
    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(req.into_inner().image, "RemoveImage")?;
        let rt = self.rt.clone();
        self.blocking(move |store| {
            let Some(image) = store.get(&name).map_err(store_status)? else {
                return Ok(());
            };
            // Its layers are the lower layers of these containers' root filesystems.
            let users = rt.containers_using_image(&image.id.to_string());
            if !users.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "image {name} is in use by container(s) {}",
                    users.join(", ")
                )));
            }
            match store.remove(&image.id.to_string()) {
                // NotFound: removed by someone else since the lookup.
                Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
                Err(e) => Err(store_status(e)),
            }
        })
        .await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    /// The store's own usage (blobs, snapshots, records), identified by the store's root
    /// directory, which kubelet resolves to its filesystem for capacity.
    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let mountpoint = self.images.root().display().to_string();
        let usage = self
            .blocking(|store| store.fs_usage().map_err(store_status))
            .await?;
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp: vaina_runtime::sandbox::now_nanos(),
                fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
                used_bytes: Some(cri::UInt64Value {
                    value: usage.used_bytes,
                }),
                inodes_used: Some(cri::UInt64Value {
                    value: usage.inodes_used,
                }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_as_the_cri_reports_them() {
        let uid = |v| Some(cri::Int64Value { value: v });
        assert_eq!(cri_user(None), (None, String::new()));
        assert_eq!(cri_user(Some("")), (None, String::new()));
        assert_eq!(cri_user(Some("1000")), (uid(1000), String::new()));
        assert_eq!(cri_user(Some("0:0")), (uid(0), String::new()));
        assert_eq!(cri_user(Some("app")), (None, "app".to_string()));
        assert_eq!(cri_user(Some("app:staff")), (None, "app".to_string()));
    }

    #[test]
    fn store_errors_get_the_cri_codes() {
        let code = |e| store_status(e).code();
        assert_eq!(
            code(StoreError::NotFound("x".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(StoreError::Ambiguous {
                prefix: "ab".into(),
                count: 2
            }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(code(StoreError::Damaged("x".into())), tonic::Code::Internal);
        assert!(image_name(None, "PullImage").is_err());
        let empty = Some(cri::ImageSpec::default());
        assert_eq!(
            image_name(empty, "PullImage").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
