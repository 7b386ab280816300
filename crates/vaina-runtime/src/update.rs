//! UpdateContainerResources and UpdateRuntimeConfig.
//!
//! Resources: validated (bad values → InvalidArgument, as runc/crun and the kernel would
//! refuse them), applied with `<oci runtime> --root R update --resources FILE <id>` (an OCI
//! `LinuxResources` JSON), then kept in the container's record so its status and a
//! restart of vainad see them.
//!
//! Runtime config: kubelet's pod CIDR. Like containerd when it owns the CNI config, the
//! default conflist vaina wrote is rewritten for the CIDR when nothing else is configured
//! and no pod is running; any other config is left alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::container::ContainerState;
use crate::error::{Error, Result};
use crate::sandbox::{Runtime, SandboxState};

/// The kernel's and runc's floor for a memory limit.
pub const MIN_MEMORY_LIMIT: i64 = 4 * 1024 * 1024;

/// Checks CRI resources and builds the OCI `LinuxResources` to apply.
pub fn oci_resources(r: &LinuxContainerResources, v2: bool) -> Result<LinuxResources> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    for (name, v) in [
        ("cpu_period", r.cpu_period),
        ("cpu_quota", r.cpu_quota),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        if v < 0 && !(name == "cpu_quota" && v == -1) {
            return bad(format!("{name} {v} is negative"));
        }
    }
    if r.memory_limit_in_bytes > 0 && r.memory_limit_in_bytes < MIN_MEMORY_LIMIT {
        return bad(format!(
            "memory_limit_in_bytes {} is below the minimum of {MIN_MEMORY_LIMIT} bytes (4 MiB)",
            r.memory_limit_in_bytes
        ));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return bad(format!(
            "memory_swap_limit_in_bytes {} is below memory_limit_in_bytes {}",
            r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
        ));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return bad(format!(
            "cpu_period {} is outside 1000..=1000000 µs",
            r.cpu_period
        ));
    }
    if r.cpu_quota > 0 && r.cpu_quota < 1000 {
        return bad(format!("cpu_quota {} is below 1000 µs", r.cpu_quota));
    }
    if r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares) {
        return bad(format!("cpu_shares {} is outside 2..=262144", r.cpu_shares));
    }
    for (name, set) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !set.is_empty() && !valid_cpuset(set) {
            return bad(format!("{name} {set:?} is not a list of ranges like 0-2,4"));
        }
    }
    if !r.unified.is_empty() && !v2 {
        return bad("unified (cgroup v2) resources on a cgroup v1 host".into());
    }
    if !r.hugepage_limits.is_empty() {
        return bad("hugepage limits are not supported by vaina".into());
    }
    let spec_err = |e: oci_spec::OciSpecError| Error::InvalidArgument(format!("resources: {e}"));
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    let mut res = LinuxResourcesBuilder::default().cpu(cpu.build().map_err(spec_err)?);
    if r.memory_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes > 0 {
        let mut m = LinuxMemoryBuilder::default();
        if r.memory_limit_in_bytes > 0 {
            m = m.limit(r.memory_limit_in_bytes);
        }
        if r.memory_swap_limit_in_bytes > 0 {
            m = m.swap(r.memory_swap_limit_in_bytes);
        }
        res = res.memory(m.build().map_err(spec_err)?);
    }
    if !r.unified.is_empty() {
        res = res.unified(
            r.unified
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<String, String>>(),
        );
    }
    res.build().map_err(spec_err)
}

fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            (Ok(a), Ok(b)) => a <= b,
            _ => false,
        }
    })
}

impl Runtime {
    /// UpdateContainerResources: applies `r` to a created or running container and keeps
    /// it in the record; a stopped container's record alone is updated (containerd).
    pub async fn update_container_resources(
        self: &Arc<Self>,
        id: &str,
        r: LinuxContainerResources,
    ) -> Result<()> {
        let mut rec = self.container(id)?;
        let resources = oci_resources(&r, crate::stats::Hierarchy::host().is_v2())?;
        if matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            let dir = self.cfg.root.join("containers").join(&rec.id);
            let (runtime, root, cid) = (
                rec.runtime.clone(),
                rec.runtime_root.clone(),
                rec.id.clone(),
            );
            tokio::task::spawn_blocking(move || apply(&runtime, &root, &cid, &dir, &resources))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
        }
        // Kept in the record: status reports them, a restart keeps them.
        let linux = rec.config.linux.get_or_insert_with(Default::default);
        let old_oom = linux.resources.as_ref().map(|o| o.oom_score_adj);
        let mut new = r;
        if let Some(o) = old_oom {
            // The OOM score is the process's, fixed at start.
            new.oom_score_adj = o;
        }
        linux.resources = Some(new);
        self.cstore.save(&rec.id, &rec)?;
        self.containers.lock().unwrap().insert(rec.id.clone(), rec);
        Ok(())
    }
}

/// `<runtime> --root <root> update --resources <file> <id>`.
fn apply(runtime: &Path, root: &Path, id: &str, dir: &Path, res: &LinuxResources) -> Result<()> {
    let file: PathBuf = dir.join("resources-update.json");
    let json = serde_json::to_vec(res).map_err(|e| Error::failed("encode resources", e))?;
    let mut f = std::fs::File::create(&file)
        .map_err(|e| Error::failed(format!("create {}", file.display()), e))?;
    f.write_all(&json)
        .map_err(|e| Error::failed(format!("write {}", file.display()), e))?;
    drop(f);
    let out = vaina_pod::oci::command(runtime)
        .arg("--root")
        .arg(root)
        .arg("update")
        .arg("--resources")
        .arg(&file)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::failed(format!("run {}", runtime.display()), e));
    let _ = std::fs::remove_file(&file);
    let out = out?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // The kernel refuses a limit below current usage (EBUSY) or a bad value (EINVAL):
        // the caller's values, not vaina's failure.
        let invalid = msg.contains("device or resource busy")
            || msg.contains("invalid argument")
            || msg.contains("Invalid argument")
            || msg.contains("Device or resource busy");
        let m = format!("{} update {id}: {msg}", runtime.display());
        return Err(if invalid {
            Error::InvalidArgument(m)
        } else {
            Error::Internal(m)
        });
    }
    Ok(())
}

// ---- pod CIDR ----

/// The conflist vaina writes for the node's network, on `subnet`.
pub fn conflist_for(subnet: &ipnet::IpNet, data_dir: &str) -> String {
    vaina_plugins::defaults::default_conflist(data_dir)
        .replace("10.88.0.0/16", &subnet.trunc().to_string())
}

/// Parses kubelet's pod CIDR (one, or IPv4,IPv6 dual stack: the first is used).
pub fn parse_pod_cidr(cidr: &str) -> Result<ipnet::IpNet> {
    let first = cidr.split(',').next().unwrap_or("").trim();
    let net: ipnet::IpNet = first
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("pod CIDR {cidr:?}: {e}")))?;
    let max = match net {
        ipnet::IpNet::V4(_) => 30,
        ipnet::IpNet::V6(_) => 126,
    };
    if net.prefix_len() > max {
        return Err(Error::InvalidArgument(format!(
            "pod CIDR {cidr:?} is too small for a gateway and pods (/{max} at most)"
        )));
    }
    Ok(net)
}

/// Whether `text` is a conflist vaina wrote (its default, for any subnet), and that subnet.
pub fn own_conflist_subnet(text: &str, data_dir: &str) -> Option<ipnet::IpNet> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let subnet: ipnet::IpNet = v
        .pointer("/plugins/0/ipam/ranges/0/0/subnet")?
        .as_str()?
        .parse()
        .ok()?;
    (conflist_for(&subnet, data_dir) == text).then_some(subnet)
}

/// What UpdateRuntimeConfig did with a pod CIDR.
#[derive(Debug, PartialEq, Eq)]
pub enum PodCidrOutcome {
    /// Nothing asked (empty CIDR) or the config already uses it.
    Unchanged,
    /// The default conflist was rewritten; it is used from the next start of vainad.
    Rewritten(PathBuf),
    /// The CNI config is kept: why.
    Kept(String),
}

impl Runtime {
    /// UpdateRuntimeConfig's pod CIDR.
    pub fn update_pod_cidr(&self, cidr: &str) -> Result<PodCidrOutcome> {
        if cidr.trim().is_empty() {
            return Ok(PodCidrOutcome::Unchanged);
        }
        let net = parse_pod_cidr(cidr)?;
        let dir = &self.cfg.cni_conf_dir;
        let data_dir = self.cfg.ipam_data_dir.to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::failed(format!("read {}", dir.display()), e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
            })
            .collect();
        files.sort();
        let [only] = files.as_slice() else {
            return Ok(PodCidrOutcome::Kept(format!(
                "{} holds {} CNI configs, not only vaina's default",
                dir.display(),
                files.len()
            )));
        };
        let text = std::fs::read_to_string(only)
            .map_err(|e| Error::failed(format!("read {}", only.display()), e))?;
        let Some(current) = own_conflist_subnet(&text, &data_dir) else {
            return Ok(PodCidrOutcome::Kept(format!(
                "{} is not the default network vaina wrote",
                only.display()
            )));
        };
        if current == net.trunc() {
            return Ok(PodCidrOutcome::Unchanged);
        }
        let running = self
            .list()
            .iter()
            .filter(|s| s.state != SandboxState::NotReady)
            .count();
        if running > 0 {
            return Ok(PodCidrOutcome::Kept(format!(
                "{running} pod(s) are running on {current}"
            )));
        }
        crate::store::write_atomic(only, conflist_for(&net, &data_dir).as_bytes())?;
        Ok(PodCidrOutcome::Rewritten(only.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> LinuxContainerResources {
        LinuxContainerResources::default()
    }

    #[test]
    fn bad_resources_are_refused() {
        let cases: Vec<(LinuxContainerResources, &str)> = vec![
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: -5,
                    ..res()
                },
                "negative",
            ),
            (
                LinuxContainerResources {
                    memory_limit_in_bytes: 1024,
                    ..res()
                },
                "minimum",
            ),
            (
                LinuxContainerResources {
                    cpu_period: 10,
                    ..res()
                },
                "cpu_period",
            ),
            (
                LinuxContainerResources {
                    cpu_quota: 10,
                    ..res()
                },
                "cpu_quota",
            ),
            (
                LinuxContainerResources {
                    cpu_shares: 1,
                    ..res()
                },
                "cpu_shares",
            ),
            (
                LinuxContainerResources {
                    cpuset_cpus: "a-b".into(),
                    ..res()
                },
                "cpuset_cpus",
            ),
            (
                LinuxContainerResources {
                    cpuset_cpus: "3-1".into(),
                    ..res()
                },
                "cpuset_cpus",
            ),
        ];
        for (r, want) in cases {
            let e = oci_resources(&r, false).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)));
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
        let mut u = res();
        u.unified.insert("memory.high".into(), "1".into());
        assert!(oci_resources(&u, false).is_err());
        assert!(oci_resources(&u, true).is_ok());
    }

    #[test]
    fn good_resources_become_oci_json() {
        let r = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            cpuset_cpus: "0-1".into(),
            ..res()
        };
        let v = serde_json::to_value(oci_resources(&r, false).unwrap()).unwrap();
        assert_eq!(v["memory"]["limit"], 64 << 20);
        assert_eq!(v["cpu"]["quota"], 50_000);
        assert_eq!(v["cpu"]["period"], 100_000);
        assert_eq!(v["cpu"]["shares"], 512);
        assert_eq!(v["cpu"]["cpus"], "0-1");
    }

    #[test]
    fn pod_cidr_conflist() {
        assert!(parse_pod_cidr("10.244.1.0/24").is_ok());
        assert!(parse_pod_cidr("10.244.1.0/24,fd00::/64").is_ok());
        for bad in ["nope", "10.0.0.0/31", "300.1.1.1/24"] {
            let e = parse_pod_cidr(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        let net = parse_pod_cidr("10.244.1.0/24").unwrap();
        let text = conflist_for(&net, "/var/lib/cni/networks");
        assert!(text.contains("\"10.244.1.0/24\""));
        assert_eq!(
            own_conflist_subnet(&text, "/var/lib/cni/networks"),
            Some(net)
        );
        let default = vaina_plugins::defaults::default_conflist("/d");
        assert_eq!(
            own_conflist_subnet(&default, "/d").map(|n| n.to_string()),
            Some("10.88.0.0/16".into())
        );
        assert_eq!(
            own_conflist_subnet(&default.replace("cni0", "br9"), "/d"),
            None
        );
        assert_eq!(own_conflist_subnet(&default, "/other"), None);
    }
}
