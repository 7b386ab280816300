//! nftables rules for the `bridge` plugin's `ipMasq` ([`masq`]) and for the `portmap`
//! plugin ([`portmap`]).
//!
//! Every function acts on the network namespace of the calling thread: it runs
//! `nft -j -f -` (or `nft -j list table`) as a child process, which inherits that thread's
//! namespace. Callers enter the node's namespace on a throwaway thread
//! ([`crate::netns::Netns::run`]) and call these from there.
//!
//! # Layout
//!
//! Two tables in the `inet` family, one per plugin, so each can be read and repaired on
//! its own: `inet vaina_masq` and `inet vaina_hostport`. Each attachment (one interface of
//! one container on one network) gets its own regular chain, `m-…` or `p-…` followed by
//! 16 hex digits of SHA-256 over `network/container_id/ifname`, reached from a base chain
//! through a verdict map keyed by pod address (masquerade) or by protocol and host port
//! (portmap). Every rule in such a chain carries the comment `network/container_id/ifname`
//! so a listing tells whom a chain belongs to.
//!
//! Why verdict maps rather than one rule per attachment (the reference plugins' iptables
//! layout): a new connection costs one hash lookup however many pods the node runs, and
//! an element is deleted by its key, so a teardown needs no rule handles. DEL of
//! masquerade with the pod's addresses is one `nft` run; without them, and DEL of host
//! ports (which never has them), is one listing plus one batch.
//!
//! Departures from the first design, and why:
//! - The portmap chain name hashes the network too, like the masquerade one: one identity
//!   for both tables. CNI GC is asked per network, so [`masq::gc`] and [`portmap::gc`]
//!   take the network and match it against the rules' comments.
//! - Host-port SNAT is per pod address, not a table-wide `127.0.0.0/8` rule: the set
//!   `snat4` holds `127.0.0.1 . pod` (the node reaching a host port over loopback) and
//!   `pod . pod` (hairpin), so an attachment added with `snat: false` gets neither, as in
//!   the reference plugin. The reference matches `127.0.0.1` exactly, and so do we: the
//!   kernel picks 127.0.0.1 as the source for every 127/8 destination.
//!
//! # Idempotency and races
//!
//! ADD re-renders the table skeleton (tables, maps, base chains flushed and refilled) and
//! the attachment's chain in one transaction, so repeating it leaves one copy of each
//! rule. DEL of something absent succeeds: it uses `add X` + `delete X` pairs in one batch
//! (nft 1.0.6 has no `destroy`). A map element is removed as `add key : jump ours` +
//! `delete key`: if the key meanwhile jumps to another attachment's chain the `add`
//! clashes (EEXIST) and the batch fails rather than deleting someone else's element; the
//! operation then lists the table again and retries once.
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

pub use masq::{add_masquerade, check_masquerade, del_masquerade};
pub use portmap::{
    PortMapping, Protocol, add_port_mappings, check_port_mappings, del_port_mappings,
    localnet_sysctl,
};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` could not run, or rejected the batch. `detail` is nft's own error text.
    #[error("cannot {op} in nftables table inet {table}{}", colon(.detail))]
    Nft {
        op: String,
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
    #[error("{what} is missing from nftables table inet {table}")]
    Missing { table: &'static str, what: String },
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
    /// `m-` or `p-` plus 16 hex digits: short enough for any nft version, stable across
    /// releases (chains added by one vaina version are deleted by the next).
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

/// Adds the removal of one attachment chain (and what points at it) to a batch; returns
/// false when the listing shows nothing of it.
type Teardown = fn(&nft::Listing, &str, &mut nft::Batch) -> bool;

/// The GC of one table: removes chains named `prefix…` whose rules' comment says they
/// belong to `network` and whose attachment is not in `valid`, with `teardown`. Returns
/// the removed attachments as `network/container_id/ifname`.
///
/// The network is an argument, not taken from `valid`, because an empty `valid` (every
/// attachment of the network is gone) is when GC matters most. A chain whose comment was
/// truncated before the network name ended (names over 126 bytes) is never collected.
fn gc_table(
    table: &'static str,
    prefix: &str,
    network: &str,
    valid: &[Attachment<'_>],
    teardown: Teardown,
) -> Result<Vec<String>> {
    let keep: HashSet<String> = valid.iter().map(|a| a.chain(prefix)).collect();
    let owner_prefix = format!("{network}/");
    let op = || format!("garbage-collect attachment chains of network {network}");
    retry(|| {
        let Some(listing) = nft::list_table(table, &op)? else {
            return Ok(Vec::new());
        };
        let mut batch = nft::Batch::new();
        let mut removed = Vec::new();
        for chain in listing.chains() {
            if !chain.starts_with(prefix) || keep.contains(chain) {
                continue;
            }
            match listing.owner(chain) {
                Some(owner) if owner.starts_with(&owner_prefix) => {
                    teardown(&listing, chain, &mut batch);
                    removed.push(owner.to_string());
                }
                _ => {}
            }
        }
        if !batch.is_empty() {
            nft::apply(batch, table, &op)?;
        }
        Ok(removed)
    })
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
