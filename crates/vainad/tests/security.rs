//! End to end: seccomp profiles (RuntimeDefault, Unconfined, Localhost, bad profiles) and
//! devices (a host device mapped under another name, bad host paths, privileged), against
//! vainad in a throwaway node namespace.

mod common;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;
use vaina_testkit::can_run_ns_tests;

fn with_seccomp(
    mut cfg: cri::ContainerConfig,
    p: Option<cri::SecurityProfile>,
) -> cri::ContainerConfig {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = p;
    cfg
}

fn profile(t: cri::security_profile::ProfileType, localhost: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost.into(),
    })
}

fn seccomp_mode(c: &mut Client, id: &str) -> String {
    let (out, err, code) = c.exec(id, &["sh", "-c", "grep ^Seccomp: /proc/self/status"]);
    assert_eq!(code, 0, "{err}");
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn containers(c: &mut Client) -> usize {
    let r = &mut c.c.runtime;
    c.rt.block_on(r.list_containers(cri::ListContainersRequest { filter: None }))
        .unwrap()
        .into_inner()
        .containers
        .len()
}

/// Containers' directories under the daemon's root (a refused create leaves none).
fn container_dirs(d: &Daemon) -> usize {
    std::fs::read_dir(d.root.join("lib/containers"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

fn cleanup(d: &Daemon, c: &mut Client, pod: &str) {
    c.stop_pod(pod).unwrap();
    c.remove_pod(pod).unwrap();
    assert!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
    assert!(d.processes().is_empty(), "supervisors left");
    assert!(d.node.veths().is_empty(), "veths left");
}

#[test]
fn seccomp_runtime_default_unconfined_and_localhost() {
    if !can_run_ns_tests() {
        return;
    }
    use cri::security_profile::ProfileType;
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    let pcfg = pod_config("seccomp-pod");
    let pod = c.run_pod(pcfg.clone()).unwrap();

    // RuntimeDefault: filtered; unshare (no CAP_SYS_ADMIN) is refused with EPERM.
    let def = c
        .run_container(
            &pod,
            &pcfg,
            with_seccomp(
                container_config("default", &["sleep", "3600"]),
                profile(ProfileType::RuntimeDefault, ""),
            ),
        )
        .unwrap();
    assert_eq!(seccomp_mode(&mut c, &def), "2");
    let (_, err, code) = c.exec(&def, &["sh", "-c", "unshare -U true"]);
    assert_ne!(code, 0, "unshare allowed under RuntimeDefault");
    assert!(err.contains("not permitted"), "{err}");
    // What the profile allows still works.
    let (out, _, code) = c.exec(&def, &["sh", "-c", "mkdir /tmp/ok && echo yes"]);
    assert_eq!((out.trim(), code), ("yes", 0));

    // The deprecated path string means the same.
    let mut cfg = container_config("legacy", &["sleep", "3600"]);
    #[allow(deprecated)]
    {
        cfg.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .seccomp_profile_path = "runtime/default".into();
    }
    let legacy = c.run_container(&pod, &pcfg, cfg).unwrap();
    assert_eq!(seccomp_mode(&mut c, &legacy), "2");

    // Unconfined: no filter.
    let unc = c
        .run_container(
            &pod,
            &pcfg,
            with_seccomp(
                container_config("unconfined", &["sleep", "3600"]),
                profile(ProfileType::Unconfined, ""),
            ),
        )
        .unwrap();
    assert_eq!(seccomp_mode(&mut c, &unc), "0");

    // Localhost: a docker-style profile that refuses mkdir.
    let prof = d.node.path("no-mkdir.json");
    std::fs::write(
        &prof,
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86","SCMP_ARCH_X32"]},
                       {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let local = c
        .run_container(
            &pod,
            &pcfg,
            with_seccomp(
                container_config("localhost", &["sleep", "3600"]),
                profile(ProfileType::Localhost, prof.to_str().unwrap()),
            ),
        )
        .unwrap();
    assert_eq!(seccomp_mode(&mut c, &local), "2");
    let (_, err, code) = c.exec(&local, &["sh", "-c", "mkdir /tmp/nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("not permitted"), "{err}");
    let (_, _, code) = c.exec(&local, &["sh", "-c", "echo x > /tmp/file"]);
    assert_eq!(code, 0, "only mkdir is blocked");

    // Bad Localhost profiles: InvalidArgument naming the path, nothing left behind.
    let before = (containers(&mut c), container_dirs(&d));
    let garbage = d.node.path("garbage.json");
    std::fs::write(&garbage, "{ not json").unwrap();
    let no_action = d.node.path("no-action.json");
    std::fs::write(&no_action, r#"{"syscalls":[]}"#).unwrap();
    let missing = d.node.path("missing.json");
    for (i, (p, what)) in [
        (missing.to_str().unwrap(), "cannot read"),
        (garbage.to_str().unwrap(), "not a seccomp profile"),
        (no_action.to_str().unwrap(), "defaultAction"),
        ("relative/profile.json", "not absolute"),
        ("", "empty"),
    ]
    .into_iter()
    .enumerate()
    {
        let e = c
            .run_container(
                &pod,
                &pcfg,
                with_seccomp(
                    container_config(&format!("bad{i}"), &["sleep", "3600"]),
                    profile(ProfileType::Localhost, p),
                ),
            )
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{p}: {e:?}");
        assert!(
            e.message().contains(p) && e.message().contains(what),
            "{e:?}"
        );
    }
    assert_eq!((containers(&mut c), container_dirs(&d)), before);

    // Privileged: no filter whatever was asked, and every host device.
    let mut cfg = with_seccomp(
        container_config("privileged", &["sleep", "3600"]),
        profile(ProfileType::RuntimeDefault, ""),
    );
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let mut priv_pod = pcfg.clone();
    priv_pod
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let p = c.run_container(&pod, &priv_pod, cfg).unwrap();
    assert_eq!(seccomp_mode(&mut c, &p), "0");
    let (out, err, code) = c.exec(&p, &["sh", "-c", "ls /dev"]);
    assert_eq!(code, 0, "{err}");
    for dev in ["null", "zero", "loop-control", "loop0"] {
        if std::path::Path::new("/dev").join(dev).exists() {
            assert!(
                out.split_whitespace().any(|x| x == dev),
                "{dev} missing: {out}"
            );
        }
    }

    cleanup(&d, &mut c, &pod);
}

#[test]
fn devices_map_host_nodes_and_refuse_bad_ones() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    let pcfg = pod_config("devices-pod");
    let pod = c.run_pod(pcfg.clone()).unwrap();

    let mut cfg = container_config("devs", &["sleep", "3600"]);
    cfg.devices = vec![cri::Device {
        container_path: "/dev/xnull".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    let ctr = c.run_container(&pod, &pcfg, cfg).unwrap();
    let (out, err, code) = c.exec(
        &ctr,
        &[
            "sh",
            "-c",
            "echo hola > /dev/xnull && stat -c '%t,%T %F' /dev/xnull",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1,3 character special file");
    // Without a rule, another device stays out of reach (the cgroup denies it).
    let (_, _, code) = c.exec(
        &ctr,
        &["sh", "-c", "mknod /dev/mem2 c 1 1 && head -c1 /dev/mem2"],
    );
    assert_ne!(code, 0, "/dev/mem readable without a device rule");

    // Read-only permission on a device the runtime does not allow by default: opening it
    // for reading works, for writing the device cgroup refuses.
    if std::path::Path::new("/dev/loop-control").exists() {
        let mut cfg = container_config("ro-dev", &["sleep", "3600"]);
        cfg.devices = vec![cri::Device {
            container_path: "/dev/roloop".into(),
            host_path: "/dev/loop-control".into(),
            permissions: "r".into(),
        }];
        let ro = c.run_container(&pod, &pcfg, cfg).unwrap();
        let (_, err, code) = c.exec(&ro, &["sh", "-c", ": < /dev/roloop"]);
        assert_eq!(code, 0, "read open refused: {err}");
        let (_, err, code) = c.exec(&ro, &["sh", "-c", ": > /dev/roloop"]);
        assert_ne!(code, 0, "write open allowed with r only");
        assert!(err.contains("not permitted"), "{err}");
    }

    let before = container_dirs(&d);
    for (i, (host, perms, what)) in [
        ("/nonexistent/device", "rw", "/nonexistent/device"),
        ("/etc/hostname", "rw", "not a device"),
        ("/dev/null", "rwx", "rwx"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = container_config(&format!("bad{i}"), &["sleep", "3600"]);
        cfg.devices = vec![cri::Device {
            container_path: "/dev/bad".into(),
            host_path: host.into(),
            permissions: perms.into(),
        }];
        let e = c.run_container(&pod, &pcfg, cfg).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(what), "{e:?}");
    }
    assert_eq!(
        container_dirs(&d),
        before,
        "a refused container left its dir"
    );

    cleanup(&d, &mut c, &pod);
}
