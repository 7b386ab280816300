//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer, status,
//! listing and ExecSync.
//!
//! Create: overlayfs rootfs from the image's layers → `config.json` (see [`crate::spec`]) →
//! the pod supervisor runs `<oci runtime> create`, so the container is its descendant and
//! its stdout/stderr go to the supervisor, which writes the CRI log and records the exit.
//! Start, kill, delete and exec are short OCI runtime commands run by the daemon.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerConfig;
use nix::mount::MntFlags;
use serde::{Deserialize, Serialize};
use vaina_pod::protocol::{self as sup, Client, Request, Response};

use crate::error::{Error, Result};
use crate::sandbox::{Runtime, SandboxState, new_id, now_nanos};
use crate::spec::{self, SpecInput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    /// `sha256:…` of the image config.
    pub image_id: String,
    /// The image as the config named it.
    pub image_ref: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub pid: u32,
    pub log_path: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
}

impl ContainerRecord {
    fn dir(&self, rt: &Runtime) -> PathBuf {
        rt.cfg.root.join("containers").join(&self.id)
    }

    fn rootfs(&self, rt: &Runtime) -> PathBuf {
        self.dir(rt).join("rootfs")
    }

    fn name(&self) -> String {
        self.config.metadata.clone().unwrap_or_default().name
    }
}

/// Runs an OCI runtime command and returns its stdout; an error carries its stderr.
/// `start`, `kill` and `delete` (see `vaina_pod::oci::command_without_cgroups`).
fn oci(runtime: &Path, root: &Path, args: &[&str]) -> Result<String> {
    let out = vaina_pod::oci::command_without_cgroups(runtime)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::failed(format!("run {}", runtime.display()), e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "{} {}: {}",
            runtime.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `2026-11-26T12:00:00.123456789Z` → Unix nanoseconds (the supervisor writes UTC).
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: i64 = format!("{frac:0<9}")[..9].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 86400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000) + nanos)
}

impl Runtime {
    fn pod_dir(&self, sandbox_id: &str) -> PathBuf {
        self.cfg.pods_dir().join(sandbox_id)
    }

    fn runtime_binary(&self, handler: &str) -> Result<(PathBuf, PathBuf)> {
        let bin = self.cfg.runtimes.get(handler).ok_or_else(|| {
            Error::InvalidArgument(format!("unknown runtime handler {handler:?}"))
        })?;
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "oci".into());
        Ok((bin.clone(), self.cfg.state_dir.join("oci").join(name)))
    }

    pub(crate) fn recover_containers(&self) -> Result<()> {
        let records: Vec<ContainerRecord> = self.cstore.load_all()?;
        let mut map = self.containers.lock().unwrap();
        for mut r in records {
            self.refresh(&mut r);
            map.insert(r.id.clone(), r);
        }
        Ok(())
    }

    /// Learns a running container's exit from the supervisor's exit record.
    fn refresh(&self, r: &mut ContainerRecord) {
        if !matches!(r.state, ContainerState::Running | ContainerState::Created) {
            return;
        }
        if let Ok(Some(exit)) = sup::read_exit_record(&self.pod_dir(&r.sandbox_id), &r.id) {
            r.state = ContainerState::Exited;
            r.exit_code = match exit.signal {
                Some(sig) => 128 + sig,
                None => exit.exit_code,
            };
            r.finished_at = parse_rfc3339_utc(&exit.finished_at).unwrap_or_else(now_nanos);
            r.reason = if r.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into();
            let _ = self.cstore.save(&r.id, r);
        }
    }

    pub fn resolve_container(&self, id: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("container id is empty".into()));
        }
        let map = self.containers.lock().unwrap();
        if map.contains_key(id) {
            return Ok(id.into());
        }
        let m: Vec<&String> = map.keys().filter(|k| k.starts_with(id)).collect();
        match m.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound {
                kind: "container",
                id: id.into(),
            }),
            _ => Err(Error::InvalidArgument(format!(
                "container id prefix {id} is ambiguous"
            ))),
        }
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        let id = self.resolve_container(id)?;
        let mut r = self.containers.lock().unwrap()[&id].clone();
        self.refresh(&mut r);
        self.containers.lock().unwrap().insert(id, r.clone());
        Ok(r)
    }

    pub fn list_containers(&self) -> Vec<ContainerRecord> {
        let ids: Vec<String> = self.containers.lock().unwrap().keys().cloned().collect();
        let mut v: Vec<ContainerRecord> = ids
            .iter()
            .filter_map(|id| self.container(id).ok())
            .collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    pub fn containers_of(&self, sandbox_id: &str) -> Vec<String> {
        self.containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .map(|c| c.id.clone())
            .collect()
    }

    pub async fn create_container(
        self: &Arc<Self>,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> Result<String> {
        let sandbox = self.get(sandbox_id)?;
        if sandbox.state != SandboxState::Ready {
            return Err(Error::InvalidArgument(format!(
                "sandbox {} is not ready",
                sandbox.id
            )));
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container config has no metadata".into()))?;
        if meta.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata.name is empty".into(),
            ));
        }
        let image_ref = config.image.clone().unwrap_or_default().image;
        if image_ref.is_empty() {
            return Err(Error::InvalidArgument(
                "container config names no image".into(),
            ));
        }
        let (runtime, runtime_root) = self.runtime_binary(&sandbox.runtime_handler)?;
        let sm = sandbox.config.metadata.clone().unwrap_or_default();
        let key = format!(
            "{}_{}_{}_{}_{}",
            meta.name, sm.name, sm.namespace, sm.uid, meta.attempt
        );
        let log_path = if !sandbox.config.log_directory.is_empty() && !config.log_path.is_empty() {
            Path::new(&sandbox.config.log_directory).join(&config.log_path)
        } else {
            PathBuf::new()
        };
        let id = new_id();
        let mut rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            config,
            image_id: String::new(),
            image_ref,
            state: ContainerState::Created,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            pid: 0,
            log_path,
            runtime,
            runtime_root,
        };
        if rec.log_path.as_os_str().is_empty() {
            rec.log_path = rec.dir(self).join("container.log");
        }
        {
            let mut map = self.containers.lock().unwrap();
            if let Some(other) = map.values().find(|c| {
                c.sandbox_id == rec.sandbox_id
                    && c.name() == meta.name
                    && c.config.metadata.as_ref().map(|m| m.attempt) == Some(meta.attempt)
            }) {
                return Err(Error::AlreadyExists {
                    what: format!("container name {key} (reserved by {})", other.id),
                });
            }
            map.insert(id.clone(), rec.clone());
        }
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = this.prepare_blocking(&mut rec, &sandbox);
            (rec, r)
        })
        .await
        .map_err(|e| Error::Internal(format!("container create task: {e}")))?;
        let (rec, r) = res;
        match r {
            Ok(()) => {
                self.cstore.save(&id, &rec)?;
                self.containers.lock().unwrap().insert(id.clone(), rec);
                Ok(id)
            }
            Err(e) => {
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.cleanup_blocking(&rec)).await;
                self.containers.lock().unwrap().remove(&id);
                Err(e)
            }
        }
    }

    fn prepare_blocking(
        &self,
        rec: &mut ContainerRecord,
        sandbox: &crate::sandbox::SandboxRecord,
    ) -> Result<()> {
        let image = self
            .images
            .get(&rec.image_ref)
            .map_err(|e| Error::failed(format!("look up image {}", rec.image_ref), e))?
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: rec.image_ref.clone(),
            })?;
        rec.image_id = image.id.to_string();
        let image_config = self
            .images
            .config(&image)
            .map_err(|e| Error::failed(format!("read config of image {}", rec.image_ref), e))?;
        let lowers = self
            .images
            .lowerdirs(&image)
            .map_err(|e| Error::failed(format!("layers of image {}", rec.image_ref), e))?;

        let dir = rec.dir(self);
        for sub in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::failed(format!("create {}", dir.join(sub).display()), e))?;
        }
        crate::overlay::mount(
            &rec.rootfs(self),
            &lowers,
            &dir.join("upper"),
            &dir.join("work"),
        )
        .map_err(|e| Error::failed("mount the container's overlay rootfs", e))?;

        // /etc/hostname and /etc/hosts of the pod, and its resolv.conf.
        let hostname = if sandbox.config.hostname.is_empty() {
            sandbox.config.metadata.clone().unwrap_or_default().name
        } else {
            sandbox.config.hostname.clone()
        };
        let mut etc_files: Vec<(PathBuf, &'static str)> = Vec::new();
        crate::store::write_atomic(&dir.join("hostname"), format!("{hostname}\n").as_bytes())?;
        etc_files.push((dir.join("hostname"), "/etc/hostname"));
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(ip) = &sandbox.ip {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        crate::store::write_atomic(&dir.join("hosts"), hosts.as_bytes())?;
        etc_files.push((dir.join("hosts"), "/etc/hosts"));
        if let Some(r) = self.resolv_conf(&sandbox.id) {
            etc_files.push((r, "/etc/resolv.conf"));
        }

        let mut client = Client::connect(sup::socket_path(&self.pod_dir(&sandbox.id)))
            .map_err(|e| Error::failed(format!("connect to the supervisor of {}", sandbox.id), e))?
            .with_timeout(Duration::from_secs(60));
        let namespaces = match client
            .call(&Request::Info)
            .map_err(|e| Error::failed(format!("supervisor of {}", sandbox.id), e))?
        {
            Response::Info(info) => info.namespaces,
            other => {
                return Err(Error::Internal(format!(
                    "unexpected supervisor answer {other:?}"
                )));
            }
        };
        let parent = sandbox
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/vaina".into());
        let spec = spec::build(&SpecInput {
            config: &rec.config,
            image: &image_config,
            rootfs: &rec.rootfs(self),
            netns: sandbox.netns.as_deref(),
            uts_ns: namespaces.uts,
            ipc_ns: namespaces.ipc,
            pid_ns: namespaces.pid,
            etc_files,
            cgroups_path: format!("{}/{}", parent.trim_end_matches('/'), rec.id),
        })?;
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle)
            .map_err(|e| Error::failed(format!("create {}", bundle.display()), e))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| Error::failed("write config.json", e))?;
        std::fs::create_dir_all(&rec.runtime_root)
            .map_err(|e| Error::failed(format!("create {}", rec.runtime_root.display()), e))?;

        let resp = client
            .call(&Request::Create {
                id: rec.id.clone(),
                runtime: rec.runtime.clone(),
                runtime_root: rec.runtime_root.clone(),
                bundle,
                log_path: rec.log_path.clone(),
                stdin: rec.config.stdin,
                stdin_once: rec.config.stdin_once,
                tty: rec.config.tty,
            })
            .map_err(|e| Error::failed(format!("supervisor of {}", sandbox.id), e))?;
        match resp {
            Response::Created { pid } => {
                rec.pid = pid;
                Ok(())
            }
            Response::Error { message, .. } => Err(Error::Internal(format!(
                "create container {}: {message}",
                rec.name()
            ))),
            other => Err(Error::Internal(format!(
                "unexpected supervisor answer {other:?}"
            ))),
        }
    }

    /// Removes what `prepare_blocking` made: the OCI runtime's container, the rootfs mount,
    /// the container dir, the supervisor's record. Every step tolerates "already gone".
    fn cleanup_blocking(&self, rec: &ContainerRecord) -> Result<()> {
        let _ = oci(
            &rec.runtime,
            &rec.runtime_root,
            &["delete", "--force", &rec.id],
        );
        match nix::mount::umount2(&rec.rootfs(self), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Error::failed("unmount the container rootfs", e)),
        }
        if let Ok(mut c) = Client::connect(sup::socket_path(&self.pod_dir(&rec.sandbox_id))) {
            let _ = c.call(&Request::Forget { id: rec.id.clone() });
        }
        let _ = std::fs::remove_file(sup::exit_path(&self.pod_dir(&rec.sandbox_id), &rec.id));
        let _ = std::fs::remove_file(sup::container_pid_path(
            &self.pod_dir(&rec.sandbox_id),
            &rec.id,
        ));
        match std::fs::remove_dir_all(rec.dir(self)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::failed(
                format!("remove {}", rec.dir(self).display()),
                e,
            )),
        }
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let mut rec = self.container(id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::InvalidArgument(format!(
                "container {} is {:?}, not Created",
                rec.id, rec.state
            )));
        }
        let r = rec.clone();
        tokio::task::spawn_blocking(move || oci(&r.runtime, &r.runtime_root, &["start", &r.id]))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        rec.state = ContainerState::Running;
        rec.started_at = now_nanos();
        self.cstore.save(&rec.id, &rec)?;
        self.containers.lock().unwrap().insert(rec.id.clone(), rec);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `timeout` seconds; stopping a stopped container succeeds.
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let rec = self.container(id)?;
        if !matches!(rec.state, ContainerState::Running | ContainerState::Created) {
            return Ok(());
        }
        let this = self.clone();
        let id = rec.id.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let pod_dir = this.pod_dir(&rec.sandbox_id);
            // Through the supervisor, the container's reaper: no runtime exec, and the
            // answer comes the moment the init is reaped.
            let signal_and_wait = |signal: i32, wait: Duration| -> Option<bool> {
                let mut c = Client::connect(sup::socket_path(&pod_dir))
                    .ok()?
                    .with_timeout(wait + Duration::from_secs(5));
                let id = rec.id.clone();
                match c
                    .call(&Request::Kill {
                        id: id.clone(),
                        signal,
                    })
                    .ok()?
                {
                    Response::Ok => {}
                    _ => return None,
                }
                let timeout_ms = wait.as_millis() as u64;
                match c.call(&Request::Wait { id, timeout_ms }).ok()? {
                    Response::Waited { exited } => Some(exited),
                    _ => None,
                }
            };
            let exited = |this: &Runtime| {
                sup::read_exit_record(&this.pod_dir(&rec.sandbox_id), &rec.id)
                    .ok()
                    .flatten()
                    .is_some()
            };
            // Without a supervisor (it died): the OCI runtime signals, the exit record tells.
            let fallback = |signal: &str, d: Duration| {
                let _ = oci(&rec.runtime, &rec.runtime_root, &["kill", &rec.id, signal]);
                let deadline = Instant::now() + d;
                while Instant::now() < deadline {
                    if exited(&this) {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                exited(&this)
            };
            if rec.state == ContainerState::Running && timeout > 0 {
                let grace = Duration::from_secs(timeout as u64);
                let done = signal_and_wait(libc::SIGTERM, grace)
                    .unwrap_or_else(|| fallback("TERM", grace));
                if done {
                    return Ok(());
                }
            }
            let grace = Duration::from_secs(10);
            let done =
                signal_and_wait(libc::SIGKILL, grace).unwrap_or_else(|| fallback("KILL", grace));
            if rec.state == ContainerState::Created && !done {
                // Never started: its init waits on the exec fifo; delete it.
                let _ = oci(
                    &rec.runtime,
                    &rec.runtime_root,
                    &["delete", "--force", &rec.id],
                );
            }
            if !done && rec.state == ContainerState::Running {
                return Err(Error::Internal(format!(
                    "container {} did not exit after SIGKILL",
                    rec.id
                )));
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let mut rec = self.container(&id)?;
        if rec.state == ContainerState::Created {
            // Killed before it ever ran.
            rec.state = ContainerState::Exited;
            rec.exit_code = 137;
            rec.finished_at = now_nanos();
            rec.reason = "Error".into();
            self.cstore.save(&rec.id, &rec)?;
            self.containers.lock().unwrap().insert(rec.id.clone(), rec);
        }
        Ok(())
    }

    /// Removing a container that does not exist succeeds.
    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let id = match self.resolve_container(id) {
            Ok(id) => id,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(&id, 0).await?;
        let rec = self.container(&id)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.cleanup_blocking(&rec))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        self.cstore.remove(&id)?;
        self.containers.lock().unwrap().remove(&id);
        Ok(())
    }

    /// Runs `cmd` in the container and returns (stdout, stderr, exit code); a command still
    /// running after `timeout` seconds (0: no limit) is killed.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        let rec = self.exec_target(id, &cmd)?;
        let mut c = tokio::process::Command::from(vaina_pod::oci::command(&rec.runtime));
        c.arg("--root")
            .arg(&rec.runtime_root)
            .arg("exec")
            .arg(&rec.id)
            .args(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = c
            .spawn()
            .map_err(|e| Error::failed(format!("run {}", rec.runtime.display()), e))?;
        let out = if timeout > 0 {
            match tokio::time::timeout(
                Duration::from_secs(timeout as u64),
                child.wait_with_output(),
            )
            .await
            {
                Ok(o) => o,
                Err(_) => {
                    return Err(Error::Internal(format!(
                        "command {cmd:?} timed out after {timeout}s"
                    )));
                }
            }
        } else {
            child.wait_with_output().await
        }
        .map_err(|e| Error::failed("exec", e))?;
        use std::os::unix::process::ExitStatusExt;
        let code = out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        Ok((out.stdout, out.stderr, code))
    }

    /// The record of a running container to exec `cmd` in (which must not be empty).
    pub(crate) fn exec_target(&self, id: &str, cmd: &[String]) -> Result<ContainerRecord> {
        let rec = self.running_container(id)?;
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        Ok(rec)
    }

    /// The record of container `id`, which must be running.
    pub(crate) fn running_container(&self, id: &str) -> Result<ContainerRecord> {
        let rec = self.container(id)?;
        if rec.state != ContainerState::Running {
            return Err(Error::InvalidArgument(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(rec)
    }

    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        let mut c = Client::connect(sup::socket_path(&self.pod_dir(&rec.sandbox_id)))
            .map_err(|e| Error::failed("connect to the pod supervisor", e))?;
        match c.call(&Request::ReopenLog { id: rec.id.clone() }) {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error { message, .. }) => Err(Error::Internal(message)),
            Ok(other) => Err(Error::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => Err(Error::failed("reopen log", e)),
        }
    }

    /// Containers (any state) created from image `image_id`: such an image must not be
    /// removed, its layers are their overlay lower layers.
    pub fn containers_using_image(&self, image_id: &str) -> Vec<String> {
        self.containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.image_id == image_id)
            .map(|c| c.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2026-11-26T12:00:00.5Z"),
            Some(1_795_694_400_500_000_000)
        );
        assert_eq!(parse_rfc3339_utc("garbage"), None);
    }
}
