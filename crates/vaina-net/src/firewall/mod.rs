//! nftables rules for the `bridge` plugin's `ipMasq` ([`masq`]) and `macspoofchk`
//! ([`macspoof`]), and for the `portmap` plugin ([`portmap`]).
//!
//! Every function acts on the network namespace of the calling thread: it runs
//! `nft -j -f -` (or `nft -j list table`) as a child process, which inherits that thread's
//! namespace. Callers enter the node's namespace on a throwaway thread
//! ([`crate::netns::Netns::run`]) and call these from there.
//!
//! # Layout
//!
//! Three tables, one per feature, so each can be read and repaired on its own:
//!
//! | table                   | module       | chains | verdict map keyed by           |
//! |-------------------------|--------------|--------|--------------------------------|
//! | `inet vaina_masq`       | [`masq`]     | `m-…`  | pod address                    |
//! | `inet vaina_hostport`   | [`portmap`]  | `p-…`  | protocol and host port         |
//! | `bridge vaina_macspoof` | [`macspoof`] | `s-…`  | host veth name (input port)    |
//!
//! Each attachment (one interface of one container on one network) gets its own regular
//! chain in each table it uses, named by the prefix and 16 hex digits of SHA-256 over
//! `network/container_id/ifname`, reached from a base chain through the table's verdict
//! map. Every rule in such a chain carries the comment `network/container_id/ifname` so a
//! listing tells whom a chain belongs to. The MAC spoof table is in the `bridge` family
//! because frames between two pods of one bridge never reach the `inet` hooks.
//!
//! Why verdict maps rather than one rule per attachment (the reference plugins' iptables
//! layout): a new connection costs one hash lookup however many pods the node runs, and
//! an element is deleted by its key, so a teardown needs no rule handles. DEL of
//! masquerade with the pod's addresses, and of host ports with the mappings, is one `nft`
//! run; without them, and DEL of the MAC spoof check (which is not given the port), is one
//! listing plus one batch.
//!
//! Departures from the first design, and why:
//! - The portmap chain name hashes the network too, like the masquerade one: one identity
//!   for all tables. CNI GC is asked per network, so [`masq::gc`], [`portmap::gc`] and
//!   [`macspoof::gc`] take the network and match it against the rules' comments.
//! - Host-port SNAT is chosen per attachment, not by a table-wide `127.0.0.0/8` rule: with
//!   `snat` (the default) the attachment's chain marks packets from 127/8 and from the
//!   pod's subnets with 0x2000 (the reference plugin's default `markMasqBit`), and the
//!   table's `postrouting` masquerades DNATed connections that carry the mark. An
//!   attachment added with `snat: false` has no mark rules and its clients keep their
//!   address, as in the reference plugin. [`portmap`] says why whole subnets are marked.
//!
//! # Idempotency and races
//!
//! ADD resets the attachment's chain (`add`, `flush`, then its rules) and adds its map
//! elements in one transaction, so repeating it leaves one copy of each rule. It sends the
//! table skeleton (table, maps, base chains flushed and refilled) only when that batch
//! fails, because re-adding existing hooked base chains costs the kernel an RCU grace
//! period per batch; a key still held by another attachment is taken over after a listing.
//! DEL of something absent succeeds: it uses `add X` + `delete X` pairs in one batch
//! (nft 1.0.6 has no `destroy`). A map element is removed as `add key : jump ours` +
//! `delete key`: if the key meanwhile jumps to another attachment's chain the `add`
//! clashes (EEXIST) and the batch fails rather than deleting someone else's element; the
//! operation then lists the table and removes only what jumps to its chain, and if that
//! batch fails too (a concurrent change), lists again and retries once.
//!
//! What an `nft` run costs (measured on Linux 6.18 with nft 1.0.6): ~4 ms for a batch that
//! only adds new objects or for a listing, ~15 ms for a batch that deletes anything or
//! re-adds an existing chain. The difference is one RCU grace period: strace of `nft` shows
//! the `close` of its netlink socket blocking ~11 ms after such a batch, while the kernel
//! finishes releasing what the batch replaced. Hence one batch per operation, the skeleton
//! only when missing, and DEL by key without a listing when the caller can.
//!
//! The `nftables` crate 0.6 cannot express or parse verdict maps (nftables-rs #237); see
//! the `nft` module for how the batch and listing code works around that.

mod nft;

pub mod macspoof;
pub mod masq;
pub mod portmap;

use sha2::Digest;
use std::collections::HashSet;
use std::fmt;

use nft::{Batch, Listing, Table};

pub use masq::{add_masquerade, check_masquerade, del_masquerade};
pub use portmap::{
    PortMapping, Protocol, add_port_mappings, check_port_mappings, del_port_mappings,
    localnet_sysctl,
};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` could not run, or rejected the batch. `detail` is nft's own error text.
    #[error("cannot {op} in nftables table {family} {table}{}", colon(.detail))]
    Nft {
        op: String,
        /// `inet` or `bridge`.
        family: &'static str,
        table: &'static str,
        detail: String,
        /// Boxed: it carries nft's whole stdout and stderr.
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    /// A `portMappings` entry the rules cannot express.
    #[error("invalid port mapping {mapping}: {reason}")]
    InvalidPortMapping {
        mapping: String,
        reason: &'static str,
    },
    /// CHECK found an object absent.
    #[error("{what} is missing from nftables table {family} {table}")]
    Missing {
        family: &'static str,
        table: &'static str,
        what: String,
    },
}

fn colon(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

pub type Result<T, E = FirewallError> = std::result::Result<T, E>;

/// One interface of one container on one network: what owns a per-attachment chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attachment<'a> {
    /// The CNI network name (`name` of the network configuration).
    pub network: &'a str,
    pub container_id: &'a str,
    /// The interface name inside the container (`CNI_IFNAME`).
    pub ifname: &'a str,
}

impl Attachment<'_> {
    /// `m-`, `p-` or `s-` plus 16 hex digits: short enough for any nft version, stable
    /// across releases (chains added by one vaina version are deleted by the next).
    fn chain(&self, prefix: &str) -> String {
        let digest = sha2::Sha256::digest(self.to_string().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{prefix}{hex}")
    }
}

/// `network/container_id/ifname`, also the comment on the attachment's rules.
impl fmt::Display for Attachment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// CNI GC for `network` in every table: [`masq::gc`], [`portmap::gc`], then
/// [`macspoof::gc`]. For a caller that owns them all (the daemon's reconciler); each
/// plugin collects its own tables.
pub fn gc(network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
    let mut removed = masq::gc(network, valid)?;
    removed.extend(portmap::gc(network, valid)?);
    removed.extend(macspoof::gc(network, valid)?);
    Ok(removed)
}

/// What the ADD, DEL and GC steps shared by the three tables need to know of one: each
/// attachment owns a chain named `chain_prefix…`, reached through elements of `maps`.
struct Layout {
    table: Table,
    chain_prefix: &'static str,
    /// The verdict maps whose elements jump to attachment chains.
    maps: &'static [&'static str],
    /// Adds the table, its maps and its base chains (flushed and refilled, so repeating
    /// it never duplicates their rules) to a batch.
    skeleton: fn(&mut Batch),
}

impl Layout {
    fn chain(&self, a: &Attachment<'_>) -> String {
        a.chain(self.chain_prefix)
    }

    /// ADD of one attachment: `own` adds its objects to a batch (its chain reset and
    /// refilled, its map elements); `taken` finds in a listing the keys of those elements
    /// that jump to another attachment's chain. Each step runs only if the one before
    /// failed:
    /// 1. `own` alone: the common case, the table is set up. Re-adding existing hooked base
    ///    chains costs the kernel an RCU grace period (~10 ms) per batch, so the skeleton
    ///    is not sent when it is not needed. A damaged skeleton with its maps intact is
    ///    not repaired here; CHECK reports it.
    /// 2. the skeleton, then `own`: the first ADD in this netns.
    /// 3. a listing, then (2) after deleting the taken elements: an attachment whose DEL
    ///    never ran still holds a key (IPAM handed its address out again, a host port is
    ///    reused), and `add element` with another verdict is EEXIST. The newest ADD wins.
    ///    With nothing taken the failure was something else, and (2)'s error is returned.
    fn add(
        &self,
        op: &dyn Fn() -> String,
        own: &dyn Fn(&mut Batch),
        taken: &dyn Fn(&Listing) -> Vec<nft::MapKeys>,
    ) -> Result<()> {
        let batch = |skeleton: bool, taken: &[nft::MapKeys]| {
            let mut batch = Batch::new();
            if skeleton {
                (self.skeleton)(&mut batch);
            }
            for (map, keys) in taken {
                nft::delete_elements(&mut batch, self.table, map, keys.clone());
            }
            own(&mut batch);
            batch
        };
        if nft::apply(batch(false, &[]), self.table, op).is_ok() {
            return Ok(());
        }
        let first = match nft::apply(batch(true, &[]), self.table, op) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(listing) = nft::list_table(self.table, op)? else {
            return Err(first);
        };
        let taken = taken(&listing);
        if taken.iter().all(|(_, keys)| keys.is_empty()) {
            return Err(first);
        }
        for (map, keys) in &taken {
            for key in keys {
                tracing::info!(table = %self.table, map, ?key, op = %op(), "map element taken over from another attachment");
            }
        }
        nft::apply(batch(true, &taken), self.table, op)
    }

    /// DEL of one attachment: its chain and every element jumping to it. `known` are the
    /// keys ADD gave its elements, when the caller still has what ADD was given: then one
    /// batch deletes by key. That batch fails when the table does not exist, a key now
    /// jumps to another attachment's chain, or an element not in `known` still jumps to
    /// the chain; then, and when `known` is empty, the table is listed for the elements
    /// jumping to the chain. Absent rules (or no table at all) are success.
    fn del(&self, chain: &str, op: &dyn Fn() -> String, known: Vec<nft::MapKeys>) -> Result<()> {
        if known.iter().any(|(_, keys)| !keys.is_empty()) {
            let mut batch = Batch::new();
            nft::remove_attachment(&mut batch, self.table, chain, known);
            match nft::apply(batch, self.table, op) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "delete by key failed, listing the table"),
            }
        }
        retry(|| {
            let Some(listing) = nft::list_table(self.table, op)? else {
                return Ok(());
            };
            let mut batch = Batch::new();
            if !self.teardown(&listing, chain, &mut batch) {
                return Ok(());
            }
            nft::apply(batch, self.table, op)
        })
    }

    /// Adds to `batch` the removal of `chain` and of every element jumping to it; false
    /// when the listing shows neither (nothing to do).
    fn teardown(&self, listing: &Listing, chain: &str, batch: &mut Batch) -> bool {
        let jumps: Vec<nft::MapKeys> = self
            .maps
            .iter()
            .map(|&map| (map, listing.keys_jumping_to(map, chain)))
            .collect();
        if !listing.has_chain(chain) && jumps.iter().all(|(_, keys)| keys.is_empty()) {
            return false;
        }
        nft::remove_attachment(batch, self.table, chain, jumps);
        true
    }

    /// CNI GC of this table: removes the attachment chains whose rules' comment says they
    /// belong to `network` and whose attachment is not in `valid`, with their elements.
    /// Returns the removed attachments as `network/container_id/ifname`.
    ///
    /// The network is an argument, not taken from `valid`, because an empty `valid` (every
    /// attachment of the network is gone) is when GC matters most. A chain whose comment
    /// was truncated before the network name ended (names over 126 bytes) is never
    /// collected.
    fn gc(&self, network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
        let keep: HashSet<String> = valid.iter().map(|a| self.chain(a)).collect();
        let owner_prefix = format!("{network}/");
        let op = || format!("garbage-collect attachment chains of network {network}");
        retry(|| {
            let Some(listing) = nft::list_table(self.table, &op)? else {
                return Ok(Vec::new());
            };
            let mut batch = Batch::new();
            let mut removed = Vec::new();
            for chain in listing.chains() {
                if !chain.starts_with(self.chain_prefix) || keep.contains(chain) {
                    continue;
                }
                if let Some(owner) = listing.owner(chain)
                    && owner.starts_with(&owner_prefix)
                {
                    self.teardown(&listing, chain, &mut batch);
                    removed.push(owner.to_string());
                }
            }
            if !batch.is_empty() {
                nft::apply(batch, self.table, &op)?;
            }
            Ok(removed)
        })
    }
}

/// Runs a list-then-apply step again once if it fails: a concurrent ADD or DEL between
/// the listing and the batch makes the batch fail (see the module docs), and a fresh
/// listing resolves it. A second failure is returned.
fn retry<T>(mut step: impl FnMut() -> Result<T>) -> Result<T> {
    match step() {
        Ok(v) => Ok(v),
        Err(first) => {
            tracing::debug!(error = %first, "nft step failed, listing again");
            step()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_stable_and_distinct() {
        let a = Attachment {
            network: "net",
            container_id: "abc",
            ifname: "eth0",
        };
        let b = Attachment {
            ifname: "eth1",
            ..a
        };
        // Pinned (`printf net/abc/eth0 | sha256sum`): chains made by one release must be
        // found by the next.
        assert_eq!(a.chain("m-"), "m-04d0239dcdc68fde");
        assert_ne!(a.chain("m-"), b.chain("m-"));
        assert_eq!(a.to_string(), "net/abc/eth0");
    }
}
