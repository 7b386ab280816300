//! ImageService over the node's local image store (`vaina_image::ImageStore`).
//!
//! Store calls block (file I/O, and an flock for changes), so each RPC runs its store work
//! on tokio's blocking pool. PullImage answers from the store when the image is there, and
//! otherwise pulls it from its registry through the hosts the daemon's registry config dir
//! (`hosts.toml`, containerd's format) configures. While a pull runs, its per-layer
//! progress is kept in memory under the normalised reference, and `ImageStatus` with
//! `verbose` reports it as the `pullProgress` info entry, so a client (`vaina pull`) can
//! draw it through the plain CRI socket.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};
use vaina_image::{
    AuthConfig, Image, ImageStore, LayerProgress, LayerStatus, PullError, Reference, RegistryHosts,
    StoreError,
};
use vaina_runtime::Runtime;

/// The `info` key of a verbose ImageStatus that carries a running pull's progress.
pub const PULL_PROGRESS_KEY: &str = "pullProgress";

pub struct Service {
    images: Arc<ImageStore>,
    rt: Arc<Runtime>,
    /// The registry hosts configuration directory (`Config::registry_config_dir`).
    hosts_dir: PathBuf,
    pulls: Arc<Pulls>,
}

/// The pulls running now, by normalised reference.
#[derive(Default)]
struct Pulls(Mutex<HashMap<String, Running>>);

/// One reference's pull(s): concurrent PullImage calls for the same reference share one
/// entry (the store downloads each blob once for both).
#[derive(Default)]
struct Running {
    calls: usize,
    /// Layers in the order they were first reported.
    layers: Vec<LayerProgress>,
}

impl Pulls {
    fn begin(self: &Arc<Self>, key: String) -> PullGuard {
        self.0.lock().unwrap().entry(key.clone()).or_default().calls += 1;
        PullGuard {
            pulls: self.clone(),
            key,
        }
    }

    fn report(&self, key: &str, p: &LayerProgress) {
        let mut map = self.0.lock().unwrap();
        let Some(running) = map.get_mut(key) else {
            return;
        };
        match running.layers.iter_mut().find(|l| l.digest == p.digest) {
            Some(l) => *l = p.clone(),
            None => running.layers.push(p.clone()),
        }
    }

    /// The progress of the pull of `key` as JSON, if one runs.
    fn json(&self, key: &str) -> Option<String> {
        let map = self.0.lock().unwrap();
        let running = map.get(key)?;
        Some(progress_json(&running.layers).to_string())
    }
}

/// Ends a PullImage call's share of its entry, also when the call is dropped (the client
/// went away): the last one removes the entry.
struct PullGuard {
    pulls: Arc<Pulls>,
    key: String,
}

impl Drop for PullGuard {
    fn drop(&mut self) {
        let mut map = self.pulls.0.lock().unwrap();
        if let Some(r) = map.get_mut(&self.key) {
            r.calls -= 1;
            if r.calls == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn status_name(s: LayerStatus) -> &'static str {
    match s {
        LayerStatus::Waiting => "waiting",
        LayerStatus::Downloading => "downloading",
        LayerStatus::Downloaded => "downloaded",
        LayerStatus::Present => "present",
    }
}

/// `[{"digest": "sha256:…", "total": N, "done": N, "status": "downloading"}, …]`.
fn progress_json(layers: &[LayerProgress]) -> serde_json::Value {
    layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "digest": l.digest.to_string(),
                "total": l.total,
                "done": l.done,
                "status": status_name(l.status),
            })
        })
        .collect()
}

impl Service {
    pub fn new(rt: Arc<Runtime>) -> Service {
        Service {
            images: rt.images(),
            hosts_dir: rt.config().registry_config_dir.clone(),
            rt,
            pulls: Arc::default(),
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

/// Pull errors → gRPC codes. No message carries credentials (no `PullError` does).
fn pull_status(e: PullError) -> Status {
    let msg = chain(&e);
    match e {
        PullError::Reference(_) | PullError::Hosts(_) | PullError::Auth(_) => {
            Status::invalid_argument(msg)
        }
        PullError::NotFound { .. } => Status::not_found(msg),
        PullError::Unauthorized { .. } => Status::unauthenticated(msg),
        PullError::Corrupt { .. } => Status::data_loss(msg),
        PullError::Unsupported { .. } => Status::invalid_argument(msg),
        PullError::NoHost { .. } => Status::failed_precondition(msg),
        PullError::Registry { .. } => Status::unavailable(msg),
        PullError::Io { .. } => Status::internal(msg),
        PullError::Store(e) => store_status(e),
    }
}

/// The CRI's credentials as vaina_image takes them; none when every field is empty.
fn auth_config(auth: Option<cri::AuthConfig>) -> Option<AuthConfig> {
    let a = auth?;
    let auth = AuthConfig {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    };
    (auth != AuthConfig::default()).then_some(auth)
}

/// The key a pull's progress is kept under: the reference as the store names it.
fn progress_key(name: &str) -> Option<String> {
    Reference::parse(name).ok().map(|r| r.to_string())
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
        let progress = if verbose {
            progress_key(&name).and_then(|k| self.pulls.json(&k))
        } else {
            None
        };
        let resp = self
            .blocking(move |store| {
                let Some(image) = store.get(&name).map_err(store_status)? else {
                    // Being pulled: no image yet, but how far the pull is.
                    let info = progress
                        .map(|p| HashMap::from([(PULL_PROGRESS_KEY.to_string(), p)]))
                        .unwrap_or_default();
                    return Ok(cri::ImageStatusResponse { image: None, info });
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

    /// The stored image if there is one (as containerd with a present image and kubelet's
    /// IfNotPresent); otherwise a pull from the registry with the request's credentials.
    /// The sandbox config is unused (no per-runtime-handler snapshotters here).
    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image, "PullImage")?;
        let key = Reference::parse(&name)
            .map_err(|e| Status::invalid_argument(chain(&e)))?
            .to_string();
        let lookup = name.clone();
        let present = self
            .blocking(move |store| store.get(&lookup).map_err(store_status))
            .await?;
        if let Some(image) = present {
            return Ok(Response::new(cri::PullImageResponse {
                image_ref: image.id.to_string(),
            }));
        }
        let auth = auth_config(req.auth);
        let hosts = RegistryHosts::new(&self.hosts_dir);
        let _guard = self.pulls.begin(key.clone());
        let pulls = self.pulls.clone();
        let progress = move |p: &LayerProgress| pulls.report(&key, p);
        let started = std::time::Instant::now();
        let image = self
            .images
            .pull(&hosts, &name, auth.as_ref(), &progress)
            .await
            .map_err(|e| {
                let status = pull_status(e);
                tracing::warn!(image = %name, code = ?status.code(), err = status.message(), "pull failed");
                status
            })?;
        tracing::info!(image = %name, id = %image.id, elapsed = ?started.elapsed(), "pulled");
        Ok(Response::new(cri::PullImageResponse {
            image_ref: image.id.to_string(),
        }))
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
            // By id, the image goes with all its names, and the store's gc (run by `remove`
            // under the same lock) takes the blobs and snapshots no other image uses, and
            // downloads no running pull holds.
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

    #[test]
    fn pull_errors_get_the_cri_codes() {
        let code = |e| pull_status(e).code();
        let reference = || "registry.k8s.io/pause:3.9".to_string();
        let endpoint = || "https://registry.k8s.io".to_string();
        assert_eq!(
            code(Reference::parse("Not/Valid").unwrap_err().into()),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(PullError::NotFound {
                reference: reference(),
                endpoint: endpoint()
            }),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(PullError::Unauthorized {
                reference: reference(),
                endpoint: endpoint(),
                reason: "401".into()
            }),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(PullError::Registry {
                reference: reference(),
                endpoint: endpoint(),
                reason: "connection refused".into()
            }),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code(PullError::NoHost {
                reference: reference(),
                registry: "registry.k8s.io".into(),
                capability: "resolve"
            }),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(PullError::Store(StoreError::NotFound("x".into()))),
            tonic::Code::NotFound
        );
    }

    #[test]
    fn cri_credentials_map_field_by_field() {
        assert_eq!(auth_config(None), None);
        assert_eq!(auth_config(Some(cri::AuthConfig::default())), None);
        let a = auth_config(Some(cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            auth: "dTpw".into(),
            server_address: "r.example".into(),
            identity_token: "i".into(),
            registry_token: "t".into(),
        }))
        .unwrap();
        assert_eq!(
            (
                &*a.username,
                &*a.password,
                &*a.auth,
                &*a.server_address,
                &*a.identity_token,
                &*a.registry_token
            ),
            ("u", "p", "dTpw", "r.example", "i", "t")
        );
    }

    #[test]
    fn progress_is_kept_while_a_pull_runs_and_dropped_after() {
        let pulls = Arc::new(Pulls::default());
        let key = progress_key("busybox").unwrap();
        assert_eq!(key, "docker.io/library/busybox:latest");
        assert_eq!(pulls.json(&key), None);
        let layer = |n: char, done, status| LayerProgress {
            digest: vaina_image::Digest::parse(&format!("sha256:{}", n.to_string().repeat(64)))
                .unwrap(),
            total: 100,
            done,
            status,
        };
        let first = pulls.begin(key.clone());
        let second = pulls.begin(key.clone());
        pulls.report(&key, &layer('a', 10, LayerStatus::Downloading));
        pulls.report(&key, &layer('b', 100, LayerStatus::Present));
        pulls.report(&key, &layer('a', 50, LayerStatus::Downloading));
        // Progress for no running pull is ignored.
        pulls.report("other", &layer('c', 1, LayerStatus::Downloading));
        assert_eq!(pulls.json("other"), None);
        let json: serde_json::Value = serde_json::from_str(&pulls.json(&key).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"digest": format!("sha256:{}", "a".repeat(64)), "total": 100, "done": 50, "status": "downloading"},
                {"digest": format!("sha256:{}", "b".repeat(64)), "total": 100, "done": 100, "status": "present"},
            ])
        );
        drop(first);
        assert!(pulls.json(&key).is_some(), "the other call still pulls");
        drop(second);
        assert_eq!(pulls.json(&key), None);
    }
}
