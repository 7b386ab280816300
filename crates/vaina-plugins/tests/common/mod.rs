//! Harness of the end-to-end tests: the real plugin binaries, driven through vaina's CNI
//! runtime library, inside a throwaway node namespace.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vaina_cni::config::NetworkConfigList;
use vaina_cni::result::CniResult;
use vaina_cni::runtime::{CniConfig, RuntimeConf};
use vaina_testkit::{Node, Pod};

/// Directory of the plugin binaries cargo built for this test run.
pub fn vaina_bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vaina-bridge"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Harness {
    pub node: Node,
    pub cni: CniConfig,
    pub lo: NetworkConfigList,
    pub net: NetworkConfigList,
    pub data_dir: PathBuf,
}

/// The conflist of the default network with `subnet`, vaina's plugin types, IPAM data in the
/// node's temp dir. `extra_bridge` is merged into the bridge plugin's object.
pub fn conflist(version: &str, subnet: &str, data_dir: &Path, extra_bridge: &str) -> String {
    format!(
        r#"{{
  "cniVersion": "{version}",
  "name": "e2e",
  "plugins": [
    {{
      "type": "vaina-bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
      "hairpinMode": true{extra_bridge},
      "ipam": {{ "type": "vaina-host-local", "ranges": [[{{ "subnet": "{subnet}" }}]],
                "routes": [{{ "dst": "0.0.0.0/0" }}], "dataDir": "{}" }}
    }},
    {{ "type": "vaina-portmap", "capabilities": {{ "portMappings": true }} }}
  ]
}}"#,
        data_dir.display()
    )
}

impl Harness {
    pub fn new() -> Harness {
        Self::with_conflist(|dir| conflist("1.1.0", "10.88.0.0/16", dir, ""))
    }

    pub fn with_conflist(make: impl FnOnce(&Path) -> String) -> Harness {
        Self::with_bin_dirs(vec![vaina_bin_dir()], make, LOOPBACK)
    }

    pub fn with_bin_dirs(
        bin_dirs: Vec<PathBuf>,
        make: impl FnOnce(&Path) -> String,
        lo: &str,
    ) -> Harness {
        let node = Node::new();
        let data_dir = node.path("networks");
        let net = NetworkConfigList::from_bytes(make(&data_dir).as_bytes()).expect("conflist");
        let lo = NetworkConfigList::from_bytes(lo.as_bytes()).expect("loopback conflist");
        let cni = CniConfig {
            bin_dirs,
            cache_dir: node.path("cache"),
        };
        Harness {
            node,
            cni,
            lo,
            net,
            data_dir,
        }
    }

    pub fn rt(&self, id: &str, pod: &Pod) -> RuntimeConf {
        RuntimeConf::new(id, pod.path(), "eth0")
    }

    /// CNI ADD of the loopback network then the pod network, as a runtime does.
    pub fn add(&self, rt: &RuntimeConf) -> Result<CniResult, String> {
        self.node.run(|| {
            self.cni
                .add_network_list(&self.lo, rt)
                .map_err(|e| format!("{e:#}"))?;
            self.cni
                .add_network_list(&self.net, rt)
                .map_err(|e| error_text(&e))
        })
    }

    pub fn del(&self, rt: &RuntimeConf) -> Result<(), String> {
        self.node.run(|| {
            self.cni
                .del_network_list(&self.net, rt)
                .map_err(|e| error_text(&e))?;
            self.cni
                .del_network_list(&self.lo, rt)
                .map_err(|e| error_text(&e))
        })
    }

    /// IPs reserved in the host-local store of the network.
    pub fn reservations(&self) -> Vec<String> {
        std::fs::read_dir(self.data_dir.join(&self.net.name))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Per-attachment nftables objects left in the node (chains and map elements).
    pub fn nft_leftovers(&self) -> String {
        let out = self.node.sh_ok("nft list ruleset");
        out.lines()
            .filter(|l| {
                [
                    "jump m-",
                    "jump p-",
                    "jump s-",
                    "chain m-",
                    "chain p-",
                    "chain s-",
                    "dnat ip to",
                    "dnat ip6 to",
                    "dnat to",
                    "elements =",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn cache_files(&self) -> usize {
        std::fs::read_dir(self.cni.cache_dir.join("results"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    /// Asserts the node holds nothing of any pod.
    pub fn assert_clean(&self) {
        assert_eq!(self.node.veths(), Vec::<String>::new(), "veths left");
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "IP reservations left"
        );
        assert_eq!(self.nft_leftovers(), "", "nftables rules left");
        assert_eq!(self.cache_files(), 0, "cached results left");
    }
}

pub const LOOPBACK: &str =
    r#"{"cniVersion":"1.1.0","name":"lo","plugins":[{"type":"vaina-loopback"}]}"#;

pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn pod_ip(r: &CniResult) -> IpAddr {
    r.ips
        .iter()
        .find(|i| i.address.addr().is_ipv4())
        .expect("an IPv4 address")
        .address
        .addr()
}

/// A one-shot TCP echo server listening inside `pod` on `port`: replies "pong:<msg>" to
/// each of `n` connections.
pub fn serve(pod: &Pod, port: u16, n: usize) -> std::thread::JoinHandle<()> {
    let l = pod
        .run(|| TcpListener::bind(("0.0.0.0", port)))
        .expect("bind in pod");
    std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 64];
            let k = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(format!("pong:{}", String::from_utf8_lossy(&buf[..k])).as_bytes());
        }
    })
}

/// Connects to `addr` from the calling thread's namespace and exchanges one message.
pub fn talk(addr: &str, msg: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(msg.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
