//! The `loopback` CNI plugin (see `vaina_plugins::loopback`).

fn main() -> std::process::ExitCode {
    vaina_cni::skel::run(
        &vaina_plugins::loopback::Loopback,
        concat!("vaina loopback CNI plugin v", env!("CARGO_PKG_VERSION")),
    )
}
