//! End-to-end: vaina's plugin binaries through vaina's CNI runtime library, inside a
//! throwaway node namespace, with real TCP traffic.

mod common;

use std::collections::HashSet;

use common::*;
use vaina_testkit::can_run_ns_tests;

#[test]
fn two_pods_get_veths_ips_and_talk_through_the_bridge() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let (p1, p2) = (h.node.pod(), h.node.pod());
    let (rt1, rt2) = (h.rt("pod1", &p1), h.rt("pod2", &p2));

    let r1 = h.add(&rt1).unwrap();
    assert_eq!(h.node.veths().len(), 1, "one veth per pod");
    let r2 = h.add(&rt2).unwrap();
    assert_eq!(h.node.veths().len(), 2);
    let (ip1, ip2) = (pod_ip(&r1), pod_ip(&r2));
    assert_ne!(ip1, ip2);
    let subnet: ipnet::IpNet = "10.88.0.0/16".parse().unwrap();
    assert!(subnet.contains(&ip1) && subnet.contains(&ip2));
    assert_eq!(r1.ips[0].gateway, Some("10.88.0.1".parse().unwrap()));

    // Independent witnesses: iproute2 in the node and in the pods.
    let br = h.node.sh_ok("ip -4 -o addr show dev cni0");
    assert!(br.contains("10.88.0.1/16"), "{br}");
    for v in h.node.veths() {
        let l = h.node.sh_ok(&format!("ip -o link show dev {v}"));
        assert!(l.contains("master cni0") && l.contains("state UP"), "{l}");
    }
    let eth0 = p1.sh_ok("ip -4 -o addr show dev eth0");
    assert!(eth0.contains(&format!("{ip1}/16")), "{eth0}");
    let route = p1.sh_ok("ip -4 route show default");
    assert!(route.contains("via 10.88.0.1 dev eth0"), "{route}");
    assert!(p1.sh_ok("ip -o link show dev lo").contains("UP"));

    // pod2 → pod1 through cni0; the node → pod2 directly.
    let srv1 = serve(&p1, 7000, 1);
    let got = p2
        .run(|| talk(&format!("{ip1}:7000"), "from-pod2"))
        .unwrap();
    assert_eq!(got, "pong:from-pod2");
    srv1.join().unwrap();
    let srv2 = serve(&p2, 7001, 1);
    let got = h
        .node
        .run(|| talk(&format!("{ip2}:7001"), "from-node"))
        .unwrap();
    assert_eq!(got, "pong:from-node");
    srv2.join().unwrap();

    h.del(&rt1).unwrap();
    assert_eq!(h.node.veths().len(), 1);
    h.del(&rt2).unwrap();
    h.assert_clean();
    assert!(
        h.node.sh_ok("ip -o link show type bridge").contains("cni0"),
        "the bridge stays"
    );
}

#[test]
fn host_port_reaches_the_pod_from_the_node_loopback_and_goes_away_on_del() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let pod = h.node.pod();
    let mut rt = h.rt("hp1", &pod);
    rt.capability_args.insert(
        "portMappings".into(),
        serde_json::json!([{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }]),
    );
    h.add(&rt).unwrap();
    let srv = serve(&pod, 80, 2);
    let got = h.node.run(|| talk("127.0.0.1:8080", "lo")).unwrap();
    assert_eq!(got, "pong:lo");
    // The node's own bridge address is local too.
    let got = h.node.run(|| talk("10.88.0.1:8080", "gw")).unwrap();
    assert_eq!(got, "pong:gw");
    srv.join().unwrap();

    h.del(&rt).unwrap();
    h.assert_clean();
    let _keep = serve(&pod, 80, 0);
    assert!(h.node.run(|| talk("127.0.0.1:8080", "after")).is_err());
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_ips() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let pods: Vec<_> = (0..50).map(|_| h.node.pod()).collect();
    let rts: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| h.rt(&format!("conc{i}"), p))
        .collect();
    let ips: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = rts.iter().map(|rt| s.spawn(|| h.add(rt))).collect();
        hs.into_iter()
            .map(|j| pod_ip(&j.join().unwrap().unwrap()))
            .collect()
    });
    let distinct: HashSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "{ips:?}");
    assert_eq!(h.node.veths().len(), 50);
    assert_eq!(h.reservations().len(), 50);
    std::thread::scope(|s| {
        for rt in &rts {
            s.spawn(|| h.del(rt).unwrap());
        }
    });
    h.assert_clean();
}

#[test]
fn add_del_500_times_leaves_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let pod = h.node.pod();
    for i in 0..500 {
        let mut rt = h.rt(&format!("cycle{i}"), &pod);
        rt.capability_args.insert(
            "portMappings".into(),
            serde_json::json!([{ "hostPort": 9000, "containerPort": 90 }]),
        );
        h.add(&rt).unwrap_or_else(|e| panic!("ADD #{i}: {e}"));
        h.del(&rt).unwrap_or_else(|e| panic!("DEL #{i}: {e}"));
    }
    h.assert_clean();
    assert_eq!(
        pod.sh_ok("ip -o link show | grep -c eth0 || true").trim(),
        "0"
    );
}

#[test]
fn del_is_repeatable_and_works_after_the_netns_is_gone() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let pod = h.node.pod();
    let rt = h.rt("twice", &pod);
    h.add(&rt).unwrap();
    h.del(&rt).unwrap();
    h.del(&rt).unwrap();
    h.assert_clean();

    let gone = h.node.pod();
    let rt = h.rt("gone", &gone);
    h.add(&rt).unwrap();
    assert_eq!(h.reservations().len(), 1);
    drop(gone); // the pod's netns disappears, and its veth pair with it
    h.del(&rt).unwrap();
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn failed_add_rolls_back_everything() {
    if !can_run_ns_tests() {
        return;
    }
    // A /30 has one address besides the gateway: the second pod cannot get one.
    let h = Harness::with_conflist(|d| conflist("1.1.0", "10.99.0.0/30", d, ""));
    let (p1, p2) = (h.node.pod(), h.node.pod());
    let (rt1, rt2) = (h.rt("first", &p1), h.rt("second", &p2));
    h.add(&rt1).unwrap();
    let err = h.add(&rt2).unwrap_err();
    assert!(err.contains("no IP addresses available"), "{err}");
    assert_eq!(h.node.veths().len(), 1, "the failed pod's veth was removed");
    assert_eq!(h.reservations().len(), 1);
    assert!(
        p2.sh_ok("ip -o link show")
            .lines()
            .all(|l| !l.contains("eth0"))
    );
    h.del(&rt2).unwrap();
    h.del(&rt1).unwrap();
    h.assert_clean();
}

#[test]
fn malformed_configs_are_rejected_and_create_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let cases: [(&str, &str); 6] = [
        (
            "bad json",
            r#"{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"vaina-bridge",}]}"#,
        ),
        (
            "unknown cniVersion",
            r#"{"cniVersion":"9.9.9","name":"bad","plugins":[{"type":"vaina-bridge","ipam":{"type":"vaina-host-local","subnet":"10.1.0.0/24"}}]}"#,
        ),
        (
            "overlapping ranges",
            r#"{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"vaina-bridge","ipam":{"type":"vaina-host-local","ranges":[[{"subnet":"10.1.0.0/16"}],[{"subnet":"10.1.2.0/24"}]]}}]}"#,
        ),
        (
            "subnet too small",
            r#"{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"vaina-bridge","ipam":{"type":"vaina-host-local","ranges":[[{"subnet":"10.1.0.0/31"}]]}}]}"#,
        ),
        (
            "bad MTU",
            r#"{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"vaina-bridge","mtu":10,"ipam":{"type":"vaina-host-local","subnet":"10.1.0.0/24"}}]}"#,
        ),
        (
            "missing ipam",
            r#"{"cniVersion":"1.1.0","name":"bad","plugins":[{"type":"vaina-bridge"}]}"#,
        ),
    ];
    let expect = ["", "9.9.9", "overlaps", "too small", "MTU", "ipam"];
    for ((what, conf), needle) in cases.iter().zip(expect) {
        let parsed = vaina_cni::config::NetworkConfigList::from_bytes(conf.as_bytes());
        let err = match parsed {
            Err(e) => error_text(&e),
            Ok(list) => {
                let h = Harness::new();
                let pod = h.node.pod();
                let rt = h.rt("bad", &pod);
                let err = h
                    .node
                    .run(|| h.cni.add_network_list(&list, &rt))
                    .expect_err(what);
                assert_eq!(h.node.veths(), Vec::<String>::new(), "{what}: veth left");
                assert!(
                    !h.node.sh_ok("ip -o link show").contains("cni0"),
                    "{what}: bridge left"
                );
                assert_eq!(h.reservations(), Vec::<String>::new(), "{what}");
                error_text(&err)
            }
        };
        assert!(err.contains(needle), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
}

#[test]
fn check_passes_after_add_and_fails_when_the_address_is_gone() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let pod = h.node.pod();
    let rt = h.rt("chk", &pod);
    let r = h.add(&rt).unwrap();
    h.node
        .run(|| h.cni.check_network_list(&h.net, &rt))
        .unwrap();
    pod.sh_ok(&format!("ip addr del {} dev eth0", r.ips[0].address));
    let err = h
        .node
        .run(|| h.cni.check_network_list(&h.net, &rt))
        .unwrap_err();
    assert!(error_text(&err).contains("missing"), "{}", error_text(&err));
    h.del(&rt).unwrap();
    h.assert_clean();
}

#[test]
fn gc_releases_what_is_not_a_valid_attachment() {
    if !can_run_ns_tests() {
        return;
    }
    let h = Harness::new();
    let pods: Vec<_> = (0..3).map(|_| h.node.pod()).collect();
    let rts: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| h.rt(&format!("gc{i}"), p))
        .collect();
    for rt in &rts {
        h.add(rt).unwrap();
    }
    assert_eq!(h.reservations().len(), 3);
    let keep = vaina_cni::runtime::Attachment {
        container_id: "gc0".into(),
        ifname: "eth0".into(),
    };
    // A runtime collects every network it manages.
    h.node
        .run(|| {
            h.cni.gc_network_list(&h.net, std::slice::from_ref(&keep))?;
            h.cni.gc_network_list(&h.lo, std::slice::from_ref(&keep))
        })
        .unwrap();
    assert_eq!(h.reservations().len(), 1);
    h.del(&rts[0]).unwrap();
    drop(pods);
    h.assert_clean();
}

#[test]
fn older_spec_versions_get_results_in_their_format() {
    if !can_run_ns_tests() {
        return;
    }
    for v in ["0.3.1", "0.4.0", "1.0.0"] {
        let h = Harness::with_conflist(|d| conflist(v, "10.77.0.0/24", d, ""));
        let pod = h.node.pod();
        let rt = h.rt("old", &pod);
        let r = h.add(&rt).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(r.cni_version, v);
        assert!(r.ips[0].address.to_string().starts_with("10.77.0."));
        h.del(&rt).unwrap();
        h.assert_clean();
    }
}
