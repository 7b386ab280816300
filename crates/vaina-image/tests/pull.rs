//! PullImage against a real registry (Debian's `docker-registry`) on
//! 127.0.0.1: test images are pushed byte for byte, pulled, and compared
//! with what importing the same OCI layout stores. Every test routes
//! non-loopback hosts to a recorder ([`guard_outside_traffic`]), so nothing
//! leaves the machine and the mirror tests can prove nothing tried to.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::registry::{
    CuttingProxy, TestRegistry, dockerize_layout, free_port, guard_outside_traffic, push_layout,
};
use common::token::TokenServer;
use common::{assert_store_empty, can_unpack, chain, entries};
use oci_client::secrets::RegistryAuth;
use vaina_image::testimage::{LayerCompression, TestImage, write_oci_index_layout};
use vaina_image::{
    AuthConfig, Digest, Image, ImageStore, LayerProgress, LayerStatus, PullError, RegistryHosts,
};

/// Progress events, kept.
#[derive(Default)]
struct Events(Mutex<Vec<LayerProgress>>);

impl Events {
    fn take(&self) -> Vec<LayerProgress> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl vaina_image::PullProgress for Events {
    fn layer(&self, p: &LayerProgress) {
        self.0.lock().unwrap().push(p.clone());
    }
}

/// The layers that ended with `status`, in the order they did.
fn with_status(events: &[LayerProgress], status: LayerStatus) -> Vec<Digest> {
    events
        .iter()
        .filter(|e| e.status == status)
        .map(|e| e.digest.clone())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A registry, if the test can run here (root for unpacking, the binary).
fn setup() -> Option<TestRegistry> {
    if !can_unpack() {
        return None;
    }
    TestRegistry::start(None)
}

/// A layout of `image` in `dir`, pushed as `repo:tag`; returns its manifest digest.
fn push(reg: &TestRegistry, dir: &Path, image: &TestImage, repo: &str, tag: &str) -> Digest {
    let layout = image
        .write_oci_layout(dir, &format!("{repo}:{tag}"))
        .unwrap();
    runtime().block_on(push_layout(
        &reg.host(),
        &layout,
        repo,
        tag,
        &RegistryAuth::Anonymous,
    ))
}

fn no_hosts(tmp: &Path) -> RegistryHosts {
    RegistryHosts::new(tmp.join("certs.d"))
}

fn hosts_toml(tmp: &Path, registry: &str, text: &str) -> RegistryHosts {
    let dir = tmp.join("certs.d").join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
    no_hosts(tmp)
}

fn pull(
    store: &ImageStore,
    hosts: &RegistryHosts,
    reference: &str,
    auth: Option<&AuthConfig>,
    events: &Events,
) -> Result<Image, PullError> {
    runtime().block_on(store.pull(hosts, reference, auth, events))
}

/// The image as importing `layout` stores it, in a store of its own.
fn imported(tmp: &Path, layout: &Path) -> Image {
    let store = ImageStore::open(tmp.join(format!("import-{}", std::process::id()))).unwrap();
    store.import(layout).unwrap().remove(0)
}

fn assert_same_content(pulled: &Image, imported: &Image) {
    assert_eq!(pulled.id, imported.id);
    assert_eq!(pulled.manifest_digest, imported.manifest_digest);
    assert_eq!(pulled.config_digest, imported.config_digest);
    assert_eq!(pulled.layers, imported.layers);
    assert_eq!(pulled.size, imported.size);
    assert_eq!(pulled.created, imported.created);
}

#[test]
fn pull_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let store = ImageStore::open(tempfile::tempdir().unwrap().path().join("s")).unwrap();
    let hosts = RegistryHosts::default();
    let fut = store.pull(&hosts, "busybox", None, &());
    assert_send(&fut);
}

#[test]
fn pull_by_tag_stores_what_import_stores() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox_two_layers().unwrap();
    let manifest = push(&reg, &tmp.path().join("oci"), &image, "busybox", "1");

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let events = Events::default();
    let name = format!("{}/busybox:1", reg.host());
    let pulled = pull(&store, &no_hosts(tmp.path()), &name, None, &events).unwrap();

    assert_same_content(&pulled, &imported(tmp.path(), &tmp.path().join("oci")));
    assert_eq!(pulled.manifest_digest, manifest);
    assert_eq!(pulled.repo_tags[0].to_string(), name);
    assert_eq!(
        pulled.repo_digests[0].to_string(),
        format!("{}/busybox@{manifest}", reg.host())
    );
    assert_eq!(store.get(&name).unwrap().as_ref(), Some(&pulled));
    assert_eq!(store.list().unwrap(), vec![pulled.clone()]);
    let lower = store.lowerdirs(&pulled).unwrap();
    assert_eq!(
        std::fs::read(lower[0].join("etc/added")).unwrap(),
        b"added by layer 2\n"
    );
    assert!(lower[1].join("bin/busybox").exists());

    let layers: Vec<Digest> = pulled.layers.iter().map(|l| l.digest.clone()).collect();
    let first = events.take();
    let mut downloaded = with_status(&first, LayerStatus::Downloaded);
    downloaded.sort();
    let mut expected = layers.clone();
    expected.sort();
    assert_eq!(downloaded, expected);
    assert!(with_status(&first, LayerStatus::Present).is_empty());
    for e in first.iter().filter(|e| e.status == LayerStatus::Downloaded) {
        assert_eq!(e.done, e.total);
    }
    assert_eq!(entries(&store.root().join("blobs/sha256")).len(), 4);
    assert_eq!(entries(&store.root().join("snapshots")).len(), 2);
    assert!(entries(&store.root().join("ingest")).is_empty());
    assert!(entries(&store.root().join("tmp")).is_empty());

    // Again: nothing downloaded, the same image.
    let again = pull(&store, &no_hosts(tmp.path()), &name, None, &events).unwrap();
    assert_eq!(again, pulled);
    assert_eq!(with_status(&events.take(), LayerStatus::Present).len(), 2);
    for l in &layers {
        assert_eq!(reg.blob_gets("busybox", l), 1, "{l}");
    }
}

#[test]
fn pull_by_digest() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox().unwrap();
    let manifest = push(&reg, &tmp.path().join("oci"), &image, "team/app", "v1");

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let name = format!("{}/team/app@{manifest}", reg.host());
    let pulled = pull(
        &store,
        &no_hosts(tmp.path()),
        &name,
        None,
        &Events::default(),
    )
    .unwrap();
    assert_eq!(pulled.id, image.id());
    assert!(pulled.repo_tags.is_empty());
    assert_eq!(pulled.repo_digests[0].to_string(), name);
    assert_eq!(store.get(&name).unwrap().unwrap().id, image.id());

    // A digest the registry lacks is not found.
    let other = format!("{}/team/app@{}", reg.host(), Digest::of(b"nothing"));
    let err = pull(
        &store,
        &no_hosts(tmp.path()),
        &other,
        None,
        &Events::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
}

#[test]
fn shared_layers_are_downloaded_and_unpacked_once() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let base = TestImage::busybox().unwrap();
    let app = TestImage::busybox_two_layers().unwrap();
    push(&reg, &tmp.path().join("base"), &base, "base", "1");
    push(&reg, &tmp.path().join("app"), &app, "app", "1");

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let hosts = no_hosts(tmp.path());
    let events = Events::default();
    let b = pull(
        &store,
        &hosts,
        &format!("{}/base:1", reg.host()),
        None,
        &events,
    )
    .unwrap();
    events.take();
    let a = pull(
        &store,
        &hosts,
        &format!("{}/app:1", reg.host()),
        None,
        &events,
    )
    .unwrap();
    let events = events.take();

    assert_eq!(a.layers[0], b.layers[0]);
    assert_eq!(
        with_status(&events, LayerStatus::Present),
        [a.layers[0].digest.clone()]
    );
    assert_eq!(
        with_status(&events, LayerStatus::Downloaded),
        [a.layers[1].digest.clone()]
    );
    // The shared layer went over the wire once, for the first image.
    assert_eq!(reg.blob_gets("base", &a.layers[0].digest), 1);
    assert_eq!(reg.blob_gets("app", &a.layers[0].digest), 0);
    assert_eq!(entries(&store.root().join("snapshots")).len(), 2);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn zstd_uncompressed_and_docker_manifests() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let two = TestImage::busybox_two_layers().unwrap();
    let variants = [
        ("gzip", two.clone().cmd(&["gzip"])),
        (
            "zstd",
            two.clone()
                .cmd(&["zstd"])
                .compression(LayerCompression::Zstd),
        ),
        (
            "plain",
            two.clone()
                .cmd(&["plain"])
                .compression(LayerCompression::None),
        ),
        ("docker", two.clone().cmd(&["docker"])),
    ];
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let hosts = no_hosts(tmp.path());
    for (repo, image) in &variants {
        let layout = image
            .write_oci_layout(&tmp.path().join(repo), &format!("{repo}:1"))
            .unwrap();
        if *repo == "docker" {
            dockerize_layout(&layout);
        }
        let digest = runtime().block_on(push_layout(
            &reg.host(),
            &layout,
            repo,
            "1",
            &RegistryAuth::Anonymous,
        ));
        let events = Events::default();
        let pulled = pull(
            &store,
            &hosts,
            &format!("{}/{repo}:1", reg.host()),
            None,
            &events,
        )
        .unwrap_or_else(|e| panic!("{repo}: {}", chain(&e)));
        assert_eq!(pulled.manifest_digest, digest, "{repo}");
        assert_same_content(
            &pulled,
            &imported(&tmp.path().join(format!("i-{repo}")), &layout),
        );
        let config = store.config(&pulled).unwrap();
        assert_eq!(
            config.config().as_ref().unwrap().cmd().as_ref().unwrap()[0],
            *repo
        );
        // New blobs (but the Docker manifest's, which are the gzip
        // image's), and the snapshots of the first image.
        let downloads = if *repo == "docker" { 0 } else { 2 };
        let events = events.take();
        assert_eq!(
            with_status(&events, LayerStatus::Downloaded).len(),
            downloads,
            "{repo}"
        );
        assert_eq!(
            with_status(&events, LayerStatus::Present).len(),
            2 - downloads,
            "{repo}"
        );
        assert_eq!(entries(&store.root().join("snapshots")).len(), 2, "{repo}");
    }
    assert_eq!(store.list().unwrap().len(), 4);
}

#[test]
fn multi_platform_index_pulls_this_machines_image() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let host_arch = vaina_image::source::host_arch();
    let other_arch = if host_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let native = TestImage::busybox().unwrap();
    let foreign = TestImage::busybox().unwrap().architecture(other_arch);
    let layout = write_oci_index_layout(
        &tmp.path().join("oci"),
        "multi:1",
        &[foreign.clone(), native.clone()],
    )
    .unwrap();
    let index = runtime().block_on(push_layout(
        &reg.host(),
        &layout,
        "multi",
        "1",
        &RegistryAuth::Anonymous,
    ));

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let hosts = no_hosts(tmp.path());
    let name = format!("{}/multi:1", reg.host());
    let pulled = pull(&store, &hosts, &name, None, &Events::default()).unwrap();
    assert_eq!(pulled.id, native.id());
    assert_ne!(pulled.manifest_digest, index);
    // The repo digest is what the name resolves to: the index, as containerd records it.
    let by_digest = format!("{}/multi@{index}", reg.host());
    assert_eq!(pulled.repo_digests[0].to_string(), by_digest);
    assert_eq!(store.get(&by_digest).unwrap().unwrap().id, native.id());
    assert_eq!(
        reg.blob_gets("multi", &foreign.id()),
        0,
        "the other platform's config"
    );
    assert_eq!(reg.blob_gets("multi", &native.id()), 1);

    // By the index digest, into another store.
    let store2 = ImageStore::open(tmp.path().join("store2")).unwrap();
    let again = pull(&store2, &hosts, &by_digest, None, &Events::default()).unwrap();
    assert_eq!(again.id, native.id());
    assert_eq!(again.repo_digests, pulled.repo_digests);

    // An index without this machine's platform says what it has.
    let only_foreign =
        write_oci_index_layout(&tmp.path().join("oci2"), "foreign:1", &[foreign]).unwrap();
    runtime().block_on(push_layout(
        &reg.host(),
        &only_foreign,
        "foreign",
        "1",
        &RegistryAuth::Anonymous,
    ));
    let err = pull(
        &store,
        &hosts,
        &format!("{}/foreign:1", reg.host()),
        None,
        &Events::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Unsupported { .. }), "{msg}");
    assert!(
        msg.contains(&format!("no linux/{host_arch} image")) && msg.contains(other_arch),
        "{msg}"
    );
}

#[test]
fn mirror_keeps_the_repository_path_and_the_registry_is_not_contacted() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox().unwrap();
    push(
        &reg,
        &tmp.path().join("oci"),
        &image,
        "e2e-test-images/busybox",
        "1.29",
    );
    let hosts = hosts_toml(
        tmp.path(),
        "registry.k8s.io",
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.host()
        ),
    );
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let name = "registry.k8s.io/e2e-test-images/busybox:1.29";
    let pulled = pull(&store, &hosts, name, None, &Events::default()).unwrap();
    assert_eq!(pulled.id, image.id());
    assert_eq!(pulled.repo_tags[0].to_string(), name);
    assert!(
        pulled.repo_digests[0]
            .to_string()
            .starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:")
    );
    assert!(
        reg.access_log()
            .contains("GET /v2/e2e-test-images/busybox/manifests/1.29?ns=registry.k8s.io"),
        "{}",
        reg.access_log()
    );
    assert_eq!(guard_outside_traffic().seen(), Vec::<String>::new());
}

#[test]
fn server_replaces_the_registry() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox().unwrap();
    push(
        &reg,
        &tmp.path().join("oci"),
        &image,
        "library/busybox",
        "1.36",
    );
    let hosts = hosts_toml(
        tmp.path(),
        "docker.io",
        &format!("server = \"http://{}\"\n", reg.host()),
    );
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let pulled = pull(&store, &hosts, "busybox:1.36", None, &Events::default()).unwrap();
    assert_eq!(pulled.id, image.id());
    assert_eq!(
        pulled.repo_tags[0].to_string(),
        "docker.io/library/busybox:1.36"
    );
    assert_eq!(guard_outside_traffic().seen(), Vec::<String>::new());
}

#[test]
fn configured_hosts_down_fail_without_trying_the_registry() {
    let outside = guard_outside_traffic();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let (mirror, server) = (free_port(), free_port());
    let hosts = hosts_toml(
        tmp.path(),
        "registry.k8s.io",
        &format!(
            "server = \"http://127.0.0.1:{server}\"\n[host.\"http://127.0.0.1:{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    );
    let err = pull(
        &store,
        &hosts,
        "registry.k8s.io/pause:3.9",
        None,
        &Events::default(),
    )
    .unwrap_err();
    let msg = chain(&err);
    assert!(matches!(err, PullError::Registry { .. }), "{msg}");
    assert!(msg.contains(&format!("http://127.0.0.1:{server}")), "{msg}");
    assert_eq!(
        outside.seen(),
        Vec::<String>::new(),
        "the registry itself was tried"
    );

    // The control: without `server`, the registry is the last host, and
    // that try reaches the recorder (never DNS), which proves the check
    // above would have seen one.
    let hosts = hosts_toml(
        tmp.path(),
        "registry.k8s.io",
        &format!("[host.\"http://127.0.0.1:{mirror}\"]\n"),
    );
    let err = pull(
        &store,
        &hosts,
        "registry.k8s.io/pause:3.9",
        None,
        &Events::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{}", chain(&err));
    let seen = outside.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|l| l == "CONNECT registry.k8s.io:443 HTTP/1.1"),
        "{seen:?}"
    );
    assert_store_empty(store.root());
}

#[test]
fn missing_images_are_not_found() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    push(
        &reg,
        &tmp.path().join("oci"),
        &TestImage::busybox().unwrap(),
        "busybox",
        "1",
    );
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    for name in [
        format!("{}/nope:1", reg.host()),
        format!("{}/busybox:2", reg.host()),
    ] {
        let err = pull(
            &store,
            &no_hosts(tmp.path()),
            &name,
            None,
            &Events::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PullError::NotFound { .. }), "{msg}");
        assert!(msg.contains(&name) && msg.contains("not found"), "{msg}");
    }
    assert_store_empty(store.root());
}

#[test]
fn basic_auth_with_right_and_wrong_credentials() {
    if !can_unpack() {
        return;
    }
    let Some(reg) = TestRegistry::start(Some(("alice", "s3cret-pw"))) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox().unwrap();
    let layout = image
        .write_oci_layout(&tmp.path().join("oci"), "private:1")
        .unwrap();
    runtime().block_on(push_layout(
        &reg.host(),
        &layout,
        "private",
        "1",
        &RegistryAuth::Basic("alice".into(), "s3cret-pw".into()),
    ));
    let name = format!("{}/private:1", reg.host());
    let hosts = no_hosts(tmp.path());

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong-pw".into(),
        ..Default::default()
    };
    let err = pull(&store, &hosts, &name, Some(&wrong), &Events::default()).unwrap_err();
    let msg = chain(&err);
    assert!(matches!(err, PullError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("not authorized") && msg.contains(&name),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-pw") && !format!("{err:?}").contains("wrong-pw"),
        "{msg}"
    );
    let err = pull(&store, &hosts, &name, None, &Events::default()).unwrap_err();
    assert!(
        matches!(err, PullError::Unauthorized { .. }),
        "{}",
        chain(&err)
    );
    assert_store_empty(store.root());

    let right = AuthConfig {
        username: "alice".into(),
        password: "s3cret-pw".into(),
        ..Default::default()
    };
    let pulled = pull(&store, &hosts, &name, Some(&right), &Events::default()).unwrap();
    assert_eq!(pulled.id, image.id());

    use base64::Engine as _;
    let as_auth = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw"),
        ..Default::default()
    };
    let store2 = ImageStore::open(tmp.path().join("store2")).unwrap();
    let pulled = pull(&store2, &hosts, &name, Some(&as_auth), &Events::default()).unwrap();
    assert_eq!(pulled.id, image.id());
}

#[test]
fn bearer_token_service_with_password_identity_token_and_registry_token() {
    if !can_unpack() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(tmp.path(), "bob", "pa55-word", "refresh-me");
    let Some(reg) = TestRegistry::start_with_auth(|_| tokens.registry_config()) else {
        return;
    };
    let image = TestImage::busybox().unwrap();
    let layout = image
        .write_oci_layout(&tmp.path().join("oci"), "private:1")
        .unwrap();
    runtime().block_on(push_layout(
        &reg.host(),
        &layout,
        "private",
        "1",
        &RegistryAuth::Basic("bob".into(), "pa55-word".into()),
    ));
    let name = format!("{}/private:1", reg.host());
    let hosts = no_hosts(tmp.path());
    let store = ImageStore::open(tmp.path().join("store")).unwrap();

    for (what, auth) in [
        (
            "wrong password",
            Some(AuthConfig {
                username: "bob".into(),
                password: "guess-word".into(),
                ..Default::default()
            }),
        ),
        (
            "wrong identity token",
            Some(AuthConfig {
                identity_token: "stale-token".into(),
                ..Default::default()
            }),
        ),
        ("no credentials", None),
    ] {
        let err = pull(&store, &hosts, &name, auth.as_ref(), &Events::default()).unwrap_err();
        let msg = format!("{} {err:?}", chain(&err));
        assert!(
            matches!(err, PullError::Unauthorized { .. }),
            "{what}: {msg}"
        );
        for secret in ["guess-word", "stale-token"] {
            assert!(!msg.contains(secret), "{what}: {msg}");
        }
    }
    assert_store_empty(store.root());

    for (what, auth) in [
        (
            "password",
            AuthConfig {
                username: "bob".into(),
                password: "pa55-word".into(),
                ..Default::default()
            },
        ),
        (
            "identity token",
            AuthConfig {
                identity_token: "refresh-me".into(),
                ..Default::default()
            },
        ),
        (
            "registry token",
            AuthConfig {
                registry_token: tokens.token("private", &["pull"]),
                ..Default::default()
            },
        ),
    ] {
        let store = ImageStore::open(tmp.path().join(what.replace(' ', "-"))).unwrap();
        let pulled = pull(&store, &hosts, &name, Some(&auth), &Events::default())
            .unwrap_or_else(|e| panic!("{what}: {}", chain(&e)));
        assert_eq!(pulled.id, image.id(), "{what}");
    }
}

#[test]
fn corrupt_blob_is_refused_and_nothing_is_kept() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox_two_layers().unwrap();
    push(&reg, &tmp.path().join("oci"), &image, "busybox", "1");
    let layer = imported(tmp.path(), &tmp.path().join("oci")).layers[0]
        .digest
        .clone();
    // Same size, other bytes: only the digest can tell.
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let name = format!("{}/busybox:1", reg.host());
    let err = pull(
        &store,
        &no_hosts(tmp.path()),
        &name,
        None,
        &Events::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    match &err {
        PullError::Corrupt { digest, .. } => assert_eq!(*digest, layer),
        other => panic!("{}", chain(other)),
    }
    assert!(
        msg.contains(&layer.to_string()) && msg.contains("corrupt"),
        "{msg}"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(entries(&store.root().join("blobs/sha256")).is_empty());
    assert!(
        !entries(&store.root().join("ingest"))
            .iter()
            .any(|n| n.contains(layer.hex())),
        "the corrupt download is gone"
    );
    store.gc().unwrap();
    assert_store_empty(store.root());
}

#[test]
fn interrupted_pull_is_retried() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox_two_layers().unwrap();
    push(&reg, &tmp.path().join("oci"), &image, "busybox", "1");
    let layers = imported(tmp.path(), &tmp.path().join("oci")).layers;
    let proxy = CuttingProxy::start(reg.port);
    let hosts = hosts_toml(
        tmp.path(),
        "registry.k8s.io",
        &format!("server = \"http://127.0.0.1:{}\"\n", proxy.port),
    );
    let name = "registry.k8s.io/busybox:1";
    let store = ImageStore::open(tmp.path().join("store")).unwrap();

    // The connection dies in the middle of the big layer.
    proxy.arm(layers[0].size / 2);
    let err = pull(&store, &hosts, name, None, &Events::default()).unwrap_err();
    assert_eq!(proxy.cuts(), 1);
    assert!(matches!(err, PullError::Registry { .. }), "{}", chain(&err));
    assert!(store.list().unwrap().is_empty());
    assert!(!store.blob_path(&layers[0].digest).exists());

    // A partial file as a killed pull leaves it: overwritten, not used.
    let partial = store
        .root()
        .join("ingest")
        .join(format!("{}.partial", layers[0].digest.hex()));
    std::fs::write(&partial, b"half a layer").unwrap();

    let events = Events::default();
    let pulled = pull(&store, &hosts, name, None, &events).unwrap();
    assert_eq!(pulled.id, image.id());
    assert!(with_status(&events.take(), LayerStatus::Downloaded).contains(&layers[0].digest));
    assert!(entries(&store.root().join("ingest")).is_empty());
    assert!(store.lowerdirs(&pulled).is_ok());
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    let Some(reg) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let image = TestImage::busybox_two_layers().unwrap();
    push(&reg, &tmp.path().join("oci"), &image, "busybox", "1");
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let hosts = no_hosts(tmp.path());
    let name = format!("{}/busybox:1", reg.host());
    let events = Events::default();
    let barrier = std::sync::Barrier::new(4);
    let results: Vec<Result<Image, PullError>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    // Each thread with its own runtime, as separate callers.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(store.pull(&hosts, &name, None, &events))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let images: Vec<Image> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{}", chain(&e))))
        .collect();
    assert!(images.iter().all(|i| i.id == image.id()));
    assert_eq!(store.list().unwrap().len(), 1);
    let stored = &store.list().unwrap()[0];
    assert_eq!(stored.repo_tags.len(), 1);
    for blob in stored
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain([&stored.config_digest])
    {
        assert_eq!(reg.blob_gets("busybox", blob), 1, "{blob}");
    }
    let events = events.take();
    assert_eq!(with_status(&events, LayerStatus::Downloaded).len(), 2);
    assert_eq!(with_status(&events, LayerStatus::Present).len(), 6);
    assert!(entries(&store.root().join("ingest")).is_empty());
}

#[test]
fn malformed_hosts_toml_names_the_file() {
    guard_outside_traffic();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = hosts_toml(
        tmp.path(),
        "registry.k8s.io",
        "server = \"http://127.0.0.1:5000\n",
    );
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let err = pull(
        &store,
        &hosts,
        "registry.k8s.io/pause:3.9",
        None,
        &Events::default(),
    )
    .unwrap_err();
    let file = tmp.path().join("certs.d/registry.k8s.io/hosts.toml");
    let msg = err.to_string();
    assert!(matches!(err, PullError::Hosts(_)), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
    assert_eq!(guard_outside_traffic().seen(), Vec::<String>::new());
}
