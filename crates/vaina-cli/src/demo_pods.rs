//! The second part of the demo: the seed's walk-through with the runtime. `vainad` starts
//! inside a throwaway node namespace with a temp root, the busybox test image is imported,
//! and pods and containers are driven over the CRI socket exactly as kubelet or crictl would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use vaina_net::netns::Netns;

const IMAGE: &str = "docker.io/library/busybox:latest";

struct Daemon {
    child: Child,
    root: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.root.join("run/vaina.sock"));
    }
}

fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("demo-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

fn container(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
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

struct Demo {
    c: vaina_cri::client::Cri,
    logs: PathBuf,
}

impl Demo {
    async fn run_pod(&mut self, name: &str) -> Result<(String, cri::PodSandboxConfig, String)> {
        let cfg = pod_config(name, &self.logs);
        let id = self
            .c
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let ip = self
            .c
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        Ok((id, cfg, ip))
    }

    async fn run_container(
        &mut self,
        pod: &str,
        cfg: &cri::PodSandboxConfig,
        c: cri::ContainerConfig,
    ) -> Result<String> {
        let id = self
            .c
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(c),
                sandbox_config: Some(cfg.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        self.c
            .runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        Ok(id)
    }

    async fn exec(&mut self, id: &str, cmd: &[&str]) -> Result<(String, String, i32)> {
        let r = self
            .c
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await?
            .into_inner();
        Ok((
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
            r.exit_code,
        ))
    }

    /// Runs `cmd` until its output contains `want` (servers take a moment to listen).
    async fn exec_until(&mut self, id: &str, cmd: &[&str], want: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (out, err, _) = self.exec(id, cmd).await?;
            if out.contains(want) {
                return Ok(out);
            }
            if Instant::now() > deadline {
                bail!("{cmd:?} never printed {want:?}: {out}{err}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn veths(node: &Netns) -> Result<usize> {
    let out = node.run(|| {
        Command::new("ip")
            .args(["-o", "link", "show", "type", "veth"])
            .output()
    })??;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Runs the walk-through; `node` is the demo's throwaway node namespace.
pub fn run(node: &Netns, bin_dir: &Path, state: &Path) -> Result<()> {
    let root = state.join("vainad");
    let logs = state.join("logs");
    let layout = vaina_image::testimage::busybox_oci_layout(&state.join("busybox"), IMAGE)
        .context("build the busybox test image (needs Debian's busybox-static)")?;
    vaina_image::ImageStore::open(root.join("lib/images"))?
        .import(&layout)
        .context("import the busybox image")?;
    println!("== Part 2: the same network through the runtime (vainad, CRI v1) ==\n");
    println!(
        "vainad starts inside the node with root {}; busybox imported",
        root.display()
    );
    let child = node.run(|| {
        Command::new(bin_dir.join("vainad"))
            .arg("--root")
            .arg(&root)
            .arg("--cni-bin-dir")
            .arg(bin_dir)
            .env("VAINA_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
    })??;
    let daemon = Daemon {
        child,
        root: root.clone(),
    };
    let socket = root.join("run/vaina.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("vainad did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let c = vaina_cri::client::connect(&format!("unix://{}", socket.display())).await?;
        let mut d = Demo {
            c,
            logs: logs.clone(),
        };
        let mut pods = Vec::new();
        let r = walkthrough(&mut d, node, &mut pods).await;
        println!("\nRemovePodSandbox for every pod:");
        for p in &pods {
            d.c.runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: p.clone(),
                })
                .await?;
        }
        r
    });
    // The client's connection goes with its runtime, so vainad's graceful stop is quick.
    drop(rt);
    drop(daemon);
    let left_veths = veths(node)?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| l.contains(&*root.to_string_lossy()))
        .count();
    println!("  veths left on the node: {left_veths}; mounts left under the root: {mounts}");
    result?;
    if left_veths != 0 || mounts != 0 {
        bail!("the runtime left resources behind");
    }
    Ok(())
}

async fn walkthrough(d: &mut Demo, node: &Netns, pods: &mut Vec<String>) -> Result<()> {
    println!("\n1. A pod with one busybox container");
    let (p1, cfg1, ip1) = d.run_pod("pod-1").await?;
    pods.push(p1.clone());
    println!(
        "   RunPodSandbox pod-1 → {}: IP {ip1}; veths on the node: {}",
        &p1[..13],
        veths(node)?
    );
    let server = d
        .run_container(
            &p1,
            &cfg1,
            container(
                "server",
                &[
                    "sh",
                    "-c",
                    "while true; do echo hola desde pod-1 | nc -l -p 8080; done",
                ],
            ),
        )
        .await?;
    let (out, _, _) = d
        .exec(&server, &["ip", "-4", "-o", "addr", "show", "eth0"])
        .await?;
    println!(
        "   inside the container: {}",
        out.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
    );
    let (out, _, _) = d.exec(&server, &["ip", "route"]).await?;
    let default = out
        .lines()
        .find(|l| l.starts_with("default"))
        .unwrap_or_default();
    println!("   default route:        {}", default.trim());

    println!("\n2. A second pod: another veth, another IP of the same range");
    let (p2, cfg2, ip2) = d.run_pod("pod-2").await?;
    pods.push(p2.clone());
    println!(
        "   RunPodSandbox pod-2 → {}: IP {ip2}; veths on the node: {}",
        &p2[..13],
        veths(node)?
    );
    let client = d
        .run_container(&p2, &cfg2, container("client", &["sleep", "3600"]))
        .await?;
    let out = d
        .exec_until(&client, &["nc", "-w", "2", &ip1, "8080"], "hola")
        .await?;
    println!("   pod-2 → {ip1}:8080 through cni0: {}", out.trim());

    println!("\n3. One pod, two containers: one veth, one IP, one localhost");
    let before = veths(node)?;
    let (p3, cfg3, ip3) = d.run_pod("pod-3").await?;
    pods.push(p3.clone());
    let telnetd = d
        .run_container(
            &p3,
            &cfg3,
            container("telnetd", &["telnetd", "-F", "-p", "23", "-l", "/bin/sh"]),
        )
        .await?;
    let shell = d
        .run_container(&p3, &cfg3, container("shell", &["sleep", "3600"]))
        .await?;
    println!(
        "   RunPodSandbox pod-3 → {}: IP {ip3}; new veths: {}",
        &p3[..13],
        veths(node)? - before
    );
    for (name, id) in [("telnetd", &telnetd), ("shell", &shell)] {
        let (out, _, _) = d
            .exec(id, &["ip", "-4", "-o", "addr", "show", "eth0"])
            .await?;
        let addr = out
            .split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .to_string();
        println!("   container {name:8} eth0 {addr}");
    }
    let out = d
        .exec_until(
            &shell,
            &[
                "sh",
                "-c",
                "(sleep 1; echo 'echo hola desde telnet'; sleep 1) | telnet 127.0.0.1 23",
            ],
            "hola desde telnet",
        )
        .await?;
    let line = out
        .lines()
        .find(|l| l.starts_with("hola desde telnet"))
        .unwrap_or_default();
    println!("   shell → telnet 127.0.0.1:23 (telnetd's container): {line}");
    let (_, err, code) = d.exec(&shell, &["nc", "-l", "-p", "23"]).await?;
    println!("   shell: nc -l -p 23 → exit {code}: {}", err.trim());
    let (out, _, _) = d
        .exec(
            &client,
            &[
                "sh",
                "-c",
                "echo | nc -w 1 127.0.0.1 23 >/dev/null 2>&1; echo exit $?",
            ],
        )
        .await?;
    println!(
        "   pod-2 → its own 127.0.0.1:23: {} (pods do not share localhost)",
        out.trim()
    );
    Ok(())
}
