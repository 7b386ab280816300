//! Seccomp for containers: the CRI's `security_context.seccomp` (and the deprecated
//! `seccomp_profile_path` strings) → the OCI `linux.seccomp` of the spec.
//!
//! - RuntimeDefault (`runtime/default`, `docker/default`): the default profile of moby and
//!   containerd, built here as [`Rule`]s (allow-list, EPERM for the rest; rules that depend
//!   on the container's capabilities, its architecture or the kernel version are resolved
//!   against the container, as containerd's `seccomp.DefaultProfile(spec)` does).
//! - Unconfined (`unconfined`): no filter.
//! - Localhost (`localhost/<path>`): a JSON profile on the node, either an OCI
//!   `LinuxSeccomp` or a docker-style profile (`archMap`, `syscalls[].name(s)`,
//!   `includes`/`excludes`), resolved the same way.
//!
//! Privileged containers get no filter (containerd).

use std::path::Path;

use k8s_cri::v1::LinuxContainerSecurityContext;
use k8s_cri::v1::security_profile::ProfileType;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The seccomp filter of a container, or None (unconfined).
pub fn for_container(
    sc: &LinuxContainerSecurityContext,
    caps: &[Capability],
) -> Result<Option<LinuxSeccomp>> {
    if sc.privileged {
        return Ok(None);
    }
    let caps: Vec<String> = caps
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Some(runtime_default(&caps)?)),
            Ok(ProfileType::Unconfined) => Ok(None),
            Ok(ProfileType::Localhost) => localhost(&p.localhost_ref, &caps).map(Some),
            Err(_) => Err(Error::InvalidArgument(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    // The deprecated field: older kubelets and crictl configs still send it.
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(runtime_default(&caps)?)),
        p => match p.strip_prefix("localhost/") {
            Some(path) => localhost(path, &caps).map(Some),
            None => Err(Error::InvalidArgument(format!(
                "unknown seccomp profile {p:?} (runtime/default, docker/default, unconfined, \
                 localhost/<path>)"
            ))),
        },
    }
}

/// The default profile, resolved for a container with capabilities `caps` (`CAP_…`).
pub fn runtime_default(caps: &[String]) -> Result<LinuxSeccomp> {
    default_profile().resolve(caps, &Target::native())
}

/// A Localhost profile: an absolute path to a readable JSON profile.
fn localhost(path: &str, caps: &[String]) -> Result<LinuxSeccomp> {
    let bad =
        |why: String| Error::InvalidArgument(format!("seccomp localhost profile {path:?}: {why}"));
    if path.is_empty() {
        return Err(bad("no path given (localhost_ref is empty)".into()));
    }
    if !Path::new(path).is_absolute() {
        return Err(bad("the path is not absolute".into()));
    }
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let profile: Profile =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a seccomp profile: {e}")))?;
    profile
        .resolve(caps, &Target::native())
        .map_err(|e| match e {
            Error::InvalidArgument(m) => bad(m),
            other => other,
        })
}

/// What a profile is resolved against: the native architecture (Go's names, as moby's
/// `includes.arches` use them), its seccomp architecture, and the kernel version.
struct Target {
    arch: &'static str,
    scmp_arch: Arch,
    kernel: (u32, u32),
}

impl Target {
    fn native() -> Target {
        let (arch, scmp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", Arch::ScmpArchX86_64),
            "x86" => ("386", Arch::ScmpArchX86),
            "aarch64" => ("arm64", Arch::ScmpArchAarch64),
            "arm" => ("arm", Arch::ScmpArchArm),
            "s390x" => ("s390x", Arch::ScmpArchS390x),
            "powerpc64" => ("ppc64le", Arch::ScmpArchPpc64le),
            "riscv64" => ("riscv64", Arch::ScmpArchRiscv64),
            "loongarch64" => ("loong64", Arch::ScmpArchLoongarch64),
            _ => ("unknown", Arch::ScmpArchNative),
        };
        Target {
            arch,
            scmp_arch,
            kernel: kernel_version(),
        }
    }
}

fn kernel_version() -> (u32, u32) {
    let r = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_version(&r).unwrap_or((0, 0))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A seccomp profile as JSON: OCI (`architectures`, `syscalls[].names`) and docker-style
/// (`archMap`, `syscalls[].name`, `includes`, `excludes`) fields both.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<Arch>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    syscalls: Option<Vec<Rule>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

impl Rule {
    /// moby's rule selection: every included cap held, the arch included, the kernel new
    /// enough; no excluded cap held, the arch not excluded.
    fn applies(&self, caps: &[String], t: &Target) -> Result<bool> {
        let i = &self.includes;
        if !i.arches.is_empty() && !i.arches.iter().any(|a| a == t.arch) {
            return Ok(false);
        }
        if !i.caps.iter().all(|c| caps.contains(c)) {
            return Ok(false);
        }
        if let Some(k) = &i.min_kernel {
            let want = parse_version(k).ok_or_else(|| {
                Error::InvalidArgument(format!("invalid minKernel {k:?} in a syscall rule"))
            })?;
            if t.kernel < want {
                return Ok(false);
            }
        }
        let e = &self.excludes;
        if e.arches.iter().any(|a| a == t.arch) || e.caps.iter().any(|c| caps.contains(c)) {
            return Ok(false);
        }
        Ok(true)
    }
}

impl Profile {
    /// The OCI filter for a container with `caps` on `t`.
    fn resolve(&self, caps: &[String], t: &Target) -> Result<LinuxSeccomp> {
        if self.architectures.is_some() && self.arch_map.is_some() {
            return Err(Error::InvalidArgument(
                "both architectures and archMap are set".into(),
            ));
        }
        let arches: Vec<Arch> = match (&self.architectures, &self.arch_map) {
            (Some(a), _) => a.clone(),
            (None, Some(map)) => map
                .iter()
                .filter(|m| m.architecture == t.scmp_arch)
                .flat_map(|m| {
                    std::iter::once(m.architecture)
                        .chain(m.sub_architectures.clone().unwrap_or_default())
                })
                .collect(),
            (None, None) => Vec::new(),
        };
        let mut syscalls: Vec<LinuxSyscall> = Vec::new();
        for r in self.syscalls.iter().flatten() {
            if !r.applies(caps, t)? {
                continue;
            }
            let names: Vec<String> = r.name.iter().chain(r.names.iter()).cloned().collect();
            if names.is_empty() {
                return Err(Error::InvalidArgument(
                    "a syscall rule names no syscall".into(),
                ));
            }
            let mut b = LinuxSyscallBuilder::default().names(names).action(r.action);
            if let Some(e) = r.errno_ret {
                b = b.errno_ret(e);
            }
            if let Some(a) = &r.args
                && !a.is_empty()
            {
                b = b.args(a.clone());
            }
            syscalls.push(b.build().map_err(spec_err)?);
        }
        let mut b = LinuxSeccompBuilder::default()
            .default_action(self.default_action)
            .syscalls(syscalls);
        if let Some(e) = self.default_errno_ret {
            b = b.default_errno_ret(e);
        }
        if !arches.is_empty() {
            b = b.architectures(arches);
        }
        b.build().map_err(spec_err)
    }
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("invalid seccomp profile: {e}"))
}

/// Syscalls every container may make (moby's default allow-list).
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Namespace-creating clone flags (CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP):
/// without CAP_SYS_ADMIN, clone is allowed only when none of them is set.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

/// moby's/containerd's default profile as typed rules.
pub fn default_profile() -> Profile {
    fn allow(names: &[&str]) -> Rule {
        Rule {
            names: names.iter().map(|s| s.to_string()).collect(),
            action: LinuxSeccompAction::ScmpActAllow,
            ..Rule::default()
        }
    }
    fn caps(names: &[&str]) -> Filter {
        Filter {
            caps: names.iter().map(|s| s.to_string()).collect(),
            ..Filter::default()
        }
    }
    fn arches(names: &[&str]) -> Filter {
        Filter {
            arches: names.iter().map(|s| s.to_string()).collect(),
            ..Filter::default()
        }
    }
    fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
        oci_spec::runtime::LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op)
            .build()
            .expect("a seccomp arg with every field set")
    }
    fn with(mut r: Rule, f: impl FnOnce(&mut Rule)) -> Rule {
        f(&mut r);
        r
    }
    let mut rules = vec![
        allow(ALLOWED),
        with(
            allow(&["process_vm_readv", "process_vm_writev", "ptrace"]),
            |r| {
                r.includes.min_kernel = Some("4.8".into());
            },
        ),
        // AF_VSOCK (40) sockets are not for containers.
        with(allow(&["socket"]), |r| {
            r.args = Some(vec![arg(0, 40, LinuxSeccompOperator::ScmpCmpNe)]);
        }),
    ];
    // personality: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
    for p in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(with(allow(&["personality"]), |r| {
            r.args = Some(vec![arg(0, p, LinuxSeccompOperator::ScmpCmpEq)]);
        }));
    }
    let arch_rules: &[(&[&str], &[&str])] = &[
        (&["sync_file_range2", "swapcontext"], &["ppc64le"]),
        (
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            &["arm", "arm64"],
        ),
        (&["arch_prctl"], &["amd64", "x32"]),
        (&["modify_ldt"], &["amd64", "x32", "x86"]),
        (
            &[
                "s390_pci_mmio_read",
                "s390_pci_mmio_write",
                "s390_runtime_instr",
            ],
            &["s390", "s390x"],
        ),
        (&["riscv_flush_icache"], &["riscv64"]),
    ];
    for (names, a) in arch_rules {
        rules.push(with(allow(names), |r| r.includes = arches(a)));
    }
    rules.push(with(allow(&["open_by_handle_at"]), |r| {
        r.includes = caps(&["CAP_DAC_READ_SEARCH"])
    }));
    rules.push(with(
        allow(&[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ]),
        |r| r.includes = caps(&["CAP_SYS_ADMIN"]),
    ));
    rules.push(with(allow(&["clone"]), |r| {
        r.args = Some(vec![arg(
            0,
            CLONE_NS_FLAGS,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]);
        r.excludes = Filter {
            caps: vec!["CAP_SYS_ADMIN".into()],
            arches: vec!["s390".into(), "s390x".into()],
            min_kernel: None,
        };
    }));
    // s390 passes the flags as the second argument.
    rules.push(with(allow(&["clone"]), |r| {
        r.args = Some(vec![arg(
            1,
            CLONE_NS_FLAGS,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]);
        r.includes = arches(&["s390", "s390x"]);
        r.excludes = caps(&["CAP_SYS_ADMIN"]);
    }));
    // clone3's flags are in memory, out of seccomp's reach: ENOSYS makes libc fall back
    // to clone.
    rules.push(Rule {
        names: vec!["clone3".into()],
        action: LinuxSeccompAction::ScmpActErrno,
        errno_ret: Some(libc::ENOSYS as u32),
        excludes: caps(&["CAP_SYS_ADMIN"]),
        ..Rule::default()
    });
    let cap_rules: &[(&[&str], &str)] = &[
        (&["reboot"], "CAP_SYS_BOOT"),
        (&["chroot"], "CAP_SYS_CHROOT"),
        (
            &["delete_module", "init_module", "finit_module"],
            "CAP_SYS_MODULE",
        ),
        (&["acct"], "CAP_SYS_PACCT"),
        (
            &[
                "kcmp",
                "pidfd_getfd",
                "process_madvise",
                "process_vm_readv",
                "process_vm_writev",
                "ptrace",
            ],
            "CAP_SYS_PTRACE",
        ),
        (&["iopl", "ioperm"], "CAP_SYS_RAWIO"),
        (
            &["settimeofday", "stime", "clock_settime", "clock_settime64"],
            "CAP_SYS_TIME",
        ),
        (&["vhangup"], "CAP_SYS_TTY_CONFIG"),
        (
            &[
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
            ],
            "CAP_SYS_NICE",
        ),
        (&["syslog"], "CAP_SYSLOG"),
        (&["bpf"], "CAP_BPF"),
        (&["perf_event_open"], "CAP_PERFMON"),
    ];
    for (names, cap) in cap_rules {
        rules.push(with(allow(names), |r| r.includes = caps(&[cap])));
    }
    let arch_map = vec![
        ArchMap {
            architecture: Arch::ScmpArchX86_64,
            sub_architectures: Some(vec![Arch::ScmpArchX86, Arch::ScmpArchX32]),
        },
        ArchMap {
            architecture: Arch::ScmpArchAarch64,
            sub_architectures: Some(vec![Arch::ScmpArchArm]),
        },
        ArchMap {
            architecture: Arch::ScmpArchMips64,
            sub_architectures: Some(vec![Arch::ScmpArchMips, Arch::ScmpArchMips64n32]),
        },
        ArchMap {
            architecture: Arch::ScmpArchMips64n32,
            sub_architectures: Some(vec![Arch::ScmpArchMips, Arch::ScmpArchMips64]),
        },
        ArchMap {
            architecture: Arch::ScmpArchMipsel64,
            sub_architectures: Some(vec![Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64n32]),
        },
        ArchMap {
            architecture: Arch::ScmpArchMipsel64n32,
            sub_architectures: Some(vec![Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64]),
        },
        ArchMap {
            architecture: Arch::ScmpArchS390x,
            sub_architectures: Some(vec![Arch::ScmpArchS390]),
        },
        ArchMap {
            architecture: Arch::ScmpArchRiscv64,
            sub_architectures: None,
        },
    ];
    Profile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(libc::EPERM as u32),
        architectures: None,
        arch_map: Some(arch_map),
        syscalls: Some(rules),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Target {
        Target {
            arch: "amd64",
            scmp_arch: Arch::ScmpArchX86_64,
            kernel: (6, 1),
        }
    }

    fn allowed(s: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        s.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn default_profile_without_sys_admin() {
        let s = default_profile()
            .resolve(&["CAP_CHOWN".into()], &amd64())
            .unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(1));
        assert_eq!(
            s.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        assert!(allowed(&s, "unshare").is_empty());
        assert!(allowed(&s, "mount").is_empty());
        assert!(!allowed(&s, "arch_prctl").is_empty());
        assert!(allowed(&s, "riscv_flush_icache").is_empty());
        let clone = allowed(&s, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        let a = clone[0].args().clone().unwrap();
        assert_eq!((a[0].index(), a[0].value()), (0, 2_114_060_288));
        let clone3 = allowed(&s, "clone3");
        assert_eq!(clone3[0].errno_ret(), Some(38));
        assert_eq!(allowed(&s, "personality").len(), 5);
        assert!(!allowed(&s, "ptrace").is_empty(), "kernel >= 4.8");
    }

    #[test]
    fn default_profile_with_sys_admin() {
        let s = default_profile()
            .resolve(&["CAP_SYS_ADMIN".into()], &amd64())
            .unwrap();
        assert!(!allowed(&s, "unshare").is_empty());
        let clone = allowed(&s, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none(), "clone unrestricted");
        assert!(
            allowed(&s, "clone3")
                .iter()
                .all(|r| r.errno_ret().is_none())
        );
    }

    #[test]
    fn docker_style_and_oci_profiles_parse() {
        let p: Profile = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
                "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","comment":"x"},
                            {"names":["chroot"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_CHROOT"]}}]}"#,
        )
        .unwrap();
        let s = p.resolve(&[], &amd64()).unwrap();
        assert_eq!(s.syscalls().as_ref().unwrap().len(), 1);
        assert_eq!(s.architectures().as_ref().unwrap().len(), 2);
        let p: Profile = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let s = p.resolve(&[], &amd64()).unwrap();
        assert_eq!(s.syscalls().as_ref().unwrap()[0].names().len(), 2);
        assert!(serde_json::from_str::<Profile>(r#"{"defaultAction":"NOPE"}"#).is_err());
    }

    #[test]
    fn profile_selection() {
        let mut sc = LinuxContainerSecurityContext::default();
        assert!(for_container(&sc, &[]).unwrap().is_none(), "nothing asked");
        #[allow(deprecated)]
        {
            sc.seccomp_profile_path = "runtime/default".into();
        }
        assert!(for_container(&sc, &[]).unwrap().is_some());
        #[allow(deprecated)]
        {
            sc.seccomp_profile_path = "bogus".into();
        }
        assert!(for_container(&sc, &[]).is_err());
        sc.seccomp = Some(k8s_cri::v1::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "relative.json".into(),
        });
        let e = for_container(&sc, &[]).unwrap_err().to_string();
        assert!(e.contains("not absolute"), "{e}");
        sc.seccomp.as_mut().unwrap().localhost_ref = "/nonexistent/p.json".into();
        let e = for_container(&sc, &[]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/p.json"), "{e}");
        sc.privileged = true;
        assert!(for_container(&sc, &[]).unwrap().is_none(), "privileged");
    }
}
