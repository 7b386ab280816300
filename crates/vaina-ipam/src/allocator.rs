//! Allocation over a [`Store`], following the reference host-local allocator.
//!
//! Within a range set allocation is round-robin: it resumes after the last
//! address reserved in that set, wraps from the end of one range to the start
//! of the next and from the last range to the first, and skips each range's
//! gateway and every reserved address. A crash-looping container therefore
//! does not get the same address back until the whole set has been used.
//!
//! Each function takes the store's lock once around the whole operation, so
//! an allocation across several range sets is atomic towards other
//! allocators, including a reference plugin sharing the data dir.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Range, RangeSet, canonical_ip, ip_to_u128, u128_to_ip};
use crate::store::{Store, StoreError};

/// The address given to an attachment from one range set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its range's subnet prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("requested IP {ip} is not in any range")]
    RequestedNotInRange { ip: IpAddr },
    #[error("requested IPs {first} and {second} are both in range set {range_set}")]
    RequestedSameRangeSet {
        first: IpAddr,
        second: IpAddr,
        range_set: RangeSet,
    },
    #[error("requested IP {ip} is the gateway of range set {range_set}")]
    RequestedIsGateway { ip: IpAddr, range_set: RangeSet },
    #[error("requested IP {ip} is already reserved")]
    RequestedReserved { ip: IpAddr },
    /// The CNI spec forbids a second ADD for one attachment; the reference
    /// refuses it the same way.
    #[error(
        "container {id} interface {ifname} has an IP address {ip} already allocated in range set {range_set}"
    )]
    AlreadyAllocated {
        id: String,
        ifname: String,
        ip: IpAddr,
        range_set: RangeSet,
    },
    #[error("no IP addresses available in range set {range_set}")]
    Exhausted { range_set: RangeSet },
    #[error("no IP address is reserved for container {id} interface {ifname}")]
    NotFound { id: String, ifname: String },
    #[error("IP {ip} is not reserved for container {id} interface {ifname}")]
    NotReserved {
        ip: IpAddr,
        id: String,
        ifname: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Undoing a partial allocation failed too: `leaked` stay reserved.
    #[error("{cause}; releasing {leaked:?} afterwards failed as well")]
    RollbackFailed {
        cause: Box<AllocError>,
        leaked: Vec<IpAddr>,
        #[source]
        source: StoreError,
    },
}

/// Gives `(id, ifname)` one address from each range set, or nothing.
///
/// Each requested IP goes to the range set whose ranges hold it and must be
/// free there; range sets with no requested IP allocate round-robin. If any
/// range set fails, the addresses already taken by this call are released.
pub fn allocate<S: Store + ?Sized>(
    store: &S,
    ranges: &[RangeSet],
    requested_ips: &[IpAddr],
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, AllocError> {
    let requested = assign_requested(ranges, requested_ips)?;
    let _lock = store.lock()?;
    let mut allocations: Vec<Allocation> = Vec::with_capacity(ranges.len());
    for (index, set) in ranges.iter().enumerate() {
        match allocate_in_set(store, index, set, requested[index], id, ifname) {
            Ok(allocation) => allocations.push(allocation),
            Err(cause) => {
                let mut leaked = Vec::new();
                let mut failure = None;
                for allocation in &allocations {
                    let ip = allocation.address.addr();
                    if let Err(e) = store.release(ip) {
                        leaked.push(ip);
                        failure.get_or_insert(e);
                    }
                }
                return Err(match failure {
                    None => cause,
                    Some(source) => AllocError::RollbackFailed {
                        cause: Box::new(cause),
                        leaked,
                        source,
                    },
                });
            }
        }
    }
    Ok(allocations)
}

/// Frees every address `(id, ifname)` holds, in any range set. Releasing an
/// attachment that holds nothing succeeds (CNI DEL is idempotent).
pub fn release<S: Store + ?Sized>(
    store: &S,
    id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, AllocError> {
    let _lock = store.lock()?;
    Ok(store.release_by_id(id, ifname)?)
}

/// CNI GC: frees every reservation whose `(container id, ifname)` is not in
/// `valid`, and returns the freed addresses. A legacy reservation (container
/// id only) is kept if any valid attachment has its container id. Keeps
/// going past a failed release and reports the first failure.
pub fn gc<S: Store + ?Sized>(store: &S, valid: &[(&str, &str)]) -> Result<Vec<IpAddr>, AllocError> {
    let _lock = store.lock()?;
    let mut released = Vec::new();
    let mut first_error = None;
    for reservation in store.list()? {
        if valid
            .iter()
            .any(|(id, ifname)| reservation.held_by(id, ifname))
        {
            continue;
        }
        match store.release(reservation.ip) {
            Ok(true) => released.push(reservation.ip),
            Ok(false) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(released),
    }
}

/// CNI CHECK: every address in `expected_ips` is reserved for `(id, ifname)`.
/// With no expected addresses, at least one must be (the reference's check).
pub fn check<S: Store + ?Sized>(
    store: &S,
    id: &str,
    ifname: &str,
    expected_ips: &[IpAddr],
) -> Result<(), AllocError> {
    let _lock = store.lock()?;
    let held = store.get_by_id(id, ifname)?;
    if held.is_empty() {
        return Err(AllocError::NotFound {
            id: id.to_owned(),
            ifname: ifname.to_owned(),
        });
    }
    match expected_ips
        .iter()
        .map(|ip| canonical_ip(*ip))
        .find(|ip| !held.contains(ip))
    {
        Some(ip) => Err(AllocError::NotReserved {
            ip,
            id: id.to_owned(),
            ifname: ifname.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Which requested IP, if any, each range set must give.
fn assign_requested(
    ranges: &[RangeSet],
    requested_ips: &[IpAddr],
) -> Result<Vec<Option<IpAddr>>, AllocError> {
    let mut assigned = vec![None; ranges.len()];
    for ip in requested_ips.iter().map(|ip| canonical_ip(*ip)) {
        let index = ranges
            .iter()
            .position(|set| set.contains(ip))
            .ok_or(AllocError::RequestedNotInRange { ip })?;
        match assigned[index] {
            None => assigned[index] = Some(ip),
            Some(first) if first == ip => {}
            Some(first) => {
                return Err(AllocError::RequestedSameRangeSet {
                    first,
                    second: ip,
                    range_set: ranges[index].clone(),
                });
            }
        }
    }
    Ok(assigned)
}

fn allocate_in_set<S: Store + ?Sized>(
    store: &S,
    index: usize,
    set: &RangeSet,
    requested: Option<IpAddr>,
    id: &str,
    ifname: &str,
) -> Result<Allocation, AllocError> {
    if let Some(ip) = requested {
        let Some(range) = set.range_for(ip) else {
            return Err(AllocError::RequestedNotInRange { ip });
        };
        if ip == range.gateway {
            return Err(AllocError::RequestedIsGateway {
                ip,
                range_set: set.clone(),
            });
        }
        if !store.reserve(id, ifname, ip, index)? {
            return Err(AllocError::RequestedReserved { ip });
        }
        return Ok(allocation(ip, range.subnet, range.gateway));
    }

    if let Some(ip) = store
        .get_by_id(id, ifname)?
        .into_iter()
        .find(|ip| set.contains(*ip))
    {
        return Err(AllocError::AlreadyAllocated {
            id: id.to_owned(),
            ifname: ifname.to_owned(),
            ip,
            range_set: set.clone(),
        });
    }

    let mut candidates = RangeIter::new(set, store.last_reserved_ip(index)?);
    while let Some((ip, range)) = candidates.next_candidate() {
        if store.reserve(id, ifname, ip, index)? {
            return Ok(allocation(ip, range.subnet, range.gateway));
        }
    }
    Err(AllocError::Exhausted {
        range_set: set.clone(),
    })
}

fn allocation(ip: IpAddr, subnet: IpNet, gateway: IpAddr) -> Allocation {
    Allocation {
        address: IpNet::new(ip, subnet.prefix_len())
            .expect("prefix length comes from a valid subnet"),
        gateway: Some(gateway),
    }
}

/// The reference's `RangeIter`: every address of the set once, starting
/// after `last` when `last` lies in the set, else at the first range's start.
struct RangeIter<'a> {
    set: &'a RangeSet,
    /// Index of the range `cur` is in.
    range: usize,
    cur: Option<u128>,
    /// Where iteration began; reaching it again ends it.
    start: Option<u128>,
}

impl<'a> RangeIter<'a> {
    fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Self {
        let resume = last.and_then(|last| {
            set.ranges()
                .iter()
                .position(|r| r.contains(last))
                .map(|range| (range, ip_to_u128(canonical_ip(last))))
        });
        match resume {
            Some((range, last)) => RangeIter {
                set,
                range,
                cur: Some(last),
                start: None,
            },
            None => RangeIter {
                set,
                range: 0,
                cur: None,
                start: None,
            },
        }
    }

    /// The next candidate and its range, or `None` once every address has
    /// been offered.
    fn next_candidate(&mut self) -> Option<(IpAddr, &'a Range)> {
        let ranges: &'a [Range] = self.set.ranges();
        loop {
            let next = match self.cur {
                None => {
                    let first = ip_to_u128(ranges[self.range].range_start);
                    self.start = Some(first);
                    first
                }
                Some(cur) => {
                    let next = if cur == ip_to_u128(ranges[self.range].range_end) {
                        self.range = (self.range + 1) % ranges.len();
                        ip_to_u128(ranges[self.range].range_start)
                    } else {
                        cur + 1
                    };
                    match self.start {
                        None => self.start = Some(next),
                        Some(start) if start == next => return None,
                        Some(_) => {}
                    }
                    next
                }
            };
            self.cur = Some(next);
            let range = &ranges[self.range];
            let ip = u128_to_ip(next, range.range_start);
            if ip != range.gateway {
                return Some((ip, range));
            }
        }
    }
}
