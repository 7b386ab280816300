//! Container verbs over the CRI, with crictl's arguments and output: create, run, start,
//! stop, rm, ps, inspect, exec (ExecSync only: streaming exec is issue 4) and logs, which
//! reads the CRI-format log file the runtime reports, as crictl does (the CRI has no log
//! RPC), so it works on the node the runtime runs on.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use vaina_cri::client::Cri;

use crate::containerconfig::ContainerConfig;
use crate::podconfig::PodConfig;
use crate::{Output, table};

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The pod sandbox to create the container in (id or unique id prefix).
    pod_id: String,
    /// Container config (JSON, crictl's format).
    container_config: PathBuf,
    /// The config the pod was run with (JSON, crictl's format).
    pod_config: PathBuf,
    /// Pull the image first (PullImage).
    #[arg(long)]
    with_pull: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Container config (JSON, crictl's format).
    container_config: PathBuf,
    /// Pod sandbox config (JSON, crictl's format).
    pod_config: PathBuf,
    /// Runtime handler (e.g. runc); default: the runtime's default.
    #[arg(short, long, default_value = "")]
    runtime: String,
    /// Pull the image first (PullImage).
    #[arg(long)]
    with_pull: bool,
}

#[derive(clap::Args)]
pub struct IdsArgs {
    /// Container ids (or unique id prefixes).
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    timeout: i64,
    /// Container ids (or unique id prefixes).
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Stop running containers first (otherwise removing one is an error).
    #[arg(short, long)]
    force: bool,
    /// Remove every container.
    #[arg(short, long)]
    all: bool,
    /// Container ids (or unique id prefixes).
    #[arg(required_unless_present = "all")]
    ids: Vec<String>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// All containers (default: only running ones).
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Only containers whose id starts with this.
    #[arg(long)]
    id: Option<String>,
    /// Only containers of this pod sandbox (id or id prefix).
    #[arg(short, long)]
    pod: Option<String>,
    /// Only containers whose name contains this.
    #[arg(long)]
    name: Option<String>,
    /// created, running, exited or unknown.
    #[arg(short, long)]
    state: Option<String>,
    /// key=value; repeatable.
    #[arg(long)]
    label: Vec<String>,
    /// Only the most recently created container (any state).
    #[arg(short, long)]
    latest: bool,
    /// Only the N most recently created containers (any state; 0: all).
    #[arg(short = 'n', long)]
    last: Option<usize>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Run the command with ExecSync and print its output once it ends (default: stream it).
    #[arg(short, long)]
    sync: bool,
    /// Seconds after which the runtime kills the command (0: no limit).
    #[arg(long, default_value_t = 0)]
    timeout: i64,
    /// Pass stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal (raw mode locally, resized with the window).
    #[arg(short, long)]
    tty: bool,
    /// Container id (or unique id prefix).
    id: String,
    /// The command and its arguments (after `--` when they start with `-`).
    #[arg(required = true, trailing_var_arg = true)]
    cmd: Vec<String>,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Container id (or unique id prefix).
    id: String,
    /// Only the last N lines (negative: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    tail: i64,
    /// Prefix each line with the time the runtime read it (RFC 3339, nanoseconds).
    #[arg(short, long)]
    timestamps: bool,
    /// Keep printing what the container writes until it stops running.
    #[arg(short, long)]
    follow: bool,
}

/// A gRPC status as "code: message".
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn read_container_config(path: &Path) -> Result<cri::ContainerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    ContainerConfig::parse(&text, &path.display().to_string())?.into_cri()
}

fn read_pod_config(path: &Path) -> Result<cri::PodSandboxConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    PodConfig::parse(&text, &path.display().to_string())?.into_cri()
}

/// CreateContainer (after PullImage with `with_pull`); the container's id.
async fn create_in(
    c: &mut Cri,
    pod_id: &str,
    config: cri::ContainerConfig,
    sandbox_config: cri::PodSandboxConfig,
    with_pull: bool,
) -> Result<String> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    if with_pull {
        let image = config.image.clone().unwrap_or_default();
        c.image
            .pull_image(cri::PullImageRequest {
                image: Some(image.clone()),
                auth: None,
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(status)
            .with_context(|| format!("pull image {:?}", image.image))?;
    }
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .map_err(status)
        .with_context(|| format!("create container {name:?} in pod {pod_id}"))?
        .into_inner()
        .container_id;
    Ok(id)
}

async fn start_one(c: &mut Cri, id: &str) -> Result<()> {
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .map_err(status)
        .with_context(|| format!("start container {id}"))?;
    Ok(())
}

async fn stop_one(c: &mut Cri, id: &str, timeout: i64) -> Result<()> {
    c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        })
        .await
        .map_err(status)
        .with_context(|| format!("stop container {id}"))?;
    Ok(())
}

async fn status_of(c: &mut Cri, id: &str, verbose: bool) -> Result<cri::ContainerStatusResponse> {
    let r = c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose,
        })
        .await
        .map_err(status)
        .with_context(|| format!("status of container {id}"))?
        .into_inner();
    if r.status.is_none() {
        bail!("the runtime returned no status for container {id}");
    }
    Ok(r)
}

pub async fn create(c: &mut Cri, a: CreateArgs) -> Result<()> {
    let config = read_container_config(&a.container_config)?;
    let sandbox_config = read_pod_config(&a.pod_config)?;
    let id = create_in(c, &a.pod_id, config, sandbox_config, a.with_pull).await?;
    println!("{id}");
    Ok(())
}

/// RunPodSandbox, CreateContainer, StartContainer (crictl run). Unlike crictl, a failure
/// after the pod is up removes the pod again (and the container with it): a failed `run`
/// leaves nothing behind.
pub async fn run(c: &mut Cri, a: RunArgs) -> Result<()> {
    // Both configs are read before anything is made: a typo costs no pod.
    let config = read_container_config(&a.container_config)?;
    let sandbox_config = read_pod_config(&a.pod_config)?;
    let pod_id = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: a.runtime,
        })
        .await
        .map_err(status)
        .context("run the pod sandbox")?
        .into_inner()
        .pod_sandbox_id;
    let res = async {
        let id = create_in(c, &pod_id, config, sandbox_config, a.with_pull).await?;
        start_one(c, &id).await?;
        Ok::<_, anyhow::Error>(id)
    }
    .await;
    match res {
        Ok(id) => {
            println!("{id}");
            Ok(())
        }
        Err(e) => {
            let undo = c
                .runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await;
            match undo {
                Ok(_) => Err(e),
                Err(u) => Err(e.context(format!(
                    "(removing pod {pod_id} again failed too: {})",
                    status(u)
                ))),
            }
        }
    }
}

pub async fn start(c: &mut Cri, a: IdsArgs) -> Result<()> {
    for id in &a.ids {
        start_one(c, id).await?;
        println!("{id}");
    }
    Ok(())
}

pub async fn stop(c: &mut Cri, a: StopArgs) -> Result<()> {
    for id in &a.ids {
        stop_one(c, id, a.timeout).await?;
        println!("{id}");
    }
    Ok(())
}

/// Like crictl rm: a running container is an error unless `-f`, which stops it (without
/// grace period) first; an unknown id is an error (the RPC itself would succeed).
pub async fn rm(c: &mut Cri, a: RmArgs) -> Result<()> {
    let ids = if a.all {
        list_all(c, cri::ContainerFilter::default())
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        a.ids
    };
    for id in &ids {
        let st = status_of(c, id, false).await?.status.expect("checked");
        if st.state == cri::ContainerState::ContainerRunning as i32 {
            if !a.force {
                bail!("container {id} is running, please stop it first (or use -f)");
            }
            stop_one(c, &st.id, 0).await?;
        }
        c.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: st.id.clone(),
            })
            .await
            .map_err(status)
            .with_context(|| format!("remove container {id}"))?;
        println!("{id}");
    }
    Ok(())
}

async fn list_all(c: &mut Cri, filter: cri::ContainerFilter) -> Result<Vec<cri::Container>> {
    Ok(c.runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(status)?
        .into_inner()
        .containers)
}

fn parse_state(s: &str) -> Result<cri::ContainerState> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "created" => cri::ContainerState::ContainerCreated,
        "running" => cri::ContainerState::ContainerRunning,
        "exited" => cri::ContainerState::ContainerExited,
        "unknown" => cri::ContainerState::ContainerUnknown,
        _ => bail!("invalid --state {s:?}: created, running, exited or unknown"),
    })
}

/// crictl's names: `Running` for CONTAINER_RUNNING.
fn state_name(state: i32) -> &'static str {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

/// The IMAGE column: the image as the container was created with it, an id cut to 13
/// characters as crictl does.
fn image_column(c: &cri::Container) -> String {
    let image = c.image.as_ref().map_or("", |i| i.image.as_str());
    match image.strip_prefix("sha256:") {
        Some(hex) => table::short_id(hex),
        None => image.to_string(),
    }
}

pub async fn list(c: &mut Cri, a: ListArgs) -> Result<()> {
    let last = if a.latest { Some(1) } else { a.last };
    let state = match &a.state {
        Some(s) => Some(parse_state(s)?),
        // Like crictl: only running ones, unless asked for all or the latest.
        None if !a.all && last.is_none() => Some(cri::ContainerState::ContainerRunning),
        None => None,
    };
    let mut label_selector = HashMap::new();
    for l in &a.label {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("invalid --label {l:?}: key=value"))?;
        label_selector.insert(k.to_string(), v.to_string());
    }
    let filter = cri::ContainerFilter {
        id: a.id.unwrap_or_default(),
        state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
        pod_sandbox_id: a.pod.unwrap_or_default(),
        label_selector,
    };
    let mut containers = list_all(c, filter).await?;
    if let Some(n) = &a.name {
        containers.retain(|c| {
            c.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains(n.as_str()))
        });
    }
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    if let Some(n) = last.filter(|n| *n > 0) {
        containers.truncate(n);
    }
    if a.quiet {
        for c in &containers {
            println!("{}", c.id);
        }
        return Ok(());
    }
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&cri::ListContainersResponse { containers })?
        ),
        Output::Table => {
            let rows: Vec<Vec<String>> = containers
                .iter()
                .map(|c| {
                    let m = c.metadata.clone().unwrap_or_default();
                    vec![
                        table::short_id(&c.id),
                        image_column(c),
                        table::ago(c.created_at),
                        state_name(c.state).into(),
                        m.name,
                        m.attempt.to_string(),
                        table::short_id(&c.pod_sandbox_id),
                    ]
                })
                .collect();
            table::print(
                &[
                    "CONTAINER",
                    "IMAGE",
                    "CREATED",
                    "STATE",
                    "NAME",
                    "ATTEMPT",
                    "POD ID",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// ContainerStatus with verbose info, as crictl inspect prints it: the info values that are
/// JSON are embedded as JSON.
pub async fn inspect(c: &mut Cri, a: IdsArgs) -> Result<()> {
    for id in &a.ids {
        let s = status_of(c, id, true).await?;
        let info: serde_json::Map<String, serde_json::Value> = s
            .info
            .into_iter()
            .map(|(k, v)| {
                let v = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                (k, v)
            })
            .collect();
        // A struct, not json!(): status first and its fields in the CRI's order, as crictl.
        #[derive(serde::Serialize)]
        struct Inspect {
            status: Option<cri::ContainerStatus>,
            info: serde_json::Map<String, serde_json::Value>,
        }
        let out = Inspect {
            status: s.status,
            info,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// ExecSync: the command's stdout and stderr go to ours, and its exit code becomes ours
/// (as crictl exec -s). This ends the process when the command failed.
pub async fn exec(c: &mut Cri, a: ExecArgs) -> Result<()> {
    if !a.sync {
        let code = crate::streaming::exec(c, &a.id, a.cmd, a.interactive, a.tty).await?;
        if code != 0 {
            std::process::exit(code);
        }
        return Ok(());
    }
    if a.interactive || a.tty {
        bail!("-s (ExecSync) cannot be combined with -i or -t");
    }
    let r = c
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: a.id.clone(),
            cmd: a.cmd,
            timeout: a.timeout,
        })
        .await
        .map_err(status)
        .with_context(|| format!("exec in container {}", a.id))?
        .into_inner();
    let written = io::stdout()
        .lock()
        .write_all(&r.stdout)
        .and_then(|()| io::stdout().flush())
        .and_then(|()| io::stderr().lock().write_all(&r.stderr));
    ok_unless_closed(written)?;
    if r.exit_code != 0 {
        std::process::exit(r.exit_code);
    }
    Ok(())
}

/// A reader closing our stdout early (`vaina logs ID | head`) is not an error.
fn ok_unless_closed(r: io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

pub async fn logs(c: &mut Cri, a: LogsArgs) -> Result<()> {
    let st = status_of(c, &a.id, false).await?.status.expect("checked");
    if st.log_path.is_empty() {
        bail!("container {} has no log file", a.id);
    }
    let path = PathBuf::from(&st.log_path);
    let open = |path: &Path| {
        std::fs::File::open(path)
            .with_context(|| format!("read the log of container {} at {}", a.id, path.display()))
    };
    let mut file = open(&path)?;
    let mut reader = LogReader::default();
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .with_context(|| format!("read {}", path.display()))?;
    let mut lines = reader.feed(&buf);
    if !a.follow {
        lines.extend(reader.finish());
    }
    if let Ok(n) = usize::try_from(a.tail) {
        lines.drain(..lines.len().saturating_sub(n));
    }
    ok_unless_closed(emit(&lines, a.timestamps))?;
    if !a.follow {
        return Ok(());
    }
    // Follow by polling: the file grows as the supervisor appends; ReopenContainerLog (log
    // rotation) moves it away and starts a new one at the same path.
    let mut inode = file.metadata()?.ino();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        buf.clear();
        file.read_to_end(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if !buf.is_empty() {
            ok_unless_closed(emit(&reader.feed(&buf), a.timestamps))?;
            continue;
        }
        if let Ok(m) = std::fs::metadata(&path)
            && m.ino() != inode
        {
            file = open(&path)?;
            inode = m.ino();
            continue;
        }
        let st = status_of(c, &st.id, false).await?.status.expect("checked");
        if st.state != cri::ContainerState::ContainerRunning as i32 {
            // What it wrote between the last read and its exit.
            buf.clear();
            file.read_to_end(&mut buf)?;
            let mut lines = reader.feed(&buf);
            lines.extend(reader.finish());
            return ok_unless_closed(emit(&lines, a.timestamps));
        }
    }
}

/// One line of container output, joined from its log records.
#[derive(Debug, PartialEq)]
struct LogLine {
    /// The timestamp of its first record.
    time: String,
    stderr: bool,
    msg: Vec<u8>,
    /// Ended by a newline (false: the container's last output, without one).
    full: bool,
}

/// Reads a CRI log file: records `<RFC3339Nano> <stdout|stderr> <tag> <message>\n`, where a
/// tag starting with `P` marks a partial line that the stream's next record continues (a
/// line longer than the runtime's record size, or output without a newline yet).
#[derive(Default)]
struct LogReader {
    /// Bytes after the last newline: a record still being written.
    rest: Vec<u8>,
    /// Per stream (stdout, stderr): the line so far, when it has partial records.
    partial: [Option<LogLine>; 2],
}

impl LogReader {
    /// The lines completed by `data`, the file's next bytes.
    fn feed(&mut self, data: &[u8]) -> Vec<LogLine> {
        self.rest.extend_from_slice(data);
        let rest = std::mem::take(&mut self.rest);
        let mut lines = Vec::new();
        for rec in rest.split_inclusive(|&b| b == b'\n') {
            match rec.strip_suffix(b"\n") {
                Some(rec) => lines.extend(self.record(rec)),
                None => self.rest = rec.to_vec(),
            }
        }
        lines
    }

    /// At the end of the file: a last record without its newline, then lines the container
    /// never ended.
    fn finish(&mut self) -> Vec<LogLine> {
        let rest = std::mem::take(&mut self.rest);
        let mut lines: Vec<LogLine> = self.record(&rest).into_iter().collect();
        lines.extend(self.partial.iter_mut().filter_map(Option::take));
        lines
    }

    /// A record that does not parse is skipped, as kubelet does.
    fn record(&mut self, rec: &[u8]) -> Option<LogLine> {
        let mut parts = rec.splitn(4, |&b| b == b' ');
        let (time, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let msg = parts.next().unwrap_or_default();
        let stderr = match stream {
            b"stdout" => false,
            b"stderr" => true,
            _ => return None,
        };
        let partial = tag.split(|&b| b == b':').next() == Some(b"P");
        let slot = &mut self.partial[usize::from(stderr)];
        let mut line = slot.take().unwrap_or_else(|| LogLine {
            time: String::from_utf8_lossy(time).into_owned(),
            stderr,
            msg: Vec::new(),
            full: false,
        });
        line.msg.extend_from_slice(msg);
        if partial {
            *slot = Some(line);
            return None;
        }
        line.full = true;
        Some(line)
    }
}

/// Lines from stdout to our stdout, from stderr to our stderr, in the file's order.
fn emit(lines: &[LogLine], timestamps: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    for l in lines {
        let w: &mut dyn Write = if l.stderr {
            out.flush()?;
            &mut err
        } else {
            &mut out
        };
        if timestamps {
            w.write_all(l.time.as_bytes())?;
            w.write_all(b" ")?;
        }
        w.write_all(&l.msg)?;
        if l.full {
            w.write_all(b"\n")?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, stderr: bool, msg: &str, full: bool) -> LogLine {
        LogLine {
            time: time.into(),
            stderr,
            msg: msg.as_bytes().to_vec(),
            full,
        }
    }

    #[test]
    fn log_records_join_partials_per_stream() {
        let mut r = LogReader::default();
        let lines = r.feed(
            b"2024-01-01T00:00:00.000000001Z stdout F hola\n\
              2024-01-01T00:00:00.000000002Z stdout P ad\n\
              2024-01-01T00:00:00.000000003Z stderr F oops\n\
              2024-01-01T00:00:00.000000004Z stdout P i\n\
              2024-01-01T00:00:00.000000005Z stdout F os\n\
              2024-01-01T00:00:00.000000006Z stdout F \n\
              2024-01-01T00:00:00.000000007Z stdout F with  two spaces\n",
        );
        assert_eq!(
            lines,
            [
                line("2024-01-01T00:00:00.000000001Z", false, "hola", true),
                line("2024-01-01T00:00:00.000000003Z", true, "oops", true),
                line("2024-01-01T00:00:00.000000002Z", false, "adios", true),
                line("2024-01-01T00:00:00.000000006Z", false, "", true),
                line(
                    "2024-01-01T00:00:00.000000007Z",
                    false,
                    "with  two spaces",
                    true
                ),
            ]
        );
        assert!(r.finish().is_empty());
    }

    #[test]
    fn records_split_across_reads_and_unended_output() {
        let mut r = LogReader::default();
        assert!(r.feed(b"2024-01-01T00:00:00Z std").is_empty());
        assert_eq!(
            r.feed(b"out F uno\n2024-01-01T00:00:01Z stdout P sin fin\n2024-01-01T00:00:02Z stdout F do"),
            [line("2024-01-01T00:00:00Z", false, "uno", true)]
        );
        // The last record lacks its newline; "sin fin" continues with it.
        assert_eq!(
            r.finish(),
            [line("2024-01-01T00:00:01Z", false, "sin findo", true)]
        );
        let mut r = LogReader::default();
        assert!(
            r.feed(b"2024-01-01T00:00:00Z stderr P prompt> \n")
                .is_empty()
        );
        assert_eq!(
            r.finish(),
            [line("2024-01-01T00:00:00Z", true, "prompt> ", false)]
        );
    }

    #[test]
    fn malformed_records_are_skipped() {
        let mut r = LogReader::default();
        let lines =
            r.feed(b"garbage\n2024-01-01T00:00:00Z stdin F x\n2024-01-01T00:00:00Z stdout F ok\n");
        assert_eq!(lines, [line("2024-01-01T00:00:00Z", false, "ok", true)]);
    }

    #[test]
    fn states_parse_and_print_like_crictl() {
        assert_eq!(
            parse_state("Running").unwrap(),
            cri::ContainerState::ContainerRunning
        );
        assert_eq!(
            parse_state("exited").unwrap(),
            cri::ContainerState::ContainerExited
        );
        assert!(format!("{:#}", parse_state("stopped").unwrap_err()).contains("stopped"));
        assert_eq!(
            state_name(cri::ContainerState::ContainerExited as i32),
            "Exited"
        );
        assert_eq!(state_name(42), "Unknown");
    }

    #[test]
    fn image_ids_are_cut_like_crictl() {
        let c = |image: &str| cri::Container {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(image_column(&c("busybox")), "busybox");
        assert_eq!(
            image_column(&c(&format!("sha256:{}", "ab".repeat(32)))),
            "ababababababa"
        );
    }
}
