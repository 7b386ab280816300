//! The local image store: content-addressed blobs, one unpacked snapshot
//! per layer shared between images, and one record per image.
//!
//! ```text
//! <root>/lock                          flock(LOCK_EX) while changing the store
//! <root>/blobs/sha256/<hex>            manifests, configs, layers as received
//! <root>/snapshots/<chain id hex>/fs   one unpacked layer (an overlay lowerdir)
//! <root>/images/<image id hex>.json    an [`Image`] record
//! <root>/tmp/                          blobs and snapshots being made
//! <root>/ingest/<hex>.partial          a blob being downloaded (flock held)
//! <root>/ingest/<hex>                  a downloaded, verified blob awaiting
//!                                      its image's commit (flock shared)
//! ```
//!
//! Nothing appears under its final name before it is complete and
//! verified: a blob is written to `tmp/`, checked against its digest (and
//! size) and renamed; a layer is unpacked into `tmp/`, its uncompressed
//! digest checked against the config's `diff_id`, flushed with `syncfs` and
//! renamed; records are written to `tmp/` and renamed. A snapshot is
//! removed by renaming it into `tmp/` first. So after a crash, every
//! blob, snapshot and record is whole; what was half-made is in `tmp/`,
//! emptied by [`ImageStore::open`] and [`ImageStore::gc`]. Blobs and snapshots that no record
//! references (an import that crashed before writing its record) are
//! removed by [`ImageStore::gc`], which [`ImageStore::remove`] runs.
//!
//! The image id is the config digest, as in Docker and containerd. A layer
//! snapshot is keyed by its chain id (the OCI image spec's
//! `ChainID(L₀…Lₙ)`), so images sharing a base share its snapshots, even
//! when their blobs are compressed differently. A snapshot that already
//! exists is reused without unpacking; a new blob for it is still checked
//! against its `diff_id`.
//!
//! A pull downloads into `ingest/` without the store lock, so pulls and
//! other changes do not wait on the network; only its commit (moving the
//! blobs into `blobs/`, unpacking, writing the record) takes the lock. See
//! [`crate::pull`].
//!
//! Every change (import, tag, remove, gc, a pull's commit) holds the store
//! lock for its whole duration, across processes; reads (list, get) take
//! no lock since records are replaced atomically. The lock is a blocking
//! `flock`: call from a thread that may block (`spawn_blocking`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestReader, DigestWriter, VerifyError};
use crate::reference::{Reference, ReferenceError};
use crate::source::{
    self, BlobSource, Candidate, Compression, Input, LAYER_MEDIA_TYPES, MAX_JSON, MT_DOCKER_CONFIG,
    MT_OCI_CONFIG, MT_OCI_MANIFEST,
};
use crate::unpack::{UnpackError, unpack_layer};

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The config digest.
    pub id: Digest,
    /// Normalised `registry/repository:tag` names; a tag names one image.
    pub repo_tags: Vec<Reference>,
    /// `registry/repository@<manifest digest>` for each repository the
    /// image was imported or tagged under.
    pub repo_digests: Vec<Reference>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<Layer>,
    /// Bytes of content: manifest, config and layer blobs (as containerd
    /// counts an image's size for the CRI).
    pub size: u64,
    /// The config's `created`, RFC 3339.
    pub created: Option<String>,
}

/// One layer of an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The blob as distributed (often compressed).
    pub digest: Digest,
    pub size: u64,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Names the snapshot: this layer applied on all those below it.
    pub chain_id: Digest,
}

impl Image {
    /// The chain ids of the layers, bottom first.
    pub fn chain_ids(&self) -> impl DoubleEndedIterator<Item = &Digest> + ExactSizeIterator {
        self.layers.iter().map(|l| &l.chain_id)
    }

    /// Every blob the image needs.
    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    fn has_names(&self) -> bool {
        !self.repo_tags.is_empty() || !self.repo_digests.is_empty()
    }

    /// Adds `name` (a tag, or a digest naming this image's manifest).
    fn add_name(&mut self, name: &Reference) {
        self.add_name_at(name, self.manifest_digest.clone());
    }

    /// Adds `name`'s tag, if it has one, and `name@repo_digest`: the digest
    /// the name resolves to in its repository, the manifest's or, for a
    /// multi-platform image, the index's (as containerd records it).
    fn add_name_at(&mut self, name: &Reference, repo_digest: Digest) {
        if let Some(tagged) = name.tagged()
            && !self.repo_tags.contains(&tagged)
        {
            self.repo_tags.push(tagged);
        }
        let by_digest = name.with_digest(repo_digest);
        if !self.repo_digests.contains(&by_digest) {
            self.repo_digests.push(by_digest);
        }
    }

    /// Removes tag `name`, and the repository's digest name when no tag of
    /// that repository is left.
    fn remove_tag(&mut self, name: &Reference) {
        self.repo_tags.retain(|t| t != name);
        if !self.repo_tags.iter().any(|t| t.name() == name.name()) {
            self.repo_digests.retain(|d| d.name() != name.name());
        }
    }
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// A name was removed; the image keeps its other names.
    Untagged(Image),
    /// The image had no name left, or was named by id: its record is gone,
    /// and its blobs and snapshots unless another image uses them.
    Deleted(Image),
}

/// Space used by the store, for the CRI's `ImageFsInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsUsage {
    /// Allocated bytes (`st_blocks` × 512), hardlinks counted once.
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    pub blobs: usize,
    pub snapshots: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image id prefix {prefix:?} is ambiguous: it matches {count} images")]
    Ambiguous { prefix: String, count: usize },
    #[error("invalid image input {}: {reason}", input.display())]
    Invalid { input: PathBuf, reason: String },
    #[error("{}: blob {blob} is corrupt: {reason}", input.display())]
    BlobMismatch {
        input: PathBuf,
        blob: String,
        reason: VerifyError,
    },
    #[error("{}: blob {blob} has media type {media_type:?}, expected {expected}", input.display())]
    UnsupportedMediaType {
        input: PathBuf,
        blob: String,
        media_type: String,
        expected: &'static str,
    },
    #[error("{}: index {index} has no {platform} image (it has: {})", input.display(), available.join(", "))]
    NoMatchingPlatform {
        input: PathBuf,
        index: String,
        platform: String,
        available: Vec<String>,
    },
    #[error(
        "layer {layer}: uncompressed content has digest {actual}, the image config says {expected}"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("failed to unpack layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("invalid JSON in {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot tag with {0}: a tag names a repository and a tag, not a digest")]
    TagWithDigest(Reference),
    #[error("store is damaged: {0}")]
    Damaged(String),
}

/// The local image store under one root directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A change to the store: holds the lock and remembers what it created,
/// so a failed import can take it back.
struct Txn {
    _lock: Flock<File>,
    new_blobs: Vec<Digest>,
    new_snapshots: Vec<Digest>,
}

/// A path in `tmp/` removed on drop unless kept.
struct Scratch {
    path: Option<PathBuf>,
}

impl Scratch {
    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            // Whatever stays is removed with tmp/ by the next open() or gc().
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = fs::remove_dir_all(p);
                }
                Ok(_) => {
                    let _ = fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn is_hex_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `ChainID(L₀) = DiffID(L₀)`, `ChainID(L₀…Lₙ) = sha256(ChainID(L₀…Lₙ₋₁) + " " + DiffID(Lₙ))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl ImageStore {
    /// Opens the store at `root`, creating it if needed, and removes what
    /// a crashed change left in `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, StoreError> {
        let store = ImageStore { root: root.into() };
        for dir in [
            store.root.clone(),
            store.root.join("blobs/sha256"),
            store.root.join("snapshots"),
            store.root.join("images"),
            store.root.join("tmp"),
            store.root.join("ingest"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
        }
        let _txn = store.begin()?;
        store.clean_tmp()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` is stored (it may not be).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Where a pull keeps blob `digest` between download and commit.
    pub(crate) fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(digest.hex())
    }

    /// Where a pull downloads blob `digest` to.
    pub(crate) fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}.partial", digest.hex()))
    }

    fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    fn scratch_path(&self, what: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seq = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{seq}-{nanos}", std::process::id()))
    }

    fn begin(&self) -> Result<Txn, StoreError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io {
            action: "lock",
            path,
            source: e.into(),
        })?;
        Ok(Txn {
            _lock: lock,
            new_blobs: Vec::new(),
            new_snapshots: Vec::new(),
        })
    }

    /// Imports the images in an OCI image layout (directory or tar) or a
    /// docker-archive tarball, possibly gzip- or zstd-compressed. All or
    /// nothing: on error, no record, blob or snapshot of this import stays
    /// (records are written last, each atomically).
    /// A name an existing image had moves to the imported one; the old image
    /// stays, perhaps without a name, as Docker leaves it.
    pub fn import(&self, path: &Path) -> Result<Vec<Image>, StoreError> {
        let mut txn = self.begin()?;
        let result = self.import_locked(&mut txn, path);
        if result.is_err() {
            self.discard_unreferenced(&txn);
        }
        result
    }

    fn import_locked(&self, txn: &mut Txn, path: &Path) -> Result<Vec<Image>, StoreError> {
        let input = Input::open(path, self.scratch_path("import"))?;
        let mut staged: Vec<(Image, Vec<Reference>)> = Vec::new();
        for candidate in input.candidates()? {
            let (image, names) = match candidate {
                Candidate::Oci { manifest, names } => (self.ingest(txn, &input, &manifest)?, names),
                Candidate::Docker {
                    config,
                    layers,
                    names,
                } => {
                    let manifest = self.ingest_docker(txn, &input, &config, &layers)?;
                    (self.ingest(txn, &input, &manifest)?, names)
                }
            };
            for name in &names {
                if let Some(d) = name.digest()
                    && *d != image.manifest_digest
                {
                    return Err(StoreError::Invalid {
                        input: path.to_owned(),
                        reason: format!(
                            "name {name} does not match the image's manifest digest {}",
                            image.manifest_digest
                        ),
                    });
                }
            }
            staged.push((image, names));
        }

        let staged = staged
            .into_iter()
            .map(|(image, names)| (image, names, None))
            .collect();
        self.record(txn, staged)
    }

    /// Records `staged` images (ingested, with their names and the digest
    /// those names resolve to, by default the recorded manifest's) and
    /// returns them as recorded.
    fn record(
        &self,
        txn: &mut Txn,
        staged: Vec<(Image, Vec<Reference>, Option<Digest>)>,
    ) -> Result<Vec<Image>, StoreError> {
        let mut records = self.load_all()?;
        let mut changed: Vec<Digest> = Vec::new();
        let mut imported: Vec<Digest> = Vec::new();
        for (image, names, repo_digest) in staged {
            let id = image.id.clone();
            // A known image keeps its record (and the manifest and blobs it
            // names; the ones just stored for it are discarded below) and
            // gains the names.
            records.entry(id.clone()).or_insert(image);
            let repo_digest = repo_digest.unwrap_or_else(|| records[&id].manifest_digest.clone());
            for name in &names {
                if let Some(tag) = name.tagged() {
                    for (other_id, other) in records.iter_mut() {
                        if *other_id != id && other.repo_tags.contains(&tag) {
                            other.remove_tag(&tag);
                            changed.push(other_id.clone());
                        }
                    }
                }
                records
                    .get_mut(&id)
                    .expect("inserted above")
                    .add_name_at(name, repo_digest.clone());
            }
            changed.push(id.clone());
            if !imported.contains(&id) {
                imported.push(id);
            }
        }
        changed.sort();
        changed.dedup();
        for id in &changed {
            self.write_record(&records[id])?;
        }
        self.discard_unreferenced(txn);
        Ok(imported.iter().map(|id| records[id].clone()).collect())
    }

    /// The commit of a pull: moves the blobs it downloaded from `ingest/`
    /// into `blobs/`, ingests the manifest `desc` as an import does, and
    /// records the image under `name`, which resolves to `repo_digest`.
    /// `blobs` are all the blobs the image needs; if one is neither stored
    /// nor ingested (a gc or a failed commit removed it since the download),
    /// nothing changes and it is returned, to be downloaded again.
    pub(crate) fn commit_pull(
        &self,
        desc: &Descriptor,
        blobs: &[Digest],
        name: &Reference,
        repo_digest: Digest,
    ) -> Result<Result<Image, Digest>, StoreError> {
        let mut txn = self.begin()?;
        if let Some(missing) = blobs
            .iter()
            .find(|d| !self.blob_path(d).exists() && !self.ingest_path(d).exists())
        {
            return Ok(Err(missing.clone()));
        }
        let result = self.commit_pull_locked(&mut txn, desc, blobs, name, repo_digest);
        if result.is_err() {
            self.discard_unreferenced(&txn);
        }
        result.map(Ok)
    }

    fn commit_pull_locked(
        &self,
        txn: &mut Txn,
        desc: &Descriptor,
        blobs: &[Digest],
        name: &Reference,
        repo_digest: Digest,
    ) -> Result<Image, StoreError> {
        for d in blobs {
            let dest = self.blob_path(d);
            if dest.exists() {
                continue;
            }
            let src = self.ingest_path(d);
            fs::rename(&src, &dest).map_err(io_err("rename into place", &dest))?;
            txn.new_blobs.push(d.clone());
        }
        self.sync_dir("blobs/sha256")?;
        let source = Stored(PathBuf::from(name.to_string()));
        let image = self.ingest(txn, &source, desc)?;
        let mut recorded =
            self.record(txn, vec![(image, vec![name.clone()], Some(repo_digest))])?;
        Ok(recorded.pop().expect("one image recorded"))
    }

    /// Stores the manifest `desc` and everything it references from
    /// `source`, unpacks its layers, and returns the image, not yet recorded.
    fn ingest(
        &self,
        txn: &mut Txn,
        source: &dyn BlobSource,
        desc: &Descriptor,
    ) -> Result<Image, StoreError> {
        let input = source.describe().to_owned();
        let manifest_digest = source::descriptor_digest(desc, &input)?;
        let manifest_bytes = self.fetch_json(txn, source, &manifest_digest, desc.size())?;
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| StoreError::Json {
                what: format!("manifest {manifest_digest}"),
                source: e,
            })?;
        if manifest.schema_version() != 2 {
            return Err(StoreError::Invalid {
                input,
                reason: format!(
                    "manifest {manifest_digest} has schemaVersion {}, expected 2",
                    manifest.schema_version()
                ),
            });
        }

        let config_desc = manifest.config();
        let config_digest = source::descriptor_digest(config_desc, &input)?;
        let config_type = config_desc.media_type().to_string();
        if config_type != MT_OCI_CONFIG && config_type != MT_DOCKER_CONFIG {
            return Err(StoreError::UnsupportedMediaType {
                input,
                blob: config_digest.to_string(),
                media_type: config_type,
                expected: "an image config (not an artifact)",
            });
        }
        let config_bytes = self.fetch_json(txn, source, &config_digest, config_desc.size())?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| StoreError::Json {
                what: format!("config {config_digest}"),
                source: e,
            })?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Invalid {
                input: input.clone(),
                reason: format!("config {config_digest}: {e}"),
            })?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::Invalid {
                input,
                reason: format!(
                    "manifest {manifest_digest} has {} layers but config {config_digest} has {} diff_ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }

        let chains = chain_ids(&diff_ids);
        let mut layers = Vec::with_capacity(diff_ids.len());
        for ((desc, diff_id), chain_id) in manifest.layers().iter().zip(diff_ids).zip(chains) {
            let digest = source::descriptor_digest(desc, &input)?;
            let media_type = desc.media_type().to_string();
            if !LAYER_MEDIA_TYPES.contains(&media_type.as_str()) {
                return Err(StoreError::UnsupportedMediaType {
                    input,
                    blob: digest.to_string(),
                    media_type,
                    expected: "a tar layer, uncompressed, gzip or zstd",
                });
            }
            self.ensure_blob(txn, source, &digest, desc.size())?;
            let blob_is_new = txn.new_blobs.contains(&digest);
            self.ensure_snapshot(txn, &digest, &diff_id, &chain_id, blob_is_new)?;
            layers.push(Layer {
                digest,
                size: desc.size(),
                diff_id,
                chain_id,
            });
        }

        let size = manifest_bytes.len() as u64
            + config_bytes.len() as u64
            + layers.iter().map(|l| l.size).sum::<u64>();
        Ok(Image {
            id: config_digest.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest,
            config_digest,
            layers,
            size,
            created: config.created().clone(),
        })
    }

    /// Stores a `docker save` entry's config and layers and an OCI manifest
    /// for them, and returns that manifest's descriptor.
    fn ingest_docker(
        &self,
        txn: &mut Txn,
        input: &Input,
        config: &str,
        layers: &[String],
    ) -> Result<Descriptor, StoreError> {
        let config_bytes = input.read_config_member(config)?;
        let config_digest = Digest::of(&config_bytes);
        self.write_blob(
            txn,
            &config_bytes[..],
            Some((&config_digest, config_bytes.len() as u64)),
            config,
            input.describe(),
        )?;
        let mut layer_descs = Vec::new();
        for name in layers {
            let (reader, _) = input.open_layer_member(name)?;
            let mut reader = BufReader::new(reader);
            let head = io::BufRead::fill_buf(&mut reader).map_err(|e| StoreError::Io {
                action: "read",
                path: input.describe().join(name),
                source: e,
            })?;
            let compression = Compression::sniff(head);
            let (digest, size) = self.write_blob(txn, reader, None, name, input.describe())?;
            layer_descs.push(serde_json::json!({
                "mediaType": compression.oci_layer_media_type(),
                "digest": digest.to_string(),
                "size": size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": MT_OCI_CONFIG,
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layer_descs,
        });
        let bytes = serde_json::to_vec(&manifest).expect("a JSON value serialises");
        let digest = Digest::of(&bytes);
        self.write_blob(
            txn,
            &bytes[..],
            Some((&digest, bytes.len() as u64)),
            "manifest",
            input.describe(),
        )?;
        let oci_digest: oci_spec::image::Digest = digest
            .to_string()
            .parse()
            .expect("a sha256 digest is an OCI digest");
        Ok(Descriptor::new(
            MediaType::ImageManifest,
            bytes.len() as u64,
            oci_digest,
        ))
    }

    /// Makes sure blob `digest` is stored, copying it from `source`.
    fn ensure_blob(
        &self,
        txn: &mut Txn,
        source: &dyn BlobSource,
        digest: &Digest,
        size: u64,
    ) -> Result<(), StoreError> {
        if self.blob_path(digest).exists() {
            return Ok(());
        }
        let reader = source
            .open_blob(digest)?
            .ok_or_else(|| StoreError::Invalid {
                input: source.describe().to_owned(),
                reason: format!("blob {digest} is missing"),
            })?;
        // One byte more than expected is enough to tell it is too long,
        // without filling the disk first.
        self.write_blob(
            txn,
            reader.take(size.saturating_add(1)),
            Some((digest, size)),
            &digest.to_string(),
            source.describe(),
        )?;
        Ok(())
    }

    /// Writes `reader` to a scratch file, verifies it against `expected`
    /// (digest and size), and renames it into place. `name` and `input`
    /// say where the content came from, for errors.
    fn write_blob<R: Read>(
        &self,
        txn: &mut Txn,
        mut reader: R,
        expected: Option<(&Digest, u64)>,
        name: &str,
        input: &Path,
    ) -> Result<(Digest, u64), StoreError> {
        let tmp = self.scratch_path("blob");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let scratch = Scratch {
            path: Some(tmp.clone()),
        };
        let mut writer = DigestWriter::new(BufWriter::new(file));
        if let Err(e) = io::copy(&mut reader, &mut writer) {
            return Err(match VerifyError::from_io(&e) {
                Some(v) => StoreError::BlobMismatch {
                    input: input.to_owned(),
                    blob: name.to_owned(),
                    reason: v.clone(),
                },
                None => StoreError::Io {
                    action: "copy blob",
                    path: input.join(name),
                    source: e,
                },
            });
        }
        let (buffered, hashed) = writer.finish();
        if let Some((digest, size)) = expected {
            let mismatch = if hashed.size != size {
                Some(VerifyError::Size {
                    expected: size,
                    actual: hashed.size,
                })
            } else if hashed.digest != *digest {
                Some(VerifyError::Digest {
                    expected: digest.clone(),
                    actual: hashed.digest.clone(),
                })
            } else {
                None
            };
            if let Some(reason) = mismatch {
                return Err(StoreError::BlobMismatch {
                    input: input.to_owned(),
                    blob: name.to_owned(),
                    reason,
                });
            }
        }
        let file = buffered.into_inner().map_err(|e| StoreError::Io {
            action: "write",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        let dest = self.blob_path(&hashed.digest);
        if dest.exists() {
            return Ok((hashed.digest, hashed.size));
        }
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        scratch.keep();
        txn.new_blobs.push(hashed.digest.clone());
        Ok((hashed.digest, hashed.size))
    }

    /// A stored JSON blob, stored first from `source` if needed.
    fn fetch_json(
        &self,
        txn: &mut Txn,
        source: &dyn BlobSource,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if size > MAX_JSON {
            return Err(StoreError::Invalid {
                input: source.describe().to_owned(),
                reason: format!("blob {digest} is larger than {MAX_JSON} bytes"),
            });
        }
        self.ensure_blob(txn, source, digest, size)?;
        let path = self.blob_path(digest);
        fs::read(&path).map_err(io_err("read", &path))
    }

    /// Makes sure the snapshot `chain_id` exists, unpacking blob `layer`
    /// into it. When it already exists and `verify` is set (the blob is new
    /// to the store), the blob is still checked against `diff_id`.
    fn ensure_snapshot(
        &self,
        txn: &mut Txn,
        layer: &Digest,
        diff_id: &Digest,
        chain_id: &Digest,
        verify: bool,
    ) -> Result<(), StoreError> {
        let dest = self.snapshot_path(chain_id);
        if dest.exists() {
            if verify {
                self.with_layer_tar(layer, diff_id, |tar| {
                    io::copy(tar, &mut io::sink())
                        .map(drop)
                        .map_err(|e| StoreError::Io {
                            action: "read layer",
                            path: self.blob_path(layer),
                            source: e,
                        })
                })?;
            }
            return Ok(());
        }
        let tmp = self.scratch_path("snapshot");
        let fs_dir = tmp.join("fs");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io_err("create", &tmp))?;
        let scratch = Scratch {
            path: Some(tmp.clone()),
        };
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&fs_dir)
            .map_err(io_err("create", &fs_dir))?;
        self.with_layer_tar(layer, diff_id, |tar| {
            unpack_layer(tar, &fs_dir).map_err(|source| StoreError::Unpack {
                layer: layer.clone(),
                source,
            })
        })?;
        let dir = File::open(&tmp).map_err(io_err("open", &tmp))?;
        nix::unistd::syncfs(&dir).map_err(|e| StoreError::Io {
            action: "sync",
            path: tmp.clone(),
            source: e.into(),
        })?;
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        scratch.keep();
        txn.new_snapshots.push(chain_id.clone());
        Ok(())
    }

    /// Runs `f` on the uncompressed tar of stored blob `layer`, then reads
    /// the rest of the stream and checks that it all hashes to `diff_id`.
    fn with_layer_tar(
        &self,
        layer: &Digest,
        diff_id: &Digest,
        f: impl FnOnce(&mut dyn Read) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let path = self.blob_path(layer);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let tar = source::decompress(BufReader::new(file)).map_err(io_err("decompress", &path))?;
        let mut hashing = DigestReader::new(tar);
        f(&mut hashing)?;
        io::copy(&mut hashing, &mut io::sink()).map_err(io_err("decompress", &path))?;
        let actual = hashing.finish().digest;
        if actual != *diff_id {
            return Err(StoreError::DiffIdMismatch {
                layer: layer.clone(),
                expected: diff_id.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Removes what `txn` created that no record uses: all of it after a
    /// failed import, the blobs of an image that was already stored after a
    /// successful one. Whatever cannot be removed now is unreferenced and
    /// goes with the next gc().
    fn discard_unreferenced(&self, txn: &Txn) {
        let Ok(records) = self.load_all() else {
            return;
        };
        let (blobs, snapshots) = referenced(records.values());
        for b in txn.new_blobs.iter().filter(|b| !blobs.contains(*b)) {
            let _ = fs::remove_file(self.blob_path(b));
        }
        for s in txn.new_snapshots.iter().filter(|s| !snapshots.contains(*s)) {
            let _ = self.remove_snapshot(s);
        }
    }

    fn remove_snapshot(&self, chain_id: &Digest) -> Result<(), StoreError> {
        let path = self.snapshot_path(chain_id);
        let doomed = self.scratch_path("removed");
        fs::rename(&path, &doomed).map_err(io_err("move away", &path))?;
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))
    }

    fn clean_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
            let entry = entry.map_err(io_err("read", &tmp))?;
            let path = entry.path();
            let r = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            r.map_err(io_err("remove", &path))?;
        }
        Ok(())
    }

    /// Writes `image`'s record atomically.
    fn write_record(&self, image: &Image) -> Result<(), StoreError> {
        let dest = self.record_path(&image.id);
        let tmp = self.scratch_path("record");
        let scratch = Scratch {
            path: Some(tmp.clone()),
        };
        let mut bytes = serde_json::to_vec_pretty(image).expect("an image record serialises");
        bytes.push(b'\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(&bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        scratch.keep();
        self.sync_dir("images")
    }

    fn delete_record(&self, id: &Digest) -> Result<(), StoreError> {
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::Io {
                    action: "remove",
                    path,
                    source: e,
                });
            }
            _ => {}
        }
        self.sync_dir("images")
    }

    fn sync_dir(&self, dir: &str) -> Result<(), StoreError> {
        let path = self.root.join(dir);
        File::open(&path)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &path))
    }

    /// Every record, by id.
    fn load_all(&self) -> Result<BTreeMap<Digest, Image>, StoreError> {
        let dir = self.root.join("images");
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // Removed since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &path)(e)),
            };
            let image: Image = serde_json::from_slice(&bytes).map_err(|e| StoreError::Json {
                what: path.display().to_string(),
                source: e,
            })?;
            out.insert(image.id.clone(), image);
        }
        Ok(out)
    }

    /// Every image, in id order.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        Ok(self.load_all()?.into_values().collect())
    }

    /// The image named by `reference_or_id`: a full id (`sha256:<hex>`), a
    /// normalised or short reference (by tag, or by digest for a repo
    /// digest), or an unambiguous id prefix with or without `sha256:`
    /// (as `crictl` takes them), tried in that order.
    pub fn get(&self, reference_or_id: &str) -> Result<Option<Image>, StoreError> {
        let records = self.load_all()?;
        Ok(resolve(&records, reference_or_id)?.map(|(id, _)| records[&id].clone()))
    }

    /// Adds tag `reference` to the image `target` names (see [`ImageStore::get`]).
    /// If another image had this tag, it loses it.
    pub fn tag(&self, target: &str, reference: &str) -> Result<Image, StoreError> {
        let name = Reference::parse(reference)?;
        if name.digest().is_some() {
            return Err(StoreError::TagWithDigest(name));
        }
        let _txn = self.begin()?;
        let mut records = self.load_all()?;
        let (id, _) =
            resolve(&records, target)?.ok_or_else(|| StoreError::NotFound(target.to_owned()))?;
        for (other_id, other) in records.iter_mut() {
            if *other_id != id && other.repo_tags.contains(&name) {
                other.remove_tag(&name);
                self.write_record(other)?;
            }
        }
        let image = records.get_mut(&id).expect("resolved from records");
        image.add_name(&name);
        self.write_record(image)?;
        Ok(image.clone())
    }

    /// Removes what `reference_or_id` names (see [`ImageStore::get`]): a tag
    /// or repo digest given by reference, and the image itself when no name
    /// is left; every name at once when given an id, as `crictl rmi` and the
    /// CRI's RemoveImage do. Blobs and snapshots no other image uses go with
    /// the image. [`StoreError::NotFound`] if nothing matches.
    pub fn remove(&self, reference_or_id: &str) -> Result<Removed, StoreError> {
        let _txn = self.begin()?;
        let mut records = self.load_all()?;
        let (id, how) = resolve(&records, reference_or_id)?
            .ok_or_else(|| StoreError::NotFound(reference_or_id.to_owned()))?;
        let mut image = records.remove(&id).expect("resolved from records");
        match how {
            Match::Id => {
                image.repo_tags.clear();
                image.repo_digests.clear();
            }
            Match::Tag(name) => image.remove_tag(&name),
            Match::Digest(name) => image.repo_digests.retain(|d| *d != name),
        }
        if image.has_names() {
            self.write_record(&image)?;
            return Ok(Removed::Untagged(image));
        }
        self.delete_record(&id)?;
        self.gc_locked()?;
        Ok(Removed::Deleted(image))
    }

    /// Removes blobs and snapshots no image uses, leftovers in `tmp/`, and
    /// downloads in `ingest/` no running pull holds (partial ones included).
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        let _txn = self.begin()?;
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<GcStats, StoreError> {
        let records = self.load_all()?;
        let (blobs, snapshots) = referenced(records.values());
        let mut stats = GcStats::default();
        let blob_dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blob_dir).map_err(io_err("read", &blob_dir))? {
            let entry = entry.map_err(io_err("read", &blob_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = is_hex_name(&name)
                && blobs.contains(&Digest::parse(&format!("sha256:{name}")).expect("checked hex"));
            if !keep {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                stats.blobs += 1;
            }
        }
        let snap_dir = self.root.join("snapshots");
        for entry in fs::read_dir(&snap_dir).map_err(io_err("read", &snap_dir))? {
            let entry = entry.map_err(io_err("read", &snap_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_hex_name(&name) {
                let doomed = self.scratch_path("removed");
                fs::rename(entry.path(), &doomed).map_err(io_err("move away", &entry.path()))?;
                fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
                stats.snapshots += 1;
                continue;
            }
            let chain_id = Digest::parse(&format!("sha256:{name}")).expect("checked hex");
            if !snapshots.contains(&chain_id) {
                self.remove_snapshot(&chain_id)?;
                stats.snapshots += 1;
            }
        }
        self.clean_tmp()?;
        let ingest = self.root.join("ingest");
        stats.blobs += crate::staging::remove_unheld(&ingest).map_err(io_err("clean", &ingest))?;
        Ok(stats)
    }

    /// The image's config, from its stored blob.
    pub fn config(&self, image: &Image) -> Result<ImageConfiguration, StoreError> {
        let path = self.blob_path(&image.config_digest);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Json {
            what: format!("config {}", image.config_digest),
            source: e,
        })
    }

    /// The snapshot `fs` directories of the image's layers, topmost first,
    /// as overlayfs `lowerdir=` lists them.
    pub fn lowerdirs(&self, image: &Image) -> Result<Vec<PathBuf>, StoreError> {
        image
            .chain_ids()
            .rev()
            .map(|c| {
                let fs_dir = self.snapshot_path(c).join("fs");
                if fs_dir.is_dir() {
                    Ok(fs_dir)
                } else {
                    Err(StoreError::Damaged(format!(
                        "snapshot {c} of image {} is missing",
                        image.id
                    )))
                }
            })
            .collect()
    }

    /// Space and inodes the store uses, hardlinked files counted once.
    pub fn fs_usage(&self) -> Result<FsUsage, StoreError> {
        let mut usage = FsUsage::default();
        let mut seen = HashSet::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                // Removed by a concurrent change.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("read", &dir))?;
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("stat", &entry.path())(e)),
                };
                if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                usage.used_bytes += meta.blocks() * 512;
                usage.inodes_used += 1;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(usage)
    }
}

/// The blob source of a pull's commit: every blob is already stored.
struct Stored(PathBuf);

impl BlobSource for Stored {
    fn open_blob(&self, _: &Digest) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        Ok(None)
    }

    fn describe(&self) -> &Path {
        &self.0
    }
}

/// How a string named an image.
enum Match {
    Id,
    Tag(Reference),
    Digest(Reference),
}

fn resolve(
    records: &BTreeMap<Digest, Image>,
    s: &str,
) -> Result<Option<(Digest, Match)>, StoreError> {
    if let Ok(id) = Digest::parse(s)
        && records.contains_key(&id)
    {
        return Ok(Some((id, Match::Id)));
    }
    if let Ok(name) = Reference::parse(s) {
        let found = records.values().find_map(|image| match name.digest() {
            Some(d) => {
                let by_digest = name.with_digest(d.clone());
                image
                    .repo_digests
                    .contains(&by_digest)
                    .then(|| (image.id.clone(), Match::Digest(by_digest)))
            }
            None => image
                .repo_tags
                .contains(&name)
                .then(|| (image.id.clone(), Match::Tag(name.clone()))),
        });
        if found.is_some() {
            return Ok(found);
        }
    }
    let prefix = s.strip_prefix("sha256:").unwrap_or(s);
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Ok(None);
    }
    let mut matches = records.keys().filter(|id| id.hex().starts_with(prefix));
    match (matches.next(), matches.count()) {
        (None, _) => Ok(None),
        (Some(id), 0) => Ok(Some((id.clone(), Match::Id))),
        (Some(_), more) => Err(StoreError::Ambiguous {
            prefix: s.to_owned(),
            count: more + 1,
        }),
    }
}

/// The blobs and snapshots `images` use.
fn referenced<'a>(images: impl Iterator<Item = &'a Image>) -> (HashSet<Digest>, HashSet<Digest>) {
    let mut blobs = HashSet::new();
    let mut snapshots = HashSet::new();
    for image in images {
        blobs.extend(image.blobs().cloned());
        snapshots.extend(image.chain_ids().cloned());
    }
    (blobs, snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    fn record(id_hex: &str, tags: &[&str]) -> Image {
        let id = Digest::parse(&format!("sha256:{id_hex}")).unwrap();
        let mut image = Image {
            id: id.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest: Digest::of(id_hex.as_bytes()),
            config_digest: id,
            layers: Vec::new(),
            size: 0,
            created: None,
        };
        for t in tags {
            image.add_name(&Reference::parse(t).unwrap());
        }
        image
    }

    #[test]
    fn resolve_order_and_ambiguous_prefixes() {
        let a = format!("abc1{}", "0".repeat(60));
        let b = format!("abc2{}", "0".repeat(60));
        // An image tagged with a name that is also a hex prefix of another.
        let c = format!("def{}", "0".repeat(61));
        let records: BTreeMap<Digest, Image> = [
            record(&a, &["busybox"]),
            record(&b, &[]),
            record(&c, &["abc1"]),
        ]
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
        let id = |s: &str| match resolve(&records, s) {
            Ok(Some((id, _))) => Ok(Some(id.hex()[..4].to_owned())),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(id("busybox"), Ok(Some("abc1".into())));
        assert_eq!(id(&format!("sha256:{b}")), Ok(Some("abc2".into())));
        assert_eq!(id("abc2"), Ok(Some("abc2".into())));
        assert_eq!(id("sha256:abc2"), Ok(Some("abc2".into())));
        // A name wins over an id prefix, as in containerd's CRI.
        assert_eq!(id("abc1"), Ok(Some("def0".into())));
        let err = id("abc").unwrap_err();
        assert!(err.contains("\"abc\"") && err.contains("2 images"), "{err}");
        assert!(id("sha256:ab").is_err());
        assert_eq!(id("abc3"), Ok(None));
        assert_eq!(id("nginx"), Ok(None));
    }

    #[test]
    fn tag_removal_drops_the_repo_digest_with_the_last_tag() {
        let d = Digest::of(b"m");
        let mut image = Image {
            id: Digest::of(b"c"),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest: d.clone(),
            config_digest: Digest::of(b"c"),
            layers: Vec::new(),
            size: 0,
            created: None,
        };
        let r = |s: &str| Reference::parse(s).unwrap();
        image.add_name(&r("busybox:1"));
        image.add_name(&r("busybox:2"));
        image.add_name(&r("other:1"));
        assert_eq!(image.repo_digests.len(), 2);
        image.remove_tag(&r("busybox:1"));
        assert_eq!(image.repo_digests.len(), 2);
        image.remove_tag(&r("busybox:2"));
        assert_eq!(image.repo_digests, vec![r("other").with_digest(d)]);
    }
}
