//! The `host-local` CNI plugin (see `vaina_plugins::host_local`).

fn main() -> std::process::ExitCode {
    vaina_cni::skel::run(
        &vaina_plugins::host_local::HostLocal,
        concat!("vaina host-local CNI plugin v", env!("CARGO_PKG_VERSION")),
    )
}
