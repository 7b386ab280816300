//! The `portmap` CNI plugin (see `vaina_plugins::portmap`).

fn main() -> std::process::ExitCode {
    vaina_cni::skel::run(
        &vaina_plugins::portmap::Portmap,
        concat!("vaina portmap CNI plugin v", env!("CARGO_PKG_VERSION")),
    )
}
