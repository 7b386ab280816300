//! The logic of the `host-local` IPAM plugin, testable without root.
//!
//! - [`config`]: the `ipam` section of a network config (plus the runtime's
//!   `ipRanges` and requested IPs), canonicalised and validated like the
//!   reference plugin's.
//! - [`store`]: the [`Store`] trait; [`DiskStore`] keeps reservations in the
//!   reference's on-disk format so vaina and the reference plugin can share a
//!   data dir; [`MemoryStore`] for tests.
//! - [`allocator`]: round-robin allocation across range sets, all or nothing,
//!   and release, GC and CHECK.
//! - [`dns`]: resolv.conf parsing for the `resolvConf` option.
//!
//! A plugin's ADD is, in outline:
//!
//! ```no_run
//! # fn add(stdin: &[u8], id: &str, ifname: &str, cni_args: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use vaina_ipam::{DiskStore, IpamConfig, allocate, parse_cni_args_ip};
//! let raw: serde_json::Value = serde_json::from_slice(stdin)?;
//! let env_ip: Vec<_> = parse_cni_args_ip(cni_args)?.into_iter().collect();
//! let config = IpamConfig::from_network_config(&raw, &env_ip)?;
//! let store = DiskStore::open(&config.data_dir, &config.name)?;
//! let ips = allocate(&store, &config.ranges, &config.requested_ips, id, ifname)?;
//! # Ok(()) }
//! ```

pub mod allocator;
pub mod config;
pub mod dns;
pub mod store;

pub use allocator::{AllocError, Allocation, allocate, check, gc, release};
pub use config::{
    ConfigError, DEFAULT_DATA_DIR, IpamConfig, Range, RangeError, RangeSet, Route,
    parse_cni_args_ip,
};
pub use dns::{Dns, ResolvConfError, read_resolv_conf};
pub use store::{DiskLock, DiskStore, MemoryStore, Reservation, Store, StoreError};
