//! Config parsing, with the reference's documented examples and the cases of
//! its config_test.go and range_test.go.

use std::path::PathBuf;

use serde_json::json;
use vaina_ipam::{ConfigError, IpamConfig, Range, RangeSet, Route, parse_cni_args_ip};

use crate::{ip, range};

fn load(config: serde_json::Value) -> Result<IpamConfig, ConfigError> {
    IpamConfig::from_network_config(&config, &[])
}

fn load_err(config: serde_json::Value) -> String {
    load(config).unwrap_err().to_string()
}

/// A network config around `ipam`, as the runtime would pass it.
fn net(ipam: serde_json::Value) -> serde_json::Value {
    json!({ "cniVersion": "1.0.0", "name": "mynet", "type": "bridge", "ipam": ipam })
}

fn ranges_of(ipam: serde_json::Value) -> Vec<Vec<Range>> {
    load(net(ipam))
        .unwrap()
        .ranges
        .iter()
        .map(|set| set.ranges().to_vec())
        .collect()
}

fn one_range(range: serde_json::Value) -> Result<Range, String> {
    load(net(json!({ "type": "host-local", "ranges": [[range]] })))
        .map(|c| c.ranges[0].ranges()[0])
        .map_err(|e| e.to_string())
}

// The first example of the host-local documentation (cni.dev), wrapped in a
// network config: two range sets, the first of two subnets.
#[test]
fn documented_example_with_two_range_sets() {
    let config = load(net(json!({
        "type": "host-local",
        "ranges": [
            [
                {
                    "subnet": "10.10.0.0/16",
                    "rangeStart": "10.10.1.20",
                    "rangeEnd": "10.10.3.50",
                    "gateway": "10.10.0.254"
                },
                {
                    "subnet": "172.16.5.0/24"
                }
            ],
            [
                {
                    "subnet": "3ffe:ffff:0:01ff::/64",
                    "rangeStart": "3ffe:ffff:0:01ff::0010",
                    "rangeEnd": "3ffe:ffff:0:01ff::0020"
                }
            ]
        ],
        "routes": [
            { "dst": "0.0.0.0/0" },
            { "dst": "192.168.0.0/16", "gw": "10.10.5.1" },
            { "dst": "3ffe:ffff:0:01ff::1/64" }
        ],
        "dataDir": "/run/my-orchestrator/container-ipam-state"
    })))
    .unwrap();

    assert_eq!(config.name, "mynet");
    assert_eq!(config.plugin_type, "host-local");
    let sets: Vec<&[Range]> = config.ranges.iter().map(RangeSet::ranges).collect();
    assert_eq!(
        sets,
        [
            &[
                range("10.10.0.0/16", "10.10.1.20", "10.10.3.50", "10.10.0.254"),
                range("172.16.5.0/24", "172.16.5.1", "172.16.5.254", "172.16.5.1"),
            ][..],
            &[range(
                "3ffe:ffff:0:1ff::/64",
                "3ffe:ffff:0:1ff::10",
                "3ffe:ffff:0:1ff::20",
                "3ffe:ffff:0:1ff::1"
            )][..],
        ]
    );
    assert_eq!(
        config.ranges[0].to_string(),
        "10.10.1.20-10.10.3.50,172.16.5.1-172.16.5.254"
    );
    assert_eq!(
        config.data_dir,
        PathBuf::from("/run/my-orchestrator/container-ipam-state")
    );
    assert_eq!(config.resolv_conf, None);
    assert!(config.requested_ips.is_empty());
    assert_eq!(
        serde_json::to_value(&config.routes).unwrap(),
        json!([
            { "dst": "0.0.0.0/0" },
            { "dst": "192.168.0.0/16", "gw": "10.10.5.1" },
            // host bits kept, as the reference does
            { "dst": "3ffe:ffff:0:1ff::1/64" }
        ])
    );
}

// The documentation's deprecated single-range form.
#[test]
fn documented_legacy_example() {
    let config = load(net(json!({
        "type": "host-local",
        "subnet": "3ffe:ffff:0:01ff::/64",
        "rangeStart": "3ffe:ffff:0:01ff::0010",
        "rangeEnd": "3ffe:ffff:0:01ff::0020",
        "routes": [
            { "dst": "3ffe:ffff:0:01ff::1/64" }
        ],
        "resolvConf": "/etc/resolv.conf"
    })))
    .unwrap();
    assert_eq!(config.ranges.len(), 1);
    assert_eq!(
        config.ranges[0].ranges(),
        [range(
            "3ffe:ffff:0:1ff::/64",
            "3ffe:ffff:0:1ff::10",
            "3ffe:ffff:0:1ff::20",
            "3ffe:ffff:0:1ff::1"
        )]
    );
    assert_eq!(config.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/cni/networks"));
    assert_eq!(
        config.routes,
        [Route {
            dst: "3ffe:ffff:0:1ff::1/64".parse().unwrap(),
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }]
    );
}

#[test]
fn old_style_config() {
    let ranges = ranges_of(json!({
        "type": "host-local",
        "subnet": "10.1.2.0/24",
        "rangeStart": "10.1.2.9",
        "rangeEnd": "10.1.2.20",
        "gateway": "10.1.2.30"
    }));
    assert_eq!(
        ranges,
        [[range("10.1.2.0/24", "10.1.2.9", "10.1.2.20", "10.1.2.30")]]
    );
}

#[test]
fn new_style_config() {
    let ranges = ranges_of(json!({
        "type": "host-local",
        "ranges": [
            [
                {
                    "subnet": "10.1.2.0/24",
                    "rangeStart": "10.1.2.9",
                    "rangeEnd": "10.1.2.20",
                    "gateway": "10.1.2.30"
                },
                {
                    "subnet": "10.1.4.0/24"
                }
            ],
            [{
                "subnet": "11.1.2.0/24",
                "rangeStart": "11.1.2.9",
                "rangeEnd": "11.1.2.20",
                "gateway": "11.1.2.30"
            }]
        ]
    }));
    assert_eq!(
        ranges,
        [
            vec![
                range("10.1.2.0/24", "10.1.2.9", "10.1.2.20", "10.1.2.30"),
                range("10.1.4.0/24", "10.1.4.1", "10.1.4.254", "10.1.4.1"),
            ],
            vec![range("11.1.2.0/24", "11.1.2.9", "11.1.2.20", "11.1.2.30")],
        ]
    );
}

// runtimeConfig.ipRanges come first, then the legacy range, then ipam.ranges.
#[test]
fn mixed_config_with_runtime_ranges() {
    let config = load(json!({
        "cniVersion": "0.3.1",
        "name": "mynet",
        "type": "ipvlan",
        "master": "foo0",
        "runtimeConfig": {
            "irrelevant": "a",
            "ipRanges": [
                [{ "subnet": "12.1.3.0/24" }]
            ]
        },
        "ipam": {
            "type": "host-local",
            "subnet": "10.1.2.0/24",
            "rangeStart": "10.1.2.9",
            "rangeEnd": "10.1.2.20",
            "gateway": "10.1.2.30",
            "ranges": [[
                {
                    "subnet": "11.1.2.0/24",
                    "rangeStart": "11.1.2.9",
                    "rangeEnd": "11.1.2.20",
                    "gateway": "11.1.2.30"
                }
            ]]
        }
    }))
    .unwrap();
    let ranges: Vec<&[Range]> = config.ranges.iter().map(RangeSet::ranges).collect();
    assert_eq!(
        ranges,
        [
            &[range("12.1.3.0/24", "12.1.3.1", "12.1.3.254", "12.1.3.1")][..],
            &[range("10.1.2.0/24", "10.1.2.9", "10.1.2.20", "10.1.2.30")][..],
            &[range("11.1.2.0/24", "11.1.2.9", "11.1.2.20", "11.1.2.30")][..],
        ]
    );
}

#[test]
fn runtime_ranges_alone_are_enough() {
    let config = load(json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "ipam": { "type": "host-local" },
        "runtimeConfig": { "ipRanges": [[{ "subnet": "10.244.1.0/24" }], [{ "subnet": "fd00:10:244:1::/64" }]] }
    }))
    .unwrap();
    assert_eq!(config.ranges.len(), 2);
    assert!(!config.ranges[1].is_ipv4());
}

#[test]
fn cni_args_ip() {
    assert_eq!(
        parse_cni_args_ip("IP=10.1.2.10").unwrap(),
        Some(ip("10.1.2.10"))
    );
    assert_eq!(
        parse_cni_args_ip("IP=10.1.2.11/24").unwrap(),
        Some(ip("10.1.2.11"))
    );
    assert_eq!(
        parse_cni_args_ip("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;IP=2001:db8::5").unwrap(),
        Some(ip("2001:db8::5"))
    );
    assert_eq!(parse_cni_args_ip("K8S_POD_NAME=web-0").unwrap(), None);
    assert_eq!(parse_cni_args_ip("").unwrap(), None);
    assert_eq!(
        parse_cni_args_ip("IP=10.1.2.300").unwrap_err().to_string(),
        "invalid IP address \"10.1.2.300\" in CNI_ARGS IP"
    );
}

// config_test.go "Should parse config args", with and without prefix: the
// CNI_ARGS address comes first.
#[test]
fn requested_ips_from_args_in_reference_order() {
    for (env, ips) in [
        (
            "10.1.2.10",
            json!(["10.1.2.11", "11.11.11.11", "2001:db8:1::11"]),
        ),
        (
            "10.1.2.10/24",
            json!(["10.1.2.11/24", "11.11.11.11/24", "2001:db8:1::11/64"]),
        ),
    ] {
        let config = json!({
            "cniVersion": "0.3.1",
            "name": "mynet",
            "type": "ipvlan",
            "master": "foo0",
            "args": { "cni": { "ips": ips } },
            "ipam": {
                "type": "host-local",
                "ranges": [
                    [{
                        "subnet": "10.1.2.0/24",
                        "rangeStart": "10.1.2.9",
                        "rangeEnd": "10.1.2.20",
                        "gateway": "10.1.2.30"
                    }],
                    [{
                        "subnet": "11.1.2.0/24",
                        "rangeStart": "11.1.2.9",
                        "rangeEnd": "11.1.2.20",
                        "gateway": "11.1.2.30"
                    }],
                    [{ "subnet": "2001:db8:1::/64" }]
                ]
            }
        });
        let env_ip = parse_cni_args_ip(&format!("IP={env}")).unwrap().unwrap();
        let config = IpamConfig::from_network_config(&config, &[env_ip]).unwrap();
        assert_eq!(
            config.requested_ips,
            [
                ip("10.1.2.10"),
                ip("10.1.2.11"),
                ip("11.11.11.11"),
                ip("2001:db8:1::11")
            ]
        );
    }
}

#[test]
fn requested_ips_from_runtime_config() {
    let config = load(json!({
        "cniVersion": "0.3.1",
        "name": "mynet",
        "runtimeConfig": {
            "ips": ["192.168.0.1", "192.168.0.5/24", "2001:db8::1/64", "::ffff:10.1.2.3"]
        },
        "ipam": { "type": "host-local", "subnet": "10.1.2.0/24" }
    }))
    .unwrap();
    assert_eq!(
        config.requested_ips,
        [
            ip("192.168.0.1"),
            ip("192.168.0.5"),
            ip("2001:db8::1"),
            ip("10.1.2.3")
        ]
    );
}

#[test]
fn overlap_between_range_sets_names_both() {
    let err = load_err(net(json!({
        "type": "host-local",
        "ranges": [
            [
                { "subnet": "10.1.2.0/24" },
                { "subnet": "10.2.2.0/24" }
            ],
            [
                { "subnet": "10.1.4.0/24" },
                { "subnet": "10.1.6.0/24" },
                { "subnet": "10.1.8.0/24" },
                { "subnet": "10.1.2.0/24" }
            ]
        ]
    })));
    assert_eq!(
        err,
        "range set 0 overlaps with range set 1: \
         10.1.2.0/24 (10.1.2.1-10.1.2.254) and 10.1.2.0/24 (10.1.2.1-10.1.2.254)"
    );
}

#[test]
fn overlap_within_range_set() {
    let err = load_err(net(json!({
        "type": "host-local",
        "ranges": [[
            { "subnet": "10.1.0.0/22" },
            { "subnet": "10.1.2.0/24" }
        ]]
    })));
    assert_eq!(
        err,
        "invalid range set 0: ranges 10.1.0.0/22 (10.1.0.1-10.1.3.254) \
         and 10.1.2.0/24 (10.1.2.1-10.1.2.254) overlap"
    );
}

#[test]
fn same_subnet_split_in_two_ranges_does_not_overlap() {
    let ranges = ranges_of(json!({
        "ranges": [[
            { "subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.127" },
            { "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.128" }
        ]]
    }));
    assert_eq!(ranges[0].len(), 2);
    let err = load_err(net(json!({
        "ranges": [[
            { "subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.127" },
            { "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.127" }
        ]]
    })));
    assert!(err.ends_with("overlap"), "{err}");
}

#[test]
fn range_set_with_mixed_families() {
    let err = load_err(net(json!({
        "type": "host-local",
        "ranges": [[
            { "subnet": "10.1.0.0/22" },
            { "subnet": "2001:db8:5::/64" }
        ]]
    })));
    assert_eq!(err, "invalid range set 0: mixed address families");
}

#[test]
fn cni_0_2_0_allows_one_address_per_family() {
    let config = |ranges: serde_json::Value| {
        json!({
            "cniVersion": "0.2.0",
            "name": "mynet",
            "ipam": { "type": "host-local", "ranges": ranges }
        })
    };
    let err = load_err(config(
        json!([[{ "subnet": "10.1.2.0/24" }], [{ "subnet": "11.1.2.0/24" }]]),
    ));
    assert_eq!(
        err,
        "CNI version \"0.2.0\" does not support more than 1 address per family"
    );
    load(config(
        json!([[{ "subnet": "10.1.2.0/24" }], [{ "subnet": "2001:db8:1::/48" }]]),
    ))
    .unwrap();
}

#[test]
fn range_defaults() {
    assert_eq!(
        one_range(json!({ "subnet": "192.0.2.0/24" })).unwrap(),
        range("192.0.2.0/24", "192.0.2.1", "192.0.2.254", "192.0.2.1")
    );
    assert_eq!(
        one_range(json!({ "subnet": "192.0.2.0/25" })).unwrap(),
        range("192.0.2.0/25", "192.0.2.1", "192.0.2.126", "192.0.2.1")
    );
    assert_eq!(
        one_range(json!({ "subnet": "10.0.0.0/30" })).unwrap(),
        range("10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.1")
    );
    assert_eq!(
        one_range(json!({ "subnet": "2001:DB8:1::/64" })).unwrap(),
        range(
            "2001:db8:1::/64",
            "2001:db8:1::1",
            "2001:db8:1::ffff:ffff:ffff:ffff",
            "2001:db8:1::1"
        )
    );
    // Empty strings are unset, as Go reads them.
    assert_eq!(
        one_range(json!({ "subnet": "192.0.2.0/24", "gateway": "", "rangeStart": "" })).unwrap(),
        range("192.0.2.0/24", "192.0.2.1", "192.0.2.254", "192.0.2.1")
    );
}

#[test]
fn host_bits_are_masked() {
    assert_eq!(
        one_range(json!({ "subnet": "192.0.2.12/24" })).unwrap(),
        range("192.0.2.0/24", "192.0.2.1", "192.0.2.254", "192.0.2.1")
    );
    assert_eq!(
        one_range(json!({ "subnet": "2001:DB8:24:19ff::/63" }))
            .unwrap()
            .subnet,
        "2001:db8:24:19fe::/63".parse().unwrap()
    );
}

#[test]
fn network_too_small() {
    for (subnet, shown) in [
        ("10.0.0.0/31", "10.0.0.0/31"),
        ("10.0.0.1/32", "10.0.0.1/32"),
        ("192.0.2.1/31", "192.0.2.0/31"),
        ("2001:db8::/127", "2001:db8::/127"),
        ("2001:db8::1/128", "2001:db8::1/128"),
    ] {
        assert_eq!(
            one_range(json!({ "subnet": subnet })).unwrap_err(),
            format!("invalid range set 0: network {shown} too small to allocate from")
        );
    }
    one_range(json!({ "subnet": "2001:db8::/126" })).unwrap();
}

#[test]
fn addresses_outside_the_subnet() {
    let cases = [
        (
            json!({ "subnet": "192.0.2.0/24", "rangeStart": "192.0.3.0" }),
            "invalid range set 0: rangeStart 192.0.3.0 not in network 192.0.2.0/24",
        ),
        (
            json!({ "subnet": "192.0.2.0/24", "rangeEnd": "192.0.4.0" }),
            "invalid range set 0: rangeEnd 192.0.4.0 not in network 192.0.2.0/24",
        ),
        (
            json!({ "subnet": "192.0.2.0/24", "gateway": "192.0.3.1" }),
            "invalid range set 0: gateway 192.0.3.1 not in network 192.0.2.0/24",
        ),
        (
            json!({ "subnet": "192.0.2.0/24", "rangeStart": "2001:db8::1" }),
            "invalid range set 0: rangeStart 2001:db8::1 not in network 192.0.2.0/24",
        ),
    ];
    for (range, message) in cases {
        assert_eq!(one_range(range).unwrap_err(), message);
    }
}

#[test]
fn start_after_end() {
    assert_eq!(
        one_range(json!({
            "subnet": "192.0.2.0/24",
            "rangeStart": "192.0.2.50",
            "rangeEnd": "192.0.2.40"
        }))
        .unwrap_err(),
        "invalid range set 0: rangeStart 192.0.2.50 is after rangeEnd 192.0.2.40"
    );
    assert_eq!(
        one_range(json!({ "subnet": "10.0.0.0/30", "rangeStart": "10.0.0.3" })).unwrap_err(),
        "invalid range set 0: rangeStart 10.0.0.3 is after rangeEnd 10.0.0.2"
    );
}

#[test]
fn range_set_index_counts_runtime_and_legacy_first() {
    let err = load_err(json!({
        "cniVersion": "1.0.0",
        "name": "mynet",
        "runtimeConfig": { "ipRanges": [[{ "subnet": "10.9.0.0/24" }]] },
        "ipam": {
            "subnet": "10.1.0.0/24",
            "ranges": [[{ "subnet": "10.2.0.0/24" }], [{ "subnet": "10.3.0.0/31" }]]
        }
    }));
    assert_eq!(
        err,
        "invalid range set 3: network 10.3.0.0/31 too small to allocate from"
    );
}

#[test]
fn missing_ipam() {
    assert_eq!(
        load_err(json!({ "cniVersion": "1.0.0", "name": "mynet", "type": "bridge" })),
        "network config missing 'ipam' key"
    );
    assert_eq!(
        load_err(json!({ "cniVersion": "1.0.0", "name": "mynet", "ipam": null })),
        "network config missing 'ipam' key"
    );
}

#[test]
fn missing_name() {
    assert_eq!(
        load_err(json!({ "cniVersion": "1.0.0", "ipam": { "subnet": "10.0.0.0/24" } })),
        "network config missing 'name'"
    );
}

#[test]
fn missing_or_empty_ranges() {
    let no_ranges =
        "no IP ranges specified: set ipam.ranges, ipam.subnet or runtimeConfig.ipRanges";
    assert_eq!(load_err(net(json!({ "type": "host-local" }))), no_ranges);
    assert_eq!(
        load_err(net(json!({ "type": "host-local", "ranges": [] }))),
        no_ranges
    );
    assert_eq!(
        load_err(json!({
            "name": "mynet",
            "ipam": { "type": "host-local" },
            "runtimeConfig": { "ipRanges": [] }
        })),
        no_ranges
    );
    assert_eq!(
        load_err(net(json!({ "type": "host-local", "ranges": [[]] }))),
        "invalid range set 0: empty range set"
    );
}

#[test]
fn malformed_values_name_the_field() {
    let cases = [
        (
            net(json!({ "ranges": [[{ "subnet": "10.0.0.0/24" }, { "subnet": "10.0.1.0/33" }]] })),
            "invalid CIDR \"10.0.1.0/33\" in ipam.ranges[0][1].subnet",
        ),
        (
            net(json!({ "ranges": [[{ "subnet": "10.0.0.0" }]] })),
            "invalid CIDR \"10.0.0.0\" in ipam.ranges[0][0].subnet",
        ),
        (
            net(json!({ "ranges": [[{ "rangeStart": "10.0.0.5" }]] })),
            "ipam.ranges[0][0].subnet is required",
        ),
        (
            net(json!({ "subnet": "10.0.0.0/24", "gateway": "10.0.0.x" })),
            "invalid IP address \"10.0.0.x\" in ipam.gateway",
        ),
        (
            json!({
                "name": "n",
                "ipam": {},
                "runtimeConfig": { "ipRanges": [[{ "subnet": "10.0.0.0/24", "rangeEnd": "nope" }]] }
            }),
            "invalid IP address \"nope\" in runtimeConfig.ipRanges[0][0].rangeEnd",
        ),
        (
            json!({ "name": "n", "ipam": { "subnet": "10.0.0.0/24" }, "runtimeConfig": { "ips": ["1.2.3"] } }),
            "invalid IP address \"1.2.3\" in runtimeConfig.ips[0]",
        ),
        (
            json!({ "name": "n", "ipam": { "subnet": "10.0.0.0/24" }, "args": { "cni": { "ips": ["10.0.0.9/99"] } } }),
            "invalid CIDR \"10.0.0.9/99\" in args.cni.ips[0]",
        ),
        (
            net(json!({ "subnet": "10.0.0.0/24", "routes": [{ "gw": "10.0.0.1" }] })),
            "ipam.routes[0].dst is required",
        ),
        (
            net(json!({ "subnet": "10.0.0.0/24", "routes": [{ "dst": "0.0.0.0/0", "gw": "x" }] })),
            "invalid IP address \"x\" in ipam.routes[0].gw",
        ),
        (
            net(json!({ "ranges": "10.0.0.0/24" })),
            "malformed ipam in network config",
        ),
    ];
    for (config, message) in cases {
        assert_eq!(load_err(config), message);
    }
}

#[test]
fn malformed_section_keeps_the_serde_error_as_source() {
    let err = load(net(json!({ "ranges": 5 }))).unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("invalid type: integer `5`"), "{source}");
}

#[test]
fn data_dir_and_resolv_conf_defaults() {
    let config = load(net(
        json!({ "subnet": "10.0.0.0/24", "dataDir": "", "resolvConf": "" }),
    ))
    .unwrap();
    assert_eq!(config.data_dir, PathBuf::from(vaina_ipam::DEFAULT_DATA_DIR));
    assert_eq!(config.resolv_conf, None);
    assert!(config.routes.is_empty());
}

#[test]
fn routes_keep_cni_1_1_fields() {
    let config = load(net(json!({
        "subnet": "10.0.0.0/24",
        "routes": [{ "dst": "10.96.0.0/12", "gw": "10.0.0.1", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0 }]
    })))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&config.routes).unwrap(),
        json!([{ "dst": "10.96.0.0/12", "gw": "10.0.0.1", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0 }])
    );
}

#[test]
fn range_constructor_is_public_and_validates() {
    let r = Range::new(
        "10.0.0.0/29".parse().unwrap(),
        None,
        None,
        Some(ip("10.0.0.6")),
    )
    .unwrap();
    assert_eq!(r, range("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.6"));
    assert!(r.contains(ip("10.0.0.6")) && !r.contains(ip("10.0.0.7")) && !r.contains(ip("::1")));
    assert_eq!(
        RangeSet::new(vec![]).unwrap_err().to_string(),
        "empty range set"
    );
}
