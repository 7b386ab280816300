//! The ADD result, typed as in spec 1.1.0, read from and written to every
//! supported version.
//!
//! 0.3.x and 0.4.0 differ from 1.x only in that each entry of `ips` carries
//! `"version": "4" | "6"` and interfaces have no `mtu`, `socketPath` or
//! `pciID`. 0.1.0/0.2.0 results (`ip4`/`ip6` objects) are rejected.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CniError;
use crate::version;

/// The result of ADD (also what IPAM plugins return, without interfaces).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version this result was read as; [`CniResult::to_json`] writes
    /// whatever version it is asked for.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface the plugin created or configured. Absent fields are omitted
/// from the JSON, as the reference does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the sandbox; None for host
    /// interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 and later.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into [`CniResult::interfaces`]; IPAM plugins leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Address with prefix length, host bits kept ("10.1.0.5/16").
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route to install in the sandbox. Attributes other than `dst` and `gw`
/// are 1.1.0 additions. The default is a default route (0.0.0.0/0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route with only a destination and an optional gateway.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// Resolver settings, in results and in network configs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A result that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("failed to decode CNI result")]
    Decode(#[source] serde_json::Error),
    #[error("CNI result has no cniVersion")]
    MissingVersion,
    #[error("unsupported CNI result version \"{0}\"")]
    UnsupportedVersion(String),
}

impl From<ResultError> for CniError {
    fn from(e: ResultError) -> Self {
        let code = match e {
            ResultError::Decode(_) => CniError::DECODE_FAILURE,
            ResultError::MissingVersion | ResultError::UnsupportedVersion(_) => {
                CniError::INCOMPATIBLE_VERSION
            }
        };
        CniError::from_error(code, &e)
    }
}

impl CniResult {
    /// An empty result of version [`version::SPEC_VERSION`].
    pub fn new() -> Self {
        Self {
            cni_version: version::SPEC_VERSION.to_owned(),
            ..Self::default()
        }
    }

    /// Reads a result of any supported version; `cniVersion` is required.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let value: Value = serde_json::from_slice(bytes).map_err(ResultError::Decode)?;
        Self::from_value(value)
    }

    /// Reads a result from JSON already parsed; `cniVersion` is required.
    pub fn from_value(value: Value) -> Result<Self, ResultError> {
        Self::read(value, None)
    }

    /// Like [`CniResult::from_value`], but a result without `cniVersion`
    /// is read as `version`. Results before 1.0.0 may lack it (the spec's
    /// own prevResult examples do); the reference `ParsePrevResult` then
    /// assumes the config's version, and so should callers.
    pub fn from_value_or(value: Value, version: &str) -> Result<Self, ResultError> {
        Self::read(value, Some(version))
    }

    fn read(value: Value, fallback_version: Option<&str>) -> Result<Self, ResultError> {
        let version = match value.get("cniVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => fallback_version
                .ok_or(ResultError::MissingVersion)?
                .to_owned(),
        };
        if !version::is_supported(&version) {
            return Err(ResultError::UnsupportedVersion(version));
        }
        let mut result: Self = serde_json::from_value(value).map_err(ResultError::Decode)?;
        result.cni_version = version;
        Ok(result)
    }

    /// The result as JSON of `version`, which becomes its `cniVersion`.
    pub fn to_json(&self, version: &str) -> Result<Value, ResultError> {
        if !version::is_supported(version) {
            return Err(ResultError::UnsupportedVersion(version.to_owned()));
        }
        // Strings, numbers and addresses: serializing cannot fail.
        let mut value = serde_json::to_value(self).expect("CniResult serializes");
        value["cniVersion"] = Value::from(version);
        if !version::is_v1(version) {
            for (ip, json) in self.ips.iter().zip(array_mut(&mut value, "ips")) {
                let family = if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                json["version"] = Value::from(family);
            }
            for json in array_mut(&mut value, "interfaces") {
                if let Some(obj) = json.as_object_mut() {
                    for key in ["mtu", "socketPath", "pciID"] {
                        obj.remove(key);
                    }
                }
            }
        }
        Ok(value)
    }

    /// [`CniResult::to_json`] as bytes, for stdout or a cache file.
    pub fn to_bytes(&self, version: &str) -> Result<Vec<u8>, ResultError> {
        let value = self.to_json(version)?;
        Ok(serde_json::to_vec_pretty(&value).expect("JSON value serializes"))
    }
}

fn array_mut<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The bridge ADD result from the 1.1.0 spec's example section.
    const SPEC_110_ADD: &str = r#"{
      "cniVersion": "1.1.0",
      "interfaces": [
          {
              "name": "cni0",
              "mac": "00:11:22:33:44:55"
          },
          {
              "name": "veth3243",
              "mac": "55:44:33:22:11:11"
          },
          {
              "name": "eth0",
              "mac": "99:88:77:66:55:44",
              "sandbox": "/var/run/netns/blue"
          }
      ],
      "ips": [
          {
              "address": "10.1.0.5/16",
              "gateway": "10.1.0.1",
              "interface": 2
          }
      ],
      "routes": [
        {
          "dst": "0.0.0.0/0"
        }
      ],
      "dns": {
        "nameservers": [ "10.1.0.1" ]
      }
    }"#;

    /// The prevResult from the 0.4.0 spec's list example (no cniVersion).
    const SPEC_040_PREV: &str = r#"{
        "ips": [
            {
              "version": "4",
              "address": "10.0.0.5/32",
              "interface": 2
            }
        ],
        "interfaces": [
            {
                "name": "cni0",
                "mac": "00:11:22:33:44:55"
            },
            {
                "name": "veth3243",
                "mac": "55:44:33:22:11:11"
            },
            {
                "name": "eth0",
                "mac": "99:88:77:66:55:44",
                "sandbox": "/var/run/netns/blue"
            }
        ],
        "dns": {
          "nameservers": [ "10.1.0.1" ]
        }
    }"#;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn spec_110_round_trip() {
        let r = CniResult::parse(SPEC_110_ADD.as_bytes()).unwrap();
        assert_eq!(r.cni_version, "1.1.0");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(
            r.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/16");
        assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(
            r.routes,
            vec![Route::new("0.0.0.0/0".parse().unwrap(), None)]
        );
        assert_eq!(r.dns.nameservers, vec!["10.1.0.1"]);
        assert_eq!(r.to_json("1.1.0").unwrap(), v(SPEC_110_ADD));
    }

    #[test]
    fn spec_040_round_trip_with_fallback_version() {
        assert!(matches!(
            CniResult::parse(SPEC_040_PREV.as_bytes()),
            Err(ResultError::MissingVersion)
        ));
        let r = CniResult::from_value_or(v(SPEC_040_PREV), "0.4.0").unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        let mut expected = v(SPEC_040_PREV);
        expected["cniVersion"] = json!("0.4.0");
        assert_eq!(r.to_json("0.4.0").unwrap(), expected);
    }

    #[test]
    fn up_and_down_conversion() {
        let r = CniResult::parse(SPEC_110_ADD.as_bytes()).unwrap();
        for old in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = r.to_json(old).unwrap();
            assert_eq!(j["cniVersion"], old);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][0]["interface"], 2);
            // And back up: the same typed result, version aside.
            let back = CniResult::from_value(j).unwrap();
            assert_eq!(back.cni_version, old);
            assert_eq!(
                CniResult {
                    cni_version: r.cni_version.clone(),
                    ..back
                },
                r
            );
        }
        let j = r.to_json("1.0.0").unwrap();
        assert_eq!(j["cniVersion"], "1.0.0");
        assert!(j["ips"][0].get("version").is_none());
    }

    #[test]
    fn ipv6_and_new_fields() {
        let r = CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1450),
                socket_path: Some("/run/x.sock".into()),
                pci_id: Some("0000:00:1f.6".into()),
                ..Interface::default()
            }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "fd00::5/64".parse().unwrap(),
                gateway: Some("fd00::1".parse().unwrap()),
            }],
            routes: vec![Route {
                table: Some(100),
                scope: Some(0),
                mtu: Some(1400),
                advmss: Some(1360),
                priority: Some(10),
                ..Route::new("::/0".parse().unwrap(), Some("fd00::1".parse().unwrap()))
            }],
            dns: Dns::default(),
        };
        let new = r.to_json("1.1.0").unwrap();
        assert_eq!(
            new,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mtu": 1450, "socketPath": "/run/x.sock", "pciID": "0000:00:1f.6"}],
                "ips": [{"interface": 0, "address": "fd00::5/64", "gateway": "fd00::1"}],
                "routes": [{"dst": "::/0", "gw": "fd00::1", "mtu": 1400, "advmss": 1360,
                            "priority": 10, "table": 100, "scope": 0}]
            })
        );
        assert_eq!(CniResult::from_value(new).unwrap(), r);
        let old = r.to_json("0.3.1").unwrap();
        assert_eq!(old["ips"][0]["version"], "6");
        assert_eq!(old["interfaces"][0], json!({"name": "eth0"}));
    }

    #[test]
    fn ipam_result_without_interfaces() {
        let r = CniResult::parse(
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/16","gateway":"10.1.0.1"}],
                 "routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.1.0.1"]}}"#,
        )
        .unwrap();
        assert_eq!(r.ips[0].interface, None);
        assert!(r.interfaces.is_empty());
        let out = r.to_json("1.0.0").unwrap();
        assert!(out.get("interfaces").is_none());
        assert!(out["ips"][0].get("interface").is_none());
    }

    #[test]
    fn empty_fields_are_omitted() {
        assert_eq!(
            CniResult::new().to_json("1.1.0").unwrap(),
            json!({"cniVersion": "1.1.0"})
        );
    }

    #[test]
    fn rejects_old_and_unknown_versions() {
        let old = br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#;
        assert!(matches!(
            CniResult::parse(old),
            Err(ResultError::UnsupportedVersion(v)) if v == "0.2.0"
        ));
        assert!(matches!(
            CniResult::new().to_json("0.2.0"),
            Err(ResultError::UnsupportedVersion(_))
        ));
        assert!(matches!(
            CniResult::parse(b"{not json"),
            Err(ResultError::Decode(_))
        ));
        let bad_addr = br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]}"#;
        assert!(matches!(
            CniResult::parse(bad_addr),
            Err(ResultError::Decode(_))
        ));
        let e: CniError = CniResult::parse(old).unwrap_err().into();
        assert_eq!(e.code, CniError::INCOMPATIBLE_VERSION);
    }
}
