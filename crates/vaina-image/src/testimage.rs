//! Small test images built from Debian's `busybox-static` (`/bin/busybox`;
//! `apt-get install -y busybox-static`), for vaina's tests and demo: no
//! registry, no network, the same bytes every time.
//!
//! The busybox image has one layer: `/bin/busybox` with symlinks for the
//! applets the tests use ([`APPLETS`]), `/etc/passwd` and `/etc/group`
//! (root, `nobody` 65534, `app` 1000), `/etc/motd`, `/var/www/index.html`,
//! `/tmp` (1777), `/root`, `/home/app`. Its config has no Entrypoint, Cmd
//! `["sh"]`, a PATH and WorkingDir `/`.
//!
//! The two-layer variant adds a layer that deletes `/etc/motd` (a
//! whiteout), adds `/etc/added`, and replaces the content of `/var/www`
//! (an opaque directory holding only `v2.html`).
//!
//! [`TestImage`] writes any of them as an OCI layout (directory or tar) or
//! a docker archive; all forms of one image have the same config, hence
//! the same image id. [`LayerBuilder`] makes layer tars, hostile ones
//! included (it does not check names).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::reference::Reference;
use crate::source::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Compression, MT_OCI_CONFIG, MT_OCI_INDEX,
    MT_OCI_MANIFEST, host_arch,
};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// The applets the image links to busybox in `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "ip", "ifconfig", "nc", "telnet", "telnetd", "httpd", "sleep",
    "hostname", "id", "env", "ps", "wget",
];
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
app:x:1000:1000:app:/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nnobody:x:65534:\napp:x:1000:\n";
pub const MOTD: &str = "vaina busybox test image\n";
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// mtime of every entry, and the config's `created`.
const MTIME: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// How [`TestImage`] compresses layers in OCI layouts. Docker archives
/// always hold uncompressed layers, as `docker save` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// Builds a layer tar entry by entry. Entries are root-owned with a fixed
/// mtime unless said otherwise; names are written as given, unchecked.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(0);
        let name = path.as_bytes();
        if name.len() >= 100 {
            // Long names through GNU long-name records; these are checked.
            h.set_path(path)?;
        } else {
            let field = &mut h.as_old_mut().name;
            field.fill(0);
            field[..name.len()].copy_from_slice(name);
        }
        Ok(h)
    }

    fn append(&mut self, mut h: tar::Header, data: &[u8]) -> io::Result<&mut Self> {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.tar.append(&h, data)?;
        Ok(self)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        self.dir_owned(path, mode, 0, 0)
    }

    pub fn dir_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> io::Result<&mut Self> {
        let h = Self::header(path, tar::EntryType::Directory, mode, uid, gid)?;
        self.append(h, &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<&mut Self> {
        self.file_owned(path, mode, 0, 0, data)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> io::Result<&mut Self> {
        let h = Self::header(path, tar::EntryType::Regular, mode, uid, gid)?;
        self.append(h, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut h = Self::header(path, tar::EntryType::Symlink, 0o777, 0, 0)?;
        h.set_link_name_literal(target)?;
        self.append(h, &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut h = Self::header(path, tar::EntryType::Link, 0o644, 0, 0)?;
        h.set_link_name_literal(target)?;
        self.append(h, &[])
    }

    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<&mut Self> {
        let mut h = Self::header(path, tar::EntryType::Char, mode, 0, 0)?;
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.append(h, &[])
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        let h = Self::header(path, tar::EntryType::Fifo, mode, 0, 0)?;
        self.append(h, &[])
    }

    /// `dir/.wh.name` for `path` = `dir/name`: deletes `name` of lower layers.
    pub fn whiteout(&mut self, path: &str) -> io::Result<&mut Self> {
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&wh, 0o644, &[])
    }

    /// `dir/.wh..wh..opq`: hides everything lower layers have in `dir`.
    pub fn opaque(&mut self, dir: &str) -> io::Result<&mut Self> {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            0o644,
            &[],
        )
    }

    /// A file with PAX extended attributes (`SCHILY.xattr.<name>`).
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> io::Result<&mut Self> {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        self.file(path, mode, data)
    }

    pub fn finish(self) -> io::Result<Vec<u8>> {
        self.tar.into_inner()
    }
}

/// The busybox base layer, uncompressed.
pub fn busybox_layer() -> io::Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("read {BUSYBOX} (apt-get install -y busybox-static): {e}"),
        )
    })?;
    let mut l = LayerBuilder::new();
    l.dir("bin/", 0o755)?.file("bin/busybox", 0o755, &busybox)?;
    for applet in APPLETS {
        l.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    l.dir("etc/", 0o755)?
        .file("etc/passwd", 0o644, PASSWD.as_bytes())?
        .file("etc/group", 0o644, GROUP.as_bytes())?
        .file("etc/motd", 0o644, MOTD.as_bytes())?
        .dir("home/", 0o755)?
        .dir_owned("home/app/", 0o755, 1000, 1000)?
        .dir("root/", 0o700)?
        .dir("tmp/", 0o1777)?
        .dir("var/", 0o755)?
        .dir("var/www/", 0o755)?
        .file("var/www/index.html", 0o644, b"<h1>vaina</h1>\n")?;
    l.finish()
}

/// The second layer of the two-layer variant.
pub fn whiteout_layer() -> io::Result<Vec<u8>> {
    let mut l = LayerBuilder::new();
    l.dir("etc/", 0o755)?
        .whiteout("etc/motd")?
        .file("etc/added", 0o644, b"added by layer 2\n")?
        .dir("var/", 0o755)?
        .dir("var/www/", 0o755)?
        .opaque("var/www")?
        .file("var/www/v2.html", 0o644, b"layer 2\n")?;
    l.finish()
}

/// An image under construction: layer tars (uncompressed) and a config.
#[derive(Clone)]
pub struct TestImage {
    layers: Vec<Vec<u8>>,
    compression: LayerCompression,
    cmd: Vec<String>,
    architecture: String,
}

/// Files of a layout or archive: (path, content).
type Files = Vec<(String, Vec<u8>)>;

struct Written {
    layers: Vec<(Digest, Vec<u8>, &'static str)>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl TestImage {
    /// Any layers, bottom first, with the busybox config.
    pub fn from_layers(layers: Vec<Vec<u8>>) -> TestImage {
        TestImage {
            layers,
            compression: LayerCompression::Gzip,
            cmd: vec!["sh".into()],
            architecture: host_arch().to_owned(),
        }
    }

    pub fn busybox() -> io::Result<TestImage> {
        Ok(TestImage::from_layers(vec![busybox_layer()?]))
    }

    pub fn busybox_two_layers() -> io::Result<TestImage> {
        Ok(TestImage::from_layers(vec![
            busybox_layer()?,
            whiteout_layer()?,
        ]))
    }

    /// How OCI layouts compress the layers (gzip by default).
    pub fn compression(mut self, c: LayerCompression) -> TestImage {
        self.compression = c;
        self
    }

    /// The config's Cmd (`["sh"]` by default).
    pub fn cmd(mut self, cmd: &[&str]) -> TestImage {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The config's `architecture` (this machine's by default), for
    /// multi-platform indexes.
    pub fn architecture(mut self, arch: &str) -> TestImage {
        self.architecture = arch.to_owned();
        self
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| Digest::of(l)).collect()
    }

    /// The image config, the same bytes in every form.
    pub fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.diff_ids().iter().map(|d| d.to_string()).collect();
        let history: Vec<serde_json::Value> = (0..self.layers.len())
            .map(|i| {
                serde_json::json!({
                    "created": CREATED,
                    "created_by": format!("vaina testimage layer {i}"),
                })
            })
            .collect();
        let config = serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "created": CREATED,
            "config": {
                "Env": [PATH_ENV],
                "Cmd": self.cmd,
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        serde_json::to_vec(&config).expect("JSON serialises")
    }

    /// The image id every form of this image imports as.
    pub fn id(&self) -> Digest {
        Digest::of(&self.config())
    }

    fn blobs(&self) -> io::Result<Written> {
        let mut layers = Vec::new();
        for tar in &self.layers {
            let (blob, media_type) = match self.compression {
                LayerCompression::None => (tar.clone(), Compression::None.oci_layer_media_type()),
                LayerCompression::Gzip => {
                    let mut enc = flate2::GzBuilder::new()
                        .mtime(0)
                        .write(Vec::new(), flate2::Compression::fast());
                    enc.write_all(tar)?;
                    (enc.finish()?, Compression::Gzip.oci_layer_media_type())
                }
                LayerCompression::Zstd => (
                    zstd::stream::encode_all(&tar[..], 1)?,
                    Compression::Zstd.oci_layer_media_type(),
                ),
            };
            layers.push((Digest::of(&blob), blob, media_type));
        }
        let config = self.config();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": MT_OCI_CONFIG,
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": layers.iter().map(|(d, b, mt)| serde_json::json!({
                "mediaType": mt,
                "digest": d.to_string(),
                "size": b.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).expect("JSON serialises");
        Ok(Written {
            layers,
            config,
            manifest,
        })
    }

    /// The files of an OCI layout, by path.
    fn oci_files(&self, ref_name: &str) -> io::Result<Files> {
        let reference = parse_ref(ref_name)?;
        let (blobs, mut desc) = self.manifest_files()?;
        let mut annotations = serde_json::Map::new();
        annotations.insert(ANNOTATION_IMAGE_NAME.into(), reference.to_string().into());
        if let Some(tag) = reference.tag() {
            annotations.insert(ANNOTATION_REF_NAME.into(), tag.into());
        }
        desc["annotations"] = annotations.into();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [desc],
        });
        let mut files = vec![(
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        )];
        files.extend(blobs);
        files.push((
            "index.json".to_owned(),
            serde_json::to_vec(&index).expect("JSON serialises"),
        ));
        Ok(files)
    }

    /// The blob files of an OCI layout holding this image, and its
    /// manifest's descriptor (with its platform).
    fn manifest_files(&self) -> io::Result<(Files, serde_json::Value)> {
        let w = self.blobs()?;
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let desc = serde_json::json!({
            "mediaType": MT_OCI_MANIFEST,
            "digest": Digest::of(&w.manifest).to_string(),
            "size": w.manifest.len(),
            "platform": { "architecture": self.architecture, "os": "linux" },
        });
        let mut files = Vec::new();
        for (d, b, _) in w.layers {
            files.push((blob(&d), b));
        }
        files.push((blob(&Digest::of(&w.config)), w.config));
        files.push((blob(&Digest::of(&w.manifest)), w.manifest));
        Ok((files, desc))
    }

    /// Writes an OCI image layout into directory `dir` (created if
    /// missing), naming the image `ref_name`; returns `dir`.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> io::Result<PathBuf> {
        for (name, bytes) in self.oci_files(ref_name)? {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().expect("has a parent"))?;
            fs::write(path, bytes)?;
        }
        Ok(dir.to_owned())
    }

    /// Writes the OCI layout as a tar (`oci-archive`); returns `path`.
    pub fn write_oci_archive(&self, path: &Path, ref_name: &str) -> io::Result<PathBuf> {
        write_tar(path, self.oci_files(ref_name)?)
    }

    /// Writes a `docker save` archive: `manifest.json` (last, as docker
    /// writes it), the config as `<id hex>.json`, uncompressed layers as
    /// `<diff id hex>/layer.tar`, and `repositories`; returns `path`.
    pub fn write_docker_archive(&self, path: &Path, ref_name: &str) -> io::Result<PathBuf> {
        let reference = parse_ref(ref_name)?;
        let config = self.config();
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let mut files = Vec::new();
        let mut layer_names = Vec::new();
        for tar in &self.layers {
            let name = format!("{}/layer.tar", Digest::of(tar).hex());
            layer_names.push(name.clone());
            files.push((name, tar.clone()));
        }
        files.push((config_name.clone(), config));
        let top = self
            .diff_ids()
            .last()
            .map(|d| d.hex().to_owned())
            .unwrap_or_default();
        let mut tags = serde_json::Map::new();
        tags.insert(reference.tag().unwrap_or("latest").into(), top.into());
        let mut repositories = serde_json::Map::new();
        repositories.insert(reference.familiar_name(), tags.into());
        files.push((
            "repositories".into(),
            serde_json::to_vec(&repositories).expect("JSON serialises"),
        ));
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [reference.familiar()],
            "Layers": layer_names,
        }]);
        files.push((
            "manifest.json".into(),
            serde_json::to_vec(&manifest).expect("JSON serialises"),
        ));
        write_tar(path, files)
    }
}

/// Writes an OCI layout in `dir` whose one image, named `ref_name`, is a
/// multi-platform index of `images` (give each its
/// [`TestImage::architecture`]); returns `dir`.
pub fn write_oci_index_layout(
    dir: &Path,
    ref_name: &str,
    images: &[TestImage],
) -> io::Result<PathBuf> {
    let reference = parse_ref(ref_name)?;
    let mut files = vec![(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut manifests = Vec::new();
    for image in images {
        let (blobs, desc) = image.manifest_files()?;
        files.extend(blobs);
        manifests.push(desc);
    }
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": manifests,
    });
    let nested = serde_json::to_vec(&nested).expect("JSON serialises");
    let nested_digest = Digest::of(&nested);
    let mut annotations = serde_json::Map::new();
    annotations.insert(ANNOTATION_IMAGE_NAME.into(), reference.to_string().into());
    if let Some(tag) = reference.tag() {
        annotations.insert(ANNOTATION_REF_NAME.into(), tag.into());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [{
            "mediaType": MT_OCI_INDEX,
            "digest": nested_digest.to_string(),
            "size": nested.len(),
            "annotations": annotations,
        }],
    });
    files.push((format!("blobs/sha256/{}", nested_digest.hex()), nested));
    files.push((
        "index.json".to_owned(),
        serde_json::to_vec(&index).expect("JSON serialises"),
    ));
    for (name, bytes) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("has a parent"))?;
        fs::write(path, bytes)?;
    }
    Ok(dir.to_owned())
}

fn parse_ref(ref_name: &str) -> io::Result<Reference> {
    Reference::parse(ref_name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn write_tar(path: &Path, files: Vec<(String, Vec<u8>)>) -> io::Result<PathBuf> {
    let mut tar = tar::Builder::new(io::BufWriter::new(fs::File::create(path)?));
    let mut dirs = std::collections::BTreeSet::new();
    for (name, bytes) in files {
        if let Some((dir, _)) = name.rsplit_once('/')
            && dirs.insert(dir.to_owned())
        {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(MTIME);
            h.set_size(0);
            tar.append_data(&mut h, format!("{dir}/"), io::empty())?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, &name, &bytes[..])?;
    }
    tar.into_inner()?.flush()?;
    Ok(path.to_owned())
}

/// The busybox image as an OCI layout in `dir`.
pub fn busybox_oci_layout(dir: &Path, ref_name: &str) -> io::Result<PathBuf> {
    TestImage::busybox()?.write_oci_layout(dir, ref_name)
}

/// The busybox image as a docker archive at `path`.
pub fn busybox_docker_archive(path: &Path, ref_name: &str) -> io::Result<PathBuf> {
    TestImage::busybox()?.write_docker_archive(path, ref_name)
}

/// The two-layer busybox variant as an OCI layout in `dir`.
pub fn busybox_two_layer_oci_layout(dir: &Path, ref_name: &str) -> io::Result<PathBuf> {
    TestImage::busybox_two_layers()?.write_oci_layout(dir, ref_name)
}

/// The two-layer busybox variant as a docker archive at `path`.
pub fn busybox_two_layer_docker_archive(path: &Path, ref_name: &str) -> io::Result<PathBuf> {
    TestImage::busybox_two_layers()?.write_docker_archive(path, ref_name)
}
