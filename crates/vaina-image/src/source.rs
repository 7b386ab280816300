//! What `vaina image import` reads: an OCI image layout (a directory, or a
//! tar of one) or a docker-archive tarball (`docker save`), turned into the
//! list of images it holds.
//!
//! An archive is never extracted: one pass indexes its members (name →
//! offset and size; symlinks and hardlinks between members, which old
//! `docker save` uses for shared layers, are followed by name), then
//! members are read in place. Member names are only looked up, never
//! turned into paths, so a hostile archive cannot write anything. A
//! gzip- or zstd-compressed archive is first decompressed into the store's
//! scratch directory.
//!
//! Names: in an OCI layout, `io.containerd.image.name` (a full reference,
//! written by containerd and docker) wins over
//! `org.opencontainers.image.ref.name`; the latter is taken as a reference
//! when it has a `/`, `:` or `@` (`busybox:1.36`), and as the bare tag the
//! OCI spec describes otherwise, which names no repository, so such an
//! image is imported untagged. In a docker archive the names are
//! `RepoTags`. Every name is normalised (`busybox` →
//! `docker.io/library/busybox:latest`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};

use crate::digest::{Digest, DigestReader, VerifyError};
use crate::reference::Reference;
use crate::store::StoreError;

/// `io.containerd.image.name`: the full reference, beside the OCI tag.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// `org.opencontainers.image.ref.name`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Index, manifest and config documents larger than this are refused
/// rather than read into memory (containerd's manifest limit is 4 MiB).
pub(crate) const MAX_JSON: u64 = 8 << 20;

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Layer media types vaina unpacks; the compression itself is detected
/// from the content.
pub(crate) const LAYER_MEDIA_TYPES: &[&str] = &[
    MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Where blobs come from during an import, by digest. A registry client
/// (later) is another one.
pub(crate) trait BlobSource {
    /// The blob `digest` as the source has it (not yet verified), or `None`
    /// if the source lacks it.
    fn open_blob(&self, digest: &Digest) -> Result<Option<Box<dyn Read + '_>>, StoreError>;
    /// How errors name the source: its path or URL.
    fn describe(&self) -> &Path;
}

/// An image found in the input, not yet read.
pub(crate) enum Candidate {
    /// An OCI image manifest; its blobs are in the input by digest.
    Oci {
        manifest: Box<Descriptor>,
        names: Vec<Reference>,
    },
    /// A `docker save` entry: member names of the config and the layers.
    Docker {
        config: String,
        layers: Vec<String>,
        names: Vec<Reference>,
    },
}

/// An opened import input.
pub(crate) struct Input {
    path: PathBuf,
    kind: InputKind,
    /// The decompressed copy of a compressed archive, removed on drop.
    scratch: Option<PathBuf>,
}

/// A member opened for reading, and its size.
type Opened<'a> = (Box<dyn Read + 'a>, u64);

enum InputKind {
    Dir(PathBuf),
    Tar {
        file: File,
        members: HashMap<String, Member>,
    },
}

enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Another member's name, already normalised.
    Link(String),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the first bytes of a stream: gzip `1f 8b`, zstd `28 b5 2f fd`.
    pub(crate) fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub(crate) fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => MT_OCI_LAYER,
            Compression::Gzip => MT_OCI_LAYER_GZIP,
            Compression::Zstd => MT_OCI_LAYER_ZSTD,
        }
    }
}

/// `r`, decompressed according to its first bytes.
pub(crate) fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    Ok(match Compression::sniff(head) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    })
}

/// GOARCH of this machine, as image platforms name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An archive member name as a lookup key: no leading `/` or `./`, no `.`
/// components, `..` resolved lexically; `None` if it climbs above the top.
fn member_key(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let Some(p) = &self.scratch {
            // A leftover scratch file is removed by the next gc().
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Input {
    /// Opens `path`: an OCI layout directory, or a (possibly compressed)
    /// tar. A compressed tar is decompressed to `scratch_file`.
    pub(crate) fn open(path: &Path, scratch_file: PathBuf) -> Result<Input, StoreError> {
        let io_err = |action, source| StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| io_err("open", e))?;
        if meta.is_dir() {
            return Ok(Input {
                path: path.to_owned(),
                kind: InputKind::Dir(path.to_owned()),
                scratch: None,
            });
        }
        let mut file = File::open(path).map_err(|e| io_err("open", e))?;
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(|e| io_err("read", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_err("read", e))?;
        let mut scratch = None;
        if Compression::sniff(&head[..n]) != Compression::None {
            let mut out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&scratch_file)
                .map_err(|e| StoreError::Io {
                    action: "create",
                    path: scratch_file.clone(),
                    source: e,
                })?;
            scratch = Some(scratch_file.clone());
            let copied = decompress(BufReader::new(file))
                .and_then(|mut r| io::copy(&mut r, &mut out))
                .and_then(|_| out.seek(SeekFrom::Start(0)));
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&scratch_file);
                return Err(io_err("decompress", e));
            }
            file = out;
        }
        let members = match index_tar(&file) {
            Ok(m) => m,
            Err(e) => {
                if let Some(s) = &scratch {
                    let _ = std::fs::remove_file(s);
                }
                return Err(StoreError::Invalid {
                    input: path.to_owned(),
                    reason: format!("not a directory or a tar archive: {e}"),
                });
            }
        };
        Ok(Input {
            path: path.to_owned(),
            kind: InputKind::Tar { file, members },
            scratch,
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            input: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// A member or file of the input by name, with its size.
    fn open_member(&self, name: &str) -> Result<Option<Opened<'_>>, StoreError> {
        match &self.kind {
            InputKind::Dir(dir) => {
                let Some(key) = member_key(name) else {
                    return Ok(None);
                };
                let path = dir.join(&key);
                match File::open(&path) {
                    Ok(f) => {
                        let size = f
                            .metadata()
                            .map_err(|e| StoreError::Io {
                                action: "stat",
                                path: path.clone(),
                                source: e,
                            })?
                            .len();
                        Ok(Some((Box::new(f), size)))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::Io {
                        action: "open",
                        path,
                        source: e,
                    }),
                }
            }
            InputKind::Tar { file, members } => {
                let Some(mut key) = member_key(name) else {
                    return Ok(None);
                };
                for _ in 0..16 {
                    match members.get(&key) {
                        None => return Ok(None),
                        Some(Member::Link(target)) => key = target.clone(),
                        Some(Member::File { offset, size }) => {
                            let section = Section {
                                file,
                                pos: *offset,
                                end: offset + size,
                            };
                            return Ok(Some((Box::new(section), *size)));
                        }
                    }
                }
                Err(self.invalid(format!("member {name:?}: too many levels of links")))
            }
        }
    }

    /// A small JSON document of the input, whole.
    fn read_json_member(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((r, size)) = self.open_member(name)? else {
            return Ok(None);
        };
        if size > MAX_JSON {
            return Err(self.invalid(format!("{name} is larger than {MAX_JSON} bytes")));
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|e| self.read_err(name, e))?;
        Ok(Some(buf))
    }

    fn read_err(&self, name: &str, e: io::Error) -> StoreError {
        StoreError::Io {
            action: "read",
            path: self.path.join(name),
            source: e,
        }
    }

    /// A member read whole and hashed, for docker-archive configs.
    pub(crate) fn read_config_member(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let bytes = self
            .read_json_member(name)?
            .ok_or_else(|| self.invalid(format!("config {name:?} is missing")))?;
        if let Some(expected) = digest_in_name(name) {
            let actual = Digest::of(&bytes);
            if actual != expected {
                return Err(StoreError::BlobMismatch {
                    input: self.path.clone(),
                    blob: name.to_owned(),
                    reason: VerifyError::Digest { expected, actual },
                });
            }
        }
        Ok(bytes)
    }

    /// A docker-archive layer member, verified against the digest in its
    /// name where the name is one (`blobs/sha256/<hex>`, `<hex>.tar`).
    pub(crate) fn open_layer_member(
        &self,
        name: &str,
    ) -> Result<(Box<dyn Read + '_>, Option<Digest>), StoreError> {
        let (r, size) = self
            .open_member(name)?
            .ok_or_else(|| self.invalid(format!("layer {name:?} is missing")))?;
        match digest_in_name(name) {
            Some(d) => Ok((
                Box::new(DigestReader::verifying(r, d.clone(), Some(size))),
                Some(d),
            )),
            None => Ok((r, None)),
        }
    }

    /// A blob of an OCI layout, verified against `desc`, whole.
    pub(crate) fn read_json_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, StoreError> {
        let digest = descriptor_digest(desc, &self.path)?;
        if desc.size() > MAX_JSON {
            return Err(self.invalid(format!("blob {digest} is larger than {MAX_JSON} bytes")));
        }
        let r = self
            .open_blob(&digest)?
            .ok_or_else(|| self.invalid(format!("blob {digest} is missing")))?;
        let mut buf = Vec::new();
        let mut verifying = DigestReader::verifying(r, digest.clone(), Some(desc.size()));
        match verifying.read_to_end(&mut buf) {
            Ok(_) => Ok(buf),
            Err(e) => match VerifyError::from_io(&e) {
                Some(v) => Err(StoreError::BlobMismatch {
                    input: self.path.clone(),
                    blob: digest.to_string(),
                    reason: v.clone(),
                }),
                None => Err(self.read_err(&blob_name(&digest), e)),
            },
        }
    }

    /// The images in the input, names normalised.
    pub(crate) fn candidates(&self) -> Result<Vec<Candidate>, StoreError> {
        let layout = self.read_json_member("oci-layout")?;
        let index = self.read_json_member("index.json")?;
        if let (Some(layout), Some(index)) = (layout, index) {
            return self.oci_candidates(&layout, &index);
        }
        if let Some(manifest) = self.read_json_member("manifest.json")? {
            return self.docker_candidates(&manifest);
        }
        Err(self.invalid(
            "neither an OCI image layout (oci-layout, index.json) nor a docker archive (manifest.json)",
        ))
    }

    fn oci_candidates(&self, layout: &[u8], index: &[u8]) -> Result<Vec<Candidate>, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layout {
            image_layout_version: String,
        }
        let layout: Layout = serde_json::from_slice(layout).map_err(|e| StoreError::Json {
            what: format!("{}: oci-layout", self.path.display()),
            source: e,
        })?;
        if !layout.image_layout_version.starts_with("1.") {
            return Err(self.invalid(format!(
                "unsupported imageLayoutVersion {:?}",
                layout.image_layout_version
            )));
        }
        let index: ImageIndex = serde_json::from_slice(index).map_err(|e| StoreError::Json {
            what: format!("{}: index.json", self.path.display()),
            source: e,
        })?;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for desc in index.manifests() {
            let names = names_from_annotations(desc)?;
            match desc.media_type().to_string().as_str() {
                MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => {
                    if let Some(p) = desc.platform()
                        && !platform_matches(p)
                    {
                        skipped.push(format!("{} ({})", desc.digest(), platform_name(p)));
                        continue;
                    }
                    out.push(Candidate::Oci {
                        manifest: Box::new(desc.clone()),
                        names,
                    });
                }
                MT_OCI_INDEX | MT_DOCKER_LIST => {
                    let nested = self.read_json_blob(desc)?;
                    let nested: ImageIndex =
                        serde_json::from_slice(&nested).map_err(|e| StoreError::Json {
                            what: format!("{}: index {}", self.path.display(), desc.digest()),
                            source: e,
                        })?;
                    let manifest = self.pick_platform(&nested, desc)?;
                    out.push(Candidate::Oci {
                        manifest: Box::new(manifest),
                        names,
                    });
                }
                other => skipped.push(format!("{} ({other})", desc.digest())),
            }
        }
        if out.is_empty() {
            return Err(self.invalid(format!(
                "no linux/{} image in index.json (skipped: {})",
                host_arch(),
                if skipped.is_empty() {
                    "none".to_owned()
                } else {
                    skipped.join(", ")
                }
            )));
        }
        Ok(out)
    }

    /// The manifest for this machine from a multi-platform index.
    fn pick_platform(
        &self,
        index: &ImageIndex,
        desc: &Descriptor,
    ) -> Result<Descriptor, StoreError> {
        select_platform(index).map_err(|available| StoreError::NoMatchingPlatform {
            input: self.path.clone(),
            index: desc.digest().to_string(),
            platform: format!("linux/{}", host_arch()),
            available,
        })
    }

    fn docker_candidates(&self, manifest: &[u8]) -> Result<Vec<Candidate>, StoreError> {
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(manifest).map_err(|e| StoreError::Json {
                what: format!("{}: manifest.json", self.path.display()),
                source: e,
            })?;
        if entries.is_empty() {
            return Err(self.invalid("manifest.json lists no image"));
        }
        entries
            .into_iter()
            .map(|e| {
                let names = e
                    .repo_tags
                    .unwrap_or_default()
                    .iter()
                    .map(|t| Reference::parse(t))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Candidate::Docker {
                    config: e.config,
                    layers: e.layers,
                    names,
                })
            })
            .collect()
    }
}

impl BlobSource for Input {
    fn open_blob(&self, digest: &Digest) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        Ok(self.open_member(&blob_name(digest))?.map(|(r, _)| r))
    }

    fn describe(&self) -> &Path {
        &self.path
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// The digest a docker-archive member name states: `blobs/sha256/<hex>`,
/// `<hex>.json` or `<hex>.tar`. Old `<v1 id>/layer.tar` names state none.
fn digest_in_name(name: &str) -> Option<Digest> {
    let key = member_key(name)?;
    let hex = key
        .strip_prefix("blobs/sha256/")
        .or_else(|| key.strip_suffix(".json"))
        .or_else(|| key.strip_suffix(".tar"))?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// The descriptor's digest in vaina's type (sha256 only).
pub(crate) fn descriptor_digest(desc: &Descriptor, input: &Path) -> Result<Digest, StoreError> {
    Digest::parse(desc.digest().as_ref()).map_err(|e| StoreError::Invalid {
        input: input.to_owned(),
        reason: e.to_string(),
    })
}

/// The manifest for this machine (linux/[`host_arch`]) in a multi-platform
/// index, or the only manifest of an index that names no platform; else the
/// platforms the index has.
pub(crate) fn select_platform(index: &ImageIndex) -> Result<Descriptor, Vec<String>> {
    let manifests: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            matches!(
                d.media_type().to_string().as_str(),
                MT_OCI_MANIFEST | MT_DOCKER_MANIFEST
            )
        })
        .collect();
    if let Some(d) = manifests
        .iter()
        .find(|d| d.platform().as_ref().is_some_and(platform_matches))
    {
        return Ok((*d).clone());
    }
    if let [only] = manifests.as_slice()
        && only.platform().is_none()
    {
        return Ok((*only).clone());
    }
    Err(manifests
        .iter()
        .filter_map(|d| d.platform().as_ref().map(platform_name))
        .collect())
}

fn platform_matches(p: &oci_spec::image::Platform) -> bool {
    p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
}

fn platform_name(p: &oci_spec::image::Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

fn names_from_annotations(desc: &Descriptor) -> Result<Vec<Reference>, StoreError> {
    let Some(ann) = desc.annotations() else {
        return Ok(Vec::new());
    };
    if let Some(name) = ann.get(ANNOTATION_IMAGE_NAME) {
        return Ok(vec![Reference::parse(name)?]);
    }
    match ann.get(ANNOTATION_REF_NAME) {
        Some(name) if name.contains(['/', ':', '@']) => Ok(vec![Reference::parse(name)?]),
        _ => Ok(Vec::new()),
    }
}

/// Name → member of a tar, in one pass.
fn index_tar(file: &File) -> io::Result<HashMap<String, Member>> {
    let mut members = HashMap::new();
    let mut archive = tar::Archive::new(BufReader::new(file));
    for entry in archive.entries()? {
        let entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(key) = member_key(&name) else {
            continue;
        };
        let link = || -> Option<String> {
            let target = String::from_utf8_lossy(&entry.link_name_bytes()?).into_owned();
            Some(target)
        };
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous => {
                members.insert(
                    key,
                    Member::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            }
            // Relative to the link's directory.
            T::Symlink => {
                if let Some(target) = link() {
                    let base = match key.rsplit_once('/') {
                        Some((dir, _)) if !target.starts_with('/') => format!("{dir}/{target}"),
                        _ => target,
                    };
                    if let Some(t) = member_key(&base) {
                        members.insert(key, Member::Link(t));
                    }
                }
            }
            // Relative to the archive's top.
            T::Link => {
                if let Some(t) = link().as_deref().and_then(member_key) {
                    members.insert(key, Member::Link(t));
                }
            }
            _ => {}
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys() {
        assert_eq!(member_key("./blobs//sha256/x").unwrap(), "blobs/sha256/x");
        assert_eq!(member_key("/a/./b").unwrap(), "a/b");
        assert_eq!(member_key("a/../b").unwrap(), "b");
        assert_eq!(member_key("../b"), None);
    }

    #[test]
    fn digests_in_docker_names() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for name in [
            format!("{hex}.json"),
            format!("blobs/sha256/{hex}"),
            format!("./{hex}.tar"),
        ] {
            assert_eq!(digest_in_name(&name).unwrap().hex(), hex, "{name}");
        }
        assert_eq!(digest_in_name(&format!("{hex}/layer.tar")), None);
        assert_eq!(digest_in_name("config.json"), None);
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"bin/"), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }
}
