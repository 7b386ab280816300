//! Pod sandbox config files for `vaina runp`: crictl's JSON shape (snake_case keys, every
//! field optional), converted to the CRI message. Enums take crictl's numbers or names.

use std::collections::HashMap;

use anyhow::{Context, Result};
use k8s_cri::v1 as cri;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodConfig {
    pub metadata: Metadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns_config: Option<Dns>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub linux: Linux,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortMapping {
    pub protocol: Enum,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Linux {
    pub cgroup_parent: String,
    pub sysctls: HashMap<String, String>,
    pub security_context: SecurityContext,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SecurityContext {
    pub namespace_options: NamespaceOptions,
    pub privileged: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    pub network: Enum,
    pub pid: Enum,
    pub ipc: Enum,
}

/// A protobuf enum written as its number or its name (case-insensitive).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Enum {
    Number(i32),
    Name(String),
}

impl Default for Enum {
    fn default() -> Self {
        Enum::Number(0)
    }
}

impl Enum {
    /// The value among `names` (the enum's protobuf names, in number order); a name may
    /// leave out the common `prefix` (`BIDIRECTIONAL` for `PROPAGATION_BIDIRECTIONAL`) and
    /// is matched without regard to case.
    pub fn value(&self, names: &[&str], prefix: &str, what: &str) -> Result<i32> {
        match self {
            Enum::Number(n) if (0..names.len() as i32).contains(n) => Ok(*n),
            Enum::Number(n) => anyhow::bail!("invalid {what} {n} (0 to {})", names.len() - 1),
            Enum::Name(s) => names
                .iter()
                .position(|n| {
                    n.eq_ignore_ascii_case(s)
                        || n.strip_prefix(prefix).is_some_and(|short| {
                            !prefix.is_empty() && short.eq_ignore_ascii_case(s)
                        })
                })
                .map(|i| i as i32)
                .with_context(|| format!("invalid {what} {s:?} (one of {names:?})")),
        }
    }
}

pub const NAMESPACE_MODES: &[&str] = &["POD", "CONTAINER", "NODE", "TARGET"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

impl PodConfig {
    pub fn parse(text: &str, origin: &str) -> Result<PodConfig> {
        serde_json::from_str(text).with_context(|| format!("invalid pod config {origin}"))
    }

    pub fn into_cri(self) -> Result<cri::PodSandboxConfig> {
        let ns = &self.linux.security_context.namespace_options;
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.metadata.name,
                uid: self.metadata.uid,
                namespace: self.metadata.namespace,
                attempt: self.metadata.attempt,
            }),
            hostname: self.hostname,
            log_directory: self.log_directory,
            dns_config: self.dns_config.map(|d| cri::DnsConfig {
                servers: d.servers,
                searches: d.searches,
                options: d.options,
            }),
            port_mappings: self
                .port_mappings
                .iter()
                .map(|p| {
                    Ok(cri::PortMapping {
                        protocol: p.protocol.value(PROTOCOLS, "", "protocol")?,
                        container_port: p.container_port,
                        host_port: p.host_port,
                        host_ip: p.host_ip.clone(),
                    })
                })
                .collect::<Result<_>>()?,
            labels: self.labels,
            annotations: self.annotations,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.linux.cgroup_parent,
                sysctls: self.linux.sysctls,
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: ns
                            .network
                            .value(NAMESPACE_MODES, "", "network namespace mode")?,
                        pid: ns.pid.value(NAMESPACE_MODES, "", "pid namespace mode")?,
                        ipc: ns.ipc.value(NAMESPACE_MODES, "", "ipc namespace mode")?,
                        ..Default::default()
                    }),
                    privileged: self.linux.security_context.privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            windows: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crictl_example_parses() {
        let c = PodConfig::parse(
            r#"{"metadata":{"name":"nginx-sandbox","namespace":"default","attempt":1,"uid":"hdishd83djaidwnduwk28bcsb"},
                "log_directory":"/tmp","port_mappings":[{"protocol":"TCP","container_port":80,"host_port":8080}],
                "linux":{"security_context":{"namespace_options":{"network":"NODE","pid":1}}}}"#,
            "test",
        )
        .unwrap()
        .into_cri()
        .unwrap();
        assert_eq!(c.metadata.unwrap().name, "nginx-sandbox");
        assert_eq!(c.port_mappings[0].host_port, 8080);
        let ns = c
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!((ns.network, ns.pid), (2, 1));
    }

    #[test]
    fn bad_input_names_the_problem() {
        let e = PodConfig::parse(r#"{"metdata":{}}"#, "pod.json").unwrap_err();
        assert!(format!("{e:#}").contains("metdata"), "{e:#}");
        let e = PodConfig::parse(
            r#"{"linux":{"security_context":{"namespace_options":{"network":"HOST"}}}}"#,
            "pod.json",
        )
        .unwrap()
        .into_cri()
        .unwrap_err();
        assert!(format!("{e:#}").contains("HOST"), "{e:#}");
    }
}
