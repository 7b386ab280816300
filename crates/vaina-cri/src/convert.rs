//! Runtime records → CRI messages.

use k8s_cri::v1 as cri;
use vaina_runtime::sandbox::{SandboxRecord, SandboxState};

pub fn sandbox_state(s: SandboxState) -> cri::PodSandboxState {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::Creating | SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn pod_sandbox(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: sandbox_state(r.state) as i32,
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

pub fn pod_sandbox_status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    let opts = r
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: sandbox_state(r.state) as i32,
        created_at: r.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: r.ip.clone().unwrap_or_default(),
            additional_ips: r
                .additional_ips
                .iter()
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: opts }),
        }),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}
