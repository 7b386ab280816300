//! Thin builders over the `nftables` crate's schema, the two `nft` calls the module makes
//! (apply a batch, list one table) and a read-only view of a listed table.
//!
//! Everything is in the `inet` family. Idempotent deletes use the "add then delete in the
//! same batch" pattern because nft 1.0.6 has no `destroy`: `add` of an existing object is
//! a no-op, so the `delete` that follows always finds its target.
//!
//! Why not `nftables::batch::Batch` and `helper::get_current_ruleset_with_args` directly:
//! nftables 0.6 has no `verdict` value type for maps (nftables-rs issue #237), so it can
//! neither express `add map … : verdict` nor deserialize a listing that contains one (the
//! whole document fails). So [`Batch`] holds commands already serialized from the crate's
//! typed objects plus the one object built with `json!` ([`Batch::add_verdict_map`]), and
//! [`Listing`] deserializes a listing object by object, skipping what the crate cannot
//! read instead of failing a teardown over it.

use std::borrow::Cow;
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

pub(super) const FAMILY: NfFamily = NfFamily::INet;

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

    /// `add map inet <table> <name> { type <key> : verdict; }`, key types joined with `.`.
    pub(super) fn add_verdict_map(&mut self, table: &str, name: &str, key: &[&str]) {
        let key = match key {
            [one] => json!(one),
            many => json!(many),
        };
        self.cmds.push(json!({"add": {"map": {
            "family": "inet", "table": table, "name": name, "type": key, "map": "verdict",
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
pub(super) fn apply(batch: Batch, table: &'static str, op: &dyn Fn() -> String) -> Result<()> {
    let doc = json!({ "nftables": batch.cmds }).to_string();
    tracing::trace!(table, op = %op(), commands = batch.cmds.len(), "applying nft batch");
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

/// `nft -j list table inet <table>`, or `None` when the table does not exist (nothing was
/// ever added in this netns, which for a delete means there is nothing to do).
pub(super) fn list_table(table: &'static str, op: &dyn Fn() -> String) -> Result<Option<Listing>> {
    let args = ["list", "table", "inet", table];
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

fn nft_error(source: NftablesError, table: &'static str, op: String) -> FirewallError {
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
        table,
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

pub(super) fn table(name: &'static str) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: FAMILY,
        name: name.into(),
        handle: None,
    })
}

pub(super) fn chain(table: &'static str, name: &str) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: table.into(),
        name: Cow::Owned(name.to_string()),
        ..Chain::default()
    }
}

pub(super) fn nat_chain(
    table: &'static str,
    name: &'static str,
    hook: NfHook,
    prio: i32,
) -> Chain<'static> {
    Chain {
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        ..chain(table, name)
    }
}

pub(super) fn set(
    table: &'static str,
    name: &'static str,
    key: schema::SetTypeValue<'static>,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(schema::Set {
        family: FAMILY,
        table: table.into(),
        name: name.into(),
        set_type: key,
        ..schema::Set::default()
    }))
}

pub(super) fn rule(
    table: &'static str,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<&str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: table.into(),
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

fn element(
    table: &'static str,
    set: &'static str,
    elem: Vec<Expression<'static>>,
) -> Element<'static> {
    Element {
        family: FAMILY,
        table: table.into(),
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

/// `add chain; flush chain; delete chain`: gone whether or not it existed. Fails (EBUSY)
/// if a map element still jumps to it, so callers delete those earlier in the batch.
pub(super) fn delete_chain(batch: &mut Batch, table: &'static str, name: &str) {
    let c = chain(table, name);
    reset_chain(batch, c.clone());
    batch.delete(NfListObject::Chain(c));
}

pub(super) fn add_elements(
    batch: &mut Batch,
    table: &'static str,
    set: &'static str,
    elems: Vec<Expression<'static>>,
) {
    if !elems.is_empty() {
        batch.add(NfListObject::Element(element(table, set, elems)));
    }
}

/// Plain `delete element`: fails if one is missing. For elements a listing just showed.
pub(super) fn delete_elements(
    batch: &mut Batch,
    table: &'static str,
    set: &'static str,
    keys: Vec<Expression<'static>>,
) {
    if !keys.is_empty() {
        batch.delete(NfListObject::Element(element(table, set, keys)));
    }
}

/// Removes set elements whether or not they exist (`add` then `delete`).
pub(super) fn remove_set_elements(
    batch: &mut Batch,
    table: &'static str,
    set: &'static str,
    elems: Vec<Expression<'static>>,
) {
    add_elements(batch, table, set, elems.clone());
    delete_elements(batch, table, set, elems);
}

/// Removes the elements `key : jump chain` of a verdict map, whether or not they exist.
/// The `add` half also guards against deleting someone else's element: if a key now jumps
/// elsewhere, the add clashes (EEXIST) and the whole batch fails instead.
pub(super) fn remove_jumps(
    batch: &mut Batch,
    table: &'static str,
    map: &'static str,
    keys: Vec<Expression<'static>>,
    chain: &str,
) {
    let pairs = keys
        .iter()
        .map(|k| Expression::List(vec![k.clone(), jump(chain)]))
        .collect();
    add_elements(batch, table, map, pairs);
    delete_elements(batch, table, map, keys);
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
