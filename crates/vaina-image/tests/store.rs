//! The image store end to end on a temp root: import of both formats,
//! lookup, tag, remove, and what a bad input leaves (nothing).

mod common;

use std::fs;
use std::path::Path;

use common::{assert_store_empty, can_unpack, chain, entries};
use vaina_image::testimage::{LayerBuilder, LayerCompression, TestImage};
use vaina_image::{ImageStore, Removed, StoreError};

const BUSYBOX: &str = "docker.io/library/busybox:latest";

fn open(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("store")).unwrap()
}

#[test]
fn both_formats_import_as_the_same_image() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox().unwrap();
    let layout = image
        .write_oci_layout(&tmp.path().join("oci"), "busybox")
        .unwrap();
    let archive = image
        .write_docker_archive(&tmp.path().join("docker.tar"), "busybox:latest")
        .unwrap();

    let store = open(tmp.path());
    let from_oci = store.import(&layout).unwrap();
    assert_eq!(from_oci.len(), 1);
    assert_eq!(from_oci[0].id, image.id());
    assert_eq!(from_oci[0].repo_tags[0].to_string(), BUSYBOX);
    assert_eq!(
        from_oci[0].repo_digests[0].to_string(),
        format!("docker.io/library/busybox@{}", from_oci[0].manifest_digest)
    );

    let from_docker = ImageStore::open(tmp.path().join("store2"))
        .unwrap()
        .import(&archive)
        .unwrap();
    assert_eq!(from_docker[0].id, image.id());
    assert_eq!(from_docker[0].repo_tags, from_oci[0].repo_tags);
    assert_eq!(
        from_docker[0].layers[0].diff_id,
        from_oci[0].layers[0].diff_id
    );
    assert_eq!(
        from_docker[0].layers[0].chain_id,
        from_oci[0].layers[0].chain_id
    );

    // The docker archive into the same store: the same image, one snapshot,
    // and the archive's now-unneeded blobs are not kept.
    let again = store.import(&archive).unwrap();
    assert_eq!(again[0], from_oci[0]);
    assert_eq!(store.list().unwrap(), from_oci);
    assert_eq!(entries(&store.root().join("snapshots")).len(), 1);
    assert_eq!(entries(&store.root().join("blobs/sha256")).len(), 3);
    assert!(entries(&store.root().join("tmp")).is_empty());

    let config = store.config(&from_oci[0]).unwrap();
    let c = config.config().as_ref().unwrap();
    assert_eq!(c.cmd().as_deref(), Some(&["sh".to_string()][..]));
    assert_eq!(c.entrypoint(), &None);
    assert_eq!(c.working_dir().as_deref(), Some("/"));
    assert!(c.env().as_ref().unwrap()[0].starts_with("PATH="));

    let lower = store.lowerdirs(&from_oci[0]).unwrap();
    assert_eq!(lower.len(), 1);
    let busybox = lower[0].join("bin/busybox");
    assert_eq!(
        fs::read(&busybox).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::read_link(lower[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let usage = store.fs_usage().unwrap();
    assert!(usage.used_bytes > 1_000_000, "{usage:?}");
    assert!(usage.inodes_used > 20, "{usage:?}");
}

#[test]
fn archives_compression_and_zstd_layers() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let image = TestImage::busybox().unwrap();

    // An OCI layout as a tar, zstd layers.
    let zstd = image.clone().compression(LayerCompression::Zstd);
    let oci_tar = zstd
        .write_oci_archive(&tmp.path().join("oci.tar"), "localhost:5000/bb:zstd")
        .unwrap();
    let imported = store.import(&oci_tar).unwrap();
    assert_eq!(imported[0].id, image.id());
    assert_eq!(
        imported[0].repo_tags[0].to_string(),
        "localhost:5000/bb:zstd"
    );

    // A gzip-compressed docker archive (docker save | gzip).
    let plain = image
        .write_docker_archive(&tmp.path().join("d.tar"), "registry.k8s.io/bb:1")
        .unwrap();
    let gz_path = tmp.path().join("d.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(&gz_path).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut fs::File::open(&plain).unwrap(), &mut gz).unwrap();
    gz.finish().unwrap();
    let imported = store.import(&gz_path).unwrap();
    assert_eq!(imported[0].id, image.id());
    let tags: Vec<String> = imported[0]
        .repo_tags
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(tags, ["localhost:5000/bb:zstd", "registry.k8s.io/bb:1"]);

    // An uncompressed OCI layout.
    let none = image.clone().compression(LayerCompression::None);
    let dir = none
        .write_oci_layout(&tmp.path().join("none"), "none:1")
        .unwrap();
    assert_eq!(store.import(&dir).unwrap()[0].id, image.id());
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(entries(&store.root().join("snapshots")).len(), 1);
}

#[test]
fn get_by_short_ref_full_ref_id_and_prefix() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layout = TestImage::busybox()
        .unwrap()
        .write_oci_layout(&tmp.path().join("oci"), "busybox:1.36")
        .unwrap();
    let image = store.import(&layout).unwrap().remove(0);
    let id = image.id.to_string();
    let digest_ref = format!("busybox@{}", image.manifest_digest);
    for key in [
        "busybox:1.36",
        "docker.io/library/busybox:1.36",
        "library/busybox:1.36",
        &id,
        &id[7..],
        &id[..19],
        &id[7..19],
        &id[7..10],
        &digest_ref,
    ] {
        let got = store.get(key).unwrap();
        assert_eq!(got.as_ref(), Some(&image), "{key}");
    }
    for missing in [
        "busybox",
        "busybox:1.37",
        "other",
        "sha256:",
        "zzz",
        "0000000",
    ] {
        if image.id.hex().starts_with(missing) {
            continue;
        }
        assert_eq!(store.get(missing).unwrap(), None, "{missing}");
    }

    let tagged = store.tag(&id[7..19], "localhost/mine:v1").unwrap();
    assert_eq!(tagged.repo_tags.len(), 2);
    assert_eq!(
        store.get("localhost/mine:v1").unwrap().unwrap().id,
        image.id
    );
    let err = store.tag("busybox:1.36", &digest_ref).unwrap_err();
    assert!(matches!(err, StoreError::TagWithDigest(_)), "{err}");
    let err = store.tag("nope", "x:1").unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref n) if n == "nope"),
        "{err}"
    );
}

#[test]
fn a_tag_moves_to_the_newly_imported_image() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let one = TestImage::busybox().unwrap();
    let two = TestImage::busybox_two_layers().unwrap();
    store
        .import(
            &one.write_oci_layout(&tmp.path().join("1"), "app:v")
                .unwrap(),
        )
        .unwrap();
    store
        .import(
            &two.write_oci_layout(&tmp.path().join("2"), "app:v")
                .unwrap(),
        )
        .unwrap();
    assert_eq!(store.get("app:v").unwrap().unwrap().id, two.id());
    // The old image stays, nameless, until removed by id, like Docker's.
    let old = store.get(&one.id().to_string()).unwrap().unwrap();
    assert!(old.repo_tags.is_empty() && old.repo_digests.is_empty());
    assert!(matches!(
        store.remove(&one.id().to_string()).unwrap(),
        Removed::Deleted(_)
    ));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn remove_keeps_what_another_image_shares() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let one = store
        .import(
            &vaina_image::testimage::busybox_oci_layout(&tmp.path().join("1"), "busybox").unwrap(),
        )
        .unwrap()
        .remove(0);
    let two = store
        .import(
            &vaina_image::testimage::busybox_two_layer_docker_archive(
                &tmp.path().join("2.tar"),
                "busybox:two",
            )
            .unwrap(),
        )
        .unwrap()
        .remove(0);
    assert_eq!(one.layers[0].chain_id, two.layers[0].chain_id);
    assert_eq!(entries(&store.root().join("snapshots")).len(), 2);
    store.tag("busybox", "extra:1").unwrap();

    // Untagging one of two names keeps the image.
    match store.remove("busybox").unwrap() {
        Removed::Untagged(image) => {
            assert_eq!(image.repo_tags.len(), 1);
            assert_eq!(image.repo_tags[0].to_string(), "docker.io/library/extra:1");
            assert_eq!(image.repo_digests.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // The last name: the image goes, the shared base layer stays.
    assert!(matches!(
        store.remove("extra:1").unwrap(),
        Removed::Deleted(_)
    ));
    assert!(store.get(&one.id.to_string()).unwrap().is_none());
    let snapshots = entries(&store.root().join("snapshots"));
    let mut expected: Vec<String> = two.chain_ids().map(|c| c.hex().to_owned()).collect();
    expected.sort();
    assert_eq!(snapshots, expected);
    let mut blobs = entries(&store.root().join("blobs/sha256"));
    let mut two_blobs: Vec<String> = [&two.manifest_digest, &two.config_digest]
        .into_iter()
        .chain(two.layers.iter().map(|l| &l.digest))
        .map(|d| d.hex().to_owned())
        .collect();
    blobs.sort();
    two_blobs.sort();
    assert_eq!(blobs, two_blobs);
    assert_eq!(store.lowerdirs(&two).unwrap().len(), 2);

    // By id prefix: every name at once, then the store is empty.
    assert!(matches!(
        store.remove(&two.id.hex()[..12]).unwrap(),
        Removed::Deleted(_)
    ));
    assert_store_empty(store.root());
    let err = store.remove("busybox:two").unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

#[test]
fn a_corrupt_blob_is_named_and_nothing_is_stored() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layout = TestImage::busybox()
        .unwrap()
        .write_oci_layout(&tmp.path().join("oci"), "busybox")
        .unwrap();
    // Flip a byte in the middle of the layer blob (the largest blob).
    let blobs = layout.join("blobs/sha256");
    let layer = entries(&blobs)
        .into_iter()
        .max_by_key(|n| fs::metadata(blobs.join(n)).unwrap().len())
        .unwrap();
    let path = blobs.join(&layer);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, bytes).unwrap();

    let err = store.import(&layout).unwrap_err();
    assert!(
        matches!(err, StoreError::BlobMismatch { ref blob, .. } if blob == &format!("sha256:{layer}")),
        "{}",
        chain(&err)
    );
    assert!(err.to_string().contains(&layer), "{err}");
    // The manifest and config were stored before the layer failed: gone too.
    assert_store_empty(store.root());

    // A blob longer than its descriptor says: refused as soon as it is.
    let image = TestImage::busybox().unwrap();
    let layout = image
        .write_oci_layout(&tmp.path().join("oci2"), "busybox")
        .unwrap();
    let config = layout.join("blobs/sha256").join(image.id().hex());
    let mut bytes = fs::read(&config).unwrap();
    bytes.extend_from_slice(b"     ");
    fs::write(&config, bytes).unwrap();
    let err = store.import(&layout).unwrap_err();
    assert!(
        matches!(err, StoreError::BlobMismatch { ref blob, reason: vaina_image::VerifyError::Size { .. }, .. }
            if blob == &image.id().to_string()),
        "{}",
        chain(&err)
    );
    assert_store_empty(store.root());
}

#[test]
fn a_docker_layer_that_does_not_match_its_diff_id_is_refused() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    // A docker archive whose layer differs from what the config says:
    // take a real config and swap the layer file for another tar.
    let real = TestImage::busybox().unwrap();
    let archive = real
        .write_docker_archive(&tmp.path().join("a.tar"), "busybox")
        .unwrap();
    let other = LayerBuilder::new().finish().unwrap();
    let rewritten = tmp.path().join("b.tar");
    let mut out = tar::Builder::new(fs::File::create(&rewritten).unwrap());
    let mut input = tar::Archive::new(fs::File::open(&archive).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let name = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name.ends_with("layer.tar") {
            data = other.clone();
            header.set_size(data.len() as u64);
            header.set_cksum();
        }
        out.append(&header, &data[..]).unwrap();
    }
    out.into_inner().unwrap();

    let err = store.import(&rewritten).unwrap_err();
    assert!(
        matches!(err, StoreError::DiffIdMismatch { .. }),
        "{}",
        chain(&err)
    );
    assert!(
        err.to_string().contains(&real.diff_ids()[0].to_string()),
        "{err}"
    );
    assert_store_empty(store.root());
}

#[test]
fn a_hostile_layer_leaves_nothing() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let mut layer = LayerBuilder::new();
    layer
        .file("ok", 0o644, b"fine")
        .unwrap()
        .file("../escape", 0o644, b"out")
        .unwrap();
    let image = TestImage::from_layers(vec![layer.finish().unwrap()]);
    let layout = image
        .write_oci_layout(&tmp.path().join("oci"), "evil")
        .unwrap();
    let err = store.import(&layout).unwrap_err();
    let msg = chain(&err);
    assert!(matches!(err, StoreError::Unpack { .. }), "{msg}");
    assert!(msg.contains("\"../escape\""), "{msg}");
    assert!(!tmp.path().join("escape").exists());
    assert!(!store.root().join("escape").exists());
    assert_store_empty(store.root());
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let not_tar = tmp.path().join("junk");
    fs::write(&not_tar, vec![7u8; 4096]).unwrap();
    let err = store.import(&not_tar).unwrap_err();
    assert!(err.to_string().contains("junk"), "{err}");

    let empty_dir = tmp.path().join("empty");
    fs::create_dir(&empty_dir).unwrap();
    let err = store.import(&empty_dir).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(
        err.to_string().contains("neither an OCI image layout"),
        "{err}"
    );

    let err = store.import(&tmp.path().join("missing")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert_store_empty(store.root());
}

#[test]
fn an_index_of_platforms_yields_this_machines_image() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox().unwrap();
    let layout = image
        .write_oci_layout(&tmp.path().join("oci"), "multi:1")
        .unwrap();
    // Move the manifest under a nested index next to a foreign platform.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut mine = index["manifests"][0].clone();
    let annotations = mine.as_object_mut().unwrap().remove("annotations").unwrap();
    let mut foreign = mine.clone();
    foreign["platform"]["architecture"] = "s390x".into();
    foreign["digest"] =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [foreign, mine],
    }))
    .unwrap();
    let nested_digest = vaina_image::Digest::of(&nested);
    fs::write(
        layout.join("blobs/sha256").join(nested_digest.hex()),
        &nested,
    )
    .unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested_digest.to_string(),
            "size": nested.len(),
            "annotations": annotations,
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let store = open(tmp.path());
    let imported = store.import(&layout).unwrap();
    assert_eq!(imported[0].id, image.id());
    assert_eq!(
        imported[0].repo_tags[0].to_string(),
        "docker.io/library/multi:1"
    );

    // Only the foreign platform: refused, naming what there is.
    let only_foreign = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [nested_index_entry_foreign()],
    }))
    .unwrap();
    let d = vaina_image::Digest::of(&only_foreign);
    fs::write(layout.join("blobs/sha256").join(d.hex()), &only_foreign).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d.to_string(),
            "size": only_foreign.len(),
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let err = store.import(&layout).unwrap_err();
    assert!(
        matches!(err, StoreError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("linux/s390x"), "{err}");
}

fn nested_index_entry_foreign() -> serde_json::Value {
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "size": 10,
        "platform": { "architecture": "s390x", "os": "linux" },
    })
}

#[test]
fn concurrent_imports_of_one_image_agree() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = TestImage::busybox_two_layers()
        .unwrap()
        .write_oci_layout(&tmp.path().join("oci"), "busybox:two")
        .unwrap();
    let root = tmp.path().join("store");
    ImageStore::open(&root).unwrap();
    // Two store handles, as two processes would have: the lock orders them.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| ImageStore::open(&root).unwrap().import(&layout)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let a = results[0].as_ref().unwrap();
    let b = results[1].as_ref().unwrap();
    assert_eq!(a, b);
    let store = ImageStore::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(entries(&root.join("snapshots")).len(), 2);
    assert_eq!(entries(&root.join("blobs/sha256")).len(), 4);
    assert!(entries(&root.join("tmp")).is_empty());
}
