//! Container and pod statistics for the CRI's stats RPCs, read from the cgroups the OCI
//! runtime made, the container's overlay upper dir and the pod's network namespace.
//!
//! - cgroups: v1 (`cpuacct/<path>/cpuacct.usage`, `memory/<path>/memory.usage_in_bytes`,
//!   `memory.stat`'s `total_*`, `pids/<path>/pids.current`) or, on a pure v2 host,
//!   (`cpu.stat`, `memory.current`, `memory.stat`, `pids.current`), whichever this host
//!   mounts at `/sys/fs/cgroup`. A hybrid host's cgroup2 at `/sys/fs/cgroup/unified` has no
//!   controllers the runtimes use (crun and runc run v1 there), so v1 wins. A container's
//!   cgroup is `<controller mount><cgroupsPath>` with the `cgroupsPath` of its bundle.
//! - `usage_nano_cores` is computed from the previous sample of the same container or pod
//!   (containerd's way); the first sample has none.
//! - working set = usage − inactive file (kubelet's and cadvisor's definition).
//! - the pod's network: `/proc/<supervisor pid>/net/dev` shows the pod's netns.
//!
//! A stopped container has no cgroup: its stats carry what is known (the writable layer).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::container::{ContainerRecord, ContainerState};
use crate::error::{Error, Result};
use crate::sandbox::{Runtime, SandboxRecord, SandboxState, now_nanos};

#[derive(Debug, Clone, Default)]
pub struct CpuStats {
    pub timestamp: i64,
    /// Cumulative CPU time.
    pub usage_core_nano_seconds: u64,
    /// Average use since the previous sample, in billionths of a core.
    pub usage_nano_cores: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryStats {
    pub timestamp: i64,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// limit − working set, when limited.
    pub available_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct FsStats {
    pub timestamp: i64,
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

#[derive(Debug, Clone, Default)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

#[derive(Debug, Clone)]
pub struct ContainerStats {
    pub record: ContainerRecord,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub writable_layer: Option<FsStats>,
}

#[derive(Debug, Clone)]
pub struct PodStats {
    pub record: SandboxRecord,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    /// (timestamp, interfaces; the pod's default interface is `eth0`).
    pub network: Option<(i64, Vec<InterfaceStats>)>,
    pub processes: Option<(i64, u64)>,
    pub containers: Vec<ContainerStats>,
}

/// The cgroup hierarchy of this host.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// controller → mount point.
    V1(HashMap<String, PathBuf>),
    V2(PathBuf),
}

impl Hierarchy {
    pub fn host() -> &'static Hierarchy {
        static H: OnceLock<Hierarchy> = OnceLock::new();
        H.get_or_init(|| {
            Hierarchy::from_mountinfo(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            )
        })
    }

    pub fn from_mountinfo(text: &str) -> Hierarchy {
        let mut v1 = HashMap::new();
        let mut v2: Option<PathBuf> = None;
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mountpoint = match pre.split(' ').nth(4) {
                Some(m) => PathBuf::from(m.replace("\\040", " ")),
                None => continue,
            };
            let mut post = post.split(' ');
            let (fstype, _src, opts) = (post.next(), post.next(), post.next().unwrap_or(""));
            match fstype {
                Some("cgroup2") if v2.is_none() || mountpoint == Path::new("/sys/fs/cgroup") => {
                    v2 = Some(mountpoint);
                }
                Some("cgroup") => {
                    for o in opts.split(',') {
                        if matches!(o, "cpu" | "cpuacct" | "memory" | "pids" | "cpuset") {
                            v1.entry(o.to_string())
                                .or_insert_with(|| mountpoint.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        match v2 {
            Some(p) if v1.is_empty() || p == Path::new("/sys/fs/cgroup") => Hierarchy::V2(p),
            _ => Hierarchy::V1(v1),
        }
    }

    /// The directory of `controller` for cgroups path `path` (v2: one directory).
    pub fn dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        let rel = path.trim_start_matches('/');
        match self {
            Hierarchy::V1(m) => m.get(controller).map(|mp| mp.join(rel)),
            Hierarchy::V2(root) => Some(root.join(rel)),
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2(_))
    }
}

/// What one cgroup says.
#[derive(Debug, Clone, Default)]
pub struct CgroupSample {
    pub cpu_ns: Option<u64>,
    pub memory: Option<MemoryStats>,
    pub limit: Option<u64>,
    pub pids: Option<u64>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_kv(p: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(p).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Reads the cgroup at `path` (None: it does not exist, e.g. the container is stopped).
pub fn sample_cgroup(h: &Hierarchy, path: &str) -> Option<CgroupSample> {
    let ts = now_nanos();
    let mut s = CgroupSample::default();
    if h.is_v2() {
        let dir = h.dir("", path)?;
        if !dir.is_dir() {
            return None;
        }
        s.cpu_ns = read_kv(&dir.join("cpu.stat"))
            .and_then(|m| m.get("usage_usec").copied())
            .map(|u| u * 1000);
        if let (Some(usage), Some(stat)) = (
            read_u64(&dir.join("memory.current")),
            read_kv(&dir.join("memory.stat")),
        ) {
            let g = |k: &str| stat.get(k).copied().unwrap_or(0);
            s.memory = Some(MemoryStats {
                timestamp: ts,
                usage_bytes: usage,
                working_set_bytes: usage.saturating_sub(g("inactive_file")),
                rss_bytes: g("anon"),
                page_faults: g("pgfault"),
                major_page_faults: g("pgmajfault"),
                available_bytes: None,
            });
        }
        s.limit = std::fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|v| v.trim().parse().ok());
        s.pids = read_u64(&dir.join("pids.current"));
    } else {
        let mem = h.dir("memory", path);
        let cpu = h.dir("cpuacct", path);
        if !mem.as_ref().is_some_and(|d| d.is_dir()) && !cpu.as_ref().is_some_and(|d| d.is_dir()) {
            return None;
        }
        s.cpu_ns = cpu.and_then(|d| read_u64(&d.join("cpuacct.usage")));
        if let Some(d) = mem {
            if let (Some(usage), Some(stat)) = (
                read_u64(&d.join("memory.usage_in_bytes")),
                read_kv(&d.join("memory.stat")),
            ) {
                let g = |k: &str| {
                    stat.get(&format!("total_{k}"))
                        .or_else(|| stat.get(k))
                        .copied()
                        .unwrap_or(0)
                };
                s.memory = Some(MemoryStats {
                    timestamp: ts,
                    usage_bytes: usage,
                    working_set_bytes: usage.saturating_sub(g("inactive_file")),
                    rss_bytes: g("rss"),
                    page_faults: g("pgfault"),
                    major_page_faults: g("pgmajfault"),
                    available_bytes: None,
                });
            }
            // v1 says "unlimited" with a huge page-aligned number.
            s.limit = read_u64(&d.join("memory.limit_in_bytes")).filter(|l| *l < (1 << 62));
        }
        s.pids = h
            .dir("pids", path)
            .and_then(|d| read_u64(&d.join("pids.current")));
    }
    if let (Some(m), Some(limit)) = (s.memory.as_mut(), s.limit) {
        m.available_bytes = Some(limit.saturating_sub(m.working_set_bytes));
    }
    Some(s)
}

/// Previous CPU samples: key → (timestamp, cumulative ns).
fn previous() -> &'static Mutex<HashMap<String, (i64, u64)>> {
    static P: OnceLock<Mutex<HashMap<String, (i64, u64)>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cpu_stats(key: &str, usage: u64) -> CpuStats {
    let ts = now_nanos();
    let mut prev = previous().lock().unwrap();
    let nano_cores = match prev.get(key) {
        Some(&(pts, pusage)) if ts > pts && usage >= pusage => {
            Some(((usage - pusage) as u128 * 1_000_000_000 / (ts - pts) as u128) as u64)
        }
        _ => None,
    };
    prev.insert(key.to_string(), (ts, usage));
    CpuStats {
        timestamp: ts,
        usage_core_nano_seconds: usage,
        usage_nano_cores: nano_cores,
    }
}

/// Forgets the samples of containers and pods that are gone.
fn prune(live: &[String]) {
    previous()
        .lock()
        .unwrap()
        .retain(|k, _| live.iter().any(|l| k.ends_with(l.as_str())));
}

/// Bytes (allocated blocks) and inodes under `dir`, not crossing into other filesystems.
pub fn disk_usage(dir: &Path) -> Option<(u64, u64)> {
    let root = std::fs::symlink_metadata(dir).ok()?;
    let dev = root.dev();
    let mut bytes = root.blocks() * 512;
    let mut inodes = 1u64;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some((bytes, inodes))
}

/// `/proc/<pid>/net/dev`: the interfaces of pid's network namespace, without `lo`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() < 16 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

impl Runtime {
    /// The cgroups path a container was created with (from its bundle's config.json).
    fn cgroups_path(&self, r: &ContainerRecord) -> Option<String> {
        let p = self
            .cfg
            .root
            .join("containers")
            .join(&r.id)
            .join("bundle/config.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v.pointer("/linux/cgroupsPath")?.as_str().map(String::from)
    }

    fn writable_layer(&self, r: &ContainerRecord) -> Option<FsStats> {
        let containers = self.cfg.root.join("containers");
        let (used_bytes, inodes_used) = disk_usage(&containers.join(&r.id).join("upper"))?;
        Some(FsStats {
            timestamp: now_nanos(),
            mountpoint: containers.display().to_string(),
            used_bytes,
            inodes_used,
        })
    }

    fn stats_of(&self, r: ContainerRecord) -> (ContainerStats, Option<CgroupSample>) {
        let sample = if matches!(r.state, ContainerState::Running | ContainerState::Created) {
            self.cgroups_path(&r)
                .and_then(|p| sample_cgroup(Hierarchy::host(), &p))
        } else {
            None
        };
        let cpu = sample
            .as_ref()
            .and_then(|s| s.cpu_ns)
            .map(|u| cpu_stats(&format!("c:{}", r.id), u));
        let memory = sample.as_ref().and_then(|s| s.memory.clone());
        let writable_layer = self.writable_layer(&r);
        (
            ContainerStats {
                record: r,
                cpu,
                memory,
                writable_layer,
            },
            sample,
        )
    }

    /// ContainerStats of one container.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let r = self.container(id)?;
        Ok(self.stats_of(r).0)
    }

    /// Stats of every container `keep` selects.
    pub fn list_container_stats(
        &self,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> Vec<ContainerStats> {
        let all = self.list_containers();
        self.prune_samples(&all);
        all.into_iter()
            .filter(|c| keep(c))
            .map(|c| self.stats_of(c).0)
            .collect()
    }

    fn prune_samples(&self, containers: &[ContainerRecord]) {
        let mut live: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        live.extend(self.list().into_iter().map(|s| s.id));
        prune(&live);
    }

    /// PodSandboxStats of one pod: its cgroup (the sandbox's cgroup parent when kubelet
    /// gave one, else the sum of its containers'), network and containers.
    pub fn pod_stats(&self, id: &str) -> Result<PodStats> {
        let record = self.get(id)?;
        let mut containers = Vec::new();
        let mut sum = CgroupSample::default();
        let mut any = false;
        let mut ids = self.containers_of(&record.id);
        ids.sort();
        for cid in ids {
            let Ok(c) = self.container(&cid) else {
                continue;
            };
            let (st, sample) = self.stats_of(c);
            if let Some(s) = sample {
                any = true;
                add(&mut sum, &s);
            }
            containers.push(st);
        }
        let parent = record
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty());
        let sample = match parent.and_then(|p| sample_cgroup(Hierarchy::host(), &p)) {
            Some(s) => Some(s),
            None if any => Some(sum),
            None => None,
        };
        let cpu = sample
            .as_ref()
            .and_then(|s| s.cpu_ns)
            .map(|u| cpu_stats(&format!("p:{}", record.id), u));
        let memory = sample.as_ref().and_then(|s| s.memory.clone());
        let processes = sample
            .as_ref()
            .and_then(|s| s.pids)
            .map(|n| (now_nanos(), n));
        let network = if record.state == SandboxState::Ready && !record.host_network() {
            record.supervisor_pid.and_then(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
                    .ok()
                    .map(|t| (now_nanos(), parse_net_dev(&t)))
            })
        } else {
            None
        };
        Ok(PodStats {
            record,
            cpu,
            memory,
            network,
            processes,
            containers,
        })
    }

    /// Stats of every pod `keep` selects.
    pub fn list_pod_stats(&self, keep: impl Fn(&SandboxRecord) -> bool) -> Vec<PodStats> {
        let pods = self.list();
        self.prune_samples(&self.list_containers());
        pods.into_iter()
            .filter(|p| keep(p))
            .filter_map(|p| match self.pod_stats(&p.id) {
                Ok(s) => Some(s),
                Err(Error::NotFound { .. }) => None,
                Err(e) => {
                    tracing::warn!(pod = %p.id, error = %e.chain(), "pod stats");
                    None
                }
            })
            .collect()
    }
}

fn add(sum: &mut CgroupSample, s: &CgroupSample) {
    let plus = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    sum.cpu_ns = plus(sum.cpu_ns, s.cpu_ns);
    sum.pids = plus(sum.pids, s.pids);
    if let Some(m) = &s.memory {
        let t = sum.memory.get_or_insert_with(|| MemoryStats {
            timestamp: m.timestamp,
            ..MemoryStats::default()
        });
        t.usage_bytes += m.usage_bytes;
        t.working_set_bytes += m.working_set_bytes;
        t.rss_bytes += m.rss_bytes;
        t.page_faults += m.page_faults;
        t.major_page_faults += m.major_page_faults;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_host_reads_v1() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let h = Hierarchy::from_mountinfo(mi);
        assert!(!h.is_v2());
        assert_eq!(
            h.dir("cpuacct", "/vaina/abc").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/vaina/abc")
        );
        assert_eq!(
            h.dir("memory", "/vaina/abc").unwrap(),
            Path::new("/sys/fs/cgroup/memory/vaina/abc")
        );
    }

    #[test]
    fn pure_v2_host() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::from_mountinfo(mi);
        assert!(h.is_v2());
        assert_eq!(
            h.dir("memory", "/vaina/x").unwrap(),
            Path::new("/sys/fs/cgroup/vaina/x")
        );
    }

    #[test]
    fn net_dev_parses() {
        let t = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    2000      20    3    0    0     0          0         0     1000      10    4    0    0     0       0          0
";
        let v = parse_net_dev(t);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "eth0");
        assert_eq!(
            (v[0].rx_bytes, v[0].rx_errors, v[0].tx_bytes, v[0].tx_errors),
            (2000, 3, 1000, 4)
        );
    }

    #[test]
    fn nano_cores_from_the_previous_sample() {
        let a = cpu_stats("test:x", 1000);
        assert!(a.usage_nano_cores.is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = cpu_stats("test:x", 1000 + 10_000_000);
        let n = b.usage_nano_cores.unwrap();
        assert!(n > 100_000_000 && n <= 500_000_000, "{n}");
    }

    #[test]
    fn disk_usage_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let (bytes, inodes) = disk_usage(d.path()).unwrap();
        assert_eq!(inodes, 3);
        assert!(bytes >= 10_000, "{bytes}");
    }
}
