//! The error object of the CNI protocol: what a plugin prints on stdout (with
//! a non-zero exit) and what a runtime or delegating plugin reads back.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A spec error: `{"cniVersion", "code", "msg", "details"}`.
///
/// Codes 0–99 are reserved by the spec (see the associated constants);
/// 100 and up are free for plugins. `cni_version` is filled by the skel with
/// the config's version when a plugin leaves it empty; empty fields are
/// omitted from the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// The config's (or plugin's) version is not one the other side supports.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A config field is not supported; the msg must name the key.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// A required `CNI_*` variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// Reading or writing a file, or exec, failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin or a result could not be decoded.
    pub const DECODE_FAILURE: u32 = 6;
    /// The network config is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient: the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin can serve ADD, with limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Not a spec code: the reference skel's catch-all for plugin errors
    /// that carry no code.
    pub const INTERNAL: u32 = 999;

    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn with_version(mut self, cni_version: impl Into<String>) -> Self {
        self.cni_version = cni_version.into();
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(Self::INCOMPATIBLE_VERSION, msg)
    }
    pub fn unsupported_field(msg: impl Into<String>) -> Self {
        Self::new(Self::UNSUPPORTED_FIELD, msg)
    }
    pub fn container_unknown(msg: impl Into<String>) -> Self {
        Self::new(Self::CONTAINER_UNKNOWN, msg)
    }
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(Self::INVALID_ENV, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(Self::IO_FAILURE, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(Self::DECODE_FAILURE, msg)
    }
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(Self::INVALID_CONFIG, msg)
    }
    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(Self::TRY_AGAIN_LATER, msg)
    }
    pub fn not_available(msg: impl Into<String>) -> Self {
        Self::new(Self::NOT_AVAILABLE, msg)
    }
    pub fn limited_connectivity(msg: impl Into<String>) -> Self {
        Self::new(Self::LIMITED_CONNECTIVITY, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(Self::INTERNAL, msg)
    }

    /// Wraps any error as `code`, with its whole `source()` chain as details,
    /// so nothing is lost when it crosses the process boundary.
    pub fn from_error(code: u32, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut details = Vec::new();
        let mut next = err.source();
        while let Some(e) = next {
            details.push(e.to_string());
            next = e.source();
        }
        Self::new(code, err.to_string()).with_details(details.join(": "))
    }

    /// The JSON a plugin prints on stdout.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and an integer always serializes.
        serde_json::to_vec_pretty(self).expect("CniError serializes")
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "{}: {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape_matches_spec() {
        let e = CniError::invalid_config("invalid configuration")
            .with_details("network 192.168.0.0/31 too small to allocate from")
            .with_version("1.1.0");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&e.to_json()).unwrap(),
            json!({
                "cniVersion": "1.1.0",
                "code": 7,
                "msg": "invalid configuration",
                "details": "network 192.168.0.0/31 too small to allocate from"
            })
        );
        let bare = serde_json::to_value(CniError::try_again_later("busy")).unwrap();
        assert_eq!(bare, json!({"code": 11, "msg": "busy"}));
    }

    #[test]
    fn parses_reference_output_without_version() {
        // The Go skel prints {code,msg,details} without cniVersion.
        let e: CniError = serde_json::from_str(r#"{"code":3,"msg":"no such container"}"#).unwrap();
        assert_eq!(e, CniError::container_unknown("no such container"));
    }

    #[test]
    fn display_joins_details() {
        assert_eq!(CniError::io("failed").to_string(), "failed");
        assert_eq!(
            CniError::io("failed").with_details("disk full").to_string(),
            "failed: disk full"
        );
    }

    #[test]
    fn from_error_keeps_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to open /x")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("permission denied"));
        let e = CniError::from_error(CniError::IO_FAILURE, &err);
        assert_eq!(e.code, 5);
        assert_eq!(e.msg, "failed to open /x");
        assert_eq!(e.details, "permission denied");
    }
}
