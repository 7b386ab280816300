//! The OCI runtime spec (`config.json`) of a container: the CRI container config merged
//! with the image config, joined to its pod's namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, MountPropagation, NamespaceMode};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_maskedpaths,
    get_default_mounts, get_default_readonly_paths,
};

use crate::error::{Error, Result};

/// What the spec is built from.
pub struct SpecInput<'a> {
    pub config: &'a ContainerConfig,
    pub image: &'a ImageConfiguration,
    pub rootfs: &'a Path,
    /// The pod's network namespace pin (None: the node's network).
    pub netns: Option<&'a Path>,
    /// The pod's namespaces, held by its supervisor (None: the node's).
    pub uts_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub pid_ns: Option<PathBuf>,
    /// Files bind-mounted into the container: (host file, container path).
    pub etc_files: Vec<(PathBuf, &'static str)>,
    pub cgroups_path: String,
}

/// containerd's default capability set.
const DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

pub fn build(input: &SpecInput) -> Result<Spec> {
    let c = input.config;
    let img = input.image.config().clone().unwrap_or_default();
    let sc = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();

    // Kubernetes semantics: command replaces ENTRYPOINT, args replace CMD; a command
    // without args drops CMD.
    let mut args: Vec<String> = if c.command.is_empty() {
        img.entrypoint().clone().unwrap_or_default()
    } else {
        c.command.clone()
    };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(img.cmd().clone().unwrap_or_default());
    }
    if args.is_empty() {
        return Err(Error::InvalidArgument(
            "container has no command: neither the config nor the image gives one".into(),
        ));
    }

    let mut env: Vec<(String, String)> = img
        .env()
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect();
    for kv in &c.envs {
        match env.iter_mut().find(|(k, _)| *k == kv.key) {
            Some(slot) => slot.1 = kv.value.clone(),
            None => env.push((kv.key.clone(), kv.value.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        // Like containerd: the pod's hostname.
        if let Some(h) = hostname_of(input) {
            env.push(("HOSTNAME".into(), h));
        }
    }

    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        img.working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }

    let (uid, gid, additional) = user(input, &img.user().clone().unwrap_or_default(), &sc)?;

    let caps: Vec<Capability> = if sc.privileged {
        all_caps()
    } else {
        let mut caps: Vec<Capability> = DEFAULT_CAPS.to_vec();
        if let Some(cc) = &sc.capabilities {
            for add in &cc.add_capabilities {
                if add.eq_ignore_ascii_case("ALL") {
                    caps = all_caps();
                } else {
                    let cap = parse_cap(add)?;
                    if !caps.contains(&cap) {
                        caps.push(cap);
                    }
                }
            }
            for drop in &cc.drop_capabilities {
                if drop.eq_ignore_ascii_case("ALL") {
                    caps.clear();
                } else {
                    let cap = parse_cap(drop)?;
                    caps.retain(|x| *x != cap);
                }
            }
        }
        caps
    };
    let capset: oci_spec::runtime::Capabilities = caps.iter().cloned().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capset.clone())
        .effective(capset.clone())
        .permitted(capset)
        .build()
        .map_err(spec_err)?;

    // Kubernetes never lowers the score below the runtime's own: lowering needs
    // CAP_SYS_RESOURCE, which this kernel may deny (containerd's restrict_oom_score_adj).
    let own_adj: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let resources_cfg = c.linux.as_ref().and_then(|l| l.resources.clone());
    let oom = resources_cfg
        .as_ref()
        .map(|r| r.oom_score_adj.max(own_adj))
        .unwrap_or(own_adj);

    let process = ProcessBuilder::default()
        .terminal(c.tty)
        .args(args)
        .env(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(additional)
                .build()
                .map_err(spec_err)?,
        )
        .capabilities(capabilities)
        .no_new_privileges(sc.no_new_privs)
        .oom_score_adj(oom as i32)
        .build()
        .map_err(spec_err)?;

    let mut mounts: Vec<Mount> = get_default_mounts();
    if sc.privileged {
        // Privileged containers see /sys read-write.
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys") {
                m.set_options(Some(vec![
                    "nosuid".into(),
                    "noexec".into(),
                    "nodev".into(),
                    "rw".into(),
                ]));
            }
        }
    }
    for (src, dst) in &input.etc_files {
        mounts.push(bind(src, Path::new(dst), false, "rprivate")?);
    }
    for m in &c.mounts {
        if !m.container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mount container path {:?} is not absolute",
                m.container_path
            )));
        }
        if m.host_path.is_empty() || !Path::new(&m.host_path).exists() {
            return Err(Error::InvalidArgument(format!(
                "mount host path {:?} does not exist",
                m.host_path
            )));
        }
        let prop = match MountPropagation::try_from(m.propagation)
            .unwrap_or(MountPropagation::PropagationPrivate)
        {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationHostToContainer => "rslave",
            MountPropagation::PropagationBidirectional => "rshared",
        };
        mounts.push(bind(
            Path::new(&m.host_path),
            Path::new(&m.container_path),
            m.readonly,
            prop,
        )?);
    }

    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Mount, None)?,
        ns(LinuxNamespaceType::Cgroup, None)?,
    ];
    if input.uts_ns.is_some() {
        namespaces.push(ns(LinuxNamespaceType::Uts, path(&input.uts_ns))?);
    }
    if let Some(netns) = input.netns {
        namespaces.push(ns(
            LinuxNamespaceType::Network,
            Some(netns.display().to_string()),
        )?);
    }
    if input.ipc_ns.is_some() {
        namespaces.push(ns(LinuxNamespaceType::Ipc, path(&input.ipc_ns))?);
    }
    let pid_mode = sc
        .namespace_options
        .as_ref()
        .map(|o| NamespaceMode::try_from(o.pid).unwrap_or(NamespaceMode::Pod))
        .unwrap_or(NamespaceMode::Pod);
    match pid_mode {
        NamespaceMode::Pod if input.pid_ns.is_some() => {
            namespaces.push(ns(LinuxNamespaceType::Pid, path(&input.pid_ns))?)
        }
        NamespaceMode::Node => {}
        _ => namespaces.push(ns(LinuxNamespaceType::Pid, None)?),
    }

    let mut res = LinuxResourcesBuilder::default();
    if let Some(r) = &resources_cfg {
        let mut cpu = LinuxCpuBuilder::default();
        if r.cpu_shares > 0 {
            cpu = cpu.shares(r.cpu_shares as u64);
        }
        if r.cpu_quota > 0 {
            cpu = cpu.quota(r.cpu_quota);
        }
        if r.cpu_period > 0 {
            cpu = cpu.period(r.cpu_period as u64);
        }
        if !r.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(r.cpuset_cpus.clone());
        }
        res = res.cpu(cpu.build().map_err(spec_err)?);
        if r.memory_limit_in_bytes > 0 {
            res = res.memory(
                LinuxMemoryBuilder::default()
                    .limit(r.memory_limit_in_bytes)
                    .build()
                    .map_err(spec_err)?,
            );
        }
    }

    let (device_nodes, device_rules) = crate::devices::for_container(&c.devices, sc.privileged)?;
    res = res.devices(device_rules);
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(res.build().map_err(spec_err)?)
        .cgroups_path(PathBuf::from(&input.cgroups_path));
    if !sc.privileged {
        linux = linux
            .masked_paths(if sc.masked_paths.is_empty() {
                get_default_maskedpaths()
            } else {
                sc.masked_paths.clone()
            })
            .readonly_paths(if sc.readonly_paths.is_empty() {
                get_default_readonly_paths()
            } else {
                sc.readonly_paths.clone()
            });
    }
    if let Some(seccomp) = crate::seccomp::for_container(&sc, &caps)? {
        linux = linux.seccomp(seccomp);
    }
    if !device_nodes.is_empty() {
        linux = linux.devices(device_nodes);
    }

    let annotations: HashMap<String, String> = c.annotations.clone().into_iter().collect();
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(sc.readonly_rootfs)
                .build()
                .map_err(spec_err)?,
        )
        .process(process)
        .mounts(mounts)
        .annotations(annotations)
        .linux(linux.build().map_err(spec_err)?)
        .build()
        .map_err(spec_err)
}

fn hostname_of(input: &SpecInput) -> Option<String> {
    input
        .etc_files
        .iter()
        .find(|(_, d)| *d == "/etc/hostname")
        .and_then(|(s, _)| std::fs::read_to_string(s).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn bind(src: &Path, dst: &Path, readonly: bool, propagation: &str) -> Result<Mount> {
    MountBuilder::default()
        .destination(dst)
        .typ("bind")
        .source(src)
        .options(vec![
            "rbind".to_string(),
            if readonly { "ro" } else { "rw" }.to_string(),
            propagation.to_string(),
        ])
        .build()
        .map_err(spec_err)
}

fn ns(typ: LinuxNamespaceType, path: Option<String>) -> Result<oci_spec::runtime::LinuxNamespace> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    b.build().map_err(spec_err)
}

fn parse_cap(name: &str) -> Result<Capability> {
    let n = name.to_ascii_uppercase();
    let n = if n.starts_with("CAP_") {
        n
    } else {
        format!("CAP_{n}")
    };
    serde_json::from_value(serde_json::Value::String(n.clone()))
        .map_err(|_| Error::InvalidArgument(format!("unknown capability {name:?}")))
}

/// Every capability the runtime itself may grant: the known ones within its bounding set
/// (containerd's `WithAllCurrentCapabilities`; a sandboxed host may lack some, and asking
/// for them makes the OCI runtime's capset fail).
fn all_caps() -> Vec<Capability> {
    use strum_like::ALL;
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL.iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, n)| serde_json::from_value(serde_json::Value::String((*n).into())).ok())
        .collect()
}

/// Capability names the kernel of this era knows, by number (CAP_CHOWN = 0 …
/// CAP_CHECKPOINT_RESTORE = 40).
mod strum_like {
    pub const ALL: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
}

/// uid, gid and supplemental groups: the CRI's run_as_* override the image's USER; names
/// resolve through the container's own /etc/passwd and /etc/group.
fn user(
    input: &SpecInput,
    image_user: &str,
    sc: &k8s_cri::v1::LinuxContainerSecurityContext,
) -> Result<(u32, u32, Vec<u32>)> {
    let passwd = std::fs::read_to_string(input.rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(input.rootfs.join("etc/group")).unwrap_or_default();
    let lookup_user = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && (f[0] == name || f[2] == name))
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    let lookup_group = |name: &str| -> Option<u32> {
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        group.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name)
                .then(|| f[2].parse().ok())
                .flatten()
        })
    };
    let (spec_user, spec_group) = match image_user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image_user.to_string(), None),
    };
    let (mut uid, mut gid) = (0u32, 0u32);
    let user_name = if let Some(u) = &sc.run_as_user {
        Some(u.value.to_string())
    } else if !sc.run_as_username.is_empty() {
        Some(sc.run_as_username.clone())
    } else if !spec_user.is_empty() {
        Some(spec_user)
    } else {
        None
    };
    if let Some(name) = user_name {
        match lookup_user(&name) {
            Some((u, g)) => (uid, gid) = (u, g),
            None => match name.parse::<u32>() {
                Ok(u) => uid = u,
                Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "user {name:?} not found in the image's /etc/passwd"
                    )));
                }
            },
        }
    }
    if let Some(g) = &sc.run_as_group {
        gid = g.value as u32;
    } else if let Some(g) = spec_group {
        gid = lookup_group(&g).ok_or_else(|| {
            Error::InvalidArgument(format!("group {g:?} not found in the image's /etc/group"))
        })?;
    }
    let additional: Vec<u32> = sc.supplemental_groups.iter().map(|g| *g as u32).collect();
    Ok((uid, gid, additional))
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("invalid container spec: {e}"))
}
