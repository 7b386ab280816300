//! `vaina-pod`: the per-pod supervisor. See the library's documentation.

use std::process::ExitCode;

use vaina_pod::launch::{self, Options, USAGE, UsageError, error_chain};

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args_os().skip(1)) {
        Ok(opts) => opts,
        Err(UsageError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vaina-pod: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Returns in the launching process only; the supervisor exits from inside.
    match launch::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaina-pod: pod {}: {}", opts.id, error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
