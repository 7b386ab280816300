//! resolv.conf parsing for the `resolvConf` option: the plugin returns the
//! file's contents as the result's `dns`.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The CNI result's `dns` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dns {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("failed to read resolv.conf {}", path.display())]
pub struct ResolvConfError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl Dns {
    /// Reads `nameserver`, `domain`, `search` and `options` lines as the
    /// reference does: comments (`#`, `;`) and lines with no value are
    /// skipped, the last `domain` wins, and nameservers are kept as written
    /// (a scoped `fe80::1%eth0` is not an `IpAddr`).
    pub fn parse(text: &str) -> Dns {
        let mut dns = Dns::default();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(key), Some(first)) = (fields.next(), fields.next()) else {
                continue;
            };
            let rest = std::iter::once(first).chain(fields).map(str::to_owned);
            match key {
                "nameserver" => dns.nameservers.push(first.to_owned()),
                "domain" => dns.domain = Some(first.to_owned()),
                "search" => dns.search.extend(rest),
                "options" => dns.options.extend(rest),
                _ => {}
            }
        }
        dns
    }
}

/// Parses the resolv.conf at `path`. Bytes that are not UTF-8 are replaced
/// rather than refused, as Go's scanner would pass them through.
pub fn read_resolv_conf(path: &Path) -> Result<Dns, ResolvConfError> {
    let bytes = std::fs::read(path).map_err(|source| ResolvConfError {
        path: path.to_owned(),
        source,
    })?;
    Ok(Dns::parse(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_skips_comments() {
        let dns = Dns::parse(
            "# generated\n\
             ; also a comment\n\
             nameserver 192.0.2.0\n\
             nameserver 192.0.2.1 ignored\n\
             nameserver\n\
             domain example.com\n\
             domain example.org\n\
             search example.com  example.net\n\
             search other.example\n\
             \toptions ndots:5 timeout:2\n\
             options attempts:3\n\
             sortlist 130.155.160.0/255.255.240.0\n",
        );
        assert_eq!(
            dns,
            Dns {
                nameservers: vec!["192.0.2.0".into(), "192.0.2.1".into()],
                domain: Some("example.org".into()),
                search: vec![
                    "example.com".into(),
                    "example.net".into(),
                    "other.example".into()
                ],
                options: vec!["ndots:5".into(), "timeout:2".into(), "attempts:3".into()],
            }
        );
    }

    #[test]
    fn empty_file_gives_empty_dns_object() {
        let dns = Dns::parse("");
        assert_eq!(dns, Dns::default());
        assert_eq!(serde_json::to_string(&dns).unwrap(), "{}");
    }

    #[test]
    fn reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 2001:db8::53\nsearch svc.cluster.local\n").unwrap();
        let dns = read_resolv_conf(&path).unwrap();
        assert_eq!(dns.nameservers, ["2001:db8::53"]);
        assert_eq!(dns.search, ["svc.cluster.local"]);

        let missing = dir.path().join("missing");
        let err = read_resolv_conf(&missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("failed to read resolv.conf {}", missing.display())
        );
    }
}
