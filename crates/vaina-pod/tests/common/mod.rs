//! Fixtures for the supervisor tests: launching `vaina-pod` inside a throwaway node, OCI
//! bundles made from busybox, and guards that leave no process, container or directory
//! behind, even when a test panics.
//!
//! The test process makes itself a child subreaper: a launched supervisor is the launcher's
//! child, and when the launcher exits it would go to PID 1, which on some machines (this CI
//! VM) never reaps. As subreaper the test reaps its supervisors (and what they leave) itself,
//! waiting on known PIDs only so that parallel tests never steal each other's children.

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde_json::json;
use vaina_pod::protocol::{self, Client, ContainerState, PodInfo, Request, Response};
use vaina_testkit::Node;

pub const BIN: &str = env!("CARGO_BIN_EXE_vaina-pod");

/// crun, or a wrapper around it on hosts where crun 1.8 refuses to run: cgroup v1 with a
/// cgroup2 mount at /sys/fs/cgroup/unified that has controllers ("cgroups in hybrid mode not
/// supported"). The wrapper runs crun in a private mount namespace without that mount, so crun
/// sees plain cgroup v1 (as runc does); it is the same process (`exec`), so PIDs and
/// parentage are unchanged. Written into `dir`.
pub fn crun_in(dir: &Path) -> Option<PathBuf> {
    let crun = which("crun")?;
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let hybrid_with_controllers = std::fs::read_to_string(unified)
        .map(|c| !c.trim().is_empty())
        .unwrap_or(false);
    if !hybrid_with_controllers {
        return Some(crun);
    }
    let wrapper = dir.join("crun-cgroup-v1");
    if !wrapper.exists() {
        let script = format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'umount /sys/fs/cgroup/unified 2>/dev/null; exec {} \"$@\"' crun \"$@\"\n",
            crun.display()
        );
        std::fs::write(&wrapper, script).ok()?;
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .ok()?;
    }
    Some(wrapper)
}

pub fn runc() -> Option<PathBuf> {
    which("runc")
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// True when the test can run: root (namespaces) and the process made a subreaper.
pub fn setup() -> bool {
    if !vaina_testkit::can_run_ns_tests() {
        return false;
    }
    nix::sys::prctl::set_child_subreaper(true).expect("become child subreaper");
    true
}

/// Runs the launcher with `args`, stdin on /dev/null, and collects its output. Returns once
/// the launcher exited (the supervisor does not hold its stdio).
pub fn launch(args: &[OsString]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vaina-pod")
}

/// PIDs of processes whose command line mentions `needle` (a test's unique directory).
pub fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A running supervisor and everything the test made for it. Dropping it deletes the
/// containers (through the runtime), kills and reaps the supervisor, the pod's PID 1 and any
/// container init left to us, then removes the node (netns) and its directory.
pub struct PodGuard {
    pub pid: i32,
    pub info: PodInfo,
    pub dir: PathBuf,
    pub runtime_root: PathBuf,
    /// (runtime, container id, init pid once known) to delete on drop.
    containers: Vec<(PathBuf, String, Option<u32>)>,
    pub pod_ns: vaina_testkit::Pod,
    // Dropped last: the node's temp dir holds `dir`.
    pub node: Node,
}

pub struct LaunchOptions {
    pub uts: bool,
    pub ipc: bool,
    pub pid: bool,
    pub hostname: Option<&'static str>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            uts: true,
            ipc: true,
            pid: true,
            hostname: Some("pod-host"),
        }
    }
}

impl PodGuard {
    /// Launches a supervisor for a pod in a fresh node, joined to a fresh pod netns.
    pub fn launch(opts: LaunchOptions) -> PodGuard {
        let node = Node::new();
        let pod_ns = node.pod();
        let dir = node.path("pod");
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            "pod1".into(),
            "--dir".into(),
            dir.clone().into(),
            "--netns".into(),
            pod_ns.path().into(),
        ];
        for (on, flag) in [
            (opts.uts, "--uts"),
            (opts.ipc, "--ipc"),
            (opts.pid, "--pid"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        if let Some(h) = opts.hostname {
            args.push("--hostname".into());
            args.push(h.into());
        }
        let out = launch(&args);
        let pid_file = protocol::pid_path(&dir);
        // Reap whatever exists before asserting, so a failed launch leaves nothing either.
        let pid: Option<i32> = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        assert!(
            out.status.success(),
            "launch failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = pid.expect("pid file written before the launcher exits");
        let mut guard = PodGuard {
            pid,
            info: PodInfo {
                protocol: 0,
                pid: pid as u32,
                init_pid: None,
                namespaces: Default::default(),
            },
            runtime_root: node.path("runtime-root"),
            dir,
            containers: Vec::new(),
            pod_ns,
            node,
        };
        match guard.call(&Request::Info) {
            Response::Info(info) => guard.info = info,
            other => panic!("info: {other:?}"),
        }
        guard
    }

    pub fn crun(&self) -> Option<PathBuf> {
        crun_in(self.node.root())
    }

    pub fn socket(&self) -> PathBuf {
        protocol::socket_path(&self.dir)
    }

    pub fn client(&self) -> Client {
        Client::connect(self.socket())
            .expect("connect to supervisor")
            .with_timeout(Duration::from_secs(20))
    }

    pub fn call(&self, req: &Request) -> Response {
        self.client().call(req).expect("call supervisor")
    }

    pub fn state(&self) -> Vec<ContainerState> {
        match self.call(&Request::State) {
            Response::State { containers } => containers,
            other => panic!("state: {other:?}"),
        }
    }

    pub fn container(&self, id: &str) -> Option<ContainerState> {
        self.state().into_iter().find(|c| c.id == id)
    }

    /// Waits until container `id` is reported exited.
    pub fn wait_exited(&self, id: &str) -> ContainerState {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.container(id).filter(|c| c.exited) {
                return c;
            }
            assert!(Instant::now() < deadline, "container {id} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Registers a container for deletion on drop (before it is created, so that a failed
    /// or interrupted create is cleaned up too).
    pub fn track(&mut self, runtime: &Path, id: &str) {
        self.containers.push((runtime.into(), id.into(), None));
    }

    pub fn set_pid(&mut self, id: &str, pid: u32) {
        if let Some(c) = self.containers.iter_mut().find(|c| c.1 == id) {
            c.2 = Some(pid);
        }
    }

    /// `Create` through the socket, with the container tracked for cleanup.
    pub fn create(&mut self, runtime: &Path, id: &str, bundle: &Path, log: &Path) -> Response {
        self.track(runtime, id);
        let resp = self.call(&self.create_request(runtime, id, bundle, log));
        if let Response::Created { pid } = resp {
            self.set_pid(id, pid);
        }
        resp
    }

    pub fn create_request(&self, runtime: &Path, id: &str, bundle: &Path, log: &Path) -> Request {
        Request::Create {
            id: id.into(),
            runtime: runtime.into(),
            runtime_root: self.runtime_root.clone(),
            bundle: bundle.into(),
            log_path: log.into(),
            stdin: false,
            stdin_once: false,
            tty: false,
        }
    }

    /// Runs `<runtime> --root R <args…>` and returns its output.
    pub fn runtime(&self, runtime: &Path, args: &[&str]) -> Output {
        Command::new(runtime)
            .arg("--root")
            .arg(&self.runtime_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run OCI runtime")
    }

    pub fn runtime_ok(&self, runtime: &Path, args: &[&str]) {
        let out = self.runtime(runtime, args);
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            runtime.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes an OCI bundle running `args` in this pod's namespaces.
    pub fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let ns = &self.info.namespaces;
        let mut namespaces = vec![json!({"type": "mount"})];
        for (kind, path) in [
            ("network", &ns.network),
            ("uts", &ns.uts),
            ("ipc", &ns.ipc),
            ("pid", &ns.pid),
        ] {
            match path {
                Some(p) => namespaces.push(json!({"type": kind, "path": p})),
                // A pod without its own PID namespace: each container gets one.
                None if kind == "pid" => namespaces.push(json!({"type": "pid"})),
                None => {}
            }
        }
        make_bundle(
            &self.node.path(&format!("bundles/{name}")),
            args,
            namespaces,
        )
    }

    /// Kills the supervisor now and reaps it (for tests of what survives it).
    pub fn kill_supervisor(&mut self) {
        kill_child(self.pid);
    }
}

impl Drop for PodGuard {
    /// Never panics (a panic while unwinding aborts the whole test binary, skipping every
    /// other guard's cleanup).
    fn drop(&mut self) {
        for (runtime, id, _) in &self.containers {
            let _ = Command::new(runtime)
                .arg("--root")
                .arg(&self.runtime_root)
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .output();
        }
        kill_child(self.pid);
        // Once the supervisor is reaped, its children (the pod's PID 1, container inits not
        // yet reaped) have been handed to us.
        if let Some(init) = self.info.init_pid {
            kill_child(init as i32);
        }
        for (_, _, pid) in &self.containers {
            if let Some(pid) = pid {
                kill_child(*pid as i32);
            }
        }
        // A test that leaves a process behind fails (unless it is failing already).
        if !std::thread::panicking() {
            let mut left = processes_mentioning(&self.dir);
            left.extend(
                self.containers
                    .iter()
                    .filter_map(|c| c.2)
                    .map(|p| p as i32)
                    .filter(|p| Path::new(&format!("/proc/{p}")).exists()),
            );
            assert!(left.is_empty(), "processes left behind: {left:?}");
        }
    }
}

/// Kills and reaps `pid` if it is our child; a PID that is not (already reaped, possibly
/// reused since) is left alone.
pub fn kill_child(pid: i32) {
    if parent_of(pid) == Some(std::process::id() as i32) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        reap(pid);
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Waits for `pid` if it is our child; returns at once if it is not.
pub fn reap(pid: i32) {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// A bundle at `dir`: `rootfs/bin/busybox` with applet links, and a config.json that runs
/// `args` in the given namespaces, without a terminal and without resource limits.
pub fn make_bundle(dir: &Path, args: &[&str], namespaces: Vec<serde_json::Value>) -> PathBuf {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox");
    for applet in ["sh", "sleep", "echo", "cat", "hostname", "head", "yes"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["proc", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
    }
    // A cgroup of its own: the runtime's default is /<container id>, which tests running in
    // parallel with the same id would share (and `delete --force` kills a whole cgroup).
    let cgroup = format!(
        "/vaina-pod-test{}",
        dir.to_string_lossy().replace(['/', '.'], "-")
    );
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=1m"]}
        ],
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// Rss/Pss lines of `/proc/PID/smaps_rollup`, in KiB.
pub fn memory(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !matches!(
                k,
                "Rss" | "Pss" | "Pss_Anon" | "Pss_File" | "Private_Dirty" | "Private_Clean"
            ) {
                return None;
            }
            let kb = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some((k.to_string(), kb))
        })
        .collect()
}

pub fn memory_line(what: &str, pid: u32) -> String {
    let fields: Vec<String> = memory(pid)
        .iter()
        .map(|(k, v)| format!("{k}={v}KiB"))
        .collect();
    format!("{what} (pid {pid}): {}", fields.join(" "))
}

pub fn kib(pid: u32, key: &str) -> u64 {
    memory(pid)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or(0)
}
