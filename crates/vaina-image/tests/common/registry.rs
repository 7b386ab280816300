//! A real registry for pull tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1, test images pushed to it with oci-client, and two
//! TCP helpers: a recorder that stands in for every non-loopback host (so
//! no test resolves a name or leaves the machine, and a test can prove no
//! request went out), and a proxy that cuts a connection half-way.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use vaina_image::Digest;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Requests that were meant for hosts outside this machine.
pub struct OutsideTraffic {
    seen: Arc<Mutex<Vec<String>>>,
}

impl OutsideTraffic {
    /// The request lines received (`CONNECT registry.k8s.io:443 HTTP/1.1`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Points `HTTP(S)_PROXY` at a recorder on 127.0.0.1 that answers 502 to
/// everything, with `NO_PROXY` for loopback: a request for any other host
/// reaches the recorder instead of DNS or the network. Call first in every
/// test, before any client exists (clients read the variables when built).
pub fn guard_outside_traffic() -> &'static OutsideTraffic {
    static GUARD: OnceLock<OutsideTraffic> = OnceLock::new();
    GUARD.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let head = read_head(&mut conn);
                let line = head.lines().next().unwrap_or_default().to_owned();
                record.lock().unwrap().push(line);
                let _ = conn.write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        // SAFETY: set once, before the test builds any client or runtime;
        // nextest runs each test in its own process.
        unsafe {
            for var in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
            ] {
                std::env::set_var(var, &proxy);
            }
            for var in ["NO_PROXY", "no_proxy"] {
                std::env::set_var(var, "127.0.0.1,localhost");
            }
        }
        OutsideTraffic { seen }
    })
}

fn read_head(conn: &mut TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && buf.len() < 16 << 10 {
        match conn.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A running `docker-registry`, killed on drop.
pub struct TestRegistry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the registry binary is here; without it a test is skipped,
/// except on CI, where it must be.
pub fn have_registry() -> bool {
    if Path::new(REGISTRY_BIN).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{REGISTRY_BIN} is missing (apt-get install -y docker-registry)");
    }
    eprintln!("skipping: {REGISTRY_BIN} is missing (apt-get install -y docker-registry)");
    false
}

impl TestRegistry {
    /// Starts a registry with empty storage; `htpasswd` = `(user, password)`
    /// turns on basic auth. `None` (after saying why) if the binary is
    /// missing outside CI.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Option<TestRegistry> {
        match htpasswd {
            None => Self::start_with_auth(|_| String::new()),
            Some((user, password)) => Self::start_with_auth(|dir| {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apt-get install -y apache2-utils)");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: vaina-test\n    path: {}\n",
                    file.display()
                )
            }),
        }
    }

    /// Starts a registry whose config ends with `auth(dir)` (an `auth:`
    /// section; `dir` is the registry's own directory).
    pub fn start_with_auth(auth: impl Fn(&Path) -> String) -> Option<TestRegistry> {
        guard_outside_traffic();
        if !have_registry() {
            return None;
        }
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&auth) {
                Ok(r) => return Some(r),
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn try_start(auth: &dyn Fn(&Path) -> String) -> Result<TestRegistry, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth = auth(dir.path());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: vaina-test\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("access.log")).unwrap();
        let err = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {REGISTRY_BIN}: {e}"))?;
        let mut registry = TestRegistry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = registry.child.try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap();
                return Err(format!("exited with {status}: {log}"));
            }
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = conn.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                if read_head(&mut conn).starts_with("HTTP/1.") {
                    return Ok(registry);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("no answer within 15 s".into())
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The access log: one line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap()
    }

    /// How many times blob `digest` of `repo` was fetched.
    pub fn blob_gets(&self, repo: &str, digest: &Digest) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest}");
        self.access_log()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Where the registry keeps blob `digest`.
    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .join("data")
    }
}

fn client() -> oci_client::Client {
    oci_client::Client::try_from(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
    .unwrap()
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

/// Pushes the image of OCI layout `layout` (its first `index.json` entry,
/// a manifest or an index, byte for byte) as `host/repo:tag`; returns the
/// digest of what the tag names.
pub async fn push_layout(
    host: &str,
    layout: &Path,
    repo: &str,
    tag: &str,
    auth: &RegistryAuth,
) -> Digest {
    let client = client();
    client.store_auth_if_needed(host, auth).await;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let top = &index["manifests"][0];
    let digest = push_manifest(&client, host, layout, repo, top).await;
    let bytes = read_blob(layout, &digest);
    let tagged = oci_client::Reference::with_tag(host.into(), repo.into(), tag.into());
    let media_type = top["mediaType"].as_str().unwrap();
    client
        .push_manifest_raw(&tagged, bytes, media_type.parse().unwrap())
        .await
        .unwrap();
    Digest::parse(&digest).unwrap()
}

/// Pushes what `desc` (a manifest or index descriptor) names and all it
/// references, by digest; returns its digest.
fn push_manifest<'a>(
    client: &'a oci_client::Client,
    host: &'a str,
    layout: &'a Path,
    repo: &'a str,
    desc: &'a serde_json::Value,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + 'a>> {
    Box::pin(async move {
        let digest = desc["digest"].as_str().unwrap().to_owned();
        let media_type = desc["mediaType"].as_str().unwrap();
        let bytes = read_blob(layout, &digest);
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let reference =
            oci_client::Reference::with_digest(host.into(), repo.into(), digest.clone());
        if let Some(children) = doc["manifests"].as_array() {
            for child in children {
                push_manifest(client, host, layout, repo, child).await;
            }
        } else {
            let mut blobs = vec![doc["config"]["digest"].as_str().unwrap().to_owned()];
            for layer in doc["layers"].as_array().unwrap() {
                blobs.push(layer["digest"].as_str().unwrap().to_owned());
            }
            for blob in blobs {
                let data = read_blob(layout, &blob);
                client.push_blob(&reference, data, &blob).await.unwrap();
            }
        }
        client
            .push_manifest_raw(&reference, bytes, media_type.parse().unwrap())
            .await
            .unwrap();
        digest
    })
}

/// Rewrites the one manifest of OCI layout `layout` as a Docker image
/// manifest (v2 schema 2): the same config and gzip layers under Docker's
/// media types.
pub fn dockerize_layout(layout: &Path) {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let desc = &mut index["manifests"][0];
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&read_blob(layout, desc["digest"].as_str().unwrap())).unwrap();
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json".into();
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    for layer in manifest["layers"].as_array_mut().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = Digest::of(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), &bytes).unwrap();
    desc["mediaType"] = manifest["mediaType"].clone();
    desc["digest"] = digest.to_string().into();
    desc["size"] = bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A TCP proxy to `127.0.0.1:<upstream>` that, once armed, cuts the first
/// connection that has carried more than the armed number of bytes back.
pub struct CuttingProxy {
    pub port: u16,
    cut_after: Arc<AtomicU64>,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(upstream: u16) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut_after = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (arm, count) = (cut_after.clone(), cuts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || pump(down2, up2, None));
                let (arm, count) = (arm.clone(), count.clone());
                std::thread::spawn(move || pump(up, down, Some((arm, count))));
            }
        });
        CuttingProxy {
            port,
            cut_after,
            cuts,
        }
    }

    /// Cuts the next connection that sends more than `bytes` back.
    pub fn arm(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

type Cutter = (Arc<AtomicU64>, Arc<AtomicUsize>);

fn pump(mut from: TcpStream, mut to: TcpStream, cutter: Option<Cutter>) {
    let mut buf = [0u8; 16 << 10];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sent += n as u64;
        if let Some((arm, cuts)) = &cutter {
            let limit = arm.load(Ordering::SeqCst);
            if limit != 0
                && sent > limit
                && arm
                    .compare_exchange(limit, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = to.write_all(&buf[..n / 2]);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
