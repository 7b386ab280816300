//! The demo: the seed's walk-through of a node's pod network, on vaina's CNI stack.
//!
//! The "node" is a fresh network namespace, so the machine's own network is never touched;
//! inside it, vaina's plugins build the same thing they build on a real host: `cni0` with the
//! gateway address, one veth per pod, one IP per pod, masquerade and a hostPort.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vaina_cni::config::NetworkConfigList;
use vaina_cni::result::CniResult;
use vaina_cni::runtime::{CniConfig, RuntimeConf};
use vaina_net::netns::Netns;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory holding the vaina-* plugin binaries (default: next to this executable).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
}

struct Pod {
    name: &'static str,
    ns: Netns,
    id: String,
    rt: RuntimeConf,
    ip: Option<IpAddr>,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let plugin_dir = match args.plugin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    for p in [
        "vaina-bridge",
        "vaina-host-local",
        "vaina-loopback",
        "vaina-portmap",
    ] {
        if !plugin_dir.join(p).exists() {
            bail!(
                "plugin {p} not found in {} (build with `cargo build --release`, or pass --plugin-dir)",
                plugin_dir.display()
            );
        }
    }
    let state = tempfile::Builder::new().prefix("vaina-demo-").tempdir()?;
    let data_dir = state.path().join("networks");
    let conflist_text = vaina_plugins::defaults::default_conflist(&data_dir.to_string_lossy());
    let net = NetworkConfigList::from_bytes(conflist_text.as_bytes())
        .context("embedded default network config")?;
    let lo = NetworkConfigList::from_bytes(vaina_plugins::defaults::LOOPBACK_CONFLIST.as_bytes())
        .context("embedded loopback config")?;
    let cni = CniConfig {
        bin_dirs: vec![plugin_dir.clone()],
        cache_dir: state.path().join("cache"),
    };

    println!("== vaina demo: how a node gives its pods a network ==\n");
    println!("== Part 1: the CNI plugins alone, as a runtime calls them ==\n");
    let node = Netns::create().context("create the node's network namespace")?;
    sh(&node, "ip link set lo up")?;
    println!(
        "node: a fresh network namespace (inode {}) plays the host; your machine's network is untouched",
        node.inode()
    );
    println!(
        "CNI network \"{}\": bridge cni0, 10.88.0.0/16 from host-local IPAM, masquerade, host ports",
        net.name
    );
    println!("plugins: {}\n", plugin_dir.display());

    let mut pods = Vec::new();
    for (i, name) in ["pod-a", "pod-b"].into_iter().enumerate() {
        let ns = Netns::create().with_context(|| format!("create netns of {name}"))?;
        let id = format!("demo{i}{:08x}", std::process::id());
        let mut rt = RuntimeConf::new(&id, ns.fd_path(), "eth0");
        if name == "pod-a" {
            rt.capability_args.insert(
                "portMappings".into(),
                serde_json::json!([{ "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }]),
            );
        }
        pods.push(Pod {
            name,
            ns,
            id,
            rt,
            ip: None,
        });
    }

    let result = (|| -> Result<()> {
        for pod in pods.iter_mut() {
            let before = veths(&node)?;
            let (lo_res, res) = node.run(|| -> Result<(CniResult, CniResult)> {
                let lo_res = cni
                    .add_network_list(&lo, &pod.rt)
                    .context("CNI ADD loopback")?;
                let res = cni
                    .add_network_list(&net, &pod.rt)
                    .context("CNI ADD vaina")?;
                Ok((lo_res, res))
            })??;
            let _ = lo_res;
            let after = veths(&node)?;
            let new: Vec<_> = after.iter().filter(|v| !before.contains(v)).collect();
            let ip = res.ips.first().map(|c| c.address);
            pod.ip = ip.map(|n| n.addr());
            println!(
                "RunPodSandbox {} (id {}): CNI ADD loopback, then bridge + host-local + portmap",
                pod.name, pod.id
            );
            println!(
                "  pod IP       {}",
                ip.map(|i| i.to_string()).unwrap_or_default()
            );
            println!(
                "  gateway      {}",
                res.ips
                    .first()
                    .and_then(|c| c.gateway)
                    .map(|g| g.to_string())
                    .unwrap_or_default()
            );
            println!(
                "  new veth     {} on the node (now {} veth(s) on cni0)",
                new.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                after.len()
            );
            println!("  inside the pod:");
            for l in sh(&pod.ns, "ip -4 -br addr show; ip -4 route show")?.lines() {
                println!("    {l}");
            }
            println!();
        }
        println!("The node's view:");
        for l in sh(&node, "ip -4 -br addr show; echo; bridge link show")?.lines() {
            println!("  {l}");
        }
        println!();

        let (a, b) = (&pods[0], &pods[1]);
        let a_ip = a.ip.context("pod-a has no IP")?;
        let b_ip = b.ip.context("pod-b has no IP")?;
        // A TCP server in pod-a: the socket is created inside pod-a's namespace and keeps
        // belonging to it whichever thread accepts.
        let listener = a.ns.run(|| TcpListener::bind("0.0.0.0:80"))??;
        let server = std::thread::spawn(move || -> Result<()> {
            for _ in 0..2 {
                let (mut s, peer) = listener.accept()?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                writeln!(s, "hola {peer}, pod-a got {msg:?}")?;
            }
            Ok(())
        });
        let reply = b.ns.run(|| talk(&format!("{a_ip}:80"), "from pod-b"))??;
        println!("pod-b -> {a_ip}:80 through cni0:        {}", reply.trim());
        let reply = node.run(|| talk("127.0.0.1:8080", "from the node"))??;
        println!("node -> 127.0.0.1:8080 (hostPort->:80): {}", reply.trim());
        server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        match a.ns.run(|| {
            Command::new("ping")
                .args(["-c", "1", "-W", "2", &b_ip.to_string()])
                .output()
        })? {
            Ok(o) if o.status.success() => {
                println!("pod-a ping {b_ip}:                     1 packet, reply received")
            }
            Ok(o) => bail!(
                "ping from pod-a to {b_ip} failed: {}",
                String::from_utf8_lossy(&o.stdout)
            ),
            Err(_) => println!("(ping not installed: skipped the ICMP check)"),
        }
        println!();
        Ok(())
    })();

    println!("Teardown: CNI DEL of every pod (reverse plugin order), then the pods' namespaces go");
    let mut teardown_err = None;
    for pod in &pods {
        let r = node.run(|| -> Result<()> {
            cni.del_network_list(&net, &pod.rt)
                .context("CNI DEL vaina")?;
            cni.del_network_list(&lo, &pod.rt)
                .context("CNI DEL loopback")?;
            Ok(())
        });
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            teardown_err.get_or_insert(e);
        }
    }
    drop(pods);
    let left_veths = veths(&node)?;
    let left_ips = reservations(&data_dir.join("vaina"));
    let nft = sh(
        &node,
        "nft list ruleset | grep -cE 'jump [mp]-|chain [mp]-|dnat (ip |ip6 )?to|elements =' || true",
    )?;
    println!("  veths left on the node:      {}", left_veths.len());
    println!("  IP reservations left:        {}", left_ips.len());
    println!("  per-pod nftables rules left: {}", nft.trim());
    drop(node);
    println!("  node namespace closed: its bridge went with it");
    result?;
    if let Some(e) = teardown_err {
        return Err(e);
    }
    if !left_veths.is_empty() || !left_ips.is_empty() || nft.trim() != "0" {
        bail!("teardown left resources behind");
    }
    println!("\nPart 1 done: nothing left.\n");

    if !plugin_dir.join("vainad").exists() || !plugin_dir.join("vaina-pod").exists() {
        bail!(
            "vainad and vaina-pod not found in {} (build with `cargo build --release`)",
            plugin_dir.display()
        );
    }
    let node = Netns::create().context("create the node's network namespace")?;
    sh(&node, "ip link set lo up")?;
    crate::demo_pods::run(&node, &plugin_dir, state.path())?;
    println!("\nDone: nothing left.");
    Ok(())
}

fn talk(addr: &str, msg: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(3))
        .with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(msg.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn sh(ns: &Netns, cmd: &str) -> Result<String> {
    let out = ns
        .run(|| Command::new("sh").arg("-c").arg(cmd).output())?
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn veths(node: &Netns) -> Result<Vec<String>> {
    Ok(sh(node, "ip -o link show type veth")?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

fn reservations(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}
