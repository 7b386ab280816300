//! PullImage: an image from a registry into the store, ending exactly as
//! if it had been imported (same record, blobs and snapshots; layers it
//! shares with stored images are neither downloaded nor unpacked again).
//!
//! 1. Resolve: the tag (or digest) to a manifest, from the hosts that may
//!    resolve, in order ([`crate::registry::hosts`]). An index (OCI or
//!    Docker manifest list) yields the linux/[`host_arch`](crate::source::host_arch)
//!    manifest, fetched by digest.
//! 2. Download, without the store lock: each blob the store lacks is
//!    streamed to `ingest/<hex>.partial`, its digest and size checked, and
//!    renamed to `ingest/<hex>`; a partial file is never used. A blob that
//!    another pull (here or in another process) is downloading is waited
//!    for, not fetched twice (see `staging.rs`). Layers download three
//!    at a time.
//! 3. Commit, under the store lock: the blobs move into `blobs/`, layers
//!    are unpacked as an import unpacks them (diff ids checked), and the
//!    record gets the name and `name@<digest it resolved to>`. If a gc took
//!    a downloaded blob before the commit, it is downloaded again.
//!
//! A pull that fails leaves no record; its verified downloads stay in
//! `ingest/` for a retry, and a killed pull's partial file is overwritten
//! by the next one; [`ImageStore::gc`] removes both once no pull holds them.

use std::fs::File;
use std::io::{self, Seek};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{StreamExt, TryStreamExt};
use nix::fcntl::{Flock, FlockArg};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use crate::digest::{Digest, DigestWriter, Hashed, VerifyError};
use crate::reference::{Reference, ReferenceError};
use crate::registry::auth::{AuthConfig, AuthError, Credentials};
use crate::registry::hosts::{HostsError, RegistryHosts};
use crate::registry::{Remote, RemoteError};
use crate::source::{
    self, LAYER_MEDIA_TYPES, MAX_JSON, MT_DOCKER_CONFIG, MT_DOCKER_LIST, MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::staging::{self, Locked};
use crate::store::{Image, ImageStore, StoreError};

/// Layers downloaded at once by one pull.
const PARALLEL_LAYERS: usize = 3;
/// Commits retried when a gc removed a downloaded blob in between.
const COMMIT_ATTEMPTS: usize = 3;
/// Progress is reported at most once per this many bytes of a layer.
const PROGRESS_STEP: u64 = 256 << 10;

/// Where a layer of a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStatus {
    /// Another pull is downloading it; this one waits for it.
    Waiting,
    /// `done` of `total` bytes have arrived.
    Downloading,
    /// Downloaded and verified.
    Downloaded,
    /// Already stored (or downloaded by another pull): not downloaded.
    Present,
}

/// One step of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    /// The layer blob, as in the manifest.
    pub digest: Digest,
    /// Its size in bytes.
    pub total: u64,
    /// Bytes downloaded so far (`total` once `Downloaded` or `Present`).
    pub done: u64,
    pub status: LayerStatus,
}

/// Told how each layer of a pull goes, e.g. to draw a bar per layer.
/// Called from the pull's task; keep it quick.
pub trait PullProgress: Send + Sync {
    fn layer(&self, progress: &LayerProgress);
}

/// No progress wanted.
impl PullProgress for () {
    fn layer(&self, _: &LayerProgress) {}
}

impl<F: Fn(&LayerProgress) + Send + Sync> PullProgress for F {
    fn layer(&self, progress: &LayerProgress) {
        self(progress)
    }
}

/// Why a pull failed. No variant carries credentials.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A `hosts.toml`, or a CA file it names, cannot be used.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The registry has no such repository, tag or digest.
    #[error("image {reference} not found at {endpoint}")]
    NotFound { reference: String, endpoint: String },
    /// The registry refused the credentials (or their absence).
    #[error("not authorized to pull {reference} from {endpoint}: {reason}")]
    Unauthorized {
        reference: String,
        endpoint: String,
        reason: String,
    },
    /// Content that does not match its digest: nothing of it is kept.
    #[error("{reference}: {digest} from {endpoint} is corrupt: {reason}")]
    Corrupt {
        reference: String,
        endpoint: String,
        digest: Digest,
        reason: VerifyError,
    },
    /// A manifest or index vaina cannot run (another platform, an
    /// artifact, Docker schema 1, …).
    #[error("{reference}: {reason}")]
    Unsupported { reference: String, reason: String },
    /// No configured host may do what the pull needs.
    #[error("{reference}: no host configured for {registry} may {capability} (tried none)")]
    NoHost {
        reference: String,
        registry: String,
        capability: &'static str,
    },
    /// The registry could not be reached or answered wrongly.
    #[error("failed to pull {reference} from {endpoint}: {reason}")]
    Registry {
        reference: String,
        endpoint: String,
        reason: String,
    },
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

impl ImageStore {
    /// Pulls `reference` (`busybox`, `registry.k8s.io/pause:3.9`,
    /// `name@sha256:…`) through the hosts `hosts` configures for its
    /// registry, offering `auth`, and returns the stored image. Needs a
    /// tokio runtime (blocking work goes to `spawn_blocking`).
    pub async fn pull(
        &self,
        hosts: &RegistryHosts,
        reference: &str,
        auth: Option<&AuthConfig>,
        progress: &dyn PullProgress,
    ) -> Result<Image, PullError> {
        let name = Reference::parse(reference)?;
        let credentials = match auth {
            Some(a) => a.credentials()?,
            None => Credentials::Anonymous,
        };
        let remotes = hosts
            .endpoints(name.registry())?
            .into_iter()
            .map(|ep| Remote::new(ep, &credentials))
            .collect::<Result<Vec<_>, _>>()?;
        Pull {
            store: self,
            name,
            remotes,
            progress,
        }
        .run()
        .await
    }
}

struct Pull<'a> {
    store: &'a ImageStore,
    name: Reference,
    remotes: Vec<Remote>,
    progress: &'a dyn PullProgress,
}

/// A blob to stage, and whether it is a layer (whose progress is told).
#[derive(Clone)]
struct Blob {
    digest: Digest,
    size: u64,
    layer: bool,
}

enum ManifestKind {
    Index,
    Manifest,
}

impl Pull<'_> {
    async fn run(&self) -> Result<Image, PullError> {
        let (resolved, top) = match self.name.digest() {
            Some(d) => (d.clone(), self.manifest(d, true).await?),
            None => self.resolve_tag().await?,
        };
        let (manifest_digest, bytes) = match self.kind(&top)? {
            ManifestKind::Manifest => (resolved.clone(), top),
            ManifestKind::Index => {
                let desc = self.select(&resolved, &top)?;
                let digest = self.digest_of(&desc)?;
                let bytes = self.manifest(&digest, false).await?;
                if let ManifestKind::Index = self.kind(&bytes)? {
                    return Err(self.unsupported(format!("{digest} is an index inside an index")));
                }
                (digest, bytes)
            }
        };
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
            self.unsupported(format!("manifest {manifest_digest} is not valid: {e}"))
        })?;
        let mut blobs = vec![Blob {
            digest: manifest_digest.clone(),
            size: bytes.len() as u64,
            layer: false,
        }];
        blobs.extend(self.check_blobs(&manifest)?);
        let desc = Descriptor::new(
            MediaType::ImageManifest,
            bytes.len() as u64,
            manifest_digest
                .to_string()
                .parse::<oci_spec::image::Digest>()
                .expect("a sha256 digest is an OCI digest"),
        );
        let all: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();

        for _ in 0..COMMIT_ATTEMPTS {
            let mut held = Vec::new();
            held.extend(self.stage(&blobs[0], Some(&bytes)).await?);
            held.extend(self.stage(&blobs[1], None).await?);
            // Owned blobs: a closure over borrowed ones makes the future !Send
            // (rust-lang/rust#102211).
            let layers: Vec<Option<Flock<File>>> = futures::stream::iter(blobs[2..].to_vec())
                .map(|b| async move { self.stage(&b, None).await })
                .buffer_unordered(PARALLEL_LAYERS)
                .try_collect()
                .await?;
            held.extend(layers.into_iter().flatten());

            let (store, desc, all, name, resolved) = (
                self.store.clone(),
                desc.clone(),
                all.clone(),
                self.name.clone(),
                resolved.clone(),
            );
            let committed = tokio::task::spawn_blocking(move || {
                let r = store.commit_pull(&desc, &all, &name, resolved);
                // The downloads are safe from gc until committed.
                drop(held);
                r
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            match committed {
                Ok(image) => return Ok(image),
                Err(missing) => {
                    tracing::info!(reference = %self.name, blob = %missing, "blob removed before commit; downloading again");
                }
            }
        }
        Err(PullError::Store(StoreError::Damaged(format!(
            "blobs of {} kept vanishing before the pull could commit them",
            self.name
        ))))
    }

    fn unsupported(&self, reason: String) -> PullError {
        PullError::Unsupported {
            reference: self.name.to_string(),
            reason,
        }
    }

    fn digest_of(&self, desc: &Descriptor) -> Result<Digest, PullError> {
        Digest::parse(desc.digest().as_ref())
            .map_err(|e| self.unsupported(format!("descriptor: {e}")))
    }

    /// Whether `bytes` is an index or an image manifest.
    fn kind(&self, bytes: &[u8]) -> Result<ManifestKind, PullError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde::de::IgnoredAny>,
            layers: Option<serde::de::IgnoredAny>,
        }
        let p: Probe = serde_json::from_slice(bytes)
            .map_err(|e| self.unsupported(format!("the manifest is not valid JSON: {e}")))?;
        if p.schema_version == Some(1) {
            return Err(self.unsupported(
                "Docker schema 1 manifests are not supported (push the image again with a current client)".into(),
            ));
        }
        match p.media_type.as_deref() {
            Some(MT_OCI_INDEX | MT_DOCKER_LIST) => Ok(ManifestKind::Index),
            Some(MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) => Ok(ManifestKind::Manifest),
            None if p.manifests.is_some() => Ok(ManifestKind::Index),
            None if p.layers.is_some() => Ok(ManifestKind::Manifest),
            other => Err(self.unsupported(format!(
                "unsupported manifest media type {:?}",
                other.unwrap_or("(none)")
            ))),
        }
    }

    /// The manifest for this machine in index `index`.
    fn select(&self, index_digest: &Digest, index: &[u8]) -> Result<Descriptor, PullError> {
        let index: ImageIndex = serde_json::from_slice(index)
            .map_err(|e| self.unsupported(format!("index {index_digest} is not valid: {e}")))?;
        source::select_platform(&index).map_err(|available| {
            self.unsupported(format!(
                "index {index_digest} has no linux/{} image (it has: {})",
                source::host_arch(),
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                }
            ))
        })
    }

    /// The config and layers of `manifest`, refused early (before any
    /// download) if vaina could not run them. Layers repeated in the
    /// manifest are staged once.
    fn check_blobs(&self, manifest: &ImageManifest) -> Result<Vec<Blob>, PullError> {
        let config = manifest.config();
        let config_type = config.media_type().to_string();
        if config_type != MT_OCI_CONFIG && config_type != MT_DOCKER_CONFIG {
            return Err(self.unsupported(format!(
                "config media type {config_type:?} is not an image config (an artifact?)"
            )));
        }
        if config.size() > MAX_JSON {
            return Err(self.unsupported(format!("config is larger than {MAX_JSON} bytes")));
        }
        let mut blobs = vec![Blob {
            digest: self.digest_of(config)?,
            size: config.size(),
            layer: false,
        }];
        for layer in manifest.layers() {
            let media_type = layer.media_type().to_string();
            if !LAYER_MEDIA_TYPES.contains(&media_type.as_str()) {
                return Err(self.unsupported(format!(
                    "layer {} has media type {media_type:?}, not a tar layer (uncompressed, gzip or zstd)",
                    layer.digest()
                )));
            }
            let digest = self.digest_of(layer)?;
            if !blobs.iter().any(|b| b.digest == digest) {
                blobs.push(Blob {
                    digest,
                    size: layer.size(),
                    layer: true,
                });
            }
        }
        Ok(blobs)
    }

    /// The tag's manifest from the first host that may resolve and has
    /// it, and its digest.
    async fn resolve_tag(&self) -> Result<(Digest, Vec<u8>), PullError> {
        let tag = self.name.tag().expect("a reference has a tag or a digest");
        let mut last = None;
        for remote in self
            .remotes
            .iter()
            .filter(|r| r.endpoint.capabilities.resolve)
        {
            match remote.manifest(&self.name, tag).await {
                Ok(bytes) => {
                    self.check_manifest_size(remote, &bytes)?;
                    return Ok((Digest::of(&bytes), bytes));
                }
                Err(e) => last = Some(self.failed(remote, e, None)),
            }
        }
        Err(last.unwrap_or_else(|| self.no_host("resolve tags")))
    }

    /// Manifest `digest`, verified, from the first host that may pull (or
    /// resolve, for the reference's own digest) and has it.
    async fn manifest(&self, digest: &Digest, may_resolve: bool) -> Result<Vec<u8>, PullError> {
        let mut last = None;
        let usable = self.remotes.iter().filter(|r| {
            let c = r.endpoint.capabilities;
            c.pull || (may_resolve && c.resolve)
        });
        for remote in usable {
            match remote.manifest(&self.name, &digest.to_string()).await {
                Ok(bytes) => {
                    self.check_manifest_size(remote, &bytes)?;
                    let actual = Digest::of(&bytes);
                    if actual != *digest {
                        return Err(self.corrupt(
                            remote,
                            digest,
                            VerifyError::Digest {
                                expected: digest.clone(),
                                actual,
                            },
                        ));
                    }
                    return Ok(bytes);
                }
                Err(e) => last = Some(self.failed(remote, e, Some(digest))),
            }
        }
        Err(last.unwrap_or_else(|| self.no_host("pull")))
    }

    fn check_manifest_size(&self, remote: &Remote, bytes: &[u8]) -> Result<(), PullError> {
        if bytes.len() as u64 > MAX_JSON {
            return Err(PullError::Registry {
                reference: self.name.to_string(),
                endpoint: remote.endpoint.to_string(),
                reason: format!("manifest is larger than {MAX_JSON} bytes"),
            });
        }
        Ok(())
    }

    fn no_host(&self, capability: &'static str) -> PullError {
        PullError::NoHost {
            reference: self.name.to_string(),
            registry: self.name.registry().to_owned(),
            capability,
        }
    }

    fn corrupt(&self, remote: &Remote, digest: &Digest, reason: VerifyError) -> PullError {
        PullError::Corrupt {
            reference: self.name.to_string(),
            endpoint: remote.endpoint.to_string(),
            digest: digest.clone(),
            reason,
        }
    }

    /// A request to `remote` failed: what it means. `digest` is what was
    /// asked for, to tell a corrupt answer.
    fn failed(&self, remote: &Remote, e: RemoteError, digest: Option<&Digest>) -> PullError {
        let reference = self.name.to_string();
        let endpoint = remote.endpoint.to_string();
        tracing::warn!(%reference, %endpoint, error = ?e, "registry request failed");
        let e = match e {
            RemoteError::Auth(reason) => {
                return PullError::Unauthorized {
                    reference,
                    endpoint,
                    reason,
                };
            }
            RemoteError::Client(e) => e,
        };
        use OciDistributionError as E;
        let not_found = || PullError::NotFound {
            reference: reference.clone(),
            endpoint: endpoint.clone(),
        };
        let unauthorized = |reason: String| PullError::Unauthorized {
            reference: reference.clone(),
            endpoint: endpoint.clone(),
            reason,
        };
        match &e {
            E::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    return not_found();
                }
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    return unauthorized(envelope.to_string());
                }
            }
            E::ServerError { code: 404, .. } => return not_found(),
            E::ServerError {
                code: code @ (401 | 403),
                ..
            } => return unauthorized(format!("HTTP {code}")),
            E::UnauthorizedError { .. } => {
                return unauthorized(if remote.anonymous() {
                    "the registry requires credentials".into()
                } else {
                    "the registry refused the credentials".into()
                });
            }
            E::AuthenticationFailure(_) => {
                return unauthorized("the token service refused the credentials".into());
            }
            E::DigestError(oci_client::errors::DigestError::VerificationError {
                expected,
                actual,
            }) => {
                if let (Ok(expected), Ok(actual)) = (Digest::parse(expected), Digest::parse(actual))
                {
                    let asked = digest.cloned().unwrap_or_else(|| expected.clone());
                    return self.corrupt(remote, &asked, VerifyError::Digest { expected, actual });
                }
            }
            _ => {}
        }
        PullError::Registry {
            reference,
            endpoint,
            reason: error_chain(&e),
        }
    }

    fn report(&self, blob: &Blob, done: u64, status: LayerStatus) {
        if blob.layer {
            self.progress.layer(&LayerProgress {
                digest: blob.digest.clone(),
                total: blob.size,
                done,
                status,
            });
        }
    }

    /// Makes sure `blob` is stored or staged in `ingest/`, writing
    /// `content` or downloading it; returns the shared lock that keeps a
    /// staged blob there until the commit.
    async fn stage(
        &self,
        blob: &Blob,
        content: Option<&[u8]>,
    ) -> Result<Option<Flock<File>>, PullError> {
        let store = self.store;
        let ingested = store.ingest_path(&blob.digest);
        let partial = store.partial_path(&blob.digest);
        let io = |action, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| PullError::Io {
                action,
                path,
                source,
            }
        };
        loop {
            if store.blob_path(&blob.digest).exists() {
                self.report(blob, blob.size, LayerStatus::Present);
                return Ok(None);
            }
            match staging::lock(&ingested, FlockArg::LockSharedNonblock, false)
                .map_err(io("lock", &ingested))?
            {
                Locked::Held(lock) => {
                    self.report(blob, blob.size, LayerStatus::Present);
                    return Ok(Some(lock));
                }
                // Just renamed into place, or being removed by gc: look again.
                Locked::Busy => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                Locked::Missing => {}
            }
            let lock = match staging::lock(&partial, FlockArg::LockExclusiveNonblock, true)
                .map_err(io("lock", &partial))?
            {
                Locked::Held(lock) => lock,
                _ => {
                    // Another pull is downloading it. A shared lock is had
                    // once it is done (it then shares the renamed file) or
                    // gave up; then look again.
                    self.report(blob, 0, LayerStatus::Waiting);
                    let path = partial.clone();
                    tokio::task::spawn_blocking(move || {
                        staging::lock(&path, FlockArg::LockShared, false).map(drop)
                    })
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                    .map_err(io("lock", &partial))?;
                    continue;
                }
            };
            // Whoever held it before may have finished it.
            if store.blob_path(&blob.digest).exists() || ingested.exists() {
                std::fs::remove_file(&partial).map_err(io("remove", &partial))?;
                continue;
            }
            let written = match content {
                Some(bytes) => write_all(&lock, bytes).map_err(io("write", &partial)),
                None => self.download(blob, &lock).await,
            };
            let verified = written.and_then(|hashed| {
                lock.sync_all().map_err(io("sync", &partial))?;
                Ok(hashed)
            });
            if let Err(e) = verified {
                // Never leave what failed where it could pass for content.
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            std::fs::rename(&partial, &ingested).map_err(io("rename", &partial))?;
            lock.relock(FlockArg::LockShared)
                .map_err(|e| io("lock", &ingested)(e.into()))?;
            self.report(blob, blob.size, LayerStatus::Downloaded);
            return Ok(Some(lock));
        }
    }

    /// Downloads `blob` into the locked partial file from the first host
    /// that may pull and serves it, checking size and digest.
    async fn download(&self, blob: &Blob, file: &File) -> Result<Hashed, PullError> {
        let partial = self.store.partial_path(&blob.digest);
        let io_err = |action| {
            let path = partial.clone();
            move |source| PullError::Io {
                action,
                path,
                source,
            }
        };
        let mut last = None;
        for remote in self.remotes.iter().filter(|r| r.endpoint.capabilities.pull) {
            let mut out = file.try_clone().map_err(io_err("open"))?;
            out.set_len(0).map_err(io_err("truncate"))?;
            out.rewind().map_err(io_err("seek"))?;
            let mut writer = Writer {
                inner: BufWriter::with_capacity(256 << 10, tokio::fs::File::from_std(out)),
                hasher: DigestWriter::new(io::sink()),
                blob,
                written: 0,
                reported: 0,
                pull: self,
            };
            let result = remote
                .blob(&self.name, &blob.digest.to_string(), &mut writer)
                .await;
            let flushed = writer.inner.flush().await;
            let hashed = writer.hasher.finish().1;
            let mismatch = if hashed.size != blob.size {
                Some(VerifyError::Size {
                    expected: blob.size,
                    actual: hashed.size,
                })
            } else if hashed.digest != blob.digest {
                Some(VerifyError::Digest {
                    expected: blob.digest.clone(),
                    actual: hashed.digest.clone(),
                })
            } else {
                None
            };
            match result {
                Ok(()) => {
                    flushed.map_err(io_err("write"))?;
                    return match mismatch {
                        Some(reason) => Err(self.corrupt(remote, &blob.digest, reason)),
                        None => Ok(hashed),
                    };
                }
                Err(RemoteError::Client(OciDistributionError::IoError(e)))
                    if VerifyError::from_io(&e).is_some() =>
                {
                    let reason = VerifyError::from_io(&e).expect("checked").clone();
                    return Err(self.corrupt(remote, &blob.digest, reason));
                }
                Err(e) => match self.failed(remote, e, Some(&blob.digest)) {
                    // A corrupt copy is refused, not tried elsewhere: it
                    // is a host to look into.
                    PullError::Corrupt { endpoint, .. } => {
                        let reason = mismatch.unwrap_or(VerifyError::Digest {
                            expected: blob.digest.clone(),
                            actual: hashed.digest,
                        });
                        return Err(PullError::Corrupt {
                            reference: self.name.to_string(),
                            endpoint,
                            digest: blob.digest.clone(),
                            reason,
                        });
                    }
                    other => last = Some(other),
                },
            }
        }
        Err(last.unwrap_or_else(|| self.no_host("pull")))
    }
}

fn write_all(mut file: &File, bytes: &[u8]) -> io::Result<Hashed> {
    use std::io::Write;
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(bytes)?;
    Ok(Hashed {
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
    })
}

/// The partial file as the download's sink: hashes what it writes, refuses
/// more than the expected size, and tells progress.
struct Writer<'a> {
    inner: BufWriter<tokio::fs::File>,
    hasher: DigestWriter<io::Sink>,
    blob: &'a Blob,
    written: u64,
    reported: u64,
    pull: &'a Pull<'a>,
}

impl AsyncWrite for Writer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = this.written;
        if done + buf.len() as u64 > this.blob.size {
            return Poll::Ready(Err(VerifyError::TooLong {
                expected: this.blob.size,
            }
            .into()));
        }
        let n = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        io::Write::write_all(&mut this.hasher, &buf[..n]).expect("a sink takes anything");
        let done = done + n as u64;
        this.written = done;
        if done - this.reported >= PROGRESS_STEP && done < this.blob.size {
            this.reported = done;
            this.pull.report(this.blob, done, LayerStatus::Downloading);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
