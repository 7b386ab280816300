//! End to end: `vainad` started inside a throwaway node namespace with a temp root, driven
//! over its CRI socket. The seed's pod-level walk-through: one veth and one IP per pod,
//! pods reach each other through the bridge, removal leaves nothing; plus bad input and a
//! SIGKILL of the daemon.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;
use vaina_net::netns::Netns;
use vaina_testkit::can_run_ns_tests;

fn serve_once(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let l = ns
        .run(|| TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 16];
        let n = s.read(&mut b).unwrap();
        s.write_all(&b[..n]).unwrap();
    })
}

fn echo(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hola")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn pods_get_one_veth_and_one_ip_each_talk_and_leave_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut c = d.client();
    let a = c.run_pod(pod_config("pod-a")).unwrap();
    assert_eq!(d.node.veths().len(), 1, "one veth per pod");
    let b = c.run_pod(pod_config("pod-b")).unwrap();
    assert_eq!(d.node.veths().len(), 2);
    let (ip_a, ip_b) = (c.pod_ip(&a), c.pod_ip(&b));
    assert_ne!(ip_a, ip_b);
    for ip in [ip_a, ip_b] {
        assert!(
            ip.to_string().starts_with("10.88."),
            "{ip} not in 10.88.0.0/16"
        );
    }
    assert_eq!(
        c.pod_status(&a).unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );

    // The pod's netns (pinned by the daemon) has the IP on eth0 and a default route via the
    // bridge; the node reaches pod-b directly, pod-b reaches pod-a through cni0.
    let ns_a = Netns::open(d.pin(&a)).unwrap();
    let ns_b = Netns::open(d.pin(&b)).unwrap();
    let out = ns_a
        .run(|| {
            Command::new("ip")
                .args(["-4", "-o", "addr", "show", "eth0"])
                .output()
        })
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{ip_a}/16")));
    let out = ns_a
        .run(|| {
            Command::new("ip")
                .args(["-4", "route", "show", "default"])
                .output()
        })
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("via 10.88.0.1 dev eth0"));
    let srv = serve_once(&ns_a, 7000);
    assert_eq!(
        ns_b.run(|| echo(&format!("{ip_a}:7000"))).unwrap().unwrap(),
        "hola"
    );
    srv.join().unwrap();
    let srv = serve_once(&ns_b, 7001);
    assert_eq!(
        d.node.run(|| echo(&format!("{ip_b}:7001"))).unwrap(),
        "hola"
    );
    srv.join().unwrap();
    drop((ns_a, ns_b));

    c.stop_pod(&a).unwrap();
    assert_eq!(
        c.pod_status(&a).unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(d.node.veths().len(), 1, "stop takes the veth");
    c.stop_pod(&a).unwrap();
    c.remove_pod(&a).unwrap();
    c.remove_pod(&b).unwrap();
    c.remove_pod(&b).unwrap();
    assert!(c.list_pods().is_empty());
    assert!(d.node.veths().is_empty());
    assert!(
        !d.pin(&a).exists() && !d.pin(&b).exists(),
        "netns pins removed"
    );
    assert_eq!(d.reservations(), 0, "IPs released");
}

#[test]
fn bad_requests_get_the_right_codes_and_leave_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut c = d.client();
    let id = c.run_pod(pod_config("dup")).unwrap();
    let e = c.run_pod(pod_config("dup")).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("dup"), "{}", e.message());

    let mut no_uid = pod_config("nouid");
    no_uid.metadata.as_mut().unwrap().uid.clear();
    let e = c.run_pod(no_uid).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("uid"), "{}", e.message());

    let mut bad_sysctl = pod_config("sysctl");
    bad_sysctl.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: [("net.ipv4.no_such_key".to_string(), "1".to_string())].into(),
        ..Default::default()
    });
    let e = c.run_pod(bad_sysctl).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("net.ipv4.no_such_key"),
        "{}",
        e.message()
    );

    let e = c.pod_status("0123456789abcdef").unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.stop_pod("0123456789abcdef").unwrap();
    c.remove_pod("0123456789abcdef").unwrap();

    // Only the good pod exists: one veth, one reservation, one pin.
    assert_eq!(c.list_pods().len(), 1);
    assert_eq!(d.node.veths().len(), 1);
    assert_eq!(d.reservations(), 1);
    assert_eq!(
        std::fs::read_dir(d.root.join("run/netns")).unwrap().count(),
        1
    );
    c.remove_pod(&id).unwrap();
    assert!(d.node.veths().is_empty());
}

#[test]
fn pods_survive_a_sigkill_of_the_daemon() {
    if !can_run_ns_tests() {
        return;
    }
    let mut d = Daemon::start();
    let id = {
        let mut c = d.client();
        c.run_pod(pod_config("survivor")).unwrap()
    };
    let ip = d.client().pod_ip(&id);
    d.kill9();
    d.spawn();
    let mut c = d.client();
    let st = c.pod_status(&id).unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.unwrap().ip, ip.to_string());
    assert_eq!(d.node.veths().len(), 1);
    c.remove_pod(&id).unwrap();
    assert!(d.node.veths().is_empty());
    assert_eq!(d.reservations(), 0);
}
