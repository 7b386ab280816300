//! End to end: container and pod stats (cgroups, writable layer, the pod's network),
//! UpdateContainerResources and UpdateRuntimeConfig's pod CIDR, against vainad in a
//! throwaway node namespace; plus `vaina stats` / `vaina statsp`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use k8s_cri::v1 as cri;
use tonic::Code;
use vaina_testkit::can_run_ns_tests;

fn container_stats(c: &mut Client, id: &str) -> Result<cri::ContainerStats, tonic::Status> {
    let r = &mut c.c.runtime;
    c.rt.block_on(r.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    }))
    .map(|r| r.into_inner().stats.unwrap())
}

fn list_container_stats(c: &mut Client, f: cri::ContainerStatsFilter) -> Vec<cri::ContainerStats> {
    let r = &mut c.c.runtime;
    c.rt.block_on(r.list_container_stats(cri::ListContainerStatsRequest { filter: Some(f) }))
        .unwrap()
        .into_inner()
        .stats
}

fn pod_stats(c: &mut Client, id: &str) -> Result<cri::PodSandboxStats, tonic::Status> {
    let r = &mut c.c.runtime;
    c.rt.block_on(r.pod_sandbox_stats(cri::PodSandboxStatsRequest {
        pod_sandbox_id: id.into(),
    }))
    .map(|r| r.into_inner().stats.unwrap())
}

fn list_pod_stats(c: &mut Client, f: cri::PodSandboxStatsFilter) -> Vec<cri::PodSandboxStats> {
    let r = &mut c.c.runtime;
    c.rt.block_on(r.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: Some(f) }))
        .unwrap()
        .into_inner()
        .stats
}

fn update(
    c: &mut Client,
    id: &str,
    res: cri::LinuxContainerResources,
) -> Result<(), tonic::Status> {
    let r = &mut c.c.runtime;
    c.rt.block_on(
        r.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(res),
            ..Default::default()
        }),
    )
    .map(|_| ())
}

fn update_cidr(c: &mut Client, cidr: &str) -> Result<(), tonic::Status> {
    let r = &mut c.c.runtime;
    c.rt.block_on(r.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    }))
    .map(|_| ())
}

/// The container's init pid, from verbose ContainerStatus.
fn pid_of(c: &mut Client, id: &str) -> u32 {
    let r = &mut c.c.runtime;
    let info =
        c.rt.block_on(r.container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        }))
        .unwrap()
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// The cgroup directory of `controller` holding `pid` (v1: `/sys/fs/cgroup/<mount>/<path>`,
/// v2: `/sys/fs/cgroup/<path>`), from /proc/<pid>/cgroup.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if v2 && ctrls.is_empty() {
            return PathBuf::from(format!("/sys/fs/cgroup{path}"));
        }
        if !v2 && ctrls.split(',').any(|c| c == controller) {
            return PathBuf::from(format!("/sys/fs/cgroup/{ctrls}{path}"));
        }
    }
    panic!("no {controller} cgroup for {pid}: {text}");
}

fn val(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or(0)
}

fn cleanup(d: &Daemon, c: &mut Client, pods: &[&str]) {
    for p in pods {
        c.stop_pod(p).unwrap();
        c.remove_pod(p).unwrap();
    }
    assert!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
    assert!(d.processes().is_empty(), "supervisors left");
    assert!(d.node.veths().is_empty(), "veths left");
}

#[test]
fn container_and_pod_stats_come_from_cgroups_upperdir_and_netns() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    let mut pcfg = pod_config("stats-pod");
    pcfg.labels = HashMap::from([("app".to_string(), "stats".to_string())]);
    let pod = c.run_pod(pcfg.clone()).unwrap();
    let other = c.run_pod(pod_config("other-pod")).unwrap();
    let mut ccfg = container_config("worker", &["sleep", "3600"]);
    ccfg.labels = HashMap::from([("role".to_string(), "worker".to_string())]);
    let ctr = c.run_container(&pod, &pcfg, ccfg).unwrap();
    let other_ctr = c
        .run_container(
            &other,
            &pod_config("other-pod"),
            container_config("idle", &["sleep", "3600"]),
        )
        .unwrap();

    // Where the runtime put the cgroup: <mount>/vaina/<id> (cgroupsPath /vaina/<id>).
    let pid = pid_of(&mut c, &ctr);
    let mem_dir = cgroup_dir(pid, "memory");
    assert!(
        mem_dir.ends_with(format!("vaina/{ctr}")),
        "memory cgroup {}",
        mem_dir.display()
    );

    // Work: 2 MiB in the writable layer, some CPU.
    let (_, err, code) = c.exec(
        &ctr,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/blob bs=1024 count=2048 2>/dev/null && \
             i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
        ],
    );
    assert_eq!(code, 0, "{err}");

    let s1 = container_stats(&mut c, &ctr).unwrap();
    let a = s1.attributes.as_ref().unwrap();
    assert_eq!(a.id, ctr);
    assert_eq!(a.metadata.as_ref().unwrap().name, "worker");
    assert_eq!(a.labels["role"], "worker");
    let cpu = s1.cpu.as_ref().expect("cpu stats");
    let cpu_ns = val(&cpu.usage_core_nano_seconds);
    assert!(cpu_ns > 0, "cpu usage {cpu_ns}");
    let mem = s1.memory.as_ref().expect("memory stats");
    let usage = val(&mem.usage_bytes);
    assert!(usage > 0);
    assert!(val(&mem.working_set_bytes) <= usage);
    assert!(val(&mem.page_faults) > 0);
    assert!(mem.available_bytes.is_none(), "no limit, nothing available");
    let usage_file = std::fs::read_to_string(mem_dir.join(
        if mem_dir.starts_with("/sys/fs/cgroup/memory") {
            "memory.usage_in_bytes"
        } else {
            "memory.current"
        },
    ))
    .unwrap();
    let now: u64 = usage_file.trim().parse().unwrap();
    assert!(
        now.abs_diff(usage) < 16 << 20,
        "cgroup says {now}, stats {usage}"
    );
    let wl = s1.writable_layer.as_ref().expect("writable layer");
    assert!(val(&wl.used_bytes) >= 2 << 20, "{wl:?}");
    assert!(val(&wl.inodes_used) >= 2, "{wl:?}");
    assert_eq!(
        wl.fs_id.as_ref().unwrap().mountpoint,
        d.root.join("lib/containers").display().to_string()
    );

    // The second sample has a rate.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let s2 = container_stats(&mut c, &ctr).unwrap();
    let cpu2 = s2.cpu.unwrap();
    assert!(val(&cpu2.usage_core_nano_seconds) >= cpu_ns);
    assert!(
        cpu2.usage_nano_cores.is_some(),
        "nano cores from the previous sample"
    );

    // Filters.
    let by_pod = list_container_stats(
        &mut c,
        cri::ContainerStatsFilter {
            pod_sandbox_id: pod[..12].into(),
            ..Default::default()
        },
    );
    assert_eq!(by_pod.len(), 1);
    assert_eq!(by_pod[0].attributes.as_ref().unwrap().id, ctr);
    let all = list_container_stats(&mut c, cri::ContainerStatsFilter::default());
    assert_eq!(all.len(), 2);
    let by_label = list_container_stats(
        &mut c,
        cri::ContainerStatsFilter {
            label_selector: HashMap::from([("role".into(), "worker".into())]),
            ..Default::default()
        },
    );
    assert_eq!(by_label.len(), 1);
    let by_id = list_container_stats(
        &mut c,
        cri::ContainerStatsFilter {
            id: other_ctr.clone(),
            ..Default::default()
        },
    );
    assert_eq!(by_id[0].attributes.as_ref().unwrap().id, other_ctr);
    assert_eq!(
        container_stats(&mut c, "0000dead").unwrap_err().code(),
        Code::NotFound
    );

    // Pod: network of its netns (traffic from the node to the pod), processes, containers.
    let ip = c.pod_ip(&pod);
    let before = pod_stats(&mut c, &pod).unwrap();
    let lin = before.linux.as_ref().unwrap();
    let net = lin.network.as_ref().expect("network stats");
    let eth0 = net.default_interface.as_ref().expect("eth0");
    assert_eq!(eth0.name, "eth0");
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));
    let (rx0, tx0) = (val(&eth0.rx_bytes), val(&eth0.tx_bytes));
    d.node.sh_ok(&format!("ping -c 3 -i 0.2 -s 1000 -W 2 {ip}"));
    let after = pod_stats(&mut c, &pod).unwrap();
    let lin = after.linux.as_ref().unwrap();
    let eth0 = lin
        .network
        .as_ref()
        .unwrap()
        .default_interface
        .clone()
        .unwrap();
    assert!(
        val(&eth0.rx_bytes) >= rx0 + 3000,
        "rx {rx0} → {:?}",
        eth0.rx_bytes
    );
    assert!(
        val(&eth0.tx_bytes) >= tx0 + 3000,
        "tx {tx0} → {:?}",
        eth0.tx_bytes
    );
    assert!(val(&lin.process.as_ref().unwrap().process_count) >= 1);
    assert!(val(&lin.cpu.as_ref().unwrap().usage_core_nano_seconds) >= cpu_ns);
    assert!(val(&lin.memory.as_ref().unwrap().usage_bytes) > 0);
    assert_eq!(lin.containers.len(), 1);
    assert_eq!(lin.containers[0].attributes.as_ref().unwrap().id, ctr);
    assert_eq!(after.attributes.as_ref().unwrap().labels["app"], "stats");

    let pods = list_pod_stats(&mut c, cri::PodSandboxStatsFilter::default());
    assert_eq!(pods.len(), 2);
    let by_label = list_pod_stats(
        &mut c,
        cri::PodSandboxStatsFilter {
            label_selector: HashMap::from([("app".into(), "stats".into())]),
            ..Default::default()
        },
    );
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, pod);
    let by_id = list_pod_stats(
        &mut c,
        cri::PodSandboxStatsFilter {
            id: other.clone(),
            ..Default::default()
        },
    );
    assert_eq!(by_id.len(), 1);
    assert_eq!(
        pod_stats(&mut c, "0000dead").unwrap_err().code(),
        Code::NotFound
    );

    // The CLI: crictl's stats / statsp.
    let out = d.vaina_ok(&["stats"]);
    assert!(out.contains("worker") && out.contains("idle"), "{out}");
    let out = d.vaina_ok(&["stats", "-o", "json", "--id", &ctr]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats"][0]["attributes"]["id"], ctr.as_str());
    let out = d.vaina_ok(&["statsp", "-o", "json", "--label", "app=stats"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats"].as_array().unwrap().len(), 1, "{out}");
    let out = d.vaina_ok(&["statsp"]);
    assert!(
        out.contains("stats-pod") && out.contains("other-pod"),
        "{out}"
    );

    // A stopped container: no cgroup, still its writable layer, no error.
    c.stop_container(&ctr, 0).unwrap();
    let s = container_stats(&mut c, &ctr).unwrap();
    assert!(s.cpu.is_none() && s.memory.is_none(), "{s:?}");
    assert!(val(&s.writable_layer.unwrap().used_bytes) >= 2 << 20);
    let p = pod_stats(&mut c, &pod).unwrap();
    assert_eq!(p.linux.unwrap().containers.len(), 1);

    cleanup(&d, &mut c, &[&pod, &other]);
}

#[test]
fn update_container_resources_changes_the_cgroup_and_refuses_bad_values() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox();
    let mut c = d.client();
    // crun (the default handler) and runc.
    for handler in ["", "runc"] {
        let pcfg = pod_config(&format!("update-pod-{handler}"));
        let pod = c.run_pod_with(pcfg.clone(), handler).unwrap();
        let ctr = c
            .run_container(&pod, &pcfg, container_config("ctr", &["sleep", "3600"]))
            .unwrap();
        let pid = pid_of(&mut c, &ctr);
        let mem_dir = cgroup_dir(pid, "memory");
        let limit_file = if mem_dir.join("memory.limit_in_bytes").exists() {
            mem_dir.join("memory.limit_in_bytes")
        } else {
            mem_dir.join("memory.max")
        };
        let limit = || -> String {
            std::fs::read_to_string(&limit_file)
                .unwrap()
                .trim()
                .to_string()
        };
        update(
            &mut c,
            &ctr,
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_shares: 512,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(limit(), (64u64 << 20).to_string());
        // Stats now know the limit.
        let s = container_stats(&mut c, &ctr).unwrap();
        let m = s.memory.unwrap();
        assert_eq!(
            val(&m.available_bytes),
            (64u64 << 20) - val(&m.working_set_bytes)
        );
        update(
            &mut c,
            &ctr,
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 128 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(limit(), (128u64 << 20).to_string());
        // Kept in the container's record.
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.root.join(format!("lib/container-records/{ctr}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            rec["config"]["linux"]["resources"]["memory_limit_in_bytes"],
            128u64 << 20,
            "{rec}"
        );
        // And reported by ContainerStatus.
        let st = c.container_status(&ctr).unwrap();
        let limit_seen = st
            .resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes);
        assert_eq!(limit_seen, Some(128 << 20));

        for (bad, what) in [
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: -1,
                    ..Default::default()
                },
                "negative",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: 1024,
                    ..Default::default()
                },
                "minimum",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_period: 5,
                    ..Default::default()
                },
                "cpu_period",
            ),
        ] {
            let e = update(&mut c, &ctr, bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(what), "{e:?}");
        }
        assert_eq!(
            limit(),
            (128u64 << 20).to_string(),
            "a refused update changes nothing"
        );
        let e = update(&mut c, "0000dead", Default::default()).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        c.remove_container(&ctr).unwrap();
        cleanup(&d, &mut c, &[&pod]);
    }
}

#[test]
fn pod_cidr_rewrites_only_vainas_own_default_network_when_no_pod_runs() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut c = d.client();
    let conflist = d.root.join("net.d/10-vaina.conflist");
    let original = std::fs::read_to_string(&conflist).unwrap();
    assert!(original.contains("10.88.0.0/16"));

    for bad in ["not-a-cidr", "10.244.1.0/31"] {
        let e = update_cidr(&mut c, bad).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(bad), "{e:?}");
    }
    update_cidr(&mut c, "").unwrap();

    // A running pod keeps the config.
    let pod = c.run_pod(pod_config("cidr-pod")).unwrap();
    update_cidr(&mut c, "10.244.1.0/24").unwrap();
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), original);
    c.stop_pod(&pod).unwrap();
    c.remove_pod(&pod).unwrap();

    // No pod: rewritten for the CIDR.
    update_cidr(&mut c, "10.244.1.0/24").unwrap();
    let now = std::fs::read_to_string(&conflist).unwrap();
    assert!(now.contains("\"10.244.1.0/24\""), "{now}");
    assert!(!now.contains("10.88.0.0/16"));

    // Someone else's config is never touched.
    std::fs::write(d.root.join("net.d/20-other.conflist"), "{}").unwrap();
    update_cidr(&mut c, "10.245.0.0/24").unwrap();
    assert!(
        std::fs::read_to_string(&conflist)
            .unwrap()
            .contains("10.244.1.0/24")
    );
    std::fs::remove_file(d.root.join("net.d/20-other.conflist")).unwrap();
    cleanup(&d, &mut c, &[]);
}
