//! The runtime side, like libcni: run a network's plugin chain for one
//! attachment, and keep each attachment's ADD result in a cache that
//! libcni can read too.
//!
//! Blocking: plugins are processes and these calls wait for them; an async
//! daemon calls them from a blocking thread. Concurrent calls for the same
//! attachment are the caller's to prevent, as the spec requires of runtimes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::cache::{self, CachedInfo};
pub use crate::config::Attachment;
use crate::config::{self, NetworkConfigList, PluginConfig};
use crate::error::CniError;
use crate::invoke::{self, InvokeArgs, InvokeError};
use crate::result::{CniResult, ResultError};
use crate::skel::Command;
use crate::version::{self, VersionInfo};

/// Where plugins and the cache live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// Searched in order for a plugin's `type`; also passed as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// libcni's default is /var/lib/cni; results go in `results/` below it.
    pub cache_dir: PathBuf,
}

/// One attachment's parameters, the same for every plugin of the chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// The sandbox's netns path. May be empty on DEL only, when the
    /// namespace is already gone.
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, …); each plugin
    /// gets in `runtimeConfig` only those it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

/// An attachment found in the cache, with what is needed to DEL it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// Empty if the runtime that added it did not record one.
    pub netns: PathBuf,
    pub args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
    /// The config list bytes used for the ADD.
    pub config: Vec<u8>,
}

impl CachedAttachment {
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// The parameters the ADD ran with, for a DEL.
    pub fn runtime_conf(&self) -> RuntimeConf {
        RuntimeConf {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            args: self.args.clone(),
            capability_args: self.capability_args.clone(),
        }
    }
}

/// A network operation that failed; each names the network, and the plugin
/// when one failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("network \"{network}\": invalid {field} \"{value}\": {reason}")]
    InvalidRuntimeConf {
        network: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("network \"{network}\": invalid config list: {reason}")]
    InvalidList { network: String, reason: String },
    #[error("network \"{network}\": plugin \"{plugin}\" failed ({command})")]
    Plugin {
        network: String,
        plugin: String,
        command: Command,
        /// Boxed: the plugin's output can be large, and this error is
        /// returned through every layer.
        #[source]
        source: Box<InvokeError>,
    },
    #[error("failed to get version info of plugin \"{plugin}\"")]
    Version {
        plugin: String,
        #[source]
        source: Box<InvokeError>,
    },
    #[error("network \"{network}\": cache file {} is unusable", path.display())]
    Cache {
        network: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network \"{network}\": cached result in {} is unusable", path.display())]
    CachedResult {
        network: String,
        path: PathBuf,
        #[source]
        source: ResultError,
    },
    /// GC keeps going after a failure; every failure is here.
    #[error("network \"{network}\": GC failed: {}", join_chains(errors))]
    Gc {
        network: String,
        errors: Vec<RuntimeError>,
    },
}

impl RuntimeError {
    /// The plugin's own error object, when a plugin failed with one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            Self::Plugin { source, .. } | Self::Version { source, .. } => source.cni_error(),
            _ => None,
        }
    }
}

fn join_chains(errors: &[RuntimeError]) -> String {
    let chain = |e: &RuntimeError| {
        let mut parts = vec![e.to_string()];
        let mut next = std::error::Error::source(e);
        while let Some(s) = next {
            parts.push(s.to_string());
            next = s.source();
        }
        parts.join(": ")
    };
    errors.iter().map(chain).collect::<Vec<_>>().join("; ")
}

impl RuntimeConf {
    /// An attachment without `CNI_ARGS` or capability arguments.
    pub fn new(
        container_id: impl Into<String>,
        netns: impl Into<PathBuf>,
        ifname: impl Into<String>,
    ) -> Self {
        Self {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Self::default()
        }
    }
}

impl CniConfig {
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dirs,
            cache_dir: cache_dir.into(),
        }
    }

    /// ADD: runs the plugins in order, each getting the previous one's
    /// result as `prevResult`, then caches the last result. On a failure
    /// nothing is undone: the caller decides whether to DEL (the spec's
    /// advice is to DEL the whole list), as with libcni.
    pub fn add_network_list(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, RuntimeError> {
        check_list(list)?;
        check_attachment(list, rt, true)?;
        let mut prev: Option<CniResult> = None;
        for plugin in &list.plugins {
            let prev_json = prev
                .as_ref()
                .map(|r| to_list_version(list, r))
                .transpose()?;
            let stdin = plugin_stdin(list, plugin, prev_json, Some(rt), &[]);
            let path = self.find(list, plugin, Command::Add)?;
            let args = self.attachment_args(Command::Add, rt);
            let result = invoke::exec_with_result(&path, &stdin, &args, None)
                .map_err(|source| plugin_error(list, plugin, Command::Add, source))?;
            prev = Some(result);
        }
        let result = prev.expect("check_list: at least one plugin");
        let path = cache::file_path(&self.cache_dir, &list.name, &rt.container_id, &rt.ifname);
        let info = CachedInfo {
            kind: cache::KIND_V1.to_owned(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            if_name: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.to_string_lossy().into_owned(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            result: Some(to_list_version(list, &result)?),
        };
        cache::write(&path, &info).map_err(|source| cache_error(list, &path, source))?;
        Ok(result)
    }

    /// DEL: runs the plugins in reverse order with the cached result as
    /// `prevResult` (0.4.0 and later), then drops the cache entry. A missing
    /// or unreadable cache entry is no error: DEL proceeds without
    /// `prevResult`. On a plugin failure the entry is kept for the retry.
    pub fn del_network_list(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<(), RuntimeError> {
        check_list(list)?;
        check_attachment(list, rt, false)?;
        let path = cache::file_path(&self.cache_dir, &list.name, &rt.container_id, &rt.ifname);
        let prev = if version::supports_check(&list.cni_version) {
            match self.get_cached_result(&list.name, rt) {
                Ok(cached) => cached.map(|r| to_list_version(list, &r)).transpose()?,
                Err(e) => {
                    // As libcni: a corrupt entry must not block teardown.
                    tracing::warn!(network = list.name, error = %e, "ignoring unusable cached result on DEL");
                    None
                }
            }
        } else {
            None
        };
        for plugin in list.plugins.iter().rev() {
            let stdin = plugin_stdin(list, plugin, prev.clone(), Some(rt), &[]);
            let path = self.find(list, plugin, Command::Del)?;
            let args = self.attachment_args(Command::Del, rt);
            invoke::exec_without_result(&path, &stdin, &args, None)
                .map_err(|source| plugin_error(list, plugin, Command::Del, source))?;
        }
        cache::remove(&path).map_err(|source| cache_error(list, &path, source))
    }

    /// CHECK: runs the plugins in order, each with the cached ADD result as
    /// `prevResult`; stops at the first failure. Does nothing when the list
    /// sets `disableCheck` or predates 0.4.0 (libcni errors there; a
    /// periodic checker is better served by a no-op).
    pub fn check_network_list(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<(), RuntimeError> {
        if list.disable_check || !version::supports_check(&list.cni_version) {
            return Ok(());
        }
        check_list(list)?;
        check_attachment(list, rt, true)?;
        let prev = self
            .get_cached_result(&list.name, rt)?
            .map(|r| to_list_version(list, &r))
            .transpose()?;
        for plugin in &list.plugins {
            let stdin = plugin_stdin(list, plugin, prev.clone(), Some(rt), &[]);
            let path = self.find(list, plugin, Command::Check)?;
            let args = self.attachment_args(Command::Check, rt);
            invoke::exec_without_result(&path, &stdin, &args, None)
                .map_err(|source| plugin_error(list, plugin, Command::Check, source))?;
        }
        Ok(())
    }

    /// GC, as libcni: first DEL every cached attachment of this network that
    /// is not in `valid` (so plugins without GC are cleaned too), then, for
    /// 1.1.0 lists, send GC with `valid` to every plugin. Keeps going after
    /// failures and reports them all. Does nothing if the list sets
    /// `disableGC`.
    pub fn gc_network_list(
        &self,
        list: &NetworkConfigList,
        valid: &[Attachment],
    ) -> Result<(), RuntimeError> {
        if list.disable_gc {
            return Ok(());
        }
        check_list(list)?;
        let keep: HashSet<&Attachment> = valid.iter().collect();
        let mut errors = Vec::new();
        match self.list_cached_attachments(&list.name) {
            Ok(cached) => {
                for stale in cached.iter().filter(|c| !keep.contains(&c.attachment())) {
                    if let Err(e) = self.del_network_list(list, &stale.runtime_conf()) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if version::supports_gc_status(&list.cni_version) {
            let valid = serde_json::to_value(valid).expect("attachments serialize");
            let extra = [
                (config::VALID_ATTACHMENTS_KEY, valid.clone()),
                (config::LEGACY_ATTACHMENTS_KEY, valid),
            ];
            for plugin in &list.plugins {
                let stdin = plugin_stdin(list, plugin, None, None, &extra);
                if let Err(e) = self.run_network_command(list, plugin, Command::Gc, &stdin) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Gc {
                network: list.name.clone(),
                errors,
            })
        }
    }

    /// STATUS: asks each plugin in order whether it can take ADDs; the first
    /// failure is returned (its code, 50 or 51, tells which). Lists before
    /// 1.1.0 have no STATUS and are reported ready, as libcni does.
    pub fn status_network_list(&self, list: &NetworkConfigList) -> Result<(), RuntimeError> {
        if !version::supports_gc_status(&list.cni_version) {
            return Ok(());
        }
        check_list(list)?;
        for plugin in &list.plugins {
            let stdin = plugin_stdin(list, plugin, None, None, &[]);
            self.run_network_command(list, plugin, Command::Status, &stdin)?;
        }
        Ok(())
    }

    /// VERSION of the plugin named `plugin_type`.
    pub fn get_version_info(&self, plugin_type: &str) -> Result<VersionInfo, RuntimeError> {
        let err = |source| RuntimeError::Version {
            plugin: plugin_type.to_owned(),
            source: Box::new(source),
        };
        let path = invoke::find_in_path(plugin_type, &self.bin_dirs).map_err(err)?;
        invoke::get_version_info(&path, None).map_err(err)
    }

    /// The cached ADD result of an attachment to network `network`; None if
    /// there is none. Reads libcni's v1 entries and its older bare-result
    /// files.
    pub fn get_cached_result(
        &self,
        network: &str,
        rt: &RuntimeConf,
    ) -> Result<Option<CniResult>, RuntimeError> {
        let path = cache::file_path(&self.cache_dir, network, &rt.container_id, &rt.ifname);
        let cache_err = |source| RuntimeError::Cache {
            network: network.to_owned(),
            path: path.clone(),
            source,
        };
        let Some(bytes) = cache::read(&path).map_err(cache_err)? else {
            return Ok(None);
        };
        let result_err = |source| RuntimeError::CachedResult {
            network: network.to_owned(),
            path: path.clone(),
            source,
        };
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| result_err(ResultError::Decode(e)))?;
        let raw = match serde_json::from_value::<CachedInfo>(value.clone()) {
            Ok(info) if info.kind == cache::KIND_V1 => match info.result {
                Some(result) => result,
                None => return Ok(None),
            },
            // Before cniCacheV1 the file was the result itself.
            _ => value,
        };
        CniResult::from_value(raw).map(Some).map_err(result_err)
    }

    /// Every attachment of network `network` in the cache, sorted by cache
    /// file name.
    pub fn list_cached_attachments(
        &self,
        network: &str,
    ) -> Result<Vec<CachedAttachment>, RuntimeError> {
        let infos =
            cache::list(&self.cache_dir, network).map_err(|source| RuntimeError::Cache {
                network: network.to_owned(),
                path: cache::results_dir(&self.cache_dir),
                source,
            })?;
        Ok(infos
            .into_iter()
            .map(|info| CachedAttachment {
                network: info.network_name,
                container_id: info.container_id,
                ifname: info.if_name,
                netns: PathBuf::from(info.netns),
                args: info.cni_args,
                capability_args: info.capability_args,
                config: info.config,
            })
            .collect())
    }

    fn find(
        &self,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        command: Command,
    ) -> Result<PathBuf, RuntimeError> {
        invoke::find_in_path(&plugin.plugin_type, &self.bin_dirs)
            .map_err(|source| plugin_error(list, plugin, command, source))
    }

    fn attachment_args(&self, command: Command, rt: &RuntimeConf) -> InvokeArgs {
        InvokeArgs {
            command,
            container_id: rt.container_id.clone(),
            netns: Some(rt.netns.clone()).filter(|p| !p.as_os_str().is_empty()),
            ifname: rt.ifname.clone(),
            args: rt.args.clone(),
            path: self.bin_dirs.clone(),
        }
    }

    /// GC and STATUS: no attachment, only `CNI_COMMAND` and `CNI_PATH`.
    fn run_network_command(
        &self,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        command: Command,
        stdin: &[u8],
    ) -> Result<(), RuntimeError> {
        let path = self.find(list, plugin, command)?;
        let args = InvokeArgs::new(command, self.bin_dirs.clone());
        invoke::exec_without_result(&path, stdin, &args, None)
            .map_err(|source| plugin_error(list, plugin, command, source))
    }
}

/// One plugin's stdin: its object from the list with the list's `name` and
/// `cniVersion`, then `prevResult`, the capability arguments it declared as
/// `runtimeConfig`, and any `extra` keys (GC attachments).
fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev_result: Option<Value>,
    rt: Option<&RuntimeConf>,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::from(list.name.as_str()));
    conf.insert("cniVersion".into(), Value::from(list.cni_version.as_str()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev);
    }
    if let Some(rt) = rt {
        let runtime_config: Map<String, Value> = rt
            .capability_args
            .iter()
            .filter(|(key, _)| plugin.has_capability(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    for (key, value) in extra {
        conf.insert((*key).to_owned(), value.clone());
    }
    serde_json::to_vec(&conf).expect("JSON map serializes")
}

fn to_list_version(list: &NetworkConfigList, result: &CniResult) -> Result<Value, RuntimeError> {
    result
        .to_json(&list.cni_version)
        .map_err(|e| RuntimeError::InvalidList {
            network: list.name.clone(),
            reason: e.to_string(),
        })
}

/// The list's fields are public, so a hand-built list is checked here too.
fn check_list(list: &NetworkConfigList) -> Result<(), RuntimeError> {
    let invalid = |reason: String| RuntimeError::InvalidList {
        network: list.name.clone(),
        reason,
    };
    if !config::is_valid_identifier(&list.name) {
        return Err(invalid("invalid network name".into()));
    }
    if !version::is_supported(&list.cni_version) {
        return Err(invalid(format!(
            "unsupported CNI version \"{}\"",
            list.cni_version
        )));
    }
    if list.plugins.is_empty() {
        return Err(invalid("no plugins".into()));
    }
    Ok(())
}

/// Container ID and interface name end up in the cache file name, so they
/// are checked on every command, not only ADD.
fn check_attachment(
    list: &NetworkConfigList,
    rt: &RuntimeConf,
    needs_netns: bool,
) -> Result<(), RuntimeError> {
    let invalid = |field, value: &str, reason: &str| RuntimeError::InvalidRuntimeConf {
        network: list.name.clone(),
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if !config::is_valid_identifier(&rt.container_id) {
        return Err(invalid(
            "container ID",
            &rt.container_id,
            "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
        ));
    }
    if let Err(reason) = config::check_ifname(&rt.ifname) {
        return Err(invalid("interface name", &rt.ifname, reason));
    }
    if needs_netns && rt.netns.as_os_str().is_empty() {
        return Err(invalid("netns", "", "required"));
    }
    Ok(())
}

fn plugin_error(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    command: Command,
    source: InvokeError,
) -> RuntimeError {
    RuntimeError::Plugin {
        network: list.name.clone(),
        plugin: plugin.plugin_type.clone(),
        command,
        source: Box::new(source),
    }
}

fn cache_error(list: &NetworkConfigList, path: &Path, source: std::io::Error) -> RuntimeError {
    RuntimeError::Cache {
        network: list.name.clone(),
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
