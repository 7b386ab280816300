//! End to end, issue 5: vainad (in a throwaway node namespace, temp root) pulls images from
//! a local `docker-registry` that listens on 127.0.0.1 of the same namespace, reached
//! through a `hosts.toml` under the daemon's registry config dir (ROOT/certs.d with
//! `--root`), then runs a pod from the pulled image.
//!
//! Network rule: the daemon gets `HTTP(S)_PROXY` pointing at a recorder in its namespace
//! (loopback excepted), so a request for any real host name goes to the recorder instead
//! of DNS or the network, and the tests assert what it saw.

mod common;

use std::path::Path;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;
use vaina_image::testimage::{TestImage, busybox_oci_layout};
use vaina_testkit::can_run_ns_tests;
use vaina_testkit::registry::{
    OutsideTraffic, Registry, RegistryAuth, have_registry, mirror_hosts_toml, server_hosts_toml,
    write_hosts_toml,
};

const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.0";
const REPO: &str = "e2e-test-images/busybox";

/// A daemon whose outside traffic goes to a recorder in its node namespace.
fn start() -> Option<(Daemon, OutsideTraffic)> {
    if !can_run_ns_tests() || !have_registry() {
        return None;
    }
    let mut d = Daemon::start();
    let outside = OutsideTraffic::start(Some(&d.node.ns));
    // The harness spawns vainad with this process's environment: restart it with the
    // recorder as its proxy. SAFETY: no other thread touches the environment now (the
    // daemon is a child process; nextest runs each test in its own process).
    d.kill9();
    unsafe { outside.set_process_env() };
    d.spawn();
    Some((d, outside))
}

/// The daemon's registry config dir (`vainad --root ROOT` → ROOT/certs.d).
fn certs_d(d: &Daemon) -> std::path::PathBuf {
    d.root.join("certs.d")
}

/// Pushes the busybox test image as `repo:tag`; returns the image id.
fn push_busybox(d: &Daemon, reg: &Registry, repo: &str, tag: &str, auth: &RegistryAuth) -> String {
    let layout = d.node.path(&format!("oci-{}", tag));
    busybox_oci_layout(&layout, "busybox").unwrap();
    reg.push(&layout, repo, tag, auth);
    TestImage::busybox().unwrap().id().to_string()
}

impl Client {
    fn pull(
        &mut self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            }))
            .map(|r| r.into_inner().image_ref)
    }

    fn rmi(&mut self, image: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
            }))
            .map(|_| ())
    }

    fn images(&mut self) -> Vec<cri::Image> {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.list_images(cri::ListImagesRequest { filter: None }))
            .unwrap()
            .into_inner()
            .images
    }
}

/// The names in `dir`, sorted; empty if it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn pod_runs_from_an_image_pulled_through_a_mirror() {
    let Some((d, outside)) = start() else { return };
    let reg = Registry::start(Some(&d.node.ns), None).unwrap();
    let id = push_busybox(&d, &reg, REPO, "1.0", &RegistryAuth::Anonymous);
    write_hosts_toml(
        &certs_d(&d),
        "registry.k8s.io",
        &mirror_hosts_toml(&reg.host()),
    );
    let mut c = d.client();
    let store_before = c.images();
    assert!(store_before.is_empty());

    // Through the CLI, as an operator would; its bars are hidden (stderr is no terminal).
    let out = d.vaina_ok(&["pull", IMAGE]);
    assert_eq!(out.trim(), format!("Image is up to date for {id}"));
    // The mirror was asked on behalf of registry.k8s.io; nothing went anywhere else.
    let log = reg.access_log();
    assert!(
        log.contains(&format!("GET /v2/{REPO}/manifests/1.0?ns=registry.k8s.io")),
        "{log}"
    );
    assert_eq!(outside.seen(), Vec::<String>::new());
    let images = c.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, id);
    assert_eq!(images[0].repo_tags, vec![IMAGE.to_string()]);
    assert!(
        images[0].repo_digests[0].starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        "{:?}",
        images[0].repo_digests
    );
    let table = d.vaina_ok(&["images"]);
    assert!(
        table.contains("registry.k8s.io/e2e-test-images/busybox") && table.contains("1.0"),
        "{table}"
    );

    // Pulled again: the stored image, no registry request.
    let requests = reg.access_log().lines().count();
    assert_eq!(c.pull(IMAGE, None).unwrap(), id);
    assert_eq!(reg.access_log().lines().count(), requests);

    // A pod and a container from it.
    let pod_cfg = pod_config("pulled");
    let pod = c.run_pod(pod_cfg.clone()).unwrap();
    let mut cfg = container_config("sleeper", &["sleep", "3600"]);
    cfg.image = Some(cri::ImageSpec {
        image: IMAGE.into(),
        ..Default::default()
    });
    let ctr = c.run_container(&pod, &pod_cfg, cfg).unwrap();
    assert_eq!(
        c.container_status(&ctr).unwrap().state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        c.exec(&ctr, &["echo", "ok"]),
        ("ok\n".into(), String::new(), 0)
    );
    let out = d.vaina_ok(&["exec", "-s", &ctr, "echo", "ok"]);
    assert_eq!(out.trim(), "ok");

    // In use: RemoveImage refuses, naming the container.
    let e = c.rmi(IMAGE).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&ctr), "{}", e.message());

    c.stop_container(&ctr, 2).unwrap();
    c.remove_container(&ctr).unwrap();
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();
    assert_eq!(
        d.vaina_ok(&["rmi", IMAGE]).trim(),
        format!("Deleted: {IMAGE}")
    );

    // Nothing is left: no image, blob, snapshot or download; no pod, mount or process.
    assert!(c.images().is_empty());
    for dir in ["images", "blobs/sha256", "snapshots", "ingest", "tmp"] {
        assert_eq!(
            entries(&d.store_dir().join(dir)),
            Vec::<String>::new(),
            "{dir}"
        );
    }
    assert!(c.list_pods().is_empty());
    assert_eq!(d.mounts(), Vec::<String>::new());
    assert_eq!(d.processes(), Vec::<i32>::new());
    assert_eq!(entries(&d.root.join("run/netns")), Vec::<String>::new());
    assert_eq!(d.reservations(), 0);
    assert_eq!(outside.seen(), Vec::<String>::new());
}

#[test]
fn missing_images_and_bad_hosts_config_get_clear_errors() {
    let Some((d, outside)) = start() else { return };
    let reg = Registry::start(Some(&d.node.ns), None).unwrap();
    push_busybox(&d, &reg, REPO, "1.0", &RegistryAuth::Anonymous);
    let mut c = d.client();

    // `server` replaces registry.k8s.io: a tag it lacks is NotFound, naming the image.
    write_hosts_toml(
        &certs_d(&d),
        "registry.k8s.io",
        &server_hosts_toml(&reg.host()),
    );
    let missing = "registry.k8s.io/e2e-test-images/busybox:9.9";
    let e = c.pull(missing, None).unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains(missing) && e.message().contains(&reg.host()),
        "{}",
        e.message()
    );
    let e = c
        .pull("registry.k8s.io/e2e-test-images/nothing:1.0", None)
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let out = d.vaina(&["pull", missing]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound") && err.contains(missing), "{err}");
    // No half-made state: no record, no blob left behind.
    assert!(c.images().is_empty());
    assert_eq!(entries(&d.store_dir().join("images")), Vec::<String>::new());
    assert_eq!(outside.seen(), Vec::<String>::new());

    // As a mirror only, the registry itself is the last host: reached only through the
    // proxy (the recorder), which answers 502: Unavailable, and nothing left the node.
    write_hosts_toml(
        &certs_d(&d),
        "registry.k8s.io",
        &mirror_hosts_toml(&reg.host()),
    );
    let e = c.pull(missing, None).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(missing), "{}", e.message());
    let seen = outside.seen();
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|l| l == "CONNECT registry.k8s.io:443 HTTP/1.1"),
        "{seen:?}"
    );

    // A registry nothing listens on: Unavailable.
    let closed = vaina_testkit::registry::free_port();
    write_hosts_toml(
        &certs_d(&d),
        "closed.example",
        &server_hosts_toml(&format!("127.0.0.1:{closed}")),
    );
    let e = c.pull("closed.example/busybox:1.0", None).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // A malformed hosts.toml: InvalidArgument naming the file.
    write_hosts_toml(
        &certs_d(&d),
        "broken.example",
        "server = \"http://127.0.0.1:1\n",
    );
    let e = c.pull("broken.example/busybox:1.0", None).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("broken.example/hosts.toml"),
        "{}",
        e.message()
    );
    // A bad reference: InvalidArgument.
    let e = c.pull("Not/Valid", None).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(c.images().is_empty());
}

#[test]
fn wrong_credentials_are_unauthenticated_and_never_shown() {
    let Some((d, outside)) = start() else { return };
    let reg = Registry::start(Some(&d.node.ns), Some(("vaina", "s3cret-pw"))).unwrap();
    let right = RegistryAuth::Basic("vaina".into(), "s3cret-pw".into());
    let id = push_busybox(&d, &reg, "team/busybox", "1.0", &right);
    write_hosts_toml(
        &certs_d(&d),
        "private.example",
        &server_hosts_toml(&reg.host()),
    );
    let image = "private.example/team/busybox:1.0";
    let mut c = d.client();

    let e = c.pull(image, None).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let wrong = cri::AuthConfig {
        username: "vaina".into(),
        password: "wrong-pw-123".into(),
        ..Default::default()
    };
    let e = c.pull(image, Some(wrong)).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains(image) && !e.message().contains("wrong-pw-123"),
        "{}",
        e.message()
    );
    let out = d.vaina(&["pull", "--creds", "vaina:wrong-pw-123", image]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthenticated") && !err.contains("wrong-pw-123"),
        "{err}"
    );
    // `auth` that is not base64 of user:password.
    let out = d.vaina(&["pull", "--auth", "not base64!", image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("InvalidArgument") && !err.contains("not base64!"),
        "{err}"
    );
    assert!(c.images().is_empty());

    // The right ones, as `auth` (base64 of "vaina:s3cret-pw").
    let out = d.vaina_ok(&["pull", "--auth", "dmFpbmE6czNjcmV0LXB3", image]);
    assert_eq!(out.trim(), format!("Image is up to date for {id}"));
    c.rmi(image).unwrap();
    // And as --creds.
    let out = d.vaina_ok(&["pull", "--creds", "vaina:s3cret-pw", image]);
    assert_eq!(out.trim(), format!("Image is up to date for {id}"));
    c.rmi(image).unwrap();
    assert!(c.images().is_empty());
    assert_eq!(outside.seen(), Vec::<String>::new());
}

#[test]
fn image_status_reports_a_running_pulls_layers() {
    use std::io::Read;
    let Some((d, outside)) = start() else { return };
    let reg = Registry::start(Some(&d.node.ns), None).unwrap();
    // busybox + 16 MiB of random data, so the pull lasts long enough to be watched.
    let mut data = vec![0u8; 16 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let mut big = vaina_image::testimage::LayerBuilder::new();
    big.file("big", 0o644, &data).unwrap();
    let layers = vec![
        vaina_image::testimage::busybox_layer().unwrap(),
        big.finish().unwrap(),
    ];
    let layout = TestImage::from_layers(layers)
        .write_oci_layout(&d.node.path("oci-big"), "big")
        .unwrap();
    reg.push(&layout, "team/big", "1.0", &RegistryAuth::Anonymous);
    write_hosts_toml(
        &certs_d(&d),
        "private.example",
        &server_hosts_toml(&reg.host()),
    );
    let image = "private.example/team/big:1.0";

    let mut puller = d.client();
    let pull = std::thread::spawn(move || puller.pull(image, None));
    let mut c = d.client();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    while !pull.is_finished() {
        let st = c.image_status_verbose(image);
        if let Some(p) = st.info.get("pullProgress") {
            assert_eq!(st.image, None, "no image while it is pulled");
            seen.push(serde_json::from_str(p).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let id = pull.join().unwrap().unwrap();
    let layers: Vec<&serde_json::Value> = seen.iter().flat_map(|s| s.as_array().unwrap()).collect();
    assert!(!layers.is_empty(), "progress seen while pulling: {seen:?}");
    for l in &layers {
        let (done, total) = (l["done"].as_u64().unwrap(), l["total"].as_u64().unwrap());
        assert!(done <= total && total > 0, "{l}");
        assert!(l["digest"].as_str().unwrap().starts_with("sha256:"), "{l}");
        assert!(
            ["waiting", "downloading", "downloaded", "present"]
                .contains(&l["status"].as_str().unwrap()),
            "{l}"
        );
    }
    // Done: the image, and no progress any more.
    let st = c.image_status_verbose(image);
    assert_eq!(st.image.unwrap().id, id);
    assert!(!st.info.contains_key("pullProgress"));
    c.rmi(image).unwrap();
    assert_eq!(outside.seen(), Vec::<String>::new());
}

impl Client {
    fn image_status_verbose(&mut self, image: &str) -> cri::ImageStatusResponse {
        let c = &mut self.c.image;
        self.rt
            .block_on(c.image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: true,
            }))
            .unwrap()
            .into_inner()
    }
}
