//! The pod supervisor: one small process per pod that plays Kubernetes' "pause" role (it
//! holds the pod's namespaces and reaps orphans) and supervises the pod's containers.
//!
//! `vainad` starts the `vaina-pod` binary once per pod sandbox; the process detaches into its
//! own session so that it outlives daemon restarts, and the daemon talks to it over a unix
//! socket with one JSON request per line.
//!
//! Parts:
//! - [`protocol`]: the request/response types, the on-disk file names, and a small blocking
//!   [`protocol::Client`]. The daemon depends on this module only.
//! - [`launch`]: command line, namespace setup, the fork into the long-lived supervisor and the
//!   readiness handshake with the launching process.
//! - `supervisor` (private): the single-threaded `poll` loop — socket, clients, container
//!   stdout/stderr pipes, and a signalfd for SIGCHLD.
//! - `container` (private): running the OCI runtime's `create`, exit records.
//! - [`cri_log`]: framing of container output into CRI log lines.
//! - [`timefmt`]: RFC 3339 timestamps with nanoseconds, without a date library.
//!
//! Lifetime: the supervisor exits on `Shutdown`, or on SIGTERM/SIGINT, only when none of its
//! containers runs (a stray signal must not orphan a pod's containers); SIGKILL is the daemon's
//! way to force it. With `--pid`, the pod's PID 1 dies with it, and the kernel then kills
//! every process of the pod's PID namespace.
//!
//! Process tree of a pod (with `--pid`):
//! ```text
//! vainad ─ vaina-pod (launcher, exits when the supervisor is ready)
//!            └─ vaina-pod supervisor (setsid, child subreaper, socket)   host PID namespace
//!                 ├─ vaina-pod-init: PID 1 of the pod's PID namespace    reaps the pod's orphans
//!                 ├─ crun create … (while it runs)
//!                 └─ container init processes (reparented to us when crun exits)
//! ```

pub mod console;
mod container;
pub mod cri_log;
pub mod launch;
pub mod oci;
pub mod protocol;
mod supervisor;
pub mod timefmt;
