//! Exec and attach driven by the crate's own client over every protocol version.

mod common;

use common::*;
use vaina_stream::client::{ClientError, ClientOptions};
use vaina_stream::request::{AttachRequest, ExecRequest};

fn exec(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: sv(cmd),
        stdin,
        stdout,
        stderr,
        tty,
    }
}

const OUT_ERR_EXIT3: &[&str] = &["sh", "-c", "echo out; echo err >&2; exit 3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_every_version_carries_stdout_stderr_and_status() {
    let h = Harness::start().await;
    for proto in [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ] {
        let url = h
            .server
            .get_exec(exec(OUT_ERR_EXIT3, false, true, true, false))
            .unwrap();
        let opts = ClientOptions::spdy().with_protocols(&[proto]);
        let o = run(&url, &opts, None, true, true, false, vec![]).await;
        assert_eq!(o.stdout, "out\n", "{proto}");
        assert_eq!(o.stderr, "err\n", "{proto}");
        match proto {
            "v5.channel.k8s.io" | "v4.channel.k8s.io" => {
                assert_eq!(o.result.unwrap(), 3, "{proto}")
            }
            // v2/v3: the status is the failure message as text.
            "v3.channel.k8s.io" | "v2.channel.k8s.io" => match o.result {
                Err(ClientError::Remote(m)) => assert_eq!(
                    m,
                    "command terminated with non-zero exit code: error executing command [sh -c echo out; echo err >&2; exit 3], exit code 3"
                ),
                other => panic!("{proto}: {other:?}"),
            },
            // v1: kubelet resets the error stream, so no status reaches the client.
            _ => assert_eq!(o.result.unwrap(), 0, "{proto}"),
        }
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_0_1_137_over_spdy_and_websocket() {
    let h = Harness::start().await;
    let transports = [
        ClientOptions::spdy(),
        ClientOptions::spdy().with_protocols(&["v4.channel.k8s.io"]),
        ClientOptions::websocket(),
        ClientOptions::websocket().with_protocols(&["v4.channel.k8s.io"]),
        ClientOptions::websocket_base64(),
    ];
    for opts in &transports {
        for (script, code) in [("exit 0", 0), ("exit 1", 1), ("kill -9 $$", 137)] {
            let url = h
                .server
                .get_exec(exec(&["sh", "-c", script], false, true, false, false))
                .unwrap();
            let o = run(&url, opts, None, true, false, false, vec![]).await;
            assert_eq!(o.result.unwrap(), code, "{opts:?} {script}");
        }
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_eof_reaches_the_process() {
    let h = Harness::start().await;
    let input = b"hello\nworld\n".repeat(5000); // 60 KB, several frames
    for opts in [ClientOptions::spdy(), ClientOptions::websocket()] {
        let url = h
            .server
            .get_exec(exec(&["cat"], true, true, false, false))
            .unwrap();
        let o = run(&url, &opts, Some(&input), true, false, false, vec![]).await;
        assert_eq!(o.result.unwrap(), 0, "{opts:?}");
        assert_eq!(o.stdout.len(), input.len(), "{opts:?}");
        assert!(o.stdout.as_bytes() == &input[..], "{opts:?}");
    }
    // Base64 (v4.base64) has no close signal: use a command that stops by itself.
    let url = h
        .server
        .get_exec(exec(&["head", "-c", "5"], true, true, false, false))
        .unwrap();
    let o = run(
        &url,
        &ClientOptions::websocket_base64(),
        Some(b"abcdefgh"),
        true,
        false,
        false,
        vec![],
    )
    .await;
    assert_eq!(o.result.unwrap(), 0);
    assert_eq!(o.stdout, "abcde");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_resize_events_reach_the_runtime() {
    let h = Harness::start().await;
    for opts in [
        ClientOptions::spdy(),
        ClientOptions::spdy().with_protocols(&["v3.channel.k8s.io"]),
        ClientOptions::websocket(),
        ClientOptions::websocket_base64(),
    ] {
        h.runtime.resizes.lock().unwrap().clear();
        let url = h
            .server
            .get_exec(exec(&["resize-echo", "2"], false, true, false, true))
            .unwrap();
        let o = run(
            &url,
            &opts,
            None,
            true,
            false,
            true,
            vec![ts(80, 24), ts(132, 43)],
        )
        .await;
        assert_eq!(o.result.unwrap(), 0, "{opts:?}");
        assert_eq!(o.stdout, "80x24\n132x43\n", "{opts:?}");
        assert_eq!(
            *h.runtime.resizes.lock().unwrap(),
            vec![ts(80, 24), ts(132, 43)]
        );
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streams_and_reports_runtime_errors() {
    let h = Harness::start().await;
    for opts in [ClientOptions::spdy(), ClientOptions::websocket()] {
        let url = h
            .server
            .get_attach(AttachRequest {
                container_id: "c1".into(),
                stdin: true,
                stdout: true,
                ..Default::default()
            })
            .unwrap();
        let o = run(&url, &opts, Some(b"attached\n"), true, false, false, vec![]).await;
        assert_eq!(o.result.unwrap(), 0, "{opts:?}");
        assert_eq!(o.stdout, "attached\n", "{opts:?}");

        let url = h
            .server
            .get_attach(AttachRequest {
                container_id: "missing".into(),
                stdout: true,
                ..Default::default()
            })
            .unwrap();
        let o = run(&url, &opts, None, true, false, false, vec![]).await;
        match o.result {
            Err(ClientError::Remote(m)) => assert_eq!(
                m,
                "Internal error occurred: error attaching to container: container \"missing\" not found"
            ),
            other => panic!("{other:?}"),
        }
    }
    let url = h
        .server
        .get_exec(ExecRequest {
            container_id: "missing".into(),
            ..exec(&["true"], false, true, false, false)
        })
        .unwrap();
    let o = run(
        &url,
        &ClientOptions::spdy(),
        None,
        true,
        false,
        false,
        vec![],
    )
    .await;
    match o.result {
        Err(ClientError::Remote(m)) => assert_eq!(
            m,
            "Internal error occurred: error executing command in container: container \"missing\" not found"
        ),
        other => panic!("{other:?}"),
    }
    h.finish().await;
}
