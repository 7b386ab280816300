//! vaina's local image store (issue 3): what a node needs to run containers
//! from images it was given, without a registry.
//!
//! - [`reference`]: image references parsed and normalised like Docker's
//!   (`busybox` → `docker.io/library/busybox:latest`).
//! - [`digest`]: sha256 content digests, and readers/writers that hash and
//!   verify content while it streams.
//! - [`store`]: the [`ImageStore`]: content-addressed blobs, one overlay
//!   snapshot per layer shared between images, one record per image (id =
//!   config digest); import, list, get, tag, remove, gc.
//! - [`source`]: what import reads: OCI image layouts (directory or tar)
//!   and docker-archive tarballs.
//! - [`unpack`]: applying a layer tar to a snapshot, safe against hostile
//!   layers, with whiteouts in overlayfs form.
//! - [`testimage`]: small busybox images for tests and the demo.
//! - [`pull`]: [`ImageStore::pull`], images from registries (issue 5),
//!   through the hosts [`registry::hosts`] configures, with the
//!   credentials of [`registry::auth`].
//!
//! Importing and running, in outline:
//!
//! ```no_run
//! # fn main() -> Result<(), vaina_image::StoreError> {
//! use vaina_image::ImageStore;
//! let store = ImageStore::open("/var/lib/vaina/images")?;
//! store.import("busybox.tar".as_ref())?;
//! let image = store.get("busybox")?.expect("just imported");
//! let config = store.config(&image)?; // Entrypoint, Cmd, Env, User, WorkingDir
//! let lower = store.lowerdirs(&image)?; // overlay lowerdir=, topmost first
//! # Ok(()) }
//! ```
//!
//! Pulling, with a bar per layer (the CRI passes its `AuthConfig`):
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use vaina_image::{AuthConfig, ImageStore, LayerProgress, RegistryHosts};
//! let store = ImageStore::open("/var/lib/vaina/images")?;
//! let hosts = RegistryHosts::default(); // /etc/vaina/certs.d/<registry>/hosts.toml
//! let auth = AuthConfig { username: "me".into(), password: "secret".into(), ..Default::default() };
//! let progress = |p: &LayerProgress| println!("{} {:?} {}/{}", p.digest.short(), p.status, p.done, p.total);
//! let image = store.pull(&hosts, "registry.k8s.io/pause:3.9", Some(&auth), &progress).await?;
//! println!("{} {:?}", image.id, image.repo_digests);
//! # Ok(()) }
//! ```

pub mod digest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod source;
mod staging;
pub mod store;
pub mod testimage;
pub mod unpack;

pub use digest::{Digest, DigestError, DigestReader, DigestWriter, Hashed, VerifyError};
pub use pull::{LayerProgress, LayerStatus, PullError, PullProgress};
pub use reference::{DEFAULT_REGISTRY, DEFAULT_TAG, Reference, ReferenceError};
pub use registry::auth::{AuthConfig, AuthError};
pub use registry::hosts::{DEFAULT_HOSTS_DIR, Endpoint, HostsError, RegistryHosts};
pub use store::{FsUsage, GcStats, Image, ImageStore, Layer, Removed, StoreError, chain_ids};
pub use unpack::{UnpackError, unpack_layer};
