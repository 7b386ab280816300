//! A real registry for pull tests and benchmarks: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1 of the host or of a [`Node`](crate::Node)'s namespace, images pushed
//! to it from OCI layouts with oci-client, and a recorder that stands in for every
//! non-loopback host through `HTTP(S)_PROXY`, so a test can prove no request left the
//! machine (and no name was resolved).
//!
//! Adapted from vaina-image's own test helpers (`crates/vaina-image/tests/common`), which
//! keep their copy: they use `vaina_image::Digest`, and vaina-image cannot depend on this
//! crate without a second copy of itself in its tests. Digests here are plain strings.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use vaina_net::netns::Netns;

pub use oci_client::secrets::RegistryAuth;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A port nothing listens on in the current namespace (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the registry binary is here; without it a test is skipped (after saying why),
/// except on CI (`CI` set), where it must be.
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

/// A recorder on 127.0.0.1 that answers 502 to every request and keeps its request line:
/// the proxy for every non-loopback host of the processes given [`OutsideTraffic::env`].
pub struct OutsideTraffic {
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl OutsideTraffic {
    /// Starts the recorder on 127.0.0.1 of `ns` (of the current namespace if `None`).
    pub fn start(ns: Option<&Netns>) -> OutsideTraffic {
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind the recorder");
        let listener = match ns {
            Some(ns) => ns.run(bind).expect("enter the namespace"),
            None => bind(),
        };
        let port = listener.local_addr().unwrap().port();
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
        OutsideTraffic { port, seen }
    }

    /// The proxy variables that send every non-loopback request here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let proxy = format!("http://127.0.0.1:{}", self.port);
        let mut env: Vec<(&'static str, String)> = [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ]
        .into_iter()
        .map(|v| (v, proxy.clone()))
        .collect();
        for v in ["NO_PROXY", "no_proxy"] {
            env.push((v, "127.0.0.1,localhost".into()));
        }
        env
    }

    /// Sets [`OutsideTraffic::env`] in this process, so its clients and the children it
    /// spawns from now on use the recorder.
    ///
    /// # Safety
    /// As [`std::env::set_var`]: no other thread may read or write the environment at the
    /// same time. Call first in a test (nextest runs each test in its own process).
    pub unsafe fn set_process_env(&self) {
        for (k, v) in self.env() {
            // SAFETY: the caller's contract.
            unsafe { std::env::set_var(k, v) };
        }
    }

    /// The request lines received (`CONNECT registry.k8s.io:443 HTTP/1.1`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
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

/// A running `docker-registry` with its own storage, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The namespace it listens in (`None`: the test's own).
    ns: Option<Netns>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry on 127.0.0.1 of `ns` (the current namespace if `None`) with empty
    /// storage; `htpasswd` = `(user, password)` turns on basic auth. `None` (after saying
    /// why) if the binary is missing outside CI.
    pub fn start(ns: Option<&Netns>, htpasswd: Option<(&str, &str)>) -> Option<Registry> {
        match htpasswd {
            None => Self::start_with_auth(ns, |_| String::new()),
            Some((user, password)) => Self::start_with_auth(ns, |dir| {
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

    /// Starts a registry whose config ends with `auth(dir)` (an `auth:` section; `dir` is
    /// the registry's own directory).
    pub fn start_with_auth(ns: Option<&Netns>, auth: impl Fn(&Path) -> String) -> Option<Registry> {
        if !have_registry() {
            return None;
        }
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(ns, &auth) {
                Ok(r) => return Some(r),
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn in_ns<T: Send>(ns: Option<&Netns>, f: impl FnOnce() -> T + Send) -> T {
        match ns {
            Some(ns) => ns.run(f).expect("enter the registry's namespace"),
            None => f(),
        }
    }

    fn try_start(ns: Option<&Netns>, auth: &dyn Fn(&Path) -> String) -> Result<Registry, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = Self::in_ns(ns, free_port);
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
        let child = Self::in_ns(ns, || {
            Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("spawn {REGISTRY_BIN}: {e}"))
        })?;
        let ns = ns
            .map(|n| Netns::open(n.fd_path()).map_err(|e| format!("hold the namespace: {e}")))
            .transpose()?;
        let mut registry = Registry {
            child,
            port,
            dir,
            ns,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = registry.child.try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap();
                return Err(format!("exited with {status}: {log}"));
            }
            let answered = registry.run(|| {
                let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
                    return false;
                };
                let _ = conn.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                read_head(&mut conn).starts_with("HTTP/1.")
            });
            if answered {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("no answer within 15 s".into())
    }

    /// Runs `f` in the registry's namespace (where `127.0.0.1:port` reaches it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::in_ns(self.ns.as_ref(), f)
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The access log: one line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// How many times blob `digest` (`sha256:…`) of `repo` was fetched.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest}");
        self.access_log()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Where the registry keeps blob `digest` (`sha256:…`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes the image of OCI layout `layout` as `<host>/repo:tag` from inside the
    /// registry's namespace (see [`push_layout`]); returns the digest the tag names.
    pub fn push(&self, layout: &Path, repo: &str, tag: &str, auth: &RegistryAuth) -> String {
        let host = self.host();
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(push_layout(&host, layout, repo, tag, auth))
        })
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
    let path = layout.join("blobs/sha256").join(hex);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Pushes the image of OCI layout `layout` (its first `index.json` entry, a manifest or an
/// index, byte for byte) over plain HTTP as `host/repo:tag`; returns the digest of what the
/// tag names. Blobs the registry has are sent again (the registry keeps one copy).
pub async fn push_layout(
    host: &str,
    layout: &Path,
    repo: &str,
    tag: &str,
    auth: &RegistryAuth,
) -> String {
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
        .unwrap_or_else(|e| panic!("push {host}/{repo}:{tag}: {e}"));
    digest
}

/// Pushes what `desc` (a manifest or index descriptor) names and all it references, by
/// digest; returns its digest.
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
                client
                    .push_blob(&reference, data, &blob)
                    .await
                    .unwrap_or_else(|e| panic!("push blob {blob} to {host}/{repo}: {e}"));
            }
        }
        client
            .push_manifest_raw(&reference, bytes, media_type.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("push manifest {digest} to {host}/{repo}: {e}"));
        digest
    })
}

/// A `hosts.toml` (containerd's format) that makes `mirror` (`127.0.0.1:PORT`, plain HTTP)
/// a mirror of the registry, for pull and resolve. The registry itself stays the last
/// host, tried only when the mirror fails.
pub fn mirror_hosts_toml(mirror: &str) -> String {
    format!("[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

/// A `hosts.toml` whose `server` replaces the registry with `server` (`127.0.0.1:PORT`,
/// plain HTTP): the registry itself is never contacted.
pub fn server_hosts_toml(server: &str) -> String {
    format!("server = \"http://{server}\"\n")
}

/// Writes `text` as `dir/<registry>/hosts.toml`.
pub fn write_hosts_toml(dir: &Path, registry: &str, text: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hosts.toml"), text).unwrap();
}
