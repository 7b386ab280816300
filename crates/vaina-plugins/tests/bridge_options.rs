//! Every config option of vaina's `bridge` plugin, through the real plugin binaries inside a
//! throwaway node namespace, with iproute2 in the node and the pods as the witness (never the
//! plugin's own result), plus the binary invoked directly for the protocol's error cases.
//!
//! The expected behaviour is the reference plugin's (containernetworking/plugins
//! `plugins/main/bridge`, documented at cni.dev/plugins/current/main/bridge). Tests of
//! behaviour vaina lacks are `#[ignore]`d with the reason; run them with `--ignored`.
//!
//! VLAN tests need a kernel with `CONFIG_BRIDGE_VLAN_FILTERING`; without it they print why and
//! return, like the namespace tests without root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vaina_cni::runtime::RuntimeConf;
use vaina_testkit::{Node, Pod, can_run_ns_tests};

/// One IPv4 range, the default pod network.
const V4: &str = r#"[[{ "subnet": "10.88.0.0/16" }]]"#;
/// Dual stack: one IPv4 and one IPv6 range.
const DUAL: &str = r#"[[{ "subnet": "10.88.0.0/16" }], [{ "subnet": "fd00:88::/64" }]]"#;
const DEFAULT_V4: &str = r#"[{ "dst": "0.0.0.0/0" }]"#;
const DEFAULT_DUAL: &str = r#"[{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]"#;
/// IPAM that hands out addresses and gateways but no routes.
const NO_ROUTES: &str = "[]";

/// A conflist whose only plugin is vaina's bridge with exactly `fields` (a JSON fragment
/// that starts with a comma, or is empty) and host-local IPAM over `ranges` with `routes`.
/// Unlike `common::conflist` nothing is on by default, so each test states what it sets.
fn bridge_net(data_dir: &Path, fields: &str, ranges: &str, routes: &str) -> String {
    format!(
        r#"{{
  "cniVersion": "1.1.0",
  "name": "opts",
  "plugins": [
    {{
      "type": "vaina-bridge"{fields},
      "ipam": {{ "type": "vaina-host-local", "ranges": {ranges}, "routes": {routes},
                "dataDir": "{}" }}
    }}
  ]
}}"#,
        data_dir.display()
    )
}

fn harness(fields: &str, ranges: &str, routes: &str) -> Harness {
    Harness::with_conflist(|d| bridge_net(d, fields, ranges, routes))
}

/// ADD of the network alone (no loopback) that must fail: the plugin's error code and the
/// whole error chain.
fn add_error(h: &Harness, rt: &RuntimeConf) -> (Option<u32>, String) {
    let err = h
        .node
        .run(|| h.cni.add_network_list(&h.net, rt))
        .expect_err("ADD must fail");
    (err.cni_error().map(|e| e.code), error_text(&err))
}

fn has_eth0(pod: &Pod) -> bool {
    pod.sh_ok("ip -o link show")
        .lines()
        .any(|l| l.contains(" eth0"))
}

fn link_exists(node: &Node, name: &str) -> bool {
    node.sh(&format!("ip link show dev {name}"))
        .status
        .success()
}

/// After a failed ADD: no veth, no reservation, no pod interface, no cached result.
fn assert_nothing_left(h: &Harness, pod: &Pod, what: &str) {
    assert_eq!(h.node.veths(), Vec::<String>::new(), "{what}: veth left");
    assert_eq!(
        h.reservations(),
        Vec::<String>::new(),
        "{what}: IP reservation left"
    );
    assert!(!has_eth0(pod), "{what}: eth0 left in the pod");
    assert_eq!(h.cache_files(), 0, "{what}: cached result left");
}

/// `fields` must be rejected with a message containing `needle`, creating nothing, not even
/// the bridge.
fn assert_rejected(fields: &str, needle: &str) {
    let h = harness(fields, V4, DEFAULT_V4);
    let pod = h.node.pod();
    let rt = h.rt("rejected", &pod);
    let (code, err) = add_error(&h, &rt);
    assert!(err.contains(needle), "{fields}: {err}");
    assert_eq!(code, Some(7), "{fields}: invalid config is code 7: {err}");
    assert_nothing_left(&h, &pod, fields);
    assert!(!link_exists(&h.node, "cni0"), "{fields}: bridge created");
}

/// The only veth of the node: the host end of the one pod added.
fn host_veth(h: &Harness) -> String {
    let v = h.node.veths();
    assert_eq!(v.len(), 1, "{v:?}");
    v[0].clone()
}

/// A TCP server on `l` that reads the message of each of `n` connections and answers with
/// the peer's IP address, so the client learns which source address reached the server.
/// (Closing with the message unread would reset the connection.)
fn reply_with_peer(l: TcpListener, n: usize) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, peer) = l.accept().expect("accept");
            let _ = s.read(&mut [0u8; 64]);
            let _ = s.write_all(peer.ip().to_string().as_bytes());
        }
    })
}

/// Whether a TCP handshake with `addr` completes within a second.
fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Whether the kernel can filter VLANs on a bridge; prints why not.
fn vlan_filtering_supported(node: &Node) -> bool {
    let probe = node.sh("ip link add vfprobe type bridge vlan_filtering 1 && ip link del vfprobe");
    if probe.status.success() {
        return true;
    }
    eprintln!("skipping: kernel without bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)");
    false
}

// ---------------------------------------------------------------------------------------
// mtu

#[test]
fn mtu_is_set_on_the_bridge_the_host_veth_and_the_pod_interface() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true, "mtu": 1400"#, V4, DEFAULT_V4);
    let pod = h.node.pod();
    let rt = h.rt("mtu", &pod);
    h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -o link show dev cni0");
    assert!(br.contains("mtu 1400"), "{br}");
    let veth = h
        .node
        .sh_ok(&format!("ip -o link show dev {}", host_veth(&h)));
    assert!(
        veth.contains("mtu 1400") && veth.contains("master cni0"),
        "{veth}"
    );
    let eth0 = pod.sh_ok("ip -o link show dev eth0");
    assert!(eth0.contains("mtu 1400"), "{eth0}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn mtu_out_of_range_is_rejected_naming_mtu() {
    if !can_run_ns_tests() {
        return;
    }
    assert_rejected(r#", "isGateway": true, "mtu": 10"#, "MTU");
    assert_rejected(r#", "isGateway": true, "mtu": 70000"#, "MTU");
}

// ---------------------------------------------------------------------------------------
// hairpinMode, promiscMode

#[test]
fn hairpin_mode_true_turns_hairpin_on_for_the_port() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "hairpinMode": true"#,
        V4,
        DEFAULT_V4,
    );
    let pod = h.node.pod();
    let rt = h.rt("hairpin", &pod);
    h.add(&rt).unwrap();
    let port = h
        .node
        .sh_ok(&format!("bridge -d link show dev {}", host_veth(&h)));
    assert!(port.contains("hairpin on"), "{port}");
    // Hairpin and promiscuous mode are exclusive: the bridge is not promiscuous.
    let br = h.node.sh_ok("ip -o link show dev cni0");
    assert!(!br.contains("PROMISC"), "{br}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn hairpin_mode_false_leaves_hairpin_off() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "hairpinMode": false"#,
        V4,
        DEFAULT_V4,
    );
    let pod = h.node.pod();
    let rt = h.rt("nohairpin", &pod);
    h.add(&rt).unwrap();
    let port = h
        .node
        .sh_ok(&format!("bridge -d link show dev {}", host_veth(&h)));
    assert!(port.contains("hairpin off"), "{port}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn promisc_mode_makes_the_bridge_promiscuous() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "promiscMode": true"#,
        V4,
        DEFAULT_V4,
    );
    let pod = h.node.pod();
    let rt = h.rt("promisc", &pod);
    h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -o link show dev cni0");
    assert!(br.contains("PROMISC"), "{br}");
    let port = h
        .node
        .sh_ok(&format!("bridge -d link show dev {}", host_veth(&h)));
    assert!(port.contains("hairpin off"), "{port}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn hairpin_and_promisc_together_are_rejected_and_create_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    assert_rejected(
        r#", "isGateway": true, "hairpinMode": true, "promiscMode": true"#,
        "hairpin mode and promiscuous mode",
    );
}

// ---------------------------------------------------------------------------------------
// isGateway, isDefaultGateway

#[test]
fn is_default_gateway_routes_the_pod_through_the_bridge_without_ipam_routes() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isDefaultGateway": true"#, V4, NO_ROUTES);
    // An address of the node outside the pod network: reachable only by a default route.
    h.node.sh_ok("ip addr add 192.0.2.1/32 dev lo");
    let pod = h.node.pod();
    let rt = h.rt("defgw", &pod);
    let r = h.add(&rt).unwrap();
    let ip = pod_ip(&r);

    // isDefaultGateway implies isGateway: the bridge has the gateway address.
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(br.contains("10.88.0.1/16"), "{br}");
    let route = pod.sh_ok("ip -4 route show default");
    assert!(route.contains("default via 10.88.0.1 dev eth0"), "{route}");

    let l = h
        .node
        .run(|| TcpListener::bind("192.0.2.1:7100"))
        .expect("bind in node");
    let srv = reply_with_peer(l, 1);
    let seen = pod.run(|| talk("192.0.2.1:7100", "x")).unwrap();
    assert_eq!(seen, ip.to_string());
    srv.join().unwrap();

    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn is_gateway_alone_adds_no_default_route_when_ipam_gives_none() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true"#, V4, NO_ROUTES);
    h.node.sh_ok("ip addr add 192.0.2.1/32 dev lo");
    let pod = h.node.pod();
    let rt = h.rt("gwonly", &pod);
    h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(br.contains("10.88.0.1/16"), "{br}");
    assert_eq!(pod.sh_ok("ip -4 route show default"), "");
    // The node listens there, yet the pod has no way to it.
    let _listener = h
        .node
        .run(|| TcpListener::bind("192.0.2.1:7101"))
        .expect("bind in node");
    assert!(!pod.run(|| connects("192.0.2.1:7101".parse().unwrap())));
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn is_default_gateway_adds_a_default_route_per_family() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isDefaultGateway": true"#, DUAL, NO_ROUTES);
    let pod = h.node.pod();
    let rt = h.rt("defgw2", &pod);
    h.add(&rt).unwrap();
    let v4 = pod.sh_ok("ip -4 route show default");
    assert!(v4.contains("default via 10.88.0.1 dev eth0"), "{v4}");
    let v6 = pod.sh_ok("ip -6 route show default");
    assert!(v6.contains("default via fd00:88::1 dev eth0"), "{v6}");
    let br = h.node.sh_ok("ip -o addr show dev cni0");
    assert!(
        br.contains("10.88.0.1/16") && br.contains("fd00:88::1/64"),
        "{br}"
    );
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn without_gateway_options_the_bridge_gets_no_address_and_pods_still_talk() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness("", V4, NO_ROUTES);
    let (p1, p2) = (h.node.pod(), h.node.pod());
    let (rt1, rt2) = (h.rt("l2a", &p1), h.rt("l2b", &p2));
    let r1 = h.add(&rt1).unwrap();
    h.add(&rt2).unwrap();

    let br = h.node.sh_ok("ip -o addr show dev cni0");
    assert!(!br.contains("inet "), "{br}");
    assert!(
        br.lines()
            .filter(|l| l.contains("inet6 "))
            .all(|l| l.contains("scope link")),
        "{br}"
    );
    let eth0 = p1.sh_ok("ip -4 -o addr show dev eth0");
    assert!(eth0.contains(&format!("{}/16", pod_ip(&r1))), "{eth0}");

    // Same subnet, same bridge: layer 2 is enough.
    let srv = serve(&p1, 7000, 1);
    let got = p2
        .run(|| talk(&format!("{}:7000", pod_ip(&r1)), "l2"))
        .unwrap();
    assert_eq!(got, "pong:l2");
    srv.join().unwrap();

    h.del(&rt1).unwrap();
    h.del(&rt2).unwrap();
    h.assert_clean();
}

// ---------------------------------------------------------------------------------------
// forceAddress

/// A bridge `cni0` made by the operator before any ADD, with `addr`.
fn preconfigured_bridge(node: &Node, addr: &str) {
    node.sh_ok(&format!(
        "ip link add cni0 type bridge && ip addr add {addr} dev cni0 && ip link set cni0 up"
    ));
}

#[test]
fn force_address_false_with_another_address_in_the_subnet_fails_and_leaves_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "forceAddress": false"#,
        V4,
        DEFAULT_V4,
    );
    preconfigured_bridge(&h.node, "10.88.0.254/16");
    let pod = h.node.pod();
    let rt = h.rt("noforce", &pod);
    let (_, err) = add_error(&h, &rt);
    assert!(
        err.contains("cni0") && err.contains("10.88.0.254/16"),
        "{err}"
    );
    assert_nothing_left(&h, &pod, "forceAddress false");
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(
        br.contains("10.88.0.254/16") && !br.contains("10.88.0.1/"),
        "{br}"
    );
    assert_eq!(
        h.node.sh_ok("ip -o link show master cni0"),
        "",
        "ports left"
    );
    // The runtime's DEL after a failed ADD succeeds.
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn force_address_true_replaces_the_old_address_with_the_gateway() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "forceAddress": true"#,
        V4,
        DEFAULT_V4,
    );
    preconfigured_bridge(&h.node, "10.88.0.254/16");
    let pod = h.node.pod();
    let rt = h.rt("force", &pod);
    let r = h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(
        br.contains("10.88.0.1/16") && !br.contains("10.88.0.254"),
        "{br}"
    );
    // The new gateway answers.
    let l = h
        .node
        .run(|| TcpListener::bind("10.88.0.1:7102"))
        .expect("bind in node");
    let srv = reply_with_peer(l, 1);
    let seen = pod.run(|| talk("10.88.0.1:7102", "x")).unwrap();
    assert_eq!(seen, pod_ip(&r).to_string());
    srv.join().unwrap();
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn force_address_false_with_an_ipv4_address_of_another_subnet_fails() {
    if !can_run_ns_tests() {
        return;
    }
    // Reference ensureAddr: for IPv4 any address other than the gateway is an error without
    // forceAddress (only IPv6 allows several non-overlapping addresses).
    let h = harness(r#", "isGateway": true"#, V4, DEFAULT_V4);
    preconfigured_bridge(&h.node, "192.168.77.1/24");
    let pod = h.node.pod();
    let rt = h.rt("othernet", &pod);
    let (_, err) = add_error(&h, &rt);
    assert!(
        err.contains("cni0") && err.contains("already has an IP address"),
        "{err}"
    );
    assert_nothing_left(&h, &pod, "another IPv4 subnet on the bridge");
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(!br.contains("10.88.0.1/"), "{br}");
}

#[test]
fn force_address_true_replaces_an_ipv4_address_of_another_subnet() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "forceAddress": true"#,
        V4,
        DEFAULT_V4,
    );
    preconfigured_bridge(&h.node, "192.168.77.1/24");
    let pod = h.node.pod();
    let rt = h.rt("forceother", &pod);
    h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(
        br.contains("10.88.0.1/16") && !br.contains("192.168.77.1"),
        "{br}"
    );
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn ipv6_addresses_of_other_subnets_stay_and_overlapping_ones_need_force_address() {
    if !can_run_ns_tests() {
        return;
    }
    // Reference ensureAddr: several IPv6 addresses may coexist on the bridge when their
    // subnets do not overlap; an overlapping one is an error unless forceAddress.
    let h = harness(r#", "isGateway": true"#, DUAL, DEFAULT_DUAL);
    h.node.sh_ok(
        "ip link add cni0 type bridge && ip link set cni0 up && \
         ip addr add fd00:99::1/64 dev cni0 nodad",
    );
    let pod = h.node.pod();
    let rt = h.rt("v6other", &pod);
    h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -6 -o addr show dev cni0");
    assert!(
        br.contains("fd00:99::1/64") && br.contains("fd00:88::1/64"),
        "{br}"
    );
    h.del(&rt).unwrap();
    h.assert_clean();

    for (force, id) in [(false, "v6noforce"), (true, "v6force")] {
        let fields = format!(r#", "isGateway": true, "forceAddress": {force}"#);
        let h = harness(&fields, DUAL, DEFAULT_DUAL);
        h.node.sh_ok(
            "ip link add cni0 type bridge && ip link set cni0 up && \
             ip addr add fd00:88::fe/64 dev cni0 nodad",
        );
        let pod = h.node.pod();
        let rt = h.rt(id, &pod);
        if force {
            h.add(&rt).unwrap();
            let br = h.node.sh_ok("ip -6 -o addr show dev cni0");
            assert!(
                br.contains("fd00:88::1/64") && !br.contains("fd00:88::fe"),
                "{br}"
            );
            h.del(&rt).unwrap();
        } else {
            let (_, err) = add_error(&h, &rt);
            assert!(err.contains("cni0") && err.contains("fd00:88::fe"), "{err}");
            assert_nothing_left(&h, &pod, id);
        }
        h.assert_clean();
    }
}

// ---------------------------------------------------------------------------------------
// bridge

#[test]
fn an_existing_non_bridge_link_with_the_bridge_name_is_a_clear_error() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true"#, V4, DEFAULT_V4);
    h.node
        .sh_ok("ip link add cni0 type veth peer name cni0-peer");
    let pod = h.node.pod();
    let rt = h.rt("notbridge", &pod);
    let (_, err) = add_error(&h, &rt);
    assert!(
        err.contains("cni0") && err.contains("not a bridge"),
        "{err}"
    );
    let mut veths = h.node.veths();
    veths.sort();
    assert_eq!(veths, ["cni0", "cni0-peer"], "only the operator's veth");
    assert_eq!(h.reservations(), Vec::<String>::new());
    assert!(!has_eth0(&pod));
    let l = h.node.sh_ok("ip -d -o link show dev cni0");
    assert!(l.contains("veth") && !l.contains("inet"), "{l}");
}

#[test]
fn bridge_option_names_the_bridge() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "bridge": "br-test", "isGateway": true"#,
        V4,
        DEFAULT_V4,
    );
    let pod = h.node.pod();
    let rt = h.rt("named", &pod);
    h.add(&rt).unwrap();
    let bridges = h.node.sh_ok("ip -o link show type bridge");
    assert!(
        bridges.contains("br-test") && !bridges.contains("cni0"),
        "{bridges}"
    );
    let br = h.node.sh_ok("ip -4 -o addr show dev br-test");
    assert!(br.contains("10.88.0.1/16"), "{br}");
    let veth = h
        .node
        .sh_ok(&format!("ip -o link show dev {}", host_veth(&h)));
    assert!(veth.contains("master br-test"), "{veth}");
    h.del(&rt).unwrap();
    h.assert_clean();
    assert!(link_exists(&h.node, "br-test"), "the bridge stays");
}

#[test]
fn an_invalid_bridge_name_is_rejected() {
    if !can_run_ns_tests() {
        return;
    }
    assert_rejected(
        r#", "bridge": "a-bridge-name-too-long", "isGateway": true"#,
        "a-bridge-name-too-long",
    );
}

// ---------------------------------------------------------------------------------------
// MAC: runtimeConfig.mac (capability), args.cni.mac, CNI_ARGS MAC

const MAC: &str = "0a:58:0a:58:00:99";

fn pod_mac(pod: &Pod) -> String {
    pod.sh_ok("ip -o link show dev eth0")
}

#[test]
fn mac_capability_sets_the_pod_interface_address() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "capabilities": { "mac": true }"#,
        V4,
        DEFAULT_V4,
    );
    let pod = h.node.pod();
    let mut rt = h.rt("mac", &pod);
    rt.capability_args.insert("mac".into(), json!(MAC));
    h.add(&rt).unwrap();
    let eth0 = pod_mac(&pod);
    assert!(eth0.contains(&format!("link/ether {MAC}")), "{eth0}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn invalid_mac_is_rejected_and_creates_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    // The last one parses but is multicast, which the kernel refuses for an interface: the
    // veth fails after the bridge was made, and the rollback takes the bridge too.
    let cases = [
        ("0a:58:0a:58:00", Some("invalid MAC address")),
        ("zz:58:0a:58:00:99", Some("invalid MAC address")),
        ("not a mac", Some("invalid MAC address")),
        ("01:00:5e:00:00:01", None),
    ];
    for (bad, needle) in cases {
        let h = harness(
            r#", "isGateway": true, "capabilities": { "mac": true }"#,
            V4,
            DEFAULT_V4,
        );
        let pod = h.node.pod();
        let mut rt = h.rt("badmac", &pod);
        rt.capability_args.insert("mac".into(), json!(bad));
        let (code, err) = add_error(&h, &rt);
        if let Some(needle) = needle {
            assert!(err.contains(needle) && err.contains(bad), "{bad}: {err}");
            assert_eq!(code, Some(7), "{bad}: {err}");
        }
        assert_nothing_left(&h, &pod, bad);
        assert!(!link_exists(&h.node, "cni0"), "{bad}: bridge left");
    }
}

#[test]
fn args_cni_mac_sets_the_pod_interface_address() {
    if !can_run_ns_tests() {
        return;
    }
    let fields = format!(r#", "isGateway": true, "args": {{ "cni": {{ "mac": "{MAC}" }} }}"#);
    let h = harness(&fields, V4, DEFAULT_V4);
    let pod = h.node.pod();
    let rt = h.rt("argsmac", &pod);
    h.add(&rt).unwrap();
    let eth0 = pod_mac(&pod);
    assert!(eth0.contains(&format!("link/ether {MAC}")), "{eth0}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn cni_args_mac_sets_the_pod_interface_address() {
    if !can_run_ns_tests() {
        return;
    }
    // Documented for the reference plugin: CNI_ARGS="MAC=c2:11:22:33:44:55".
    let h = harness(r#", "isGateway": true"#, V4, DEFAULT_V4);
    let pod = h.node.pod();
    let mut rt = h.rt("envmac", &pod);
    rt.args = vec![
        ("IgnoreUnknown".into(), "true".into()),
        ("MAC".into(), MAC.into()),
    ];
    h.add(&rt).unwrap();
    let eth0 = pod_mac(&pod);
    assert!(eth0.contains(&format!("link/ether {MAC}")), "{eth0}");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn mac_in_hyphen_and_dot_notation_is_accepted() {
    if !can_run_ns_tests() {
        return;
    }
    for form in ["0a-58-0a-58-00-99", "0a58.0a58.0099"] {
        let h = harness(
            r#", "isGateway": true, "capabilities": { "mac": true }"#,
            V4,
            DEFAULT_V4,
        );
        let pod = h.node.pod();
        let mut rt = h.rt("macform", &pod);
        rt.capability_args.insert("mac".into(), json!(form));
        h.add(&rt).unwrap_or_else(|e| panic!("{form}: {e}"));
        let eth0 = pod_mac(&pod);
        assert!(
            eth0.contains(&format!("link/ether {MAC}")),
            "{form}: {eth0}"
        );
        h.del(&rt).unwrap();
        h.assert_clean();
    }
}

// ---------------------------------------------------------------------------------------
// vlan

#[test]
fn vlan_filters_the_bridge_and_makes_the_port_an_untagged_access_port() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "vlan": 100"#, V4, DEFAULT_V4);
    if !vlan_filtering_supported(&h.node) {
        return;
    }
    let (p1, p2) = (h.node.pod(), h.node.pod());
    let (rt1, rt2) = (h.rt("vlan1", &p1), h.rt("vlan2", &p2));
    let r1 = h.add(&rt1).unwrap();
    let veth = host_veth(&h);
    h.add(&rt2).unwrap();

    let br = h.node.sh_ok("ip -d link show dev cni0");
    assert!(br.contains("vlan_filtering 1"), "{br}");
    let vlans = h.node.sh_ok(&format!("bridge vlan show dev {veth}"));
    assert!(
        vlans
            .lines()
            .any(|l| l.contains("100 PVID Egress Untagged")),
        "{vlans}"
    );

    // Two pods of the VLAN talk through it.
    let srv = serve(&p1, 7000, 1);
    let got = p2
        .run(|| talk(&format!("{}:7000", pod_ip(&r1)), "vlan"))
        .unwrap();
    assert_eq!(got, "pong:vlan");
    srv.join().unwrap();

    h.del(&rt1).unwrap();
    h.del(&rt2).unwrap();
    h.assert_clean();
}

#[test]
#[ignore = "not implemented: vlan with isGateway is refused (see unsupported_reference_options_are_refused_and_create_nothing)"]
fn vlan_pods_reach_their_gateway() {
    if !can_run_ns_tests() {
        return;
    }
    // The reference puts the gateway address on a "<bridge>.<vlan>" veth whose bridge port
    // is an access port of the VLAN; the bridge device itself only carries VLAN 1.
    let h = harness(r#", "isGateway": true, "vlan": 100"#, V4, DEFAULT_V4);
    if !vlan_filtering_supported(&h.node) {
        return;
    }
    let pod = h.node.pod();
    let rt = h.rt("vlangw", &pod);
    let r = h.add(&rt).unwrap();
    let l = h
        .node
        .run(|| TcpListener::bind("10.88.0.1:7103"))
        .expect("bind in node");
    let srv = reply_with_peer(l, 1);
    let seen = pod.run(|| talk("10.88.0.1:7103", "x")).unwrap();
    assert_eq!(seen, pod_ip(&r).to_string());
    srv.join().unwrap();
    h.del(&rt).unwrap();
}

#[test]
fn vlan_out_of_range_is_rejected() {
    if !can_run_ns_tests() {
        return;
    }
    assert_rejected(r#", "isGateway": true, "vlan": 4095"#, "VLAN");
}

#[test]
#[ignore = "not implemented: vlanTrunk is refused (see unsupported_reference_options_are_refused_and_create_nothing)"]
fn vlan_trunk_makes_the_port_a_tagged_trunk() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "vlanTrunk": [{ "id": 101 }, { "minID": 200, "maxID": 202 }]"#,
        V4,
        DEFAULT_V4,
    );
    if !vlan_filtering_supported(&h.node) {
        return;
    }
    let pod = h.node.pod();
    let rt = h.rt("trunk", &pod);
    h.add(&rt).unwrap();
    let br = h.node.sh_ok("ip -d link show dev cni0");
    assert!(br.contains("vlan_filtering 1"), "{br}");
    let vlans = h
        .node
        .sh_ok(&format!("bridge vlan show dev {}", host_veth(&h)));
    for vid in ["101", "200", "201", "202"] {
        let line = vlans
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == vid))
            .unwrap_or_else(|| panic!("vid {vid} missing: {vlans}"));
        assert!(
            !line.contains("PVID") && !line.contains("Untagged"),
            "{line}"
        );
    }
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
#[ignore = "not implemented: vlanTrunk is refused with code 2 before this check"]
fn vlan_and_vlan_trunk_together_are_rejected() {
    if !can_run_ns_tests() {
        return;
    }
    assert_rejected(
        r#", "isGateway": true, "vlan": 100, "vlanTrunk": [{ "id": 101 }]"#,
        "vlanTrunk",
    );
}

#[test]
#[ignore = "not implemented: preserveDefaultVlan false is refused (see unsupported_reference_options_are_refused_and_create_nothing)"]
fn preserve_default_vlan_false_removes_vlan_1_from_the_port() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "vlan": 100, "preserveDefaultVlan": false"#,
        V4,
        DEFAULT_V4,
    );
    if !vlan_filtering_supported(&h.node) {
        return;
    }
    let pod = h.node.pod();
    let rt = h.rt("novlan1", &pod);
    h.add(&rt).unwrap();
    let vlans = h
        .node
        .sh_ok(&format!("bridge vlan show dev {}", host_veth(&h)));
    assert!(vlans.contains("100 PVID Egress Untagged"), "{vlans}");
    assert!(
        !vlans
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == "1")),
        "{vlans}"
    );
    h.del(&rt).unwrap();
    h.assert_clean();
}

// ---------------------------------------------------------------------------------------
// IPv6 and dual stack

/// The pod's global IPv6 address on eth0, read with iproute2.
fn pod_ipv6(pod: &Pod) -> String {
    let out = pod.sh_ok("ip -6 -o addr show dev eth0 scope global");
    let cidr = out
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no global IPv6 address: {out}"));
    cidr.split('/').next().unwrap().to_string()
}

#[test]
fn dual_stack_gives_both_families_and_ipv6_works_at_once() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true"#, DUAL, DEFAULT_DUAL);
    let (p1, p2) = (h.node.pod(), h.node.pod());
    let (rt1, rt2) = (h.rt("ds1", &p1), h.rt("ds2", &p2));
    h.add(&rt1).unwrap();
    h.add(&rt2).unwrap();

    for p in [&p1, &p2] {
        let all = p.sh_ok("ip -o addr show dev eth0");
        assert!(
            all.contains("inet 10.88.") && all.contains("inet6 fd00:88::"),
            "{all}"
        );
        // DAD is off: the address is usable now, not after a second of "tentative".
        let v6 = p.sh_ok("ip -6 -o addr show dev eth0");
        assert!(!v6.contains("tentative"), "{v6}");
        let routes = p.sh_ok("ip -6 route show default");
        assert!(routes.contains("via fd00:88::1 dev eth0"), "{routes}");
    }
    let br = h.node.sh_ok("ip -o addr show dev cni0");
    assert!(
        br.contains("10.88.0.1/16") && br.contains("fd00:88::1/64"),
        "{br}"
    );

    // isGateway turns on forwarding of both families in the node.
    let fwd = h
        .node
        .sh_ok("cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding");
    assert_eq!(fwd, "1\n1\n");

    let (ip1, ip2) = (pod_ipv6(&p1), pod_ipv6(&p2));
    let l = p1.run(|| TcpListener::bind("[::]:7300")).expect("bind");
    let srv = reply_with_peer(l, 1);
    let seen = p2.run(|| talk(&format!("[{ip1}]:7300"), "v6")).unwrap();
    assert_eq!(
        seen, ip2,
        "pod2 reached pod1 over IPv6 from its own address"
    );
    srv.join().unwrap();

    h.del(&rt1).unwrap();
    h.del(&rt2).unwrap();
    h.assert_clean();
}

#[test]
fn enabledad_keeps_duplicate_address_detection_on() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "enabledad": true"#,
        DUAL,
        DEFAULT_DUAL,
    );
    let pod = h.node.pod();
    let rt = h.rt("dad", &pod);
    h.add(&rt).unwrap();
    let dad = pod.sh_ok("cat /proc/sys/net/ipv6/conf/eth0/accept_dad");
    assert_eq!(dad.trim(), "1");
    h.del(&rt).unwrap();
    h.assert_clean();
}

// ---------------------------------------------------------------------------------------
// ipMasq

/// A namespace beyond the node on 203.0.113.0/24 (node side 203.0.113.1), with a route
/// back to the pod network, so unmasqueraded traffic would get there too.
fn outside(h: &Harness) -> Pod {
    let out = h.node.pod();
    h.node.sh_ok(&format!(
        "ip link add ext0 type veth peer name eth0 netns {} && \
         ip addr add 203.0.113.1/24 dev ext0 && ip link set ext0 up",
        out.path().display()
    ));
    out.sh_ok(
        "ip link set lo up && ip addr add 203.0.113.2/24 dev eth0 && ip link set eth0 up && \
         ip route add 10.88.0.0/16 via 203.0.113.1",
    );
    out
}

/// The source address a server outside sees for a connection from `pod`.
fn seen_from_outside(out: &Pod, pod: &Pod, port: u16) -> String {
    let l = out
        .run(|| TcpListener::bind(("203.0.113.2", port)))
        .expect("bind outside");
    let srv = reply_with_peer(l, 1);
    let seen = pod
        .run(|| talk(&format!("203.0.113.2:{port}"), "x"))
        .unwrap();
    srv.join().unwrap();
    seen
}

#[test]
fn ip_masq_rewrites_the_source_of_traffic_leaving_the_pod_network() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true, "ipMasq": true"#, V4, DEFAULT_V4);
    let out = outside(&h);
    let pod = h.node.pod();
    let rt = h.rt("masq", &pod);
    h.add(&rt).unwrap();
    assert_eq!(seen_from_outside(&out, &pod, 7400), "203.0.113.1");
    h.del(&rt).unwrap();
    h.node.sh_ok("ip link del ext0");
    h.assert_clean();
}

#[test]
fn without_ip_masq_the_pod_address_leaves_unchanged() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true, "ipMasq": false"#, V4, DEFAULT_V4);
    let out = outside(&h);
    let pod = h.node.pod();
    let rt = h.rt("nomasq", &pod);
    let r = h.add(&rt).unwrap();
    assert_eq!(seen_from_outside(&out, &pod, 7401), pod_ip(&r).to_string());
    h.del(&rt).unwrap();
    h.node.sh_ok("ip link del ext0");
    h.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Reference options vaina does not have

#[test]
fn empty_ipam_makes_an_l2_only_attachment() {
    if !can_run_ns_tests() {
        return;
    }
    // Documented "L2-only configuration": veth on the bridge, eth0 up, no address.
    let h = Harness::with_conflist(|_| {
        r#"{"cniVersion":"1.1.0","name":"opts","plugins":[
            {"type":"vaina-bridge","ipam":{}}]}"#
            .to_string()
    });
    let pod = h.node.pod();
    let rt = h.rt("l2only", &pod);
    h.add(&rt).unwrap();
    let veth = h
        .node
        .sh_ok(&format!("ip -o link show dev {}", host_veth(&h)));
    assert!(veth.contains("master cni0"), "{veth}");
    let eth0 = pod.sh_ok("ip -o link show dev eth0");
    assert!(eth0.contains("UP"), "{eth0}");
    assert_eq!(pod.sh_ok("ip -4 -o addr show dev eth0"), "");
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn macspoofchk_drops_frames_from_another_mac() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(
        r#", "isGateway": true, "macspoofchk": true"#,
        V4,
        DEFAULT_V4,
    );
    let (p1, p2) = (h.node.pod(), h.node.pod());
    let (rt1, rt2) = (h.rt("spoof1", &p1), h.rt("spoof2", &p2));
    let r1 = h.add(&rt1).unwrap();
    h.add(&rt2).unwrap();
    let target = SocketAddr::new(pod_ip(&r1), 7000);
    // The kernel completes handshakes into the backlog: no accept needed.
    let _listener = p1
        .run(|| TcpListener::bind("0.0.0.0:7000"))
        .expect("bind in pod");
    assert!(
        p2.run(|| connects(target)),
        "pod2 reaches pod1 with its own MAC"
    );
    // pod2 takes another MAC; with the neighbour caches flushed, its ARP reply and every
    // frame it sends carry the new source MAC.
    p2.sh_ok("ip link set eth0 address 0a:58:00:00:00:42");
    p1.sh_ok("ip neigh flush dev eth0");
    p2.sh_ok("ip neigh flush dev eth0");
    assert!(
        !p2.run(|| connects(target)),
        "frames from a MAC the plugin did not give must be dropped"
    );
    h.del(&rt1).unwrap();
    h.del(&rt2).unwrap();
    h.assert_clean();
}

// ---------------------------------------------------------------------------------------
// The binary invoked directly

/// stdin for the bridge plugin of `h`'s network: its object with `name` and `cniVersion`.
fn plugin_stdin(h: &Harness) -> Vec<u8> {
    let mut conf = h.net.plugins[0].raw.clone();
    conf.insert("name".into(), json!(h.net.name));
    conf.insert("cniVersion".into(), json!(h.net.cni_version));
    serde_json::to_vec(&conf).unwrap()
}

/// Runs vaina-bridge inside the node with exactly `env` and `stdin`: (exit code, stdout).
fn exec_bridge(h: &Harness, env: &[(&str, &str)], stdin: &[u8]) -> (i32, String) {
    let out = h.node.run(|| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vaina-bridge"))
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vaina-bridge");
        // VERSION does not read stdin: a closed pipe is fine.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait_with_output().expect("wait for vaina-bridge")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), stdout)
}

fn bin_path() -> String {
    vaina_bin_dir().display().to_string()
}

#[test]
fn direct_add_without_cni_netns_is_error_4_naming_it() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true"#, V4, DEFAULT_V4);
    let path = bin_path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "direct"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    let (code, stdout) = exec_bridge(&h, &env, &plugin_stdin(&h));
    assert_eq!(code, 1);
    let err: Value = serde_json::from_str(&stdout).expect("CNI error JSON");
    assert_eq!(err["code"], 4, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("CNI_NETNS"), "{err}");
    assert!(!link_exists(&h.node, "cni0"));
    assert_eq!(h.reservations(), Vec::<String>::new());
}

#[test]
fn direct_version_lists_supported_versions() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness("", V4, DEFAULT_V4);
    let (code, stdout) = exec_bridge(&h, &[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&stdout).expect("version JSON");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in ["1.1.0", "1.0.0", "0.4.0", "0.3.1"] {
        assert!(supported.contains(&want), "{want}: {v}");
    }
    assert!(v["cniVersion"].is_string(), "{v}");
}

#[test]
fn direct_add_with_a_netns_that_does_not_exist_is_container_unknown() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true"#, V4, DEFAULT_V4);
    let path = bin_path();
    let gone = h.node.path("no-such-netns").display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "direct"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", gone.as_str()),
        ("CNI_PATH", path.as_str()),
    ];
    let (code, stdout) = exec_bridge(&h, &env, &plugin_stdin(&h));
    assert_eq!(code, 1);
    let err: Value = serde_json::from_str(&stdout).expect("CNI error JSON");
    assert_eq!(err["code"], 3, "{err}");
    assert!(!link_exists(&h.node, "cni0"), "bridge created");
    assert_eq!(h.node.veths(), Vec::<String>::new());
    assert_eq!(h.reservations(), Vec::<String>::new());
}

#[test]
fn direct_del_with_an_empty_cni_netns_releases_the_address() {
    if !can_run_ns_tests() {
        return;
    }
    let h = harness(r#", "isGateway": true"#, V4, DEFAULT_V4);
    let pod = h.node.pod();
    let rt = h.rt("direct", &pod);
    h.add(&rt).unwrap();
    assert_eq!(h.reservations().len(), 1);
    let path = bin_path();
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "direct"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", ""),
        ("CNI_PATH", path.as_str()),
    ];
    let (code, stdout) = exec_bridge(&h, &env, &plugin_stdin(&h));
    assert_eq!((code, stdout.as_str()), (0, ""));
    assert_eq!(h.reservations(), Vec::<String>::new());
    // The runtime's own DEL still works and clears its cache.
    h.del(&rt).unwrap();
    h.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Reference options vaina does not implement are refused, never silently ignored.

#[test]
fn unsupported_reference_options_are_refused_and_create_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    for (fields, needle) in [
        (r#", "vlanTrunk": [{ "id": 101 }]"#, "vlanTrunk"),
        (r#", "preserveDefaultVlan": false"#, "preserveDefaultVlan"),
        (
            r#", "disableContainerInterface": true"#,
            "disableContainerInterface",
        ),
        (r#", "portIsolation": true"#, "portIsolation"),
        (
            r#", "ipMasq": true, "ipMasqBackend": "iptables""#,
            "ipMasqBackend",
        ),
        (
            r#", "isGateway": true, "vlan": 100"#,
            "vlan together with isGateway",
        ),
    ] {
        let h = harness(fields, V4, DEFAULT_V4);
        let pod = h.node.pod();
        let rt = h.rt("unsupported", &pod);
        let (code, err) = add_error(&h, &rt);
        assert!(
            err.contains(needle) && err.contains("not supported"),
            "{fields}: {err}"
        );
        assert_eq!(
            code,
            Some(2),
            "{fields}: unsupported field is code 2: {err}"
        );
        assert_nothing_left(&h, &pod, fields);
        assert!(!link_exists(&h.node, "cni0"), "{fields}: bridge created");
    }
}
