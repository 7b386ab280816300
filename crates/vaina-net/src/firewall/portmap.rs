//! Host ports for the `portmap` plugin: connections to a local address of the node on a
//! host port are DNATed to the pod.
//!
//! ```text
//! table inet vaina_hostport {
//!     map ports { type inet_proto . inet_service : verdict; elements = { tcp . 8080 : jump p-… } }
//!     chain prerouting { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!     chain output     { type nat hook output priority -100;      fib daddr type local jump hostports }
//!     chain hostports  { meta l4proto . th dport vmap @ports }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat;
//!         ct status dnat meta mark & 0x00002000 == 0x00002000 masquerade
//!     }
//!     chain p-… {                                  # one per attachment
//!         ip saddr { 10.88.0.0/16, 127.0.0.0/8 } meta mark set meta mark | 0x00002000 comment "net/ctr/eth0"
//!         ip6 saddr fd00::/64 meta mark set meta mark | 0x00002000 comment "net/ctr/eth0"
//!         meta nfproto ipv4 tcp dport 8080 dnat ip to 10.88.0.2:80 comment "net/ctr/eth0"
//!         meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::2]:80 comment "net/ctr/eth0"
//!         ip daddr 127.0.0.1 tcp dport 8081 dnat ip to 10.88.0.2:81 comment "net/ctr/eth0"
//!     }
//! }
//! ```
//!
//! The two `meta mark set` rules are there only with `snat` (the default). Like the
//! reference plugin's `snat: true`, they mark for masquerading the connections the pod could
//! not answer directly: from the node over loopback (127/8 sources, which the pod cannot
//! route back), and from any address of the pod's subnets, which covers the pod reaching its
//! own host port (hairpin) and another pod on the same bridge reaching it through the node.
//! Without masquerade, the pod's reply to a neighbour goes straight over the bridge with the
//! pod's own address as source, past the node's conntrack, and the neighbour, which talked
//! to the node's address, drops it: it works only when br_netfilter passes bridged traffic
//! through netfilter (`bridge-nf-call-iptables=1`). The subnets come from the pod's
//! addresses' prefixes (`10.88.0.2/16` marks `10.88.0.0/16`). The bit is 0x2000, the
//! reference plugin's default `markMasqBit` (13), so both plugins on one node agree on it;
//! it is set on the packet, not the connection, and left set.
//!
//! Limitations, as in the reference plugin:
//! - A host port (protocol and port) leads to one attachment: if two claim it, the last
//!   ADD wins, and the earlier one's DEL leaves the winner's mapping alone. Mappings of one
//!   attachment that differ only in host IP do coexist (they share its chain).
//! - Only the first pod address of each family is a DNAT target (DNAT ends the chain). A
//!   mapping whose `hostIP` is of a family the pod has no address in is skipped.
//! - The node reaching a host port through `127.0.0.1` needs `route_localnet` on the
//!   bridge ([`localnet_sysctl`]); there is no IPv6 equivalent, so `::1` does not work.
//! - A pod outside the target pod's subnets (another network) reaching the host port through
//!   the node is not masqueraded: its replies are routed back through the node anyway.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use nftables::expr::{
    BinaryOperation, CT, Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression, SetItem,
};
use nftables::schema::NfListObject;
use nftables::stmt::{Mangle, NAT, NATFamily, Operator, Statement, VerdictMap};
use nftables::types::{NfChainType, NfHook};
use serde::{Deserialize, Deserializer, Serialize};

use super::nft::{self, Batch, Listing, Table};
use super::{Attachment, FirewallError, Layout, Result};

pub const TABLE: &str = "vaina_hostport";
const HOSTPORT: Table = Table::inet(TABLE);
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";
const HOSTPORTS: &str = "hostports";
const PORTS: &str = "ports";
const LAYOUT: Layout = Layout {
    table: HOSTPORT,
    chain_prefix: "p-",
    maps: &[PORTS],
    skeleton,
};
/// `NF_IP_PRI_NAT_DST` (nft's `dstnat`) and `NF_IP_PRI_NAT_SRC` (`srcnat`).
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
/// Marks a packet whose connection postrouting masquerades: bit 13, the reference
/// plugin's default `markMasqBit`.
const MASQ_MARK: u32 = 1 << 13;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    #[serde(alias = "TCP")]
    Tcp,
    #[serde(alias = "UDP")]
    Udp,
    #[serde(alias = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// As nft lists it in a concatenation: a name, or the number when it has none.
    fn from_nft(e: &Expression<'_>) -> Option<Protocol> {
        match e {
            Expression::String(s) => match s.as_ref() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => Some(Protocol::Udp),
                "sctp" => Some(Protocol::Sctp),
                _ => None,
            },
            Expression::Number(6) => Some(Protocol::Tcp),
            Expression::Number(17) => Some(Protocol::Udp),
            Expression::Number(132) => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One entry of the CNI `portMappings` capability:
/// `{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// Absent means tcp.
    #[serde(default)]
    pub protocol: Protocol,
    /// Only connections to this node address are mapped; absent, `""` or the unspecified
    /// address means any local address of the pod's family.
    #[serde(
        rename = "hostIP",
        default,
        deserialize_with = "empty_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub host_ip: Option<IpAddr>,
}

fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl PortMapping {
    /// Ports must be non-zero (serde already bounds them to 16 bits).
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| FirewallError::InvalidPortMapping {
            mapping: self.to_string(),
            reason,
        };
        if self.host_port == 0 {
            return Err(invalid("hostPort must be between 1 and 65535"));
        }
        if self.container_port == 0 {
            return Err(invalid("containerPort must be between 1 and 65535"));
        }
        Ok(())
    }

    /// The host address the rule matches, if any (the unspecified address matches all).
    fn host_ip(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }
}

/// `tcp 127.0.0.1:8080->80`, `udp [::1]:53->5353`, `tcp 8080->80`.
impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.protocol.as_str())?;
        match self.host_ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            None => {}
        }
        write!(f, "{}->{}", self.host_port, self.container_port)
    }
}

/// The sysctl key the plugin sets to 1 on the bridge so that DNATed packets from
/// 127.0.0.1 may leave through it (otherwise the kernel drops them as martians).
pub fn localnet_sysctl(ifname: &str) -> String {
    crate::sysctl::iface_key("ipv4", ifname, "route_localnet")
}

/// What ADD installs for one attachment apart from the mark rules, derived from its
/// mappings and addresses.
struct Plan {
    /// The DNAT rules of the attachment's chain.
    dnat: Vec<NfListObject<'static>>,
    /// Keys of the `ports` map that jump to the attachment's chain.
    ports: BTreeSet<(Protocol, u16)>,
}

fn plan(a: &Attachment<'_>, chain: &str, pod_nets: &[IpNet], maps: &[PortMapping]) -> Plan {
    let targets: Vec<IpAddr> = [
        pod_nets.iter().find(|n| n.addr().is_ipv4()),
        pod_nets.iter().find(|n| n.addr().is_ipv6()),
    ]
    .into_iter()
    .flatten()
    .map(IpNet::addr)
    .collect();
    // Mappings bound to a host address first, so they win over a catch-all for the same port.
    let mut maps = maps.to_vec();
    maps.sort_by_key(|m| m.host_ip().is_none());

    let owner = a.to_string();
    let mut plan = Plan {
        dnat: Vec::new(),
        ports: BTreeSet::new(),
    };
    for m in &maps {
        for pod in &targets {
            let host_match = match m.host_ip() {
                Some(h) if h.is_ipv4() != pod.is_ipv4() => continue,
                Some(h) => nft::eq(nft::ip_field(&h, "daddr"), nft::addr(h)),
                None => nft::nfproto(pod),
            };
            let expr = vec![
                host_match,
                nft::eq(
                    nft::meta(MetaKey::L4proto),
                    nft::string(m.protocol.as_str()),
                ),
                nft::eq(
                    nft::payload("th", "dport"),
                    Expression::Number(m.host_port.into()),
                ),
                Statement::DNAT(Some(NAT {
                    addr: Some(nft::addr(*pod)),
                    family: Some(if pod.is_ipv4() {
                        NATFamily::IP
                    } else {
                        NATFamily::IP6
                    }),
                    port: Some(Expression::Number(m.container_port.into())),
                    flags: None,
                })),
            ];
            plan.dnat
                .push(nft::rule(HOSTPORT, chain, expr, Some(&owner)));
            plan.ports.insert((m.protocol, m.host_port));
        }
    }
    plan
}

fn port_key((proto, port): (Protocol, u16)) -> Expression<'static> {
    nft::concat(vec![
        nft::string(proto.as_str()),
        Expression::Number(port.into()),
    ])
}

fn parse_port_key(e: &Expression<'_>) -> Option<(Protocol, u16)> {
    match e {
        Expression::Named(NamedExpression::Concat(parts)) => match parts.as_slice() {
            [proto, Expression::Number(port)] => {
                Some((Protocol::from_nft(proto)?, u16::try_from(*port).ok()?))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The `meta mark set` rules that open the attachment's chain with `snat`: one per family
/// the pod has an address in, matching 127/8 (IPv4 only) and the pod's subnets. Duplicate
/// and nested subnets are merged here, as nft would merge them, so the rule as listed is
/// the rule as sent.
fn mark_rules(a: &Attachment<'_>, chain: &str, pod_nets: &[IpNet]) -> Vec<NfListObject<'static>> {
    let owner = a.to_string();
    let mut rules = Vec::new();
    for v4 in [true, false] {
        let mut nets: Vec<IpNet> = pod_nets
            .iter()
            .filter(|n| n.addr().is_ipv4() == v4)
            .map(IpNet::trunc)
            .collect();
        if nets.is_empty() {
            continue;
        }
        if v4 {
            nets.push(IpNet::V4(
                Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("8 is a valid prefix length"),
            ));
        }
        let mut sources: Vec<Expression<'static>> = IpNet::aggregate(&nets)
            .into_iter()
            .map(nft::prefix)
            .collect();
        let sources = if sources.len() == 1 {
            sources.remove(0)
        } else {
            Expression::Named(NamedExpression::Set(
                sources.into_iter().map(SetItem::Element).collect(),
            ))
        };
        let mark = || nft::meta(MetaKey::Mark);
        let expr = vec![
            nft::eq(
                nft::payload(if v4 { "ip" } else { "ip6" }, "saddr"),
                sources,
            ),
            Statement::Mangle(Mangle {
                key: mark(),
                value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                    mark(),
                    Expression::Number(MASQ_MARK),
                ]))),
            }),
        ];
        rules.push(nft::rule(HOSTPORT, chain, expr, Some(&owner)));
    }
    rules
}

/// DNATs connections to the node's local addresses on each mapping's host port to the
/// pod's first address of the matching family. `pod_nets` are the pod's addresses with
/// their prefixes, as in the CNI result. With `snat`, also masquerades those connections
/// when they come from 127/8 or from the pod's subnets (see the module docs), as the
/// reference plugin's `snat: true` does. Runs in the calling thread's netns; one `nft` run
/// once the table exists, unless a host port is taken from another attachment.
pub fn add_port_mappings(
    a: &Attachment<'_>,
    pod_nets: &[IpNet],
    maps: &[PortMapping],
    snat: bool,
) -> Result<()> {
    for m in maps {
        m.validate()?;
    }
    let chain = LAYOUT.chain(a);
    let plan = plan(a, &chain, pod_nets, maps);
    if plan.dnat.is_empty() {
        return Ok(());
    }
    let marks = if snat {
        mark_rules(a, &chain, pod_nets)
    } else {
        Vec::new()
    };
    let op = || format!("add host ports for {a}");
    // The chain refilled with the marks, then the DNAT rules (DNAT ends the chain).
    let own = |batch: &mut Batch| {
        nft::reset_chain(batch, nft::chain(HOSTPORT, &chain));
        for rule in marks.iter().chain(&plan.dnat) {
            batch.add(rule.clone());
        }
        let jumps = plan
            .ports
            .iter()
            .map(|key| Expression::List(vec![port_key(*key), nft::jump(&chain)]));
        nft::add_elements(batch, HOSTPORT, PORTS, jumps.collect());
    };
    // Last writer wins a host port.
    let taken = |listing: &Listing| {
        let ours =
            |k: &Expression<'_>| parse_port_key(k).is_some_and(|key| plan.ports.contains(&key));
        vec![(PORTS, listing.keys_held_elsewhere(PORTS, &chain, ours))]
    };
    LAYOUT.add(&op, &own, &taken)
}

/// Table, map and the base chains, which are flushed and refilled so that repeated ADDs
/// never duplicate their rules.
fn skeleton(batch: &mut Batch) {
    batch.add(nft::table(HOSTPORT));
    batch.add_verdict_map(HOSTPORT, PORTS, &["inet_proto", "inet_service"]);

    nft::reset_chain(batch, nft::chain(HOSTPORT, HOSTPORTS));
    let vmap = Statement::VerdictMap(VerdictMap {
        key: nft::concat(vec![
            nft::meta(MetaKey::L4proto),
            nft::payload("th", "dport"),
        ]),
        data: nft::string(format!("@{PORTS}")),
    });
    batch.add(nft::rule(HOSTPORT, HOSTPORTS, vec![vmap], None));

    for (name, hook) in [(PREROUTING, NfHook::Prerouting), (OUTPUT, NfHook::Output)] {
        let base = nft::base_chain(HOSTPORT, name, NfChainType::NAT, hook, DSTNAT);
        nft::reset_chain(batch, base);
        let local = Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        }));
        let expr = vec![
            nft::eq(local, nft::string("local")),
            nft::jump_stmt(HOSTPORTS),
        ];
        batch.add(nft::rule(HOSTPORT, name, expr, None));
    }

    nft::reset_chain(
        batch,
        nft::base_chain(
            HOSTPORT,
            POSTROUTING,
            NfChainType::NAT,
            NfHook::Postrouting,
            SRCNAT,
        ),
    );
    let ct_status = Expression::Named(NamedExpression::CT(CT {
        key: "status".into(),
        family: None,
        dir: None,
    }));
    let masq_bit = Expression::BinaryOperation(Box::new(BinaryOperation::AND(
        nft::meta(MetaKey::Mark),
        Expression::Number(MASQ_MARK),
    )));
    let expr = vec![
        nft::matches(ct_status, Operator::IN, nft::string("dnat")),
        nft::eq(masq_bit, Expression::Number(MASQ_MARK)),
        Statement::Masquerade(None),
    ];
    batch.add(nft::rule(HOSTPORT, POSTROUTING, expr, None));
}

/// Removes everything ADD installed for the attachment. `maps` are the mappings ADD was
/// given, when the caller still has them (the runtime passes DEL the same
/// `runtimeConfig`): then one batch deletes the `ports` elements by key. Empty, or when
/// that batch fails, one listing and one batch find the elements jumping to the chain.
/// Absent rules (or no table at all) are success.
///
/// The keys are those of all of `maps`, including any ADD skipped for want of a pod
/// address of their family: deleting a key that was never added is `add` then `delete`, a
/// no-op, and one now held by another attachment fails the batch into the listing.
pub fn del_port_mappings(a: &Attachment<'_>, maps: &[PortMapping]) -> Result<()> {
    let keys: BTreeSet<(Protocol, u16)> = maps.iter().map(|m| (m.protocol, m.host_port)).collect();
    let op = || format!("delete host ports for {a}");
    let known = vec![(PORTS, keys.into_iter().map(port_key).collect())];
    LAYOUT.del(&LAYOUT.chain(a), &op, known)
}

/// CNI GC for the portmap plugin: removes the host-port chains (and their elements) of
/// `network` whose attachment is not in `valid`. Returns the removed attachments as
/// `network/container_id/ifname`.
pub fn gc(network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
    LAYOUT.gc(network, valid)
}

/// CNI CHECK: base chains, the attachment's chain and a `ports` element per mapped host
/// port jumping to it are present; otherwise [`FirewallError::Missing`] names the first
/// absent. The mark rules are not checked: whether they belong depends on `snat`, which
/// CHECK is not given.
pub fn check_port_mappings(
    a: &Attachment<'_>,
    pod_nets: &[IpNet],
    maps: &[PortMapping],
) -> Result<()> {
    let chain = LAYOUT.chain(a);
    let plan = plan(a, &chain, pod_nets, maps);
    if plan.dnat.is_empty() {
        return Ok(());
    }
    let op = || format!("check host ports for {a}");
    let listing =
        nft::list_table(HOSTPORT, &op)?.ok_or_else(|| HOSTPORT.missing("the table".into()))?;
    for base in [PREROUTING, OUTPUT, HOSTPORTS, POSTROUTING] {
        if !listing.has_chain(base) {
            return Err(HOSTPORT.missing(format!("chain {base}")));
        }
    }
    if !listing.has_chain(&chain) {
        return Err(HOSTPORT.missing(format!("chain {chain} of {a}")));
    }
    for key in &plan.ports {
        let present = listing.map_elems(PORTS).any(|(k, v)| {
            parse_port_key(k) == Some(*key) && nft::jump_target(v) == Some(chain.as_str())
        });
        if !present {
            let (proto, port) = key;
            return Err(HOSTPORT.missing(format!(
                "element {} . {port} : jump {chain} of map {PORTS}",
                proto.as_str()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cni_port_mappings() {
        let json = r#"[
            {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"},
            {"hostPort":53,"containerPort":5353,"protocol":"udp","hostIP":""},
            {"hostPort":9000,"containerPort":9000},
            {"hostPort":7,"containerPort":7,"protocol":"SCTP","hostIP":"::1"}
        ]"#;
        let maps: Vec<PortMapping> = serde_json::from_str(json).unwrap();
        assert_eq!(maps[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(maps[1].protocol, Protocol::Udp);
        assert_eq!(maps[1].host_ip, None);
        assert_eq!(maps[2].protocol, Protocol::Tcp);
        assert_eq!(maps[2].host_ip, None);
        assert_eq!(maps[3].protocol, Protocol::Sctp);
        assert_eq!(maps[3].to_string(), "sctp [::1]:7->7");
        assert!(
            serde_json::from_str::<PortMapping>(r#"{"hostPort":70000,"containerPort":1}"#).is_err()
        );
        assert!(
            serde_json::from_str::<PortMapping>(r#"{"hostPort":1,"containerPort":1,"hostIP":"x"}"#)
                .is_err()
        );
    }

    #[test]
    fn validate_names_the_mapping() {
        let m = PortMapping {
            host_port: 0,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        };
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("tcp 0->80"), "{err}");
        let m = PortMapping {
            host_port: 8080,
            container_port: 0,
            ..m
        };
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("containerPort")
        );
    }

    #[test]
    fn plan_targets_first_address_per_family() {
        let a = Attachment {
            network: "n",
            container_id: "c",
            ifname: "eth0",
        };
        let ips: Vec<IpNet> = ["10.0.0.2/24", "10.0.0.3/24", "fd00::2/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let maps = [
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            },
            PortMapping {
                host_port: 53,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
        ];
        let p = plan(&a, "p-x", &ips, &maps);
        // 53 bound to 127.0.0.1 comes first; 8080 for both families, 53 only for IPv4 (its
        // host IP is IPv4).
        let targets: Vec<IpAddr> = p.dnat.iter().flat_map(dnat_targets).collect();
        assert_eq!(
            targets,
            [ips[0].addr(), ips[0].addr(), ips[2].addr()],
            "{:?}",
            p.dnat
        );
        assert_eq!(p.ports.len(), 2);
    }

    fn dnat_targets(rule: &NfListObject<'_>) -> Vec<IpAddr> {
        let NfListObject::Rule(r) = rule else {
            return Vec::new();
        };
        r.expr
            .iter()
            .filter_map(|stmt| match stmt {
                Statement::DNAT(Some(NAT {
                    addr: Some(addr), ..
                })) => nft::parse_addr(addr),
                _ => None,
            })
            .collect()
    }

    /// The source match of each mark rule, as nft would read it.
    fn mark_sources(pod_nets: &[&str]) -> Vec<serde_json::Value> {
        let a = Attachment {
            network: "n",
            container_id: "c",
            ifname: "eth0",
        };
        let nets: Vec<IpNet> = pod_nets.iter().map(|s| s.parse().unwrap()).collect();
        mark_rules(&a, "p-x", &nets)
            .iter()
            .map(|r| {
                let NfListObject::Rule(r) = r else {
                    panic!("{r:?}")
                };
                let Statement::Match(m) = &r.expr[0] else {
                    panic!("{r:?}")
                };
                serde_json::to_value(&m.right).unwrap()
            })
            .collect()
    }

    #[test]
    fn mark_rules_match_loopback_and_the_pod_subnets_merged() {
        let prefix =
            |addr: &str, len: u32| serde_json::json!({"prefix": {"addr": addr, "len": len}});
        // Host bits dropped; a subnet inside another merged into it; no loopback for IPv6.
        assert_eq!(
            mark_sources(&["10.88.0.2/16", "10.88.3.4/24", "fd00::2/64"]),
            [
                serde_json::json!({"set": [prefix("10.88.0.0", 16), prefix("127.0.0.0", 8)]}),
                prefix("fd00::", 64),
            ]
        );
        assert_eq!(mark_sources(&["127.1.0.2/16"]), [prefix("127.0.0.0", 8)]);
        assert!(mark_sources(&[]).is_empty());
    }
}
