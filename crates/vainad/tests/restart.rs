//! `vainad` killed with SIGKILL: running pods and containers keep running and are reported
//! after a restart, a container that exited meanwhile shows its exit code, and a
//! RunPodSandbox interrupted half-way leaves no veth, netns pin, mount or IP reservation.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;
use vaina_testkit::can_run_ns_tests;

#[test]
fn pods_and_containers_survive_a_sigkill_and_exits_are_seen() {
    if !can_run_ns_tests() {
        return;
    }
    let mut d = Daemon::start();
    d.import_busybox();
    let cfg = pod_config("survivor");
    let (pod, long, short) = {
        let mut c = d.client();
        let pod = c.run_pod(cfg.clone()).unwrap();
        let long = c
            .run_container(&pod, &cfg, container_config("long", &["sleep", "3600"]))
            .unwrap();
        let short = c
            .run_container(
                &pod,
                &cfg,
                container_config("short", &["sh", "-c", "sleep 1; exit 7"]),
            )
            .unwrap();
        (pod, long, short)
    };
    let ip = d.client().pod_ip(&pod);
    d.kill9();
    // `short` exits while no daemon runs; its supervisor records it.
    std::thread::sleep(Duration::from_millis(1500));
    d.spawn();
    let mut c = d.client();
    let st = c.pod_status(&pod).unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.unwrap().ip, ip.to_string());
    let st = c.container_status(&long).unwrap();
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let (out, _, code) = c.exec(&long, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert_eq!(code, 0);
    assert!(out.contains(&ip.to_string()), "{out}");
    let st = eventually("short's exit", || {
        let st = c.container_status(&short).unwrap();
        (st.state == cri::ContainerState::ContainerExited as i32).then_some(st)
    });
    assert_eq!(st.exit_code, 7);
    c.stop_container(&long, 1).unwrap();
    c.remove_pod(&pod).unwrap();
    assert!(d.node.veths().is_empty());
    assert_eq!(d.reservations(), 0);
    assert_eq!(d.mounts(), Vec::<String>::new());
}

#[test]
fn a_run_pod_sandbox_interrupted_by_sigkill_is_rolled_back_at_restart() {
    if !can_run_ns_tests() {
        return;
    }
    let mut d = Daemon::start();
    // A network whose last plugin hangs: RunPodSandbox is stuck in CNI ADD after the
    // bridge made the veth and host-local reserved the IP.
    let slow_dir = d.node.path("slow-bin");
    std::fs::create_dir_all(&slow_dir).unwrap();
    let slow = slow_dir.join("slow");
    std::fs::write(
        &slow,
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then echo $$ > \"$0.pid\"; touch \"$0.started\"; exec sleep 30; fi\n\
         if [ \"$CNI_COMMAND\" = VERSION ]; then echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}'; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let netd = d.root.join("net.d");
    let conflist = std::fs::read_to_string(netd.join("10-vaina.conflist")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&conflist).unwrap();
    v["cniVersion"] = "1.0.0".into();
    v.as_object_mut().unwrap().remove("cniVersions");
    v["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "slow"}));
    std::fs::write(netd.join("10-vaina.conflist"), v.to_string()).unwrap();
    d.kill9();
    d.spawn_with_bin_dirs(&[bin_dir(), slow_dir.clone()]);

    let sock = d.socket();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut c = rt
            .block_on(vaina_cri::client::connect(&format!(
                "unix://{}",
                sock.display()
            )))
            .unwrap();
        let _ = rt.block_on(c.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("interrupted")),
            runtime_handler: String::new(),
        }));
    });
    eventually("CNI ADD in progress", || {
        slow_dir.join("slow.started").exists().then_some(())
    });
    assert_eq!(d.node.veths().len(), 1, "the bridge made the veth");
    assert_eq!(d.reservations(), 1, "host-local reserved an IP");
    d.kill9();
    let _ = runner.join();
    // The hung plugin (now `sleep`) is an orphan of the killed daemon: end it.
    let pid: i32 = std::fs::read_to_string(slow_dir.join("slow.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );

    // Restart with the normal network: the interrupted sandbox is rolled back.
    std::fs::write(netd.join("10-vaina.conflist"), conflist).unwrap();
    d.spawn();
    let mut c = d.client();
    let pods =
        c.rt.block_on(
            c.c.runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
        )
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(d.node.veths().is_empty(), "veth left: {:?}", d.node.veths());
    assert_eq!(d.reservations(), 0, "IP reservation left");
    assert_eq!(d.mounts(), Vec::<String>::new(), "netns pin left");
    eventually("supervisor gone", || d.processes().is_empty().then_some(()));
}
