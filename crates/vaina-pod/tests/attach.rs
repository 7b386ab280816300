//! Attach, TTY containers, Kill and Wait through the supervisor's socket, with real
//! containers run by crun.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vaina_pod::protocol::{Request, Response, attach};

/// A connection attached to container `id`; the answer says whether it has a terminal.
fn attach_conn(pod: &PodGuard, id: &str, stdin: bool) -> (UnixStream, bool) {
    let mut s = UnixStream::connect(pod.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut line = serde_json::to_vec(&Request::Attach {
        id: id.into(),
        stdin,
        stdout: true,
        stderr: true,
    })
    .unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut answer = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        answer.push(b[0]);
    }
    match serde_json::from_slice(&answer).unwrap() {
        Response::Attached { tty } => (s, tty),
        other => panic!("attach answered {other:?}"),
    }
}

fn send(s: &mut UnixStream, kind: u8, payload: &[u8]) {
    let mut f = Vec::new();
    attach::encode(kind, payload, &mut f);
    s.write_all(&f).unwrap();
}

/// Reads frames until the supervisor closes the connection; returns (stdout, stderr).
fn read_all(s: &mut UnixStream) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let mut h = [0u8; attach::HEADER];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        match h[0] {
            attach::STDOUT => out.extend_from_slice(&p),
            attach::STDERR => err.extend_from_slice(&p),
            k => panic!("unexpected frame kind {k}"),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn create(pod: &mut PodGuard, runtime: &Path, id: &str, bundle: &Path, stdin: bool, tty: bool) {
    pod.track(runtime, id);
    let mut req = pod.create_request(runtime, id, bundle, &pod.node.path(&format!("{id}.log")));
    if let Request::Create {
        stdin: s,
        stdin_once: o,
        tty: t,
        ..
    } = &mut req
    {
        (*s, *o, *t) = (stdin, stdin, tty);
    }
    match pod.call(&req) {
        Response::Created { pid } => pod.set_pid(id, pid),
        other => panic!("create {id}: {other:?}"),
    }
}

fn set_terminal(bundle: &Path) {
    let p = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg["process"]["terminal"] = true.into();
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
        }));
    std::fs::write(&p, serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/stty")).unwrap();
}

#[test]
fn attach_feeds_stdin_and_streams_output_and_stdin_once_closes_it() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions::default());
    let Some(crun) = pod.crun() else {
        eprintln!("skipped: no crun");
        return;
    };
    let bundle = pod.bundle("catter", &["sh", "-c", "echo start >&2; cat; echo done"]);
    create(&mut pod, &crun, "catter", &bundle, true, false);
    let (mut s, tty) = attach_conn(&pod, "catter", true);
    assert!(!tty);
    pod.runtime_ok(&crun, &["start", "catter"]);
    send(&mut s, attach::STDIN, b"hello\n");
    send(&mut s, attach::STDIN, b"world\n");
    // stdin_once: the end of this client's stdin is the end of the container's.
    send(&mut s, attach::STDIN_CLOSE, b"");
    let (out, err) = read_all(&mut s);
    assert_eq!(out, "hello\nworld\ndone\n");
    assert_eq!(err, "start\n");
    let state = pod.wait_exited("catter");
    assert_eq!(state.exit_code, Some(0));
    let log = std::fs::read_to_string(pod.node.path("catter.log")).unwrap();
    assert!(
        log.contains(" stdout F hello") && log.contains(" stderr F start"),
        "{log}"
    );

    // Attaching to an exited container: answered, then closed at once.
    let (mut s, _) = attach_conn(&pod, "catter", false);
    assert_eq!(read_all(&mut s), (String::new(), String::new()));
    // Stdin on a container created without it is refused.
    let plain = pod.bundle("plain", &["sh", "-c", "exit 0"]);
    create(&mut pod, &crun, "plain", &plain, false, false);
    let resp = pod.call(&Request::Attach {
        id: "plain".into(),
        stdin: true,
        stdout: true,
        stderr: false,
    });
    assert!(
        matches!(&resp, Response::Error { message, .. } if message.contains("not created with stdin")),
        "{resp:?}"
    );
    pod.runtime_ok(&crun, &["start", "plain"]);
    pod.wait_exited("plain");
}

#[test]
fn a_tty_container_gets_a_terminal_its_size_and_input() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions::default());
    let Some(crun) = pod.crun() else {
        eprintln!("skipped: no crun");
        return;
    };
    let bundle = pod.bundle(
        "term",
        &[
            "sh",
            "-c",
            "stty size; [ -t 0 ] && echo tty; read x; echo got:$x",
        ],
    );
    set_terminal(&bundle);
    create(&mut pod, &crun, "term", &bundle, true, true);
    let (mut s, tty) = attach_conn(&pod, "term", true);
    assert!(tty);
    send(&mut s, attach::RESIZE, &[0, 100, 0, 30]);
    // The resize is applied by the supervisor before start is run.
    std::thread::sleep(Duration::from_millis(200));
    pod.runtime_ok(&crun, &["start", "term"]);
    send(&mut s, attach::STDIN, b"abc\r");
    let (out, err) = read_all(&mut s);
    assert!(err.is_empty(), "a terminal has one output stream: {err:?}");
    assert!(out.contains("30 100"), "{out:?}");
    assert!(out.contains("tty"), "{out:?}");
    assert!(out.contains("got:abc"), "{out:?}");
    assert_eq!(pod.wait_exited("term").exit_code, Some(0));
    let log = std::fs::read_to_string(pod.node.path("term.log")).unwrap();
    assert!(log.contains("got:abc"), "{log}");
}

#[test]
fn kill_and_wait_answer_from_the_reaper() {
    if !setup() {
        return;
    }
    let mut pod = PodGuard::launch(LaunchOptions::default());
    let Some(crun) = pod.crun() else {
        eprintln!("skipped: no crun");
        return;
    };
    let bundle = pod.bundle(
        "sleeper",
        &["sh", "-c", "trap 'exit 3' TERM; sleep 1000 & wait"],
    );
    create(&mut pod, &crun, "sleeper", &bundle, false, false);
    pod.runtime_ok(&crun, &["start", "sleeper"]);
    let wait = |ms| {
        pod.call(&Request::Wait {
            id: "sleeper".into(),
            timeout_ms: ms,
        })
    };
    assert_eq!(wait(100), Response::Waited { exited: false });
    let t = Instant::now();
    let kill = pod.call(&Request::Kill {
        id: "sleeper".into(),
        signal: libc::SIGTERM,
    });
    assert_eq!(kill, Response::Ok);
    assert_eq!(wait(10_000), Response::Waited { exited: true });
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(pod.container("sleeper").unwrap().exit_code, Some(3));
    // Exited: signals are no-ops, waits answer at once; unknown ids are NotFound.
    assert_eq!(
        pod.call(&Request::Kill {
            id: "sleeper".into(),
            signal: 9
        }),
        Response::Ok
    );
    assert_eq!(wait(0), Response::Waited { exited: true });
    assert!(matches!(
        pod.call(&Request::Kill {
            id: "nope".into(),
            signal: 9
        }),
        Response::Error { .. }
    ));
}
