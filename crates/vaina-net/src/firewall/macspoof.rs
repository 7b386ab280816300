//! MAC spoof check for the `bridge` plugin's `macspoofchk`: frames that enter the bridge
//! from a pod's host veth must carry the MAC address of the pod's interface; any other
//! source MAC (a pod that changed its address, or forges frames) is dropped.
//!
//! ```text
//! table bridge vaina_macspoof {
//!     map ports { type ifname : verdict; elements = { "veth1a2b3c4d" : jump s-… } }
//!     chain prerouting {
//!         type filter hook prerouting priority -300; policy accept;
//!         iifname vmap @ports
//!     }
//!     chain s-… {                                  # one per attachment
//!         ether saddr 0a:58:0a:58:00:02 return comment "net/ctr/eth0"
//!         drop comment "net/ctr/eth0"
//!     }
//! }
//! ```
//!
//! The `bridge` family, because frames between two pods of one bridge never reach the
//! `inet` hooks (unless br_netfilter is loaded), and only the bridge hooks see the port a
//! frame came in by. Priority -300, as the reference (containernetworking/plugins
//! `pkg/link/spoofcheck.go`), runs before the bridge's own filter and DNAT chains. ARP
//! is checked too: a pod with a forged MAC cannot resolve anyone.
//!
//! Departures from the reference, and why:
//! - Its own table, not the shared `bridge nat`, and one chain per attachment instead of
//!   an interface chain plus a MAC chain.
//! - A verdict map keyed by the host veth's name instead of one `iifname … jump` rule per
//!   port in the base chain: a frame costs one lookup whatever the number of pods, and
//!   DEL deletes an element by its key instead of looking up a rule handle.
//!
//! Idempotency, races and GC work as in the other tables (see the parent module). DEL
//! needs neither the port nor the MAC: it lists the map for the elements jumping to the
//! attachment's chain, so it also works after the netns and the veth are gone.

use nftables::expr::{Expression, MetaKey};
use nftables::stmt::{Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::nft::{self, Batch, Listing, Table};
use super::{Attachment, Layout, Result};

pub const TABLE: &str = "vaina_macspoof";
const MACSPOOF: Table = Table::bridge(TABLE);
const PREROUTING: &str = "prerouting";
const PORTS: &str = "ports";
/// `NF_BR_PRI_NAT_DST_BRIDGED`, the reference's priority: before bridge filter (-200).
const PRIORITY: i32 = -300;
const LAYOUT: Layout = Layout {
    table: MACSPOOF,
    chain_prefix: "s-",
    maps: &[PORTS],
    skeleton,
};

/// Lets through only frames with source `mac` that enter the bridge from `host_ifname`
/// (the host end of the attachment's veth). Runs in the calling thread's netns (the
/// node's). Repeating it is harmless; a port still claimed by an attachment whose DEL
/// never ran is taken over. One `nft` run once the table exists.
pub fn add_macspoof(a: &Attachment<'_>, host_ifname: &str, mac: [u8; 6]) -> Result<()> {
    let chain = LAYOUT.chain(a);
    let op = || format!("add MAC spoof check for {a} on {host_ifname}");
    let own = |batch: &mut Batch| {
        nft::reset_chain(batch, nft::chain(MACSPOOF, &chain));
        let owner = a.to_string();
        let allow = vec![
            nft::eq(
                nft::payload("ether", "saddr"),
                nft::string(crate::netlink::format_mac(&mac)),
            ),
            Statement::Return(None),
        ];
        batch.add(nft::rule(MACSPOOF, &chain, allow, Some(&owner)));
        let drop = vec![Statement::Drop(None)];
        batch.add(nft::rule(MACSPOOF, &chain, drop, Some(&owner)));
        let elem = Expression::List(vec![nft::string(host_ifname), nft::jump(&chain)]);
        nft::add_elements(batch, MACSPOOF, PORTS, vec![elem]);
    };
    let taken = |listing: &Listing| {
        let ours = |k: &Expression<'_>| matches!(k, Expression::String(p) if p == host_ifname);
        vec![(PORTS, listing.keys_held_elsewhere(PORTS, &chain, ours))]
    };
    LAYOUT.add(&op, &own, &taken)
}

/// Table, map and base chain; the base chain is flushed and refilled so that repeated
/// ADDs never duplicate its rule.
fn skeleton(batch: &mut Batch) {
    batch.add(nft::table(MACSPOOF));
    batch.add_verdict_map(MACSPOOF, PORTS, &["ifname"]);
    let prerouting = nft::base_chain(
        MACSPOOF,
        PREROUTING,
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIORITY,
    );
    nft::reset_chain(
        batch,
        nftables::schema::Chain {
            policy: Some(NfChainPolicy::Accept),
            ..prerouting
        },
    );
    let vmap = Statement::VerdictMap(VerdictMap {
        key: nft::meta(MetaKey::Iifname),
        data: nft::string(format!("@{PORTS}")),
    });
    batch.add(nft::rule(MACSPOOF, PREROUTING, vec![vmap], None));
}

/// Removes the attachment's chain and every element jumping to it. Needs neither the
/// port nor the MAC (one listing, then one batch), so it works after the pod and its veth
/// are gone. Absent rules are success. Runs in the calling thread's netns.
pub fn del_macspoof(a: &Attachment<'_>) -> Result<()> {
    let op = || format!("delete MAC spoof check for {a}");
    LAYOUT.del(&LAYOUT.chain(a), &op, Vec::new())
}

/// CNI GC for the bridge plugin: removes the MAC spoof chains (and their elements) of
/// `network` whose attachment is not in `valid`. Returns the removed attachments as
/// `network/container_id/ifname`.
pub fn gc(network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
    LAYOUT.gc(network, valid)
}

/// CNI CHECK: the base chain with its map lookup, the attachment's chain allowing `mac`
/// and dropping the rest, and the element sending `host_ifname` there are present;
/// otherwise [`Missing`](super::FirewallError::Missing) names the first absent.
pub fn check_macspoof(a: &Attachment<'_>, host_ifname: &str, mac: [u8; 6]) -> Result<()> {
    let chain = LAYOUT.chain(a);
    let op = || format!("check MAC spoof check for {a}");
    let listing =
        nft::list_table(MACSPOOF, &op)?.ok_or_else(|| MACSPOOF.missing("the table".into()))?;
    let lookup = nft::string(format!("@{PORTS}"));
    let has_vmap = listing.rules(PREROUTING).any(|r| {
        r.expr
            .iter()
            .any(|s| matches!(s, Statement::VerdictMap(v) if v.data == lookup))
    });
    if !has_vmap {
        return Err(MACSPOOF.missing(format!(
            "rule `iifname vmap @{PORTS}` of base chain {PREROUTING}"
        )));
    }
    if !listing.has_chain(&chain) {
        return Err(MACSPOOF.missing(format!("chain {chain} of {a}")));
    }
    let ether_saddr = nft::payload("ether", "saddr");
    let allows = listing.rules(&chain).any(|r| {
        r.expr.iter().any(|s| match s {
            Statement::Match(m) => {
                m.op == Operator::EQ
                    && m.left == ether_saddr
                    && matches!(&m.right, Expression::String(s) if parse_mac(s) == Some(mac))
            }
            _ => false,
        }) && r.expr.iter().any(|s| matches!(s, Statement::Return(_)))
    });
    if !allows {
        let mac = crate::netlink::format_mac(&mac);
        return Err(MACSPOOF.missing(format!(
            "rule `ether saddr {mac} return` in chain {chain} of {a}"
        )));
    }
    let drops = listing
        .rules(&chain)
        .any(|r| matches!(r.expr.as_ref(), [Statement::Drop(_)]));
    if !drops {
        return Err(MACSPOOF.missing(format!("rule `drop` in chain {chain} of {a}")));
    }
    let jumps = listing.map_elems(PORTS).any(|(k, v)| {
        matches!(k, Expression::String(p) if p == host_ifname)
            && nft::jump_target(v) == Some(chain.as_str())
    });
    if !jumps {
        return Err(MACSPOOF.missing(format!(
            "element \"{host_ifname}\" : jump {chain} of map {PORTS}"
        )));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff` as nft prints it.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_as_nft_prints_them() {
        assert_eq!(
            parse_mac("0a:58:0a:ff:00:02"),
            Some([0x0a, 0x58, 0x0a, 0xff, 0x00, 0x02])
        );
        assert_eq!(parse_mac("0a:58:0a:ff:00"), None);
        assert_eq!(parse_mac("0a:58:0a:ff:00:02:03"), None);
        assert_eq!(parse_mac("0a:58:0a:ff:00:2"), None);
    }
}
