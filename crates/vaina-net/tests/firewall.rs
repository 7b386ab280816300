//! Masquerade and host-port rules, proven with real TCP connections between namespaces.
//!
//! Each test builds, inside its own throwaway node netns:
//!
//! ```text
//!   pod(s) eth0 10.88.0.x/24 ── vhN ── br0 10.88.0.1/24 [node] ext0 192.168.50.1/24 ── eth0 192.168.50.2/24 outside
//! ```
//!
//! "outside" routes 10.88.0.0/24 back through the node, so without masquerade a server
//! there sees the pod's own address, and with it the node's.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use vaina_net::firewall::{
    self, Attachment, FirewallError, PortMapping, Protocol, add_masquerade, add_port_mappings,
    check_masquerade, check_port_mappings, del_masquerade, del_port_mappings,
};
use vaina_testkit::{Node, Pod};

const BRIDGE_IP: &str = "10.88.0.1";
const NODE_EXT_IP: &str = "192.168.50.1";
const OUTSIDE_IP: &str = "192.168.50.2";

struct Topo {
    node: Node,
    outside: Pod,
}

impl Topo {
    fn new() -> Topo {
        let node = Node::new();
        node.sh_ok(&format!(
            "ip link add br0 type bridge && ip addr add {BRIDGE_IP}/24 dev br0 && ip link set br0 up"
        ));
        let outside = node.pod();
        node.sh_ok(&format!(
            "ip link add ext0 type veth peer name eth0 netns {} && \
             ip addr add {NODE_EXT_IP}/24 dev ext0 && ip link set ext0 up",
            outside.path().display()
        ));
        outside.sh_ok(&format!(
            "ip link set lo up && ip addr add {OUTSIDE_IP}/24 dev eth0 && ip link set eth0 up && \
             ip route add 10.88.0.0/24 via {NODE_EXT_IP}"
        ));
        let localnet = firewall::localnet_sysctl("br0");
        node.sh_ok(&format!(
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/{localnet}"
        ));
        Topo { node, outside }
    }

    /// A pod on br0 with `ip`/24 behind host-side veth `host_if`.
    fn pod(&self, host_if: &str, ip: &str) -> Pod {
        self.pod_on("br0", BRIDGE_IP, host_if, ip)
    }

    /// The port gets hairpin mode, as the bridge plugin's `hairpinMode` does: with
    /// br_netfilter loaded, a pod's hairpin connection is DNATed at bridge level and goes
    /// back out the port it came in on.
    fn pod_on(&self, bridge: &str, gateway: &str, host_if: &str, ip: &str) -> Pod {
        let pod = self.node.pod();
        self.node.sh_ok(&format!(
            "ip link add {host_if} type veth peer name eth0 netns {} && \
             ip link set {host_if} master {bridge} up && \
             ip link set {host_if} type bridge_slave hairpin on",
            pod.path().display()
        ));
        pod.sh_ok(&format!(
            "ip link set lo up && ip addr add {ip}/24 dev eth0 && ip link set eth0 up && \
             ip route add default via {gateway}"
        ));
        pod
    }

    /// `nft -j list ruleset` of the node, parsed.
    fn ruleset(&self) -> Value {
        serde_json::from_str(&self.node.sh_ok("nft -j list ruleset")).unwrap()
    }
}

/// A TCP server that answers each connection with "<label> <peer address>" and closes.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` inside `ns` (the socket stays in that netns) and serves from a thread.
    fn start(ns: &Pod, addr: &str, label: &'static str) -> Server {
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = write!(s, "{label} {}", peer.ip());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `addr` from the calling thread's netns and returns the server's answer.
fn fetch(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn att<'a>(network: &'a str, container_id: &'a str) -> Attachment<'a> {
    Attachment {
        network,
        container_id,
        ifname: "eth0",
    }
}

fn tcp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        host_port,
        container_port,
        protocol: Protocol::Tcp,
        host_ip: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Per-attachment chains and set/map elements left in the node's vaina tables.
fn leftovers(ruleset: &Value) -> Vec<String> {
    let mut left = Vec::new();
    for obj in ruleset["nftables"].as_array().unwrap() {
        if let Some(c) = obj.get("chain") {
            let name = c["name"].as_str().unwrap();
            if name.starts_with("m-") || name.starts_with("p-") {
                left.push(format!("chain {name}"));
            }
        }
        for kind in ["map", "set"] {
            if let Some(s) = obj.get(kind) {
                if let Some(elems) = s.get("elem") {
                    left.push(format!("{kind} {} elements {elems}", s["name"]));
                }
            }
        }
    }
    left
}

#[test]
fn host_port_reaches_pod_and_stops_after_del() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    let _srv = Server::start(&pod, "0.0.0.0:80", "pod");
    let a = att("net", "c1");
    let pod_ips = [net("10.88.0.2/24")];

    // As with the bridge plugin's ipMasq in front of portmap: both tables hook
    // postrouting, and the masquerade table's in-subnet `accept` must not stop hairpin SNAT.
    topo.node
        .run(|| add_masquerade(&a, &[net("10.88.0.2/24")]))
        .unwrap();
    topo.node
        .run(|| add_port_mappings(&a, &pod_ips, &[tcp(8080, 80)], true))
        .unwrap();
    topo.node
        .run(|| check_port_mappings(&a, &pod_ips, &[tcp(8080, 80)]))
        .unwrap();

    // The node over loopback: DNAT in output, masquerade from 127.0.0.1.
    assert_eq!(
        topo.node.run(|| fetch("127.0.0.1:8080")).unwrap(),
        format!("pod {BRIDGE_IP}")
    );
    // The node's own non-loopback address: no SNAT needed, the pod sees that address.
    let own = format!("{NODE_EXT_IP}:8080");
    assert_eq!(
        topo.node.run(|| fetch(&own)).unwrap(),
        format!("pod {NODE_EXT_IP}")
    );
    // From another host: DNAT in prerouting, the client address is kept.
    assert_eq!(
        topo.outside.run(|| fetch(&own)).unwrap(),
        format!("pod {OUTSIDE_IP}")
    );
    // Hairpin: the pod through its own host port is masqueraded to the bridge address.
    let hairpin = format!("{BRIDGE_IP}:8080");
    assert_eq!(
        pod.run(|| fetch(&hairpin)).unwrap(),
        format!("pod {BRIDGE_IP}")
    );

    topo.node
        .run(|| del_port_mappings(&a, &[tcp(8080, 80)]))
        .unwrap();
    topo.node.run(|| del_masquerade(&a, &[])).unwrap();
    assert!(topo.node.run(|| fetch("127.0.0.1:8080")).is_err());
    assert!(topo.node.run(|| fetch(&own)).is_err());
    assert!(topo.outside.run(|| fetch(&own)).is_err());
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
    let err = topo
        .node
        .run(|| check_port_mappings(&a, &pod_ips, &[tcp(8080, 80)]))
        .unwrap_err();
    assert!(matches!(err, FirewallError::Missing { .. }), "{err}");

    // Deleting again, and deleting what was never added, are both fine.
    topo.node
        .run(|| del_port_mappings(&a, &[tcp(8080, 80)]))
        .unwrap();
    topo.node
        .run(|| del_port_mappings(&att("net", "never"), &[]))
        .unwrap();
}

#[test]
fn host_ip_restricts_the_mapping() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    let _srv = Server::start(&pod, "0.0.0.0:80", "pod");
    let a = att("net", "c1");
    let m = PortMapping {
        host_ip: Some(ip(NODE_EXT_IP)),
        ..tcp(8080, 80)
    };
    topo.node
        .run(|| add_port_mappings(&a, &[net("10.88.0.2/24")], &[m], true))
        .unwrap();

    let ext = format!("{NODE_EXT_IP}:8080");
    assert_eq!(
        topo.outside.run(|| fetch(&ext)).unwrap(),
        format!("pod {OUTSIDE_IP}")
    );
    assert!(
        topo.node
            .run(|| fetch(&format!("{BRIDGE_IP}:8080")))
            .is_err()
    );
    topo.node.run(|| del_port_mappings(&a, &[m])).unwrap();
}

#[test]
fn snat_false_keeps_sources() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    let neighbour = topo.pod("vh1", "10.88.0.3");
    let _srv = Server::start(&pod, "0.0.0.0:80", "pod");
    let a = att("net", "c1");
    topo.node
        .run(|| add_port_mappings(&a, &[net("10.88.0.2/24")], &[tcp(8080, 80)], false))
        .unwrap();

    let ext = format!("{NODE_EXT_IP}:8080");
    assert_eq!(
        topo.outside.run(|| fetch(&ext)).unwrap(),
        format!("pod {OUTSIDE_IP}")
    );
    // A pod of the subnet keeps its address too; the reply, bridged straight back to it,
    // is un-DNATed only because br_netfilter is on in this node (see
    // `host_port_from_a_neighbour_pod_without_br_netfilter`).
    let bridge = format!("{BRIDGE_IP}:8080");
    assert_eq!(neighbour.run(|| fetch(&bridge)).unwrap(), "pod 10.88.0.3");
    // Without SNAT the pod would have to answer 127.0.0.1 itself: the connection fails.
    assert!(topo.node.run(|| fetch("127.0.0.1:8080")).is_err());
    topo.node.run(|| del_port_mappings(&a, &[])).unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

/// Whether `net.bridge.bridge-nf-call-iptables` exists in `node`: it does once the
/// br_netfilter module is loaded, and then it is per netns (Linux 5.3+) and starts at 1.
fn has_br_netfilter(node: &Node) -> bool {
    node.sh("test -e /proc/sys/net/bridge/bridge-nf-call-iptables")
        .status
        .success()
}

/// On a node without br_netfilter, bridged packets skip netfilter: a pod reaching its
/// neighbour's host port through the node's bridge address would get the reply straight
/// over the bridge, from the neighbour's own address instead of the node's, unless the
/// connection is masqueraded so that the reply comes back through the node. The reference
/// portmap masquerades its pod's whole subnet for this, and so does vaina's.
#[test]
fn host_port_from_a_neighbour_pod_without_br_netfilter() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    if has_br_netfilter(&topo.node) {
        topo.node.sh_ok(
            "sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0",
        );
    }
    // Otherwise br_netfilter is not loaded and bridged traffic skips netfilter already. (The
    // keys appear only if the module is loaded; a test does not load kernel modules.)
    topo.node
        .sh_ok("ip addr add fd00::1/64 dev br0 nodad && sysctl -w net.ipv6.conf.all.forwarding=1");
    let pod = topo.pod("vh0", "10.88.0.2");
    let neighbour = topo.pod("vh1", "10.88.0.3");
    for (p, v6) in [(&pod, "fd00::2"), (&neighbour, "fd00::3")] {
        p.sh_ok(&format!(
            "ip addr add {v6}/64 dev eth0 nodad && ip -6 route add default via fd00::1"
        ));
    }
    let _srv = Server::start(&pod, "[::]:80", "pod");
    let a = att("net", "c1");
    let nets = [net("10.88.0.2/24"), net("fd00::2/64")];
    topo.node
        .run(|| add_port_mappings(&a, &nets, &[tcp(8080, 80)], true))
        .unwrap();

    let v4 = format!("{BRIDGE_IP}:8080");
    assert_eq!(
        neighbour.run(|| fetch(&v4)).unwrap(),
        format!("pod ::ffff:{BRIDGE_IP}")
    );
    assert_eq!(
        neighbour.run(|| fetch("[fd00::1]:8080")).unwrap(),
        "pod fd00::1"
    );
    // Hairpin is routed through the node here, not bridged back out the pod's port.
    assert_eq!(
        pod.run(|| fetch(&v4)).unwrap(),
        format!("pod ::ffff:{BRIDGE_IP}")
    );
    // Outside the pod's subnet the source is kept: replies go through the node anyway.
    assert_eq!(
        topo.outside
            .run(|| fetch(&format!("{NODE_EXT_IP}:8080")))
            .unwrap(),
        format!("pod ::ffff:{OUTSIDE_IP}")
    );

    // The same mapping with snat off (a repeated ADD replaces the chain): the neighbour's
    // connection cannot complete.
    topo.node
        .run(|| add_port_mappings(&a, &nets, &[tcp(8080, 80)], false))
        .unwrap();
    assert!(neighbour.run(|| fetch(&v4)).is_err());
    assert!(neighbour.run(|| fetch("[fd00::1]:8080")).is_err());

    topo.node
        .run(|| del_port_mappings(&a, &[tcp(8080, 80)]))
        .unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn host_port_last_writer_wins() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod_a = topo.pod("vh0", "10.88.0.2");
    let pod_b = topo.pod("vh1", "10.88.0.3");
    let _sa = Server::start(&pod_a, "0.0.0.0:80", "a");
    let _sb = Server::start(&pod_b, "0.0.0.0:80", "b");
    let (a, b) = (att("net", "ca"), att("net", "cb"));
    let ext = format!("{NODE_EXT_IP}:8080");

    topo.node
        .run(|| add_port_mappings(&a, &[net("10.88.0.2/24")], &[tcp(8080, 80)], true))
        .unwrap();
    assert!(topo.outside.run(|| fetch(&ext)).unwrap().starts_with("a "));
    topo.node
        .run(|| add_port_mappings(&b, &[net("10.88.0.3/24")], &[tcp(8080, 80)], true))
        .unwrap();
    assert!(topo.outside.run(|| fetch(&ext)).unwrap().starts_with("b "));

    // The loser's DEL leaves the winner's mapping in place.
    topo.node
        .run(|| del_port_mappings(&a, &[tcp(8080, 80)]))
        .unwrap();
    assert!(topo.outside.run(|| fetch(&ext)).unwrap().starts_with("b "));
    topo.node
        .run(|| check_port_mappings(&b, &[net("10.88.0.3/24")], &[tcp(8080, 80)]))
        .unwrap();
    topo.node
        .run(|| del_port_mappings(&b, &[tcp(8080, 80)]))
        .unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

/// DEL given other mappings than ADD (a runtime that changed them in between): deleting
/// by key leaves an element jumping to the chain, and the listing finds it.
#[test]
fn host_port_del_with_other_mappings_than_add() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    let _srv = Server::start(&pod, "0.0.0.0:80", "pod");
    let a = att("net", "c1");
    let nets = [net("10.88.0.2/24")];
    topo.node
        .run(|| add_port_mappings(&a, &nets, &[tcp(8080, 80), tcp(8081, 80)], true))
        .unwrap();
    // DEL misses 8081, and names 9999, never added, and a mapping ADD would have skipped
    // (an IPv6 host IP, and the pod has no IPv6 address).
    let v6_only = PortMapping {
        host_ip: Some(ip("fd00::1")),
        ..tcp(8082, 80)
    };
    topo.node
        .run(|| del_port_mappings(&a, &[tcp(8080, 80), tcp(9999, 80), v6_only]))
        .unwrap();
    assert!(
        topo.outside
            .run(|| fetch(&format!("{NODE_EXT_IP}:8081")))
            .is_err()
    );
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn masquerade_rewrites_source_until_deleted() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    // A second bridge whose subnet is inside the pod's /16: routed by the node, and so
    // seen by its postrouting hook, but exempt from masquerade.
    topo.node.sh_ok(
        "ip link add br1 type bridge && ip addr add 10.88.1.1/24 dev br1 && ip link set br1 up",
    );
    let pod2 = topo.pod_on("br1", "10.88.1.1", "vh1", "10.88.1.2");
    let _out = Server::start(&topo.outside, "0.0.0.0:8000", "out");
    let _in_subnet = Server::start(&pod2, "0.0.0.0:80", "pod2");
    let a = att("net", "c1");
    let ips = [net("10.88.0.2/16")];
    let outside = format!("{OUTSIDE_IP}:8000");

    assert_eq!(pod.run(|| fetch(&outside)).unwrap(), "out 10.88.0.2");
    topo.node.run(|| add_masquerade(&a, &ips)).unwrap();
    topo.node
        .run(|| check_masquerade(&a, &[ip("10.88.0.2")]))
        .unwrap();
    assert_eq!(
        pod.run(|| fetch(&outside)).unwrap(),
        format!("out {NODE_EXT_IP}")
    );
    assert_eq!(pod.run(|| fetch("10.88.1.2:80")).unwrap(), "pod2 10.88.0.2");
    // ADD again is harmless.
    topo.node.run(|| add_masquerade(&a, &ips)).unwrap();
    assert_eq!(
        pod.run(|| fetch(&outside)).unwrap(),
        format!("out {NODE_EXT_IP}")
    );

    topo.node
        .run(|| del_masquerade(&a, &[ip("10.88.0.2")]))
        .unwrap();
    assert_eq!(pod.run(|| fetch(&outside)).unwrap(), "out 10.88.0.2");
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
    let err = topo
        .node
        .run(|| check_masquerade(&a, &[ip("10.88.0.2")]))
        .unwrap_err();
    assert!(matches!(err, FirewallError::Missing { .. }), "{err}");

    topo.node
        .run(|| del_masquerade(&a, &[ip("10.88.0.2")]))
        .unwrap();
    topo.node.run(|| del_masquerade(&a, &[])).unwrap();
}

#[test]
fn masquerade_del_without_addresses() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    let _out = Server::start(&topo.outside, "0.0.0.0:8000", "out");
    let a = att("net", "c1");
    let outside = format!("{OUTSIDE_IP}:8000");
    topo.node
        .run(|| add_masquerade(&a, &[net("10.88.0.2/24"), net("fd00::2/64")]))
        .unwrap();
    assert_eq!(
        pod.run(|| fetch(&outside)).unwrap(),
        format!("out {NODE_EXT_IP}")
    );
    topo.node.run(|| del_masquerade(&a, &[])).unwrap();
    assert_eq!(pod.run(|| fetch(&outside)).unwrap(), "out 10.88.0.2");
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn masquerade_address_taken_over_by_a_new_attachment() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let (old, new) = (att("net", "old"), att("net", "new"));
    let ips = [net("10.88.0.2/24")];
    topo.node.run(|| add_masquerade(&old, &ips)).unwrap();
    // The old attachment's DEL never ran; IPAM gives its address to a new one.
    topo.node.run(|| add_masquerade(&new, &ips)).unwrap();
    topo.node
        .run(|| check_masquerade(&new, &[ip("10.88.0.2")]))
        .unwrap();
    assert!(
        topo.node
            .run(|| check_masquerade(&old, &[ip("10.88.0.2")]))
            .is_err()
    );
    // The late DEL of the old one, with the address, must not remove the new element.
    topo.node
        .run(|| del_masquerade(&old, &[ip("10.88.0.2")]))
        .unwrap();
    topo.node
        .run(|| check_masquerade(&new, &[ip("10.88.0.2")]))
        .unwrap();
    topo.node
        .run(|| del_masquerade(&new, &[ip("10.88.0.2")]))
        .unwrap();
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn del_on_a_fresh_node_is_ok() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    let a = att("net", "c1");
    node.run(|| del_masquerade(&a, &[ip("10.88.0.2")])).unwrap();
    node.run(|| del_masquerade(&a, &[])).unwrap();
    node.run(|| del_port_mappings(&a, &[tcp(8080, 80)]))
        .unwrap();
    node.run(|| del_port_mappings(&a, &[])).unwrap();
    assert_eq!(
        node.run(|| firewall::gc("net", &[])).unwrap(),
        Vec::<String>::new()
    );
    // The fast DEL path does not create tables as a side effect.
    assert!(!node.sh_ok("nft list tables").contains("vaina"));
}

#[test]
fn twenty_attachments_added_then_deleted_leave_nothing() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    let ids: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    let maps = |i: usize| {
        [
            tcp(9000 + i as u16, 80),
            PortMapping {
                protocol: Protocol::Udp,
                ..tcp(9000 + i as u16, 53)
            },
        ]
    };
    node.run(|| {
        for (i, id) in ids.iter().enumerate() {
            let a = att("net", id);
            let v4 = format!("10.88.0.{}", 10 + i);
            let v6 = format!("fd00::{:x}", 10 + i);
            add_masquerade(&a, &[net(&format!("{v4}/24")), net(&format!("{v6}/64"))]).unwrap();
            let maps = maps(i);
            let nets = [net(&format!("{v4}/24")), net(&format!("{v6}/64"))];
            add_port_mappings(&a, &nets, &maps, true).unwrap();
        }
    });
    let listed = node.sh_ok("nft list table inet vaina_hostport");
    assert_eq!(listed.matches("jump p-").count(), 40, "{listed}");
    node.run(|| {
        for (i, id) in ids.iter().enumerate() {
            let a = att("net", id);
            // Half with the addresses and mappings, half as if the runtime lost them.
            let (ips, maps) = if i % 2 == 0 {
                let ips = vec![
                    ip(&format!("10.88.0.{}", 10 + i)),
                    ip(&format!("fd00::{:x}", 10 + i)),
                ];
                (ips, maps(i).to_vec())
            } else {
                (vec![], vec![])
            };
            del_masquerade(&a, &ips).unwrap();
            del_port_mappings(&a, &maps).unwrap();
        }
    });
    let rs: Value = serde_json::from_str(&node.sh_ok("nft -j list ruleset")).unwrap();
    assert_eq!(leftovers(&rs), Vec::<String>::new());
    // The skeleton stays: base chains, maps and sets, all empty.
    let listed = node.sh_ok("nft list ruleset");
    assert!(
        listed.contains("map pods4") && listed.contains("map ports"),
        "{listed}"
    );
}

#[test]
fn gc_removes_only_stale_attachments_of_the_network() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    let keep = att("net", "keep");
    let stale = att("net", "stale");
    let other = att("other", "x");
    node.run(|| {
        for (i, a) in [keep, stale, other].iter().enumerate() {
            let v4 = format!("10.88.0.{}", 10 + i);
            add_masquerade(a, &[net(&format!("{v4}/24"))]).unwrap();
            let nets = [net(&format!("{v4}/24"))];
            add_port_mappings(a, &nets, &[tcp(9000 + i as u16, 80)], true).unwrap();
        }
    });
    // Each plugin collects its own table: the bridge's GC leaves host ports alone.
    let removed = node.run(|| firewall::masq::gc("net", &[keep])).unwrap();
    assert_eq!(removed, vec!["net/stale/eth0".to_string()]);
    node.run(|| check_port_mappings(&stale, &[net("10.88.0.11/24")], &[tcp(9001, 80)]))
        .unwrap();
    let removed = node.run(|| firewall::portmap::gc("net", &[keep])).unwrap();
    assert_eq!(removed, vec!["net/stale/eth0".to_string()]);
    node.run(|| {
        check_masquerade(&keep, &[ip("10.88.0.10")]).unwrap();
        check_port_mappings(&keep, &[net("10.88.0.10/24")], &[tcp(9000, 80)]).unwrap();
        check_masquerade(&other, &[ip("10.88.0.12")]).unwrap();
        check_port_mappings(&other, &[net("10.88.0.12/24")], &[tcp(9002, 80)]).unwrap();
        assert!(check_masquerade(&stale, &[ip("10.88.0.11")]).is_err());
        assert!(check_port_mappings(&stale, &[net("10.88.0.11/24")], &[tcp(9001, 80)]).is_err());
    });
    // No valid attachment left on a network: all of its chains go, in both tables.
    let removed = node.run(|| firewall::gc("other", &[])).unwrap();
    assert_eq!(
        removed,
        vec!["other/x/eth0".to_string(), "other/x/eth0".to_string()]
    );
    node.run(|| check_masquerade(&keep, &[ip("10.88.0.10")]))
        .unwrap();
    let listed = node.sh_ok("nft list ruleset");
    assert!(!listed.contains("10.88.0.11"), "{listed}");
}

#[test]
fn invalid_mapping_is_rejected_before_nft() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    let err = node
        .run(|| {
            add_port_mappings(
                &att("net", "c1"),
                &[net("10.88.0.2/24")],
                &[tcp(0, 80)],
                true,
            )
        })
        .unwrap_err();
    assert!(
        matches!(err, FirewallError::InvalidPortMapping { .. }),
        "{err}"
    );
    assert!(!node.sh_ok("nft list tables").contains("vaina"));
}

#[test]
fn ipv6_host_port_from_the_node() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let topo = Topo::new();
    let pod = topo.pod("vh0", "10.88.0.2");
    topo.node.sh_ok("ip addr add fd00::1/64 dev br0 nodad");
    pod.sh_ok("ip addr add fd00::2/64 dev eth0 nodad && ip -6 route add default via fd00::1");
    let _srv = Server::start(&pod, "[::]:80", "pod");
    let a = att("net", "c1");
    let pod_ips = [net("10.88.0.2/24"), net("fd00::2/64")];
    topo.node
        .run(|| add_port_mappings(&a, &pod_ips, &[tcp(8080, 80)], true))
        .unwrap();
    assert_eq!(
        topo.node.run(|| fetch("[fd00::1]:8080")).unwrap(),
        "pod fd00::1"
    );
    // Hairpin over IPv6 is masqueraded too.
    assert_eq!(pod.run(|| fetch("[fd00::1]:8080")).unwrap(), "pod fd00::1");
    topo.node
        .run(|| del_port_mappings(&a, &[tcp(8080, 80)]))
        .unwrap();
    assert!(topo.node.run(|| fetch("[fd00::1]:8080")).is_err());
    assert_eq!(leftovers(&topo.ruleset()), Vec::<String>::new());
}

#[test]
fn nft_failure_names_operation_table_and_reason() {
    if !vaina_testkit::can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    // Someone else's map of the same name but another type: our `add map` must fail.
    node.sh_ok("nft add table inet vaina_masq && nft add map inet vaina_masq pods4 '{ type ipv4_addr : ipv4_addr; }'");
    let err = node
        .run(|| add_masquerade(&att("net", "c1"), &[net("10.88.0.2/24")]))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "cannot add masquerade for net/c1/eth0 in nftables table inet vaina_masq: "
        ),
        "{msg}"
    );
    // nft's own reason follows: here its check of the map's value type.
    assert!(msg.contains("verdict"), "{msg}");
    assert!(std::error::Error::source(&err).is_some());
}
