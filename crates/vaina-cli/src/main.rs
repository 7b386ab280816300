//! `vaina`: the command-line client of a vaina node. For now it runs the demo of the pod
//! network; the CRI client verbs (runp, pods, ps, exec, …) come with the runtime.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vaina",
    version,
    about = "vaina: a Kubernetes node runtime, pod networking end to end"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a throwaway node with two pods wired by vaina's CNI plugins, show the wiring,
    /// send traffic between them, tear everything down and show nothing is left.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaina: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
