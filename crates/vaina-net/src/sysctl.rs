//! `/proc/sys` keys. The `net.*` keys belong to the network namespace of the thread that
//! opens the file, so callers run these inside the namespace they mean (the node for
//! `ip_forward`, a pod via `Netns::run` for its interfaces).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} sysctl {key}")]
pub struct SysctlError {
    pub op: &'static str,
    pub key: String,
    #[source]
    pub source: io::Error,
}

fn path(key: &str) -> PathBuf {
    // Interface names may contain dots, so callers pass keys with '/' separators when
    // they embed one; plain dotted keys are converted.
    if key.contains('/') {
        PathBuf::from("/proc/sys").join(key)
    } else {
        PathBuf::from("/proc/sys").join(key.replace('.', "/"))
    }
}

pub fn get(key: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError {
            op: "read",
            key: key.into(),
            source,
        })
}

/// Writes `value` unless the key already holds it (a write costs a syscall and, for some
/// keys such as `ip_forward`, resets other settings).
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    if get(key).ok().as_deref() == Some(value) {
        return Ok(());
    }
    std::fs::write(path(key), value).map_err(|source| SysctlError {
        op: "write",
        key: key.into(),
        source,
    })
}

/// The key of a per-interface setting, e.g. `iface_key("ipv4", "cni0", "route_localnet")`.
pub fn iface_key(family: &str, ifname: &str, setting: &str) -> String {
    format!("net/{family}/conf/{ifname}/{setting}")
}
