//! CNI for vaina: the protocol between a container runtime and network
//! plugins, spec 1.1.0, also speaking 1.0.0, 0.4.0, 0.3.1 and 0.3.0 to
//! older peers.
//!
//! Both sides live here, as in the reference `containernetworking/cni`:
//!
//! - [`version`]: spec versions, which ones we speak, VERSION's answer.
//! - [`error`]: [`CniError`], the error object plugins print.
//! - [`config`]: network configs on plugin stdin and config lists on disk.
//! - [`result`]: [`CniResult`], ADD's result, read and written in any
//!   supported version.
//! - [`skel`] (plugin side): the [`Plugin`] trait and [`skel::run`], which
//!   turns environment and stdin into a call and prints the outcome.
//! - [`invoke`] (both sides): finding and executing a plugin; the
//!   `delegate_*` calls a plugin uses to run its IPAM plugin.
//! - [`runtime`] (runtime side, like libcni): running a config list's
//!   chain for an attachment, with libcni's result cache.
//!
//! Everything here is blocking: plugins are processes, and a plugin is a
//! short-lived single-threaded program. An async runtime calls [`runtime`]
//! from a blocking thread.

mod cache;
pub mod config;
pub mod error;
pub mod invoke;
pub mod result;
pub mod runtime;
pub mod skel;
pub mod version;

pub use config::{Attachment, ConfigError, NetworkConfig, NetworkConfigList, PluginConfig};
pub use error::CniError;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use runtime::{CniConfig, RuntimeConf, RuntimeError};
pub use skel::{CmdArgs, Command, Plugin};
