//! Container config files for `vaina create` and `vaina run`: crictl's JSON shape (snake_case
//! keys, every field optional), converted to the CRI message. Enums take crictl's numbers or
//! their names; unknown fields are rejected (crictl ignores them), so a typo is an error that
//! names it instead of a setting silently dropped.

use std::collections::HashMap;

use anyhow::{Context, Result};
use k8s_cri::v1 as cri;
use serde::Deserialize;

use crate::podconfig::{Enum, NAMESPACE_MODES};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    pub metadata: Metadata,
    pub image: Image,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<KeyValue>,
    pub mounts: Vec<Mount>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Relative to the pod's `log_directory`.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub linux: Option<Linux>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub attempt: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Image {
    pub image: String,
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: Enum,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Linux {
    pub resources: Option<Resources>,
    pub security_context: Option<SecurityContext>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityContext {
    pub capabilities: Option<Capabilities>,
    pub privileged: bool,
    pub namespace_options: Option<NamespaceOptions>,
    pub run_as_user: Option<Int64>,
    pub run_as_group: Option<Int64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: Option<SecurityProfile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    pub network: Enum,
    pub pid: Enum,
    pub ipc: Enum,
    /// The container whose PID namespace a `TARGET` pid mode joins.
    pub target_id: String,
}

/// A protobuf `Int64Value` wrapper: `{"value": 1000}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Int64 {
    pub value: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityProfile {
    pub profile_type: Enum,
    pub localhost_ref: String,
}

const PROPAGATIONS: &[&str] = &[
    "PROPAGATION_PRIVATE",
    "PROPAGATION_HOST_TO_CONTAINER",
    "PROPAGATION_BIDIRECTIONAL",
];
const PROFILE_TYPES: &[&str] = &["RuntimeDefault", "Unconfined", "Localhost"];

impl ContainerConfig {
    pub fn parse(text: &str, origin: &str) -> Result<ContainerConfig> {
        serde_json::from_str(text).with_context(|| format!("invalid container config {origin}"))
    }

    pub fn into_cri(self) -> Result<cri::ContainerConfig> {
        let mounts = self
            .mounts
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                Ok(cri::Mount {
                    propagation: m.propagation.value(
                        PROPAGATIONS,
                        "PROPAGATION_",
                        &format!("mounts[{i}].propagation"),
                    )?,
                    container_path: m.container_path,
                    host_path: m.host_path,
                    readonly: m.readonly,
                    ..Default::default()
                })
            })
            .collect::<Result<_>>()?;
        let linux = self.linux.map(Linux::into_cri).transpose()?;
        Ok(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.metadata.name,
                attempt: self.metadata.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.image,
                annotations: self.image.annotations,
                ..Default::default()
            }),
            command: self.command,
            args: self.args,
            working_dir: self.working_dir,
            envs: self
                .envs
                .into_iter()
                .map(|e| cri::KeyValue {
                    key: e.key,
                    value: e.value,
                })
                .collect(),
            mounts,
            labels: self.labels,
            annotations: self.annotations,
            log_path: self.log_path,
            stdin: self.stdin,
            stdin_once: self.stdin_once,
            tty: self.tty,
            linux,
            ..Default::default()
        })
    }
}

impl Linux {
    fn into_cri(self) -> Result<cri::LinuxContainerConfig> {
        let resources = self.resources.map(|r| cri::LinuxContainerResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            cpuset_cpus: r.cpuset_cpus,
            ..Default::default()
        });
        let security_context = self
            .security_context
            .map(SecurityContext::into_cri)
            .transpose()?;
        Ok(cri::LinuxContainerConfig {
            resources,
            security_context,
        })
    }
}

impl SecurityContext {
    fn into_cri(self) -> Result<cri::LinuxContainerSecurityContext> {
        let namespace_options = match self.namespace_options {
            None => None,
            Some(ns) => Some(cri::NamespaceOption {
                network: ns
                    .network
                    .value(NAMESPACE_MODES, "", "network namespace mode")?,
                pid: ns.pid.value(NAMESPACE_MODES, "", "pid namespace mode")?,
                ipc: ns.ipc.value(NAMESPACE_MODES, "", "ipc namespace mode")?,
                target_id: ns.target_id,
                ..Default::default()
            }),
        };
        let seccomp = match self.seccomp {
            None => None,
            Some(p) => Some(cri::SecurityProfile {
                profile_type: p
                    .profile_type
                    .value(PROFILE_TYPES, "", "seccomp profile_type")?,
                localhost_ref: p.localhost_ref,
            }),
        };
        Ok(cri::LinuxContainerSecurityContext {
            capabilities: self.capabilities.map(|c| cri::Capability {
                add_capabilities: c.add_capabilities,
                drop_capabilities: c.drop_capabilities,
                ..Default::default()
            }),
            privileged: self.privileged,
            namespace_options,
            run_as_user: self.run_as_user.map(|v| cri::Int64Value { value: v.value }),
            run_as_group: self
                .run_as_group
                .map(|v| cri::Int64Value { value: v.value }),
            run_as_username: self.run_as_username,
            readonly_rootfs: self.readonly_rootfs,
            supplemental_groups: self.supplemental_groups,
            no_new_privs: self.no_new_privs,
            masked_paths: self.masked_paths,
            readonly_paths: self.readonly_paths,
            seccomp,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// crictl's documented example (docs/crictl.md), with the optional sections filled in.
    #[test]
    fn crictl_example_parses() {
        let c = ContainerConfig::parse(
            r#"{
              "metadata": {"name": "busybox"},
              "image": {"image": "busybox"},
              "command": ["top"],
              "log_path": "busybox.0.log",
              "linux": {}
            }"#,
            "test",
        )
        .unwrap()
        .into_cri()
        .unwrap();
        assert_eq!(c.metadata.unwrap().name, "busybox");
        assert_eq!(c.image.unwrap().image, "busybox");
        assert_eq!(c.command, ["top"]);
        assert_eq!(c.log_path, "busybox.0.log");
        let linux = c.linux.unwrap();
        assert!(linux.resources.is_none() && linux.security_context.is_none());

        let c = ContainerConfig::parse(
            r#"{
              "metadata": {"name": "app", "attempt": 2},
              "image": {"image": "docker.io/library/busybox:latest"},
              "command": ["sh", "-c"], "args": ["echo hola"], "working_dir": "/tmp",
              "envs": [{"key": "A", "value": "1"}],
              "mounts": [
                {"container_path": "/data", "host_path": "/srv/data", "readonly": true},
                {"container_path": "/shared", "host_path": "/srv/shared", "propagation": "BIDIRECTIONAL"},
                {"container_path": "/h2c", "host_path": "/srv/h2c", "propagation": 1}
              ],
              "labels": {"app": "demo"}, "annotations": {"note": "x"},
              "stdin": true, "stdin_once": true,
              "linux": {
                "resources": {"cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 512,
                              "memory_limit_in_bytes": 67108864, "oom_score_adj": 100,
                              "cpuset_cpus": "0"},
                "security_context": {
                  "capabilities": {"add_capabilities": ["NET_ADMIN"], "drop_capabilities": ["ALL"]},
                  "privileged": false,
                  "namespace_options": {"network": "POD", "pid": "container", "ipc": 0},
                  "run_as_user": {"value": 1000}, "run_as_group": {"value": 1000},
                  "run_as_username": "", "readonly_rootfs": true,
                  "supplemental_groups": [10, 20], "no_new_privs": true,
                  "masked_paths": ["/proc/kcore"], "readonly_paths": ["/proc/sys"],
                  "seccomp": {"profile_type": "Unconfined"}
                }
              }
            }"#,
            "test",
        )
        .unwrap()
        .into_cri()
        .unwrap();
        assert_eq!(c.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(
            (c.args.as_slice(), c.working_dir.as_str()),
            (&["echo hola".to_string()][..], "/tmp")
        );
        assert_eq!(
            (c.envs[0].key.as_str(), c.envs[0].value.as_str()),
            ("A", "1")
        );
        let props: Vec<i32> = c.mounts.iter().map(|m| m.propagation).collect();
        assert_eq!(props, [0, 2, 1]);
        assert!(c.mounts[0].readonly && c.stdin && c.stdin_once && !c.tty);
        let linux = c.linux.unwrap();
        let r = linux.resources.unwrap();
        assert_eq!(
            (
                r.cpu_period,
                r.cpu_quota,
                r.cpu_shares,
                r.memory_limit_in_bytes,
                r.oom_score_adj
            ),
            (100000, 50000, 512, 64 << 20, 100)
        );
        assert_eq!(r.cpuset_cpus, "0");
        let sc = linux.security_context.unwrap();
        assert_eq!(sc.capabilities.unwrap().drop_capabilities, ["ALL"]);
        let ns = sc.namespace_options.unwrap();
        assert_eq!((ns.network, ns.pid, ns.ipc), (0, 1, 0));
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert_eq!(sc.run_as_group.unwrap().value, 1000);
        assert_eq!(sc.supplemental_groups, [10, 20]);
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        assert_eq!(sc.masked_paths, ["/proc/kcore"]);
        assert_eq!(sc.readonly_paths, ["/proc/sys"]);
        assert_eq!(sc.seccomp.unwrap().profile_type, 1);
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = ContainerConfig::parse("{}", "test")
            .unwrap()
            .into_cri()
            .unwrap();
        assert_eq!(c.metadata.unwrap().name, "");
        assert!(c.linux.is_none() && c.command.is_empty());
    }

    #[test]
    fn bad_input_names_the_field() {
        let msg = |text: &str| {
            let e = ContainerConfig::parse(text, "ctr.json")
                .and_then(ContainerConfig::into_cri)
                .unwrap_err();
            format!("{e:#}")
        };
        let e = msg(r#"{"metadata":{"name":"x"},"comand":["sh"]}"#);
        assert!(e.contains("comand") && e.contains("ctr.json"), "{e}");
        let e = msg(r#"{"linux":{"security_context":{"run_as_user":{"valeu":1}}}}"#);
        assert!(e.contains("valeu"), "{e}");
        let e = msg(r#"{"linux":{"resources":{"memory_limit":1}}}"#);
        assert!(e.contains("memory_limit"), "{e}");
        let e =
            msg(r#"{"mounts":[{"container_path":"/a","host_path":"/b","propagation":"SHARED"}]}"#);
        assert!(
            e.contains("mounts[0].propagation") && e.contains("SHARED"),
            "{e}"
        );
        let e = msg(r#"{"mounts":[{"propagation":7}]}"#);
        assert!(
            e.contains("mounts[0].propagation") && e.contains('7'),
            "{e}"
        );
        let e = msg(r#"{"linux":{"security_context":{"namespace_options":{"pid":"HOST"}}}}"#);
        assert!(
            e.contains("pid namespace mode") && e.contains("HOST"),
            "{e}"
        );
        let e = msg(r#"{"command":"sh"}"#);
        assert!(e.contains("invalid type"), "{e}");
    }
}
