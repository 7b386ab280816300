//! pull-bench: image pulls through the CRI socket from a local `docker-registry`, vainad
//! then containerd (Debian's 1.6, its own config and root), in one run.
//!
//! A throwaway node netns holds the registry (127.0.0.1 there), vainad and containerd.
//! Two images are built and pushed: A = busybox + LAYERS layers of MIB MiB of random
//! (incompressible) data, and B = A with its last layer replaced. Both runtimes reach the
//! registry as `bench.test` through a `hosts.toml` (`server` and one `[host]`, both
//! `http://127.0.0.1:PORT`):
//! vainad's `--registry-config-dir`, containerd's CRI `registry.config_path`. Each run:
//! PullImage A on an empty store (cold), then PullImage B with A stored (all but one layer
//! present), then RemoveImage of both (containerd's CRI deletes synchronously, with its gc;
//! vainad's removal gcs the store). Medians of the runs are printed, never asserted.
//!
//! Usage: pull-bench [--runs N] [--layers N] [--mib N] [--bin-dir DIR] [--no-containerd]
//! (as root; needs /usr/bin/docker-registry)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use vaina_image::testimage::{LayerBuilder, TestImage, busybox_layer};
use vaina_testkit::Node;
use vaina_testkit::registry::{OutsideTraffic, Registry, RegistryAuth, write_hosts_toml};

const REGISTRY: &str = "bench.test";

struct Opts {
    runs: usize,
    layers: usize,
    mib: usize,
    bin_dir: PathBuf,
    containerd: bool,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        runs: 5,
        layers: 5,
        mib: 8,
        bin_dir: std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
        containerd: true,
    };
    let usage =
        "usage: pull-bench [--runs N] [--layers N] [--mib N] [--bin-dir DIR] [--no-containerd]";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Result<usize> {
            let v: usize = args
                .next()
                .with_context(|| format!("{what} needs a number"))?
                .parse()
                .with_context(|| format!("{what} needs a number"))?;
            if v == 0 {
                bail!("{what} must be at least 1");
            }
            Ok(v)
        };
        match a.as_str() {
            "--runs" => o.runs = num("--runs")?,
            "--layers" => o.layers = num("--layers")?,
            "--mib" => o.mib = num("--mib")?,
            "--bin-dir" => o.bin_dir = args.next().context("--bin-dir DIR")?.into(),
            "--no-containerd" => o.containerd = false,
            _ => bail!("{usage}"),
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = opts()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("pull-bench needs root (namespaces, mounts)");
    }
    if !vaina_testkit::registry::have_registry() {
        bail!("{} is missing", vaina_testkit::registry::REGISTRY_BIN);
    }
    vaina_testkit::become_subreaper();
    let node = Node::new();
    let outside = OutsideTraffic::start(Some(&node.ns));
    let reg = Registry::start(Some(&node.ns), None).context("start docker-registry")?;
    let hosts_dir = node.path("certs.d");
    // containerd 1.6 refuses a hosts.toml without a `[host]` tree ("invalid `host` tree"):
    // the registry is both the server and its one host.
    write_hosts_toml(
        &hosts_dir,
        REGISTRY,
        &format!(
            "server = \"http://{h}\"\n\n[host.\"http://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            h = reg.host()
        ),
    );

    let started = Instant::now();
    let (a, b) = build_images(&node, &reg, &o)?;
    println!(
        "pull-bench: image A = busybox + {} x {} MiB random layers ({:.1} MB compressed), \
         B = A with the last layer replaced; built and pushed in {:.1} s; {} runs",
        o.layers,
        o.mib,
        a.1 as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        o.runs
    );

    let mut results = Vec::new();
    {
        let mut v = Daemon::vaina(&node, &o.bin_dir, &hosts_dir, &outside)?;
        let r = bench("vaina", &v.endpoint, &a.0, &b.0, o.runs);
        v.stop();
        results.push(r?);
    }
    if o.containerd {
        match Daemon::containerd(&node, &hosts_dir, &outside) {
            Err(e) => println!("containerd: not benched: {e:#}"),
            Ok(mut d) => {
                let r = bench("containerd", &d.endpoint, &a.0, &b.0, o.runs);
                if r.is_err() {
                    let log =
                        std::fs::read_to_string(d.dir.join("containerd.log")).unwrap_or_default();
                    println!("containerd: log:\n{log}");
                }
                d.stop();
                match r {
                    Ok(r) => results.push(r),
                    Err(e) => println!("containerd: bench failed: {e:#}"),
                }
            }
        }
    }

    println!(
        "\n== PullImage through the CRI, median of {} runs ==",
        o.runs
    );
    println!(
        "{:<12} {:>14} {:>10} {:>22}",
        "runtime", "cold (A)", "MB/s", "shared layers (B)"
    );
    for r in &results {
        let cold = median(&r.cold);
        println!(
            "{:<12} {:>11.1} ms {:>10.1} {:>19.1} ms",
            r.name,
            ms(cold),
            a.1 as f64 / 1e6 / cold.as_secs_f64(),
            ms(median(&r.shared))
        );
    }
    if let [v, c] = &results[..] {
        println!(
            "ratio vaina/containerd: cold {:.2}, shared {:.2}",
            median(&v.cold).as_secs_f64() / median(&c.cold).as_secs_f64(),
            median(&v.shared).as_secs_f64() / median(&c.shared).as_secs_f64()
        );
    }
    for r in &results {
        println!(
            "{}: all cold {:?} ms, all shared {:?} ms",
            r.name,
            r.cold.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
            r.shared.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
        );
    }
    let seen = outside.seen();
    println!(
        "requests for hosts outside the node (through the proxy recorder): {}",
        seen.len()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn random(bytes: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

fn data_layer(name: &str, mib: usize) -> Result<Vec<u8>> {
    let mut l = LayerBuilder::new();
    l.dir("data", 0o755)?
        .file(&format!("data/{name}"), 0o644, &random(mib << 20)?)?;
    Ok(l.finish()?)
}

/// Builds and pushes A and B; returns (reference, compressed size of A's layers) for each.
fn build_images(node: &Node, reg: &Registry, o: &Opts) -> Result<((String, u64), (String, u64))> {
    let mut layers = vec![busybox_layer()?];
    for i in 0..o.layers {
        layers.push(data_layer(&format!("a{i}"), o.mib)?);
    }
    let mut b_layers = layers.clone();
    *b_layers.last_mut().expect("at least busybox") = data_layer("b", o.mib)?;
    let mut out = Vec::new();
    for (name, layers) in [("a", layers), ("b", b_layers)] {
        let dir = node.path(&format!("layout-{name}"));
        let layout = TestImage::from_layers(layers).write_oci_layout(&dir, name)?;
        let repo = format!("pull-bench/{name}");
        reg.push(&layout, &repo, "1", &RegistryAuth::Anonymous);
        out.push((format!("{REGISTRY}/{repo}:1"), layers_size(&layout)?));
    }
    let b = out.pop().expect("two");
    let a = out.pop().expect("two");
    Ok((a, b))
}

/// The compressed size of the layers of the first image of an OCI layout.
fn layers_size(layout: &Path) -> Result<u64> {
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"].as_str().context("index")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(digest))?)?;
    Ok(manifest["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .filter_map(|l| l["size"].as_u64())
        .sum())
}

struct Figures {
    name: &'static str,
    cold: Vec<Duration>,
    shared: Vec<Duration>,
}

fn bench(name: &'static str, endpoint: &str, a: &str, b: &str, runs: usize) -> Result<Figures> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = vaina_cri::client::connect(endpoint).await?;
        let mut f = Figures {
            name,
            cold: Vec::new(),
            shared: Vec::new(),
        };
        // Start from nothing (an earlier bench run's leftovers would make A "present").
        for image in [a, b] {
            remove(&mut c, image).await?;
        }
        for run in 0..runs {
            let cold = pull(&mut c, a)
                .await
                .with_context(|| format!("{name}: pull {a}"))?;
            let shared = pull(&mut c, b)
                .await
                .with_context(|| format!("{name}: pull {b}"))?;
            println!(
                "{name}: run {}: cold {:.1} ms, shared {:.1} ms",
                run + 1,
                ms(cold),
                ms(shared)
            );
            f.cold.push(cold);
            f.shared.push(shared);
            for image in [a, b] {
                remove(&mut c, image).await?;
            }
        }
        Ok(f)
    })
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(c: &mut vaina_cri::client::Cri, image: &str) -> Result<Duration> {
    let t = Instant::now();
    c.image
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
    Ok(t.elapsed())
}

async fn remove(c: &mut vaina_cri::client::Cri, image: &str) -> Result<()> {
    let st = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("ImageStatus {image}: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let Some(found) = st.image else {
        return Ok(());
    };
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&found.id),
        })
        .await
        .map_err(|s| anyhow::anyhow!("RemoveImage {image}: {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

/// vainad or containerd, started in the bench's node netns.
struct Daemon {
    child: Option<Child>,
    endpoint: String,
    dir: PathBuf,
    name: &'static str,
}

fn wait_for_socket(name: &str, sock: &Path, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("{name} did not create {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Daemon {
    fn vaina(
        node: &Node,
        bin_dir: &Path,
        hosts: &Path,
        outside: &OutsideTraffic,
    ) -> Result<Daemon> {
        let vainad = bin_dir.join("vainad");
        if !vainad.exists() {
            bail!("vainad is not built in {}", bin_dir.display());
        }
        let root = node.path("vaina");
        let mut child = node.run(|| {
            Command::new(&vainad)
                .arg("--root")
                .arg(&root)
                .arg("--cni-bin-dir")
                .arg(bin_dir)
                .arg("--registry-config-dir")
                .arg(hosts)
                .envs(outside.env())
                .env(
                    "VAINA_LOG",
                    std::env::var("VAINA_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .spawn()
        })?;
        let sock = root.join("run/vaina.sock");
        wait_for_socket("vainad", &sock, &mut child)?;
        println!("vaina: vainad pid {} root {}", child.id(), root.display());
        Ok(Daemon {
            child: Some(child),
            endpoint: format!("unix://{}", sock.display()),
            dir: root,
            name: "vainad",
        })
    }

    fn containerd(node: &Node, hosts: &Path, outside: &OutsideTraffic) -> Result<Daemon> {
        if Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
        {
            bail!("containerd is not installed (apt-get install -y containerd)");
        }
        let dir = node.path("containerd");
        std::fs::create_dir_all(dir.join("cni"))?;
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
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{h}"
"#,
            d = dir.display(),
            h = hosts.display(),
        );
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let mut child = node.run(|| {
            Command::new("containerd")
                .arg("--config")
                .arg(&cfg)
                .envs(outside.env())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
        })?;
        let sock = dir.join("containerd.sock");
        let mut d = Daemon {
            endpoint: format!("unix://{}", sock.display()),
            child: None,
            dir,
            name: "containerd",
        };
        let waited = wait_for_socket("containerd", &sock, &mut child);
        println!("containerd: pid {} config {}", child.id(), cfg.display());
        d.child = Some(child);
        if let Err(e) = waited {
            d.stop();
            return Err(e);
        }
        Ok(d)
    }

    /// SIGTERM, then SIGKILL after 10 s; then unmounts whatever is left under its dir.
    fn stop(&mut self) {
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
        let dir = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(String::from)
            .collect();
        mounts.reverse();
        for m in &mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        println!("{}: stopped; {} mounts were left", self.name, mounts.len());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
