//! The `loopback` plugin: brings `lo` up inside the pod's netns (and down on DEL, which
//! succeeds when the netns is already gone).

use vaina_cni::error::CniError;
use vaina_cni::result::{CniResult, Interface, IpConfig};
use vaina_cni::skel::{CmdArgs, Plugin};
use vaina_net::netlink::Netlink;
use vaina_net::netns::{Netns, NetnsError};

use crate::common::{block_on, error_chain, net_err, netns_display, open_netns};

pub struct Loopback;

impl Plugin for Loopback {
    fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
        let ns = open_netns(a)?;
        block_on(async {
            let nl = Netlink::open_in(&ns).map_err(net_err)?;
            let lo = nl.require_link("lo").await.map_err(net_err)?;
            nl.set_up(lo.index).await.map_err(net_err)
        })?;
        Ok(CniResult {
            cni_version: a.config.cni_version.clone(),
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: Some("00:00:00:00:00:00".into()),
                sandbox: Some(netns_display(a)),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    interface: Some(0),
                    address: "127.0.0.1/8".parse().unwrap(),
                    gateway: None,
                },
                IpConfig {
                    interface: Some(0),
                    address: "::1/128".parse().unwrap(),
                    gateway: None,
                },
            ],
            ..Default::default()
        })
    }

    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        let Some(path) = a.netns.as_deref().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        let ns = match Netns::open(path) {
            Ok(ns) => ns,
            Err(NetnsError::NotFound { .. }) | Err(NetnsError::NotNetns { .. }) => return Ok(()),
            Err(e) => return Err(CniError::io(error_chain(&e))),
        };
        block_on(async {
            let nl = Netlink::open_in(&ns).map_err(net_err)?;
            if let Some(lo) = nl.link("lo").await.map_err(net_err)? {
                nl.set_down(lo.index).await.map_err(net_err)?;
            }
            Ok(())
        })
    }

    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        let ns = open_netns(a)?;
        block_on(async {
            let nl = Netlink::open_in(&ns).map_err(net_err)?;
            let lo = nl.require_link("lo").await.map_err(net_err)?;
            if !lo.up {
                return Err(CniError::io(format!("lo is down in {}", netns_display(a))));
            }
            Ok(())
        })
    }
}
