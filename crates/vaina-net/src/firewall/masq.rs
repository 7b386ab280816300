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
use nftables::schema::NfListObject;
use nftables::stmt::{Operator, Statement, VerdictMap};
use nftables::types::NfHook;

use super::nft::{self, Batch, Listing};
use super::{Attachment, FirewallError, Result, gc_table, retry};

pub const TABLE: &str = "vaina_masq";
const POSTROUTING: &str = "postrouting";
const PODS4: &str = "pods4";
const PODS6: &str = "pods6";
const CHAIN_PREFIX: &str = "m-";
/// `NF_IP_PRI_NAT_SRC`, nft's `srcnat`.
const SRCNAT: i32 = 100;

pub(super) fn chain_name(a: &Attachment<'_>) -> String {
    a.chain(CHAIN_PREFIX)
}

fn pods_map(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { PODS4 } else { PODS6 }
}

/// Masquerades traffic from each address of `ips` (pod address with prefix; the subnet is
/// its truncation) to destinations outside those subnets. Runs in the calling thread's
/// netns. Repeating it is harmless; an address still claimed by an attachment whose DEL
/// never ran is taken over.
pub fn add_masquerade(a: &Attachment<'_>, ips: &[IpNet]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let chain = chain_name(a);
    let op = || format!("add masquerade for {a}");
    // Common case: the table exists, so send only this pod's objects. Re-adding existing
    // base chains costs the kernel an RCU grace period (~10 ms) per batch.
    if nft::apply(add_batch(a, &chain, ips, &[], false), TABLE, &op).is_ok() {
        return Ok(());
    }
    let first = match nft::apply(add_batch(a, &chain, ips, &[], true), TABLE, &op) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // The usual cause: an element for one of `ips` jumps to another attachment's chain
    // (its DEL never ran and IPAM handed the address out again), and `add element` with a
    // different verdict is EEXIST. The newest ADD owns the address.
    let Some(listing) = nft::list_table(TABLE, &op)? else {
        return Err(first);
    };
    let stale: Vec<(&'static str, IpAddr)> = [PODS4, PODS6]
        .into_iter()
        .flat_map(|map| {
            listing
                .map_elems(map)
                .filter(|(_, v)| nft::jump_target(v) != Some(chain.as_str()))
                .filter_map(|(k, _)| nft::parse_addr(k))
                .filter(|ip| ips.iter().any(|n| n.addr() == *ip))
                .map(move |ip| (map, ip))
                .collect::<Vec<_>>()
        })
        .collect();
    if stale.is_empty() {
        return Err(first);
    }
    nft::apply(add_batch(a, &chain, ips, &stale, true), TABLE, &op)
}

fn add_batch(
    a: &Attachment<'_>,
    chain: &str,
    ips: &[IpNet],
    stale: &[(&'static str, IpAddr)],
    with_skeleton: bool,
) -> Batch {
    let mut batch = Batch::new();
    if with_skeleton {
        skeleton(&mut batch);
    }
    for map in [PODS4, PODS6] {
        let keys = stale
            .iter()
            .filter(|(m, _)| *m == map)
            .map(|(_, ip)| nft::addr(*ip));
        nft::delete_elements(&mut batch, TABLE, map, keys.collect());
    }
    nft::reset_chain(&mut batch, nft::chain(TABLE, chain));
    for rule in attachment_rules(a, chain, ips) {
        batch.add(rule);
    }
    for map in [PODS4, PODS6] {
        let elems = ips
            .iter()
            .map(IpNet::addr)
            .filter(|ip| pods_map(ip) == map)
            .map(|ip| nftables::expr::Expression::List(vec![nft::addr(ip), nft::jump(chain)]));
        nft::add_elements(&mut batch, TABLE, map, elems.collect());
    }
    batch
}

/// Table, maps and base chain; the base chain is flushed and refilled so that repeated
/// ADDs never duplicate its rules.
fn skeleton(batch: &mut Batch) {
    batch.add(nft::table(TABLE));
    batch.add_verdict_map(TABLE, PODS4, &["ipv4_addr"]);
    batch.add_verdict_map(TABLE, PODS6, &["ipv6_addr"]);
    nft::reset_chain(
        batch,
        nft::nat_chain(TABLE, POSTROUTING, NfHook::Postrouting, SRCNAT),
    );
    for (proto, map) in [("ip", PODS4), ("ip6", PODS6)] {
        let vmap = Statement::VerdictMap(VerdictMap {
            key: nft::payload(proto, "saddr"),
            data: nft::string(format!("@{map}")),
        });
        batch.add(nft::rule(TABLE, POSTROUTING, vec![vmap], None));
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
            rules.push(nft::rule(TABLE, chain, accept, Some(&owner)));
        }
        let multicast: IpNet = multicast.parse().expect("constant prefix");
        let masq = vec![
            nft::matches(daddr(), Operator::NEQ, nft::prefix(multicast)),
            Statement::Masquerade(None),
        ];
        rules.push(nft::rule(TABLE, chain, masq, Some(&owner)));
    }
    rules
}

/// Removes the attachment's chain and the elements jumping to it. `ips` are the pod's
/// addresses when the caller still has them (one `nft` run); empty when the runtime lost
/// the result, and then the table is listed to find them. Absent rules are success.
pub fn del_masquerade(a: &Attachment<'_>, ips: &[IpAddr]) -> Result<()> {
    let chain = chain_name(a);
    let op = || format!("delete masquerade for {a}");
    if !ips.is_empty() {
        let mut batch = Batch::new();
        for map in [PODS4, PODS6] {
            let keys = ips
                .iter()
                .filter(|ip| pods_map(ip) == map)
                .map(|ip| nft::addr(*ip));
            nft::remove_jumps(&mut batch, TABLE, map, keys.collect(), &chain);
        }
        nft::delete_chain(&mut batch, TABLE, &chain);
        match nft::apply(batch, TABLE, &op) {
            Ok(()) => return Ok(()),
            // No table yet, an address now jumps elsewhere, or an element for an address
            // not in `ips` still uses the chain: the listing below sorts out all three.
            Err(e) => tracing::debug!(error = %e, attachment = %a, "fast masquerade delete failed"),
        }
    }
    retry(|| {
        let Some(listing) = nft::list_table(TABLE, &op)? else {
            return Ok(());
        };
        let mut batch = Batch::new();
        if !teardown(&listing, &chain, &mut batch) {
            return Ok(());
        }
        nft::apply(batch, TABLE, &op)
    })
}

/// Adds to `batch` the removal of `chain` and of every element jumping to it; false when
/// the listing shows neither (nothing to do).
pub(super) fn teardown(listing: &Listing, chain: &str, batch: &mut Batch) -> bool {
    let mut found = listing.has_chain(chain);
    for map in [PODS4, PODS6] {
        let keys = listing.keys_jumping_to(map, chain);
        found |= !keys.is_empty();
        nft::remove_jumps(batch, TABLE, map, keys, chain);
    }
    if found {
        nft::delete_chain(batch, TABLE, chain);
    }
    found
}

/// CNI GC for the bridge plugin: removes the masquerade chains (and their elements) of
/// `network` whose attachment is not in `valid`. Returns the removed attachments as
/// `network/container_id/ifname`.
pub fn gc(network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
    gc_table(TABLE, CHAIN_PREFIX, network, valid, teardown)
}

/// CNI CHECK: the base chain, the attachment's chain, and an element per address of `ips`
/// jumping to it are present; otherwise [`FirewallError::Missing`] names the first absent.
pub fn check_masquerade(a: &Attachment<'_>, ips: &[IpAddr]) -> Result<()> {
    let chain = chain_name(a);
    let op = || format!("check masquerade for {a}");
    let missing = |what: String| FirewallError::Missing { table: TABLE, what };
    let listing = nft::list_table(TABLE, &op)?.ok_or_else(|| missing("the table".into()))?;
    if !listing.has_chain(POSTROUTING) {
        return Err(missing(format!("base chain {POSTROUTING}")));
    }
    if !listing.has_chain(&chain) {
        return Err(missing(format!("chain {chain} of {a}")));
    }
    for &ip in ips {
        let map = pods_map(&ip);
        let present = listing.map_elems(map).any(|(k, v)| {
            nft::parse_addr(k) == Some(ip) && nft::jump_target(v) == Some(chain.as_str())
        });
        if !present {
            return Err(missing(format!("element {ip} : jump {chain} of map {map}")));
        }
    }
    Ok(())
}
