//! The runtime's result cache, in libcni's on-disk format so either can read
//! the other's: `<cache_dir>/results/<network>-<containerID>-<ifname>`
//! holding a `cniCacheV1` object.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

pub(crate) const KIND_V1: &str = "cniCacheV1";

/// One cache file. Field names and omissions follow libcni's `cachedInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CachedInfo {
    pub kind: String,
    pub container_id: String,
    /// The network config list bytes; Go's `[]byte` is base64 in JSON.
    #[serde(with = "base64_bytes", default)]
    pub config: Vec<u8>,
    pub if_name: String,
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cni_args: Vec<(String, String)>,
    #[serde(
        default,
        skip_serializing_if = "Map::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(crate) fn results_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("results")
}

pub(crate) fn file_path(
    cache_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> PathBuf {
    results_dir(cache_dir).join(format!("{network}-{container_id}-{ifname}"))
}

/// Writes `info` to `path` atomically: a reader (or a crash) sees the old
/// file or the new one, never half of one.
pub(crate) fn write(path: &Path, info: &CachedInfo) -> io::Result<()> {
    let dir = path.parent().expect("cache file has a parent");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let file_name = path
        .file_name()
        .expect("cache file has a name")
        .to_string_lossy();
    // Dot-prefixed so libcni's and our listing skip it (it fails to parse
    // as JSON anyway while half-written).
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let bytes = serde_json::to_vec(info).expect("cache entry serializes");
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // No fsync, as libcni: the cache only has to outlive the runtime process, and
        // after a power loss every attachment it describes is gone anyway.
        f.write_all(&bytes)?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// None when there is no file.
pub(crate) fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removing what is already gone is success: DEL is idempotent.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The v1 entries of `network`, sorted by file name. Files that are not
/// v1 entries (legacy results, temp files, foreign junk) are skipped, as
/// libcni's `GetCachedAttachments` does.
pub(crate) fn list(cache_dir: &Path, network: &str) -> io::Result<Vec<CachedInfo>> {
    let dir = results_dir(cache_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{network}-");
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            names.push(name);
        }
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Ok(Some(bytes)) = read(&dir.join(&name)) else {
            continue;
        };
        match serde_json::from_slice::<CachedInfo>(&bytes) {
            Ok(info)
                if info.kind == KIND_V1
                    && info.network_name == network
                    && !info.container_id.is_empty()
                    && !info.if_name.is_empty() =>
            {
                out.push(info)
            }
            _ => tracing::debug!(file = name, "skipping cache file that is not a v1 entry"),
        }
    }
    Ok(out)
}

/// Standard base64 with padding, as Go's encoding/json writes `[]byte`.
pub(crate) mod base64_bytes {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub(crate) fn encode(input: &[u8]) -> String {
        STANDARD.encode(input)
    }

    pub(crate) fn decode(input: &str) -> Option<Vec<u8>> {
        STANDARD.decode(input).ok()
    }

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        // Go writes a nil slice as null.
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => {
                decode(&s).ok_or_else(|| serde::de::Error::custom("invalid base64 in config"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_go() {
        // Values from Go's base64.StdEncoding.
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"{\"a\":1}", "eyJhIjoxfQ=="),
            (&[0xfb, 0xff, 0xbf], "+/+/"),
        ];
        for (raw, enc) in cases {
            assert_eq!(base64_bytes::encode(raw), enc);
            assert_eq!(base64_bytes::decode(enc).as_deref(), Some(raw));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*"] {
            assert_eq!(base64_bytes::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_libcni_entry() {
        // As libcni writes it (nil cniArgs/capabilityArgs omitted or null).
        let go = json!({
            "kind": "cniCacheV1",
            "containerId": "ctr1",
            "config": "eyJhIjoxfQ==",
            "ifName": "eth0",
            "networkName": "net",
            "netns": "/var/run/netns/ctr1",
            "cniArgs": [["K8S_POD_NAME", "web"]],
            "capabilityArgs": null,
            "result": {"cniVersion": "1.0.0"}
        });
        let info: CachedInfo = serde_json::from_value(go).unwrap();
        assert_eq!(info.config, b"{\"a\":1}");
        assert_eq!(
            info.cni_args,
            vec![("K8S_POD_NAME".to_owned(), "web".to_owned())]
        );
        assert!(info.capability_args.is_empty());
        let back = serde_json::to_value(&info).unwrap();
        assert_eq!(back["config"], "eyJhIjoxfQ==");
        assert_eq!(back["cniArgs"], json!([["K8S_POD_NAME", "web"]]));
        assert!(back.get("capabilityArgs").is_none());
    }

    #[test]
    fn write_is_atomic_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = file_path(dir.path(), "net", "ctr1", "eth0");
        let info = CachedInfo {
            kind: KIND_V1.into(),
            container_id: "ctr1".into(),
            config: b"{}".to_vec(),
            if_name: "eth0".into(),
            network_name: "net".into(),
            netns: String::new(),
            cni_args: vec![],
            capability_args: Map::new(),
            result: None,
        };
        write(&path, &info).unwrap();
        write(&path, &info).unwrap();
        let names: Vec<_> = fs::read_dir(results_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["net-ctr1-eth0"]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(list(dir.path(), "net").unwrap(), vec![info]);
        assert!(list(dir.path(), "other").unwrap().is_empty());
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
