//! Launching and stopping a pod's supervisor (`vaina-pod`), the small process that holds
//! the pod's UTS/IPC/PID namespaces (the `pause` role) and supervises its containers. It
//! runs in its own session, so it outlives `vainad`; the daemon finds it again by the pid
//! it wrote, checked against its command line (pids are reused).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};

pub const PID_FILE: &str = "supervisor.pid";
pub const SOCKET: &str = "supervisor.sock";

#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub id: String,
    /// The pod's state dir (pid file, socket, container records).
    pub dir: PathBuf,
    /// The pod's network namespace (None: the node's, hostNetwork).
    pub netns: Option<PathBuf>,
    pub hostname: Option<String>,
    pub uts: bool,
    pub ipc: bool,
    pub pid: bool,
}

/// Starts the supervisor and returns its pid once it is ready (namespaces set up, socket
/// listening). The launcher process exits when the supervisor is ready or failed.
pub fn launch(binary: &Path, spec: &LaunchSpec) -> Result<u32> {
    std::fs::create_dir_all(&spec.dir)
        .map_err(|e| Error::failed(format!("create {}", spec.dir.display()), e))?;
    let mut cmd = Command::new(binary);
    cmd.arg("--id").arg(&spec.id).arg("--dir").arg(&spec.dir);
    if let Some(ns) = &spec.netns {
        cmd.arg("--netns").arg(ns);
    }
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        cmd.arg("--hostname").arg(h);
    }
    for (on, flag) in [
        (spec.uts, "--uts"),
        (spec.ipc, "--ipc"),
        (spec.pid, "--pid"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::failed(format!("run pod supervisor {}", binary.display()), e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "pod supervisor of sandbox {} failed to start ({}): {}",
            spec.id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    read_pid(&spec.dir).ok_or_else(|| {
        Error::Internal(format!(
            "pod supervisor of sandbox {} started but wrote no pid",
            spec.id
        ))
    })
}

pub fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True when `pid` is the supervisor of sandbox `id` (not a recycled pid).
pub fn is_alive(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"vaina-pod")) && args.contains(&id.as_bytes())
        })
        .unwrap_or(false)
}

/// Kills the supervisor (SIGKILL: it holds no state the daemon needs) and waits until it
/// is gone. Already gone is success.
pub fn stop(pid: u32, id: &str) -> Result<()> {
    if !is_alive(pid, id) {
        return Ok(());
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // vainad is a child subreaper, so a supervisor it launched is its child: reap it
        // (ECHILD when it is not, e.g. launched by a previous daemon).
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        if !is_alive(pid, id) {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "pod supervisor {pid} of sandbox {id} did not exit after SIGKILL"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Reaps pod supervisors and pod inits that died as children of this process. `vainad` is a
/// child subreaper, so they come back to it when their launcher or supervisor exits; only
/// zombies with those names are waited for, so the exit statuses of the daemon's own
/// commands (OCI runtime, CNI plugins) stay with their callers.
pub fn reap_orphans() {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let mut f = tail.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if state == Some("Z") && ppid == Some(me) && comm.starts_with("vaina-pod") {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
    }
}
