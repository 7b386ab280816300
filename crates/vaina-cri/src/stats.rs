//! Runtime stats → CRI stats messages.

use k8s_cri::v1 as cri;
use vaina_runtime::stats::{ContainerStats, CpuStats, FsStats, MemoryStats, PodStats};

fn u(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn cpu(c: &CpuStats) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: c.timestamp,
        usage_core_nano_seconds: u(c.usage_core_nano_seconds),
        usage_nano_cores: c.usage_nano_cores.and_then(u),
    }
}

fn memory(m: &MemoryStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: m.timestamp,
        working_set_bytes: u(m.working_set_bytes),
        available_bytes: m.available_bytes.and_then(u),
        usage_bytes: u(m.usage_bytes),
        rss_bytes: u(m.rss_bytes),
        page_faults: u(m.page_faults),
        major_page_faults: u(m.major_page_faults),
    }
}

fn fs(f: &FsStats) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: f.timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: f.mountpoint.clone(),
        }),
        used_bytes: u(f.used_bytes),
        inodes_used: u(f.inodes_used),
    }
}

pub fn container_stats(s: &ContainerStats) -> cri::ContainerStats {
    let r = &s.record;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        }),
        cpu: s.cpu.as_ref().map(cpu),
        memory: s.memory.as_ref().map(memory),
        writable_layer: s.writable_layer.as_ref().map(fs),
        swap: None,
    }
}

pub fn pod_stats(s: &PodStats) -> cri::PodSandboxStats {
    let r = &s.record;
    let network = s.network.as_ref().map(|(ts, ifaces)| {
        let all: Vec<cri::NetworkInterfaceUsage> = ifaces
            .iter()
            .map(|i| cri::NetworkInterfaceUsage {
                name: i.name.clone(),
                rx_bytes: u(i.rx_bytes),
                rx_errors: u(i.rx_errors),
                tx_bytes: u(i.tx_bytes),
                tx_errors: u(i.tx_errors),
            })
            .collect();
        cri::NetworkUsage {
            timestamp: *ts,
            default_interface: all
                .iter()
                .find(|i| i.name == vaina_runtime::network::POD_IFNAME)
                .cloned(),
            interfaces: all,
        }
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: s.cpu.as_ref().map(cpu),
            memory: s.memory.as_ref().map(memory),
            network,
            process: s.processes.map(|(ts, n)| cri::ProcessUsage {
                timestamp: ts,
                process_count: u(n),
            }),
            containers: s.containers.iter().map(container_stats).collect(),
        }),
        windows: None,
    }
}
