//! Allocation over a MemoryStore, with the cases of the reference's
//! allocator_test.go.

use std::net::IpAddr;

use serde_json::json;
use vaina_ipam::{
    AllocError, Allocation, IpamConfig, MemoryStore, Range, RangeSet, Store, allocate, check, gc,
    release,
};

use crate::{ip, range, subnets};

fn alloc(store: &MemoryStore, set: &RangeSet, id: &str) -> Result<IpAddr, AllocError> {
    allocate(store, std::slice::from_ref(set), &[], id, "eth0").map(|a| a[0].address.addr())
}

fn request(
    store: &MemoryStore,
    set: &RangeSet,
    id: &str,
    wanted: &str,
) -> Result<Allocation, AllocError> {
    allocate(store, std::slice::from_ref(set), &[ip(wanted)], id, "eth0").map(|a| a[0])
}

/// Leaves `last` as range set 0's last reserved address, not reserved.
fn set_last(store: &MemoryStore, last: &str) {
    assert!(store.reserve("setup", "eth9", ip(last), 0).unwrap());
    assert!(store.release(ip(last)).unwrap());
}

fn reserved(store: &MemoryStore) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = store.list().unwrap().iter().map(|r| r.ip).collect();
    ips.sort();
    ips
}

// The documentation's command-line example and its output.
#[test]
fn documented_command_line_example() {
    let config = IpamConfig::from_network_config(
        &json!({ "cniVersion": "0.3.1", "name": "examplenet", "ipam": { "type": "host-local", "ranges": [ [{"subnet": "203.0.113.0/24"}], [{"subnet": "2001:db8:1::/64"}]], "dataDir": "/tmp/cni-example"  } }),
        &[],
    )
    .unwrap();
    let store = MemoryStore::new();
    let got = allocate(
        &store,
        &config.ranges,
        &config.requested_ips,
        "example",
        "dummy0",
    )
    .unwrap();
    assert_eq!(
        got,
        [
            Allocation {
                address: "203.0.113.2/24".parse().unwrap(),
                gateway: Some(ip("203.0.113.1")),
            },
            Allocation {
                address: "2001:db8:1::2/64".parse().unwrap(),
                gateway: Some(ip("2001:db8:1::1")),
            },
        ]
    );
}

#[test]
fn allocates_in_order_from_the_beginning_then_exhausts() {
    let store = MemoryStore::new();
    let set = subnets(&["192.168.1.0/29"]);
    for i in 2..7 {
        let got = allocate(
            &store,
            std::slice::from_ref(&set),
            &[],
            &format!("ID{i}"),
            "eth0",
        )
        .unwrap();
        assert_eq!(got[0].address.to_string(), format!("192.168.1.{i}/29"));
        assert_eq!(got[0].gateway, Some(ip("192.168.1.1")));
    }
    // Neither the gateway (.1) nor the broadcast (.7) is handed out.
    assert_eq!(
        alloc(&store, &set, "ID8").unwrap_err().to_string(),
        "no IP addresses available in range set 192.168.1.1-192.168.1.6"
    );
}

#[test]
fn wraps_around_from_the_end() {
    let store = MemoryStore::new();
    let set = subnets(&["192.168.1.0/29"]);
    set_last(&store, "192.168.1.6");
    let got: Vec<IpAddr> = (0..5)
        .map(|i| alloc(&store, &set, &format!("c{i}")).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "192.168.1.2",
            "192.168.1.3",
            "192.168.1.4",
            "192.168.1.5",
            "192.168.1.6"
        ]
        .map(ip)
    );
    assert!(matches!(
        alloc(&store, &set, "c5"),
        Err(AllocError::Exhausted { .. })
    ));
}

#[test]
fn resumes_from_the_middle_and_offers_the_last_address_last() {
    let store = MemoryStore::new();
    let set = subnets(&["192.168.1.0/29"]);
    set_last(&store, "192.168.1.3");
    let got: Vec<IpAddr> = (0..5)
        .map(|i| alloc(&store, &set, &format!("c{i}")).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "192.168.1.4",
            "192.168.1.5",
            "192.168.1.6",
            "192.168.1.2",
            "192.168.1.3"
        ]
        .map(ip)
    );
}

// allocator_test.go "should allocate ips in round robin".
#[test]
fn round_robin_table() {
    struct Case {
        subnets: &'static [&'static str],
        taken: &'static [&'static str],
        last: Option<&'static str>,
        expect: &'static str,
    }
    let cases = [
        // fresh start
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &[],
            last: None,
            expect: "10.0.0.2",
        },
        Case {
            subnets: &["2001:db8:1::0/64"],
            taken: &[],
            last: None,
            expect: "2001:db8:1::2",
        },
        Case {
            subnets: &["10.0.0.0/30"],
            taken: &[],
            last: None,
            expect: "10.0.0.2",
        },
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &["10.0.0.2"],
            last: None,
            expect: "10.0.0.3",
        },
        // next ip of last reserved ip
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &[],
            last: Some("10.0.0.5"),
            expect: "10.0.0.6",
        },
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &["10.0.0.4", "10.0.0.5"],
            last: Some("10.0.0.3"),
            expect: "10.0.0.6",
        },
        // round robin to the beginning
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &["10.0.0.6"],
            last: Some("10.0.0.5"),
            expect: "10.0.0.2",
        },
        // lastIP is out of range
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &["10.0.0.2"],
            last: Some("10.0.0.128"),
            expect: "10.0.0.3",
        },
        // subnet is completely full except for lastip: wrap around and reserve lastIP
        Case {
            subnets: &["10.0.0.0/29"],
            taken: &["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            last: Some("10.0.0.3"),
            expect: "10.0.0.3",
        },
        // allocate from multiple subnets
        Case {
            subnets: &["10.0.0.0/30", "10.0.1.0/30"],
            taken: &[],
            last: None,
            expect: "10.0.0.2",
        },
        // advance to next subnet
        Case {
            subnets: &["10.0.0.0/30", "10.0.1.0/30"],
            taken: &[],
            last: Some("10.0.0.2"),
            expect: "10.0.1.2",
        },
        // roll to start subnet
        Case {
            subnets: &["10.0.0.0/30", "10.0.1.0/30", "10.0.2.0/30"],
            taken: &[],
            last: Some("10.0.2.2"),
            expect: "10.0.0.2",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let store = MemoryStore::new();
        let set = subnets(case.subnets);
        if let Some(last) = case.last {
            set_last(&store, last);
        }
        for taken in case.taken {
            store.insert_legacy(ip(taken), "id");
        }
        assert_eq!(
            alloc(&store, &set, "ID").unwrap(),
            ip(case.expect),
            "case {i}"
        );
    }
}

// allocator_test.go "when out of ips".
#[test]
fn out_of_ips_table() {
    let cases: [(&[&str], &[&str], &str); 3] = [
        (&["10.0.0.0/30"], &["10.0.0.2"], "10.0.0.1-10.0.0.2"),
        (
            &["10.0.0.0/29"],
            &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
            "10.0.0.1-10.0.0.6",
        ),
        (
            &["10.0.0.0/30", "10.0.1.0/30"],
            &["10.0.0.2", "10.0.1.2"],
            "10.0.0.1-10.0.0.2,10.0.1.1-10.0.1.2",
        ),
    ];
    for (subnet_list, taken, shown) in cases {
        let store = MemoryStore::new();
        for taken in taken {
            store.insert_legacy(ip(taken), "id");
        }
        let err = alloc(&store, &subnets(subnet_list), "ID").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no IP addresses available in range set {shown}")
        );
    }
}

#[test]
fn round_robin_after_release() {
    let store = MemoryStore::new();
    let set = subnets(&["192.168.1.0/29"]);
    assert_eq!(alloc(&store, &set, "ID").unwrap(), ip("192.168.1.2"));
    release(&store, "ID", "eth0").unwrap();
    assert_eq!(alloc(&store, &set, "ID").unwrap(), ip("192.168.1.3"));
}

#[test]
fn gateway_in_the_middle_is_skipped() {
    let store = MemoryStore::new();
    let set = RangeSet::new(vec![
        Range::new(
            "10.0.0.0/29".parse().unwrap(),
            None,
            None,
            Some(ip("10.0.0.4")),
        )
        .unwrap(),
    ])
    .unwrap();
    let got: Vec<IpAddr> = (0..5)
        .map(|i| alloc(&store, &set, &format!("c{i}")).unwrap())
        .collect();
    assert_eq!(
        got,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"].map(ip)
    );
    let all = allocate(&store, &[set], &[], "c9", "eth0").unwrap_err();
    assert_eq!(
        all.to_string(),
        "no IP addresses available in range set 10.0.0.1-10.0.0.6"
    );
}

// allocator_test.go: lastReservedIP at the end of one of several ranges.
#[test]
fn continues_at_the_start_of_the_next_range() {
    let store = MemoryStore::new();
    let set = RangeSet::new(vec![
        range(
            "192.168.1.0/30",
            "192.168.1.0",
            "192.168.1.3",
            "192.168.1.1",
        ),
        range(
            "192.168.2.0/30",
            "192.168.2.0",
            "192.168.2.3",
            "192.168.2.1",
        ),
    ])
    .unwrap();
    assert!(store.reserve("ID", "eth0", ip("192.168.1.3"), 0).unwrap());
    assert_eq!(alloc(&store, &set, "next").unwrap(), ip("192.168.2.0"));
}

#[test]
fn requested_ip() {
    let store = MemoryStore::new();
    let set = subnets(&["192.168.1.0/29"]);
    let got = request(&store, &set, "ID", "192.168.1.5").unwrap();
    assert_eq!(got.address, "192.168.1.5/29".parse().unwrap());
    assert_eq!(got.gateway, Some(ip("192.168.1.1")));

    assert_eq!(
        request(&store, &set, "other", "192.168.1.5")
            .unwrap_err()
            .to_string(),
        "requested IP 192.168.1.5 is already reserved"
    );
    assert_eq!(
        request(&store, &set, "other", "192.168.1.1")
            .unwrap_err()
            .to_string(),
        "requested IP 192.168.1.1 is the gateway of range set 192.168.1.1-192.168.1.6"
    );
    assert_eq!(
        request(&store, &set, "other", "10.1.2.3")
            .unwrap_err()
            .to_string(),
        "requested IP 10.1.2.3 is not in any range"
    );
    // In the subnet but after rangeEnd / before rangeStart.
    let narrow = RangeSet::new(vec![range(
        "192.168.1.0/29",
        "192.168.1.3",
        "192.168.1.4",
        "192.168.1.1",
    )])
    .unwrap();
    for outside in ["192.168.1.5", "192.168.1.2"] {
        assert_eq!(
            request(&store, &narrow, "other", outside)
                .unwrap_err()
                .to_string(),
            format!("requested IP {outside} is not in any range")
        );
    }
    // Two requested addresses for one range set.
    let err = allocate(
        &store,
        &[set],
        &[ip("192.168.1.2"), ip("192.168.1.3")],
        "x",
        "eth0",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "requested IPs 192.168.1.2 and 192.168.1.3 are both in range set 192.168.1.1-192.168.1.6"
    );
    assert_eq!(reserved(&store), [ip("192.168.1.5")]);
}

#[test]
fn requested_ip_goes_to_its_own_range_set() {
    let store = MemoryStore::new();
    let sets = [subnets(&["10.0.0.0/24"]), subnets(&["2001:db8::/64"])];
    let got = allocate(&store, &sets, &[ip("2001:db8::99")], "c", "eth0").unwrap();
    assert_eq!(got[0].address, "10.0.0.2/24".parse().unwrap());
    assert_eq!(got[1].address, "2001:db8::99/64".parse().unwrap());
}

#[test]
fn ipv6_range() {
    let store = MemoryStore::new();
    let set = RangeSet::new(vec![
        Range::new(
            "2001:db8:1::/64".parse().unwrap(),
            Some(ip("2001:db8:1::10")),
            Some(ip("2001:db8:1::12")),
            None,
        )
        .unwrap(),
    ])
    .unwrap();
    let got: Vec<Allocation> = (0..3)
        .map(|i| {
            allocate(
                &store,
                std::slice::from_ref(&set),
                &[],
                &format!("c{i}"),
                "eth0",
            )
            .unwrap()[0]
        })
        .collect();
    assert_eq!(
        got.iter()
            .map(|a| a.address.to_string())
            .collect::<Vec<_>>(),
        [
            "2001:db8:1::10/64",
            "2001:db8:1::11/64",
            "2001:db8:1::12/64"
        ]
    );
    assert!(got.iter().all(|a| a.gateway == Some(ip("2001:db8:1::1"))));
    assert_eq!(
        alloc(&store, &set, "c3").unwrap_err().to_string(),
        "no IP addresses available in range set 2001:db8:1::10-2001:db8:1::12"
    );
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let store = MemoryStore::new();
    let v4 = subnets(&["10.0.0.0/29"]);
    let v6 = RangeSet::new(vec![range(
        "2001:db8::/64",
        "2001:db8::10",
        "2001:db8::10",
        "2001:db8::1",
    )])
    .unwrap();
    let sets = [v4, v6];

    let first = allocate(&store, &sets, &[], "first", "eth0").unwrap();
    assert_eq!(first.len(), 2);
    // The v6 set is now full: the second container must not keep its v4 address.
    let err = allocate(&store, &sets, &[], "second", "eth0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no IP addresses available in range set 2001:db8::10-2001:db8::10"
    );
    assert_eq!(reserved(&store), [ip("10.0.0.2"), ip("2001:db8::10")]);

    // Same for a requested address that is taken in the second set.
    let err = allocate(&store, &sets, &[ip("2001:db8::10")], "third", "eth0").unwrap_err();
    assert!(matches!(err, AllocError::RequestedReserved { .. }), "{err}");
    assert_eq!(reserved(&store), [ip("10.0.0.2"), ip("2001:db8::10")]);
    assert!(store.get_by_id("third", "eth0").unwrap().is_empty());
}

#[test]
fn duplicate_add_is_refused() {
    let store = MemoryStore::new();
    let set = subnets(&["192.168.1.0/29"]);
    alloc(&store, &set, "c1").unwrap();
    assert_eq!(
        alloc(&store, &set, "c1").unwrap_err().to_string(),
        "container c1 interface eth0 has an IP address 192.168.1.2 already allocated \
         in range set 192.168.1.1-192.168.1.6"
    );
    // Another interface of the same container is another attachment.
    let other = allocate(&store, &[set], &[], "c1", "net1").unwrap();
    assert_eq!(other[0].address.addr(), ip("192.168.1.3"));
}

#[test]
fn release_is_idempotent() {
    let store = MemoryStore::new();
    let sets = [subnets(&["10.0.0.0/24"]), subnets(&["2001:db8::/64"])];
    assert!(release(&store, "nobody", "eth0").unwrap().is_empty());
    allocate(&store, &sets, &[], "c", "eth0").unwrap();
    allocate(&store, &sets, &[], "c", "eth1").unwrap();
    let mut freed = release(&store, "c", "eth0").unwrap();
    freed.sort();
    assert_eq!(freed, [ip("10.0.0.2"), ip("2001:db8::2")]);
    assert!(release(&store, "c", "eth0").unwrap().is_empty());
    assert_eq!(store.get_by_id("c", "eth1").unwrap().len(), 2);
}

#[test]
fn release_falls_back_to_legacy_reservations() {
    let store = MemoryStore::new();
    store.insert_legacy(ip("10.0.0.9"), "old");
    assert_eq!(release(&store, "old", "eth0").unwrap(), [ip("10.0.0.9")]);

    // With a reservation naming the interface, the legacy one stays, as in
    // the reference's ReleaseByID.
    store.insert_legacy(ip("10.0.0.9"), "mixed");
    assert!(store.reserve("mixed", "eth0", ip("10.0.0.10"), 0).unwrap());
    assert_eq!(release(&store, "mixed", "eth0").unwrap(), [ip("10.0.0.10")]);
    assert_eq!(release(&store, "mixed", "eth0").unwrap(), [ip("10.0.0.9")]);
}

#[test]
fn gc_releases_what_is_not_valid() {
    let store = MemoryStore::new();
    for (addr, id, ifname) in [
        ("10.0.0.1", "keep-me", "eth0"),
        ("10.0.0.2", "gone", "eth0"),
        ("10.0.0.3", "twoif", "eth0"),
        ("10.0.0.4", "twoif", "eth1"),
    ] {
        assert!(store.reserve(id, ifname, ip(addr), 0).unwrap());
    }
    store.insert_legacy(ip("10.0.0.8"), "legacy-id");
    store.insert_legacy(ip("10.0.0.9"), "stale-legacy");

    let mut freed = gc(
        &store,
        &[
            ("keep-me", "eth0"),
            ("twoif", "eth0"),
            ("legacy-id", "eth0"),
        ],
    )
    .unwrap();
    freed.sort();
    assert_eq!(freed, [ip("10.0.0.2"), ip("10.0.0.4"), ip("10.0.0.9")]);
    assert_eq!(
        reserved(&store),
        [ip("10.0.0.1"), ip("10.0.0.3"), ip("10.0.0.8")]
    );

    assert_eq!(gc(&store, &[]).unwrap().len(), 3);
    assert!(reserved(&store).is_empty());
}

#[test]
fn check_reports_missing_addresses() {
    let store = MemoryStore::new();
    let sets = [subnets(&["10.0.0.0/24"]), subnets(&["2001:db8::/64"])];
    assert_eq!(
        check(&store, "c", "eth0", &[]).unwrap_err().to_string(),
        "no IP address is reserved for container c interface eth0"
    );
    allocate(&store, &sets, &[], "c", "eth0").unwrap();
    check(&store, "c", "eth0", &[]).unwrap();
    check(&store, "c", "eth0", &[ip("10.0.0.2"), ip("2001:db8::2")]).unwrap();
    assert_eq!(
        check(&store, "c", "eth0", &[ip("10.0.0.3")])
            .unwrap_err()
            .to_string(),
        "IP 10.0.0.3 is not reserved for container c interface eth0"
    );
    assert!(matches!(
        check(&store, "c", "eth1", &[]),
        Err(AllocError::NotFound { .. })
    ));
}
