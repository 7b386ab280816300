//! The node's pod network through CNI: every sandbox gets the loopback network, then the
//! first conflist of the CNI config directory (containerd's behaviour). When the directory
//! has none, vaina writes its default (bridge `cni0`, 10.88.0.0/16, masquerade, host ports).
//!
//! Calls block (they exec plugins): async callers use `spawn_blocking`.

use std::path::{Path, PathBuf};

use vaina_cni::config::{NetworkConfigList, load_conf_dir};
use vaina_cni::result::CniResult;
use vaina_cni::runtime::{Attachment, CniConfig, RuntimeConf};

use crate::config::Config;
use crate::error::{Error, Result};

pub const POD_IFNAME: &str = "eth0";
const DEFAULT_CONFLIST_FILE: &str = "10-vaina.conflist";

pub struct Network {
    cni: CniConfig,
    lo: NetworkConfigList,
    net: NetworkConfigList,
}

impl Network {
    /// Loads the CNI config (writing the default when there is none) and checks that the
    /// plugins it names exist.
    pub fn load(cfg: &Config) -> Result<Network> {
        let mut lists =
            load_conf_dir(&cfg.cni_conf_dir).map_err(|e| Error::failed("load CNI config", e))?;
        if lists.is_empty() {
            let path = cfg.cni_conf_dir.join(DEFAULT_CONFLIST_FILE);
            std::fs::create_dir_all(&cfg.cni_conf_dir)
                .map_err(|e| Error::failed(format!("create {}", cfg.cni_conf_dir.display()), e))?;
            let text =
                vaina_plugins::defaults::default_conflist(&cfg.ipam_data_dir.to_string_lossy());
            crate::store::write_atomic(&path, text.as_bytes())?;
            tracing::info!(path = %path.display(), "no CNI config found: wrote the default network");
            lists = load_conf_dir(&cfg.cni_conf_dir)
                .map_err(|e| Error::failed("load CNI config", e))?;
        }
        let net = lists.into_iter().next().expect("at least the default list");
        let cni = CniConfig::new(cfg.cni_bin_dirs.clone(), cfg.cni_cache_dir());
        // vaina's loopback plugin if installed, else the reference one.
        let lo_type = if find(&cfg.cni_bin_dirs, "vaina-loopback").is_some() {
            "vaina-loopback"
        } else {
            "loopback"
        };
        let lo = NetworkConfigList::from_bytes(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"vaina-loopback","plugins":[{{"type":"{lo_type}"}}]}}"#
            )
            .as_bytes(),
        )
        .map_err(|e| Error::failed("loopback network config", e))?;
        for p in net.plugins.iter().chain(lo.plugins.iter()) {
            if find(&cfg.cni_bin_dirs, &p.plugin_type).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "CNI plugin {:?} of network {:?} not found in {:?}",
                    p.plugin_type, net.name, cfg.cni_bin_dirs
                )));
            }
        }
        Ok(Network { cni, lo, net })
    }

    pub fn name(&self) -> &str {
        &self.net.name
    }

    /// CNI ADD of loopback and the pod network, side by side (they touch different
    /// interfaces; each is an exec of its own). On failure, what was added is deleted.
    pub fn setup(
        &self,
        sandbox_id: &str,
        netns: &Path,
        capability_args: serde_json::Map<String, serde_json::Value>,
    ) -> Result<CniResult> {
        let mut rt = RuntimeConf::new(sandbox_id, netns, POD_IFNAME);
        rt.capability_args = capability_args;
        let lo_rt = RuntimeConf::new(sandbox_id, netns, "lo");
        let t = std::time::Instant::now();
        let (lo, net) = std::thread::scope(|s| {
            let lo = s.spawn(|| self.cni.add_network_list(&self.lo, &lo_rt));
            let net = self.cni.add_network_list(&self.net, &rt);
            (lo.join().expect("CNI ADD thread panicked"), net)
        });
        let failed = match (lo, net) {
            (Ok(_), Ok(r)) => {
                tracing::debug!(sandbox = sandbox_id, took = ?t.elapsed(), "CNI ADD done");
                return Ok(r);
            }
            (Err(e), _) => Error::failed(
                format!("CNI ADD {} for sandbox {sandbox_id}", self.lo.name),
                e,
            ),
            (_, Err(e)) => Error::failed(
                format!("CNI ADD {} for sandbox {sandbox_id}", self.net.name),
                e,
            ),
        };
        if let Err(d) = self.teardown(sandbox_id, netns) {
            tracing::warn!(sandbox = sandbox_id, error = %d.chain(), "rollback of a failed CNI ADD failed");
        }
        Err(failed)
    }

    /// CNI DEL of the pod network and loopback, side by side. Works when the netns is
    /// already gone.
    pub fn teardown(&self, sandbox_id: &str, netns: &Path) -> Result<()> {
        let rt = RuntimeConf::new(sandbox_id, netns, POD_IFNAME);
        let lo_rt = RuntimeConf::new(sandbox_id, netns, "lo");
        let (lo, net) = std::thread::scope(|s| {
            let lo = s.spawn(|| self.cni.del_network_list(&self.lo, &lo_rt));
            let net = self.cni.del_network_list(&self.net, &rt);
            (lo.join().expect("CNI DEL thread panicked"), net)
        });
        net.map_err(|e| {
            Error::failed(
                format!("CNI DEL {} for sandbox {sandbox_id}", self.net.name),
                e,
            )
        })?;
        lo.map_err(|e| {
            Error::failed(
                format!("CNI DEL {} for sandbox {sandbox_id}", self.lo.name),
                e,
            )
        })
    }

    /// CNI GC: everything not attached to one of `sandbox_ids` is released.
    pub fn gc(&self, sandbox_ids: &[String]) -> Result<()> {
        let valid = |ifname: &str| -> Vec<Attachment> {
            sandbox_ids
                .iter()
                .map(|id| Attachment {
                    container_id: id.clone(),
                    ifname: ifname.into(),
                })
                .collect()
        };
        self.cni
            .gc_network_list(&self.net, &valid(POD_IFNAME))
            .map_err(|e| Error::failed(format!("CNI GC {}", self.net.name), e))?;
        self.cni
            .gc_network_list(&self.lo, &valid("lo"))
            .map_err(|e| Error::failed(format!("CNI GC {}", self.lo.name), e))
    }

    /// CNI STATUS of the pod network, for the CRI's NetworkReady condition.
    pub fn status(&self) -> Result<()> {
        self.cni
            .status_network_list(&self.net)
            .map_err(|e| Error::failed(format!("CNI STATUS {}", self.net.name), e))
    }
}

fn find(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}
