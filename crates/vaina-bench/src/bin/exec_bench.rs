//! exec-bench: `echo hi` round trips in a real busybox container through vainad — ExecSync,
//! streaming exec over SPDY/3.1 and over WebSocket — and port-forward throughput into the
//! pod (64 MiB to a `nc` sink inside the pod's netns), as medians.
//!
//! vainad runs in a throwaway node netns with a temp root; the streaming clients run inside
//! that netns, where the streaming server listens on 127.0.0.1. Figures are printed, never
//! asserted.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaina_stream::client::{ClientOptions, PortForwardClient, WsPortForward, remote_command};
use vaina_stream::runtime::{BoxWrite, StreamIo};
use vaina_testkit::Node;

const BUSYBOX: &str = "docker.io/library/busybox:latest";
const RUNS: usize = 50;
const SINK_PORT: u16 = 9000;
const VOLUME: usize = 64 * 1024 * 1024;

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("exec-bench needs root (namespaces, mounts)");
    }
    vaina_testkit::become_subreaper();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let node = Node::new();
    let root = node.path("vaina");
    let layout = vaina_image::testimage::busybox_oci_layout(&node.path("busybox"), BUSYBOX)?;
    vaina_image::ImageStore::open(root.join("lib/images"))?.import(&layout)?;
    let mut daemon = Daemon(Some(node.run(|| {
        Command::new(bin_dir.join("vainad"))
            .arg("--root")
            .arg(&root)
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .env("VAINA_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
    })?));
    let sock = root.join("run/vaina.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("vainad did not create its socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut c = rt.block_on(vaina_cri::client::connect(&format!(
        "unix://{}",
        sock.display()
    )))?;

    let pod_cfg = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "exec-bench".into(),
            uid: "uid-exec-bench".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "exec-bench".into(),
        log_directory: node.path("logs").display().to_string(),
        ..Default::default()
    };
    let pod = rt
        .block_on(c.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        }))?
        .into_inner()
        .pod_sandbox_id;
    let sink = format!("while true; do nc -l -p {SINK_PORT} > /dev/null; done");
    let ctr = rt
        .block_on(c.runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sink".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), sink],
                log_path: "sink.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_cfg),
        }))?
        .into_inner()
        .container_id;
    let measured = rt
        .block_on(c.runtime.start_container(cri::StartContainerRequest {
            container_id: ctr.clone(),
        }))
        .map_err(anyhow::Error::from)
        .and_then(|_| measure(&node, &rt, &mut c, &pod, &ctr));
    // The pod goes whatever happened, so no supervisor outlives the bench.
    let _ = rt.block_on(c.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    }));
    daemon.stop();
    measured
}

fn measure(
    node: &Node,
    rt: &tokio::runtime::Runtime,
    c: &mut vaina_cri::client::Cri,
    pod: &str,
    ctr: &str,
) -> Result<()> {
    let cmd = || vec!["echo".to_string(), "hi".to_string()];
    let mut sync = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = rt
            .block_on(c.runtime.exec_sync(cri::ExecSyncRequest {
                container_id: ctr.into(),
                cmd: cmd(),
                timeout: 10,
            }))?
            .into_inner();
        sync.push(t.elapsed());
        if r.stdout != b"hi\n" {
            bail!("ExecSync printed {:?}", String::from_utf8_lossy(&r.stdout));
        }
    }
    let mut streamed = Vec::new();
    for (name, opts) in [
        ("SPDY/3.1", ClientOptions::spdy()),
        ("WebSocket v5", ClientOptions::websocket()),
    ] {
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let url = rt
                .block_on(c.runtime.exec(cri::ExecRequest {
                    container_id: ctr.into(),
                    cmd: cmd(),
                    stdout: true,
                    ..Default::default()
                }))?
                .into_inner()
                .url;
            let opts = opts.clone();
            let code = node.run(move || -> Result<i32> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let io = StreamIo {
                    stdin: None,
                    stdout: Some(Box::new(tokio::io::sink()) as BoxWrite),
                    stderr: None,
                    tty: false,
                    resize: None,
                };
                Ok(rt.block_on(remote_command(&url, &opts, io))?)
            })?;
            times.push(t.elapsed());
            if code != 0 {
                bail!("streaming exec over {name} exited {code}");
            }
        }
        streamed.push((name, times));
    }

    let mut rates = Vec::new();
    for ws in [false, true] {
        // The sink's `nc` is restarted by its loop after each connection.
        std::thread::sleep(Duration::from_millis(300));
        let url = rt
            .block_on(c.runtime.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: vec![i32::from(SINK_PORT)],
            }))?
            .into_inner()
            .url;
        let rate = node.run(move || -> Result<f64> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let chunk = vec![0x5au8; 256 * 1024];
                let t = Instant::now();
                if ws {
                    let mut pf = WsPortForward::connect(&url, &[SINK_PORT], false).await?;
                    let conn = &mut pf.ports[0].data;
                    for _ in 0..VOLUME / chunk.len() {
                        conn.write_all(&chunk).await?;
                    }
                    conn.flush().await?;
                } else {
                    let pf = PortForwardClient::connect(&url).await?;
                    let mut conn = pf.open(SINK_PORT).await?;
                    for _ in 0..VOLUME / chunk.len() {
                        conn.write_all(&chunk).await?;
                    }
                    conn.shutdown().await?;
                    let mut rest = Vec::new();
                    let _ = conn.read_to_end(&mut rest).await;
                    pf.close().await;
                }
                Ok(VOLUME as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64())
            })
        })?;
        rates.push((if ws { "WebSocket" } else { "SPDY/3.1" }, rate));
    }

    println!("exec-bench: busybox container in a vaina pod, {RUNS} runs each, medians");
    println!(
        "  echo hi, ExecSync                       {:7.2} ms",
        ms(median(&mut sync))
    );
    for (name, mut t) in streamed {
        println!(
            "  echo hi, streaming exec {name:<14}  {:7.2} ms  (CRI Exec + upgrade + session)",
            ms(median(&mut t))
        );
    }
    for (name, r) in rates {
        println!("  port-forward into the pod, {name:<10}   {r:7.0} MiB/s (64 MiB to nc)");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// vainad, stopped (SIGTERM, then reaped) however the bench ends.
struct Daemon(Option<Child>);

impl Daemon {
    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
