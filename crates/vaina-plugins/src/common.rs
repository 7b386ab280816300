//! Helpers shared by the plugins: the async runtime of a plugin process, netns opening,
//! and reading the parts of the stdin config that several plugins use.

use std::future::Future;

use sha2::{Digest, Sha256};
use vaina_cni::error::CniError;
use vaina_cni::result::CniResult;
use vaina_cni::skel::CmdArgs;
use vaina_net::netlink::NetlinkError;
use vaina_net::netns::{Netns, NetnsError};

/// Runs the plugin's async work on a current-thread runtime: a plugin is one short
/// request, so one thread is all it needs (and starts fastest).
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("build tokio runtime")
        .block_on(f)
}

pub fn net_err(e: NetlinkError) -> CniError {
    CniError::io(error_chain(&e))
}

/// "outer: inner: innermost", so the kernel's reason reaches the runtime's log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Opens CNI_NETNS. A netns that does not exist is the spec's "container unknown" for
/// ADD/CHECK.
pub fn open_netns(a: &CmdArgs) -> Result<Netns, CniError> {
    let path = a
        .netns
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required"))?;
    Netns::open(path).map_err(|e| match e {
        NetnsError::NotFound { .. } | NetnsError::NotNetns { .. } => {
            CniError::container_unknown(error_chain(&e))
        }
        other => CniError::io(error_chain(&other)),
    })
}

pub fn netns_display(a: &CmdArgs) -> String {
    a.netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The `prevResult` of the stdin config, upgraded to the typed 1.x result.
pub fn prev_result(a: &CmdArgs) -> Result<Option<CniResult>, CniError> {
    a.config
        .prev_result()
        .map_err(|e| CniError::decode(format!("invalid prevResult: {}", error_chain(&e))))
}

/// `cni.dev/valid-attachments` of a GC request, as (container id, ifname). A GC request
/// without the list is an error rather than "nothing is valid".
pub fn valid_attachments(a: &CmdArgs) -> Result<Vec<(String, String)>, CniError> {
    let list = a.config.valid_attachments().map_err(CniError::from)?;
    Ok(list
        .into_iter()
        .map(|v| (v.container_id, v.ifname))
        .collect())
}

/// The host end's name: `veth` + 8 hex digits of a hash of the attachment. Deterministic,
/// so a retried ADD or a DEL finds it without state, and an operator can tell which pod a
/// veth belongs to (`vaina` shows the mapping).
pub fn veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let h = Sha256::digest(format!("{network}/{container_id}/{ifname}"));
    format!("veth{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}
