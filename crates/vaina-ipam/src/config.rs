//! The `ipam` section of a CNI network config, as the reference host-local
//! plugin reads it, canonicalised and validated.
//!
//! Range sets come from three places and are concatenated in this order, like
//! the reference (`LoadIPAMConfig`): `runtimeConfig.ipRanges`, the legacy
//! top-level `ipam.subnet`/`rangeStart`/`rangeEnd`/`gateway`, then
//! `ipam.ranges`. The position in that list is the range set's index, which
//! names its `last_reserved_ip.<index>` file in the store.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where reservations live when `ipam.dataDir` is unset, as in the reference.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A validated host-local configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The network's `name`; the store keeps its files in `data_dir/name`.
    pub name: String,
    /// `ipam.type`, normally `host-local`; not checked.
    pub plugin_type: String,
    /// One address is allocated from each range set, in this order.
    pub ranges: Vec<RangeSet>,
    /// `ipam.routes`, returned unchanged in the result.
    pub routes: Vec<Route>,
    /// `ipam.dataDir`, or [`DEFAULT_DATA_DIR`].
    pub data_dir: PathBuf,
    /// `ipam.resolvConf`: a resolv.conf to return as the result's DNS.
    pub resolv_conf: Option<PathBuf>,
    /// Addresses the runtime asked for: CNI_ARGS `IP=` first, then
    /// `args.cni.ips`, then `runtimeConfig.ips` (the reference's order).
    pub requested_ips: Vec<IpAddr>,
}

/// A pool of ranges of one address family; one address is taken from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<Range>);

/// A canonical range: `range_start..=range_end` inside `subnet`, whose host
/// bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    /// Never handed out by the iterator; returned as each allocation's gateway.
    pub gateway: IpAddr,
}

/// A route from `ipam.routes`, serialised back as the CNI result's route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Kept as written, host bits included (the reference does the same).
    pub dst: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// Why a range or a range set is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The reference refuses prefixes longer than `max - 2` (v4 /31, /32;
    /// v6 /127, /128).
    #[error("network {0} too small to allocate from")]
    TooSmall(IpNet),
    #[error("{field} {ip} not in network {subnet}")]
    NotInSubnet {
        field: &'static str,
        ip: IpAddr,
        subnet: IpNet,
    },
    #[error("rangeStart {start} is after rangeEnd {end}")]
    StartAfterEnd { start: IpAddr, end: IpAddr },
    #[error("empty range set")]
    Empty,
    #[error("mixed address families")]
    MixedFamilies,
    #[error(
        "ranges {} ({first}) and {} ({second}) overlap",
        first.subnet,
        second.subnet
    )]
    Overlap {
        first: Box<Range>,
        second: Box<Range>,
    },
}

/// Why a network config cannot be used by host-local.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("malformed {section} in network config")]
    Malformed {
        section: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("network config missing 'ipam' key")]
    MissingIpam,
    #[error("network config missing 'name'")]
    MissingName,
    #[error("{field} is required")]
    MissingField { field: String },
    #[error("invalid IP address {value:?} in {field}")]
    InvalidIp {
        field: String,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("invalid CIDR {value:?} in {field}")]
    InvalidCidr {
        field: String,
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error("no IP ranges specified: set ipam.ranges, ipam.subnet or runtimeConfig.ipRanges")]
    NoRanges,
    /// `reason` is part of the message rather than a `source`, so the text
    /// is whole on its own and not repeated when the chain is printed.
    #[error("invalid range set {index}: {reason}")]
    InvalidRangeSet { index: usize, reason: RangeError },
    #[error(
        "range set {first} overlaps with range set {second}: {} ({first_range}) and {} ({second_range})",
        first_range.subnet,
        second_range.subnet
    )]
    RangeSetsOverlap {
        first: usize,
        second: usize,
        first_range: Box<Range>,
        second_range: Box<Range>,
    },
    #[error("CNI version {version:?} does not support more than 1 address per family")]
    TooManyAddresses { version: String },
}

impl IpamConfig {
    /// Reads the whole network config a plugin gets on stdin (`name`,
    /// `cniVersion`, `ipam`, `runtimeConfig`, `args`). `cni_args_ips` is the
    /// `IP=` of CNI_ARGS, see [`parse_cni_args_ip`].
    pub fn from_network_config(
        raw: &Value,
        cni_args_ips: &[IpAddr],
    ) -> Result<IpamConfig, ConfigError> {
        let ipam: RawIpam = section(raw, "ipam")?.ok_or(ConfigError::MissingIpam)?;
        let runtime: RawRuntimeConfig = section(raw, "runtimeConfig")?.unwrap_or_default();
        let args: RawArgs = section(raw, "args")?.unwrap_or_default();
        let name = match raw.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => return Err(ConfigError::MissingName),
        };
        let cni_version = raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();

        let mut requested_ips: Vec<IpAddr> =
            cni_args_ips.iter().map(|ip| canonical_ip(*ip)).collect();
        let cni_ips = args.cni.and_then(|cni| cni.ips).unwrap_or_default();
        for (i, value) in cni_ips.iter().enumerate() {
            requested_ips.push(parse_requested_ip(|| format!("args.cni.ips[{i}]"), value)?);
        }
        for (i, value) in runtime.ips.iter().flatten().enumerate() {
            requested_ips.push(parse_requested_ip(
                || format!("runtimeConfig.ips[{i}]"),
                value,
            )?);
        }

        // (field prefix for messages, raw ranges) in the reference's order.
        let mut raw_sets: Vec<(String, Vec<RawRange>)> = Vec::new();
        for (i, set) in runtime.ip_ranges.into_iter().flatten().enumerate() {
            raw_sets.push((format!("runtimeConfig.ipRanges[{i}]"), set));
        }
        if ipam.subnet.is_some() {
            let legacy = RawRange {
                subnet: ipam.subnet,
                range_start: ipam.range_start,
                range_end: ipam.range_end,
                gateway: ipam.gateway,
            };
            raw_sets.push(("ipam".to_owned(), vec![legacy]));
        }
        for (i, set) in ipam.ranges.into_iter().flatten().enumerate() {
            raw_sets.push((format!("ipam.ranges[{i}]"), set));
        }
        if raw_sets.is_empty() {
            return Err(ConfigError::NoRanges);
        }

        let mut ranges = Vec::with_capacity(raw_sets.len());
        for (index, (prefix, raw_set)) in raw_sets.iter().enumerate() {
            ranges.push(build_range_set(index, prefix, raw_set)?);
        }

        // CNI 0.2.0 results carry one address per family.
        let v4 = ranges.iter().filter(|set| set.is_ipv4()).count();
        if (v4 > 1 || ranges.len() - v4 > 1) && !version_at_least_0_3(cni_version) {
            return Err(ConfigError::TooManyAddresses {
                version: cni_version.to_owned(),
            });
        }

        for (first, set) in ranges.iter().enumerate() {
            for (second, other) in ranges.iter().enumerate().skip(first + 1) {
                if let Some((first_range, second_range)) = set.overlap(other) {
                    return Err(ConfigError::RangeSetsOverlap {
                        first,
                        second,
                        first_range: Box::new(first_range),
                        second_range: Box::new(second_range),
                    });
                }
            }
        }

        let routes = ipam
            .routes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, route)| build_route(i, route))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(IpamConfig {
            name,
            plugin_type: ipam.plugin_type.unwrap_or_default(),
            ranges,
            routes,
            data_dir: ipam
                .data_dir
                .filter(|dir| !dir.is_empty())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned())
                .into(),
            resolv_conf: ipam
                .resolv_conf
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            requested_ips,
        })
    }
}

/// The `IP=` key of a CNI_ARGS string (`K=V;K=V`), with or without a prefix
/// length. Other keys are ignored.
pub fn parse_cni_args_ip(cni_args: &str) -> Result<Option<IpAddr>, ConfigError> {
    for pair in cni_args.split(';') {
        if let Some(("IP", value)) = pair.split_once('=') {
            return parse_requested_ip(|| "CNI_ARGS IP".to_owned(), value).map(Some);
        }
    }
    Ok(None)
}

impl Range {
    /// Fills in the reference's defaults (start and gateway: network + 1;
    /// end: the last address, less the broadcast for IPv4), masks the
    /// subnet's host bits and checks every address lies in the subnet.
    pub fn new(
        subnet: IpNet,
        range_start: Option<IpAddr>,
        range_end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > subnet.max_prefix_len() - 2 {
            return Err(RangeError::TooSmall(subnet));
        }
        let first = offset(subnet.network(), 1);
        let last = match subnet {
            IpNet::V4(_) => offset(subnet.broadcast(), -1),
            IpNet::V6(_) => subnet.broadcast(),
        };
        let inside = |field: &'static str, ip: Option<IpAddr>, default: IpAddr| {
            let ip = ip.map(canonical_ip).unwrap_or(default);
            if subnet.contains(&ip) {
                Ok(ip)
            } else {
                Err(RangeError::NotInSubnet { field, ip, subnet })
            }
        };
        let gateway = inside("gateway", gateway, first)?;
        let range_start = inside("rangeStart", range_start, first)?;
        let range_end = inside("rangeEnd", range_end, last)?;
        if range_start > range_end {
            return Err(RangeError::StartAfterEnd {
                start: range_start,
                end: range_end,
            });
        }
        Ok(Range {
            subnet,
            range_start,
            range_end,
            gateway,
        })
    }

    /// Whether `ip` is allocatable here: between start and end inclusive.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        same_family(ip, self.range_start) && self.range_start <= ip && ip <= self.range_end
    }

    fn overlaps(&self, other: &Range) -> bool {
        same_family(self.range_start, other.range_start)
            && self.range_start <= other.range_end
            && other.range_start <= self.range_end
    }
}

impl fmt::Display for Range {
    /// `start-end`, as the reference prints a range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

impl RangeSet {
    /// Checks the set is non-empty, of one family, and without overlaps.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, RangeError> {
        let Some(first) = ranges.first() else {
            return Err(RangeError::Empty);
        };
        if ranges
            .iter()
            .any(|r| !same_family(r.range_start, first.range_start))
        {
            return Err(RangeError::MixedFamilies);
        }
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(RangeError::Overlap {
                    first: Box::new(*a),
                    second: Box::new(*b),
                });
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn ranges(&self) -> &[Range] {
        &self.0
    }

    pub fn is_ipv4(&self) -> bool {
        self.0[0].range_start.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// The range whose start..=end holds `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    fn overlap(&self, other: &RangeSet) -> Option<(Range, Range)> {
        self.0
            .iter()
            .find_map(|a| other.0.iter().find(|b| a.overlaps(b)).map(|b| (*a, *b)))
    }
}

impl fmt::Display for RangeSet {
    /// The ranges joined by commas, as the reference prints a range set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address becomes IPv4, as Go's `To4` does; the
/// reference stores and compares addresses in that form.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

/// The address `value` of the same family as `like`.
pub(crate) fn u128_to_ip(value: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

fn offset(ip: IpAddr, by: i8) -> IpAddr {
    let value = ip_to_u128(ip);
    let moved = if by >= 0 {
        value.wrapping_add(by as u128)
    } else {
        value.wrapping_sub(by.unsigned_abs() as u128)
    };
    u128_to_ip(moved, ip)
}

fn version_at_least_0_3(version: &str) -> bool {
    let mut parts = version.split('.').map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (0, 3),
        _ => false,
    }
}

fn section<T: DeserializeOwned>(raw: &Value, key: &'static str) -> Result<Option<T>, ConfigError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|source| ConfigError::Malformed {
                section: key,
                source,
            }),
    }
}

fn build_range_set(index: usize, prefix: &str, raw: &[RawRange]) -> Result<RangeSet, ConfigError> {
    let invalid = |reason| ConfigError::InvalidRangeSet { index, reason };
    let mut ranges = Vec::with_capacity(raw.len());
    for (i, range) in raw.iter().enumerate() {
        // The legacy single range is addressed as `ipam.subnet`, not `ipam[0].subnet`.
        let field = |name: &str| match prefix {
            "ipam" => format!("ipam.{name}"),
            _ => format!("{prefix}[{i}].{name}"),
        };
        let subnet = match range.subnet.as_deref() {
            Some(value) => value
                .parse::<IpNet>()
                .map_err(|source| ConfigError::InvalidCidr {
                    field: field("subnet"),
                    value: value.to_owned(),
                    source,
                })?,
            None => {
                return Err(ConfigError::MissingField {
                    field: field("subnet"),
                });
            }
        };
        let optional_ip = |name: &str, value: &Option<String>| match value.as_deref() {
            // Go reads "" as a nil IP: unset.
            None | Some("") => Ok(None),
            Some(value) => parse_ip(|| field(name), value).map(Some),
        };
        let start = optional_ip("rangeStart", &range.range_start)?;
        let end = optional_ip("rangeEnd", &range.range_end)?;
        let gateway = optional_ip("gateway", &range.gateway)?;
        ranges.push(Range::new(subnet, start, end, gateway).map_err(invalid)?);
    }
    RangeSet::new(ranges).map_err(invalid)
}

fn build_route(i: usize, raw: RawRoute) -> Result<Route, ConfigError> {
    let field = |name: &str| format!("ipam.routes[{i}].{name}");
    let dst = raw.dst.ok_or_else(|| ConfigError::MissingField {
        field: field("dst"),
    })?;
    let dst = dst
        .parse::<IpNet>()
        .map_err(|source| ConfigError::InvalidCidr {
            field: field("dst"),
            value: dst.clone(),
            source,
        })?;
    let gw = match raw.gw.as_deref() {
        None | Some("") => None,
        Some(value) => Some(parse_ip(|| field("gw"), value)?),
    };
    Ok(Route {
        dst,
        gw,
        mtu: raw.mtu,
        advmss: raw.advmss,
        priority: raw.priority,
        table: raw.table,
        scope: raw.scope,
    })
}

fn parse_ip(field: impl FnOnce() -> String, value: &str) -> Result<IpAddr, ConfigError> {
    value
        .parse::<IpAddr>()
        .map(canonical_ip)
        .map_err(|source| ConfigError::InvalidIp {
            field: field(),
            value: value.to_owned(),
            source,
        })
}

/// A requested IP may carry a prefix length (`10.1.2.11/24`), which is dropped.
fn parse_requested_ip(field: impl FnOnce() -> String, value: &str) -> Result<IpAddr, ConfigError> {
    if value.contains('/') {
        value
            .parse::<IpNet>()
            .map(|net| canonical_ip(net.addr()))
            .map_err(|source| ConfigError::InvalidCidr {
                field: field(),
                value: value.to_owned(),
                source,
            })
    } else {
        parse_ip(field, value)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
    mtu: Option<u32>,
    advmss: Option<u32>,
    priority: Option<u32>,
    table: Option<u32>,
    scope: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntimeConfig {
    ip_ranges: Option<Vec<Vec<RawRange>>>,
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawArgs {
    cni: Option<RawCniArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCniArgs {
    ips: Option<Vec<String>>,
}
