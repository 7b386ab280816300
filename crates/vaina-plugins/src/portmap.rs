//! The `portmap` plugin: hostPort → pod DNAT from `runtimeConfig.portMappings`, with
//! nftables (see `vaina_net::firewall::portmap` for the rule set). A chained plugin: it
//! takes the pod's IPs from `prevResult` and passes that result on unchanged.
//!
//! Traffic from the node itself to `127.0.0.1:hostPort` works: with `snat` (default true)
//! the bridge gets `route_localnet=1` so the kernel routes 127/8-sourced packets to the pod,
//! and they are masqueraded so the pod can answer. So are connections from the pod's
//! subnets (the pod itself, other pods on its bridge), which is what lets a pod reach a
//! neighbour's host port through the node without br_netfilter.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use vaina_cni::error::CniError;
use vaina_cni::result::CniResult;
use vaina_cni::skel::{CmdArgs, Plugin};
use vaina_net::firewall::Attachment;
use vaina_net::firewall::portmap::{self, PortMapping};
use vaina_net::netlink::Netlink;
use vaina_net::sysctl;

use crate::common::{block_on, error_chain, net_err, prev_result, valid_attachments};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortmapConf {
    pub name: String,
    #[serde(default)]
    pub snat: Option<bool>,
    #[serde(default)]
    pub runtime_config: Option<RuntimeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

impl PortmapConf {
    pub fn parse(stdin: &[u8]) -> Result<PortmapConf, CniError> {
        let c: PortmapConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::decode(format!("failed to parse portmap config: {e}")))?;
        for m in c.mappings() {
            m.validate()
                .map_err(|e| CniError::invalid_config(error_chain(&e)))?;
        }
        Ok(c)
    }

    fn mappings(&self) -> &[PortMapping] {
        self.runtime_config
            .as_ref()
            .map(|r| r.port_mappings.as_slice())
            .unwrap_or_default()
    }
}

pub struct Portmap;

fn attachment<'a>(conf: &'a PortmapConf, a: &'a CmdArgs) -> Attachment<'a> {
    Attachment {
        network: &conf.name,
        container_id: &a.container_id,
        ifname: &a.ifname,
    }
}

/// The pod's addresses with their prefixes: those of `prevResult` on an interface inside a
/// sandbox (or with no interface index, as IPAM-only results have).
fn pod_nets(prev: &CniResult) -> Vec<IpNet> {
    prev.ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => prev
                .interfaces
                .get(i)
                .is_some_and(|iface| iface.sandbox.as_deref().is_some_and(|s| !s.is_empty())),
            None => true,
        })
        .map(|ip| ip.address)
        .filter(|ip| !ip.addr().is_loopback())
        .collect()
}

impl Plugin for Portmap {
    fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = PortmapConf::parse(&a.stdin)?;
        let prev = prev_result(a)?.ok_or_else(|| {
            CniError::invalid_config("portmap must be called as a chained plugin (no prevResult)")
        })?;
        if conf.mappings().is_empty() {
            return Ok(prev);
        }
        let ips = pod_nets(&prev);
        if ips.is_empty() {
            return Err(CniError::invalid_config(
                "portmap: prevResult has no container IP to map ports to",
            ));
        }
        let snat = conf.snat.unwrap_or(true);
        if snat && let Some(v4) = ips.iter().find(|i| i.addr().is_ipv4()) {
            enable_localnet(v4.addr())?;
        }
        portmap::add_port_mappings(&attachment(&conf, a), &ips, conf.mappings(), snat)
            .map_err(|e| CniError::io(error_chain(&e)))?;
        Ok(prev)
    }

    /// The runtime passes DEL the `runtimeConfig` it gave ADD: with its mappings the rules
    /// are deleted by key, without listing the table first. Without mappings there is
    /// nothing to delete (as the reference: ADD made nothing), and no nft transaction is
    /// paid; rules of a runtime that lost its mappings are left to GC.
    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = PortmapConf::parse(&a.stdin)?;
        if conf.mappings().is_empty() {
            return Ok(());
        }
        portmap::del_port_mappings(&attachment(&conf, a), conf.mappings())
            .map_err(|e| CniError::io(error_chain(&e)))
    }

    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = PortmapConf::parse(&a.stdin)?;
        if conf.mappings().is_empty() {
            return Ok(());
        }
        let prev = prev_result(a)?
            .ok_or_else(|| CniError::invalid_config("portmap CHECK needs a prevResult"))?;
        portmap::check_port_mappings(&attachment(&conf, a), &pod_nets(&prev), conf.mappings())
            .map_err(|e| CniError::io(error_chain(&e)))
    }

    fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = PortmapConf::parse(&a.stdin)?;
        let valid = valid_attachments(a)?;
        let atts: Vec<Attachment> = valid
            .iter()
            .map(|(id, ifname)| Attachment {
                network: &conf.name,
                container_id: id,
                ifname,
            })
            .collect();
        portmap::gc(&conf.name, &atts).map_err(|e| CniError::io(error_chain(&e)))?;
        Ok(())
    }
}

/// Sets `route_localnet=1` on the node interface that routes to the pod (the bridge), so
/// DNATed packets from 127.0.0.1 are not dropped as martians.
fn enable_localnet(pod_ip: IpAddr) -> Result<(), CniError> {
    let ifname = block_on(async {
        let nl = Netlink::open().map_err(net_err)?;
        let Some(oif) = nl.route_oif(pod_ip).await.map_err(net_err)? else {
            return Ok(None);
        };
        Ok::<_, CniError>(
            nl.link_by_index(oif)
                .await
                .map_err(net_err)?
                .map(|l| l.name),
        )
    })?;
    if let Some(ifname) = ifname {
        sysctl::set(&sysctl::iface_key("ipv4", &ifname, "route_localnet"), "1")
            .map_err(|e| CniError::io(error_chain(&e)))?;
    }
    Ok(())
}
