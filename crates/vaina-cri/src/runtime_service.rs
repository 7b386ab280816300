//! RuntimeService over `vaina_runtime::Runtime`: sandboxes, containers, stats and resource
//! updates; streaming RPCs answer Unimplemented until the runtime core has them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};
use vaina_runtime::Runtime;
use vaina_runtime::sandbox::SandboxRecord;

use crate::convert;
use crate::status::{to_status, unimplemented};
use vaina_stream::server::StreamServer;

pub const RUNTIME_NAME: &str = "vaina";
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");
const CRI_VERSION: &str = "v1";

pub struct Service {
    rt: Arc<Runtime>,
    streams: Arc<StreamServer>,
}

impl Service {
    pub fn new(rt: Arc<Runtime>, streams: Arc<StreamServer>) -> Service {
        Service { rt, streams }
    }

    /// Exec and attach need a running container, as containerd checks before a URL.
    fn running_container(&self, id: &str) -> Result<String, Status> {
        let rec = self.rt.container(id).map_err(to_status)?;
        if rec.state != vaina_runtime::container::ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(rec.id)
    }
}

fn stream_request_error(e: vaina_stream::RequestError) -> Status {
    match e {
        vaina_stream::RequestError::InvalidArgument(m) => Status::invalid_argument(m),
        other => Status::resource_exhausted(other.to_string()),
    }
}

fn matches_labels(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn sandbox_matches(r: &SandboxRecord, f: &cri::PodSandboxFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.state
            .as_ref()
            .is_none_or(|s| convert::sandbox_state(r.state) as i32 == s.state)
        && matches_labels(&r.config.labels, &f.label_selector)
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: RUNTIME_VERSION.into(),
            runtime_api_version: CRI_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let rt = self.rt.clone();
        let net = tokio::task::spawn_blocking(move || rt.network().status())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (ready, reason, message) = match net {
            Ok(()) => (true, String::new(), String::new()),
            Err(e) => (false, "NetworkPluginNotReady".to_string(), e.chain()),
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: ready,
                reason,
                message,
            },
        ];
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            info.insert(
                "config".into(),
                format!(
                    "{{\"network\":{:?},\"root\":{:?}}}",
                    self.rt.network().name(),
                    self.rt.config().root
                ),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            ..Default::default()
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("RunPodSandbox without a config"))?;
        let id = self
            .rt
            .run_pod_sandbox(config, r.runtime_handler)
            .await
            .map_err(to_status)?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        match self.rt.stop_pod_sandbox(&id).await {
            // Stopping what is already gone succeeds (kubelet retries StopPodSandbox).
            Ok(()) | Err(vaina_runtime::Error::NotFound { .. }) => {
                Ok(Response::new(cri::StopPodSandboxResponse {}))
            }
            Err(e) => Err(to_status(e)),
        }
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        self.rt.remove_pod_sandbox(&id).await.map_err(to_status)?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let r = self.rt.get(&req.pod_sandbox_id).map_err(to_status)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json_like(&r);
            info.insert("info".into(), v);
        }
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(convert::pod_sandbox_status(&r)),
            info,
            containers_statuses: Vec::new(),
            timestamp: vaina_runtime::sandbox::now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let items = self
            .rt
            .list()
            .iter()
            .filter(|r| sandbox_matches(r, &filter))
            .map(convert::pod_sandbox)
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        let containers = self
            .rt
            .list_containers()
            .iter()
            .filter(|c| {
                (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                    && f.state
                        .as_ref()
                        .is_none_or(|s| convert::container_state(c.state) as i32 == s.state)
                    && matches_labels(&c.config.labels, &f.label_selector)
            })
            .map(convert::container)
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer without a config"))?;
        let id = self
            .rt
            .create_container(&r.pod_sandbox_id, config)
            .await
            .map_err(to_status)?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.rt.start_container(&id).await.map_err(to_status)?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let r = req.into_inner();
        self.rt
            .stop_container(&r.container_id, r.timeout)
            .await
            .map_err(to_status)?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.rt.remove_container(&id).await.map_err(to_status)?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let r = req.into_inner();
        let c = self.rt.container(&r.container_id).map_err(to_status)?;
        let mut info = HashMap::new();
        if r.verbose {
            info.insert(
                "info".into(),
                format!(
                    "{{\"sandboxID\":{:?},\"pid\":{},\"runtime\":{:?}}}",
                    c.sandbox_id,
                    c.pid,
                    c.runtime.display().to_string()
                ),
            );
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(convert::container_status(&c)),
            info,
        }))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let r = req.into_inner();
        let (stdout, stderr, exit_code) = self
            .rt
            .exec_sync(&r.container_id, r.cmd, r.timeout)
            .await
            .map_err(to_status)?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        self.rt.reopen_container_log(&id).map_err(to_status)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        let rt = self.rt.clone();
        let stats = tokio::task::spawn_blocking(move || {
            rt.list_container_stats(|c| {
                (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                    && matches_labels(&c.config.labels, &f.label_selector)
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(cri::ListContainerStatsResponse {
            stats: stats.iter().map(crate::stats::container_stats).collect(),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = req.into_inner().filter.unwrap_or_default();
        let rt = self.rt.clone();
        let stats = tokio::task::spawn_blocking(move || {
            rt.list_pod_stats(|p| {
                (f.id.is_empty() || p.id.starts_with(&f.id))
                    && matches_labels(&p.config.labels, &f.label_selector)
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse {
            stats: stats.iter().map(crate::stats::pod_stats).collect(),
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        let rt = self.rt.clone();
        let c = cidr.clone();
        let outcome = tokio::task::spawn_blocking(move || rt.update_pod_cidr(&c))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        use vaina_runtime::update::PodCidrOutcome;
        match outcome {
            PodCidrOutcome::Unchanged => {}
            PodCidrOutcome::Rewritten(path) => tracing::info!(
                pod_cidr = %cidr,
                path = %path.display(),
                "rewrote the default CNI network for kubelet's pod CIDR; it is used from the next start of vainad"
            ),
            PodCidrOutcome::Kept(why) => tracing::info!(
                pod_cidr = %cidr,
                "kept the CNI config: {why}"
            ),
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(unimplemented("GetContainerEvents"))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let r = req.into_inner();
        let linux = r.linux.ok_or_else(|| {
            Status::invalid_argument("UpdateContainerResources without linux resources")
        })?;
        self.rt
            .update_container_resources(&r.container_id, linux)
            .await
            .map_err(to_status)?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let r = req.into_inner();
        let container_id = self.running_container(&r.container_id)?;
        let url = self
            .streams
            .get_exec(vaina_stream::request::ExecRequest {
                container_id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(stream_request_error)?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let r = req.into_inner();
        let container_id = self.running_container(&r.container_id)?;
        let url = self
            .streams
            .get_attach(vaina_stream::request::AttachRequest {
                container_id,
                stdin: r.stdin,
                tty: r.tty,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(stream_request_error)?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = req.into_inner();
        let sandbox = self
            .rt
            .get(&self.rt.resolve(&r.pod_sandbox_id).map_err(to_status)?)
            .map_err(to_status)?;
        if sandbox.state != vaina_runtime::sandbox::SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "sandbox {} is not ready",
                sandbox.id
            )));
        }
        let url = self
            .streams
            .get_port_forward(vaina_stream::request::PortForwardRequest {
                pod_sandbox_id: sandbox.id,
                ports: r.port,
            })
            .map_err(stream_request_error)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        let rt = self.rt.clone();
        let s = tokio::task::spawn_blocking(move || rt.container_stats(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(crate::stats::container_stats(&s)),
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let rt = self.rt.clone();
        let s = tokio::task::spawn_blocking(move || rt.pod_stats(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(crate::stats::pod_stats(&s)),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Err(unimplemented("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }
}

/// The record as JSON, for verbose status (crictl inspectp prints it).
fn serde_json_like(r: &SandboxRecord) -> String {
    vaina_runtime::sandbox::record_json(r)
}
