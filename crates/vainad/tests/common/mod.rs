//! The harness of vainad's end-to-end tests: the daemon started inside a throwaway node
//! namespace with a temp root, a CRI client on its socket, and a Drop that removes
//! whatever a failed test left (pod supervisors, containers, overlay mounts, netns pins).
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use vaina_net::netns::Netns;
use vaina_testkit::Node;

pub const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// Binaries cargo built next to vainad (vaina-pod, the plugins, the `vaina` CLI).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vainad"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Daemon {
    pub node: Node,
    pub root: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn start() -> Daemon {
        vaina_testkit::become_subreaper();
        let node = Node::new();
        let root = node.path("vaina");
        for b in [
            "vaina-pod",
            "vaina-bridge",
            "vaina-host-local",
            "vaina-loopback",
            "vaina-portmap",
        ] {
            assert!(
                bin_dir().join(b).exists(),
                "{b} is not built in {}: build the whole workspace (cargo build --workspace)",
                bin_dir().display()
            );
        }
        let mut d = Daemon {
            node,
            root,
            child: None,
        };
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("run/vaina.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The daemon's image store: vainad's `--root ROOT` keeps it in ROOT/lib/images.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("lib/images")
    }

    /// Imports the busybox test image into the daemon's store.
    pub fn import_busybox(&self) {
        let dir = self.node.path("busybox-layout");
        let layout = vaina_image::testimage::busybox_oci_layout(&dir, BUSYBOX).unwrap();
        vaina_image::ImageStore::open(self.store_dir())
            .unwrap()
            .import(&layout)
            .unwrap();
    }

    /// Starts vainad inside the node namespace (its CNI plugins and nft run there).
    pub fn spawn(&mut self) {
        self.spawn_with_bin_dirs(&[bin_dir()]);
    }

    pub fn spawn_with_bin_dirs(&mut self, dirs: &[PathBuf]) {
        let _ = std::fs::remove_file(self.socket());
        let root = self.root.clone();
        let dirs = std::env::join_paths(dirs).unwrap();
        let child = self.node.run(|| {
            Command::new(env!("CARGO_BIN_EXE_vainad"))
                .arg("--root")
                .arg(&root)
                .arg("--cni-bin-dir")
                .arg(&dirs)
                .env("VAINA_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn vainad")
        });
        self.child = Some(child);
        // Ready means accepting connections on its socket; a daemon that exits on the way
        // fails here with its exit status rather than later with "connection refused".
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("vainad exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "vainad did not accept connections on its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn client(&self) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = rt
            .block_on(vaina_cri::client::connect(&self.endpoint()))
            .unwrap();
        Client { rt, c }
    }

    /// Runs the `vaina` CLI (built next to vainad) against this daemon.
    pub fn vaina(&self, args: &[&str]) -> Output {
        let bin = bin_dir().join("vaina");
        assert!(
            bin.exists(),
            "vaina is not built in {}: cargo build -p vaina",
            bin_dir().display()
        );
        Command::new(bin)
            .arg("--endpoint")
            .arg(self.endpoint())
            .args(args)
            .output()
            .expect("run vaina")
    }

    /// Runs the `vaina` CLI and returns its stdout, panicking with its stderr on failure.
    pub fn vaina_ok(&self, args: &[&str]) -> String {
        let out = self.vaina(args);
        assert!(
            out.status.success(),
            "vaina {args:?} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn pin(&self, id: &str) -> PathBuf {
        self.root.join("run/netns").join(id)
    }

    pub fn reservations(&self) -> usize {
        std::fs::read_dir(self.root.join("lib/cni/networks/vaina"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Mounts under this daemon's root still present (overlay rootfs, netns pins).
    pub fn mounts(&self) -> Vec<String> {
        let root = self.root.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .map(String::from)
            .collect()
    }

    /// Processes whose command line mentions this daemon's root (supervisors).
    pub fn processes(&self) -> Vec<i32> {
        let root = self.root.to_string_lossy().into_owned();
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("vaina-pod") && cmd.contains(&root) {
                v.push(pid);
            }
        }
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Containers first (their OCI runtime state is under ROOT/run/oci/<runtime>).
        for rt in ["crun", "runc"] {
            let state = self.root.join("run/oci").join(rt);
            if let Ok(rd) = std::fs::read_dir(&state) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let _ = vaina_pod::oci::command(Path::new(rt))
                        .arg("--root")
                        .arg(&state)
                        .args(["delete", "--force", &id])
                        .output();
                }
            }
        }
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Give killed processes a moment, then collect the zombies that came back to us.
        std::thread::sleep(Duration::from_millis(50));
        vaina_testkit::reap_zombies(&[]);
        for m in self.mounts() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("run/netns")) {
            for e in rd.flatten() {
                let _ = Netns::unpin(e.path());
            }
        }
    }
}

pub struct Client {
    pub rt: tokio::runtime::Runtime,
    pub c: vaina_cri::client::Cri,
}

pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

pub fn container_config(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

impl Client {
    pub fn run_pod(&mut self, cfg: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        self.run_pod_with(cfg, "")
    }

    pub fn run_pod_with(
        &mut self,
        cfg: cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: handler.into(),
            }))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    pub fn pod_status(&mut self, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }))
            .map(|r| r.into_inner().status.unwrap())
    }

    pub fn pod_ip(&mut self, id: &str) -> IpAddr {
        self.pod_status(id)
            .unwrap()
            .network
            .unwrap()
            .ip
            .parse()
            .unwrap()
    }

    pub fn list_pods(&mut self) -> Vec<cri::PodSandbox> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            .unwrap()
            .into_inner()
            .items
    }

    pub fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
    }

    pub fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
    }

    /// CreateContainer + StartContainer; the sandbox config is the one the pod ran with.
    pub fn run_container(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let c = &mut self.c.runtime;
        let id = self
            .rt
            .block_on(c.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            }))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(c.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))?;
        Ok(id)
    }

    pub fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))
            .map(|r| r.into_inner().status.unwrap())
    }

    /// ExecSync: (stdout, stderr, exit code).
    pub fn exec(&mut self, id: &str, cmd: &[&str]) -> (String, String, i32) {
        let c = &mut self.c.runtime;
        let r = self
            .rt
            .block_on(c.exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            }))
            .unwrap_or_else(|e| panic!("exec {cmd:?} in {id}: {e:?}"))
            .into_inner();
        (
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
            r.exit_code,
        )
    }

    pub fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            }))
            .map(|_| ())
    }

    pub fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            }))
            .map(|_| ())
    }
}

/// Polls `f` until it returns Some, for up to 10 s.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
