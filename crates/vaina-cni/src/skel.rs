//! The plugin side of the protocol, like the reference `pkg/skel`: read the
//! `CNI_*` environment and stdin, check them, call the plugin, print its
//! result or error.
//!
//! [`dispatch`] is the whole protocol without the process: it takes the
//! environment as a lookup function and stdin as bytes, so tests drive it
//! without touching process state. [`run`] binds it to the real process.
//!
//! ```no_run
//! use vaina_cni::invoke::{delegate_add, delegate_del};
//! use vaina_cni::{CmdArgs, CniError, CniResult, Plugin};
//!
//! struct Bridge;
//!
//! impl Plugin for Bridge {
//!     fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
//!         let ipam = args.config.ipam_type()
//!             .ok_or_else(|| CniError::invalid_config("missing ipam.type"))?;
//!         let mut result = delegate_add(ipam, args)?;
//!         // ... create the interfaces, fill result.interfaces and the
//!         // ips' interface indexes ...
//!         result.cni_version = args.config.cni_version.clone();
//!         Ok(result)
//!     }
//!     fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
//!         if let Some(ipam) = args.config.ipam_type() {
//!             delegate_del(ipam, args)?;
//!         }
//!         Ok(())
//!     }
//!     fn check(&self, _args: &CmdArgs) -> Result<(), CniError> {
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     vaina_cni::skel::run(&Bridge, "vaina bridge plugin")
//! }
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{self, NetworkConfig};
use crate::error::CniError;
use crate::result::CniResult;
use crate::version::{self, VersionInfo};

/// A `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }

    /// The spec's spelling only (upper case), as the reference skel.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// Attachment commands carry a container and an interface; GC, STATUS
    /// and VERSION concern the whole network or plugin.
    fn needs_attachment(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invocation, as the plugin sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdArgs {
    pub command: Command,
    /// Empty for GC and STATUS.
    pub container_id: String,
    /// None on DEL when the runtime no longer has the namespace (and on GC,
    /// STATUS): clean up what can be cleaned without it.
    pub netns: Option<PathBuf>,
    /// Empty for GC and STATUS.
    pub ifname: String,
    /// `CNI_ARGS` split into pairs, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on ':', where delegated plugins are looked up.
    pub path: Vec<PathBuf>,
    /// stdin as received, for delegating to IPAM and for
    /// [`CmdArgs::parse_config`].
    pub stdin: Vec<u8>,
    /// stdin parsed and validated.
    pub config: NetworkConfig,
}

impl CmdArgs {
    /// The value of `key` in `CNI_ARGS` (first occurrence).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The plugin's own typed view of stdin; a decode error is code 6.
    pub fn parse_config<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        config::parse_typed(&self.stdin)
    }
}

/// A CNI plugin: one method per command. GC and STATUS default to success
/// for plugins that keep no state and depend on nothing.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn gc(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: u8,
}

/// Parses `CNI_ARGS` ("K=V;K2=V2"). Empty segments are skipped; a value may
/// contain '='; a segment without '=' or with an empty key is code 4.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::invalid_env(format!(
                "invalid CNI_ARGS pair \"{pair}\""
            ))),
        })
        .collect()
}

/// The inverse of [`parse_cni_args`].
pub fn format_cni_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Runs one invocation against `plugin`. `env` looks up a variable (an
/// empty value counts as unset, as in the reference); `stdin` is the whole
/// of stdin (ignored for VERSION).
pub fn dispatch<P: Plugin + ?Sized>(
    plugin: &P,
    about: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Output {
    let get = |key: &str| env(key).filter(|v| !v.is_empty());
    let Some(command) = get("CNI_COMMAND") else {
        let stderr = format!(
            "{about}\nCNI protocol versions supported: {}\n",
            version::SUPPORTED.join(", ")
        );
        return Output {
            stdout: Vec::new(),
            stderr: stderr.into_bytes(),
            exit_code: 1,
        };
    };
    let reply_version = reply_version(stdin);
    let Some(command) = Command::parse(&command) else {
        let err = CniError::invalid_env(format!("unknown CNI_COMMAND \"{command}\""));
        return failure(err, &reply_version);
    };
    if command == Command::Version {
        let info = serde_json::to_vec_pretty(&VersionInfo::current()).expect("serializes");
        return success(info);
    }
    let args = match cmd_args(command, &get, stdin) {
        Ok(args) => args,
        Err(err) => return failure(err, &reply_version),
    };
    let cni_version = args.config.cni_version.clone();
    let outcome = match command {
        Command::Add => plugin
            .add(&args)
            .and_then(|result| result.to_bytes(&cni_version).map_err(CniError::from)),
        Command::Del => plugin.del(&args).map(|()| Vec::new()),
        Command::Check => plugin.check(&args).map(|()| Vec::new()),
        Command::Gc => plugin.gc(&args).map(|()| Vec::new()),
        Command::Status => plugin.status(&args).map(|()| Vec::new()),
        Command::Version => unreachable!("answered above"),
    };
    match outcome {
        Ok(stdout) => success(stdout),
        Err(err) => failure(err, &cni_version),
    }
}

/// The plugin's `main`: `std::process::ExitCode` to return from it.
pub fn run<P: Plugin + ?Sized>(plugin: &P, about: &str) -> ExitCode {
    let env = |key: &str| std::env::var(key).ok();
    let command = env("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    // VERSION and a bare invocation from a terminal must not wait on stdin.
    if !command.is_empty() && command != Command::Version.as_str() {
        if let Err(e) = io::stdin().read_to_end(&mut stdin) {
            let err = CniError::io("failed to read stdin").with_details(e.to_string());
            let _ = io::stdout().write_all(&err.with_version(version::SPEC_VERSION).to_json());
            return ExitCode::FAILURE;
        }
    }
    let out = dispatch(plugin, about, &env, &stdin);
    // Nothing sensible is left to do if the runtime closed our pipes.
    let _ = io::stdout().write_all(&out.stdout);
    let _ = io::stderr().write_all(&out.stderr);
    ExitCode::from(out.exit_code)
}

/// Reads and checks everything the command needs, in the reference order:
/// environment, then config, then version gates.
fn cmd_args(
    command: Command,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<CmdArgs, CniError> {
    let mut required = Vec::new();
    if command.needs_attachment() {
        required.extend(["CNI_CONTAINERID", "CNI_IFNAME"]);
    }
    if matches!(command, Command::Add | Command::Check) {
        required.push("CNI_NETNS");
    }
    let missing: Vec<_> = required.into_iter().filter(|k| get(k).is_none()).collect();
    if !missing.is_empty() {
        return Err(CniError::invalid_env(format!(
            "missing required environment variables: {}",
            missing.join(", ")
        )));
    }

    let container_id = get("CNI_CONTAINERID").unwrap_or_default();
    let ifname = get("CNI_IFNAME").unwrap_or_default();
    if command.needs_attachment() {
        if !config::is_valid_identifier(&container_id) {
            return Err(CniError::invalid_env(format!(
                "invalid CNI_CONTAINERID \"{container_id}\""
            )));
        }
        if let Err(reason) = config::check_ifname(&ifname) {
            return Err(CniError::invalid_env(format!(
                "invalid CNI_IFNAME \"{ifname}\": {reason}"
            )));
        }
    }
    let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
    let path = get("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();

    let config = NetworkConfig::parse(stdin)?;
    let v = &config.cni_version;
    match command {
        Command::Check if !version::supports_check(v) => {
            return Err(CniError::incompatible_version(format!(
                "config version \"{v}\" does not allow CHECK"
            )));
        }
        Command::Gc | Command::Status if !version::supports_gc_status(v) => {
            return Err(CniError::incompatible_version(format!(
                "config version \"{v}\" does not allow {command}"
            )));
        }
        _ => {}
    }
    Ok(CmdArgs {
        command,
        container_id,
        netns: get("CNI_NETNS").map(PathBuf::from),
        ifname,
        args,
        path,
        stdin: stdin.to_vec(),
        config,
    })
}

/// The version to stamp on an error printed before the config is known to
/// be good: the config's if we support it, else ours.
fn reply_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::SPEC_VERSION.to_owned())
}

fn success(stdout: Vec<u8>) -> Output {
    Output {
        stdout,
        stderr: Vec::new(),
        exit_code: 0,
    }
}

fn failure(mut err: CniError, cni_version: &str) -> Output {
    if err.cni_version.is_empty() {
        err.cni_version = cni_version.to_owned();
    }
    Output {
        stdout: err.to_json(),
        stderr: Vec::new(),
        exit_code: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Records each call and answers ADD with one address.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<CmdArgs>>,
        fail_with: Option<CniError>,
    }

    impl Fake {
        fn record(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.calls.borrow_mut().push(a.clone());
            self.fail_with.clone().map_or(Ok(()), Err)
        }
    }

    impl Plugin for Fake {
        fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
            self.record(a)?;
            Ok(CniResult {
                ips: vec![IpConfig {
                    interface: None,
                    address: "10.1.0.5/16".parse().unwrap(),
                    gateway: None,
                }],
                ..CniResult::new()
            })
        }
        fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.record(a)
        }
        fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.record(a)
        }
        fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.record(a)
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn full_env(command: &str) -> Vec<(&str, &str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/blue"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin:/usr/libexec/cni"),
        ]
    }

    fn conf(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "net", "type": "fake", "bridge": "br0"})
            .to_string()
            .into_bytes()
    }

    fn run_fake(plugin: &Fake, env: &[(&str, &str)], stdin: &[u8]) -> (Value, u8) {
        let out = dispatch(plugin, "fake plugin", &env_of(env), stdin);
        let stdout = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap()
        };
        (stdout, out.exit_code)
    }

    #[test]
    fn cni_args_parsing() {
        assert_eq!(
            parse_cni_args("FOO=BAR;ABC=123").unwrap(),
            vec![("FOO".into(), "BAR".into()), ("ABC".into(), "123".into())]
        );
        assert_eq!(parse_cni_args("").unwrap(), vec![]);
        assert_eq!(
            parse_cni_args("A=;B=x=y;").unwrap(),
            vec![("A".into(), "".into()), ("B".into(), "x=y".into())]
        );
        for bad in ["FOO", "=BAR", "A=1;B"] {
            assert_eq!(
                parse_cni_args(bad).unwrap_err().code,
                CniError::INVALID_ENV,
                "{bad}"
            );
        }
        let pairs = parse_cni_args("A=1;B=2").unwrap();
        assert_eq!(format_cni_args(&pairs), "A=1;B=2");
    }

    #[test]
    fn add_prints_result_in_config_version() {
        let fake = Fake::default();
        let (out, code) = run_fake(&fake, &full_env("ADD"), &conf("0.4.0"));
        assert_eq!(code, 0);
        assert_eq!(
            out,
            json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.5/16"}]})
        );
        let calls = fake.calls.borrow();
        let a = &calls[0];
        assert_eq!(a.command, Command::Add);
        assert_eq!(a.container_id, "abc123");
        assert_eq!(a.netns, Some(PathBuf::from("/var/run/netns/blue")));
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(
            a.path,
            [
                PathBuf::from("/opt/cni/bin"),
                PathBuf::from("/usr/libexec/cni")
            ]
        );
        assert_eq!(a.config.extra["bridge"], "br0");
        #[derive(serde::Deserialize)]
        struct Own {
            bridge: String,
        }
        assert_eq!(a.parse_config::<Own>().unwrap().bridge, "br0");
        assert_eq!(
            a.parse_config::<Vec<u8>>().unwrap_err().code,
            CniError::DECODE_FAILURE
        );
    }

    #[test]
    fn del_check_gc_status_print_nothing() {
        for cmd in ["DEL", "CHECK", "GC", "STATUS"] {
            let fake = Fake::default();
            let (out, code) = run_fake(&fake, &full_env(cmd), &conf("1.1.0"));
            assert_eq!((out, code), (Value::Null, 0), "{cmd}");
            let expected_calls = usize::from(cmd != "STATUS");
            assert_eq!(fake.calls.borrow().len(), expected_calls, "{cmd}");
        }
    }

    #[test]
    fn del_allows_missing_netns_and_gc_needs_only_config() {
        let fake = Fake::default();
        let env: Vec<_> = full_env("DEL")
            .into_iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(run_fake(&fake, &env, &conf("1.0.0")).1, 0);
        assert_eq!(fake.calls.borrow()[0].netns, None);

        let empty_netns = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        assert_eq!(run_fake(&fake, &empty_netns, &conf("1.0.0")).1, 0);
        assert_eq!(fake.calls.borrow()[1].netns, None);

        let gc = json!({"cniVersion": "1.1.0", "name": "net", "type": "fake",
                        "cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}]});
        let (_, code) = run_fake(&fake, &[("CNI_COMMAND", "GC")], gc.to_string().as_bytes());
        assert_eq!(code, 0);
        let calls = fake.calls.borrow();
        assert_eq!(calls[2].command, Command::Gc);
        assert_eq!(calls[2].config.valid_attachments().unwrap().len(), 1);
    }

    #[test]
    fn missing_env_is_code_4_naming_the_variable() {
        let cases = [
            ("ADD", "CNI_NETNS"),
            ("ADD", "CNI_CONTAINERID"),
            ("ADD", "CNI_IFNAME"),
            ("CHECK", "CNI_NETNS"),
            ("DEL", "CNI_CONTAINERID"),
            ("DEL", "CNI_IFNAME"),
        ];
        for (cmd, var) in cases {
            let fake = Fake::default();
            let env: Vec<_> = full_env(cmd)
                .into_iter()
                .filter(|(k, _)| *k != var)
                .collect();
            let (out, code) = run_fake(&fake, &env, &conf("1.0.0"));
            assert_eq!(code, 1);
            assert_eq!(out["code"], 4, "{cmd} without {var}");
            assert!(out["msg"].as_str().unwrap().contains(var), "{out}");
            assert_eq!(out["cniVersion"], "1.0.0");
            assert!(fake.calls.borrow().is_empty());
        }
    }

    #[test]
    fn invalid_env_values() {
        let cases = [
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "way-too-long-ifname"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_ARGS", "NOEQUALS"),
        ];
        for (var, value) in cases {
            let mut env = full_env("ADD");
            env.retain(|(k, _)| *k != var);
            env.push((var, value));
            let (out, code) = run_fake(&Fake::default(), &env, &conf("1.0.0"));
            assert_eq!(
                (code, out["code"].as_u64()),
                (1, Some(4)),
                "{var}={value}: {out}"
            );
        }
    }

    #[test]
    fn bad_config() {
        // The error's version is the config's when we speak it, else ours.
        let cases: [(&[u8], u64, &str); 5] = [
            (b"{not json", 6, "1.1.0"),
            (
                br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#,
                1,
                "1.1.0",
            ),
            (br#"{"name":"n","type":"t"}"#, 1, "1.1.0"),
            (br#"{"cniVersion":"1.0.0","type":"t"}"#, 7, "1.0.0"),
            (br#"{"cniVersion":"0.3.1","name":"n"}"#, 7, "0.3.1"),
        ];
        for (stdin, want, version) in cases {
            let (out, code) = run_fake(&Fake::default(), &full_env("ADD"), stdin);
            assert_eq!((code, out["code"].as_u64()), (1, Some(want)), "{out}");
            assert_eq!(out["cniVersion"], version);
        }
    }

    #[test]
    fn version_gates() {
        let (out, code) = run_fake(&Fake::default(), &full_env("CHECK"), &conf("0.3.1"));
        assert_eq!((code, out["code"].as_u64()), (1, Some(1)), "{out}");
        assert!(out["msg"].as_str().unwrap().contains("CHECK"));
        for cmd in ["GC", "STATUS"] {
            let (out, code) = run_fake(&Fake::default(), &full_env(cmd), &conf("1.0.0"));
            assert_eq!((code, out["code"].as_u64()), (1, Some(1)), "{cmd}: {out}");
            assert_eq!(out["cniVersion"], "1.0.0");
        }
    }

    #[test]
    fn plugin_error_is_printed_with_config_version() {
        let fake = Fake {
            fail_with: Some(CniError::try_again_later("ipam busy").with_details("lock held")),
            ..Fake::default()
        };
        let (out, code) = run_fake(&fake, &full_env("ADD"), &conf("0.4.0"));
        assert_eq!(code, 1);
        assert_eq!(
            out,
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "ipam busy", "details": "lock held"})
        );
    }

    #[test]
    fn version_command_ignores_stdin() {
        let (out, code) = run_fake(&Fake::default(), &[("CNI_COMMAND", "VERSION")], b"");
        assert_eq!(code, 0);
        assert_eq!(out, serde_json::to_value(VersionInfo::current()).unwrap());
    }

    #[test]
    fn no_command_prints_about() {
        let out = dispatch(&Fake::default(), "fake plugin v1", &env_of(&[]), b"");
        assert_eq!(out.exit_code, 1);
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with("fake plugin v1\n"), "{stderr}");
        assert!(stderr.contains("1.1.0"));
    }

    #[test]
    fn unknown_command_is_code_4() {
        let (out, code) = run_fake(&Fake::default(), &[("CNI_COMMAND", "add")], &conf("1.0.0"));
        assert_eq!((code, out["code"].as_u64()), (1, Some(4)));
        assert!(out["msg"].as_str().unwrap().contains("\"add\""));
    }
}
