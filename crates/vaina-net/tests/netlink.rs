//! Namespace tests of the netlink layer: each runs in its own throwaway node netns and
//! checks the result with `ip`, an independent witness.

use vaina_net::netlink::{BridgeSpec, Netlink, Route};
use vaina_testkit::{Node, can_run_ns_tests};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn bridge_veth_address_route_in_pod() {
    if !can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    rt().block_on(async {
        let host = Netlink::open_in(&node.ns).unwrap();
        let podnl = Netlink::open_in(&pod.ns).unwrap();
        let spec = BridgeSpec {
            name: "cni0".into(),
            mtu: Some(1400),
            ..Default::default()
        };
        let (br, created) = host.ensure_bridge(&spec).await.unwrap();
        assert!(created);
        let (br2, created2) = host.ensure_bridge(&spec).await.unwrap();
        assert!(!created2);
        assert_eq!(br.index, br2.index);
        host.ensure_address(br.index, "10.22.0.1/24".parse().unwrap())
            .await
            .unwrap();
        host.ensure_address(br.index, "10.22.0.1/24".parse().unwrap())
            .await
            .unwrap();

        host.add_veth("vethtest0", "eth0", &pod.ns, Some(1400), None)
            .await
            .unwrap();
        let err = host
            .add_veth("vethtest0", "eth0", &pod.ns, None, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let v = host.require_link("vethtest0").await.unwrap();
        assert_eq!(v.kind.as_deref(), Some("veth"));
        host.set_controller(v.index, br.index).await.unwrap();
        host.set_hairpin(v.index, true).await.unwrap();
        host.set_up(v.index).await.unwrap();

        let eth0 = podnl.require_link("eth0").await.unwrap();
        assert_eq!(eth0.mtu, 1400);
        podnl
            .ensure_address(eth0.index, "10.22.0.5/24".parse().unwrap())
            .await
            .unwrap();
        podnl.set_up(eth0.index).await.unwrap();
        let mut def = Route::new("0.0.0.0/0".parse().unwrap());
        def.gw = Some("10.22.0.1".parse().unwrap());
        podnl.ensure_route(&def).await.unwrap();
        podnl.ensure_route(&def).await.unwrap();
        let routes = podnl.routes(false).await.unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.gw == def.gw),
            "{routes:?}"
        );
        assert_eq!(
            podnl.route_oif("10.22.0.9".parse().unwrap()).await.unwrap(),
            Some(eth0.index)
        );
        let mut addrs = podnl.addresses(Some(eth0.index)).await.unwrap();
        addrs.retain(|(_, a)| a.addr().is_ipv4());
        assert_eq!(addrs, vec![(eth0.index, "10.22.0.5/24".parse().unwrap())]);

        assert!(host.del_link("vethtest0").await.unwrap());
        assert!(!host.del_link("vethtest0").await.unwrap());
        assert!(podnl.link("eth0").await.unwrap().is_none());
    });
    // The independent witness: the bridge is there, the veth and pod eth0 are gone.
    let out = node.sh_ok("ip -o link show type bridge");
    assert!(out.contains("cni0"), "{out}");
    assert!(node.veths().is_empty());
}

#[test]
fn existing_non_bridge_is_refused() {
    if !can_run_ns_tests() {
        return;
    }
    let node = Node::new();
    node.sh_ok("ip link add cni0 type veth peer name cni0p");
    rt().block_on(async {
        let host = Netlink::open_in(&node.ns).unwrap();
        let err = host
            .ensure_bridge(&BridgeSpec {
                name: "cni0".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface cni0 already exists but is a veth, not a bridge"
        );
    });
}
