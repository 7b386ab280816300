//! `vaina exec` (streaming), `vaina attach` and `vaina port-forward`: the CRI hands out a
//! URL on the runtime's streaming server, and the client speaks SPDY/3.1 to it, as crictl.
//! With a TTY the local terminal is put in raw mode (restored on exit, also on error) and
//! its size follows SIGWINCH.

use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use vaina_cri::client::Cri;
use vaina_stream::client::{ClientOptions, PortForwardClient, remote_command};
use vaina_stream::runtime::{BoxRead, BoxWrite, StreamIo, TermSize};

#[derive(clap::Args)]
pub struct AttachArgs {
    /// Pass stdin to the container.
    #[arg(short, long)]
    interactive: bool,
    /// The container has a terminal (it was created with `tty`).
    #[arg(short, long)]
    tty: bool,
    /// Container id (or unique id prefix).
    id: String,
}

#[derive(clap::Args)]
pub struct PortForwardArgs {
    /// Pod sandbox id (or unique id prefix).
    pod: String,
    /// LOCAL:REMOTE port pairs (or one PORT for both), e.g. 8080:80.
    #[arg(required = true)]
    ports: Vec<String>,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
}

/// Streaming exec: stdout/stderr as they come, stdin with `-i`, a terminal with `-t`.
/// Returns the command's exit code.
pub async fn exec(
    c: &mut Cri,
    id: &str,
    cmd: Vec<String>,
    interactive: bool,
    tty: bool,
) -> Result<i32> {
    let url = c
        .runtime
        .exec(cri::ExecRequest {
            container_id: id.into(),
            cmd,
            tty,
            stdin: interactive,
            stdout: true,
            stderr: !tty,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        .with_context(|| format!("exec in container {id}"))?
        .into_inner()
        .url;
    session(&url, interactive, tty).await
}

pub async fn attach(c: &mut Cri, a: AttachArgs) -> Result<i32> {
    let url = c
        .runtime
        .attach(cri::AttachRequest {
            container_id: a.id.clone(),
            stdin: a.interactive,
            tty: a.tty,
            stdout: true,
            stderr: !a.tty,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        .with_context(|| format!("attach to container {}", a.id))?
        .into_inner()
        .url;
    session(&url, a.interactive, a.tty).await
}

async fn session(url: &str, interactive: bool, tty: bool) -> Result<i32> {
    let raw = if tty { RawMode::enter() } else { None };
    let resize = if tty { Some(watch_size()?) } else { None };
    let io = StreamIo {
        stdin: interactive.then(|| Box::new(tokio::io::stdin()) as BoxRead),
        stdout: Some(Box::new(tokio::io::stdout()) as BoxWrite),
        stderr: (!tty).then(|| Box::new(tokio::io::stderr()) as BoxWrite),
        tty,
        resize,
    };
    let code = remote_command(url, &ClientOptions::spdy(), io).await;
    drop(raw);
    Ok(code?)
}

/// The local terminal in raw mode until dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

fn term_size() -> Option<TermSize> {
    let mut ws: nix::libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize through a valid pointer.
    let r = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(TermSize {
        width: ws.ws_col,
        height: ws.ws_row,
    })
}

/// The terminal's size now and after every SIGWINCH.
fn watch_size() -> Result<mpsc::Receiver<TermSize>> {
    let (tx, rx) = mpsc::channel(4);
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    tokio::spawn(async move {
        if let Some(s) = term_size()
            && tx.send(s).await.is_err()
        {
            return;
        }
        while winch.recv().await.is_some() {
            if let Some(s) = term_size()
                && tx.send(s).await.is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// Listens on each LOCAL port and forwards every connection to REMOTE inside the pod,
/// until interrupted.
pub async fn port_forward(c: &mut Cri, a: PortForwardArgs) -> Result<()> {
    let mut pairs = Vec::new();
    for p in &a.ports {
        let (local, remote) = p.split_once(':').unwrap_or((p, p));
        let parse = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("invalid port {s:?} in {p:?}"))
        };
        pairs.push((parse(local)?, parse(remote)?));
    }
    let url = c
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: a.pod.clone(),
            port: pairs.iter().map(|(_, r)| i32::from(*r)).collect(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
        .with_context(|| format!("port-forward to pod {}", a.pod))?
        .into_inner()
        .url;
    let client = std::sync::Arc::new(
        PortForwardClient::connect(&url)
            .await
            .context("connect to the streaming server")?,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (local, remote) in pairs {
        let listener = tokio::net::TcpListener::bind((a.address.as_str(), local))
            .await
            .with_context(|| format!("listen on {}:{local}", a.address))?;
        println!("Forwarding from {} -> {remote}", listener.local_addr()?);
        let client = client.clone();
        tasks.spawn(async move { client.serve(listener, remote).await });
    }
    tokio::select! {
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => bail!("port-forward: {e}"),
            _ => Ok(()),
        },
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
