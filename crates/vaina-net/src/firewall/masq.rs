//! Masquerade for the `bridge` plugin's `ipMasq`: traffic from a pod to anything outside
//! its own subnets leaves with the node's address.
//!
//! ```text
//! table inet vaina_masq {
//!     map pods4 { type ipv4_addr : verdict; elements = { 10.88.0.2 : jump m-… } }
//!     map pods6 { type ipv6_addr : verdict; }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat;
//!         ip saddr vmap @pods4
//!         ip6 saddr vmap @pods6
//!     }
//!     chain m-… {                                  # one per attachment
//!         ip daddr 10.88.0.0/16 accept comment "net/ctr/eth0"
//!         ip daddr != 224.0.0.0/4 masquerade comment "net/ctr/eth0"
//!     }
//! }
//! ```
//!
//! Like the reference plugin, multicast is never masqueraded and `accept` ends NAT
//! processing for in-subnet traffic. Only a connection's first packet sees nat chains.

use std::net::IpAddr;

use ipnet::IpNet;
use nftables::expr::Expression;
use nftables::schema::NfListObject;
use nftables::stmt::{Operator, Statement, VerdictMap};
use nftables::types::{NfChainType, NfHook};

use super::nft::{self, Batch, Table};
use super::{Attachment, Layout, Result};

pub const TABLE: &str = "vaina_masq";
const MASQ: Table = Table::inet(TABLE);
const POSTROUTING: &str = "postrouting";
const PODS4: &str = "pods4";
const PODS6: &str = "pods6";
/// `NF_IP_PRI_NAT_SRC`, nft's `srcnat`.
const SRCNAT: i32 = 100;
const LAYOUT: Layout = Layout {
    table: MASQ,
    chain_prefix: "m-",
    maps: &[PODS4, PODS6],
    skeleton,
};

fn pods_map(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { PODS4 } else { PODS6 }
}

/// `ips` as keys of the `pods4` and `pods6` maps.
fn pod_keys(ips: impl Iterator<Item = IpAddr> + Clone) -> Vec<nft::MapKeys> {
    [PODS4, PODS6]
        .into_iter()
        .map(|map| {
            let keys = ips.clone().filter(|ip| pods_map(ip) == map).map(nft::addr);
            (map, keys.collect())
        })
        .collect()
}

/// Masquerades traffic from each address of `ips` (pod address with prefix; the subnet is
/// its truncation) to destinations outside those subnets. Runs in the calling thread's
/// netns. Repeating it is harmless; an address still claimed by an attachment whose DEL
/// never ran is taken over. One `nft` run once the table exists.
pub fn add_masquerade(a: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let chain = LAYOUT.chain(a);
    let op = || format!("add masquerade for {a}");
    let own = |batch: &mut Batch| {
        nft::reset_chain(batch, nft::chain(MASQ, &chain));
        for rule in attachment_rules(a, &chain, ips) {
            batch.add(rule);
        }
        for (map, keys) in pod_keys(ips.iter().map(IpNet::addr)) {
            let elems = keys
                .into_iter()
                .map(|k| Expression::List(vec![k, nft::jump(&chain)]));
            nft::add_elements(batch, MASQ, map, elems.collect());
        }
    };
    let taken = |listing: &nft::Listing| {
        let ours = |k: &Expression<'_>| {
            nft::parse_addr(k).is_some_and(|ip| ips.iter().any(|n| n.addr() == ip))
        };
        [PODS4, PODS6]
            .into_iter()
            .map(|map| (map, listing.keys_held_elsewhere(map, &chain, ours)))
            .collect()
    };
    LAYOUT.add(&op, &own, &taken)
}

/// Table, maps and base chain; the base chain is flushed and refilled so that repeated
/// ADDs never duplicate its rules.
fn skeleton(batch: &mut Batch) {
    batch.add(nft::table(MASQ));
    batch.add_verdict_map(MASQ, PODS4, &["ipv4_addr"]);
    batch.add_verdict_map(MASQ, PODS6, &["ipv6_addr"]);
    nft::reset_chain(
        batch,
        nft::base_chain(
            MASQ,
            POSTROUTING,
            NfChainType::NAT,
            NfHook::Postrouting,
            SRCNAT,
        ),
    );
    for (proto, map) in [("ip", PODS4), ("ip6", PODS6)] {
        let vmap = Statement::VerdictMap(VerdictMap {
            key: nft::payload(proto, "saddr"),
            data: nft::string(format!("@{map}")),
        });
        batch.add(nft::rule(MASQ, POSTROUTING, vec![vmap], None));
    }
}

fn attachment_rules(a: &Attachment<'_>, chain: &str, ips: &[IpNet]) -> Vec<NfListObject<'static>> {
    let owner = a.to_string();
    let mut rules = Vec::new();
    for (v4, multicast) in [(true, "224.0.0.0/4"), (false, "ff00::/8")] {
        let mut subnets: Vec<IpNet> = ips
            .iter()
            .filter(|n| n.addr().is_ipv4() == v4)
            .map(IpNet::trunc)
            .collect();
        subnets.sort();
        subnets.dedup();
        let Some(first) = subnets.first() else {
            continue;
        };
        let daddr = || nft::ip_field(&first.addr(), "daddr");
        for net in &subnets {
            let accept = vec![nft::eq(daddr(), nft::prefix(*net)), Statement::Accept(None)];
            rules.push(nft::rule(MASQ, chain, accept, Some(&owner)));
        }
        let multicast: IpNet = multicast.parse().expect("constant prefix");
        let masq = vec![
            nft::matches(daddr(), Operator::NEQ, nft::prefix(multicast)),
            Statement::Masquerade(None),
        ];
        rules.push(nft::rule(MASQ, chain, masq, Some(&owner)));
    }
    rules
}

/// Removes the attachment's chain and the elements jumping to it. `ips` are the pod's
/// addresses when the caller still has them (one `nft` run); empty when the runtime lost
/// the result, and then the table is listed to find them. Absent rules are success.
pub fn del_masquerade(a: &Attachment<'_>, ips: &[IpAddr]) -> Result<()> {
    let op = || format!("delete masquerade for {a}");
    LAYOUT.del(&LAYOUT.chain(a), &op, pod_keys(ips.iter().copied()))
}

/// CNI GC for the bridge plugin: removes the masquerade chains (and their elements) of
/// `network` whose attachment is not in `valid`. Returns the removed attachments as
/// `network/container_id/ifname`.
pub fn gc(network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
    LAYOUT.gc(network, valid)
}

/// CNI CHECK: the base chain, the attachment's chain, and an element per address of `ips`
/// jumping to it are present; otherwise [`Missing`](super::FirewallError::Missing) names
/// the first absent.
pub fn check_masquerade(a: &Attachment<'_>, ips: &[IpAddr]) -> Result<()> {
    let chain = LAYOUT.chain(a);
    let op = || format!("check masquerade for {a}");
    let listing = nft::list_table(MASQ, &op)?.ok_or_else(|| MASQ.missing("the table".into()))?;
    if !listing.has_chain(POSTROUTING) {
        return Err(MASQ.missing(format!("base chain {POSTROUTING}")));
    }
    if !listing.has_chain(&chain) {
        return Err(MASQ.missing(format!("chain {chain} of {a}")));
    }
    for &ip in ips {
        let map = pods_map(&ip);
        let present = listing.map_elems(map).any(|(k, v)| {
            nft::parse_addr(k) == Some(ip) && nft::jump_target(v) == Some(chain.as_str())
        });
        if !present {
            return Err(MASQ.missing(format!("element {ip} : jump {chain} of map {map}")));
        }
    }
    Ok(())
}
