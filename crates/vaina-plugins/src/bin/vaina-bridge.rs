//! The `bridge` CNI plugin (see `vaina_plugins::bridge`).

fn main() -> std::process::ExitCode {
    vaina_cni::skel::run(
        &vaina_plugins::bridge::Bridge,
        concat!("vaina bridge CNI plugin v", env!("CARGO_PKG_VERSION")),
    )
}
