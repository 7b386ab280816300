//! Launching the supervisor: namespaces, detaching from the launcher, failed launches that
//! leave nothing, the protocol's answers to bad input, Shutdown.

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use nix::sched::CloneFlags;
use vaina_net::netns::Netns;
use vaina_pod::protocol::{self, ErrorKind, Request, Response};
use vaina_testkit::Node;

fn ns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap()
}

#[test]
fn supervisor_holds_the_pod_namespaces_and_outlives_its_launcher() {
    if !setup() {
        return;
    }
    let pod = PodGuard::launch(LaunchOptions::default());
    let pid = pod.pid as u32;

    // Detached: a new session, adopted by us (the launcher's parent) after the launcher exited.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[1], std::process::id().to_string(), "parent");
    assert_eq!(fields[3], pid.to_string(), "session id");

    // Network: the pod's netns, joined.
    let net = Netns::open(format!("/proc/{pid}/ns/net")).unwrap();
    assert!(
        net.same_as(&pod.pod_ns.ns),
        "supervisor is not in the pod netns"
    );
    assert_eq!(
        pod.info.namespaces.network.as_deref(),
        Some(std::path::Path::new(&format!("/proc/{pid}/ns/net")))
    );

    // UTS and IPC: new ones, with the hostname set.
    for kind in ["uts", "ipc"] {
        assert_ne!(
            ns_inode(&format!("/proc/{pid}/ns/{kind}")),
            ns_inode(&format!("/proc/self/ns/{kind}")),
            "{kind} namespace not new"
        );
    }
    let uts = std::fs::File::open(format!("/proc/{pid}/ns/uts")).unwrap();
    let hostname = std::thread::spawn(move || {
        nix::sched::setns(&uts, CloneFlags::CLONE_NEWUTS).unwrap();
        nix::unistd::gethostname().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(hostname, "pod-host");
    assert_ne!(nix::unistd::gethostname().unwrap(), "pod-host");

    // PID: a separate init is PID 1 of a new namespace; the supervisor stays in ours so the
    // runtime it runs sees host PIDs.
    let init = pod.info.init_pid.expect("init pid");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        ["NSpid:", &init.to_string(), "1"]
    );
    assert_ne!(
        ns_inode(&format!("/proc/{init}/ns/pid")),
        ns_inode("/proc/self/ns/pid")
    );
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/pid")),
        ns_inode("/proc/self/ns/pid")
    );
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/pid_for_children")),
        ns_inode("/proc/self/ns/pid"),
        "the supervisor's children must be born in the daemon's PID namespace"
    );
    // The init holds no fd but stdio.
    let fds = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .count();
    assert_eq!(fds, 3);

    // Files: pid file with the host PID, socket 0600.
    let pid_text = std::fs::read_to_string(protocol::pid_path(&pod.dir)).unwrap();
    assert_eq!(pid_text.trim(), pid.to_string());
    let mode = std::fs::metadata(pod.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Idle footprint, printed for the record (run with --nocapture).
    println!("{}", memory_line("idle supervisor", pid));
    println!("{}", memory_line("pod PID 1", init));
    assert!(
        kib(pid, "Pss_Anon") < 1024,
        "supervisor anon memory above 1 MiB"
    );
}

#[test]
fn without_namespace_flags_the_supervisor_shares_the_launchers() {
    if !setup() {
        return;
    }
    let pod = PodGuard::launch(LaunchOptions {
        uts: false,
        ipc: false,
        pid: false,
        hostname: None,
    });
    let pid = pod.pid;
    for kind in ["uts", "ipc", "pid"] {
        assert_eq!(
            ns_inode(&format!("/proc/{pid}/ns/{kind}")),
            ns_inode(&format!("/proc/self/ns/{kind}")),
            "{kind}"
        );
    }
    assert_eq!(pod.info.init_pid, None);
    let ns = &pod.info.namespaces;
    assert!(ns.network.is_some() && ns.uts.is_none() && ns.ipc.is_none() && ns.pid.is_none());
}

/// Runs a launch expected to fail and checks it leaves nothing: no pid file, no socket, no
/// process mentioning the directory.
fn assert_launch_fails(args: Vec<OsString>, dir: &std::path::Path, expect: &str) {
    let out = launch(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = processes_mentioning(dir);
    // Reap before failing, so the failure leaves nothing either.
    left.iter().for_each(|&pid| kill_child(pid));
    assert!(
        left.is_empty(),
        "processes {left:?} left behind by a failed launch ({stderr})"
    );
    assert!(!out.status.success(), "launch should fail: {args:?}");
    assert!(
        stderr.contains(expect),
        "stderr {stderr:?} lacks {expect:?}"
    );
    assert!(!protocol::pid_path(dir).exists(), "pid file left behind");
    assert!(!protocol::socket_path(dir).exists(), "socket left behind");
}

#[test]
fn failed_launches_leave_nothing() {
    if !setup() {
        return;
    }
    let node = Node::new();
    let dir = node.path("pod");
    let args = |extra: &[&str]| -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--id".into(),
            "p".into(),
            "--dir".into(),
            dir.clone().into(),
        ];
        a.extend(extra.iter().map(OsString::from));
        a
    };

    // Not a netns.
    let file = node.path("not-a-netns");
    std::fs::write(&file, "").unwrap();
    assert_launch_fails(
        args(&["--netns", file.to_str().unwrap(), "--pid", "--uts"]),
        &dir,
        "is not a network namespace",
    );
    assert_launch_fails(
        args(&["--netns", "/nonexistent/netns"]),
        &dir,
        "cannot open network namespace /nonexistent/netns",
    );

    // A state directory that cannot be created (its parent is a file); the PID namespace
    // init forked before that step must be gone too.
    let bad_dir = file.join("pod");
    let bad = vec![
        OsString::from("--id"),
        "p".into(),
        "--dir".into(),
        bad_dir.clone().into(),
        "--pid".into(),
        "--uts".into(),
    ];
    assert_launch_fails(bad, &bad_dir, "cannot create directory");

    // A socket path longer than sun_path (108 bytes) still works: it is bound through
    // /proc/self/fd/<dir>. The supervisor answers and shuts down cleanly.
    let long_dir = node.path(&format!("{}/pod", "d".repeat(120)));
    let long = vec![
        OsString::from("--id"),
        "p".into(),
        "--dir".into(),
        long_dir.clone().into(),
        "--pid".into(),
    ];
    let out = launch(&long);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = protocol::Client::connect(protocol::socket_path(&long_dir)).unwrap();
    assert!(matches!(
        c.call(&Request::State).unwrap(),
        Response::State { .. }
    ));
    assert_eq!(c.call(&Request::Shutdown).unwrap(), Response::Ok);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_mentioning(&long_dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "supervisor did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for pid in processes_mentioning(&long_dir) {
        kill_child(pid);
    }

    // Usage errors.
    let out = launch(&args(&["--hostname", "h"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hostname needs --uts"));
    assert!(!dir.exists());
}

#[test]
fn a_second_supervisor_for_the_same_directory_is_refused() {
    if !setup() {
        return;
    }
    let pod = PodGuard::launch(LaunchOptions::default());
    let args: Vec<OsString> = vec![
        "--id".into(),
        "pod1".into(),
        "--dir".into(),
        pod.dir.clone().into(),
        "--pid".into(),
    ];
    let out = launch(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another supervisor is serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first one is untouched: its socket and pid file are still there and it answers.
    assert_eq!(
        std::fs::read_to_string(protocol::pid_path(&pod.dir))
            .unwrap()
            .trim(),
        pod.pid.to_string()
    );
    assert!(matches!(pod.call(&Request::State), Response::State { .. }));
    assert_eq!(
        processes_mentioning(&pod.dir).len(),
        2,
        "supervisor + pod init only"
    );
}

#[test]
fn a_stale_socket_is_replaced() {
    if !setup() {
        return;
    }
    let node = Node::new();
    let dir = node.path("pod");
    std::fs::create_dir_all(&dir).unwrap();
    // A socket file nobody listens on, as a SIGKILLed supervisor leaves it.
    drop(std::os::unix::net::UnixListener::bind(protocol::socket_path(&dir)).unwrap());
    let out = launch(&[
        "--id".into(),
        "p".into(),
        "--dir".into(),
        dir.clone().into(),
    ]);
    let pid: i32 = std::fs::read_to_string(protocol::pid_path(&dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let answered = vaina_pod::protocol::Client::connect(protocol::socket_path(&dir))
        .and_then(|mut c| c.call(&Request::State));
    if pid > 0 {
        kill_child(pid);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(answered, Ok(Response::State { .. })),
        "{answered:?}"
    );
}

fn raw_call(stream: &mut UnixStream, line: &[u8]) -> Response {
    stream.write_all(line).unwrap();
    let mut resp = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        resp.push(byte[0]);
    }
    serde_json::from_slice(&resp).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
}

fn error_of(resp: Response) -> (ErrorKind, String) {
    match resp {
        Response::Error { kind, message } => (kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_requests_get_errors_and_the_supervisor_keeps_serving() {
    if !setup() {
        return;
    }
    let pod = PodGuard::launch(LaunchOptions::default());
    let mut s = UnixStream::connect(pod.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    let cases: &[(&[u8], &str)] = &[
        (b"garbage\n", "malformed request: expected value"),
        (b"{}\n", "missing field `type`"),
        (b"{\"type\":\"reboot\"}\n", "unknown variant `reboot`"),
        (
            b"{\"type\":\"create\",\"id\":\"c\"}\n",
            "missing field `runtime`",
        ),
        (
            b"{\"type\":\"forget\",\"id\":7}\n",
            "invalid type: integer `7`",
        ),
        (b"\xff\xfe{\n", "malformed request"),
        (b"[1,2,3]\n", "malformed request"),
    ];
    for (line, expect) in cases {
        let (kind, message) = error_of(raw_call(&mut s, line));
        assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
        assert!(message.contains(expect), "{message:?} lacks {expect:?}");
    }
    // Blank lines are ignored; several requests in one write are answered in order.
    s.write_all(b"\n\n{\"type\":\"state\"}\n{\"type\":\"reopen_log\",\"id\":\"nope\"}\n")
        .unwrap();
    let mut rd = std::io::BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut rd, &mut line).unwrap();
    assert_eq!(line, "{\"type\":\"state\",\"containers\":[]}\n");
    line.clear();
    std::io::BufRead::read_line(&mut rd, &mut line).unwrap();
    let (kind, message) = error_of(serde_json::from_str(&line).unwrap());
    assert_eq!(
        (kind, message.as_str()),
        (ErrorKind::NotFound, "container nope not found")
    );

    // Invalid fields of a well-formed Create, checked before anything runs.
    let create = |id: &str, bundle: &str, tty: bool| Request::Create {
        id: id.into(),
        runtime: "/usr/bin/crun".into(),
        runtime_root: "/run/x".into(),
        bundle: bundle.into(),
        log_path: pod.node.path("l.log"),
        stdin: false,
        stdin_once: false,
        tty,
    };
    let (kind, message) = error_of(pod.call(&create("../etc", "/b", false)));
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("invalid container id"), "{message}");
    let (kind, message) = error_of(pod.call(&create("c", "relative", false)));
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(
        message.contains("bundle of container c must be an absolute path"),
        "{message}"
    );
    let (kind, message) = error_of(pod.call(&create("c", "relative", true)));
    assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");

    // A request line over the limit: an error, then the connection is closed.
    let mut big = UnixStream::connect(pod.socket()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent <= protocol::MAX_REQUEST_LINE {
        if big.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("request line longer than"), "{answer:?}");

    // Clients that vanish mid-request: half a line, or a request whose answer is never read.
    for junk in [&b"{\"type\":\"sta"[..], b"{\"type\":\"state\"}\n"] {
        let mut c = UnixStream::connect(pod.socket()).unwrap();
        c.write_all(junk).unwrap();
        drop(c);
    }
    // A last request without a newline is still answered once the client shuts down writing.
    let mut c = UnixStream::connect(pod.socket()).unwrap();
    c.write_all(b"{\"type\":\"state\"}").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "{\"type\":\"state\",\"containers\":[]}\n");

    // Still serving, and every closed connection is closed on its side too (eventually: it
    // sees the hang-ups on its next wake-ups).
    assert!(matches!(pod.call(&Request::State), Response::State { .. }));
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", pod.pid))
            .unwrap()
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // stdio, listener, signalfd, and the first raw connection `s`.
    while fds() != 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let links: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", pod.pid))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_link(e.path()).unwrap_or_default())
        .collect();
    assert_eq!(fds(), 6, "connections leaked: {links:?}");
    assert_eq!(
        raw_call(&mut s, b"{\"type\":\"forget\",\"id\":\"none\"}\n"),
        Response::Ok
    );
}

#[test]
fn client_times_out_and_refuses_reuse() {
    if !setup() {
        return;
    }
    let node = Node::new();
    let path = node.path("silent.sock");
    // A socket that accepts and never answers.
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut client = protocol::Client::connect(&path)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let (_peer, _) = listener.accept().unwrap();
    let err = client.call(&Request::State).unwrap_err();
    assert!(
        matches!(err, protocol::ClientError::Timeout { .. }),
        "{err}"
    );
    let err = client.call(&Request::State).unwrap_err();
    assert!(
        matches!(err, protocol::ClientError::Poisoned { .. }),
        "{err}"
    );
    let err = protocol::Client::connect(node.path("none.sock")).unwrap_err();
    assert!(
        err.to_string().contains("cannot connect to pod supervisor"),
        "{err}"
    );
}

#[test]
fn shutdown_and_sigterm_stop_an_idle_supervisor() {
    if !setup() {
        return;
    }
    for use_signal in [false, true] {
        let pod = PodGuard::launch(LaunchOptions::default());
        let init = pod.info.init_pid.unwrap() as i32;
        if use_signal {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pod.pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        } else {
            assert_eq!(pod.call(&Request::Shutdown), Response::Ok);
        }
        // It exits on its own (we are its parent now, so waitpid sees the exit status).
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pod.pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pod.pid), 0)
        );
        assert!(!pod.socket().exists(), "socket left behind");
        assert!(
            !protocol::pid_path(&pod.dir).exists(),
            "pid file left behind"
        );
        // It killed and reaped the pod's PID 1 before exiting.
        assert!(
            !std::path::Path::new(&format!("/proc/{init}")).exists(),
            "pod init left behind"
        );
    }
}
