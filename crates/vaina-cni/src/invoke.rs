//! Running a plugin executable, for the runtime and for plugins that
//! delegate (bridge → IPAM), like the reference `pkg/invoke`.
//!
//! Blocking: each call forks a process and waits for it. An async caller
//! runs these on a blocking thread.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::CniError;
use crate::result::{CniResult, ResultError};
use crate::skel::{self, CmdArgs, Command};
use crate::version::{self, VersionInfo};

/// The `CNI_*` variables of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    /// Passed on as `CNI_PATH`, for the plugin's own delegation.
    pub path: Vec<PathBuf>,
}

impl InvokeArgs {
    /// Variables for a command that concerns no attachment (GC, STATUS,
    /// VERSION).
    pub fn new(command: Command, path: Vec<PathBuf>) -> Self {
        Self {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: Vec::new(),
            path,
        }
    }

    /// The delegating plugin's own invocation, with `command` in its place.
    pub fn from_cmd_args(args: &CmdArgs, command: Command) -> Self {
        Self {
            command,
            container_id: args.container_id.clone(),
            netns: args.netns.clone(),
            ifname: args.ifname.clone(),
            args: args.args.clone(),
            path: args.path.clone(),
        }
    }

    /// Every variable is set, empty when absent, so none leaks in from the
    /// caller's own environment (a delegating plugin has all of them).
    fn env(&self) -> [(&'static str, String); 6] {
        let path = self
            .path
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":");
        [
            ("CNI_COMMAND", self.command.as_str().to_owned()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            (
                "CNI_NETNS",
                self.netns
                    .as_deref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", skel::format_cni_args(&self.args)),
            ("CNI_PATH", path),
        ]
    }
}

/// A plugin that could not be found, run, or understood, or that failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("invalid plugin name \"{0}\"")]
    InvalidName(String),
    #[error("failed to find plugin \"{plugin}\" in path {dirs:?}")]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("failed to run plugin {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("plugin \"{plugin}\" did not finish within {timeout:?} and was killed")]
    Timeout { plugin: String, timeout: Duration },
    /// The plugin failed and said why: the error is its own.
    #[error("plugin \"{plugin}\" failed")]
    Plugin {
        plugin: String,
        #[source]
        source: CniError,
    },
    #[error(
        "plugin \"{plugin}\" {status} without an error object; stdout: {stdout:?}; stderr: {stderr:?}"
    )]
    BadOutput {
        plugin: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("plugin \"{plugin}\" returned an unreadable result")]
    BadResult {
        plugin: String,
        #[source]
        source: ResultError,
    },
    #[error("plugin \"{plugin}\" returned unreadable version info")]
    BadVersionInfo {
        plugin: String,
        #[source]
        source: serde_json::Error,
    },
}

impl InvokeError {
    /// The plugin's own error object, when it printed one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            Self::Plugin { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a delegating plugin prints: the delegate's own error unchanged
/// (as the reference does), anything else wrapped with its chain as details.
impl From<InvokeError> for CniError {
    fn from(e: InvokeError) -> Self {
        let code = match &e {
            InvokeError::Plugin { source, .. } => return source.clone(),
            InvokeError::InvalidName(_) | InvokeError::NotFound { .. } => CniError::NOT_AVAILABLE,
            InvokeError::Spawn { .. } | InvokeError::Timeout { .. } => CniError::IO_FAILURE,
            InvokeError::BadOutput { .. }
            | InvokeError::BadResult { .. }
            | InvokeError::BadVersionInfo { .. } => CniError::DECODE_FAILURE,
        };
        CniError::from_error(code, &e)
    }
}

/// The first regular file named `plugin` in `dirs`.
pub fn find_in_path(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, InvokeError> {
    // A type like "../../bin/sh" must not escape the plugin directories.
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(InvokeError::InvalidName(plugin.to_owned()));
    }
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file()))
        .ok_or_else(|| InvokeError::NotFound {
            plugin: plugin.to_owned(),
            dirs: dirs.to_vec(),
        })
}

/// Runs the plugin at `path` with `stdin` and returns its stdout if it
/// exited 0. On failure, the error object it printed, or its raw output.
///
/// With a `timeout`, the plugin is killed (SIGKILL) when it expires; a
/// grandchild that still holds its pipes is left behind, unread.
pub fn exec_plugin(
    path: &Path,
    stdin: &[u8],
    args: &InvokeArgs,
    timeout: Option<Duration>,
) -> Result<Vec<u8>, InvokeError> {
    let plugin = plugin_name(path);
    let (status, stdout, stderr) = run_child(path, stdin, args, timeout)?;
    if !stderr.is_empty() {
        tracing::debug!(
            plugin,
            command = %args.command,
            stderr = %String::from_utf8_lossy(&stderr).trim_end(),
            "plugin stderr"
        );
    }
    if status.success() {
        return Ok(stdout);
    }
    match serde_json::from_slice::<CniError>(&stdout) {
        Ok(source) => Err(InvokeError::Plugin { plugin, source }),
        Err(_) => Err(InvokeError::BadOutput {
            plugin,
            status,
            stdout: String::from_utf8_lossy(&stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        }),
    }
}

/// [`exec_plugin`] for ADD: the result, read as the config's version when
/// the plugin left out `cniVersion` (as libcni's fixup does).
pub fn exec_with_result(
    path: &Path,
    stdin: &[u8],
    args: &InvokeArgs,
    timeout: Option<Duration>,
) -> Result<CniResult, InvokeError> {
    let stdout = exec_plugin(path, stdin, args, timeout)?;
    let bad = |source| InvokeError::BadResult {
        plugin: plugin_name(path),
        source,
    };
    let value: Value = serde_json::from_slice(&stdout).map_err(|e| bad(ResultError::Decode(e)))?;
    let conf_version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|c| c.get("cniVersion")?.as_str().map(str::to_owned));
    match conf_version {
        Some(v) => CniResult::from_value_or(value, &v),
        None => CniResult::from_value(value),
    }
    .map_err(bad)
}

/// [`exec_plugin`] for commands without a result; stdout is ignored.
pub fn exec_without_result(
    path: &Path,
    stdin: &[u8],
    args: &InvokeArgs,
    timeout: Option<Duration>,
) -> Result<(), InvokeError> {
    exec_plugin(path, stdin, args, timeout).map(drop)
}

/// Asks the plugin at `path` which spec versions it supports.
pub fn get_version_info(
    path: &Path,
    timeout: Option<Duration>,
) -> Result<VersionInfo, InvokeError> {
    let stdin = serde_json::json!({ "cniVersion": version::SPEC_VERSION }).to_string();
    let args = InvokeArgs::new(Command::Version, Vec::new());
    let stdout = exec_plugin(path, stdin.as_bytes(), &args, timeout)?;
    serde_json::from_slice(&stdout).map_err(|source| InvokeError::BadVersionInfo {
        plugin: plugin_name(path),
        source,
    })
}

/// Runs `plugin_type` (found in `CNI_PATH`) with ADD, the caller's own
/// stdin and `CNI_*` environment, as the spec has a plugin call its IPAM
/// plugin. The delegate's error object comes back unchanged.
pub fn delegate_add(plugin_type: &str, args: &CmdArgs) -> Result<CniResult, CniError> {
    let path = find_in_path(plugin_type, &args.path)?;
    let env = InvokeArgs::from_cmd_args(args, Command::Add);
    Ok(exec_with_result(&path, &args.stdin, &env, None)?)
}

/// Like [`delegate_add`] with DEL, whatever the caller's command was (the
/// bridge releases its IPAM address when its own ADD fails).
pub fn delegate_del(plugin_type: &str, args: &CmdArgs) -> Result<(), CniError> {
    delegate(plugin_type, args, Command::Del)
}

/// Like [`delegate_add`] with CHECK.
pub fn delegate_check(plugin_type: &str, args: &CmdArgs) -> Result<(), CniError> {
    delegate(plugin_type, args, Command::Check)
}

/// Like [`delegate_add`] with GC (the stdin carries the valid attachments).
pub fn delegate_gc(plugin_type: &str, args: &CmdArgs) -> Result<(), CniError> {
    delegate(plugin_type, args, Command::Gc)
}

/// Like [`delegate_add`] with STATUS.
pub fn delegate_status(plugin_type: &str, args: &CmdArgs) -> Result<(), CniError> {
    delegate(plugin_type, args, Command::Status)
}

fn delegate(plugin_type: &str, args: &CmdArgs, command: Command) -> Result<(), CniError> {
    let path = find_in_path(plugin_type, &args.path)?;
    let env = InvokeArgs::from_cmd_args(args, command);
    Ok(exec_without_result(&path, &args.stdin, &env, None)?)
}

fn plugin_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Spawns the plugin, feeds stdin and drains stdout/stderr on their own
/// threads (a plugin writing a large result before reading all of stdin
/// must not deadlock), then waits up to `timeout`.
fn run_child(
    path: &Path,
    stdin: &[u8],
    args: &InvokeArgs,
    timeout: Option<Duration>,
) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), InvokeError> {
    let spawn_err = |source| InvokeError::Spawn {
        path: path.to_owned(),
        source,
    };
    let mut child = spawn(path, args).map_err(spawn_err)?;

    let mut pipe_in = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    // A plugin may exit without reading stdin (VERSION); its closed pipe is
    // not our error.
    let writer = thread::spawn(move || match pipe_in.write_all(&input) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));

    let status = match timeout {
        None => child.wait(),
        Some(timeout) => match wait_until(&mut child, Instant::now() + timeout) {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                // Already-exited races are fine: kill then reap either way.
                let _ = child.kill();
                let _ = child.wait();
                return Err(InvokeError::Timeout {
                    plugin: plugin_name(path),
                    timeout,
                });
            }
            Err(e) => Err(e),
        },
    }
    .map_err(spawn_err)?;

    let joined = |h: thread::JoinHandle<io::Result<Vec<u8>>>| {
        h.join()
            .unwrap_or_else(|_| Err(io::Error::other("pipe reader panicked")))
    };
    let stdout = joined(stdout).map_err(spawn_err)?;
    let stderr = joined(stderr).map_err(spawn_err)?;
    writer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked")))
        .map_err(spawn_err)?;
    Ok((status, stdout, stderr))
}

/// Spawns with the caller's environment plus the CNI variables. Retries
/// ETXTBSY: a plugin binary just written (tests, a package upgrade) can
/// still be open for writing in a process forked concurrently; the
/// reference retries the same way.
fn spawn(path: &Path, args: &InvokeArgs) -> io::Result<Child> {
    const ETXTBSY: i32 = 26;
    let mut delay = Duration::from_millis(20);
    let mut attempts = 0;
    loop {
        let result = std::process::Command::new(path)
            .envs(args.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match result {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 6 => {
                attempts += 1;
                thread::sleep(delay);
                delay *= 2;
            }
            other => return other,
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<io::Result<Vec<u8>>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        pipe.read_to_end(&mut buf).map(|_| buf)
    })
}

/// Polls for exit until `deadline`; None when it passed first.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::NetworkConfig;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// Writes an executable shell script `name` into `dir`.
    pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn add_args() -> InvokeArgs {
        InvokeArgs {
            command: Command::Add,
            container_id: "ctr1".into(),
            netns: Some("/var/run/netns/ctr1".into()),
            ifname: "eth0".into(),
            args: vec![
                ("K8S_POD_NAME".into(), "web".into()),
                ("A".into(), "b".into()),
            ],
            path: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        }
    }

    #[test]
    fn find_in_path_order_and_errors() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = vec![a.path().to_owned(), b.path().to_owned()];
        let in_b = script(b.path(), "bridge", "exit 0");
        assert_eq!(find_in_path("bridge", &dirs).unwrap(), in_b);
        let in_a = script(a.path(), "bridge", "exit 0");
        assert_eq!(find_in_path("bridge", &dirs).unwrap(), in_a);
        fs::create_dir(a.path().join("dir-plugin")).unwrap();
        let err = find_in_path("dir-plugin", &dirs[..1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to find plugin \"dir-plugin\" in path [{:?}]",
                a.path()
            )
        );
        assert_eq!(CniError::from(err).code, CniError::NOT_AVAILABLE);
        for bad in ["", "..", "../bridge", "/bin/sh"] {
            assert!(
                matches!(find_in_path(bad, &dirs), Err(InvokeError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn passes_env_and_stdin_and_reads_result() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        let plugin = script(
            dir.path(),
            "fake",
            &format!(
                r#"cat > {out}.stdin
env | grep '^CNI_' | sort > {out}.env
echo "$PATH" > {out}.keep
printf '%s' '{{"ips":[{{"version":"4","address":"10.0.0.2/24"}}]}}'"#,
                out = out.display()
            ),
        );
        let stdin = br#"{"cniVersion":"0.4.0","name":"n","type":"fake"}"#;
        let result = exec_with_result(&plugin, stdin, &add_args(), None).unwrap();
        // The result had no cniVersion: read as the config's.
        assert_eq!(result.cni_version, "0.4.0");
        assert_eq!(result.ips[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(
            fs::read_to_string(out.with_extension("stdin")).unwrap(),
            r#"{"cniVersion":"0.4.0","name":"n","type":"fake"}"#
        );
        assert_eq!(
            fs::read_to_string(out.with_extension("env")).unwrap(),
            "CNI_ARGS=K8S_POD_NAME=web;A=b\nCNI_COMMAND=ADD\nCNI_CONTAINERID=ctr1\n\
             CNI_IFNAME=eth0\nCNI_NETNS=/var/run/netns/ctr1\nCNI_PATH=/opt/cni/bin:/usr/lib/cni\n"
        );
        // The caller's own environment is kept.
        assert_eq!(
            fs::read_to_string(out.with_extension("keep"))
                .unwrap()
                .trim_end(),
            std::env::var("PATH").unwrap()
        );
    }

    #[test]
    fn plugin_error_object_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "failing",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":7,"msg":"bad subnet","details":"10.0.0.0/33"}'; exit 1"#,
        );
        let err = exec_plugin(&plugin, b"{}", &add_args(), None).unwrap_err();
        assert_eq!(err.to_string(), "plugin \"failing\" failed");
        let cni = err.cni_error().unwrap();
        assert_eq!((cni.code, cni.msg.as_str()), (7, "bad subnet"));
        assert_eq!(CniError::from(err).details, "10.0.0.0/33");
    }

    #[test]
    fn unparsable_failure_keeps_output() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "crashy",
            "echo 'panic: oops'; echo 'goroutine 1' >&2; exit 2",
        );
        let err = exec_plugin(&plugin, b"{}", &add_args(), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"crashy\""), "{msg}");
        assert!(msg.contains("panic: oops"), "{msg}");
        assert!(msg.contains("goroutine 1"), "{msg}");
        assert!(msg.contains("exit status: 2"), "{msg}");
        assert_eq!(CniError::from(err).code, CniError::DECODE_FAILURE);
    }

    #[test]
    fn bad_result_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "liar", "echo 'not json'");
        let err = exec_with_result(&plugin, b"{}", &add_args(), None).unwrap_err();
        assert!(matches!(err, InvokeError::BadResult { .. }), "{err:?}");
        // DEL ignores stdout.
        exec_without_result(&plugin, b"{}", &add_args(), None).unwrap();
    }

    #[test]
    fn timeout_kills() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "slow", "exec sleep 10");
        let start = Instant::now();
        let err = exec_plugin(
            &plugin,
            b"{}",
            &add_args(),
            Some(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(matches!(err, InvokeError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // A quick plugin is unaffected by a timeout.
        let quick = script(dir.path(), "quick", "exit 0");
        exec_plugin(&quick, b"{}", &add_args(), Some(Duration::from_secs(10))).unwrap();
    }

    #[test]
    fn large_output_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        // Writes 1 MiB before reading stdin, which is also large.
        let plugin = script(
            dir.path(),
            "chatty",
            "head -c 1048576 /dev/zero >&2; cat > /dev/null; echo '{}'",
        );
        let stdin = vec![b' '; 1 << 20];
        exec_plugin(&plugin, &stdin, &add_args(), Some(Duration::from_secs(30))).unwrap();
    }

    #[test]
    fn version_info() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "v",
            r#"[ "$CNI_COMMAND" = VERSION ] || exit 1
echo '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}'"#,
        );
        let info = get_version_info(&plugin, None).unwrap();
        assert!(info.supports("1.0.0"));
        assert!(!info.supports("0.3.1"));
    }

    fn cmd_args(path: Vec<PathBuf>) -> CmdArgs {
        let stdin =
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"fake-ipam"}}"#;
        CmdArgs {
            command: Command::Add,
            container_id: "ctr1".into(),
            netns: None,
            ifname: "eth0".into(),
            args: vec![],
            path,
            stdin: stdin.to_vec(),
            config: NetworkConfig::parse(stdin).unwrap(),
        }
    }

    #[test]
    fn delegation_uses_cni_path_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        script(
            dir.path(),
            "fake-ipam",
            &format!(
                r#"cat >/dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS." >> {log}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.0.0.2/24"}}]}}'
exit 0"#,
                log = log.display()
            ),
        );
        let a = cmd_args(vec!["/nonexistent".into(), dir.path().to_owned()]);
        let ipam = a.config.ipam_type().unwrap();
        let r = delegate_add(ipam, &a).unwrap();
        assert_eq!(r.ips.len(), 1);
        delegate_check(ipam, &a).unwrap();
        delegate_del(ipam, &a).unwrap();
        delegate_gc(ipam, &a).unwrap();
        delegate_status(ipam, &a).unwrap();
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            "ADD ctr1 .\nCHECK ctr1 .\nDEL ctr1 .\nGC ctr1 .\nSTATUS ctr1 .\n"
        );
        let err = delegate_add("missing-ipam", &a).unwrap_err();
        assert_eq!(err.code, CniError::NOT_AVAILABLE);
        assert!(err.msg.contains("missing-ipam"));
    }

    #[test]
    fn delegate_error_passes_through() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "full-ipam",
            r#"cat >/dev/null; echo '{"code":11,"msg":"no free addresses in 10.0.0.0/30"}'; exit 1"#,
        );
        let a = cmd_args(vec![dir.path().to_owned()]);
        let err = delegate_add("full-ipam", &a).unwrap_err();
        assert_eq!(
            err,
            CniError::try_again_later("no free addresses in 10.0.0.0/30")
        );
    }
}
