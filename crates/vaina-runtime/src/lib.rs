//! vaina's runtime core: pod sandboxes and (later) containers, independent of gRPC.
//!
//! - [`config`]: paths and binaries, with the defaults of ARCHITECTURE.md.
//! - [`store`]: records on disk, written atomically, so `vainad` can be killed at any time.
//! - [`network`]: the node's CNI networks (loopback + the first conflist), run through
//!   `vaina-cni`'s runtime library.
//! - [`supervisor`]: launching and stopping a pod's `vaina-pod` process.
//! - [`sandbox`]: RunPodSandbox, Stop, Remove, Status, List, and recovery after a restart.
//! - [`container`]: Create/Start/Stop/Remove containers, status, ExecSync.
//! - [`overlay`]: a container's overlayfs rootfs, with any number of image layers.
//! - [`spec`]: the OCI runtime spec of a container.
//! - [`stream`]: the runtime side of streaming exec (pipes or a TTY) and port-forward.
//!
//! Requests use the CRI's own message types (`k8s_cri::v1`) as plain data: they are the
//! domain model of a node runtime, and a parallel hierarchy of ~50 structs would only be
//! copied field by field. Nothing here knows about tonic.

pub mod config;
pub mod container;
pub mod devices;
pub mod error;
pub mod network;
pub mod overlay;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod stats;
pub mod store;
pub mod stream;
pub mod supervisor;
pub mod update;

pub use config::Config;
pub use error::{Error, Result};
pub use sandbox::Runtime;
