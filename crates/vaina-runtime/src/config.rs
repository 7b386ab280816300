//! Where vaina keeps things, and which binaries it runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The daemon's configuration (TOML; every field has a default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state and images (`/var/lib/vaina`).
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: netns pins, supervisor sockets,
    /// the OCI runtime's state (`/run/vaina`).
    pub state_dir: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// host-local's store for the default network vaina writes when none is configured.
    pub ipam_data_dir: PathBuf,
    /// The pod supervisor binary (default: `vaina-pod` next to the running executable).
    pub pod_binary: Option<PathBuf>,
    /// Runtime handler → OCI runtime binary. `""` is the default handler.
    pub runtimes: BTreeMap<String, PathBuf>,
    /// Registry hosts configuration for pulls, containerd's `certs.d` layout:
    /// `<dir>/<registry>/hosts.toml` (mirrors, server, CAs, plain HTTP), or
    /// `<dir>/_default/hosts.toml` for every registry (`/etc/vaina/certs.d`).
    pub registry_config_dir: PathBuf,
    /// Where the streaming server (exec, attach, port-forward) listens; port 0: any free.
    pub stream_address: std::net::SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: "/var/lib/vaina".into(),
            state_dir: "/run/vaina".into(),
            socket: "/run/vaina/vaina.sock".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into()],
            ipam_data_dir: "/var/lib/cni/networks".into(),
            pod_binary: None,
            runtimes: BTreeMap::from([
                (String::new(), "crun".into()),
                ("crun".into(), "crun".into()),
                ("runc".into(), "runc".into()),
            ]),
            registry_config_dir: vaina_image::DEFAULT_HOSTS_DIR.into(),
            stream_address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl Config {
    /// Everything under one directory: what tests and `--root` use.
    pub fn under(root: &Path) -> Config {
        Config {
            root: root.join("lib"),
            state_dir: root.join("run"),
            socket: root.join("run/vaina.sock"),
            cni_conf_dir: root.join("net.d"),
            ipam_data_dir: root.join("lib/cni/networks"),
            registry_config_dir: root.join("certs.d"),
            ..Config::default()
        }
    }

    pub fn pod_binary(&self) -> PathBuf {
        self.pod_binary.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("vaina-pod")))
                .unwrap_or_else(|| "vaina-pod".into())
        })
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.state_dir.join("netns")
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    pub fn cni_cache_dir(&self) -> PathBuf {
        self.root.join("cni")
    }
}
