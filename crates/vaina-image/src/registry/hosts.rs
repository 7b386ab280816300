//! Where to pull a registry's images from: containerd's `hosts.toml`
//! registry configuration (`docs/hosts.md` in containerd), read from a
//! directory such as `/etc/vaina/certs.d`.
//!
//! For registry `host[:port]` the first directory that exists of
//! `host_port_/`, `host:port/` (or just `host/`) and `_default/` is used:
//!
//! ```toml
//! # <dir>/registry.k8s.io/hosts.toml
//! server = "https://registry.k8s.io"        # replaces the upstream; optional
//!
//! [host."http://127.0.0.1:5000"]            # mirrors, tried in order first
//!   capabilities = ["pull", "resolve"]
//!   ca = "mirror-ca.pem"                    # or a list; relative to this file
//!   skip_verify = false
//! ```
//!
//! The hosts are the `[host]` entries in file order, then `server`, or the
//! registry itself when `server` is absent (`docker.io` is served by
//! `registry-1.docker.io`). Nothing else is ever tried: with `server` set,
//! the original registry is not contacted. A directory without `hosts.toml`
//! adds its `*.crt` files as CAs for the registry itself (Docker's
//! `certs.d` layout). Without any directory, the registry is reached over
//! HTTPS, or plain HTTP for a loopback host (`localhost`, `127.0.0.1`,
//! `[::1]`), as containerd does.
//!
//! Tags are resolved only by hosts with the `resolve` capability; content
//! by digest is fetched from those with `pull` (a host without
//! `capabilities` has all). Mirrors get the registry as `?ns=<registry>`.
//!
//! Supported beside these: `proxy` and `dial_timeout`. Not supported, and
//! refused with an error naming the file rather than ignored: `header`
//! (custom request headers), `client` (TLS client certificates) and host
//! URLs with a path or `override_path`, which the registry client
//! (`oci-client`) has no way to send.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

/// Where vaina reads `hosts.toml` files by default.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/vaina/certs.d";

/// The registry configuration directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHosts {
    dir: PathBuf,
}

impl Default for RegistryHosts {
    fn default() -> Self {
        RegistryHosts::new(DEFAULT_HOSTS_DIR)
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// What a host may be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve a tag to a digest (a trusted operation).
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One host to try for a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]`, as in the URL.
    pub host: String,
    pub capabilities: Capabilities,
    pub skip_verify: bool,
    /// PEM files of extra CAs to trust.
    pub ca: Vec<PathBuf>,
    /// `http://proxy:port` to reach it through.
    pub proxy: Option<String>,
    pub dial_timeout: Option<Duration>,
    /// Not the registry's own host: a mirror or a replacing `server`.
    /// Requests to it name the registry in `?ns=`.
    pub mirror: bool,
    /// The `hosts.toml` that configured it, for errors.
    pub config: Option<PathBuf>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.host)
    }
}

/// A `hosts.toml` (or a file it names) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry config {}: {reason}", path.display())]
pub struct HostsError {
    pub path: PathBuf,
    pub reason: String,
}

/// The fields of `hosts.toml` that apply to `server` (at the top) or to a
/// `[host."…"]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<toml::Value>,
    #[serde(default)]
    skip_verify: bool,
    header: Option<toml::Table>,
    #[serde(default)]
    override_path: bool,
    dial_timeout: Option<String>,
    proxy: Option<String>,
}

/// The whole file: `server`, its settings (those of [`HostFields`]; serde
/// cannot flatten them and still refuse unknown keys) and the hosts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: OrderedHosts,
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<toml::Value>,
    #[serde(default)]
    skip_verify: bool,
    header: Option<toml::Table>,
    #[serde(default)]
    override_path: bool,
    dial_timeout: Option<String>,
    proxy: Option<String>,
}

impl HostsFile {
    fn server_fields(&mut self) -> HostFields {
        HostFields {
            capabilities: self.capabilities.take(),
            ca: self.ca.take(),
            client: self.client.take(),
            skip_verify: self.skip_verify,
            header: self.header.take(),
            override_path: self.override_path,
            dial_timeout: self.dial_timeout.take(),
            proxy: self.proxy.take(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[host."…"]` tables in file order: the order they are tried in.
#[derive(Debug, Default)]
struct OrderedHosts(Vec<(String, HostFields)>);

impl<'de> Deserialize<'de> for OrderedHosts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedHosts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tables of host settings keyed by URL")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedHosts, A::Error> {
                let mut hosts = Vec::new();
                while let Some(entry) = map.next_entry::<String, HostFields>()? {
                    hosts.push(entry);
                }
                Ok(OrderedHosts(hosts))
            }
        }
        d.deserialize_map(V)
    }
}

impl RegistryHosts {
    pub fn new(dir: impl Into<PathBuf>) -> RegistryHosts {
        RegistryHosts { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hosts to try for `registry` (`host[:port]`, as in a
    /// [`crate::Reference`]), in order. Read anew on every call, so edits
    /// apply to the next pull.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
        for name in config_dir_names(registry) {
            let dir = self.dir.join(&name);
            if !dir.is_dir() {
                continue;
            }
            let file = dir.join("hosts.toml");
            return match std::fs::read_to_string(&file) {
                Ok(text) => parse_hosts(&text, &file, registry),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut upstream = upstream(registry);
                    upstream.ca = crt_files(&dir)?;
                    Ok(vec![upstream])
                }
                Err(e) => Err(HostsError {
                    path: file,
                    reason: format!("cannot read: {e}"),
                }),
            };
        }
        Ok(vec![upstream(registry)])
    }
}

/// containerd's lookup order: `host_port_`, `host:port`, `_default`.
fn config_dir_names(registry: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some((host, port)) = split_port(registry) {
        names.push(format!("{host}_{port}_"));
    }
    names.push(registry.to_owned());
    names.push("_default".to_owned());
    names
}

/// `("host", "port")` if `registry` has a port.
fn split_port(registry: &str) -> Option<(&str, &str)> {
    let (host, port) = registry.rsplit_once(':')?;
    // `[::1]` alone has colons but no port.
    if port.contains(']') || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, port))
}

fn is_loopback(registry: &str) -> bool {
    let host = split_port(registry).map_or(registry, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The registry's own host: where its images are when nothing says otherwise.
fn upstream(registry: &str) -> Endpoint {
    let host = if registry == crate::reference::DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        registry
    };
    Endpoint {
        scheme: if is_loopback(registry) {
            Scheme::Http
        } else {
            Scheme::Https
        },
        host: host.to_owned(),
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: Vec::new(),
        proxy: None,
        dial_timeout: None,
        mirror: false,
        config: None,
    }
}

/// Docker's `certs.d` layout: `*.crt` files are CAs.
fn crt_files(dir: &Path) -> Result<Vec<PathBuf>, HostsError> {
    let read_err = |e: std::io::Error| HostsError {
        path: dir.to_owned(),
        reason: format!("cannot read: {e}"),
    };
    let mut cas = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => cas.push(path),
            Some("cert" | "key") => tracing::warn!(
                file = %path.display(),
                "TLS client certificates are not supported; ignoring"
            ),
            _ => {}
        }
    }
    cas.sort();
    Ok(cas)
}

/// Parses the `hosts.toml` at `path` for `registry`.
fn parse_hosts(text: &str, path: &Path, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    let fail = |reason: String| HostsError {
        path: path.to_owned(),
        reason,
    };
    let mut file: HostsFile = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let server_fields = file.server_fields();
    let own = upstream(registry);
    let mut endpoints = Vec::new();
    for (url, fields) in std::mem::take(&mut file.host.0) {
        let mut ep =
            endpoint_from(&url, fields, base).map_err(|r| fail(format!("host {url:?}: {r}")))?;
        ep.mirror = true;
        ep.config = Some(path.to_owned());
        endpoints.push(ep);
    }
    let mut server = match &file.server {
        Some(url) => {
            let mut ep = endpoint_from(url, server_fields, base)
                .map_err(|r| fail(format!("server {url:?}: {r}")))?;
            ep.mirror = ep.host != own.host;
            ep
        }
        None => endpoint_from(&own.to_string(), server_fields, base)
            .map_err(|r| fail(format!("top-level settings: {r}")))?,
    };
    server.config = Some(path.to_owned());
    endpoints.push(server);
    Ok(endpoints)
}

fn endpoint_from(url: &str, fields: HostFields, base: &Path) -> Result<Endpoint, String> {
    let (scheme, host) = parse_url(url)?;
    if fields.header.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(
            "`header` is not supported: the registry client cannot send custom headers".into(),
        );
    }
    if fields.client.is_some() {
        return Err("`client` (TLS client certificates) is not supported".into());
    }
    if fields.override_path {
        return Err("`override_path` is not supported: registries must serve /v2/".into());
    }
    let capabilities = match fields.capabilities {
        None => Capabilities::ALL,
        Some(list) => {
            let mut c = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for cap in list {
                match cap.as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    other => {
                        return Err(format!(
                            "unknown capability {other:?} (expected \"pull\", \"resolve\" or \"push\")"
                        ));
                    }
                }
            }
            c
        }
    };
    let ca = match fields.ca {
        None => Vec::new(),
        Some(OneOrMany::One(p)) => vec![base.join(p)],
        Some(OneOrMany::Many(ps)) => ps.iter().map(|p| base.join(p)).collect(),
    };
    let proxy = match fields.proxy {
        Some(p) if !p.starts_with("http://") && !p.starts_with("https://") => {
            return Err(format!(
                "proxy {p:?}: only http:// and https:// proxies are supported"
            ));
        }
        p => p,
    };
    let dial_timeout = fields
        .dial_timeout
        .map(|d| {
            parse_duration(&d).ok_or_else(|| {
                format!(
                    "dial_timeout {d:?}: expected a duration such as \"500ms\", \"5s\" or \"1m30s\""
                )
            })
        })
        .transpose()?;
    Ok(Endpoint {
        scheme,
        host,
        capabilities,
        skip_verify: fields.skip_verify,
        ca,
        proxy,
        dial_timeout,
        mirror: false,
        config: None,
    })
}

/// `scheme://host[:port][/v2]`; without a scheme, `https` (as containerd).
fn parse_url(url: &str) -> Result<(Scheme, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((other, _)) => return Err(format!("unsupported scheme {other:?} (http or https)")),
        None => (Scheme::Https, url),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !matches!(path, "" | "/" | "/v2" | "/v2/") {
        return Err(format!(
            "path {path:?} is not supported: the registry API must be at /v2/"
        ));
    }
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if !valid {
        return Err(format!("invalid host {host:?}"));
    }
    let host = host.to_ascii_lowercase();
    // As containerd: Docker Hub's API is not at docker.io.
    if host == crate::reference::DEFAULT_REGISTRY {
        return Ok((scheme, "registry-1.docker.io".to_owned()));
    }
    Ok((scheme, host))
}

/// A Go duration as containerd reads `dial_timeout`: `1h2m3s`, `500ms`,
/// `1.5s`, `100us`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, registry: &str, text: &str) -> PathBuf {
        let d = dir.join(registry);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("hosts.toml");
        std::fs::write(&f, text).unwrap();
        f
    }

    fn urls(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn without_config_the_registry_itself() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = RegistryHosts::new(dir.path().join("missing"));
        let eps = hosts.endpoints("docker.io").unwrap();
        assert_eq!(urls(&eps), ["https://registry-1.docker.io"]);
        assert!(!eps[0].mirror);
        assert_eq!(
            urls(&hosts.endpoints("registry.k8s.io").unwrap()),
            ["https://registry.k8s.io"]
        );
        for local in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert_eq!(
                urls(&hosts.endpoints(local).unwrap()),
                [format!("http://{local}")],
                "{local}"
            );
        }
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "registry.k8s.io",
            r#"
server = "https://registry.k8s.io"

[host."http://127.0.0.1:5002"]
  capabilities = ["pull"]
[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  ca = ["a.pem", "/abs/b.pem"]
  skip_verify = true
  dial_timeout = "1m30s"
  proxy = "http://127.0.0.1:3128"
"#,
        );
        let eps = RegistryHosts::new(dir.path())
            .endpoints("registry.k8s.io")
            .unwrap();
        assert_eq!(
            urls(&eps),
            [
                "http://127.0.0.1:5002",
                "http://127.0.0.1:5001",
                "https://registry.k8s.io"
            ]
        );
        assert!(eps[0].mirror && eps[1].mirror && !eps[2].mirror);
        assert!(eps[0].capabilities.pull && !eps[0].capabilities.resolve);
        assert!(eps[1].capabilities.resolve && !eps[1].capabilities.push);
        assert_eq!(eps[2].capabilities, Capabilities::ALL);
        let base = file.parent().unwrap();
        assert_eq!(eps[1].ca, [base.join("a.pem"), PathBuf::from("/abs/b.pem")]);
        assert!(eps[1].skip_verify && !eps[0].skip_verify);
        assert_eq!(eps[1].dial_timeout, Some(Duration::from_secs(90)));
        assert_eq!(eps[1].proxy.as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(eps[0].config.as_deref(), Some(file.as_path()));
    }

    #[test]
    fn server_replaces_the_registry_and_without_it_the_registry_is_last() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "registry.k8s.io",
            "server = \"http://127.0.0.1:5000\"\n",
        );
        let hosts = RegistryHosts::new(dir.path());
        let eps = hosts.endpoints("registry.k8s.io").unwrap();
        assert_eq!(urls(&eps), ["http://127.0.0.1:5000"]);
        assert!(eps[0].mirror);

        write(
            dir.path(),
            "docker.io",
            "[host.\"http://127.0.0.1:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
        );
        assert_eq!(
            urls(&hosts.endpoints("docker.io").unwrap()),
            ["http://127.0.0.1:5000", "https://registry-1.docker.io"]
        );
        // A server without a scheme is https; the registry itself is no mirror.
        write(
            dir.path(),
            "quay.io",
            "server = \"quay.io\"\nskip_verify = true\n",
        );
        let eps = hosts.endpoints("quay.io").unwrap();
        assert_eq!(urls(&eps), ["https://quay.io"]);
        assert!(!eps[0].mirror && eps[0].skip_verify);
    }

    #[test]
    fn lookup_order_port_forms_then_default() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "_default", "server = \"http://127.0.0.1:1\"\n");
        write(
            dir.path(),
            "reg.io:5000",
            "server = \"http://127.0.0.1:2\"\n",
        );
        let hosts = RegistryHosts::new(dir.path());
        assert_eq!(
            urls(&hosts.endpoints("reg.io:5000").unwrap()),
            ["http://127.0.0.1:2"]
        );
        write(
            dir.path(),
            "reg.io_5000_",
            "server = \"http://127.0.0.1:3\"\n",
        );
        assert_eq!(
            urls(&hosts.endpoints("reg.io:5000").unwrap()),
            ["http://127.0.0.1:3"]
        );
        assert_eq!(
            urls(&hosts.endpoints("other.io").unwrap()),
            ["http://127.0.0.1:1"]
        );
    }

    #[test]
    fn certs_dir_without_hosts_toml_adds_cas() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("reg.io");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.crt"), "x").unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let eps = RegistryHosts::new(dir.path()).endpoints("reg.io").unwrap();
        assert_eq!(urls(&eps), ["https://reg.io"]);
        assert_eq!(eps[0].ca, [d.join("ca.crt")]);
    }

    #[test]
    fn malformed_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = RegistryHosts::new(dir.path());
        for (text, why) in [
            ("server = ", "line 1, column 10"),
            ("server = 5", "invalid type"),
            ("sever = \"https://x\"", "unknown field `sever`"),
            (
                "[host.\"http://m\"]\ncapabilites = [\"pull\"]",
                "unknown field `capabilites`",
            ),
            (
                "[host.\"http://m\"]\ncapabilities = [\"pul\"]",
                "unknown capability \"pul\"",
            ),
            ("server = \"ftp://x\"", "unsupported scheme"),
            (
                "server = \"https://x/prefix\"",
                "path \"/prefix\" is not supported",
            ),
            (
                "[host.\"http://m\"]\n[host.\"http://m\".header]\nx-a = \"b\"",
                "`header` is not supported",
            ),
            ("[host.\"http://m\"]\nclient = \"c.pem\"", "`client`"),
            ("dial_timeout = \"soon\"", "dial_timeout \"soon\""),
            ("proxy = \"socks5://p:1\"", "only http://"),
        ] {
            let file = write(dir.path(), "reg.io", text);
            let err = hosts.endpoints("reg.io").expect_err(text);
            assert_eq!(err.path, file);
            let msg = err.to_string();
            assert!(msg.contains(&file.display().to_string()), "{msg}");
            assert!(msg.contains(why), "{text}: {msg}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
