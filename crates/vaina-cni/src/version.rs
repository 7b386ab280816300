//! CNI spec versions: which ones this crate speaks and how they compare.
//!
//! Versions are compared as `major.minor.patch` triples. Whether a version is
//! *supported* is an exact string match against [`SUPPORTED`], as in the
//! reference skel: a config saying `"1.1"` is not treated as `"1.1.0"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The spec version this crate implements; used for our own output.
pub const SPEC_VERSION: &str = "1.1.0";

/// Every version a plugin built on this crate accepts and a runtime built on
/// it can drive, oldest first. 0.1.0 and 0.2.0 (the pre-chaining result
/// format) are not supported.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// A version string that is not one to three dot-separated numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CNI version \"{0}\"")]
pub struct ParseVersionError(pub String);

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for Version {
    type Err = ParseVersionError;

    /// Accepts "1", "1.1" and "1.1.0" like the reference `ParseVersion`
    /// (missing parts are zero); anything else is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError(s.to_owned());
        let mut parts = [0u32; 3];
        for (n, part) in s.split('.').enumerate() {
            if n == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            parts[n] = part.parse().map_err(|_| err())?;
        }
        Ok(Self::new(parts[0], parts[1], parts[2]))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether `v` is one of [`SUPPORTED`].
pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// Whether `v` is at least `min`; false when `v` does not parse.
pub fn at_least(v: &str, min: Version) -> bool {
    v.parse::<Version>().is_ok_and(|v| v >= min)
}

/// CHECK (and prevResult on DEL) exist from 0.4.0 on.
pub fn supports_check(v: &str) -> bool {
    at_least(v, Version::new(0, 4, 0))
}

/// GC, STATUS and `cniVersions` exist from 1.1.0 on.
pub fn supports_gc_status(v: &str) -> bool {
    at_least(v, Version::new(1, 1, 0))
}

/// Whether `v` is 1.0.0 or later (no `version` key in result ips).
pub(crate) fn is_v1(v: &str) -> bool {
    at_least(v, Version::new(1, 0, 0))
}

/// The highest of `candidates` that is in [`SUPPORTED`], as a static string.
/// Used for `cniVersions` negotiation in a config list.
pub fn highest_supported<'a>(
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    candidates
        .into_iter()
        .filter_map(|c| SUPPORTED.iter().find(|s| **s == c).copied())
        .max_by_key(|s| s.parse::<Version>().ok())
}

/// The answer to VERSION: the version of this output and what the plugin
/// supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// What a plugin built on this crate reports.
    pub fn current() -> Self {
        Self {
            cni_version: SPEC_VERSION.to_owned(),
            supported_versions: SUPPORTED.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Whether the plugin listed `v` among its supported versions.
    pub fn supports(&self, v: &str) -> bool {
        self.supported_versions.iter().any(|s| s == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_compare() {
        assert_eq!("1.1.0".parse(), Ok(Version::new(1, 1, 0)));
        assert_eq!("0.4".parse(), Ok(Version::new(0, 4, 0)));
        assert_eq!("1".parse(), Ok(Version::new(1, 0, 0)));
        for bad in [
            "",
            "1..0",
            "1.0.0.0",
            "a.b.c",
            "1.0.-1",
            "v1.0.0",
            "1.0.0-rc1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad} parsed");
        }
        assert!(Version::new(0, 10, 0) > Version::new(0, 4, 0));
        assert!(Version::new(1, 0, 0) > Version::new(0, 99, 99));
        assert_eq!(Version::new(0, 3, 1).to_string(), "0.3.1");
    }

    #[test]
    fn feature_gates() {
        assert!(!supports_check("0.3.1"));
        assert!(supports_check("0.4.0"));
        assert!(supports_check("1.0.0"));
        assert!(!supports_check("garbage"));
        assert!(!supports_gc_status("1.0.0"));
        assert!(supports_gc_status("1.1.0"));
        assert!(supports_gc_status("1.2.0"));
        assert!(is_supported("0.3.0"));
        assert!(!is_supported("0.2.0"));
        assert!(!is_supported("1.1"));
    }

    #[test]
    fn highest_supported_ignores_unknown() {
        assert_eq!(
            highest_supported(["1.0.0", "1.1.0", "9.9.9"]),
            Some("1.1.0")
        );
        assert_eq!(highest_supported(["0.3.1", "0.4.0"]), Some("0.4.0"));
        assert_eq!(highest_supported(["0.2.0", "2.0.0"]), None);
        assert_eq!(highest_supported([]), None);
    }

    #[test]
    fn version_info_json() {
        let v = serde_json::to_value(VersionInfo::current()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.1.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
            })
        );
        assert!(VersionInfo::current().supports("0.4.0"));
    }
}
