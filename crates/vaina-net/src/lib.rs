//! Typed network operations for vaina: network namespaces, netlink (links, addresses,
//! routes), sysctls and nftables rules.
//!
//! - [`netns`]: create, open, pin and remove network namespaces; run code inside one on a
//!   throwaway OS thread.
//! - [`netlink`]: an rtnetlink connection bound to one namespace, with calls named after
//!   the iproute2 concepts (bridge, veth, address, route).
//! - [`sysctl`]: read and write `/proc/sys` keys of the calling thread's namespace.
//! - [`firewall`]: nftables rule sets for masquerade (`ipMasq`) and host ports (`portmap`).

pub mod firewall;
pub mod netlink;
pub mod netns;
pub mod sysctl;
