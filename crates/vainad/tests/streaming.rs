//! End to end: the CRI's Exec, Attach and PortForward through vainad's streaming server
//! (SPDY/3.1, as crictl), with real busybox containers in a pod of a throwaway node. The
//! server listens on the node netns's loopback, so the clients run inside that netns.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use vaina_stream::client::{ClientOptions, PortForwardClient, remote_command};
use vaina_stream::runtime::{BoxRead, BoxWrite, StreamIo, TermSize};
use vaina_testkit::can_run_ns_tests;

/// Output written by a session, readable after it ended.
#[derive(Clone, Default)]
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

struct Outcome {
    code: i32,
    out: String,
    err: String,
}

/// A streaming exec: the CRI call on the daemon's socket, the session inside the node.
fn exec(
    d: &Daemon,
    c: &mut Client,
    id: &str,
    cmd: &[&str],
    stdin: Option<&'static [u8]>,
    tty: Option<TermSize>,
) -> Outcome {
    let url =
        c.rt.block_on(c.c.runtime.exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: tty.is_some(),
            stdin: stdin.is_some(),
            stdout: true,
            stderr: tty.is_none(),
        }))
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    session(d, url, stdin, tty)
}

fn session(
    d: &Daemon,
    url: String,
    stdin: Option<&'static [u8]>,
    tty: Option<TermSize>,
) -> Outcome {
    let (out, err) = (Sink::default(), Sink::default());
    let (o, e) = (out.clone(), err.clone());
    let code = d.node.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let resize = tty.map(|size| {
                let (tx, rx) = mpsc::channel(1);
                tx.try_send(size).unwrap();
                // Kept open for the session: a closed resize channel is fine too.
                std::mem::forget(tx);
                rx
            });
            let io = StreamIo {
                stdin: stdin.map(|b| Box::new(b) as BoxRead),
                stdout: Some(Box::new(o) as BoxWrite),
                stderr: tty.is_none().then(|| Box::new(e) as BoxWrite),
                tty: tty.is_some(),
                resize,
            };
            tokio::time::timeout(
                Duration::from_secs(30),
                remote_command(&url, &ClientOptions::spdy(), io),
            )
            .await
            .expect("session timed out")
            .expect("session failed")
        })
    });
    Outcome {
        code,
        out: out.text(),
        err: err.text(),
    }
}

#[test]
fn exec_attach_and_port_forward_through_the_streaming_server() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    let pod_cfg = pod_config("stream-pod");
    let pod = c.run_pod(pod_cfg.clone()).unwrap();
    // The seed's pod with two containers: a server on the pod's localhost, and a client.
    let server = c
        .run_container(
            &pod,
            &pod_cfg,
            container_config(
                "server",
                &[
                    "sh",
                    "-c",
                    "echo hola > /tmp/motd; httpd -p 8080 -h /tmp; telnetd -p 2323 -l /bin/sh; \
                     while true; do nc -l -p 7000 < /tmp/motd; done",
                ],
            ),
        )
        .unwrap();
    let client = c
        .run_container(
            &pod,
            &pod_cfg,
            container_config("client", &["sleep", "3600"]),
        )
        .unwrap();

    // Output, error output and exit codes as kubelet reports them.
    let o = exec(
        &d,
        &mut c,
        &client,
        &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
        None,
        None,
    );
    assert_eq!(
        (o.code, o.out.as_str(), o.err.as_str()),
        (3, "hi\n", "oops\n")
    );
    let o = exec(&d, &mut c, &client, &["sh", "-c", "exit 0"], None, None);
    assert_eq!(o.code, 0);
    let o = exec(&d, &mut c, &client, &["sh", "-c", "kill -9 $$"], None, None);
    assert_eq!(o.code, 137);
    // Stdin, ended by the client's EOF.
    let o = exec(&d, &mut c, &client, &["cat"], Some(b"abc\n"), None);
    assert_eq!((o.code, o.out.as_str()), (0, "abc\n"));

    // The seed's exchange over the pod's localhost, through streaming exec: the client
    // container reads the server container's greeting; binding the held port fails.
    let o = eventually("the server's greeting", || {
        let o = exec(
            &d,
            &mut c,
            &client,
            &["nc", "127.0.0.1", "7000"],
            None,
            None,
        );
        (o.out == "hola\n").then_some(o)
    });
    assert_eq!(o.code, 0);
    // And the seed's telnet: a shell of the server container, reached from the client
    // container over 127.0.0.1, driven through the exec's stdin.
    let o = eventually("a telnet session", || {
        let o = exec(
            &d,
            &mut c,
            &client,
            &[
                "sh",
                "-c",
                "(sleep 1; echo 'echo via-$((40+2))'; sleep 1; echo exit; sleep 1) | telnet 127.0.0.1 2323",
            ],
            None,
            None,
        );
        o.out.contains("via-42").then_some(o)
    });
    assert!(o.out.contains("via-42"), "{:?}", o.out);
    let o = exec(&d, &mut c, &client, &["nc", "-l", "-p", "8080"], None, None);
    assert_ne!(o.code, 0);
    assert!(o.err.contains("in use"), "{:?}", o.err);

    // A terminal: the command sees a tty of the client's size.
    let size = TermSize {
        width: 123,
        height: 45,
    };
    // The size travels on its own stream, so it may land just after the command starts
    // (kubelet's protocol has the same race): the command waits a little, and a run that
    // still lost the race is repeated.
    let o = eventually("a terminal of the client's size", || {
        let o = exec(
            &d,
            &mut c,
            &client,
            &[
                "sh",
                "-c",
                "sleep 0.5; [ -t 0 ] && echo is-a-tty; busybox stty size",
            ],
            None,
            Some(size),
        );
        (o.out.contains("is-a-tty") && o.out.contains("45 123")).then_some(o)
    });
    assert_eq!(o.code, 0, "{}", o.out);

    // A client that goes away: the process its exec started is killed, not orphaned.
    let url =
        c.rt.block_on(c.c.runtime.exec(cri::ExecRequest {
            container_id: client.clone(),
            cmd: vec!["sleep".into(), "1234".into()],
            stdout: true,
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
        .url;
    d.node.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let io = StreamIo {
                stdin: None,
                stdout: Some(Box::new(Sink::default()) as BoxWrite),
                stderr: None,
                tty: false,
                resize: None,
            };
            let spdy = ClientOptions::spdy();
            let session = remote_command(&url, &spdy, io);
            assert!(
                tokio::time::timeout(Duration::from_secs(1), session)
                    .await
                    .is_err()
            );
        })
    });
    eventually("the abandoned exec's process to be killed", || {
        let (ps, _, _) = c.exec(&client, &["ps"]);
        (!ps.contains("sleep 1234")).then_some(())
    });

    // Port-forward: an HTTP request to busybox httpd, connected inside the pod's netns.
    let url =
        c.rt.block_on(c.c.runtime.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        }))
        .unwrap()
        .into_inner()
        .url;
    let reply = d.node.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pf = PortForwardClient::connect(&url).await.unwrap();
            let mut conn = pf.open(8080).await.unwrap();
            conn.write_all(b"GET /motd HTTP/1.0\r\n\r\n").await.unwrap();
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut reply))
                .await
                .expect("port-forward reply timed out")
                .unwrap();
            pf.close().await;
            String::from_utf8_lossy(&reply).into_owned()
        })
    });
    assert!(
        reply.starts_with("HTTP/1.") && reply.contains("hola"),
        "{reply:?}"
    );

    // Attach to a container created with stdin (stdin_once): its output comes back, and
    // the end of our stdin ends it.
    let mut cfg = container_config("cat", &["sh", "-c", "cat; echo bye"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    let cat = c.run_container(&pod, &pod_cfg, cfg).unwrap();
    let url =
        c.rt.block_on(c.c.runtime.attach(cri::AttachRequest {
            container_id: cat.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        }))
        .unwrap()
        .into_inner()
        .url;
    let o = session(&d, url, Some(b"ping\n"), None);
    assert_eq!((o.code, o.out.as_str()), (0, "ping\nbye\n"));
    let st = eventually("the attached container's exit", || {
        let st = c.container_status(&cat).unwrap();
        (st.state == cri::ContainerState::ContainerExited as i32).then_some(st)
    });
    assert_eq!(st.exit_code, 0);

    // Bad requests: an unknown container, exec without a command, a stopped container.
    let unknown = c.rt.block_on(c.c.runtime.exec(cri::ExecRequest {
        container_id: "nope".into(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    }));
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    let no_cmd = c.rt.block_on(c.c.runtime.exec(cri::ExecRequest {
        container_id: client.clone(),
        stdout: true,
        ..Default::default()
    }));
    assert_eq!(no_cmd.unwrap_err().code(), tonic::Code::InvalidArgument);
    let exited = c.rt.block_on(c.c.runtime.attach(cri::AttachRequest {
        container_id: cat.clone(),
        stdout: true,
        ..Default::default()
    }));
    assert_eq!(exited.unwrap_err().code(), tonic::Code::FailedPrecondition);

    for id in [&server, &client, &cat] {
        c.remove_container(id).unwrap();
    }
    c.remove_pod(&pod).unwrap();
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
    assert_eq!(d.reservations(), 0);
}

/// `vaina exec -it CTR sh` on a real pseudo-terminal, as a user at a terminal runs it: a
/// shell prompt, a command answered, `exit` ends it with the shell's status, and the
/// local terminal is restored.
#[test]
fn vaina_exec_it_gives_a_working_shell_on_a_terminal() {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    let pod_cfg = pod_config("tty-pod");
    let pod = c.run_pod(pod_cfg.clone()).unwrap();
    let ctr = c
        .run_container(
            &pod,
            &pod_cfg,
            container_config("shell", &["sleep", "3600"]),
        )
        .unwrap();

    let pty = nix::pty::openpty(None, None).unwrap();
    let before = nix::sys::termios::tcgetattr(pty.slave.as_fd()).unwrap();
    let endpoint = d.endpoint();
    let slave = std::fs::File::from(pty.slave);
    let mut child = d.node.run(|| {
        std::process::Command::new(bin_dir().join("vaina"))
            .args(["--endpoint", &endpoint, "exec", "-it", &ctr, "sh"])
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap())
            .spawn()
            .unwrap()
    });
    let mut master = std::fs::File::from(pty.master);
    // Typed input: the remote shell echoes it and answers.
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"echo $((6*7))-ok\r").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"exit 5\r").unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the CLI (the last holder of the slave) has exited.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&out).contains("42-ok") && out.len() > 4096 {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = eventually("vaina exec -it to exit", || child.try_wait().unwrap());
    let after = nix::sys::termios::tcgetattr(slave.as_fd()).unwrap();
    drop(slave);
    let out = reader.join().unwrap();
    assert!(out.contains("42-ok"), "{out:?}");
    assert_eq!(status.code(), Some(5), "{out:?}");
    assert_eq!(
        before.local_flags, after.local_flags,
        "the terminal's mode was not restored"
    );
    c.remove_pod(&pod).unwrap();
}

/// `vaina port-forward POD LOCAL:REMOTE`: a local port inside the node reaches busybox
/// httpd in the pod, and Ctrl-C ends the command cleanly.
#[test]
fn vaina_port_forward_serves_a_local_port_until_interrupted() {
    use std::io::{Read, Write};
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    let pod_cfg = pod_config("pf-pod");
    let pod = c.run_pod(pod_cfg.clone()).unwrap();
    let web = c
        .run_container(
            &pod,
            &pod_cfg,
            container_config(
                "web",
                &[
                    "sh",
                    "-c",
                    "echo hola > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
                ],
            ),
        )
        .unwrap();
    let endpoint = d.endpoint();
    let mut child = d.node.run(|| {
        std::process::Command::new(bin_dir().join("vaina"))
            .args(["--endpoint", &endpoint, "port-forward", &pod, "18080:80"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    let reply = eventually("an HTTP answer through the forward", || {
        d.node.run(|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", 18080)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            reply.contains("hola").then_some(reply)
        })
    });
    assert!(reply.starts_with("HTTP/1."), "{reply:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = eventually("vaina port-forward to exit", || child.try_wait().unwrap());
    assert!(status.success(), "{status}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains("Forwarding from 127.0.0.1:18080 -> 80"),
        "{out:?}"
    );
    c.remove_container(&web).unwrap();
    c.remove_pod(&pod).unwrap();
}
