//! Devices of a container: the CRI's `ContainerConfig.devices` → OCI `linux.devices` (the
//! nodes the runtime creates) and `linux.resources.devices` (the device cgroup's allow
//! rules), as containerd builds them. Privileged containers get every device of the host's
//! `/dev` and an allow-all rule.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1::Device;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use crate::error::{Error, Result};

/// Device nodes and cgroup rules for a container. The rules start with deny-all (the
/// runtime adds its own defaults: null, zero, full, tty, random, urandom, ptmx, pts).
pub fn for_container(
    devices: &[Device],
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut nodes = Vec::new();
    let mut rules = vec![rule(false, None, "rwm")?];
    if privileged {
        nodes = host_devices(Path::new("/dev"), Path::new("/dev"))?;
        rules.push(rule(true, None, "rwm")?);
    }
    for d in devices {
        let access = permissions(&d.permissions)?;
        if d.host_path.is_empty() {
            return Err(Error::InvalidArgument(
                "device without a host path".to_string(),
            ));
        }
        let container_path = if d.container_path.is_empty() {
            d.host_path.clone()
        } else {
            d.container_path.clone()
        };
        if !container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "device container path {container_path:?} is not absolute"
            )));
        }
        let host = Path::new(&d.host_path);
        let meta = std::fs::metadata(host).map_err(|e| {
            Error::InvalidArgument(format!("device host path {:?}: {e}", d.host_path))
        })?;
        let found = if meta.is_dir() {
            host_devices(host, Path::new(&container_path))?
        } else {
            match device(host, Path::new(&container_path))? {
                Some(dev) => vec![dev],
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "device host path {:?} is not a device",
                        d.host_path
                    )));
                }
            }
        };
        for dev in found {
            if !privileged {
                rules.push(
                    LinuxDeviceCgroupBuilder::default()
                        .allow(true)
                        .typ(dev.typ())
                        .major(dev.major())
                        .minor(dev.minor())
                        .access(access.clone())
                        .build()
                        .map_err(spec_err)?,
                );
            }
            nodes.retain(|n: &LinuxDevice| n.path() != dev.path());
            nodes.push(dev);
        }
    }
    Ok((nodes, rules))
}

/// "rwm" subsets; empty means all (kubelet always sends some).
fn permissions(p: &str) -> Result<String> {
    if p.is_empty() {
        return Ok("rwm".into());
    }
    let mut seen = String::new();
    for c in p.chars() {
        if !"rwm".contains(c) || seen.contains(c) {
            return Err(Error::InvalidArgument(format!(
                "invalid device permissions {p:?}: a subset of \"rwm\" expected"
            )));
        }
        seen.push(c);
    }
    Ok(p.to_string())
}

fn rule(allow: bool, typ: Option<LinuxDeviceType>, access: &str) -> Result<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access.to_string());
    if let Some(t) = typ {
        b = b.typ(t);
    }
    b.build().map_err(spec_err)
}

/// The device at `host` (following symlinks) as the node `container` path, or None when it
/// is not a character or block device.
fn device(host: &Path, container: &Path) -> Result<Option<LinuxDevice>> {
    let meta = std::fs::metadata(host)
        .map_err(|e| Error::InvalidArgument(format!("device {}: {e}", host.display())))?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(container.to_path_buf())
        .typ(typ)
        .major(libc::major(rdev) as i64)
        .minor(libc::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o7777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .map(Some)
        .map_err(spec_err)
}

/// Every device under `dir`, mapped under `container`; skips what containerd skips
/// (pts, shm, fd, mqueue and LXC/udev dirs, /dev/console).
fn host_devices(dir: &Path, container: &Path) -> Result<Vec<LinuxDevice>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::InvalidArgument(format!("device dir {}: {e}", dir.display())))?;
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let Ok(lmeta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if lmeta.is_dir() {
            if matches!(
                name.as_ref(),
                "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
            ) {
                continue;
            }
            out.extend(host_devices(&p, &container.join(name.as_ref()))?);
            continue;
        }
        if name == "console" || lmeta.file_type().is_symlink() {
            continue;
        }
        if let Ok(Some(d)) = device(&p, &container.join(name.as_ref())) {
            out.push(d);
        }
    }
    Ok(out)
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("invalid device: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(host: &str, container: &str, perms: &str) -> Device {
        Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: perms.into(),
        }
    }

    #[test]
    fn dev_null_maps_with_its_numbers() {
        let (nodes, rules) = for_container(&[dev("/dev/null", "/dev/xnull", "rw")], false).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].path(), Path::new("/dev/xnull"));
        assert_eq!(nodes[0].typ(), LinuxDeviceType::C);
        assert_eq!((nodes[0].major(), nodes[0].minor()), (1, 3));
        assert_eq!(rules.len(), 2);
        assert!(!rules[0].allow());
        assert!(rules[1].allow());
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
        assert_eq!((rules[1].major(), rules[1].minor()), (Some(1), Some(3)));
    }

    #[test]
    fn bad_devices_are_refused_by_name() {
        let e = for_container(&[dev("/nonexistent/dev", "/dev/x", "rw")], false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dev"), "{e}");
        let e = for_container(&[dev("/etc/hostname", "/dev/x", "rw")], false).unwrap_err();
        assert!(e.to_string().contains("not a device"), "{e}");
        let e = for_container(&[dev("/dev/null", "/dev/x", "rwx")], false).unwrap_err();
        assert!(e.to_string().contains("rwx"), "{e}");
        let e = for_container(&[dev("/dev/null", "/dev/x", "rr")], false).unwrap_err();
        assert!(e.to_string().contains("permissions"), "{e}");
        let e = for_container(&[dev("/dev/null", "x", "r")], false).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
    }

    #[test]
    fn privileged_gets_host_devices_and_allow_all() {
        let (nodes, rules) = for_container(&[], true).unwrap();
        assert!(nodes.iter().any(|n| n.path() == Path::new("/dev/null")));
        assert!(rules.iter().any(|r| r.allow() && r.major().is_none()));
    }
}
