//! The MAC spoof check (`macspoofchk`), proven with real TCP connections between two pods
//! on one bridge, inside a throwaway node netns:
//!
//! ```text
//!   pod1 eth0 10.88.0.2/24 ── vh1 ──┐
//!                                   br0 [node]
//!   pod2 eth0 10.88.0.3/24 ── vh2 ──┘
//! ```
//!
//! Traffic between the pods is bridged, never routed: only the bridge-family hook sees it.
//! A TCP handshake is the witness (the kernel completes it into the listener's backlog).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use vaina_net::firewall::macspoof::{self, add_macspoof, check_macspoof, del_macspoof};
use vaina_net::firewall::{self, Attachment, FirewallError};
use vaina_testkit::{Node, Pod, can_run_ns_tests};

const POD1_IP: &str = "10.88.0.2";
const FORGED_MAC: &str = "0a:58:00:00:00:42";

struct Topo {
    node: Node,
    pod1: Pod,
    pod2: Pod,
    /// Bound in pod1; kept so its port stays open.
    _listener: TcpListener,
}

impl Topo {
    fn new() -> Topo {
        let node = Node::new();
        node.sh_ok("ip link add br0 type bridge && ip link set br0 up");
        let pod1 = pod(&node, "vh1", POD1_IP);
        let pod2 = pod(&node, "vh2", "10.88.0.3");
        let listener = pod1
            .run(|| TcpListener::bind((POD1_IP, 7000)))
            .expect("bind in pod1");
        Topo {
            node,
            pod1,
            pod2,
            _listener: listener,
        }
    }

    /// Whether pod2 completes a TCP handshake with pod1.
    fn pod2_reaches_pod1(&self) -> bool {
        let to: SocketAddr = format!("{POD1_IP}:7000").parse().unwrap();
        self.pod2
            .run(|| TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok())
    }

    /// pod2's eth0 takes `mac`; both pods forget their neighbours, so the next
    /// connection's ARP and every frame after it carry the new source MAC.
    fn set_pod2_mac(&self, mac: &str) {
        self.pod2.sh_ok(&format!("ip link set eth0 address {mac}"));
        self.pod1.sh_ok("ip neigh flush dev eth0");
        self.pod2.sh_ok("ip neigh flush dev eth0");
    }

    fn ruleset(&self) -> Value {
        serde_json::from_str(&self.node.sh_ok("nft -j list ruleset")).unwrap()
    }
}

fn pod(node: &Node, host_if: &str, ip: &str) -> Pod {
    let pod = node.pod();
    node.sh_ok(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {} && \
         ip link set {host_if} master br0 up",
        pod.path().display()
    ));
    pod.sh_ok(&format!(
        "ip link set lo up && ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
    ));
    pod
}

/// From `ip`, not `/sys/class/net`: sysfs shows the netns it was mounted in, not the pod's.
fn mac_of(pod: &Pod) -> [u8; 6] {
    let out = pod.sh_ok("ip -o link show eth0");
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"));
    parse_mac(mac)
}

fn parse_mac(s: &str) -> [u8; 6] {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn att<'a>(network: &'a str, container_id: &'a str) -> Attachment<'a> {
    Attachment {
        network,
        container_id,
        ifname: "eth0",
    }
}

/// What the node's rule set holds beyond the empty skeleton of `bridge vaina_macspoof`
/// (table, map `ports`, base chain `prerouting` with its one rule): attachment chains,
/// their rules, map elements, other tables.
fn leftovers(ruleset: &Value) -> Vec<String> {
    let mut left = Vec::new();
    for obj in ruleset["nftables"].as_array().unwrap() {
        if let Some(t) = obj.get("table")
            && (t["family"] != "bridge" || t["name"] != macspoof::TABLE)
        {
            left.push(format!("table {t}"));
        }
        if let Some(c) = obj.get("chain")
            && c["name"] != "prerouting"
        {
            left.push(format!("chain {}", c["name"]));
        }
        if let Some(r) = obj.get("rule")
            && r["chain"] != "prerouting"
        {
            left.push(format!("rule {r}"));
        }
        for kind in ["map", "set"] {
            if let Some(s) = obj.get(kind)
                && let Some(elems) = s.get("elem")
            {
                left.push(format!("{kind} {} elements {elems}", s["name"]));
            }
        }
    }
    left
}

#[test]
fn frames_from_another_mac_are_dropped_until_del() {
    if !can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let a = att("net", "c2");
    let mac = mac_of(&topo.pod2);
    topo.node.run(|| add_macspoof(&a, "vh2", mac)).unwrap();
    topo.node.run(|| check_macspoof(&a, "vh2", mac)).unwrap();
    assert!(topo.pod2_reaches_pod1(), "pod2 with its own MAC");

    topo.set_pod2_mac(FORGED_MAC);
    assert!(
        !topo.pod2_reaches_pod1(),
        "frames from a MAC that was not given must be dropped"
    );
    // CHECK against the pod's current MAC sees the mismatch.
    let err = topo
        .node
        .run(|| check_macspoof(&a, "vh2", parse_mac(FORGED_MAC)))
        .unwrap_err();
    assert!(matches!(err, FirewallError::Missing { .. }), "{err}");
    assert!(err.to_string().contains(FORGED_MAC), "{err}");

    topo.node.run(|| del_macspoof(&a)).unwrap();
    assert!(topo.pod2_reaches_pod1(), "no check after DEL");
    // Deleting again is fine.
    topo.node.run(|| del_macspoof(&a)).unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
    let err = topo
        .node
        .run(|| check_macspoof(&a, "vh2", mac))
        .unwrap_err();
    assert!(matches!(err, FirewallError::Missing { .. }), "{err}");
}

#[test]
fn only_the_guarded_port_is_checked() {
    if !can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let mac1 = mac_of(&topo.pod1);
    topo.node
        .run(|| add_macspoof(&att("net", "c1"), "vh1", mac1))
        .unwrap();
    // pod2's port has no element: whatever its MAC, its frames pass, and pod1's replies
    // carry pod1's own MAC.
    topo.set_pod2_mac(FORGED_MAC);
    assert!(topo.pod2_reaches_pod1());
}

#[test]
fn repeated_add_leaves_one_copy_and_one_del_removes_it() {
    if !can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let a = att("net", "c2");
    let mac = mac_of(&topo.pod2);
    for _ in 0..3 {
        topo.node.run(|| add_macspoof(&a, "vh2", mac)).unwrap();
    }
    let listed = topo.node.sh_ok("nft list table bridge vaina_macspoof");
    assert_eq!(listed.matches("iifname vmap @ports").count(), 1, "{listed}");
    assert_eq!(listed.matches("drop comment").count(), 1, "{listed}");
    assert_eq!(listed.matches("return").count(), 1, "{listed}");
    assert!(topo.pod2_reaches_pod1());

    topo.node.run(|| del_macspoof(&a)).unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn a_port_left_by_a_missed_del_is_taken_over() {
    if !can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let (old, new) = (att("net", "old"), att("net", "new"));
    let mac = mac_of(&topo.pod2);
    // An earlier attachment on a port of the same name, with another MAC, never deleted.
    topo.node
        .run(|| add_macspoof(&old, "vh2", parse_mac(FORGED_MAC)))
        .unwrap();
    assert!(!topo.pod2_reaches_pod1(), "the stale check drops pod2");

    topo.node.run(|| add_macspoof(&new, "vh2", mac)).unwrap();
    topo.pod2.sh_ok("ip neigh flush dev eth0");
    assert!(topo.pod2_reaches_pod1(), "the newest ADD owns the port");
    topo.node.run(|| check_macspoof(&new, "vh2", mac)).unwrap();

    // The old attachment's DEL removes its chain but not the port it lost.
    topo.node.run(|| del_macspoof(&old)).unwrap();
    topo.node.run(|| check_macspoof(&new, "vh2", mac)).unwrap();
    topo.set_pod2_mac(FORGED_MAC);
    assert!(!topo.pod2_reaches_pod1(), "still checked for the new owner");

    topo.node.run(|| del_macspoof(&new)).unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn gc_removes_only_stale_attachments_of_the_network() {
    if !can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    let keep = att("net", "keep");
    let stale = att("net", "stale");
    let other = att("other", "x");
    let mac = [0x0a, 0x58, 0, 0, 0, 1];
    node.run(|| {
        add_macspoof(&keep, "vk", mac).unwrap();
        add_macspoof(&stale, "vs", mac).unwrap();
        add_macspoof(&other, "vo", mac).unwrap();
    });
    let removed = node.run(|| macspoof::gc("net", &[keep])).unwrap();
    assert_eq!(removed, vec!["net/stale/eth0".to_string()]);
    node.run(|| {
        check_macspoof(&keep, "vk", mac).unwrap();
        check_macspoof(&other, "vo", mac).unwrap();
        assert!(check_macspoof(&stale, "vs", mac).is_err());
    });
    // The whole-node GC covers this table too.
    let removed = node.run(|| firewall::gc("other", &[])).unwrap();
    assert_eq!(removed, vec!["other/x/eth0".to_string()]);
    node.run(|| del_macspoof(&keep)).unwrap();
    let ruleset = serde_json::from_str(&node.sh_ok("nft -j list ruleset")).unwrap();
    assert_eq!(leftovers(&ruleset), Vec::<String>::new());
}

#[test]
fn del_and_gc_on_a_fresh_node_are_ok() {
    if !can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    node.run(|| del_macspoof(&att("net", "never"))).unwrap();
    assert_eq!(
        node.run(|| macspoof::gc("net", &[])).unwrap(),
        Vec::<String>::new()
    );
    let err = node
        .run(|| check_macspoof(&att("net", "never"), "vh0", [2, 0, 0, 0, 0, 1]))
        .unwrap_err();
    assert!(matches!(err, FirewallError::Missing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the table is missing from nftables table bridge vaina_macspoof"
    );
    assert!(!node.sh_ok("nft list tables").contains("vaina"));
}

#[test]
fn nft_failure_names_operation_and_reason() {
    if !can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    // Someone else's map of the same name but another type: our `add map` must fail.
    node.sh_ok(
        "nft add table bridge vaina_macspoof && \
         nft add map bridge vaina_macspoof ports '{ type ifname : ether_addr; }'",
    );
    let err = node
        .run(|| add_macspoof(&att("net", "c1"), "vh1", [2, 0, 0, 0, 0, 1]))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "cannot add MAC spoof check for net/c1/eth0 on vh1 \
             in nftables table bridge vaina_macspoof: "
        ),
        "{msg}"
    );
    // nft's own reason follows: here its check of the map's value type.
    assert!(msg.contains("verdict"), "{msg}");
    assert!(std::error::Error::source(&err).is_some());
}
