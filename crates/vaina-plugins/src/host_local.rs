//! The `host-local` IPAM plugin: addresses from configured ranges, reserved on the node's
//! disk (`vaina_ipam::DiskStore`, the reference plugin's format), released by
//! (container id, ifname) on DEL, garbage-collected against `cni.dev/valid-attachments`.

use std::net::IpAddr;

use vaina_cni::error::CniError;
use vaina_cni::result::{CniResult, Dns, IpConfig, Route};
use vaina_cni::skel::{CmdArgs, Plugin};
use vaina_ipam::{DiskStore, IpamConfig};

use crate::common::{error_chain, valid_attachments};

pub struct HostLocal;

fn config(a: &CmdArgs) -> Result<IpamConfig, CniError> {
    let raw: serde_json::Value = serde_json::from_slice(&a.stdin)
        .map_err(|e| CniError::decode(format!("failed to parse host-local config: {e}")))?;
    let mut ips = Vec::new();
    for (k, v) in &a.args {
        if k == "IP" {
            let ip = vaina_ipam::parse_cni_args_ip(&format!("IP={v}"))
                .map_err(|e| CniError::invalid_config(error_chain(&e)))?;
            ips.extend(ip);
        }
    }
    IpamConfig::from_network_config(&raw, &ips)
        .map_err(|e| CniError::invalid_config(error_chain(&e)))
}

fn store(cfg: &IpamConfig) -> Result<DiskStore, CniError> {
    DiskStore::open(&cfg.data_dir, &cfg.name).map_err(|e| CniError::io(error_chain(&e)))
}

fn alloc_err(e: vaina_ipam::AllocError) -> CniError {
    CniError::io(error_chain(&e))
}

impl Plugin for HostLocal {
    fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
        let cfg = config(a)?;
        // Read resolv.conf before reserving: a bad path must not cost an address.
        let dns = match &cfg.resolv_conf {
            Some(p) => {
                let d = vaina_ipam::read_resolv_conf(p)
                    .map_err(|e| CniError::invalid_config(error_chain(&e)))?;
                Dns {
                    nameservers: d.nameservers,
                    domain: d.domain.unwrap_or_default(),
                    search: d.search,
                    options: d.options,
                }
            }
            None => Dns::default(),
        };
        let store = store(&cfg)?;
        let allocs = vaina_ipam::allocate(
            &store,
            &cfg.ranges,
            &cfg.requested_ips,
            &a.container_id,
            &a.ifname,
        )
        .map_err(alloc_err)?;
        Ok(CniResult {
            cni_version: a.config.cni_version.clone(),
            ips: allocs
                .into_iter()
                .map(|al| IpConfig {
                    interface: None,
                    address: al.address,
                    gateway: al.gateway,
                })
                .collect(),
            routes: cfg
                .routes
                .iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw,
                    mtu: r.mtu,
                    advmss: r.advmss,
                    priority: r.priority,
                    table: r.table,
                    scope: r.scope,
                })
                .collect(),
            dns,
            ..Default::default()
        })
    }

    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(a)?;
        let store = store(&cfg)?;
        vaina_ipam::release(&store, &a.container_id, &a.ifname).map_err(alloc_err)?;
        Ok(())
    }

    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(a)?;
        let store = store(&cfg)?;
        let expected: Vec<IpAddr> = crate::common::prev_result(a)?
            .map(|r| r.ips.iter().map(|i| i.address.addr()).collect())
            .unwrap_or_default();
        vaina_ipam::check(&store, &a.container_id, &a.ifname, &expected).map_err(alloc_err)
    }

    fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
        let cfg = config(a)?;
        let store = store(&cfg)?;
        let valid = valid_attachments(a)?;
        let pairs: Vec<(&str, &str)> = valid
            .iter()
            .map(|(i, f)| (i.as_str(), f.as_str()))
            .collect();
        vaina_ipam::gc(&store, &pairs).map_err(alloc_err)?;
        Ok(())
    }

    fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
        // Ready when the store can be opened (its directory is creatable and writable).
        let cfg = config(a)?;
        store(&cfg).map(|_| ())
    }
}
