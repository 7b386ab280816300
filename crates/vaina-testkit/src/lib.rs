//! Test fixtures shared by vaina's namespace and end-to-end tests.
//!
//! Every networking test runs inside its own [`Node`]: a fresh network namespace that plays
//! the host, held only by a file descriptor, so the kernel removes it (and every bridge,
//! veth, route and nftables table in it) when the test ends, even on panic. Pods are more
//! namespaces held the same way ([`Node::pod`]). Nothing is mounted and nothing touches the
//! machine's own network.

pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vaina_net::netns::Netns;

/// True when the test can create namespaces. Tests that need it return early after
/// printing why, so an unprivileged `cargo test` still runs the pure tests.
pub fn can_run_ns_tests() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to create network namespaces");
    false
}

/// A throwaway "node": a network namespace with `lo` up, plus a temp dir for state.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::create().expect("create node netns");
        let node = Node {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        node.sh_ok("ip link set lo up");
        node
    }

    /// A new pod namespace (lo down, like a fresh sandbox before the loopback plugin).
    pub fn pod(&self) -> Pod {
        Pod {
            ns: Netns::create().expect("create pod netns"),
        }
    }

    /// Path of a scratch file or directory inside this node's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `f` inside the node's namespace on a throwaway thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).expect("enter node netns")
    }

    /// Runs a shell command inside the node's namespace.
    pub fn sh(&self, cmd: &str) -> Output {
        sh_in(&self.ns, cmd)
    }

    /// Runs a shell command inside the node and returns stdout, panicking on failure.
    pub fn sh_ok(&self, cmd: &str) -> String {
        ok(cmd, self.sh(cmd))
    }

    /// Names of the veth interfaces in the node namespace.
    pub fn veths(&self) -> Vec<String> {
        self.sh_ok("ip -o link show type veth")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

/// A pod network namespace held by an fd. `path()` is what CNI_NETNS gets.
pub struct Pod {
    pub ns: Netns,
}

impl Pod {
    pub fn path(&self) -> PathBuf {
        self.ns.fd_path()
    }

    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).expect("enter pod netns")
    }

    pub fn sh(&self, cmd: &str) -> Output {
        sh_in(&self.ns, cmd)
    }

    pub fn sh_ok(&self, cmd: &str) -> String {
        ok(cmd, self.sh(cmd))
    }
}

fn sh_in(ns: &Netns, cmd: &str) -> Output {
    ns.run(|| Command::new("sh").arg("-c").arg(cmd).output())
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("spawn sh -c {cmd:?}: {e}"))
}

fn ok(cmd: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Makes the test process a child subreaper, so processes orphaned by what a test started
/// (a daemon's pod supervisors) come back to it and [`reap_zombies`] can collect them: on
/// this machine PID 1 does not reap orphans.
pub fn become_subreaper() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Waits for every zombie child of this process, except `keep` (children a caller still
/// waits for itself). Call it only where no other thread of the process is waiting for a
/// child of its own (it could take that child's status): the test suite runs under
/// nextest, one process per test.
pub fn reap_zombies(keep: &[u32]) {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if keep.contains(&(pid as u32)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = tail.split_whitespace();
        if f.next() == Some("Z") && f.next().and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
    }
}
