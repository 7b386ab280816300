//! Containers through the supervisor with a real OCI runtime (crun; runc where noted): CRI log
//! files, exit codes and signals, exit records, failed creates that leave nothing, Forget,
//! ReopenLog, Shutdown with running containers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use vaina_pod::cri_log::MAX_RECORD;
use vaina_pod::protocol::{self, ErrorKind, Request, Response};

/// (stream, tag, message) of each CRI record of `path`, checking the timestamps' shape.
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read log {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert_eq!(ts.len(), 30, "timestamp {ts:?}");
            assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            let msg = parts.next().unwrap_or("").to_string();
            (stream, tag, msg)
        })
        .collect()
}

fn rec(stream: &str, tag: &str, msg: &str) -> (String, String, String) {
    (stream.into(), tag.into(), msg.into())
}

fn created_pid(resp: Response) -> u32 {
    match resp {
        Response::Created { pid } => pid,
        other => panic!("create failed: {other:?}"),
    }
}

fn error_of(resp: Response) -> (ErrorKind, String) {
    match resp {
        Response::Error { kind, message } => (kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn runtime_or_skip(r: Option<std::path::PathBuf>, name: &str) -> Option<std::path::PathBuf> {
    if r.is_none() {
        eprintln!("skipping: {name} not installed");
    }
    r
}

/// The runtime's list of containers under the pod's runtime root.
fn runtime_ids(pod: &PodGuard, runtime: &Path) -> Vec<String> {
    let out = pod.runtime(runtime, &["list", "--quiet"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

fn run_to_exit(pick: impl Fn(&PodGuard) -> Option<std::path::PathBuf>, pid_ns: bool) {
    let mut pod = PodGuard::launch(LaunchOptions {
        pid: pid_ns,
        ..Default::default()
    });
    let Some(runtime) = pick(&pod) else {
        eprintln!("skipping: runtime not installed");
        return;
    };
    let runtime = runtime.as_path();
    let bundle = pod.bundle(
        "c1",
        &[
            "sh",
            "-c",
            "echo hello; echo err >&2; printf 'no newline'; exit 3",
        ],
    );
    let log = pod.node.path("logs/pod1/c1/0.log");
    let pid = created_pid(pod.create(runtime, "c1", &bundle, &log));

    // Created, not started: running as far as the supervisor is concerned, nothing logged.
    let state = pod.container("c1").unwrap();
    assert_eq!(
        (state.pid, state.exited, state.exit_code),
        (pid, false, None)
    );
    assert!(
        log.exists(),
        "log file (and its directories) created at create"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
    // The container's init is the supervisor's child (the runtime is gone).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(ppid, pod.pid.to_string());

    pod.runtime_ok(runtime, &["start", "c1"]);
    let state = pod.wait_exited("c1");
    assert_eq!(state.exit_code, Some(3));
    assert_eq!(state.signal, None);
    let finished = state.finished_at.clone().expect("finished_at");
    assert!(
        finished > state.created_at,
        "{finished} after {}",
        state.created_at
    );

    let records = log_records(&log);
    assert!(
        records.contains(&rec("stdout", "F", "hello")),
        "{records:?}"
    );
    assert!(records.contains(&rec("stderr", "F", "err")), "{records:?}");
    assert!(
        records.contains(&rec("stdout", "P", "no newline")),
        "{records:?}"
    );
    assert_eq!(records.len(), 3, "{records:?}");

    let exit = protocol::read_exit_record(&pod.dir, "c1")
        .unwrap()
        .expect("exit file");
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.pid, pid);
    assert_eq!(exit.finished_at, finished);

    // Removed by the daemon, then forgotten: no record, no files.
    pod.runtime_ok(runtime, &["delete", "c1"]);
    assert_eq!(pod.call(&Request::Forget { id: "c1".into() }), Response::Ok);
    assert!(pod.state().is_empty());
    assert!(!protocol::exit_path(&pod.dir, "c1").exists());
    assert!(!protocol::container_pid_path(&pod.dir, "c1").exists());
}

#[test]
fn crun_container_output_goes_to_the_cri_log_and_its_exit_is_recorded() {
    if !setup() {
        return;
    }
    run_to_exit(PodGuard::crun, true);
}

#[test]
fn crun_container_with_its_own_pid_namespace() {
    if !setup() {
        return;
    }
    run_to_exit(PodGuard::crun, false);
}

#[test]
fn runc_container_output_goes_to_the_cri_log_and_its_exit_is_recorded() {
    if !setup() {
        return;
    }
    run_to_exit(|_| runc(), true);
}

#[test]
fn a_killed_container_reports_the_signal_and_shutdown_waits_for_it() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions::default());
    let Some(crun) = runtime_or_skip(pod.crun(), "crun") else {
        return;
    };
    let bundle = pod.bundle("sleeper", &["sh", "-c", "echo ready; exec sleep 1000"]);
    let log = pod.node.path("logs/sleeper.log");
    let pid = created_pid(pod.create(&crun, "sleeper", &bundle, &log));
    pod.runtime_ok(&crun, &["start", "sleeper"]);

    // Running: it is in the pod's namespaces (its hostname is the pod's).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no output from the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for kind in ["net", "uts", "ipc"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap(),
            std::fs::read_link(format!("/proc/{}/ns/{kind}", pod.pid)).unwrap(),
            "{kind}"
        );
    }
    let init = pod.info.init_pid.unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap()
    );

    // Shutdown is refused while it runs; Forget too.
    let (kind, message) = error_of(pod.call(&Request::Shutdown));
    assert_eq!(kind, ErrorKind::Running);
    assert!(message.contains("sleeper"), "{message}");
    let (kind, message) = error_of(pod.call(&Request::Forget {
        id: "sleeper".into(),
    }));
    assert_eq!(kind, ErrorKind::Running);
    assert!(message.contains("still running"), "{message}");

    // Memory of a pod with one running container, for the record.
    println!("{}", memory_line("supervisor, 1 container", pod.pid as u32));
    println!("{}", memory_line("pod PID 1", init));
    println!("{}", memory_line("container (busybox sleep)", pid));
    let total: u64 = [pod.pid as u32, init, pid]
        .iter()
        .map(|&p| kib(p, "Pss"))
        .sum();
    println!("pod total Pss: {total} KiB");

    pod.runtime_ok(&crun, &["kill", "sleeper", "KILL"]);
    let state = pod.wait_exited("sleeper");
    assert_eq!(state.signal, Some(9));
    assert_eq!(state.exit_code, Some(137));
    let exit = protocol::read_exit_record(&pod.dir, "sleeper")
        .unwrap()
        .unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));

    // Exited: Shutdown is accepted even before the runtime deleted it.
    assert_eq!(pod.call(&Request::Shutdown), Response::Ok);
    reap(pod.pid);
    assert!(!pod.socket().exists());
}

#[test]
fn failed_creates_name_the_problem_and_leave_no_container() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions::default());
    let Some(crun) = runtime_or_skip(pod.crun(), "crun") else {
        return;
    };
    let bundle = pod.bundle("ok", &["sh", "-c", "exit 0"]);

    // A log directory that cannot be created: nothing runs.
    let file = pod.node.path("a-file");
    std::fs::write(&file, "").unwrap();
    let (kind, message) = error_of(pod.create(&crun, "c-log", &bundle, &file.join("c.log")));
    assert_eq!(kind, ErrorKind::Io);
    assert!(message.contains("cannot open log file"), "{message}");

    // A bundle that does not exist: the runtime's own error comes back.
    let missing = pod.node.path("no-such-bundle");
    let (kind, message) =
        error_of(pod.create(&crun, "c-bundle", &missing, &pod.node.path("b.log")));
    assert_eq!(kind, ErrorKind::Runtime);
    assert!(
        message.contains("create of container c-bundle failed (exit status 1)")
            && message.contains("no-such-bundle"),
        "{message}"
    );

    // A config the runtime rejects (a namespace path that is not one).
    let bad = make_bundle(
        &pod.node.path("bundles/bad"),
        &["sh"],
        vec![
            serde_json::json!({"type": "mount"}),
            serde_json::json!({"type": "network", "path": file}),
        ],
    );
    let (kind, message) = error_of(pod.create(&crun, "c-bad", &bad, &pod.node.path("bad.log")));
    assert_eq!(kind, ErrorKind::Runtime);
    assert!(message.contains("c-bad"), "{message}");

    // A runtime that does not exist.
    let (kind, message) = error_of(pod.create(
        Path::new("/nonexistent/crun"),
        "c-rt",
        &bundle,
        &pod.node.path("rt.log"),
    ));
    assert_eq!(kind, ErrorKind::Runtime);
    assert!(
        message.contains("cannot run OCI runtime /nonexistent/crun"),
        "{message}"
    );

    // None of them exists, for the supervisor or the runtime, and the runtime output did not
    // end up in a container log.
    assert!(pod.state().is_empty(), "{:?}", pod.state());
    assert!(runtime_ids(&pod, &crun).is_empty());
    assert_eq!(std::fs::read_to_string(pod.node.path("b.log")).unwrap(), "");

    // A duplicate id is refused while the first exists.
    created_pid(pod.create(&crun, "dup", &bundle, &pod.node.path("dup.log")));
    let (kind, message) = error_of(pod.create(&crun, "dup", &bundle, &pod.node.path("dup.log")));
    assert_eq!(
        (kind, message.as_str()),
        (ErrorKind::AlreadyExists, "container dup already exists")
    );
    assert_eq!(pod.state().len(), 1);
}

#[test]
fn long_lines_reopened_logs_and_a_client_that_leaves_mid_create() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions::default());
    let Some(crun) = runtime_or_skip(pod.crun(), "crun") else {
        return;
    };

    // A client sends Create and disconnects at once: the container is created anyway.
    let bundle = pod.bundle(
        "talker",
        &[
            "sh",
            "-c",
            // 40000 'y' on one line (2 P records + F), then wait for a signal to write more.
            "head -c 40000 /dev/zero | tr '\\0' y; echo; echo one; \
             trap 'echo two; exit 0' TERM; while true; do sleep 0.05; done",
        ],
    );
    // busybox `tr` is needed too.
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/tr")).unwrap();
    let log = pod.node.path("logs/talker.log");
    pod.track(&crun, "talker");
    {
        let mut line =
            serde_json::to_vec(&pod.create_request(&crun, "talker", &bundle, &log)).unwrap();
        line.push(b'\n');
        let mut s = std::os::unix::net::UnixStream::connect(pod.socket()).unwrap();
        std::io::Write::write_all(&mut s, &line).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        if let Some(c) = pod.container("talker") {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "container not created"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    pod.set_pid("talker", state.pid);
    pod.runtime_ok(&crun, &["start", "talker"]);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" F one")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no output from the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let records = log_records(&log);
    let ys = "y".repeat(MAX_RECORD);
    assert_eq!(
        records,
        vec![
            rec("stdout", "P", &ys),
            rec("stdout", "P", &ys),
            rec("stdout", "F", &"y".repeat(40000 - 2 * MAX_RECORD)),
            rec("stdout", "F", "one"),
        ]
    );

    // Rotation: move the file away, ask for a reopen, later output lands in a new file.
    let rotated = pod.node.path("logs/talker.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    assert_eq!(
        pod.call(&Request::ReopenLog {
            id: "talker".into()
        }),
        Response::Ok
    );
    let (kind, _) = error_of(pod.call(&Request::ReopenLog { id: "nope".into() }));
    assert_eq!(kind, ErrorKind::NotFound);
    pod.runtime_ok(&crun, &["kill", "talker", "TERM"]);
    let state = pod.wait_exited("talker");
    assert_eq!((state.exit_code, state.signal), (Some(0), None));
    assert_eq!(log_records(&log), vec![rec("stdout", "F", "two")]);
    assert_eq!(log_records(&rotated).len(), 4);
}

#[test]
fn containers_survive_a_supervisor_crash_and_their_exit_is_on_disk_before() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions {
        pid: false,
        ..Default::default()
    });
    let Some(crun) = runtime_or_skip(pod.crun(), "crun") else {
        return;
    };
    let bundle = pod.bundle("quick", &["sh", "-c", "exit 7"]);
    created_pid(pod.create(&crun, "quick", &bundle, &pod.node.path("q.log")));
    pod.runtime_ok(&crun, &["start", "quick"]);
    pod.wait_exited("quick");
    pod.kill_supervisor();
    // The daemon learns the exit code from the file alone.
    let exit = protocol::read_exit_record(&pod.dir, "quick")
        .unwrap()
        .unwrap();
    assert_eq!(exit.exit_code, 7);
    assert!(
        protocol::read_exit_record(&pod.dir, "never")
            .unwrap()
            .is_none()
    );
}
