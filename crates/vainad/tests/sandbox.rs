//! End to end: `vainad` started inside a throwaway node namespace with a temp root, driven
//! over its CRI socket. The seed's pod-level walk-through: one veth and one IP per pod,
//! pods reach each other through the bridge, removal leaves nothing; plus bad input and a
//! SIGKILL of the daemon.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use tonic::Code;
use vaina_net::netns::Netns;
use vaina_testkit::{Node, can_run_ns_tests};

/// Binaries cargo built next to vainad (the workspace's: vaina-pod and the plugins).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vainad"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Daemon {
    node: Node,
    root: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start() -> Daemon {
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

    fn socket(&self) -> PathBuf {
        self.root.join("run/vaina.sock")
    }

    /// Starts vainad inside the node namespace (its CNI plugins and nft run there).
    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let root = self.root.clone();
        let child = self.node.run(|| {
            Command::new(env!("CARGO_BIN_EXE_vainad"))
                .arg("--root")
                .arg(&root)
                .arg("--cni-bin-dir")
                .arg(bin_dir())
                .env("VAINA_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn vainad")
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "vainad did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let endpoint = format!("unix://{}", self.socket().display());
        let c = rt.block_on(vaina_cri::client::connect(&endpoint)).unwrap();
        Client { rt, c }
    }

    fn pin(&self, id: &str) -> PathBuf {
        self.root.join("run/netns").join(id)
    }

    fn reservations(&self) -> usize {
        std::fs::read_dir(self.root.join("lib/cni/networks/vaina"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    /// Whatever a failed test left: pods' supervisors and netns pins under this root.
    fn drop(&mut self) {
        self.kill9();
        let root = self.root.to_string_lossy().into_owned();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("vaina-pod") && cmd.contains(&root) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("run/netns")) {
            for e in rd.flatten() {
                let _ = Netns::unpin(e.path());
            }
        }
    }
}

struct Client {
    rt: tokio::runtime::Runtime,
    c: vaina_cri::client::Cri,
}

fn pod_config(name: &str) -> cri::PodSandboxConfig {
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

impl Client {
    fn run(&mut self, cfg: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            }))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    fn status(&mut self, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }))
            .map(|r| r.into_inner().status.unwrap())
    }

    fn ip(&mut self, id: &str) -> IpAddr {
        self.status(id)
            .unwrap()
            .network
            .unwrap()
            .ip
            .parse()
            .unwrap()
    }

    fn list(&mut self) -> Vec<cri::PodSandbox> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            .unwrap()
            .into_inner()
            .items
    }

    fn stop(&mut self, id: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
    }

    fn remove(&mut self, id: &str) -> Result<(), tonic::Status> {
        let c = &mut self.c.runtime;
        self.rt
            .block_on(c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map(|_| ())
    }
}

fn serve_once(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let l = ns
        .run(|| TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 16];
        let n = s.read(&mut b).unwrap();
        s.write_all(&b[..n]).unwrap();
    })
}

fn echo(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hola")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn pods_get_one_veth_and_one_ip_each_talk_and_leave_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut c = d.client();
    let a = c.run(pod_config("pod-a")).unwrap();
    assert_eq!(d.node.veths().len(), 1, "one veth per pod");
    let b = c.run(pod_config("pod-b")).unwrap();
    assert_eq!(d.node.veths().len(), 2);
    let (ip_a, ip_b) = (c.ip(&a), c.ip(&b));
    assert_ne!(ip_a, ip_b);
    for ip in [ip_a, ip_b] {
        assert!(
            ip.to_string().starts_with("10.88."),
            "{ip} not in 10.88.0.0/16"
        );
    }
    assert_eq!(
        c.status(&a).unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );

    // The pod's netns (pinned by the daemon) has the IP on eth0 and a default route via the
    // bridge; the node reaches pod-b directly, pod-b reaches pod-a through cni0.
    let ns_a = Netns::open(d.pin(&a)).unwrap();
    let ns_b = Netns::open(d.pin(&b)).unwrap();
    let out = ns_a
        .run(|| {
            Command::new("ip")
                .args(["-4", "-o", "addr", "show", "eth0"])
                .output()
        })
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{ip_a}/16")));
    let out = ns_a
        .run(|| {
            Command::new("ip")
                .args(["-4", "route", "show", "default"])
                .output()
        })
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("via 10.88.0.1 dev eth0"));
    let srv = serve_once(&ns_a, 7000);
    assert_eq!(
        ns_b.run(|| echo(&format!("{ip_a}:7000"))).unwrap().unwrap(),
        "hola"
    );
    srv.join().unwrap();
    let srv = serve_once(&ns_b, 7001);
    assert_eq!(
        d.node.run(|| echo(&format!("{ip_b}:7001"))).unwrap(),
        "hola"
    );
    srv.join().unwrap();
    drop((ns_a, ns_b));

    c.stop(&a).unwrap();
    assert_eq!(
        c.status(&a).unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(d.node.veths().len(), 1, "stop takes the veth");
    c.stop(&a).unwrap();
    c.remove(&a).unwrap();
    c.remove(&b).unwrap();
    c.remove(&b).unwrap();
    assert!(c.list().is_empty());
    assert!(d.node.veths().is_empty());
    assert!(
        !d.pin(&a).exists() && !d.pin(&b).exists(),
        "netns pins removed"
    );
    assert_eq!(d.reservations(), 0, "IPs released");
}

#[test]
fn bad_requests_get_the_right_codes_and_leave_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut c = d.client();
    let id = c.run(pod_config("dup")).unwrap();
    let e = c.run(pod_config("dup")).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("dup"), "{}", e.message());

    let mut no_uid = pod_config("nouid");
    no_uid.metadata.as_mut().unwrap().uid.clear();
    let e = c.run(no_uid).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("uid"), "{}", e.message());

    let mut bad_sysctl = pod_config("sysctl");
    bad_sysctl.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [("net.ipv4.no_such_key".to_string(), "1".to_string())].into(),
        ..Default::default()
    });
    let e = c.run(bad_sysctl).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("net.ipv4.no_such_key"),
        "{}",
        e.message()
    );

    let e = c.status("0123456789abcdef").unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.stop("0123456789abcdef").unwrap();
    c.remove("0123456789abcdef").unwrap();

    // Only the good pod exists: one veth, one reservation, one pin.
    assert_eq!(c.list().len(), 1);
    assert_eq!(d.node.veths().len(), 1);
    assert_eq!(d.reservations(), 1);
    assert_eq!(
        std::fs::read_dir(d.root.join("run/netns")).unwrap().count(),
        1
    );
    c.remove(&id).unwrap();
    assert!(d.node.veths().is_empty());
}

#[test]
fn pods_survive_a_sigkill_of_the_daemon() {
    if !can_run_ns_tests() {
        return;
    }
    let mut d = Daemon::start();
    let id = {
        let mut c = d.client();
        c.run(pod_config("survivor")).unwrap()
    };
    let ip = d.client().ip(&id);
    d.kill9();
    d.spawn();
    let mut c = d.client();
    let st = c.status(&id).unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.unwrap().ip, ip.to_string());
    assert_eq!(d.node.veths().len(), 1);
    c.remove(&id).unwrap();
    assert!(d.node.veths().is_empty());
    assert_eq!(d.reservations(), 0);
}
