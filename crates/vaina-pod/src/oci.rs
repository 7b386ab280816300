//! Running the OCI runtime binary. One host quirk is handled here for every caller (the
//! supervisor's `create`, the daemon's `exec` and `update`):
//!
//! crun 1.8 refuses to run on a cgroup v1 host that also mounts a cgroup2 hierarchy with
//! controllers at /sys/fs/cgroup/unified ("cgroups in hybrid mode not supported"), where
//! runc uses v1. On such a host crun is started in a private mount namespace without that
//! mount, so it sees plain cgroup v1 as runc does. It is the same process (set up between
//! fork and exec), so pids and parentage do not change.
//!
//! Only the commands that set up cgroups need that view. `start`, `kill`, `delete` and
//! `state` run as is ([`command_without_cgroups`]; checked on this host: `delete --force`
//! kills the container and removes its v1 cgroups), which also lets std spawn them without
//! forking the caller.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const UNIFIED: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// True when `runtime` is crun and this host has the hybrid layout crun 1.8 rejects.
pub fn needs_v1_view(runtime: &Path) -> bool {
    let is_crun = runtime
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("crun"));
    is_crun && hybrid_host()
}

/// The host's cgroup layout does not change while we run: read it once.
fn hybrid_host() -> bool {
    static HYBRID: OnceLock<bool> = OnceLock::new();
    *HYBRID.get_or_init(|| {
        std::fs::read_to_string(UNIFIED)
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false)
    })
}

/// A `Command` for the runtime's `start`, `kill`, `delete` and `state`, which set up no
/// cgroup and so need no workaround.
pub fn command_without_cgroups(runtime: &Path) -> Command {
    Command::new(runtime)
}

/// A `Command` for the OCI runtime binary (`create`, `exec`, `update`), with the
/// hybrid-cgroup workaround when needed.
pub fn command(runtime: &Path) -> Command {
    let mut cmd = Command::new(runtime);
    if needs_v1_view(runtime) {
        // SAFETY: only raw syscalls on static strings between fork and exec (no
        // allocation, no locks).
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH);
                Ok(())
            });
        }
    }
    cmd
}
