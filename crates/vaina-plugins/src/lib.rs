//! vaina's CNI plugins, as libraries; `src/bin/` holds their thin mains
//! (`vaina-bridge`, `vaina-host-local`, `vaina-loopback`, `vaina-portmap`).
//!
//! - [`bridge`]: node bridge + veth per pod, IPAM delegated, gateway, masquerade.
//! - [`host_local`]: the host-local IPAM plugin over `vaina-ipam`'s disk store.
//! - [`loopback`]: `lo` up in the pod.
//! - [`portmap`]: hostPort → pod DNAT with nftables.
//! - [`defaults`]: the network a node gets when it has no CNI config.

pub mod bridge;
mod common;
pub mod defaults;
pub mod host_local;
pub mod loopback;
pub mod portmap;

pub use common::veth_name;
