//! `vainad`: the CRI runtime daemon. Parses its configuration, opens the runtime (which
//! recovers from a previous run) and serves CRI v1 on a unix socket (mode 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use vaina_runtime::{Config, Runtime};

#[derive(Parser)]
#[command(name = "vainad", version, about = "vaina's CRI v1 runtime daemon")]
struct Args {
    /// TOML configuration file (every field optional; see ARCHITECTURE.md for defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Root of all state and images; also puts the socket, netns pins and the default CNI
    /// config under it (ROOT/run, ROOT/net.d), which is what tests use.
    #[arg(long)]
    root: Option<PathBuf>,
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Colon-separated CNI plugin directories.
    #[arg(long)]
    cni_bin_dir: Option<String>,
    /// Registry hosts configuration for image pulls (TOML key `registry_config_dir`),
    /// containerd's layout: DIR/<registry>/hosts.toml names mirrors, the server, CAs and
    /// plain-HTTP hosts (e.g. DIR/registry.k8s.io/hosts.toml), DIR/_default/hosts.toml
    /// applies to every registry. Default /etc/vaina/certs.d, or ROOT/certs.d with --root.
    #[arg(long, value_name = "DIR")]
    registry_config_dir: Option<PathBuf>,
    /// Address of the streaming server that Exec, Attach and PortForward URLs point to
    /// (TOML key `stream_address`). Default 127.0.0.1:0: loopback, a free port.
    #[arg(long, value_name = "IP:PORT")]
    stream_address: Option<std::net::SocketAddr>,
}

fn config(args: &Args) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(root) = &args.root {
        let under = Config::under(root);
        cfg.root = under.root;
        cfg.state_dir = under.state_dir;
        cfg.socket = under.socket;
        cfg.cni_conf_dir = under.cni_conf_dir;
        cfg.ipam_data_dir = under.ipam_data_dir;
        cfg.registry_config_dir = under.registry_config_dir;
    }
    if let Some(s) = &args.socket {
        cfg.socket = s.clone();
    }
    if let Some(d) = &args.cni_conf_dir {
        cfg.cni_conf_dir = d.clone();
    }
    if let Some(d) = &args.registry_config_dir {
        cfg.registry_config_dir = d.clone();
    }
    if let Some(d) = &args.cni_bin_dir {
        cfg.cni_bin_dirs = std::env::split_paths(d).collect();
    }
    if let Some(a) = args.stream_address {
        cfg.stream_address = a;
    }
    Ok(cfg)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VAINA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = config(&args)?;
    // Pod supervisors leave the daemon's process tree when their launcher exits; as a
    // subreaper vainad gets them back, so it can reap them when it stops a pod.
    nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: Config) -> Result<()> {
    let socket = cfg.socket.clone();
    let stream_address = cfg.stream_address;
    let rt = tokio::task::spawn_blocking(move || Runtime::open(cfg))
        .await?
        .context("open the runtime")?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", socket.display())),
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("bind {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %socket.display(), "serving CRI v1");
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(vaina_runtime::supervisor::reap_orphans).await;
        }
    });
    let rt = Arc::new(rt);
    let streams = vaina_stream::StreamServer::start(
        vaina_stream::ServerConfig {
            addr: stream_address,
            ..Default::default()
        },
        Arc::new(vaina_cri::streaming::RuntimeStreams(rt.clone())),
    )
    .await
    .with_context(|| format!("start the streaming server on {stream_address}"))?;
    tracing::info!(
        url = streams.base_url(),
        "streaming server (exec, attach, port-forward)"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vaina_cri::serve(rt, Arc::new(streams), listener, async {
        let _ = stop_rx.await;
    }));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down; pods keep running");
    let _ = stop_tx.send(());
    // Graceful shutdown waits for clients to hang up; a client that keeps its connection
    // open must not keep the daemon alive.
    match tokio::time::timeout(std::time::Duration::from_secs(2), server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::info!("clients still connected after 2 s: closing"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
