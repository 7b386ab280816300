//! The seed's walk-through ("Kubernetes - Redes y PODs I"), end to end through vainad's
//! CRI socket with busybox containers, run by crun (the default handler) and by runc:
//!
//! 1. a pod gets one veth on the node and an IP of the bridge's range; its container sees
//!    that IP on eth0 and a default route via the bridge;
//! 2. a second pod gets another veth and IP; a container in pod 2 reaches a server in pod 1
//!    through the bridge, and the node reaches pod 2 directly;
//! 3. a pod with two containers has one veth; both see the same IP; the second reaches the
//!    first's server on 127.0.0.1; binding the held port fails with "address in use"; other
//!    pods cannot reach it on their own localhost;
//! 4. removing the pods removes their veths, netns pins, mounts and IP reservations.

mod common;

use common::*;
use vaina_testkit::can_run_ns_tests;

fn walkthrough(handler: &str) {
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();

    // 1. One pod, one container.
    let mut cfg1 = pod_config("pod-1");
    cfg1.log_directory = d.root.join("logs/pod-1").display().to_string();
    let p1 = c.run_pod_with(cfg1.clone(), handler).unwrap();
    assert_eq!(d.node.veths().len(), 1, "one veth per pod");
    let ip1 = c.pod_ip(&p1);
    assert!(ip1.to_string().starts_with("10.88."), "{ip1}");
    let server = c
        .run_container(
            &p1,
            &cfg1,
            container_config(
                "server",
                &[
                    "sh",
                    "-c",
                    "echo ready; while true; do echo hola-from-pod-1 | nc -l -p 8080; done",
                ],
            ),
        )
        .unwrap();
    let (out, _, code) = c.exec(&server, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{ip1}/16")),
        "container sees the pod IP: {out}"
    );
    let (out, _, _) = c.exec(&server, &["ip", "route"]);
    assert!(out.contains("default via 10.88.0.1 dev eth0"), "{out}");

    // 2. A second pod: another veth and IP; pod 2 → pod 1 through the bridge; node → pod 2.
    let cfg2 = pod_config("pod-2");
    let p2 = c.run_pod_with(cfg2.clone(), handler).unwrap();
    assert_eq!(d.node.veths().len(), 2);
    let ip2 = c.pod_ip(&p2);
    assert_ne!(ip1, ip2);
    let client2 = c
        .run_container(
            &p2,
            &cfg2,
            container_config(
                "client",
                &[
                    "sh",
                    "-c",
                    "while true; do echo hola-from-pod-2 | nc -l -p 9090; done",
                ],
            ),
        )
        .unwrap();
    let got = eventually("pod 2 → pod 1", || {
        let (out, _, code) = c.exec(&client2, &["nc", "-w", "2", &ip1.to_string(), "8080"]);
        (code == 0 && out.contains("hola-from-pod-1")).then_some(out)
    });
    assert!(got.contains("hola-from-pod-1"));
    let got = eventually("node → pod 2", || {
        d.node
            .run(|| {
                let mut s = std::net::TcpStream::connect_timeout(
                    &format!("{ip2}:9090").parse().unwrap(),
                    std::time::Duration::from_secs(2),
                )
                .ok()?;
                s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .ok()?;
                let mut out = String::new();
                std::io::Read::read_to_string(&mut s, &mut out).ok()?;
                Some(out)
            })
            .filter(|o| o.contains("hola-from-pod-2"))
    });
    assert!(got.contains("hola-from-pod-2"));

    // 3. One pod, two containers: one veth, one IP, localhost between them.
    let veths_before = d.node.veths().len();
    let cfg3 = pod_config("pod-3");
    let p3 = c.run_pod_with(cfg3.clone(), handler).unwrap();
    assert_eq!(
        d.node.veths().len(),
        veths_before + 1,
        "still one veth for the pod"
    );
    let ip3 = c.pod_ip(&p3);
    let first = c
        .run_container(
            &p3,
            &cfg3,
            container_config("telnetd", &["telnetd", "-F", "-p", "2323", "-l", "/bin/sh"]),
        )
        .unwrap();
    let second = c
        .run_container(&p3, &cfg3, container_config("shell", &["sleep", "3600"]))
        .unwrap();
    for id in [&first, &second] {
        let (out, _, _) = c.exec(id, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(
            out.contains(&format!("{ip3}/16")),
            "both containers share the pod IP: {out}"
        );
    }
    // The second container reaches the first's telnet server on 127.0.0.1.
    eventually("telnetd listening", || {
        let (out, _, code) = c.exec(
            &second,
            &["sh", "-c", "echo | nc -w 1 127.0.0.1 2323; echo rc=$?"],
        );
        (code == 0 && out.contains("rc=0")).then_some(())
    });
    // Binding the port the first container holds fails in the second.
    let (_, err, code) = c.exec(&second, &["nc", "-l", "-p", "2323"]);
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
    // Other pods' localhost is their own.
    let (out, _, _) = c.exec(
        &client2,
        &["sh", "-c", "echo | nc -w 1 127.0.0.1 2323; echo rc=$?"],
    );
    assert!(
        !out.contains("rc=0"),
        "pod 2 must not reach pod 3's localhost: {out}"
    );

    // Logs: the server container's stdout is in its CRI log file.
    let st = c.container_status(&server).unwrap();
    assert!(
        st.log_path.ends_with("logs/pod-1/server.log"),
        "{}",
        st.log_path
    );
    let log = std::fs::read_to_string(&st.log_path).unwrap();
    let first = log.lines().next().unwrap_or_default();
    let f: Vec<&str> = first.splitn(4, ' ').collect();
    assert_eq!(f[1..], ["stdout", "F", "ready"], "CRI log line: {first:?}");
    assert!(
        f[0].ends_with('Z') && f[0].contains('T'),
        "RFC3339Nano timestamp: {first:?}"
    );

    // A container that exits reports its exit code.
    let quick = c
        .run_container(
            &p3,
            &cfg3,
            container_config("quick", &["sh", "-c", "exit 3"]),
        )
        .unwrap();
    let st = eventually("quick exits", || {
        let st = c.container_status(&quick).unwrap();
        (st.state == k8s_cri::v1::ContainerState::ContainerExited as i32).then_some(st)
    });
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");

    // StopContainer: SIGTERM (busybox sleep dies on it), then the state is Exited; stopping
    // again succeeds.
    c.stop_container(&second, 2).unwrap();
    let st = c.container_status(&second).unwrap();
    assert_eq!(
        st.state,
        k8s_cri::v1::ContainerState::ContainerExited as i32
    );
    c.stop_container(&second, 2).unwrap();

    // 4. Removal leaves nothing.
    for p in [&p1, &p2, &p3] {
        c.remove_pod(p).unwrap();
    }
    assert!(
        d.node.veths().is_empty(),
        "veths left: {:?}",
        d.node.veths()
    );
    assert_eq!(d.reservations(), 0, "IP reservations left");
    assert_eq!(d.mounts(), Vec::<String>::new(), "mounts left");
    let procs = eventually("supervisors gone", || {
        let p = d.processes();
        p.is_empty().then_some(p)
    });
    assert!(procs.is_empty());
    let _ = (server, client2);
}

#[test]
fn seed_walkthrough_with_crun() {
    if !can_run_ns_tests() {
        return;
    }
    walkthrough("");
}

#[test]
fn seed_walkthrough_with_runc() {
    if !can_run_ns_tests() {
        return;
    }
    walkthrough("runc");
}
