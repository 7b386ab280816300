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
//!
//! The `nft` plumbing of the parent module ([`super::nft`]) is written for the `inet`
//! family (its object builders, `add_verdict_map` and `list_table`), and its batch cannot
//! take a hand-written command from outside; so this module serializes the crate's typed
//! objects with `family: bridge` itself, builds the verdict map with `json!`, and runs
//! `nft` through the small [`run_nft`] below. A `family` parameter in `nft` would let this
//! module use it directly.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use nftables::expr::{Expression, MetaKey};
use nftables::helper::{self, NftablesError};
use nftables::schema::{self, Chain, Element, FlushObject, NfCmd, NfListObject, Rule};
use nftables::stmt::{Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::{Value, json};

use super::nft;
use super::{Attachment, FirewallError, Result, retry};

pub const TABLE: &str = "vaina_macspoof";
const PREROUTING: &str = "prerouting";
const PORTS: &str = "ports";
const CHAIN_PREFIX: &str = "s-";
/// `NF_BR_PRI_NAT_DST_BRIDGED`, the reference's priority: before bridge filter (-200).
const PRIORITY: i32 = -300;
const NFT: &str = "nft";
/// nft refuses comments longer than this (`NFTNL_UDATA_COMMENT_MAXLEN` minus the NUL).
const COMMENT_MAX: usize = 127;

pub(super) fn chain_name(a: &Attachment<'_>) -> String {
    a.chain(CHAIN_PREFIX)
}

/// Lets through only frames with source `mac` that enter the bridge from `host_ifname`
/// (the host end of the attachment's veth). Runs in the calling thread's netns (the
/// node's). Repeating it is harmless; a port still claimed by an attachment whose DEL
/// never ran is taken over.
pub fn add_macspoof(a: &Attachment<'_>, host_ifname: &str, mac: [u8; 6]) -> Result<()> {
    let chain = chain_name(a);
    let op = || format!("add MAC spoof check for {a} on {host_ifname}");
    let first = match apply(add_batch(a, &chain, host_ifname, mac, false), &op) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // The usual cause: the port's element jumps to another attachment's chain, and `add
    // element` with another verdict is EEXIST. The newest ADD owns the port.
    let Some(listing) = list(&op)? else {
        return Err(first);
    };
    let taken = listing
        .ports
        .iter()
        .any(|(port, target)| port == host_ifname && target.as_deref() != Some(chain.as_str()));
    if !taken {
        return Err(first);
    }
    apply(add_batch(a, &chain, host_ifname, mac, true), &op)
}

fn add_batch(
    a: &Attachment<'_>,
    chain: &str,
    host_ifname: &str,
    mac: [u8; 6],
    take_over: bool,
) -> Batch {
    let mut batch = Batch::default();
    skeleton(&mut batch);
    if take_over {
        batch.delete(NfListObject::Element(ports_element(vec![nft::string(
            host_ifname,
        )])));
    }
    reset_chain(&mut batch, plain_chain(chain));
    let owner = a.to_string();
    let allow = vec![
        nft::eq(
            nft::payload("ether", "saddr"),
            nft::string(crate::netlink::format_mac(&mac)),
        ),
        Statement::Return(None),
    ];
    batch.add(rule(chain, allow, Some(&owner)));
    batch.add(rule(chain, vec![Statement::Drop(None)], Some(&owner)));
    batch.add(NfListObject::Element(ports_element(vec![
        Expression::List(vec![nft::string(host_ifname), nft::jump(chain)]),
    ])));
    batch
}

/// Table, map and base chain; the base chain is flushed and refilled so that repeated
/// ADDs never duplicate its rule.
fn skeleton(batch: &mut Batch) {
    batch.add(NfListObject::Table(schema::Table {
        family: NfFamily::Bridge,
        name: TABLE.into(),
        handle: None,
    }));
    batch.0.push(json!({"add": {"map": {
        "family": "bridge", "table": TABLE, "name": PORTS, "type": "ifname", "map": "verdict",
    }}}));
    reset_chain(
        batch,
        Chain {
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Prerouting),
            prio: Some(PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..plain_chain(PREROUTING)
        },
    );
    let vmap = Statement::VerdictMap(VerdictMap {
        key: nft::meta(MetaKey::Iifname),
        data: nft::string(format!("@{PORTS}")),
    });
    batch.add(rule(PREROUTING, vec![vmap], None));
}

/// Removes the attachment's chain and every element jumping to it. Needs neither the
/// port nor the MAC (one listing, then one batch), so it works after the pod and its veth
/// are gone. Absent rules are success. Runs in the calling thread's netns.
pub fn del_macspoof(a: &Attachment<'_>) -> Result<()> {
    let chain = chain_name(a);
    let op = || format!("delete MAC spoof check for {a}");
    retry(|| {
        let Some(listing) = list(&op)? else {
            return Ok(());
        };
        let mut batch = Batch::default();
        if !teardown(&listing, &chain, &mut batch) {
            return Ok(());
        }
        apply(batch, &op)
    })
}

/// Adds to `batch` the removal of `chain` and of every element jumping to it; false when
/// the listing shows neither. Elements go as `add port : jump chain` + `delete port`: if
/// one now jumps elsewhere the add clashes and the batch fails instead of deleting
/// another attachment's element.
fn teardown(listing: &Listing, chain: &str, batch: &mut Batch) -> bool {
    let ports: Vec<&str> = listing
        .ports
        .iter()
        .filter(|(_, target)| target.as_deref() == Some(chain))
        .map(|(port, _)| port.as_str())
        .collect();
    if ports.is_empty() && !listing.has_chain(chain) {
        return false;
    }
    if !ports.is_empty() {
        let pairs = ports
            .iter()
            .map(|p| Expression::List(vec![nft::string(*p), nft::jump(chain)]))
            .collect();
        batch.add(NfListObject::Element(ports_element(pairs)));
        let keys = ports.iter().map(|p| nft::string(*p)).collect();
        batch.delete(NfListObject::Element(ports_element(keys)));
    }
    // `add; flush; delete`: gone whether or not it existed.
    reset_chain(batch, plain_chain(chain));
    batch.delete(NfListObject::Chain(plain_chain(chain)));
    true
}

/// CNI GC for the bridge plugin: removes the MAC spoof chains (and their elements) of
/// `network` whose attachment is not in `valid`. Returns the removed attachments as
/// `network/container_id/ifname`. A chain whose comment was truncated before the network
/// name ended (names over 126 bytes) is never collected.
pub fn gc(network: &str, valid: &[Attachment<'_>]) -> Result<Vec<String>> {
    let keep: HashSet<String> = valid.iter().map(chain_name).collect();
    let owner_prefix = format!("{network}/");
    let op = || format!("garbage-collect MAC spoof chains of network {network}");
    retry(|| {
        let Some(listing) = list(&op)? else {
            return Ok(Vec::new());
        };
        let mut batch = Batch::default();
        let mut removed = Vec::new();
        for chain in &listing.chains {
            if !chain.starts_with(CHAIN_PREFIX) || keep.contains(chain) {
                continue;
            }
            if let Some(owner) = listing.owner(chain)
                && owner.starts_with(&owner_prefix)
            {
                teardown(&listing, chain, &mut batch);
                removed.push(owner.to_string());
            }
        }
        if !batch.0.is_empty() {
            apply(batch, &op)?;
        }
        Ok(removed)
    })
}

/// CNI CHECK: the base chain with its map lookup, the attachment's chain allowing `mac`
/// and dropping the rest, and the element sending `host_ifname` there are present;
/// otherwise [`FirewallError::Missing`] names the first absent.
pub fn check_macspoof(a: &Attachment<'_>, host_ifname: &str, mac: [u8; 6]) -> Result<()> {
    let chain = chain_name(a);
    let op = || format!("check MAC spoof check for {a}");
    let missing = |what: String| FirewallError::Missing { table: TABLE, what };
    let listing = list(&op)?.ok_or_else(|| missing("the table".into()))?;
    let lookup = format!("@{PORTS}");
    let has_vmap = listing.rules(PREROUTING).any(|r| {
        r.expr
            .iter()
            .any(|s| s.pointer("/vmap/data").and_then(Value::as_str) == Some(lookup.as_str()))
    });
    if !has_vmap {
        return Err(missing(format!(
            "rule `iifname vmap @{PORTS}` of base chain {PREROUTING}"
        )));
    }
    if !listing.has_chain(&chain) {
        return Err(missing(format!("chain {chain} of {a}")));
    }
    let allows = listing.rules(&chain).any(|r| {
        r.expr.iter().any(|s| {
            let m = &s["match"];
            m["op"] == "=="
                && m["left"]["payload"]["protocol"] == "ether"
                && m["left"]["payload"]["field"] == "saddr"
                && m["right"].as_str().and_then(parse_mac) == Some(mac)
        }) && r.expr.iter().any(|s| s.get("return").is_some())
    });
    if !allows {
        let mac = crate::netlink::format_mac(&mac);
        return Err(missing(format!(
            "rule `ether saddr {mac} return` in chain {chain} of {a}"
        )));
    }
    let drops = listing
        .rules(&chain)
        .any(|r| r.expr.len() == 1 && r.expr[0].get("drop").is_some());
    if !drops {
        return Err(missing(format!("rule `drop` in chain {chain} of {a}")));
    }
    let jumps = listing
        .ports
        .iter()
        .any(|(p, t)| p == host_ifname && t.as_deref() == Some(chain.as_str()));
    if !jumps {
        return Err(missing(format!(
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

// ---- nft in the bridge family (see the module docs for why not `super::nft`) --------

/// Commands for one `nft -j -f -` transaction: all of them apply or none does.
#[derive(Default)]
struct Batch(Vec<Value>);

impl Batch {
    fn push(&mut self, cmd: NfCmd<'_>) {
        // Serializing the crate's own types cannot fail: no maps with non-string keys.
        self.0
            .push(serde_json::to_value(cmd).expect("nftables command serializes"));
    }

    fn add(&mut self, obj: NfListObject<'_>) {
        self.push(NfCmd::Add(obj));
    }

    fn delete(&mut self, obj: NfListObject<'_>) {
        self.push(NfCmd::Delete(obj));
    }
}

fn plain_chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::Bridge,
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        ..Chain::default()
    }
}

/// `add chain; flush chain`: the chain exists and is empty, ready for its rules.
fn reset_chain(batch: &mut Batch, c: Chain<'static>) {
    batch.add(NfListObject::Chain(c.clone()));
    batch.push(NfCmd::Flush(FlushObject::Chain(c)));
}

fn rule(
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<&str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::Bridge,
        table: TABLE.into(),
        chain: Cow::Owned(chain.to_string()),
        expr: expr.into(),
        comment: comment.map(|c| Cow::Owned(nft::truncate(c, COMMENT_MAX).to_string())),
        ..Rule::default()
    })
}

fn ports_element(elem: Vec<Expression<'static>>) -> Element<'static> {
    Element {
        family: NfFamily::Bridge,
        table: TABLE.into(),
        name: PORTS.into(),
        elem: elem.into(),
    }
}

/// Runs `batch` as one transaction in the calling thread's netns.
fn apply(batch: Batch, op: &dyn Fn() -> String) -> Result<()> {
    let doc = json!({ "nftables": batch.0 }).to_string();
    tracing::trace!(table = TABLE, op = %op(), commands = batch.0.len(), "applying nft batch");
    run_nft(&doc).map_err(|e| nft_error(e, op()))
}

/// `nft -j -f -` with nft's stderr captured: it holds the only statement of the reason.
fn run_nft(doc: &str) -> Result<(), NftablesError> {
    let exec_err = |inner| NftablesError::NftExecution {
        program: NFT.into(),
        inner,
    };
    let mut child = Command::new(NFT)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec_err)?;
    // nft reads all of stdin before it writes anything, so this cannot deadlock.
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(doc.as_bytes());
    let out = child.wait_with_output().map_err(exec_err)?;
    written.map_err(exec_err)?;
    if out.status.success() {
        return Ok(());
    }
    Err(NftablesError::NftFailed {
        program: NFT.into(),
        hint: "applying ruleset".into(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn nft_error(source: NftablesError, op: String) -> FirewallError {
    let detail = match &source {
        // JSON input gives "internal:0:0-0: Error: Could not process rule: File exists".
        NftablesError::NftFailed { stderr, .. } => {
            let errors: Vec<&str> = stderr
                .lines()
                .filter_map(|l| l.split_once("Error: ").map(|(_, msg)| msg.trim()))
                .collect();
            if errors.is_empty() {
                stderr.trim().to_string()
            } else {
                errors.join("; ")
            }
        }
        _ => String::new(),
    };
    FirewallError::Nft {
        op,
        table: TABLE,
        detail,
        source: Box::new(source),
    }
}

/// `nft -j list table bridge vaina_macspoof`, or `None` when the table does not exist.
fn list(op: &dyn Fn() -> String) -> Result<Option<Listing>> {
    match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, &["list", "table", "bridge", TABLE])
    {
        Ok(out) => {
            let doc: Value = serde_json::from_str(&out)
                .map_err(|e| nft_error(NftablesError::NftInvalidJson(e), op()))?;
            Ok(Some(Listing::new(&doc)))
        }
        // nft prints strerror(ENOENT) for a missing table; there is no other signal.
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(nft_error(e, op())),
    }
}

struct ListedRule {
    chain: String,
    comment: Option<String>,
    /// The statements as nft printed them.
    expr: Vec<Value>,
}

/// The listed table, read as plain JSON and object by object: whatever this module does
/// not recognise is skipped, never an error that would block a teardown.
struct Listing {
    chains: Vec<String>,
    rules: Vec<ListedRule>,
    /// `(port, jump target)` of each element of map `ports`; the target is `None` for a
    /// verdict other than jump or goto.
    ports: Vec<(String, Option<String>)>,
}

impl Listing {
    fn new(doc: &Value) -> Listing {
        let mut listing = Listing {
            chains: Vec::new(),
            rules: Vec::new(),
            ports: Vec::new(),
        };
        let objects = doc["nftables"].as_array().map_or(&[][..], Vec::as_slice);
        for obj in objects {
            if let Some(name) = obj.pointer("/chain/name").and_then(Value::as_str) {
                listing.chains.push(name.to_string());
            }
            if let Some(rule) = obj.get("rule")
                && let Some(chain) = rule["chain"].as_str()
            {
                listing.rules.push(ListedRule {
                    chain: chain.to_string(),
                    comment: rule["comment"].as_str().map(str::to_string),
                    expr: rule["expr"].as_array().cloned().unwrap_or_default(),
                });
            }
            if let Some(map) = obj.get("map")
                && map["name"] == PORTS
            {
                let elems = map["elem"].as_array().map_or(&[][..], Vec::as_slice);
                listing.ports.extend(elems.iter().filter_map(port_elem));
            }
        }
        listing
    }

    fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    fn rules<'s>(&'s self, chain: &'s str) -> impl Iterator<Item = &'s ListedRule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// The comment of the first commented rule of `chain`: the attachment that owns it.
    fn owner<'s>(&'s self, chain: &'s str) -> Option<&'s str> {
        self.rules(chain).find_map(|r| r.comment.as_deref())
    }
}

/// `["veth…", {"jump": {"target": "s-…"}}]`; nft wraps a part in `{"elem": {"val": …}}`
/// when it carries a timeout or comment.
fn port_elem(e: &Value) -> Option<(String, Option<String>)> {
    let unwrap = |v: &'_ Value| v.pointer("/elem/val").cloned().unwrap_or_else(|| v.clone());
    let pair = unwrap(e);
    let [key, verdict] = pair.as_array()?.as_slice() else {
        return None;
    };
    let port = unwrap(key).as_str()?.to_string();
    let target = ["/jump/target", "/goto/target"]
        .iter()
        .find_map(|p| verdict.pointer(p).and_then(Value::as_str))
        .map(str::to_string);
    Some((port, target))
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

    #[test]
    fn listing_reads_ports_and_owners_and_skips_the_rest() {
        let doc = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"map": {"family": "bridge", "name": "ports", "table": TABLE, "type": "ifname",
                     "map": "verdict", "elem": [
                ["veth1", {"jump": {"target": "s-1"}}],
                [{"elem": {"val": "veth2", "comment": "x"}}, {"goto": {"target": "s-2"}}],
                ["veth3", {"drop": null}],
                "garbage"
            ]}},
            {"chain": {"family": "bridge", "table": TABLE, "name": "s-1"}},
            {"rule": {"family": "bridge", "table": TABLE, "chain": "s-1",
                      "comment": "net/c/eth0", "expr": [{"drop": null}]}},
            {"rule": {"family": "bridge", "table": TABLE}}
        ]});
        let l = Listing::new(&doc);
        assert_eq!(
            l.ports,
            vec![
                ("veth1".into(), Some("s-1".into())),
                ("veth2".into(), Some("s-2".into())),
                ("veth3".into(), None),
            ]
        );
        assert!(l.has_chain("s-1"));
        assert_eq!(l.owner("s-1"), Some("net/c/eth0"));
        assert_eq!(l.rules.len(), 1);
    }
}
