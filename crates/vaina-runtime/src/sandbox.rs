//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and listing, and
//! the recovery that runs when `vainad` starts.
//!
//! RunPodSandbox: record (Creating) → netns created and pinned → supervisor launched into
//! it → CNI ADD → record (Ready). Each step's undo runs if a later one fails; a crash in
//! the middle leaves a Creating record that the next start rolls back, and CNI GC releases
//! whatever the record did not know about.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{NamespaceMode, PodSandboxConfig, Protocol};
use serde::{Deserialize, Serialize};
use vaina_image::ImageStore;
use vaina_net::netns::Netns;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::store::Store;
use crate::supervisor::{self, LaunchSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// RunPodSandbox in progress (or interrupted by a crash: rolled back at start).
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub state: SandboxState,
    /// Unix time in nanoseconds.
    pub created_at: i64,
    /// The netns pin; None with hostNetwork.
    pub netns: Option<PathBuf>,
    pub supervisor_pid: Option<u32>,
    pub ip: Option<String>,
    pub additional_ips: Vec<String>,
    /// CNI ADD succeeded and no DEL has run since.
    pub network_attached: bool,
}

impl SandboxRecord {
    pub fn host_network(&self) -> bool {
        namespace_options(&self.config).0 == NamespaceMode::Node
    }

    /// `name_namespace_uid_attempt`: unique among sandboxes, as kubelet expects.
    pub fn name_key(&self) -> String {
        name_key(&self.config)
    }
}

fn name_key(c: &PodSandboxConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// (network, pid, ipc) modes of a sandbox config.
fn namespace_options(c: &PodSandboxConfig) -> (NamespaceMode, NamespaceMode, NamespaceMode) {
    let o = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let mode = |v: i32| NamespaceMode::try_from(v).unwrap_or(NamespaceMode::Pod);
    (mode(o.network), mode(o.pid), mode(o.ipc))
}

pub struct Runtime {
    pub(crate) cfg: Config,
    store: Store,
    network: Arc<Network>,
    pub(crate) images: Arc<ImageStore>,
    sandboxes: Mutex<HashMap<String, SandboxRecord>>,
    pub(crate) cstore: Store,
    pub(crate) containers: Mutex<HashMap<String, crate::container::ContainerRecord>>,
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// 64 hex digits from the kernel's CSPRNG, like containerd's ids.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("read /dev/urandom");
}

impl Runtime {
    /// Opens the runtime state, loads the CNI config and recovers from a previous run:
    /// interrupted RunPodSandbox calls are rolled back, sandboxes whose supervisor died are
    /// NotReady, and CNI GC releases attachments no sandbox owns.
    pub fn open(cfg: Config) -> Result<Runtime> {
        for d in [&cfg.root, &cfg.state_dir, &cfg.netns_dir(), &cfg.pods_dir()] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::failed(format!("create {}", d.display()), e))?;
        }
        let store = Store::open(cfg.root.join("sandboxes"))?;
        let network = Arc::new(Network::load(&cfg)?);
        let images = Arc::new(
            ImageStore::open(cfg.root.join("images"))
                .map_err(|e| Error::failed("open the image store", e))?,
        );
        let cstore = Store::open(cfg.root.join("container-records"))?;
        let rt = Runtime {
            cfg,
            store,
            network,
            images,
            sandboxes: Mutex::new(HashMap::new()),
            cstore,
            containers: Mutex::new(HashMap::new()),
        };
        rt.recover()?;
        rt.recover_containers()?;
        Ok(rt)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The node's image store. Its calls block (file I/O under a lock): async callers use
    /// `spawn_blocking`.
    pub fn images(&self) -> Arc<ImageStore> {
        self.images.clone()
    }

    fn recover(&self) -> Result<()> {
        let records: Vec<SandboxRecord> = self.store.load_all()?;
        let mut map = self.sandboxes.lock().unwrap();
        for mut r in records {
            match r.state {
                SandboxState::Creating => {
                    tracing::info!(
                        sandbox = r.id,
                        "rolling back a RunPodSandbox interrupted by a restart"
                    );
                    if let Err(e) = self.teardown_blocking(&mut r) {
                        tracing::warn!(sandbox = r.id, error = %e.chain(), "rollback failed; CNI GC will retry");
                    }
                    let _ = std::fs::remove_dir_all(self.cfg.pods_dir().join(&r.id));
                    self.store.remove(&r.id)?;
                    continue;
                }
                SandboxState::Ready => {
                    let alive = r
                        .supervisor_pid
                        .is_some_and(|p| supervisor::is_alive(p, &r.id));
                    if !alive {
                        tracing::info!(sandbox = r.id, "pod supervisor gone: sandbox is NotReady");
                        r.state = SandboxState::NotReady;
                        self.store.save(&r.id, &r)?;
                    }
                }
                SandboxState::NotReady => {}
            }
            map.insert(r.id.clone(), r);
        }
        let attached: Vec<String> = map
            .values()
            .filter(|r| r.network_attached)
            .map(|r| r.id.clone())
            .collect();
        drop(map);
        if let Err(e) = self.network.gc(&attached) {
            tracing::warn!(error = %e.chain(), "CNI GC at start failed");
        }
        Ok(())
    }

    /// A sandbox by full id or unique id prefix (as crictl accepts).
    pub fn resolve(&self, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("sandbox id is empty".into()));
        }
        let map = self.sandboxes.lock().unwrap();
        if map.contains_key(id) {
            return Ok(id.to_string());
        }
        let matches: Vec<&String> = map.keys().filter(|k| k.starts_with(id)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound {
                kind: "sandbox",
                id: id.into(),
            }),
            _ => Err(Error::InvalidArgument(format!(
                "sandbox id prefix {id} is ambiguous"
            ))),
        }
    }

    pub fn get(&self, id: &str) -> Result<SandboxRecord> {
        let id = self.resolve(id)?;
        Ok(self.sandboxes.lock().unwrap()[&id].clone())
    }

    pub fn list(&self) -> Vec<SandboxRecord> {
        let mut v: Vec<_> = self.sandboxes.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        config: PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String> {
        validate(&config)?;
        if !self.cfg.runtimes.contains_key(&runtime_handler) {
            return Err(Error::InvalidArgument(format!(
                "unknown runtime handler {runtime_handler:?}"
            )));
        }
        let id = new_id();
        let mut rec = SandboxRecord {
            id: id.clone(),
            config,
            runtime_handler,
            state: SandboxState::Creating,
            created_at: now_nanos(),
            netns: None,
            supervisor_pid: None,
            ip: None,
            additional_ips: Vec::new(),
            network_attached: false,
        };
        {
            // Reserve the name before any slow work, so concurrent duplicates fail fast.
            let mut map = self.sandboxes.lock().unwrap();
            let key = rec.name_key();
            if let Some(other) = map.values().find(|r| r.name_key() == key) {
                return Err(Error::AlreadyExists {
                    what: format!("sandbox name {key} (reserved by {})", other.id),
                });
            }
            self.store.save(&id, &rec)?;
            map.insert(id.clone(), rec.clone());
        }
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = this.setup_blocking(&mut rec);
            (rec, r)
        })
        .await
        .map_err(|e| Error::Internal(format!("sandbox setup task: {e}")))?;
        let (mut rec, r) = res;
        match r {
            Ok(()) => {
                rec.state = SandboxState::Ready;
                self.store.save(&id, &rec)?;
                self.sandboxes.lock().unwrap().insert(id.clone(), rec);
                Ok(id)
            }
            Err(e) => {
                let this = self.clone();
                let cleanup = tokio::task::spawn_blocking(move || {
                    let res = this.teardown_blocking(&mut rec);
                    let _ = std::fs::remove_dir_all(this.cfg.pods_dir().join(&rec.id));
                    res
                })
                .await;
                if let Ok(Err(c)) = cleanup {
                    tracing::warn!(sandbox = id, error = %c.chain(), "rollback of a failed RunPodSandbox failed; CNI GC will retry");
                }
                self.store.remove(&id)?;
                self.sandboxes.lock().unwrap().remove(&id);
                Err(e)
            }
        }
    }

    /// The slow part of RunPodSandbox; `rec` records each acquisition as it happens, so
    /// `teardown_blocking` undoes exactly what was done.
    fn setup_blocking(&self, rec: &mut SandboxRecord) -> Result<()> {
        let t = std::time::Instant::now();
        let id = rec.id.clone();
        let (net_mode, pid_mode, ipc_mode) = namespace_options(&rec.config);
        let dir = self.cfg.pods_dir().join(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::failed(format!("create {}", dir.display()), e))?;
        write_resolv_conf(&dir, &rec.config)?;

        if net_mode != NamespaceMode::Node {
            let pin = self.cfg.netns_dir().join(&id);
            let ns = Netns::create().map_err(|e| Error::failed("create network namespace", e))?;
            ns.pin(&pin)
                .map_err(|e| Error::failed("pin network namespace", e))?;
            rec.netns = Some(pin);
            self.store.save(&id, rec)?;
            apply_net_sysctls(&ns, &rec.config)?;
        }

        let spec = LaunchSpec {
            id: id.clone(),
            dir: dir.clone(),
            netns: rec.netns.clone(),
            hostname: Some(rec.config.hostname.clone()).filter(|h| !h.is_empty()),
            uts: net_mode != NamespaceMode::Node,
            ipc: ipc_mode != NamespaceMode::Node,
            pid: pid_mode == NamespaceMode::Pod,
        };
        let t_ns = t.elapsed();
        if rec.netns.is_some() {
            // Registered before the ADD: a half-done ADD is undone by DEL.
            rec.network_attached = true;
            self.store.save(&id, rec)?;
        }
        // The supervisor and the CNI ADD only share the pinned netns: start them side by
        // side. A crash in between is undone by `teardown_blocking`, which finds a
        // supervisor not yet recorded by its pid file.
        let caps = capability_args(&rec.config);
        let (launched, added) = std::thread::scope(|s| {
            let sup = s.spawn(|| supervisor::launch(&self.cfg.pod_binary(), &spec));
            let net = rec
                .netns
                .as_deref()
                .map(|netns| self.network.setup(&id, netns, caps));
            (sup.join().expect("supervisor launch thread panicked"), net)
        });
        if let Ok(pid) = launched {
            rec.supervisor_pid = Some(pid);
        }
        if let Some(added) = added {
            let result = added?;
            let mut ips = result
                .ips
                .iter()
                .filter(|i| !i.address.addr().is_loopback())
                .map(|i| i.address.addr().to_string());
            rec.ip = ips.next();
            rec.additional_ips = ips.collect();
        }
        let pid = launched?;
        self.store.save(&id, rec)?;
        if spec.ipc {
            apply_ipc_sysctls(pid, &rec.config)?;
        }
        tracing::debug!(sandbox = id, netns = ?t_ns, total = ?t.elapsed(), "sandbox set up");
        Ok(())
    }

    /// Undoes what `rec` says was set up: network, supervisor, netns pin. Repeatable.
    fn teardown_blocking(&self, rec: &mut SandboxRecord) -> Result<()> {
        let t = std::time::Instant::now();
        let supervisor_pid = rec
            .supervisor_pid
            .or_else(|| supervisor::read_pid(&self.cfg.pods_dir().join(&rec.id)));
        // The netns stays pinned until both are done, so DEL can still enter it while
        // the supervisor goes.
        let (net, sup) = std::thread::scope(|s| {
            let sup = s.spawn(|| match supervisor_pid {
                Some(pid) => supervisor::stop(pid, &rec.id),
                None => Ok(()),
            });
            let net = if rec.network_attached {
                let netns = rec.netns.clone().unwrap_or_default();
                self.network.teardown(&rec.id, &netns)
            } else {
                Ok(())
            };
            (net, sup.join().expect("supervisor stop thread panicked"))
        });
        net?;
        if rec.network_attached {
            rec.network_attached = false;
            self.store.save(&rec.id, rec)?;
        }
        sup?;
        if let Some(pin) = &rec.netns {
            Netns::unpin(pin).map_err(|e| Error::failed("remove network namespace", e))?;
        }
        tracing::debug!(sandbox = rec.id, took = ?t.elapsed(), "sandbox torn down");
        Ok(())
    }

    /// StopPodSandbox: the pod's processes and network go; the record stays (NotReady).
    /// Stopping a stopped sandbox succeeds.
    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let id = self.resolve(id)?;
        self.stop_containers_of(&id).await?;
        self.release_sandbox(&id).await
    }

    async fn stop_containers_of(self: &Arc<Self>, id: &str) -> Result<()> {
        for c in self.containers_of(id) {
            self.stop_container(&c, 0).await?;
        }
        Ok(())
    }

    /// Network, supervisor and netns of a sandbox whose containers have stopped.
    async fn release_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let mut rec = self.get(id)?;
        let this = self.clone();
        let (rec, res) = tokio::task::spawn_blocking(move || {
            let r = this.teardown_blocking(&mut rec);
            (rec, r)
        })
        .await
        .map_err(|e| Error::Internal(format!("sandbox stop task: {e}")))?;
        let mut rec = rec;
        res?;
        rec.state = SandboxState::NotReady;
        self.store.save(id, &rec)?;
        self.sandboxes.lock().unwrap().insert(id.to_string(), rec);
        Ok(())
    }

    /// RemovePodSandbox: stops it if needed and forgets it. Removing what does not exist
    /// succeeds, as kubelet expects.
    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Ok(id) => id,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_containers_of(&id).await?;
        // Once the containers have exited, their rootfs and the pod's network are
        // independent: release both side by side.
        let remove_containers = async {
            for c in self.containers_of(&id) {
                self.remove_container(&c).await?;
            }
            Ok::<(), Error>(())
        };
        let (released, removed) = tokio::join!(self.release_sandbox(&id), remove_containers);
        released?;
        removed?;
        let dir = self.cfg.pods_dir().join(&id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::failed(format!("remove {}", dir.display()), e)),
        }
        self.store.remove(&id)?;
        self.sandboxes.lock().unwrap().remove(&id);
        Ok(())
    }

    /// The pod's resolv.conf, if its config had DNS settings.
    pub fn resolv_conf(&self, id: &str) -> Option<PathBuf> {
        let p = self.cfg.pods_dir().join(id).join("resolv.conf");
        p.exists().then_some(p)
    }
}

fn validate(c: &PodSandboxConfig) -> Result<()> {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("sandbox config has no metadata".into()))?;
    for (field, v) in [
        ("name", &m.name),
        ("namespace", &m.namespace),
        ("uid", &m.uid),
    ] {
        if v.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "sandbox metadata.{field} is empty"
            )));
        }
    }
    for p in &c.port_mappings {
        if p.container_port <= 0
            || p.container_port > 65535
            || p.host_port < 0
            || p.host_port > 65535
        {
            return Err(Error::InvalidArgument(format!(
                "invalid port mapping host {} -> container {}",
                p.host_port, p.container_port
            )));
        }
    }
    if let Some(l) = &c.linux {
        for k in l.sysctls.keys() {
            if !(k.starts_with("net.") || k.starts_with("kernel.") || k.starts_with("fs.mqueue.")) {
                return Err(Error::InvalidArgument(format!(
                    "sysctl {k} is not namespaced and cannot be set for a pod"
                )));
            }
        }
    }
    Ok(())
}

/// CNI capability arguments: host ports (only mappings with a host port, as kubelet sends).
fn capability_args(c: &PodSandboxConfig) -> serde_json::Map<String, serde_json::Value> {
    let maps: Vec<serde_json::Value> = c
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp) {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            serde_json::json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": proto,
                "hostIP": p.host_ip,
            })
        })
        .collect();
    let mut m = serde_json::Map::new();
    if !maps.is_empty() {
        m.insert("portMappings".into(), maps.into());
    }
    m
}

fn write_resolv_conf(dir: &Path, c: &PodSandboxConfig) -> Result<()> {
    let Some(dns) = &c.dns_config else {
        return Ok(());
    };
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for n in &dns.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    crate::store::write_atomic(&dir.join("resolv.conf"), s.as_bytes())
}

/// The IPC sysctls (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`), written
/// inside the pod's IPC namespace (held by its supervisor) from a throwaway thread.
fn apply_ipc_sysctls(supervisor_pid: u32, c: &PodSandboxConfig) -> Result<()> {
    let Some(l) = &c.linux else { return Ok(()) };
    let ipc: Vec<(&String, &String)> = l
        .sysctls
        .iter()
        .filter(|(k, _)| !k.starts_with("net."))
        .collect();
    if ipc.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(format!("/proc/{supervisor_pid}/ns/ipc"))
        .map_err(|e| Error::failed("open the pod's IPC namespace", e))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWIPC)
                .map_err(|e| Error::failed("enter the pod's IPC namespace", e))?;
            for (k, v) in ipc {
                vaina_net::sysctl::set(k, v).map_err(|e| {
                    Error::InvalidArgument(format!("cannot set sysctl {k}={v}: {e}"))
                })?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| Error::Internal("sysctl thread panicked".into()))?
    })
}

/// `net.*` sysctls of the pod, written inside its network namespace.
fn apply_net_sysctls(ns: &Netns, c: &PodSandboxConfig) -> Result<()> {
    let Some(l) = &c.linux else { return Ok(()) };
    let net: Vec<(&String, &String)> = l
        .sysctls
        .iter()
        .filter(|(k, _)| k.starts_with("net."))
        .collect();
    if net.is_empty() {
        return Ok(());
    }
    ns.run(|| -> Result<()> {
        for (k, v) in net {
            vaina_net::sysctl::set(k, v)
                .map_err(|e| Error::InvalidArgument(format!("cannot set sysctl {k}={v}: {e}")))?;
        }
        Ok(())
    })
    .map_err(|e| Error::failed("enter pod network namespace", e))?
}

/// A record as JSON, for verbose status output.
pub fn record_json(r: &SandboxRecord) -> String {
    serde_json::to_string(r).unwrap_or_default()
}
