//! The `bridge` plugin: a Linux bridge on the node (`cni0` by default) that is every pod's
//! gateway, and one veth pair per attachment, host end on the bridge, `CNI_IFNAME` inside
//! the pod. Config schema of the reference plugin (containernetworking/plugins bridge).
//!
//! ADD: bridge → veth (peer created inside the pod netns) → MAC spoof check on the port
//! (`macspoofchk`, before it comes up) → IPAM (delegated to the `ipam.type` plugin,
//! searched in CNI_PATH) → pod addresses and routes → gateway address on the bridge and
//! forwarding → masquerade. A failed ADD releases the IPAM reservation and removes the MAC
//! spoof check and the veth, and the bridge too when this ADD created it and no other pod
//! uses it.
//! DEL: IPAM release first (it works without the netns), then the pod's interface (which
//! takes the host veth with it), then masquerade and the MAC spoof check; every missing
//! piece is success.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use vaina_cni::error::CniError;
use vaina_cni::result::{CniResult, Interface, IpConfig, Route as CniRoute};
use vaina_cni::skel::{CmdArgs, Plugin};
use vaina_net::firewall::{self, Attachment};
use vaina_net::netlink::{BridgeSpec, Netlink, Route};
use vaina_net::netns::{Netns, NetnsError};
use vaina_net::sysctl;

use crate::common::{
    block_on, error_chain, net_err, netns_display, open_netns, prev_result, valid_attachments,
    veth_name,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    pub name: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Keep IPv6 duplicate address detection on the pod interface (off by default so the
    /// address is usable at once, as in the reference).
    #[serde(default)]
    pub enabledad: bool,
    /// Drop frames that enter the bridge from the pod's veth with a source MAC other than
    /// the pod interface's (nftables, `bridge vaina_macspoof`).
    #[serde(default)]
    pub macspoofchk: bool,
    /// Required. `{}` (no `type`) is the reference's L2-only mode: veth on the bridge, no
    /// address. A config with no `ipam` key at all is rejected as malformed.
    pub ipam: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// Options of the reference plugin that vaina does not implement: refused with code 2
    /// (unsupported field) rather than silently ignored.
    #[serde(default)]
    pub vlan_trunk: Option<serde_json::Value>,
    #[serde(default)]
    pub preserve_default_vlan: Option<bool>,
    #[serde(default)]
    pub disable_container_interface: bool,
    #[serde(default)]
    pub port_isolation: bool,
    #[serde(default)]
    pub ip_masq_backend: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub mac: Option<String>,
}

fn default_bridge() -> String {
    "cni0".into()
}

impl BridgeConf {
    pub fn parse(stdin: &[u8]) -> Result<BridgeConf, CniError> {
        let mut c: BridgeConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::decode(format!("failed to parse bridge config: {e}")))?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if c.hairpin_mode && c.promisc_mode {
            return Err(CniError::invalid_config(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        if let Some(mtu) = c.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::invalid_config(format!(
                "invalid MTU {mtu}, must be between 68 and 65535"
            )));
        }
        if let Some(v) = c.vlan
            && v > 4094
        {
            return Err(CniError::invalid_config(format!(
                "invalid VLAN ID {v} (must be between 0 and 4094)"
            )));
        }
        if c.bridge.is_empty() || c.bridge.len() > 15 || c.bridge.contains(['/', ' ']) {
            return Err(CniError::invalid_config(format!(
                "invalid bridge name {:?}",
                c.bridge
            )));
        }
        c.refuse_unsupported()?;
        match &c.ipam {
            Some(serde_json::Value::Object(_)) => {}
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "\"ipam\" must be an object, got {other}"
                )));
            }
            None => {
                return Err(CniError::invalid_config(
                    "bridge config has no \"ipam\" section (use {\"type\": \"host-local\", ...}, \
                     or {} for an L2-only network)",
                ));
            }
        }
        Ok(c)
    }

    fn refuse_unsupported(&self) -> Result<(), CniError> {
        let unsupported = |what: &str| {
            Err(CniError::unsupported_field(format!(
                "{what} is not supported by vaina-bridge"
            )))
        };
        if self
            .vlan_trunk
            .as_ref()
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        {
            return unsupported("vlanTrunk");
        }
        if self.preserve_default_vlan == Some(false) {
            return unsupported("preserveDefaultVlan: false");
        }
        if self.disable_container_interface {
            return unsupported("disableContainerInterface");
        }
        if self.port_isolation {
            return unsupported("portIsolation");
        }
        if let Some(b) = self.ip_masq_backend.as_deref()
            && b != "nftables"
        {
            return unsupported(&format!(
                "ipMasqBackend {b:?} (vaina masquerades with nftables)"
            ));
        }
        // The reference puts the gateway on a VLAN sub-interface of the bridge; vaina puts it
        // on the bridge itself, which pods on a VLAN access port could not reach.
        if self.vlan.is_some_and(|v| v > 0) && self.is_gateway {
            return unsupported("vlan together with isGateway");
        }
        Ok(())
    }

    /// False for L2-only networks (`"ipam": {}`): no addresses, no IPAM plugin.
    fn is_layer3(&self) -> bool {
        !self.ipam_type().is_empty()
    }

    fn ipam_type(&self) -> &str {
        self.ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or_default()
    }

    /// The requested MAC, by the reference's precedence: `runtimeConfig.mac` (the `mac`
    /// capability), then `args.cni.mac`, then `MAC` in CNI_ARGS.
    fn mac(&self, cni_args: &[(String, String)]) -> Result<Option<[u8; 6]>, CniError> {
        let from_runtime = self.runtime_config.as_ref().and_then(|r| r.mac.as_deref());
        let from_args = self
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/mac"))
            .and_then(|m| m.as_str());
        let from_env = cni_args
            .iter()
            .find(|(k, _)| k == "MAC")
            .map(|(_, v)| v.as_str());
        from_runtime
            .or(from_args)
            .or(from_env)
            .filter(|m| !m.is_empty())
            .map(parse_mac)
            .transpose()
    }
}

/// A 48-bit MAC in the forms Go's `net.ParseMAC` accepts: `0a:58:0a:58:00:99`,
/// `0a-58-0a-58-00-99`, `0a58.0a58.0099`.
fn parse_mac(s: &str) -> Result<[u8; 6], CniError> {
    let bad = || CniError::invalid_config(format!("invalid MAC address {s:?}"));
    let hex: String = if s.len() == 17 && (s.split(':').count() == 6 || s.split('-').count() == 6) {
        let sep = s.as_bytes()[2] as char;
        let groups: Vec<_> = s.split(sep).collect();
        if groups.len() != 6 || groups.iter().any(|g| g.len() != 2) {
            return Err(bad());
        }
        groups.concat()
    } else if s.len() == 14 && s.split('.').count() == 3 {
        let groups: Vec<_> = s.split('.').collect();
        if groups.iter().any(|g| g.len() != 4) {
            return Err(bad());
        }
        groups.concat()
    } else {
        return Err(bad());
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

pub struct Bridge;

impl Plugin for Bridge {
    fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = BridgeConf::parse(&a.stdin)?;
        let mac = conf.mac(&a.args)?;
        let pod_ns = open_netns(a)?;
        block_on(add(a, &conf, &pod_ns, mac))
    }

    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&a.stdin)?;
        // IPAM first: it needs neither the netns nor the veth, and is what leaks if skipped.
        if conf.is_layer3() {
            vaina_cni::invoke::delegate_del(conf.ipam_type(), a)?;
        }
        block_on(del(a, &conf))
    }

    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&a.stdin)?;
        if conf.is_layer3() {
            vaina_cni::invoke::delegate_check(conf.ipam_type(), a)?;
        }
        let prev = prev_result(a)?.ok_or_else(|| {
            CniError::invalid_config("bridge CHECK needs a prevResult".to_string())
        })?;
        let pod_ns = open_netns(a)?;
        block_on(check(a, &conf, &pod_ns, &prev))
    }

    fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&a.stdin)?;
        if conf.is_layer3() {
            vaina_cni::invoke::delegate_gc(conf.ipam_type(), a)?;
        }
        if conf.ip_masq || conf.macspoofchk {
            let valid = valid_attachments(a)?;
            let atts: Vec<Attachment> = valid
                .iter()
                .map(|(id, ifname)| Attachment {
                    network: &conf.name,
                    container_id: id,
                    ifname,
                })
                .collect();
            if conf.ip_masq {
                firewall::masq::gc(&conf.name, &atts).map_err(|e| CniError::io(e.to_string()))?;
            }
            if conf.macspoofchk {
                firewall::macspoof::gc(&conf.name, &atts)
                    .map_err(|e| CniError::io(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
        let conf = BridgeConf::parse(&a.stdin)?;
        if !conf.is_layer3() {
            return Ok(());
        }
        vaina_cni::invoke::delegate_status(conf.ipam_type(), a)
    }
}

/// What a failing ADD must remove, in reverse order of creation.
#[derive(Default)]
struct Made {
    bridge: Option<String>,
    veth: Option<String>,
    /// The MAC spoof check of this attachment may exist.
    macspoof: bool,
}

async fn add(
    a: &CmdArgs,
    conf: &BridgeConf,
    pod_ns: &Netns,
    mac: Option<[u8; 6]>,
) -> Result<CniResult, CniError> {
    let host = Netlink::open().map_err(net_err)?;
    let pod = Netlink::open_in(pod_ns).map_err(net_err)?;
    let mut made = Made::default();
    let res = add_steps(a, conf, pod_ns, &host, &pod, mac, &mut made).await;
    if res.is_err() {
        if made.macspoof {
            let att = attachment(conf, a);
            // Best effort, like the steps below: the ADD error is what the runtime gets,
            // and its DEL (or GC) removes what is left.
            let _ = firewall::macspoof::del_macspoof(&att);
        }
        // Deleting the host end removes the pod end too.
        if let Some(v) = &made.veth {
            let _ = host.del_link(v).await;
        }
        // The bridge goes only if this ADD created it and no other pod joined it meanwhile.
        if let Some(b) = &made.bridge
            && let Ok(Some(br)) = host.link(b).await
            && let Ok(links) = host.links().await
            && !links.iter().any(|l| l.controller == Some(br.index))
        {
            let _ = host.del_link(b).await;
        }
    }
    res
}

async fn add_steps(
    a: &CmdArgs,
    conf: &BridgeConf,
    pod_ns: &Netns,
    host: &Netlink,
    pod: &Netlink,
    mac: Option<[u8; 6]>,
    made: &mut Made,
) -> Result<CniResult, CniError> {
    let (br, created) = host
        .ensure_bridge(&BridgeSpec {
            name: conf.bridge.clone(),
            mtu: conf.mtu,
            promisc: conf.promisc_mode,
            vlan_filtering: conf.vlan.is_some_and(|v| v > 0),
        })
        .await
        .map_err(net_err)?;
    if created {
        made.bridge = Some(conf.bridge.clone());
        // Pin the bridge's MAC: left unset, the kernel gives the bridge its lowest port's
        // MAC, which changes as pods come and go and strands the gateway in pods' ARP
        // caches (the reference pins it too).
        if let Some(m) = br.mac {
            host.set_mac(br.index, m).await.map_err(net_err)?;
        }
    }
    // No router advertisements accepted from pods on the node's side (reference).
    set_ipv6_sysctl(&conf.bridge, "accept_ra", "0")?;

    let host_if = veth_name(&conf.name, &a.container_id, &a.ifname);
    if pod.link(&a.ifname).await.map_err(net_err)?.is_some() {
        return Err(CniError::invalid_config(format!(
            "container interface {} already exists in {}",
            a.ifname,
            netns_display(a)
        )));
    }
    // A host veth with our deterministic name is a leftover of a crashed ADD: replace it.
    host.del_link(&host_if).await.map_err(net_err)?;
    host.add_veth(&host_if, &a.ifname, pod_ns, conf.mtu.or(Some(br.mtu)), mac)
        .await
        .map_err(net_err)?;
    made.veth = Some(host_if.clone());
    let hv = host.require_link(&host_if).await.map_err(net_err)?;
    set_ipv6_sysctl(&host_if, "accept_ra", "0")?;
    host.set_controller(hv.index, br.index)
        .await
        .map_err(net_err)?;
    if conf.hairpin_mode {
        host.set_hairpin(hv.index, true).await.map_err(net_err)?;
    }
    if let Some(vid) = conf.vlan.filter(|v| *v > 0) {
        host.set_port_vlan(hv.index, vid).await.map_err(net_err)?;
    }
    if conf.macspoofchk {
        // Before the port comes up, so that no frame crosses it unchecked.
        let eth = pod.require_link(&a.ifname).await.map_err(net_err)?;
        let pod_mac = eth.mac.ok_or_else(|| {
            CniError::io(format!(
                "{} in {} has no MAC address",
                a.ifname,
                netns_display(a)
            ))
        })?;
        let att = attachment(conf, a);
        // Registered first: a failed `nft` run leaves nothing, but undoing is harmless.
        made.macspoof = true;
        firewall::macspoof::add_macspoof(&att, &host_if, pod_mac)
            .map_err(|e| CniError::io(e.to_string()))?;
    }
    host.set_up(hv.index).await.map_err(net_err)?;

    // IPAM runs after the veth exists, as in the reference: a failure below releases it.
    let ipam = if conf.is_layer3() {
        vaina_cni::invoke::delegate_add(conf.ipam_type(), a)?
    } else {
        CniResult::default()
    };
    let ipam_guard = IpamGuard {
        a,
        ipam_type: conf.ipam_type(),
        armed: conf.is_layer3(),
    };
    if conf.is_layer3() && ipam.ips.is_empty() {
        return Err(CniError::invalid_config(format!(
            "IPAM plugin {} returned no IP configuration",
            conf.ipam_type()
        )));
    }

    let mut result = CniResult {
        cni_version: a.config.cni_version.clone(),
        dns: if conf_dns_empty(&a.config) {
            ipam.dns.clone()
        } else {
            a.config.dns.clone().unwrap_or_default()
        },
        ..Default::default()
    };
    let br = host.require_link(&conf.bridge).await.map_err(net_err)?;
    result.interfaces.push(Interface {
        name: br.name.clone(),
        mac: br.mac_string(),
        ..Default::default()
    });
    result.interfaces.push(Interface {
        name: hv.name.clone(),
        mac: hv.mac_string(),
        ..Default::default()
    });
    let eth = pod.require_link(&a.ifname).await.map_err(net_err)?;
    result.interfaces.push(Interface {
        name: eth.name.clone(),
        mac: eth.mac_string(),
        sandbox: Some(netns_display(a)),
        ..Default::default()
    });
    result.ips = ipam
        .ips
        .iter()
        .map(|ip| IpConfig {
            interface: Some(2),
            ..ip.clone()
        })
        .collect();
    result.routes = ipam.routes.clone();
    if conf.is_default_gateway {
        for ip in &result.ips {
            let Some(gw) = ip.gateway else { continue };
            let any: IpNet = if gw.is_ipv4() {
                "0.0.0.0/0".parse().unwrap()
            } else {
                "::/0".parse().unwrap()
            };
            if !result.routes.iter().any(|r| r.dst == any) {
                result.routes.push(CniRoute {
                    dst: any,
                    gw: Some(gw),
                    ..Default::default()
                });
            }
        }
    }

    // Inside the pod: addresses, link up, routes (default gateway per family from IPAM).
    // arp_notify: the link coming up (after its addresses) announces them with a gratuitous
    // ARP, so neighbours forget a previous owner of a reused IP. Without DAD a v6 address is
    // usable at once. Both as in the reference plugin.
    pod_ns
        .run(|| -> Result<(), CniError> {
            let ifname = &a.ifname;
            sysctl::set(&sysctl::iface_key("ipv4", ifname, "arp_notify"), "1")
                .map_err(|e| CniError::io(error_chain(&e)))?;
            if !conf.enabledad {
                set_ipv6_sysctl(ifname, "accept_dad", "0")?;
            }
            Ok(())
        })
        .map_err(ns_err)??;
    for ip in &result.ips {
        pod.ensure_address(eth.index, ip.address)
            .await
            .map_err(net_err)?;
    }
    pod.set_up(eth.index).await.map_err(net_err)?;
    for r in &result.routes {
        let gw = r.gw.or_else(|| {
            result
                .ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        let mut route = Route::new(r.dst);
        route.gw = gw;
        route.oif = Some(eth.index);
        route.metric = r.priority;
        route.mtu = r.mtu;
        pod.ensure_route(&route).await.map_err(net_err)?;
    }

    if conf.is_gateway {
        for ip in &result.ips {
            let Some(gw) = ip.gateway else { continue };
            let gw_net = IpNet::new(gw, ip.address.prefix_len())
                .map_err(|e| CniError::invalid_config(e.to_string()))?;
            ensure_bridge_addr(host, &br, gw_net, conf.force_address).await?;
        }
        let v4 = result.ips.iter().any(|i| i.address.addr().is_ipv4());
        let v6 = result.ips.iter().any(|i| i.address.addr().is_ipv6());
        if v4 {
            sysctl::set("net.ipv4.ip_forward", "1").map_err(|e| CniError::io(e.to_string()))?;
        }
        if v6 {
            sysctl::set("net/ipv6/conf/all/forwarding", "1")
                .map_err(|e| CniError::io(e.to_string()))?;
        }
    }

    if conf.ip_masq {
        let att = attachment(conf, a);
        let nets: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
        firewall::masq::add_masquerade(&att, &nets).map_err(|e| CniError::io(e.to_string()))?;
    }

    ipam_guard.disarm();
    Ok(result)
}

/// This attachment, as the firewall rule sets key it.
fn attachment<'a>(conf: &'a BridgeConf, a: &'a CmdArgs) -> Attachment<'a> {
    Attachment {
        network: &conf.name,
        container_id: &a.container_id,
        ifname: &a.ifname,
    }
}

/// Releases the IPAM reservation if ADD fails after it.
struct IpamGuard<'a> {
    a: &'a CmdArgs,
    ipam_type: &'a str,
    armed: bool,
}

impl IpamGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for IpamGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = vaina_cni::invoke::delegate_del(self.ipam_type, self.a);
        }
    }
}

fn conf_dns_empty(c: &vaina_cni::config::NetworkConfig) -> bool {
    c.dns.as_ref().is_none_or(|d| d.is_empty())
}

/// Sets a per-interface IPv6 sysctl in the calling thread's netns; a kernel without IPv6
/// (no `/proc/sys/net/ipv6`) has nothing to set.
fn set_ipv6_sysctl(ifname: &str, setting: &str, value: &str) -> Result<(), CniError> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    sysctl::set(&sysctl::iface_key("ipv6", ifname, setting), value)
        .map_err(|e| CniError::io(error_chain(&e)))
}

fn ns_err(e: NetnsError) -> CniError {
    CniError::io(e.to_string())
}

/// Gives the bridge its gateway address. Another IPv4 address, or an IPv6 address in an
/// overlapping subnet, is an error unless `forceAddress`, which replaces it (reference
/// semantics).
async fn ensure_bridge_addr(
    host: &Netlink,
    br: &vaina_net::netlink::Link,
    gw: IpNet,
    force: bool,
) -> Result<(), CniError> {
    let existing = host.addresses(Some(br.index)).await.map_err(net_err)?;
    for (_, addr) in existing {
        if addr == gw {
            return Ok(());
        }
        let same_family = addr.addr().is_ipv4() == gw.addr().is_ipv4();
        let link_local =
            matches!(addr.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !same_family || link_local {
            continue;
        }
        // One IPv4 address per bridge; IPv6 addresses may coexist if their subnets do
        // not overlap (reference semantics).
        if gw.addr().is_ipv4() || addr.contains(&gw.addr()) || gw.contains(&addr.addr()) {
            if !force {
                return Err(CniError::invalid_config(format!(
                    "{} already has an IP address different from {gw}: {addr}",
                    br.name
                )));
            }
            host.del_address(br.index, addr).await.map_err(net_err)?;
        }
    }
    host.ensure_address(br.index, gw).await.map_err(net_err)
}

async fn del(a: &CmdArgs, conf: &BridgeConf) -> Result<(), CniError> {
    let mut ips: Vec<IpAddr> = prev_result(a)
        .ok()
        .flatten()
        .map(|r| r.ips.iter().map(|i| i.address.addr()).collect())
        .unwrap_or_default();
    if let Some(path) = a.netns.as_deref().filter(|p| !p.as_os_str().is_empty()) {
        match Netns::open(path) {
            Ok(ns) => {
                let pod = Netlink::open_in(&ns).map_err(net_err)?;
                if let Some(eth) = pod.link(&a.ifname).await.map_err(net_err)? {
                    if ips.is_empty() {
                        ips = pod
                            .addresses(Some(eth.index))
                            .await
                            .map_err(net_err)?
                            .into_iter()
                            .map(|(_, n)| n.addr())
                            .collect();
                    }
                    pod.del_link(&a.ifname).await.map_err(net_err)?;
                }
            }
            // The pod's netns is gone and its veth pair with it.
            Err(NetnsError::NotFound { .. }) | Err(NetnsError::NotNetns { .. }) => {}
            Err(e) => return Err(CniError::io(e.to_string())),
        }
    }
    // The host end may outlive a netns that was removed without DEL only until the kernel
    // destroys the pair; delete it if it is still there.
    let host = Netlink::open().map_err(net_err)?;
    host.del_link(&veth_name(&conf.name, &a.container_id, &a.ifname))
        .await
        .map_err(net_err)?;
    if conf.ip_masq {
        let att = attachment(conf, a);
        firewall::masq::del_masquerade(&att, &ips).map_err(|e| CniError::io(e.to_string()))?;
    }
    if conf.macspoofchk {
        // Found by the attachment alone: works when the netns and the veth are gone.
        let att = attachment(conf, a);
        firewall::macspoof::del_macspoof(&att).map_err(|e| CniError::io(e.to_string()))?;
    }
    Ok(())
}

async fn check(
    a: &CmdArgs,
    conf: &BridgeConf,
    pod_ns: &Netns,
    prev: &CniResult,
) -> Result<(), CniError> {
    let host = Netlink::open().map_err(net_err)?;
    let pod = Netlink::open_in(pod_ns).map_err(net_err)?;
    let br = host
        .link(&conf.bridge)
        .await
        .map_err(net_err)?
        .ok_or_else(|| CniError::io(format!("bridge {} not found", conf.bridge)))?;
    let host_if = veth_name(&conf.name, &a.container_id, &a.ifname);
    let hv = host
        .link(&host_if)
        .await
        .map_err(net_err)?
        .ok_or_else(|| CniError::io(format!("host veth {host_if} not found")))?;
    if hv.controller != Some(br.index) {
        return Err(CniError::io(format!(
            "{host_if} is not a port of bridge {}",
            conf.bridge
        )));
    }
    let eth = pod.link(&a.ifname).await.map_err(net_err)?.ok_or_else(|| {
        CniError::io(format!(
            "interface {} not found in {}",
            a.ifname,
            netns_display(a)
        ))
    })?;
    let have: Vec<IpNet> = pod
        .addresses(Some(eth.index))
        .await
        .map_err(net_err)?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    for ip in &prev.ips {
        if !have.contains(&ip.address) {
            return Err(CniError::io(format!(
                "address {} missing on {} in {}",
                ip.address,
                a.ifname,
                netns_display(a)
            )));
        }
    }
    if conf.ip_masq {
        let att = attachment(conf, a);
        let nets: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
        firewall::masq::check_masquerade(&att, &nets).map_err(|e| CniError::io(e.to_string()))?;
    }
    if conf.macspoofchk {
        // Against the pod's MAC now: a pod that changed it fails CHECK, as its frames do.
        let att = attachment(conf, a);
        let pod_mac = eth.mac.ok_or_else(|| {
            CniError::io(format!(
                "{} in {} has no MAC address",
                a.ifname,
                netns_display(a)
            ))
        })?;
        firewall::macspoof::check_macspoof(&att, &host_if, pod_mac)
            .map_err(|e| CniError::io(e.to_string()))?;
    }
    Ok(())
}
