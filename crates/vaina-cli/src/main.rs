//! `vaina`: the command-line client of a node. crictl's verbs against any CRI endpoint
//! (vainad by default, containerd or CRI-O with `--endpoint`), and the demo of the pod
//! network.

mod containerconfig;
mod containers;
mod demo;
mod demo_pods;
mod images;
mod podconfig;
mod pods;
mod stats;
mod streaming;
mod table;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "vaina",
    version,
    about = "vaina: a Kubernetes node runtime, pod networking end to end"
)]
struct Cli {
    /// CRI endpoint (unix socket).
    #[arg(
        long,
        global = true,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = vaina_cri::client::DEFAULT_ENDPOINT
    )]
    endpoint: String,
    #[command(subcommand)]
    cmd: Top,
}

/// The stats verbs, then everything else.
#[derive(Subcommand)]
enum Top {
    /// Resource usage of containers (CPU %, memory, writable layer), like crictl stats.
    Stats(stats::StatsArgs),
    /// Resource usage of pods (CPU %, memory, network, processes), like crictl statsp.
    Statsp(stats::StatspArgs),
    #[command(flatten)]
    Other(Cmd),
}

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a throwaway node with two pods wired by vaina's CNI plugins, show the wiring,
    /// send traffic between them, tear everything down and show nothing is left.
    Demo(demo::DemoArgs),
    /// The runtime's name and versions.
    Version,
    /// The runtime's status conditions and configuration.
    Info,
    /// Run a pod sandbox from a JSON config file (crictl's format); prints its id.
    Runp {
        config: std::path::PathBuf,
        /// Runtime handler (e.g. runc); default: the runtime's default.
        #[arg(long, default_value = "")]
        runtime: String,
    },
    /// List pod sandboxes.
    Pods(pods::ListArgs),
    /// Show a pod sandbox's status (JSON).
    Inspectp { ids: Vec<String> },
    /// Stop pod sandboxes: their processes and network go.
    Stopp { ids: Vec<String> },
    /// Remove pod sandboxes (stopping them first).
    Rmp { ids: Vec<String> },
    /// List images.
    #[command(visible_alias = "img")]
    Images(images::ListArgs),
    /// Image store commands that need no daemon (import).
    #[command(subcommand)]
    Image(images::ImageCmd),
    /// Show images' status and config (JSON).
    Inspecti { refs: Vec<String> },
    /// Remove images, with all their names.
    Rmi { refs: Vec<String> },
    /// Pull an image from its registry (vainad: through the hosts of its registry config
    /// dir), with a progress bar per layer when the runtime reports progress.
    Pull(images::PullArgs),
    /// Create a container in a pod from JSON config files (crictl's format); prints its id.
    Create(containers::CreateArgs),
    /// Run a pod and a container in it (runp, create, start); prints the container's id.
    Run(containers::RunArgs),
    /// Start created containers.
    Start(containers::IdsArgs),
    /// Stop running containers (SIGTERM, then SIGKILL after the timeout).
    Stop(containers::StopArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// List containers (only running ones unless -a).
    Ps(containers::ListArgs),
    /// Show containers' status (JSON).
    Inspect(containers::IdsArgs),
    /// Run a command in a running container, streaming its output (-i stdin, -t terminal;
    /// -s: ExecSync); exits with the command's exit code.
    Exec(containers::ExecArgs),
    /// Attach to a running container's stdio (-i stdin, -t for a container with a tty).
    Attach(streaming::AttachArgs),
    /// Forward local ports to ports inside a pod's network namespace: POD LOCAL:REMOTE….
    PortForward(streaming::PortForwardArgs),
    /// Print a container's logs (from the log file the runtime reports).
    Logs(containers::LogsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    let res = match cli.cmd {
        Top::Stats(a) => rt().and_then(|rt| rt.block_on(stats::containers(&cli.endpoint, a))),
        Top::Statsp(a) => rt().and_then(|rt| rt.block_on(stats::pods(&cli.endpoint, a))),
        Top::Other(Cmd::Demo(a)) => demo::run(a),
        Top::Other(Cmd::Image(a)) => images::image(a),
        Top::Other(cmd) => rt().and_then(|rt| rt.block_on(pods::run(&cli.endpoint, cmd))),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaina: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
