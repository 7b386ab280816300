//! cni-bench: times CNI ADD and DEL of a node's default chain (the loopback list, then
//! bridge + host-local + portmap) for vaina's plugins and for the reference plugins
//! (containernetworking-plugins), side by side in one run.
//!
//! Each implementation gets its own throwaway node namespace and temp dir (IPAM store and
//! result cache), held by an fd and a `TempDir`, so the machine's network is never touched
//! and nothing outlives the run. Iterations alternate between implementations (ABAB), so
//! drift from other load on the machine hits both equally.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use vaina_cni::config::NetworkConfigList;
use vaina_cni::runtime::{CniConfig, RuntimeConf};
use vaina_net::netns::Netns;

/// Times CNI ADD/DEL of loopback + bridge + host-local + portmap: vaina vs reference plugins.
#[derive(Parser)]
struct Args {
    /// Measured iterations per implementation.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Iterations run first and not counted.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Directory of the vaina-* plugins (default: this executable's directory).
    #[arg(long)]
    vaina_bin_dir: Option<PathBuf>,
    /// Directory of the reference plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    ref_bin_dir: PathBuf,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

/// One implementation under test, with its own node and its samples.
struct Bench {
    name: &'static str,
    bin_dir: PathBuf,
    cni: CniConfig,
    lo: NetworkConfigList,
    net: NetworkConfigList,
    data_dir: PathBuf,
    /// The node namespace: `cni0`, the veths and the firewall rules live here.
    node: Netns,
    /// IPAM store and result cache, removed on drop.
    _state: tempfile::TempDir,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Bench {
    /// A fresh node for the plugins named `<prefix>bridge`, … found in `bin_dir`.
    fn new(name: &'static str, prefix: &str, bin_dir: PathBuf) -> Result<Bench> {
        let state = tempfile::Builder::new()
            .prefix(&format!("cni-bench-{name}-"))
            .tempdir()
            .context("create temp dir")?;
        let data_dir = state.path().join("networks");
        let net = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "bench",
  "plugins": [
    {{
      "type": "{prefix}bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
      "hairpinMode": true,
      "ipam": {{ "type": "{prefix}host-local", "ranges": [[{{ "subnet": "10.88.0.0/16" }}]],
                "routes": [{{ "dst": "0.0.0.0/0" }}], "dataDir": "{}" }}
    }},
    {{ "type": "{prefix}portmap", "capabilities": {{ "portMappings": true }} }}
  ]
}}"#,
            data_dir.display()
        );
        let lo = format!(
            r#"{{"cniVersion":"1.0.0","name":"lo","plugins":[{{"type":"{prefix}loopback"}}]}}"#
        );
        let node = Netns::create().context("create node netns (needs root)")?;
        sh(&node, "ip link set lo up")?;
        Ok(Bench {
            name,
            cni: CniConfig::new(vec![bin_dir.clone()], state.path().join("cache")),
            bin_dir,
            lo: NetworkConfigList::from_bytes(lo.as_bytes()).context("loopback conflist")?,
            net: NetworkConfigList::from_bytes(net.as_bytes()).context("network conflist")?,
            data_dir,
            node,
            _state: state,
            add: Vec::new(),
            del: Vec::new(),
        })
    }

    /// One pod: ADD then DEL, each timed from inside the node namespace (one throwaway
    /// thread for both, so its creation is not timed). The pod namespace is created before
    /// and dropped after, untimed. A failed ADD is still followed by the DEL, so a
    /// half-built attachment is torn down.
    fn iterate(&self, i: usize) -> Result<(Duration, Duration)> {
        let pod = Netns::create().context("create pod netns")?;
        let mut rt = RuntimeConf::new(format!("bench{i:06}"), pod.fd_path(), "eth0");
        rt.capability_args.insert(
            "portMappings".into(),
            json!([{ "hostPort": 8080 + i % 1000, "containerPort": 80, "protocol": "tcp" }]),
        );
        let (add, del) = self
            .node
            .run(|| {
                let t = Instant::now();
                let add = self
                    .cni
                    .add_network_list(&self.lo, &rt)
                    .context("CNI ADD loopback list")
                    .and_then(|_| {
                        self.cni
                            .add_network_list(&self.net, &rt)
                            .context("CNI ADD network list")
                    })
                    .map(|_| t.elapsed());
                let t = Instant::now();
                let del_net = self
                    .cni
                    .del_network_list(&self.net, &rt)
                    .context("CNI DEL network list");
                let del_lo = self
                    .cni
                    .del_network_list(&self.lo, &rt)
                    .context("CNI DEL loopback list");
                let del = del_net.and(del_lo).map(|_| t.elapsed());
                (add, del)
            })
            .context("enter node netns")?;
        Ok((add?, del?))
    }

    /// What the pods left on the node: veths, IP reservations, cached results.
    fn leftovers(&self) -> Result<(usize, usize, usize)> {
        let veths = sh(&self.node, "ip -o link show type veth")?.lines().count();
        let count = |dir: &Path, ips_only: bool| {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| {
                            !ips_only
                                || e.file_name()
                                    .to_string_lossy()
                                    .parse::<std::net::IpAddr>()
                                    .is_ok()
                        })
                        .count()
                })
                .unwrap_or(0)
        };
        let ips = count(&self.data_dir.join(&self.net.name), true);
        let cached = count(&self.cni.cache_dir.join("results"), false);
        Ok((veths, ips, cached))
    }

    fn figures(&self) -> Figures {
        let sums: Vec<Duration> = self
            .add
            .iter()
            .zip(&self.del)
            .map(|(a, d)| *a + *d)
            .collect();
        Figures {
            add: Stats::of(&self.add),
            del: Stats::of(&self.del),
            add_del_p50: Stats::of(&sums).p50,
        }
    }
}

/// Milliseconds. Percentiles are nearest-rank (p50 of 200 samples is the 100th smallest).
#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p90: f64,
    min: f64,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Stats {
            p50: rank(0.5),
            p90: rank(0.9),
            min: ms[0],
        }
    }

    fn json(&self) -> Value {
        json!({ "p50": round3(self.p50), "p90": round3(self.p90), "min": round3(self.min) })
    }
}

struct Figures {
    add: Stats,
    del: Stats,
    /// Median of the per-iteration ADD+DEL sums.
    add_del_p50: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let vaina_dir = match args.vaina_bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    if let Some(p) = missing_plugin(&vaina_dir, "vaina-") {
        bail!(
            "{} not found (build with `cargo build --release -p vaina-plugins`, or pass --vaina-bin-dir)",
            p.display()
        );
    }
    let mut benches = vec![Bench::new("vaina", "vaina-", vaina_dir).context("set up vaina")?];
    let skipped_ref = match missing_plugin(&args.ref_bin_dir, "") {
        Some(p) => {
            let why = format!("{} not found, benchmarking vaina only", p.display());
            eprintln!("reference: {why}");
            Some(why)
        }
        None => {
            benches.push(
                Bench::new("reference", "", args.ref_bin_dir.clone())
                    .context("set up reference")?,
            );
            None
        }
    };

    let load_start = read_trim("/proc/loadavg");
    let total = args.warmup + args.iterations;
    eprintln!(
        "running {} warm-up + {} measured iterations per implementation, interleaved",
        args.warmup, args.iterations
    );
    for i in 0..total {
        let measured = i >= args.warmup;
        for b in benches.iter_mut() {
            let (add, del) = b.iterate(i).with_context(|| {
                let what = if measured {
                    "iteration"
                } else {
                    "warm-up iteration"
                };
                let k = if measured { i - args.warmup } else { i };
                format!("{}: {what} {k}", b.name)
            })?;
            if measured {
                b.add.push(add);
                b.del.push(del);
            }
        }
        if measured && (i + 1 - args.warmup) % 50 == 0 {
            eprintln!("  {}/{}", i + 1 - args.warmup, args.iterations);
        }
    }
    let load_end = read_trim("/proc/loadavg");

    let rows = benches
        .iter()
        .map(|b| {
            Ok(Row {
                name: b.name,
                bin_dir: b.bin_dir.clone(),
                figures: b.figures(),
                leftovers: b
                    .leftovers()
                    .with_context(|| format!("{}: inspect node", b.name))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let report = Report {
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: read_trim("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default(),
        load: [load_start, load_end],
        iterations: args.iterations,
        warmup: args.warmup,
        ref_version: Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
        skipped_ref,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print_table();
    }
    if report.rows.iter().any(|r| r.leftovers != (0, 0, 0)) {
        bail!("DEL left resources on a node");
    }
    Ok(())
}

/// One implementation's results.
struct Row {
    name: &'static str,
    bin_dir: PathBuf,
    figures: Figures,
    /// Veths, IP reservations and cached results left on the node after the run.
    leftovers: (usize, usize, usize),
}

/// The figures and the machine facts that matter for reading them.
struct Report {
    kernel: String,
    nproc: usize,
    cpu: String,
    /// `/proc/loadavg` at start and end: the machine is shared.
    load: [String; 2],
    iterations: usize,
    warmup: usize,
    ref_version: Option<String>,
    /// Why the reference was not benchmarked, if it was not.
    skipped_ref: Option<String>,
    /// vaina first, then the reference if benchmarked.
    rows: Vec<Row>,
}

impl Report {
    /// vaina's ADD+DEL median over the reference's.
    fn ratio(&self) -> Option<f64> {
        match &self.rows[..] {
            [v, r] => Some(v.figures.add_del_p50 / r.figures.add_del_p50),
            _ => None,
        }
    }

    fn print_table(&self) {
        println!(
            "cni-bench: CNI ADD (loopback list, then bridge + host-local + portmap) and DEL (reverse), cniVersion 1.0.0"
        );
        println!(
            "machine:   kernel {}, nproc {}, {}",
            self.kernel, self.nproc, self.cpu
        );
        println!(
            "load:      {} (start), {} (end)",
            self.load[0], self.load[1]
        );
        println!(
            "runs:      {} iterations per implementation after {} warm-up, interleaved",
            self.iterations, self.warmup
        );
        for r in &self.rows {
            let v = match (r.name, &self.ref_version) {
                ("reference", Some(v)) => format!(" (containernetworking-plugins {v})"),
                _ => String::new(),
            };
            println!("{:<10} {}{v}", format!("{}:", r.name), r.bin_dir.display());
        }
        println!();
        println!(
            "{:<10} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>11}",
            "ms", "ADD p50", "p90", "min", "DEL p50", "p90", "min", "ADD+DEL p50"
        );
        for r in &self.rows {
            let (a, d) = (r.figures.add, r.figures.del);
            println!(
                "{:<10} {:>8.2} {:>8.2} {:>8.2}   {:>8.2} {:>8.2} {:>8.2}   {:>11.2}",
                r.name, a.p50, a.p90, a.min, d.p50, d.p90, d.min, r.figures.add_del_p50
            );
        }
        println!();
        match (self.ratio(), &self.skipped_ref) {
            (Some(x), _) => println!("vaina/reference ADD+DEL median: {x:.2} (target <= 0.50)"),
            (None, why) => println!(
                "vaina/reference ADD+DEL median: n/a ({})",
                why.as_deref().unwrap_or("no reference")
            ),
        }
        for r in &self.rows {
            let (veths, ips, cached) = r.leftovers;
            println!(
                "left on the {} node: {veths} veth(s), {ips} IP reservation(s), {cached} cached result(s)",
                r.name
            );
        }
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let (veths, ips, cached) = r.leftovers;
                json!({
                    "name": r.name,
                    "bin_dir": r.bin_dir,
                    "add_ms": r.figures.add.json(),
                    "del_ms": r.figures.del.json(),
                    "add_del_p50_ms": round3(r.figures.add_del_p50),
                    "leftovers": { "veths": veths, "ip_reservations": ips, "cached_results": cached },
                })
            })
            .collect();
        json!({
            "machine": {
                "kernel": self.kernel, "nproc": self.nproc, "cpu": self.cpu,
                "loadavg_start": self.load[0], "loadavg_end": self.load[1],
            },
            "iterations": self.iterations,
            "warmup": self.warmup,
            "reference_package_version": self.ref_version,
            "reference_skipped": self.skipped_ref,
            "implementations": rows,
            "ratio_add_del_p50": self.ratio().map(round3),
            "target_ratio": 0.5,
        })
    }
}

/// The first of the four plugins missing from `dir`, if any.
fn missing_plugin(dir: &Path, prefix: &str) -> Option<PathBuf> {
    PLUGINS
        .iter()
        .map(|p| dir.join(format!("{prefix}{p}")))
        .find(|p| !p.is_file())
}

/// Runs `cmd` with `sh -c` inside `ns` and returns its stdout.
fn sh(ns: &Netns, cmd: &str) -> Result<String> {
    let out = ns
        .run(|| Command::new("sh").arg("-c").arg(cmd).output())?
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Milliseconds to the microsecond, for JSON that reads well.
fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
