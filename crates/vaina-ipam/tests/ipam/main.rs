//! Pure tests of vaina-ipam: no root, no network; disk tests use temp dirs.

mod allocator;
mod config;
mod disk;

use std::net::IpAddr;

use vaina_ipam::{Range, RangeSet};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A range with explicit bounds and gateway, as the config would build it.
pub fn range(subnet: &str, start: &str, end: &str, gateway: &str) -> Range {
    Range {
        subnet: subnet.parse().unwrap(),
        range_start: ip(start),
        range_end: ip(end),
        gateway: ip(gateway),
    }
}

/// A range set of the given subnets with the reference's defaults.
pub fn subnets(subnets: &[&str]) -> RangeSet {
    RangeSet::new(
        subnets
            .iter()
            .map(|s| Range::new(s.parse().unwrap(), None, None, None).unwrap())
            .collect(),
    )
    .unwrap()
}
