//! End to end: the CRI ImageService of `vainad` (started inside a throwaway node namespace
//! with a temp root) over its socket, with the busybox test image imported into the
//! daemon's store while it runs, directly and through the `vaina` CLI.

mod common;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;
use vaina_image::ImageStore;
use vaina_image::testimage::{TestImage, busybox_oci_layout};
use vaina_testkit::can_run_ns_tests;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// The ImageService calls, on the shared CRI client.
impl Client {
    fn list_images(&mut self, filter: Option<&str>) -> Vec<cri::Image> {
        let c = &mut self.c.image;
        let filter = filter.map(|f| cri::ImageFilter { image: spec(f) });
        self.rt
            .block_on(c.list_images(cri::ListImagesRequest { filter }))
            .unwrap()
            .into_inner()
            .images
    }

    fn image_status(&mut self, image: &str, verbose: bool) -> cri::ImageStatusResponse {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.image_status(cri::ImageStatusRequest {
                image: spec(image),
                verbose,
            }))
            .unwrap()
            .into_inner()
    }

    fn pull_image(&mut self, image: &str) -> Result<String, tonic::Status> {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.pull_image(cri::PullImageRequest {
                image: spec(image),
                ..Default::default()
            }))
            .map(|r| r.into_inner().image_ref)
    }

    fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.remove_image(cri::RemoveImageRequest { image: spec(image) }))
            .map(|_| ())
    }

    fn image_fs_info(&mut self) -> cri::FilesystemUsage {
        let c = &mut self.c.image;
        let mut r = self
            .rt
            .block_on(c.image_fs_info(cri::ImageFsInfoRequest {}))
            .unwrap()
            .into_inner();
        assert_eq!(r.image_filesystems.len(), 1);
        r.image_filesystems.remove(0)
    }
}

/// Sends the daemon's docker.io pulls to a port nothing listens on (its registry config
/// dir is ROOT/certs.d), so no test tries the real registry.
fn no_registry_for_docker_io(d: &Daemon) {
    let dir = d.root.join("certs.d/docker.io");
    std::fs::create_dir_all(&dir).unwrap();
    let port = d.node.run(vaina_testkit::registry::free_port);
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://127.0.0.1:{port}\"\n"),
    )
    .unwrap();
}

#[test]
fn image_service_lists_resolves_pulls_and_removes_local_images() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut c = d.client();
    assert!(c.list_images(None).is_empty());
    let empty = c.image_fs_info();

    // Imported while the daemon runs: the store's lock makes that safe, and the daemon reads
    // records on each call.
    let layout = d.node.path("busybox-oci");
    busybox_oci_layout(&layout, "busybox").unwrap();
    let imported = ImageStore::open(d.store_dir())
        .unwrap()
        .import(&layout)
        .unwrap();
    let id = TestImage::busybox().unwrap().id().to_string();
    assert_eq!(imported[0].id.to_string(), id);

    let images = c.list_images(None);
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.id, id);
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    assert_eq!(image.repo_tags, vec![BUSYBOX.to_string()]);
    assert_eq!(image.repo_digests.len(), 1);
    assert!(image.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    assert!(image.size > 0);
    assert_eq!(image.spec.as_ref().unwrap().image, id);
    assert!(!image.pinned);
    // The test image's config has no User.
    assert_eq!((image.uid, image.username.as_str()), (None, ""));
    assert_eq!(c.list_images(Some("busybox")), images);
    assert!(c.list_images(Some("nginx")).is_empty());

    // ImageStatus by short reference, full reference, id, id prefix and repo digest.
    let digest_ref = image.repo_digests[0].clone();
    let hex = id.strip_prefix("sha256:").unwrap();
    for name in [
        "busybox",
        "busybox:latest",
        BUSYBOX,
        &id,
        &hex[..12],
        &digest_ref,
    ] {
        let st = c.image_status(name, false);
        assert_eq!(st.image.as_ref(), Some(image), "ImageStatus {name}");
        assert!(st.info.is_empty());
    }
    let verbose = c.image_status("busybox", true);
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["id"], id.as_str());
    assert_eq!(
        info["imageSpec"]["config"]["Cmd"],
        serde_json::json!(["sh"])
    );
    assert_eq!(info["imageSpec"]["rootfs"]["type"], "layers");
    // Missing: no error, no image (kubelet then pulls).
    let missing = c.image_status("nginx", true);
    assert_eq!(missing.image, None);
    assert!(missing.info.is_empty());

    // PullImage answers from the store; anything else is pulled, here from a docker.io
    // "registry" nothing listens on (no test reaches the real one; registry pulls are
    // tested in pull.rs): Unavailable, naming the image.
    no_registry_for_docker_io(&d);
    assert_eq!(c.pull_image("busybox").unwrap(), id);
    assert_eq!(c.pull_image(BUSYBOX).unwrap(), id);
    let e = c.pull_image("nginx:1.27").unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("docker.io/library/nginx:1.27"),
        "{}",
        e.message()
    );
    let e = c.pull_image("Not/Valid").unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c.pull_image("").unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The store's own usage, under its root.
    let fs = c.image_fs_info();
    assert_eq!(
        fs.fs_id.unwrap().mountpoint,
        d.store_dir().display().to_string()
    );
    let used = fs.used_bytes.unwrap().value;
    assert!(
        used > empty.used_bytes.unwrap().value + 500_000,
        "busybox (about 1 MB) counted: {used}"
    );
    assert!(fs.inodes_used.unwrap().value > 0);
    assert!(fs.timestamp > 0);

    // RemoveImage by short name removes the image; again, and for what never existed: Ok.
    c.remove_image("busybox").unwrap();
    assert!(c.list_images(None).is_empty());
    assert_eq!(c.image_status(&id, false).image, None);
    assert_eq!(
        c.pull_image("busybox").unwrap_err().code(),
        Code::Unavailable
    );
    c.remove_image("busybox").unwrap();
    c.remove_image(&id).unwrap();
    c.remove_image("nginx").unwrap();
    assert!(c.image_fs_info().used_bytes.unwrap().value < used);
}

#[test]
fn cli_imports_lists_inspects_pulls_and_removes() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let layout = d.node.path("busybox-oci");
    busybox_oci_layout(&layout, "busybox").unwrap();
    let id = TestImage::busybox().unwrap().id().to_string();

    // `image import --root` writes the store of `vainad --root` with the same ROOT.
    let out = d.vaina_ok(&[
        "image",
        "import",
        "--root",
        d.root.to_str().unwrap(),
        layout.to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), format!("Imported {BUSYBOX} ({id})"));

    let out = d.vaina_ok(&["images"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    // Columns are separated by runs of spaces; "IMAGE ID" has a single one.
    let header: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(header, ["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..3],
        ["docker.io/library/busybox", "latest", &id[7..20]]
    );
    assert!(row[3].ends_with("MB") || row[3].ends_with("kB"), "{out}");
    assert_eq!(d.vaina_ok(&["images", "-q", "busybox"]).trim(), id);
    assert_eq!(d.vaina_ok(&["images", "-q", "nginx"]).trim(), "");
    let json: serde_json::Value =
        serde_json::from_str(&d.vaina_ok(&["images", "-o", "json"])).unwrap();
    assert_eq!(json["images"][0]["id"], id.as_str());

    let json: serde_json::Value =
        serde_json::from_str(&d.vaina_ok(&["inspecti", "busybox"])).unwrap();
    assert_eq!(json["status"]["id"], id.as_str());
    assert_eq!(json["info"]["info"]["imageSpec"]["config"]["Cmd"][0], "sh");

    assert_eq!(
        d.vaina_ok(&["pull", "busybox"]).trim(),
        format!("Image is up to date for {id}")
    );
    no_registry_for_docker_io(&d);
    let out = d.vaina(&["pull", "nginx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unavailable") && err.contains("nginx"),
        "{err}"
    );

    assert_eq!(
        d.vaina_ok(&["rmi", "busybox"]).trim(),
        format!("Deleted: {BUSYBOX}")
    );
    assert_eq!(d.vaina_ok(&["images", "-q"]).trim(), "");
    let out = d.vaina(&["rmi", "busybox"]);
    assert!(
        !out.status.success(),
        "rmi of a missing image fails in the CLI"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));
}
