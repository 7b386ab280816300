//! cri-bench: 30 pods in sequence through a CRI socket, vainad then containerd (Debian's,
//! runc + reference CNI plugins), each started by the bench in its own throwaway node netns
//! with a temp root. Prints latencies, PSS per running pod, the daemon's idle RSS and the
//! ratios vaina/containerd. Figures are printed, never asserted.
//!
//! Usage: cri-bench [--pods N] [--bin-dir DIR] [--no-containerd]   (as root)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_cri::v1 as cri;
use vaina_net::netns::Netns;
use vaina_testkit::Node;

const BUSYBOX: &str = "docker.io/library/busybox:latest";
const PAUSE: &str = "localhost/cri-bench/pause:1";

fn main() -> Result<()> {
    let mut pods = 30usize;
    let mut bin_dir: Option<PathBuf> = None;
    let mut containerd = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => pods = args.next().context("--pods N")?.parse()?,
            "--bin-dir" => bin_dir = Some(args.next().context("--bin-dir DIR")?.into()),
            "--no-containerd" => containerd = false,
            _ => bail!("usage: cri-bench [--pods N] [--bin-dir DIR] [--no-containerd]"),
        }
    }
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("cri-bench needs root (namespaces, mounts)");
    }
    vaina_testkit::become_subreaper();

    println!("cri-bench: {pods} pods in sequence, busybox `sleep 3600`, stop timeout 0");
    let v = {
        let mut d = Vaina::start(&bin_dir)?;
        let r = bench("vaina", &d.endpoint(), pods, d.daemon_pid(), &mut || {
            d.pod_pids()
        });
        d.teardown();
        r?
    };
    v.print();

    if containerd {
        match Containerd::start() {
            Err(e) => println!("\ncontainerd: not benched: {e:#}"),
            Ok(mut d) => {
                cli_check(&bin_dir, &d);
                let r = bench(
                    "containerd",
                    &d.endpoint(),
                    pods,
                    d.daemon_pid(),
                    &mut || d.pod_pids(),
                );
                if r.is_err() {
                    let log =
                        std::fs::read_to_string(d.dir.join("containerd.log")).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    println!("containerd: last lines of its log:");
                    for l in &lines[lines.len().saturating_sub(15)..] {
                        println!("  {l}");
                    }
                }
                d.teardown();
                match r {
                    Ok(c) => {
                        c.print();
                        ratios(&v, &c);
                    }
                    Err(e) => println!("\ncontainerd: bench failed: {e:#}"),
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The client side, the same for both runtimes.

struct Figures {
    name: &'static str,
    run_pod: Vec<Duration>,
    create_start: Vec<Duration>,
    teardown: Vec<Duration>,
    pss_per_pod_kib: f64,
    pod_processes: usize,
    idle_rss_kib: u64,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Figures {
    fn print(&self) {
        println!("\n== {} ==", self.name);
        println!(
            "RunPodSandbox                 p50 {:8.2} ms   p90 {:8.2} ms",
            ms(pct(&self.run_pod, 0.5)),
            ms(pct(&self.run_pod, 0.9))
        );
        println!(
            "CreateContainer+Start         p50 {:8.2} ms   p90 {:8.2} ms",
            ms(pct(&self.create_start, 0.5)),
            ms(pct(&self.create_start, 0.9))
        );
        println!(
            "Stop+RemoveContainer+Stop+RemovePodSandbox p50 {:8.2} ms   p90 {:8.2} ms",
            ms(pct(&self.teardown, 0.5)),
            ms(pct(&self.teardown, 0.9))
        );
        println!(
            "PSS per running pod           {:8.0} KiB  ({} processes for {} pods)",
            self.pss_per_pod_kib,
            self.pod_processes,
            self.run_pod.len()
        );
        println!("daemon idle RSS               {:8} KiB", self.idle_rss_kib);
    }
}

fn ratios(v: &Figures, c: &Figures) {
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("\n== ratios vaina/containerd (issue 3 targets) ==");
    println!(
        "RunPodSandbox p50     {:6.3}  (<= 0.1)   p90 {:6.3}",
        r(pct(&v.run_pod, 0.5), pct(&c.run_pod, 0.5)),
        r(pct(&v.run_pod, 0.9), pct(&c.run_pod, 0.9))
    );
    println!(
        "create+start p50      {:6.3}  (<= 0.3)",
        r(pct(&v.create_start, 0.5), pct(&c.create_start, 0.5))
    );
    println!(
        "stop+remove p50       {:6.3}  (<= 0.1)",
        r(pct(&v.teardown, 0.5), pct(&c.teardown, 0.5))
    );
    println!(
        "PSS per running pod   {:6.3}  (<= 0.15)",
        v.pss_per_pod_kib / c.pss_per_pod_kib
    );
    println!(
        "daemon idle RSS       {:6.3}  (<= 0.2)",
        v.idle_rss_kib as f64 / c.idle_rss_kib as f64
    );
}

fn pod_config(i: usize) -> cri::PodSandboxConfig {
    let name = format!("bench-{i}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: String::new(),
        ..Default::default()
    }
}

fn container_config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "sleep".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    }
}

fn bench(
    name: &'static str,
    endpoint: &str,
    pods: usize,
    daemon_pid: u32,
    pod_pids: &mut dyn FnMut() -> Vec<u32>,
) -> Result<Figures> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut c = rt
        .block_on(vaina_cri::client::connect(endpoint))
        .with_context(|| format!("connect {endpoint}"))?;
    let idle_rss_kib = vm_rss(daemon_pid).context("daemon VmRSS")?;
    // Warm-up is deliberately absent: the first pod is part of the figures.
    let mut f = Figures {
        name,
        run_pod: Vec::new(),
        create_start: Vec::new(),
        teardown: Vec::new(),
        pss_per_pod_kib: 0.0,
        pod_processes: 0,
        idle_rss_kib,
    };
    let mut running: Vec<(String, String)> = Vec::new();
    let r = (|| -> Result<()> {
        for i in 0..pods {
            let cfg = pod_config(i);
            let t = Instant::now();
            let pod = rt
                .block_on(c.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cfg.clone()),
                    runtime_handler: String::new(),
                }))
                .with_context(|| format!("{name}: RunPodSandbox {i}"))?
                .into_inner()
                .pod_sandbox_id;
            f.run_pod.push(t.elapsed());
            let t = Instant::now();
            let ctr = rt
                .block_on(c.runtime.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config()),
                    sandbox_config: Some(cfg),
                }))
                .with_context(|| format!("{name}: CreateContainer {i}"))?
                .into_inner()
                .container_id;
            running.push((pod.clone(), ctr.clone()));
            rt.block_on(c.runtime.start_container(cri::StartContainerRequest {
                container_id: ctr.clone(),
            }))
            .with_context(|| format!("{name}: StartContainer {i}"))?;
            f.create_start.push(t.elapsed());
        }
        // Everything running: PSS of the pods' processes.
        std::thread::sleep(Duration::from_millis(500));
        let pids = pod_pids();
        let pss: u64 = pids.iter().filter_map(|p| pss_kib(*p)).sum();
        f.pod_processes = pids.len();
        f.pss_per_pod_kib = pss as f64 / pods as f64;
        Ok(())
    })();
    // Teardown of what runs, timed (also after a failure, then untimed figures are moot).
    for (pod, ctr) in running.drain(..) {
        let t = Instant::now();
        let res = (|| -> Result<()> {
            rt.block_on(c.runtime.stop_container(cri::StopContainerRequest {
                container_id: ctr.clone(),
                timeout: 0,
            }))
            .context("StopContainer")?;
            rt.block_on(c.runtime.remove_container(cri::RemoveContainerRequest {
                container_id: ctr.clone(),
            }))
            .context("RemoveContainer")?;
            rt.block_on(c.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }))
            .context("StopPodSandbox")?;
            rt.block_on(c.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }))
            .context("RemovePodSandbox")?;
            Ok(())
        })();
        match res {
            Ok(()) => f.teardown.push(t.elapsed()),
            Err(e) => println!("{name}: teardown of {pod}: {e:#}"),
        }
    }
    // Sandboxes created by a failed RunPodSandbox/CreateContainer are not in `running`.
    if let Ok(list) = rt.block_on(
        c.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
    ) {
        for p in list.into_inner().items {
            let _ = rt.block_on(c.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            }));
            let _ = rt.block_on(c.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id,
            }));
        }
    }
    r?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------
// /proc helpers

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn vm_rss(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cmdline(pid: u32) -> String {
    let b = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&b).replace('\0', " ")
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their descendants.
fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let pairs: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| ppid(p).map(|pp| (p, pp)))
        .collect();
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for (p, pp) in &pairs {
            if *pp == parent && !out.contains(p) {
                out.push(*p);
            }
        }
        i += 1;
    }
    out
}

fn pids_matching(needles: &[&str]) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            let c = cmdline(*p);
            needles.iter().all(|n| c.contains(n))
        })
        .collect()
}

fn mounts_under(prefix: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix))
        .map(String::from)
        .collect()
}

fn kill9(pids: &[u32]) {
    for p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn leftovers(name: &str, root: &Path, extra_needles: &[&str]) {
    let root_s = root.to_string_lossy().into_owned();
    let mut procs: Vec<String> = all_pids()
        .into_iter()
        .filter(|p| *p != std::process::id())
        .map(|p| (p, cmdline(p)))
        .filter(|(_, c)| c.contains(&root_s) || extra_needles.iter().any(|n| c.contains(n)))
        .map(|(p, c)| format!("{p} {c}"))
        .collect();
    procs.sort();
    let mounts = mounts_under(&root_s);
    println!(
        "{name} teardown: {} processes left {:?}, {} mounts left under {} {:?}",
        procs.len(),
        procs,
        mounts.len(),
        root_s,
        mounts
    );
}

// ---------------------------------------------------------------------------------------
// vaina

struct Vaina {
    node: Option<Node>,
    root: PathBuf,
    child: Option<Child>,
}

impl Vaina {
    fn start(bin_dir: &Path) -> Result<Vaina> {
        let vainad = bin_dir.join("vainad");
        for b in [
            "vainad",
            "vaina-pod",
            "vaina-bridge",
            "vaina-host-local",
            "vaina-loopback",
            "vaina-portmap",
        ] {
            if !bin_dir.join(b).exists() {
                bail!("{b} is not built in {}", bin_dir.display());
            }
        }
        let node = Node::new();
        let root = node.path("vaina");
        let mut v = Vaina {
            node: Some(node),
            root: root.clone(),
            child: None,
        };
        let node = v.node.as_ref().unwrap();
        let layout = vaina_image::testimage::busybox_oci_layout(&node.path("busybox"), BUSYBOX)?;
        vaina_image::ImageStore::open(root.join("lib/images"))?.import(&layout)?;
        let bin = bin_dir.to_path_buf();
        let child = node.run(|| {
            Command::new(&vainad)
                .arg("--root")
                .arg(&root)
                .arg("--cni-bin-dir")
                .arg(&bin)
                .env(
                    "VAINA_LOG",
                    std::env::var("VAINA_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .spawn()
        })?;
        v.child = Some(child);
        let sock = v.socket();
        wait_for("vainad's socket", 20, || sock.exists())?;
        println!(
            "vaina: vainad pid {} root {}",
            v.daemon_pid(),
            v.root.display()
        );
        Ok(v)
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/vaina.sock")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn daemon_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Supervisors (vaina-pod) of this root, and everything below them (vaina-pod-init,
    /// the containers' processes).
    fn pod_pids(&self) -> Vec<u32> {
        let root = self.root.to_string_lossy().into_owned();
        let sup: Vec<u32> = pids_matching(&["vaina-pod", &root])
            .into_iter()
            .filter(|p| Some(*p) != self.child.as_ref().map(|c| c.id()))
            .collect();
        with_descendants(&sup)
    }

    fn teardown(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever the CRI teardown did not remove (there should be nothing).
        for rt in ["crun", "runc"] {
            let state = self.root.join("run/oci").join(rt);
            if let Ok(rd) = std::fs::read_dir(&state) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    println!("vaina: leftover {rt} container {id}, deleting");
                    let _ = vaina_pod::oci::command_without_cgroups(Path::new(rt))
                        .arg("--root")
                        .arg(&state)
                        .args(["delete", "--force", &id])
                        .output();
                }
            }
        }
        let left = self.pod_pids();
        if !left.is_empty() {
            println!("vaina: leftover pod processes {left:?}, killing");
            kill9(&left);
        }
        std::thread::sleep(Duration::from_millis(50));
        vaina_testkit::reap_zombies(&[]);
        let root = self.root.to_string_lossy().into_owned();
        for m in mounts_under(&root) {
            println!("vaina: leftover mount {m}, unmounting");
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("run/netns")) {
            for e in rd.flatten() {
                println!("vaina: leftover netns pin {}", e.path().display());
                let _ = Netns::unpin(e.path());
            }
        }
        if let Some(node) = &self.node {
            let veths = node.veths();
            println!("vaina: veths left in the node netns before dropping it: {veths:?}");
        }
        leftovers("vaina", &self.root, &[]);
        self.node.take(); // netns fd closed, temp dir removed
    }
}

impl Drop for Vaina {
    fn drop(&mut self) {
        if self.node.is_some() {
            self.teardown();
        }
    }
}

// ---------------------------------------------------------------------------------------
// containerd

struct Containerd {
    /// containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says; the
    /// bench removes that tree (when empty) if it created it.
    run_existed: bool,
    /// Its CNI library caches results in /var/lib/cni/results (not configurable in 1.6).
    var_lib_cni_existed: bool,
    node: Option<Node>,
    dir: PathBuf,
    child: Option<Child>,
}

/// The `vaina` CLI against containerd's CRI socket: crictl's verbs, ExecSync, and a
/// streaming exec through containerd's own (kubelet's) streaming server, which checks
/// vaina's SPDY client against an implementation it did not write. Printed, not asserted.
fn cli_check(bin_dir: &Path, d: &Containerd) {
    println!("\n== vaina CLI against containerd's socket ==");
    let node = d.node.as_ref().expect("started");
    let endpoint = d.endpoint();
    let vaina = bin_dir.join("vaina");
    let run = |args: &[&str]| -> Result<String> {
        // Inside the node: containerd's streaming server listens on its 127.0.0.1.
        let out = node.run(|| {
            Command::new(&vaina)
                .arg("--endpoint")
                .arg(&endpoint)
                .args(args)
                .stdin(Stdio::null())
                .output()
        })?;
        if !out.status.success() {
            bail!(
                "exit {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let pod_json = d.dir.join("cli-pod.json");
    let ctr_json = d.dir.join("cli-ctr.json");
    let written = std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": "cli-check", "namespace": "default", "uid": "uid-cli-check"},
            "log_directory": d.dir.join("cli-logs"),
            "linux": {}
        })
        .to_string(),
    )
    .and_then(|()| {
        std::fs::write(
            &ctr_json,
            serde_json::json!({
                "metadata": {"name": "hola"},
                "image": {"image": BUSYBOX},
                "command": ["sh", "-c", "echo hola; exec sleep 3600"],
                "log_path": "hola.log"
            })
            .to_string(),
        )
    });
    if let Err(e) = written {
        println!("  cannot write the configs: {e}");
        return;
    }
    let (pod, ctr) = (pod_json.to_string_lossy(), ctr_json.to_string_lossy());
    let mut pod_id = String::new();
    let mut steps: Vec<(&str, Result<String>)> = vec![
        ("version", run(&["version"])),
        ("info", run(&["info"])),
        ("images", run(&["images"])),
    ];
    match run(&["runp", &pod]) {
        Ok(id) => {
            pod_id = id.trim().to_string();
            steps.push(("runp", Ok(pod_id.clone())));
        }
        Err(e) => steps.push(("runp", Err(e))),
    }
    if !pod_id.is_empty() {
        let created = run(&["create", &pod_id, &ctr, &pod]).map(|s| s.trim().to_string());
        if let Ok(c) = &created {
            steps.push(("start", run(&["start", c])));
            steps.push(("ps", run(&["ps"])));
            steps.push(("exec -s", run(&["exec", "-s", c, "echo", "sync"])));
            steps.push((
                "exec (streaming SPDY)",
                run(&["exec", c, "echo", "streamed"]),
            ));
            steps.push(("logs", run(&["logs", c])));
            steps.push(("stop", run(&["stop", c])));
            steps.push(("rm", run(&["rm", c])));
        }
        steps.push(("create", created));
        steps.push(("stopp", run(&["stopp", &pod_id])));
        steps.push(("rmp", run(&["rmp", &pod_id])));
    }
    for (step, r) in steps {
        match r {
            Ok(out) => {
                let first = out.lines().next().unwrap_or("").trim();
                println!("  ok   {step:<22} {first}");
            }
            Err(e) => println!("  FAIL {step:<22} {e:#}"),
        }
    }
}

fn run_show(cmd: &mut Command) -> Result<String> {
    println!("containerd: running {cmd:?}");
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.exists())
    })
}

impl Containerd {
    fn start() -> Result<Containerd> {
        println!();
        if which("containerd").is_none() || which("ctr").is_none() {
            println!("containerd: not installed, installing Debian's package");
            run_show(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends", "containerd"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .map(|out| {
                for l in out
                    .lines()
                    .filter(|l| l.starts_with("Setting up") || l.starts_with("Unpacking"))
                {
                    println!("containerd:   {l}");
                }
            })?;
        }
        if !Path::new("/usr/lib/cni/bridge").exists() {
            bail!("reference CNI plugins missing in /usr/lib/cni");
        }
        let node = Node::new();
        let dir = node.path("containerd");
        let mut d = Containerd {
            run_existed: Path::new("/run/containerd").exists(),
            var_lib_cni_existed: Path::new("/var/lib/cni").exists(),
            node: Some(node),
            dir: dir.clone(),
            child: None,
        };
        std::fs::create_dir_all(dir.join("cni/conf"))?;
        std::fs::write(
            dir.join("cni/conf/10-bench.conflist"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "bench",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni1",
                        "isGateway": true,
                        "ipMasq": true,
                        "hairpinMode": true,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": dir.join("cni/networks"),
                            "ranges": [[{"subnet": "10.89.0.0/16"}]],
                            "routes": [{"dst": "0.0.0.0/0"}]
                        }
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            }))?,
        )?;
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Lowering oom_score_adj (the sandbox's -998) needs CAP_SYS_RESOURCE, which this host lacks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
{wrap}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/conf"
    max_conf_num = 1
"#,
            d = dir.display(),
            wrap = match std::env::var("CRI_BENCH_RUNC") {
                // A wrapper to debug runc failures (logs its arguments and errors).
                Ok(b) => format!("      BinaryName = \"{b}\"\n"),
                Err(_) => String::new(),
            }
        );
        std::fs::write(dir.join("config.toml"), &config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let cfg = dir.join("config.toml");
        let node = d.node.as_ref().unwrap();
        let child = node.run(|| {
            Command::new("containerd")
                .arg("--config")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
        })?;
        println!(
            "containerd: pid {} config {} (log containerd.log next to it)",
            child.id(),
            cfg.display()
        );
        d.child = Some(child);
        let sock = dir.join("containerd.sock");
        if let Err(e) = wait_for("containerd's socket", 30, || sock.exists()) {
            let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
            d.teardown();
            return Err(anyhow!("{e}; log:\n{log}"));
        }
        if let Err(e) = d.import_images() {
            let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
            d.teardown();
            return Err(e.context(format!("log:\n{log}")));
        }
        Ok(d)
    }

    fn import_images(&self) -> Result<()> {
        let busybox = self.dir.join("busybox.tar");
        vaina_image::testimage::busybox_docker_archive(&busybox, BUSYBOX)?;
        let pause = self.dir.join("pause.tar");
        vaina_image::testimage::TestImage::busybox()?
            .cmd(&["sleep", "2147483647"])
            .write_docker_archive(&pause, PAUSE)?;
        let sock = self.dir.join("containerd.sock");
        for tar in [&busybox, &pause] {
            run_show(
                Command::new("ctr")
                    .arg("-a")
                    .arg(&sock)
                    .args(["-n", "k8s.io", "images", "import"])
                    .arg(tar),
            )?;
        }
        let list = run_show(
            Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .args(["-n", "k8s.io", "images", "ls", "-q"]),
        )?;
        println!(
            "containerd: images: {}",
            list.split_whitespace().collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("containerd.sock").display())
    }

    fn daemon_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn shims(&self) -> Vec<u32> {
        let sock = self.dir.join("containerd.sock");
        pids_matching(&["containerd-shim", &sock.to_string_lossy()])
    }

    /// The runc shims of this containerd and everything below them (pause, containers).
    fn pod_pids(&self) -> Vec<u32> {
        with_descendants(&self.shims())
    }

    fn teardown(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let left = self.pod_pids();
        if !left.is_empty() {
            println!("containerd: leftover shims/pod processes {left:?}, killing");
            kill9(&left);
        }
        std::thread::sleep(Duration::from_millis(100));
        vaina_testkit::reap_zombies(&[]);
        let dir = self.dir.to_string_lossy().into_owned();
        // Deepest first.
        let mut ms = mounts_under(&dir);
        ms.reverse();
        for m in ms {
            println!("containerd: leftover mount {m}, unmounting");
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(node) = &self.node {
            println!(
                "containerd: veths left in the node netns before dropping it: {:?}",
                node.veths()
            );
        }
        leftovers("containerd", &self.dir, &["containerd-shim"]);
        let cni_ns: Vec<String> = std::fs::read_dir("/var/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("cni-"))
            .collect();
        println!("containerd: /var/run/netns/cni-* left: {cni_ns:?}");
        if !self.run_existed {
            for d in [
                "/run/containerd/s",
                "/run/containerd/runc/k8s.io",
                "/run/containerd/runc",
                "/run/containerd",
            ] {
                let _ = std::fs::remove_dir(d);
            }
        }
        if !self.var_lib_cni_existed {
            let _ = std::fs::remove_dir("/var/lib/cni/results");
            let _ = std::fs::remove_dir("/var/lib/cni");
        }
        println!(
            "containerd: /var/lib/cni {}",
            if Path::new("/var/lib/cni").exists() {
                "left (it existed before, or is not empty)"
            } else {
                "removed"
            }
        );
        println!(
            "containerd: /run/containerd {}",
            if Path::new("/run/containerd").exists() {
                "left (it existed before, or is not empty)"
            } else {
                "removed"
            }
        );
        self.node.take();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.node.is_some() {
            self.teardown();
        }
    }
}
