//! Network configurations: the single plugin config a plugin reads on stdin
//! ([`NetworkConfig`]) and the config lists a runtime loads from disk
//! ([`NetworkConfigList`], [`load_conflist`], [`load_conf_dir`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::result::{CniResult, Dns, ResultError};
use crate::version;

/// Key under which a runtime passes the attachments still in use on GC
/// (spec 1.1.0).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The key libcni 1.2.0 sent before the spec settled on
/// [`VALID_ATTACHMENTS_KEY`]; libcni ≥ 1.2.3 sends both, and so do we.
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// A config that could not be loaded, named by its file path (or by "network
/// config" when it came from stdin).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to parse {origin} at line {line} column {column}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{origin}: missing cniVersion")]
    MissingVersion { origin: String },
    #[error("{origin}: unsupported CNI version \"{version}\"")]
    UnsupportedVersion { origin: String, version: String },
    #[error("{origin}: missing {field}")]
    MissingField { origin: String, field: String },
    #[error("{origin}: invalid {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

impl ConfigError {
    fn parse(origin: &str, source: serde_json::Error) -> Self {
        Self::Parse {
            origin: origin.to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        }
    }

    fn missing(origin: &str, field: impl Into<String>) -> Self {
        Self::MissingField {
            origin: origin.to_owned(),
            field: field.into(),
        }
    }

    fn invalid(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            origin: origin.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> Self {
        let code = match e {
            ConfigError::Read { .. } => CniError::IO_FAILURE,
            ConfigError::Parse { .. } => CniError::DECODE_FAILURE,
            ConfigError::MissingVersion { .. } | ConfigError::UnsupportedVersion { .. } => {
                CniError::INCOMPATIBLE_VERSION
            }
            ConfigError::MissingField { .. } | ConfigError::Invalid { .. } => {
                CniError::INVALID_CONFIG
            }
        };
        CniError::from_error(code, &e)
    }
}

/// One plugin's config as it arrives on stdin: the well-known keys typed,
/// the plugin's own keys in `extra`.
///
/// A plugin with a typed config of its own can also deserialize it from the
/// same stdin bytes ([`crate::skel::CmdArgs::parse_config`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The previous plugin's result (ADD) or the cached ADD result
    /// (CHECK, DEL); see [`NetworkConfig::prev_result`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// Capability arguments the runtime passed, filtered by `capabilities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Value>,
    /// Every other key, including the GC attachment list.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetworkConfig {
    /// Parses and validates stdin: cniVersion present and supported, name
    /// valid, type present.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        const ORIGIN: &str = "network config";
        let conf: Self =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::parse(ORIGIN, e))?;
        check_version(ORIGIN, &conf.cni_version)?;
        check_name(ORIGIN, &conf.name)?;
        if conf.plugin_type.is_empty() {
            return Err(ConfigError::missing(ORIGIN, "type"));
        }
        Ok(conf)
    }

    /// `ipam.type`, the IPAM plugin to delegate to.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()?
            .get("type")?
            .as_str()
            .filter(|t| !t.is_empty())
    }

    /// `prevResult` typed; a result without cniVersion is read as this
    /// config's version, as the reference does.
    pub fn prev_result(&self) -> Result<Option<CniResult>, ResultError> {
        self.prev_result
            .clone()
            .map(|v| CniResult::from_value_or(v, &self.cni_version))
            .transpose()
    }

    /// The attachments a GC must keep. Absent is an error rather than an
    /// empty list, so a plugin never frees everything by mistake.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, ConfigError> {
        const ORIGIN: &str = "network config";
        let value = self
            .extra
            .get(VALID_ATTACHMENTS_KEY)
            .or_else(|| self.extra.get(LEGACY_ATTACHMENTS_KEY))
            .ok_or_else(|| ConfigError::missing(ORIGIN, VALID_ATTACHMENTS_KEY))?;
        Vec::<Attachment>::deserialize(value)
            .map_err(|e| ConfigError::invalid(ORIGIN, VALID_ATTACHMENTS_KEY, e.to_string()))
    }
}

/// One container attachment to a network, as listed in GC's
/// `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// One entry of a list's `plugins`: its type and capabilities read, the
/// object kept whole so unknown keys reach the plugin untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub plugin_type: String,
    pub capabilities: BTreeMap<String, bool>,
    pub raw: Map<String, Value>,
}

impl PluginConfig {
    fn from_map(origin: &str, index: usize, raw: Map<String, Value>) -> Result<Self, ConfigError> {
        let field = |f: &str| format!("plugins[{index}].{f}");
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(Value::String(_)) | None => {
                return Err(ConfigError::missing(origin, field("type")));
            }
            Some(_) => return Err(ConfigError::invalid(origin, field("type"), "not a string")),
        };
        let capabilities = match raw.get("capabilities") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => BTreeMap::deserialize(v)
                .map_err(|e| ConfigError::invalid(origin, field("capabilities"), e.to_string()))?,
        };
        Ok(Self {
            plugin_type,
            capabilities,
            raw,
        })
    }

    /// Whether the plugin asked for capability `name` (a `runtimeConfig` key).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.get(name).copied().unwrap_or(false)
    }
}

/// A network: plugins run in order on ADD, reversed on DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The version every plugin is called with: `cniVersion`, or with
    /// `cniVersions` (1.1.0) the highest of both that we support.
    pub cni_version: String,
    pub cni_versions: Vec<String>,
    pub name: String,
    /// The runtime must not CHECK this network.
    pub disable_check: bool,
    /// The runtime must not GC this network.
    pub disable_gc: bool,
    pub plugins: Vec<PluginConfig>,
    /// The list as loaded; kept in the result cache like libcni.
    pub bytes: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawList {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    cni_versions: Vec<String>,
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "bool_or_string")]
    disable_check: bool,
    #[serde(rename = "disableGC", default, deserialize_with = "bool_or_string")]
    disable_gc: bool,
    #[serde(default)]
    plugins: Option<Vec<Map<String, Value>>>,
}

/// The 0.4.0 spec types `disableCheck` as a string "true"/"false"; libcni
/// accepts a bool or such a string, so do we.
fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected true or false, found {other}"
        ))),
    }
}

impl NetworkConfigList {
    /// Parses a `.conflist` document.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::parse_with_origin(bytes, "network config list")
    }

    fn parse_with_origin(bytes: &[u8], origin: &str) -> Result<Self, ConfigError> {
        let raw: RawList =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::parse(origin, e))?;
        let cni_version = if raw.cni_versions.is_empty() {
            check_version(origin, &raw.cni_version)?;
            raw.cni_version
        } else {
            let candidates = raw.cni_versions.iter().chain(Some(&raw.cni_version));
            match version::highest_supported(candidates.map(String::as_str)) {
                Some(v) => v.to_owned(),
                None => {
                    return Err(ConfigError::UnsupportedVersion {
                        origin: origin.to_owned(),
                        version: raw.cni_versions.join(", "),
                    });
                }
            }
        };
        check_name(origin, &raw.name)?;
        let raw_plugins = raw
            .plugins
            .ok_or_else(|| ConfigError::missing(origin, "plugins"))?;
        if raw_plugins.is_empty() {
            return Err(ConfigError::invalid(origin, "plugins", "empty list"));
        }
        let plugins = raw_plugins
            .into_iter()
            .enumerate()
            .map(|(i, p)| PluginConfig::from_map(origin, i, p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cni_version,
            cni_versions: raw.cni_versions,
            name: raw.name,
            disable_check: raw.disable_check,
            disable_gc: raw.disable_gc,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// Wraps a legacy single-plugin `.conf` document in a list of one, as
    /// libcni's `ConfListFromConf` does.
    pub fn from_single_conf(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::from_single_conf_with_origin(bytes, "network config")
    }

    fn from_single_conf_with_origin(bytes: &[u8], origin: &str) -> Result<Self, ConfigError> {
        let conf: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::parse(origin, e))?;
        if !matches!(conf.get("type"), Some(Value::String(t)) if !t.is_empty()) {
            return Err(ConfigError::missing(origin, "type"));
        }
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = conf.get(key) {
                list.insert(key.to_owned(), v.clone());
            }
        }
        list.insert(
            "plugins".to_owned(),
            Value::Array(vec![Value::Object(conf)]),
        );
        let list_bytes = serde_json::to_vec(&list).expect("JSON map serializes");
        Self::parse_with_origin(&list_bytes, origin)
    }

    /// The first plugin of type `plugin_type`, if the list has one.
    pub fn plugin(&self, plugin_type: &str) -> Option<&PluginConfig> {
        self.plugins.iter().find(|p| p.plugin_type == plugin_type)
    }
}

/// Loads one file: a list if the document has `plugins`, otherwise a legacy
/// single-plugin config. Errors name the file.
pub fn load_conflist(path: &Path) -> Result<NetworkConfigList, ConfigError> {
    let bytes = fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let is_list = serde_json::from_slice::<Map<String, Value>>(&bytes)
        .map_err(|e| ConfigError::parse(&origin, e))?
        .contains_key("plugins");
    if is_list {
        NetworkConfigList::parse_with_origin(&bytes, &origin)
    } else {
        NetworkConfigList::from_single_conf_with_origin(&bytes, &origin)
    }
}

/// Every `*.conflist`, `*.conf` and `*.json` in `dir`, sorted by file name
/// (the first is the default network, by the usual runtime convention). A
/// missing or empty directory gives an empty list; one bad file fails the
/// whole load, naming it.
pub fn load_conf_dir(dir: &Path) -> Result<Vec<NetworkConfigList>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_err)?.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        );
        // fs::metadata follows symlinks, as config dirs often hold links.
        if wanted && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    paths.iter().map(|p| load_conflist(p)).collect()
}

/// Deserializes a plugin's own config type from its stdin; errors are code 6
/// naming the config.
pub(crate) fn parse_typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CniError> {
    serde_json::from_slice(bytes).map_err(|e| ConfigError::parse("network config", e).into())
}

fn check_version(origin: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::MissingVersion {
            origin: origin.to_owned(),
        });
    }
    if !version::is_supported(v) {
        return Err(ConfigError::UnsupportedVersion {
            origin: origin.to_owned(),
            version: v.to_owned(),
        });
    }
    Ok(())
}

fn check_name(origin: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::missing(origin, "name"));
    }
    if !is_valid_identifier(name) {
        return Err(ConfigError::invalid(
            origin,
            "name",
            format!("\"{name}\" must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
        ));
    }
    Ok(())
}

/// The spec's rule for network names and container IDs:
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn is_valid_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The spec's rule for `CNI_IFNAME`: non-empty, under 16 bytes, not "." or
/// "..", no '/', ':' or whitespace. Returns why it is invalid.
pub fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("interface name is empty")
    } else if name.len() > 15 {
        Err("interface name is longer than 15 characters")
    } else if name == "." || name == ".." {
        Err("interface name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Err("interface name contains / or : or whitespace")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(v.to_string().as_bytes())
    }

    #[test]
    fn plugin_config_from_spec_example() {
        let c = conf(json!({
            "cniVersion": "1.1.0",
            "name": "dbnet",
            "type": "bridge",
            "bridge": "cni0",
            "keyA": ["some more", "plugin specific", "configuration"],
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1"},
            "dns": {"nameservers": ["10.1.0.1"]},
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": []},
            "prevResult": {"ips": [{"version": "4", "address": "10.0.0.5/32"}]}
        }))
        .unwrap();
        assert_eq!(c.plugin_type, "bridge");
        assert_eq!(c.ipam_type(), Some("host-local"));
        assert_eq!(c.dns.as_ref().unwrap().nameservers, vec!["10.1.0.1"]);
        assert_eq!(c.extra["bridge"], "cni0");
        assert!(c.extra.contains_key("keyA"));
        assert!(!c.extra.contains_key("ipam"));
        assert_eq!(c.capabilities.get("portMappings"), Some(&true));
        // prevResult without cniVersion is read as the config's version.
        let prev = c.prev_result().unwrap().unwrap();
        assert_eq!(prev.cni_version, "1.1.0");
        assert_eq!(prev.ips[0].address.to_string(), "10.0.0.5/32");
    }

    #[test]
    fn plugin_config_validation() {
        let base = json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge"});
        assert!(conf(base.clone()).is_ok());

        let err = NetworkConfig::parse(b"{\"cniVersion\": \"1.0.0\",\n \"name\": }").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err:?}");
        assert!(
            err.to_string().contains("network config at line 2"),
            "{err}"
        );
        assert_eq!(CniError::from(err).code, CniError::DECODE_FAILURE);

        let mut v = base.clone();
        v["cniVersion"] = json!("0.2.0");
        let err = conf(v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network config: unsupported CNI version \"0.2.0\""
        );
        assert_eq!(CniError::from(err).code, CniError::INCOMPATIBLE_VERSION);

        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("cniVersion");
        let err = conf(v).unwrap_err();
        assert!(matches!(err, ConfigError::MissingVersion { .. }));
        assert_eq!(CniError::from(err).code, CniError::INCOMPATIBLE_VERSION);

        for (field, code) in [("name", 7), ("type", 7)] {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(field);
            let err = conf(v).unwrap_err();
            assert_eq!(err.to_string(), format!("network config: missing {field}"));
            assert_eq!(CniError::from(err).code, code);
        }

        let mut v = base.clone();
        v["name"] = json!("-bad name");
        assert!(matches!(conf(v), Err(ConfigError::Invalid { field, .. }) if field == "name"));

        let mut v = base;
        v["capabilities"] = json!("all");
        assert!(matches!(conf(v), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn valid_attachments() {
        let mut c = conf(json!({
            "cniVersion": "1.1.0", "name": "net", "type": "bridge",
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]
        }))
        .unwrap();
        let want = vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(c.valid_attachments().unwrap(), want);
        let v = c.extra.remove(VALID_ATTACHMENTS_KEY).unwrap();
        assert!(matches!(
            c.valid_attachments(),
            Err(ConfigError::MissingField { .. })
        ));
        c.extra.insert(LEGACY_ATTACHMENTS_KEY.into(), v);
        assert_eq!(c.valid_attachments().unwrap(), want);
        c.extra.insert(VALID_ATTACHMENTS_KEY.into(), json!("nope"));
        assert!(matches!(
            c.valid_attachments(),
            Err(ConfigError::Invalid { .. })
        ));
    }

    fn list(v: Value) -> Result<NetworkConfigList, ConfigError> {
        NetworkConfigList::from_bytes(v.to_string().as_bytes())
    }

    #[test]
    fn list_parsing() {
        let l = list(json!({
            "cniVersion": "1.0.0",
            "name": "dbnet",
            "disableCheck": "true",
            "plugins": [
                {"type": "bridge", "bridge": "cni0"},
                {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
            ]
        }))
        .unwrap();
        assert_eq!(l.cni_version, "1.0.0");
        assert!(l.disable_check);
        assert!(!l.disable_gc);
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugins[0].raw["bridge"], "cni0");
        assert!(l.plugins[1].has_capability("portMappings"));
        assert!(!l.plugins[1].has_capability("bandwidth"));
        assert!(l.plugin("portmap").is_some());

        let l = list(
            json!({"cniVersion": "0.4.0", "name": "n", "disableGC": true,
                            "plugins": [{"type": "x"}]}),
        )
        .unwrap();
        assert!(l.disable_gc);
    }

    #[test]
    fn list_version_negotiation() {
        let l = list(json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["1.0.0", "1.1.0", "2.0.0"],
            "name": "n",
            "plugins": [{"type": "x"}]
        }))
        .unwrap();
        assert_eq!(l.cni_version, "1.1.0");
        let l = list(
            json!({"cniVersions": ["0.3.1", "0.4.0"], "name": "n", "plugins": [{"type": "x"}]}),
        )
        .unwrap();
        assert_eq!(l.cni_version, "0.4.0");
        let err = list(json!({"cniVersions": ["2.0.0"], "name": "n", "plugins": [{"type": "x"}]}))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnsupportedVersion { .. }));
    }

    #[test]
    fn list_validation() {
        let cases = [
            (
                json!({"name": "n", "plugins": [{"type": "x"}]}),
                "missing cniVersion",
            ),
            (
                json!({"cniVersion": "9.0.0", "name": "n", "plugins": [{"type": "x"}]}),
                "unsupported CNI version \"9.0.0\"",
            ),
            (
                json!({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}),
                "missing name",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": ".n", "plugins": [{"type": "x"}]}),
                "invalid name",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n"}),
                "missing plugins",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
                "invalid plugins: empty list",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}, {"bridge": "b"}]}),
                "missing plugins[1].type",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": 3}]}),
                "invalid plugins[0].type",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "capabilities": [1]}]}),
                "invalid plugins[0].capabilities",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": "maybe", "plugins": [{"type": "x"}]}),
                "failed to parse",
            ),
        ];
        for (v, want) in cases {
            let err = list(v.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn single_conf_becomes_list() {
        let l = NetworkConfigList::from_single_conf(
            br#"{"cniVersion":"0.3.1","name":"mynet","type":"bridge","bridge":"cni0"}"#,
        )
        .unwrap();
        assert_eq!(l.name, "mynet");
        assert_eq!(l.cni_version, "0.3.1");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].raw["bridge"], "cni0");
        let bytes: Value = serde_json::from_slice(&l.bytes).unwrap();
        assert_eq!(bytes["plugins"][0]["type"], "bridge");
        let err = NetworkConfigList::from_single_conf(br#"{"cniVersion":"1.0.0","name":"n"}"#)
            .unwrap_err();
        assert_eq!(err.to_string(), "network config: missing type");
    }

    #[test]
    fn conf_dir_loading() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_conf_dir(dir.path()).unwrap().is_empty());
        assert!(
            load_conf_dir(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );

        let write = |name: &str, body: &str| fs::write(dir.path().join(name), body).unwrap();
        write(
            "20-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            "10-a.conf",
            r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#,
        );
        write(
            "30-c.json",
            r#"{"cniVersion":"1.1.0","name":"c","plugins":[{"type":"x"}]}"#,
        );
        write("README.md", "not a config");
        write("40-d.conf.bak", "{");
        fs::create_dir(dir.path().join("50-e.conf")).unwrap();
        let names: Vec<_> = load_conf_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);

        write(
            "25-bad.conflist",
            "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"bad\",\n  \"plugins\": [\n",
        );
        let err = load_conf_dir(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("25-bad.conflist at line 5"), "{msg}");
        assert!(matches!(err, ConfigError::Parse { .. }));

        fs::remove_file(dir.path().join("25-bad.conflist")).unwrap();
        write(
            "26-notype.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
        );
        let msg = load_conf_dir(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("26-notype.conflist: missing plugins[0].type"),
            "{msg}"
        );
    }

    #[test]
    fn identifiers_and_ifnames() {
        for ok in ["a", "net-1", "A.b_c", "0abc"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "é"] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("123456789012345").is_ok());
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
