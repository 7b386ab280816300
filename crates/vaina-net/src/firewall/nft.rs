//! Thin builders over the `nftables` crate's schema, the two `nft` calls the module makes
//! (apply a batch, list one table) and a read-only view of a listed table.
//!
//! Every builder takes the [`Table`] (family and name) it writes to: `inet` for masquerade
//! and host ports, `bridge` for the MAC spoof check. Idempotent deletes use the "add then
//! delete in the same batch" pattern because nft 1.0.6 has no `destroy`: `add` of an
//! existing object is a no-op, so the `delete` that follows always finds its target.
//!
//! Why not `nftables::batch::Batch` and `helper::get_current_ruleset_with_args` directly:
//! nftables 0.6 has no `verdict` value type for maps (nftables-rs issue #237), so it can
//! neither express `add map … : verdict` nor deserialize a listing that contains one (the
//! whole document fails). So [`Batch`] holds commands already serialized from the crate's
//! typed objects plus the one object built with `json!` ([`Batch::add_verdict_map`]), and
//! [`Listing`] deserializes a listing object by object, skipping what the crate cannot
//! read instead of failing a teardown over it.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{self, NftablesError};
use nftables::schema::{self, Chain, Element, FlushObject, NfCmd, NfListObject, Rule};
use nftables::stmt::{JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};
use serde_json::{Value, json};

use super::{FirewallError, Result};

/// The families the module's tables live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Inet,
    Bridge,
}

impl Family {
    fn nf(self) -> NfFamily {
        match self {
            Family::Inet => NfFamily::INet,
            Family::Bridge => NfFamily::Bridge,
        }
    }

    /// As nft spells it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// One table: what every builder, [`apply`] and [`list_table`] act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) family: Family,
    pub(super) name: &'static str,
}

impl Table {
    pub(super) const fn inet(name: &'static str) -> Table {
        Table {
            family: Family::Inet,
            name,
        }
    }

    pub(super) const fn bridge(name: &'static str) -> Table {
        Table {
            family: Family::Bridge,
            name,
        }
    }

    /// CHECK's error for an absent object of this table.
    pub(super) fn missing(self, what: String) -> FirewallError {
        FirewallError::Missing {
            family: self.family.as_str(),
            table: self.name,
            what,
        }
    }
}

/// `inet vaina_masq`, as in nft's `list table inet vaina_masq`.
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family.as_str(), self.name)
    }
}

/// Found through `PATH`, as the `nftables` crate does.
const NFT: &str = "nft";

/// nft refuses comments longer than this (`NFTNL_UDATA_COMMENT_MAXLEN` minus the NUL).
const COMMENT_MAX: usize = 127;

/// Commands for one `nft -j -f -` transaction: all of them apply or none does.
#[derive(Default)]
pub(super) struct Batch {
    cmds: Vec<Value>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch::default()
    }

    fn push(&mut self, cmd: NfCmd<'_>) {
        // Serializing the crate's own types cannot fail: no maps with non-string keys.
        self.cmds
            .push(serde_json::to_value(cmd).expect("nftables command serializes"));
    }

    pub(super) fn add(&mut self, obj: NfListObject<'_>) {
        self.push(NfCmd::Add(obj));
    }

    pub(super) fn delete(&mut self, obj: NfListObject<'_>) {
        self.push(NfCmd::Delete(obj));
    }

    /// `add map <family> <table> <name> { type <key> : verdict; }`, key types joined with
    /// `.`. Built with `json!`: the crate has no verdict map type (see the module docs).
    pub(super) fn add_verdict_map(&mut self, table: Table, name: &str, key: &[&str]) {
        let key = match key {
            [one] => json!(one),
            many => json!(many),
        };
        self.cmds.push(json!({"add": {"map": {
            "family": table.family.as_str(), "table": table.name, "name": name,
            "type": key, "map": "verdict",
        }}}));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }
}

/// Runs `nft -j -f -` with `batch` as one transaction, in the calling thread's netns.
///
/// Not `helper::apply_ruleset_raw`: it leaves nft's stderr uncaptured, so the reason for
/// a failure would go to our stderr instead of into the error.
pub(super) fn apply(batch: Batch, table: Table, op: &dyn Fn() -> String) -> Result<()> {
    let doc = json!({ "nftables": batch.cmds }).to_string();
    tracing::trace!(%table, op = %op(), commands = batch.cmds.len(), "applying nft batch");
    run_nft(&doc).map_err(|e| nft_error(e, table, op()))
}

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

/// `nft -j list table <family> <table>`, or `None` when the table does not exist (nothing
/// was ever added in this netns, which for a delete means there is nothing to do).
pub(super) fn list_table(table: Table, op: &dyn Fn() -> String) -> Result<Option<Listing>> {
    let args = ["list", "table", table.family.as_str(), table.name];
    match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, &args) {
        Ok(out) => {
            let doc: Value = serde_json::from_str(&out)
                .map_err(|e| nft_error(NftablesError::NftInvalidJson(e), table, op()))?;
            Ok(Some(Listing::new(doc)))
        }
        // nft prints strerror(ENOENT) for a missing table; there is no other signal.
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(nft_error(e, table, op())),
    }
}

fn nft_error(source: NftablesError, table: Table, op: String) -> FirewallError {
    // The crate's Display drops nft's stderr, which is the only place the reason is.
    let detail = match &source {
        NftablesError::NftFailed { stderr, .. } => {
            // JSON input gives "internal:0:0-0: Error: Could not process rule: File exists".
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
        family: table.family.as_str(),
        table: table.name,
        detail,
        source: Box::new(source),
    }
}

/// A set or map as listed: its name and elements (for a map, `[key, value]` lists).
struct Elems {
    name: String,
    elems: Vec<Expression<'static>>,
}

/// The chains, rules, sets and maps of one listed table.
pub(super) struct Listing {
    chains: Vec<String>,
    rules: Vec<Rule<'static>>,
    sets: Vec<Elems>,
}

impl Listing {
    fn new(doc: Value) -> Listing {
        let mut listing = Listing {
            chains: Vec::new(),
            rules: Vec::new(),
            sets: Vec::new(),
        };
        let objects = match doc {
            Value::Object(mut m) => m.remove("nftables"),
            _ => None,
        };
        let Some(Value::Array(objects)) = objects else {
            return listing;
        };
        for obj in objects {
            let Value::Object(obj) = obj else { continue };
            for (kind, body) in obj {
                match kind.as_str() {
                    "chain" => {
                        if let Some(name) = body.get("name").and_then(Value::as_str) {
                            listing.chains.push(name.to_string());
                        }
                    }
                    "rule" => {
                        if let Ok(rule) = serde_json::from_value(body) {
                            listing.rules.push(rule);
                        }
                    }
                    "set" | "map" => {
                        let Some(name) = body.get("name").and_then(Value::as_str) else {
                            continue;
                        };
                        let elems = match body.get("elem") {
                            Some(Value::Array(a)) => a
                                .iter()
                                .filter_map(|e| serde_json::from_value(e.clone()).ok())
                                .collect(),
                            _ => Vec::new(),
                        };
                        listing.sets.push(Elems {
                            name: name.to_string(),
                            elems,
                        });
                    }
                    _ => {}
                }
            }
        }
        listing
    }

    pub(super) fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    pub(super) fn chains(&self) -> impl Iterator<Item = &str> {
        self.chains.iter().map(String::as_str)
    }

    pub(super) fn rules<'s>(&'s self, chain: &'s str) -> impl Iterator<Item = &'s Rule<'static>> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// The comment of the first commented rule of `chain`: the attachment that owns it.
    pub(super) fn owner<'s>(&'s self, chain: &'s str) -> Option<&'s str> {
        self.rules(chain).find_map(|r| r.comment.as_deref())
    }

    fn elems(&self, name: &str) -> &[Expression<'static>] {
        self.sets
            .iter()
            .find(|s| s.name == name)
            .map_or(&[], |s| s.elems.as_slice())
    }

    /// `(key, value)` pairs of map `name`.
    pub(super) fn map_elems(
        &self,
        name: &str,
    ) -> impl Iterator<Item = (&Expression<'static>, &Expression<'static>)> {
        self.elems(name)
            .iter()
            .filter_map(|e| match unwrap_elem(e) {
                Expression::List(pair) if pair.len() == 2 => {
                    Some((unwrap_elem(&pair[0]), &pair[1]))
                }
                _ => None,
            })
    }

    /// Keys of the elements of map `map` whose verdict jumps (or goes) to `chain`.
    pub(super) fn keys_jumping_to(&self, map: &str, chain: &str) -> Vec<Expression<'static>> {
        self.map_elems(map)
            .filter(|(_, v)| jump_target(v) == Some(chain))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys of map `map` that `wanted` accepts but whose verdict is not a jump to `chain`:
    /// the elements an ADD for `chain` has to take over from another attachment.
    pub(super) fn keys_held_elsewhere(
        &self,
        map: &str,
        chain: &str,
        wanted: impl Fn(&Expression<'_>) -> bool,
    ) -> Vec<Expression<'static>> {
        self.map_elems(map)
            .filter(|(k, v)| wanted(k) && jump_target(v) != Some(chain))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// nft wraps an element in `{"elem": {"val": ..}}` when it carries a timeout or comment.
fn unwrap_elem<'e>(e: &'e Expression<'static>) -> &'e Expression<'static> {
    match e {
        Expression::Named(NamedExpression::Elem(elem)) => &elem.val,
        e => e,
    }
}

pub(super) fn jump_target<'e>(e: &'e Expression<'_>) -> Option<&'e str> {
    match e {
        Expression::Verdict(nftables::expr::Verdict::Jump(t))
        | Expression::Verdict(nftables::expr::Verdict::Goto(t)) => Some(&t.target),
        _ => None,
    }
}

// ---- objects -------------------------------------------------------------------------

pub(super) fn table(table: Table) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: table.family.nf(),
        name: table.name.into(),
        handle: None,
    })
}

pub(super) fn chain(table: Table, name: &str) -> Chain<'static> {
    Chain {
        family: table.family.nf(),
        table: table.name.into(),
        name: Cow::Owned(name.to_string()),
        ..Chain::default()
    }
}

pub(super) fn base_chain(
    table: Table,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> Chain<'static> {
    Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        ..chain(table, name)
    }
}

pub(super) fn rule(
    table: Table,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<&str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: table.family.nf(),
        table: table.name.into(),
        chain: Cow::Owned(chain.to_string()),
        expr: expr.into(),
        comment: comment.map(|c| Cow::Owned(truncate(c, COMMENT_MAX).to_string())),
        ..Rule::default()
    })
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn element(table: Table, set: &'static str, elem: Vec<Expression<'static>>) -> Element<'static> {
    Element {
        family: table.family.nf(),
        table: table.name.into(),
        name: set.into(),
        elem: elem.into(),
    }
}

// ---- batch steps ---------------------------------------------------------------------

/// `add chain; flush chain`: the chain exists and is empty, ready for its rules. Used for
/// base chains too, so every ADD re-renders them and they never hold duplicates.
pub(super) fn reset_chain(batch: &mut Batch, c: Chain<'static>) {
    batch.add(NfListObject::Chain(c.clone()));
    batch.push(NfCmd::Flush(FlushObject::Chain(c)));
}

pub(super) fn add_elements(
    batch: &mut Batch,
    table: Table,
    map: &'static str,
    elems: Vec<Expression<'static>>,
) {
    if !elems.is_empty() {
        batch.add(NfListObject::Element(element(table, map, elems)));
    }
}

/// Plain `delete element`: fails if one is missing. For elements a listing just showed.
pub(super) fn delete_elements(
    batch: &mut Batch,
    table: Table,
    map: &'static str,
    keys: Vec<Expression<'static>>,
) {
    if !keys.is_empty() {
        batch.delete(NfListObject::Element(element(table, map, keys)));
    }
}

/// Keys in one verdict map: `(map, keys)`.
pub(super) type MapKeys = (&'static str, Vec<Expression<'static>>);

/// Removes attachment chain `chain` and the elements `key : jump chain` with the keys of
/// `jumps`, whether or not any of them exist: `add chain`, then `add` and `delete` of the
/// elements, then `flush` and `delete` of the chain. The chain comes first so that the
/// elements' `add` finds its target even when the chain is gone (a repeated DEL).
///
/// The elements' `add` also guards against deleting someone else's element: if a key
/// jumps elsewhere, the add clashes (EEXIST) and the whole batch fails instead. And the
/// chain's `delete` fails (EBUSY) while an element not in `jumps` still jumps to it.
pub(super) fn remove_attachment(batch: &mut Batch, table: Table, chain: &str, jumps: Vec<MapKeys>) {
    let c = self::chain(table, chain);
    batch.add(NfListObject::Chain(c.clone()));
    for (map, keys) in jumps {
        let pairs = keys
            .iter()
            .map(|k| Expression::List(vec![k.clone(), jump(chain)]))
            .collect();
        add_elements(batch, table, map, pairs);
        delete_elements(batch, table, map, keys);
    }
    batch.push(NfCmd::Flush(FlushObject::Chain(c.clone())));
    batch.delete(NfListObject::Chain(c));
}

// ---- expressions and statements ------------------------------------------------------

pub(super) fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

pub(super) fn addr(ip: IpAddr) -> Expression<'static> {
    string(ip.to_string())
}

pub(super) fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(net.network())),
        len: u32::from(net.prefix_len()),
    }))
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

/// `ip saddr` / `ip6 daddr` etc. for the family of `ip`.
pub(super) fn ip_field(ip: &IpAddr, field: &'static str) -> Expression<'static> {
    payload(if ip.is_ipv4() { "ip" } else { "ip6" }, field)
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

pub(super) fn jump(chain: &str) -> Expression<'static> {
    Expression::Verdict(nftables::expr::Verdict::Jump(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    }))
}

pub(super) fn jump_stmt(chain: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.into(),
    })
}

pub(super) fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub(super) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}

/// `meta nfproto ipv4|ipv6`, for rules whose other matches do not imply the family.
pub(super) fn nfproto(ip: &IpAddr) -> Statement<'static> {
    eq(
        meta(MetaKey::Nfproto),
        string(if ip.is_ipv4() { "ipv4" } else { "ipv6" }),
    )
}

/// Parses an address as nft prints it (a JSON string).
pub(super) fn parse_addr(e: &Expression<'_>) -> Option<IpAddr> {
    match e {
        Expression::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_reads_map_elements_and_owners_and_skips_the_rest() {
        let doc = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"map": {"family": "bridge", "name": "ports", "table": "t", "type": "ifname",
                     "map": "verdict", "elem": [
                ["veth1", {"jump": {"target": "s-1"}}],
                [{"elem": {"val": "veth2", "comment": "x"}}, {"goto": {"target": "s-2"}}],
                ["veth3", {"drop": null}],
                "garbage"
            ]}},
            {"chain": {"family": "bridge", "table": "t", "name": "s-1"}},
            {"rule": {"family": "bridge", "table": "t", "chain": "s-1",
                      "comment": "net/c/eth0", "expr": [{"drop": null}]}},
            {"rule": {"family": "bridge", "table": "t"}}
        ]});
        let l = Listing::new(doc);
        let ports: Vec<(String, Option<&str>)> = l
            .map_elems("ports")
            .map(|(k, v)| (serde_json::to_string(k).unwrap(), jump_target(v)))
            .collect();
        assert_eq!(
            ports,
            [
                (r#""veth1""#.into(), Some("s-1")),
                (r#""veth2""#.into(), Some("s-2")),
                (r#""veth3""#.into(), None),
            ]
        );
        assert_eq!(l.keys_jumping_to("ports", "s-2"), [string("veth2")]);
        let wanted = |k: &Expression<'_>| *k != string("veth3");
        assert_eq!(
            l.keys_held_elsewhere("ports", "s-1", wanted),
            [string("veth2")]
        );
        assert!(l.has_chain("s-1"));
        assert_eq!(l.owner("s-1"), Some("net/c/eth0"));
        assert_eq!(l.rules.len(), 1);
    }

    #[test]
    fn tables_name_their_family() {
        assert_eq!(Table::bridge("t").to_string(), "bridge t");
        let cmd = {
            let mut b = Batch::new();
            b.add_verdict_map(Table::bridge("t"), "ports", &["ifname"]);
            b.cmds.remove(0)
        };
        assert_eq!(cmd["add"]["map"]["family"], "bridge");
    }
}
