//! The runtime side: load a network from a config directory and run its
//! plugin list for ADD, DEL, CHECK, GC, STATUS and VERSION, with a result
//! cache on disk so DEL and CHECK see the config and result of ADD (as libcni).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::invoke::{ProcessRunner, RunError, Runner, find_plugin};
use crate::skel::Command;
use crate::types::{
    CniResult, ErrorResult, GcAttachment, NetConfList, PortMapping, SUPPORTED_VERSIONS,
    VALID_ATTACHMENTS_KEY, VersionInfo, version_at_least,
};

/// Default plugin directory (the kubelet's and containerd's).
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Default cache directory (libcni's).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
/// Default time a single plugin may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of loading a network or running its plugins; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config directory could not be read.
    #[error("reading CNI config dir {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
    /// No usable config file was found.
    #[error("no valid CNI config (.conflist, .conf, .json) in {path}{}", if skipped.is_empty() { String::new() } else { format!("; skipped: {}", skipped.join("; ")) })]
    NoConfig { path: PathBuf, skipped: Vec<String> },
    /// A config file is not a valid network config.
    #[error("invalid CNI config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    /// A plugin named by the config is not in any plugin directory.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    /// A plugin could not be run (spawn failure, timeout).
    #[error("CNI plugin {plugin} ({command}): {source}")]
    Run {
        plugin: String,
        command: &'static str,
        source: RunError,
    },
    /// A plugin reported an error.
    #[error("CNI plugin {plugin} ({command}) failed: {error}")]
    Plugin {
        plugin: String,
        command: &'static str,
        error: ErrorResult,
    },
    /// A plugin printed something that is neither a result nor an error.
    #[error("CNI plugin {plugin} ({command}) printed invalid output {output:?}: {reason}")]
    BadOutput {
        plugin: String,
        command: &'static str,
        output: String,
        reason: String,
    },
    /// The result cache could not be read or written.
    #[error("CNI result cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
    /// CHECK needs a cached ADD result and there is none.
    #[error(
        "no cached CNI result for container {container_id} interface {ifname} on network {network}"
    )]
    NotCached {
        network: String,
        container_id: String,
        ifname: String,
    },
}

impl Error {
    /// The plugin's CNI error code, when a plugin reported one.
    pub fn cni_code(&self) -> Option<u32> {
        match self {
            Error::Plugin { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// Runtime-provided values for capabilities plugins declare in `capabilities`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// `portMappings`: host ports to forward into the container.
    pub port_mappings: Vec<PortMapping>,
    /// Any other capability by name (`bandwidth`, `ipRanges`, `dns`, ...).
    pub other: Map<String, Value>,
}

impl Capabilities {
    fn to_map(&self) -> Map<String, Value> {
        let mut m = self.other.clone();
        if !self.port_mappings.is_empty() {
            m.insert(
                "portMappings".into(),
                serde_json::to_value(&self.port_mappings).unwrap_or_default(),
            );
        }
        m
    }
}

/// One container interface on the network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachment {
    /// Container (sandbox) id; with `ifname` the attachment's key.
    pub container_id: String,
    /// Path of the container's network namespace (`/run/netns/x`, `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    /// Interface name inside the container, usually `eth0`.
    pub ifname: String,
    /// `CNI_ARGS` pairs (the kubelet passes `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...);
    /// `IgnoreUnknown=1` is put first when missing, as the kubelet and containerd do.
    pub args: Vec<(String, String)>,
    /// Capability arguments, turned into `runtimeConfig` for plugins that ask.
    pub capabilities: Capabilities,
}

/// What the cache file holds (libcni's `cniCacheV1` shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    /// The conflist bytes ADD ran with, base64 (as libcni).
    config: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network_name: String,
    #[serde(rename = "netns", default)]
    netns: String,
    #[serde(rename = "cniArgs", default)]
    cni_args: Vec<(String, String)>,
    #[serde(rename = "capabilityArgs", default)]
    capability_args: Map<String, Value>,
    /// Absent while ADD is running or when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// A loaded network: its plugin list plus where plugins and the cache live.
#[derive(Clone)]
pub struct Network {
    /// The parsed list.
    pub config: NetConfList,
    /// The list as bytes, stored in the cache so DEL uses exactly what ADD used.
    pub raw: Vec<u8>,
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// Directories searched for plugin binaries, in order (`CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Cache root; results go to `<cache_dir>/results/<net>-<container>-<ifname>`.
    pub cache_dir: PathBuf,
    /// Time limit for each plugin invocation.
    pub timeout: Duration,
    runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("name", &self.config.name)
            .field("source", &self.source)
            .field("bin_dirs", &self.bin_dirs)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl Network {
    /// Loads the first valid config in `conf_dir` by file name (`.conflist`,
    /// `.conf`, `.json`; a single-plugin `.conf` becomes a one-element list),
    /// the rule the kubelet and containerd use. Invalid files are skipped and
    /// reported if nothing valid is left.
    pub fn load(conf_dir: &Path) -> Result<Network, Error> {
        let rd = std::fs::read_dir(conf_dir).map_err(|source| Error::ReadDir {
            path: conf_dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                ) && p.is_file()
            })
            .collect();
        files.sort();
        let mut skipped = Vec::new();
        for f in files {
            let bytes = match std::fs::read(&f) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            match Network::from_bytes(&bytes, &f) {
                Ok(n) => return Ok(n),
                Err(e) => skipped.push(e.to_string()),
            }
        }
        Err(Error::NoConfig {
            path: conf_dir.to_path_buf(),
            skipped,
        })
    }

    /// Parses a conflist, or a single plugin config (recognised by a `type`
    /// field and no `plugins`), read from `source`.
    pub fn from_bytes(bytes: &[u8], source: &Path) -> Result<Network, Error> {
        let invalid = |reason: String| Error::InvalidConfig {
            path: source.to_path_buf(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        let (config, raw) = if obj.contains_key("plugins") {
            let c: NetConfList =
                serde_json::from_value(v.clone()).map_err(|e| invalid(e.to_string()))?;
            (c, bytes.to_vec())
        } else if obj.contains_key("type") {
            let single = obj.clone();
            let c = NetConfList {
                cni_version: single
                    .get("cniVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                cni_versions: Vec::new(),
                name: single
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                disable_check: false,
                disable_gc: false,
                plugins: vec![single],
            };
            let raw = serde_json::to_vec(&c).unwrap_or_default();
            (c, raw)
        } else {
            return Err(invalid(
                "neither a plugin list (\"plugins\") nor a plugin config (\"type\")".into(),
            ));
        };
        let mut config = config;
        if !config.cni_versions.is_empty() {
            // 1.1.0: use the highest listed version this crate understands.
            if let Some(best) = config
                .cni_versions
                .iter()
                .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
                .max_by_key(|v| crate::types::parse_version(v))
            {
                config.cni_version = best.clone();
            }
        }
        if config.name.is_empty() {
            return Err(invalid("missing network name".into()));
        }
        if !SUPPORTED_VERSIONS.contains(&config.cni_version.as_str()) {
            return Err(invalid(format!(
                "cniVersion {:?} is not one of {SUPPORTED_VERSIONS:?}",
                config.cni_version
            )));
        }
        if config.plugins.is_empty() {
            return Err(invalid("no plugins".into()));
        }
        for p in &config.plugins {
            if p.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(invalid("a plugin has no \"type\"".into()));
            }
        }
        Ok(Network {
            config,
            raw,
            source: source.to_path_buf(),
            bin_dirs: vec![PathBuf::from(DEFAULT_BIN_DIR)],
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            timeout: DEFAULT_TIMEOUT,
            runner: Arc::new(ProcessRunner::default()),
        })
    }

    /// Sets the plugin directories.
    pub fn with_bin_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.bin_dirs = dirs;
        self
    }

    /// Sets the cache root.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// Sets the per-plugin timeout.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Replaces how plugin processes are started.
    pub fn with_runner(mut self, runner: Arc<dyn Runner>) -> Self {
        self.runner = runner;
        self
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Runs ADD through every plugin in order, each getting the previous
    /// result as `prevResult`; caches and returns the final result.
    ///
    /// The cache entry (config, no result) is written before the first plugin
    /// runs, so a crash mid-ADD still leaves DEL the config it needs.
    pub fn add(&self, att: &Attachment) -> Result<CniResult, Error> {
        let mut entry = self.cache_entry(att);
        self.write_cache(&entry)?;
        let mut prev: Option<Value> = None;
        for plugin in &self.config.plugins {
            let conf =
                self.plugin_config(&self.config, plugin, prev.take(), Some(&att.capabilities))?;
            let out = self.exec(
                Command::Add,
                plugin,
                &conf,
                att,
                &att.netns.to_string_lossy(),
            )?;
            let kind = plugin_type(plugin);
            let v: Value = serde_json::from_slice(&out)
                .map_err(|e| bad_output(kind, Command::Add, &out, e.to_string()))?;
            // Validate now so a malformed result fails here, not in a later plugin.
            CniResult::from_value(v.clone())
                .map_err(|e| bad_output(kind, Command::Add, &out, e.to_string()))?;
            prev = Some(v);
        }
        let v = prev.unwrap_or_default();
        let mut result = CniResult::from_value(v.clone())
            .map_err(|e| bad_output("", Command::Add, &[], e.to_string()))?;
        result.cni_version = self.config.cni_version.clone();
        entry.result = Some(result.to_value(&self.config.cni_version));
        self.write_cache(&entry)?;
        Ok(result)
    }

    /// Runs DEL through every plugin in reverse, with the config and result
    /// cached by ADD when there is one (the current config otherwise). All
    /// plugins are called even if one fails; the first error is returned and
    /// the cache entry is kept for a retry. A netns path that no longer holds a
    /// namespace is passed as empty, which is what makes DEL after a reboot work.
    pub fn del(&self, att: &Attachment) -> Result<(), Error> {
        let cached = self.read_cache(&att.container_id, &att.ifname)?;
        let (list, prev, caps) = match &cached {
            Some(c) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(&c.config)
                    .ok();
                let list = raw
                    .and_then(|r| serde_json::from_slice::<NetConfList>(&r).ok())
                    .unwrap_or_else(|| self.config.clone());
                let caps = Capabilities {
                    port_mappings: Vec::new(),
                    other: c.capability_args.clone(),
                };
                (list, c.result.clone(), caps)
            }
            None => (self.config.clone(), None, att.capabilities.clone()),
        };
        let netns = if netns::is_pinned(&att.netns) {
            att.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            let r = self
                .plugin_config(&list, plugin, prev.clone(), Some(&caps))
                .and_then(|conf| self.exec(Command::Del, plugin, &conf, att, &netns));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => self.remove_cache(&att.container_id, &att.ifname),
        }
    }

    /// Runs CHECK through every plugin with the cached result as `prevResult`.
    pub fn check(&self, att: &Attachment) -> Result<(), Error> {
        if self.config.disable_check || !version_at_least(&self.config.cni_version, "0.4.0") {
            return Ok(());
        }
        let cached = self.read_cache(&att.container_id, &att.ifname)?;
        let Some(prev) = cached.and_then(|c| c.result) else {
            return Err(Error::NotCached {
                network: self.config.name.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            });
        };
        for plugin in &self.config.plugins {
            let conf = self.plugin_config(
                &self.config,
                plugin,
                Some(prev.clone()),
                Some(&att.capabilities),
            )?;
            self.exec(
                Command::Check,
                plugin,
                &conf,
                att,
                &att.netns.to_string_lossy(),
            )?;
        }
        Ok(())
    }

    /// Garbage-collects everything not in `valid`: first DEL for each cached
    /// attachment of this network that is not valid (as libcni), then, for
    /// 1.1.0 networks, GC through every plugin with `cni.dev/valid-attachments`.
    pub fn gc(&self, valid: &[Attachment]) -> Result<(), Error> {
        let keep: Vec<GcAttachment> = valid
            .iter()
            .map(|a| GcAttachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect();
        let mut first_err = None;
        for cached in self.cached_entries()? {
            let key = GcAttachment {
                container_id: cached.container_id.clone(),
                ifname: cached.ifname.clone(),
            };
            if keep.contains(&key) {
                continue;
            }
            let att = Attachment {
                container_id: cached.container_id,
                netns: PathBuf::from(cached.netns),
                ifname: cached.ifname,
                args: cached.cni_args,
                capabilities: Capabilities::default(),
            };
            if let Err(e) = self.del(&att) {
                first_err.get_or_insert(e);
            }
        }
        if version_at_least(&self.config.cni_version, "1.1.0") && !self.config.disable_gc {
            let none = Attachment::default();
            for plugin in &self.config.plugins {
                let mut conf = self.plugin_config(&self.config, plugin, None, None)?;
                conf.insert(
                    VALID_ATTACHMENTS_KEY.into(),
                    serde_json::to_value(&keep).unwrap_or_default(),
                );
                if let Err(e) = self.exec(Command::Gc, plugin, &conf, &none, "") {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Asks every plugin whether it is ready (1.1.0; older networks are
    /// ready when all their plugin binaries exist).
    pub fn status(&self) -> Result<(), Error> {
        let v11 = version_at_least(&self.config.cni_version, "1.1.0");
        for plugin in &self.config.plugins {
            if v11 {
                let conf = self.plugin_config(&self.config, plugin, None, None)?;
                self.exec(Command::Status, plugin, &conf, &Attachment::default(), "")?;
            } else {
                self.binary(plugin_type(plugin))?;
            }
        }
        Ok(())
    }

    /// Asks plugin `kind` which spec versions it supports.
    pub fn version(&self, kind: &str) -> Result<VersionInfo, Error> {
        let mut plugin = Map::new();
        plugin.insert("type".into(), Value::String(kind.into()));
        let mut conf = Map::new();
        conf.insert(
            "cniVersion".into(),
            Value::String(self.config.cni_version.clone()),
        );
        let out = self.exec(Command::Version, &plugin, &conf, &Attachment::default(), "")?;
        serde_json::from_slice(&out)
            .map_err(|e| bad_output(kind, Command::Version, &out, e.to_string()))
    }

    /// The result ADD cached for this attachment, if any.
    pub fn cached_result(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CniResult>, Error> {
        Ok(self
            .read_cache(container_id, ifname)?
            .and_then(|c| c.result)
            .and_then(|v| CniResult::from_value(v).ok()))
    }

    /// The attachments this network has cache entries for (container id, ifname).
    pub fn cached_attachments(&self) -> Result<Vec<GcAttachment>, Error> {
        Ok(self
            .cached_entries()?
            .into_iter()
            .map(|c| GcAttachment {
                container_id: c.container_id,
                ifname: c.ifname,
            })
            .collect())
    }

    /// Builds one plugin's stdin: its own config plus the list's name and
    /// version, `prevResult`, and `runtimeConfig` for declared capabilities.
    fn plugin_config(
        &self,
        list: &NetConfList,
        plugin: &Map<String, Value>,
        prev: Option<Value>,
        caps: Option<&Capabilities>,
    ) -> Result<Map<String, Value>, Error> {
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(list.name.clone()));
        conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev);
        }
        if let Some(caps) = caps {
            let offered = caps.to_map();
            let declared = plugin.get("capabilities").and_then(Value::as_object);
            let mut rc = Map::new();
            for (cap, on) in declared.into_iter().flatten() {
                if on.as_bool() == Some(true)
                    && let Some(v) = offered.get(cap)
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
            if !rc.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(rc));
            }
        }
        Ok(conf)
    }

    fn binary(&self, kind: &str) -> Result<PathBuf, Error> {
        find_plugin(kind, &self.bin_dirs).ok_or_else(|| Error::PluginNotFound {
            plugin: kind.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    /// Runs one plugin; returns its stdout on success.
    fn exec(
        &self,
        command: Command,
        plugin: &Map<String, Value>,
        conf: &Map<String, Value>,
        att: &Attachment,
        netns: &str,
    ) -> Result<Vec<u8>, Error> {
        let kind = plugin_type(plugin);
        let binary = self.binary(kind)?;
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // The reference plugins reject CNI_ARGS keys they do not know unless
        // IgnoreUnknown is set; the kubelet and containerd always set it first.
        if !args.is_empty() && !att.args.iter().any(|(k, _)| k == "IgnoreUnknown") {
            args.insert(0, "IgnoreUnknown=1".to_string());
        }
        let env = vec![
            ("CNI_COMMAND".to_string(), command.as_str().to_string()),
            ("CNI_CONTAINERID".to_string(), att.container_id.clone()),
            ("CNI_NETNS".to_string(), netns.to_string()),
            ("CNI_IFNAME".to_string(), att.ifname.clone()),
            ("CNI_ARGS".to_string(), args.join(";")),
            ("CNI_PATH".to_string(), cni_path),
        ];
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let out = self
            .runner
            .run(&binary, &env, &stdin, self.timeout)
            .map_err(|source| Error::Run {
                plugin: kind.to_string(),
                command: command.as_str(),
                source,
            })?;
        if out.success {
            return Ok(out.stdout);
        }
        let error = serde_json::from_slice::<ErrorResult>(&out.stdout).unwrap_or_else(|_| {
            // Not error JSON: report what the plugin said, stderr included.
            let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                text = format!("{text} {}", stderr.trim());
            }
            ErrorResult::new(
                crate::types::Code::Internal,
                "plugin failed without error JSON",
            )
            .with_details(text)
        });
        Err(Error::Plugin {
            plugin: kind.to_string(),
            command: command.as_str(),
            error,
        })
    }

    fn cache_entry(&self, att: &Attachment) -> CacheEntry {
        CacheEntry {
            kind: "cniCacheV1".into(),
            container_id: att.container_id.clone(),
            config: base64::engine::general_purpose::STANDARD.encode(&self.raw),
            ifname: att.ifname.clone(),
            network_name: self.config.name.clone(),
            netns: att.netns.to_string_lossy().into_owned(),
            cni_args: att.args.clone(),
            capability_args: att.capabilities.to_map(),
            result: None,
        }
    }

    fn results_dir(&self) -> PathBuf {
        self.cache_dir.join("results")
    }

    fn cache_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.results_dir()
            .join(format!("{}-{}-{}", self.config.name, container_id, ifname))
    }

    fn write_cache(&self, e: &CacheEntry) -> Result<(), Error> {
        let path = self.cache_path(&e.container_id, &e.ifname);
        let err = |source| Error::Cache {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(self.results_dir()).map_err(err)?;
        let data = serde_json::to_vec(e).unwrap_or_default();
        // A DEL after a crash needs the result: durable, and private as the rest of skiff's state.
        let sync = hostkit::atomic::Sync::Durable;
        hostkit::atomic::write(&path, &data, 0o600, sync).map_err(err)
    }

    fn read_cache(&self, container_id: &str, ifname: &str) -> Result<Option<CacheEntry>, Error> {
        let path = self.cache_path(container_id, ifname);
        match std::fs::read(&path) {
            // A corrupt entry is treated as absent: DEL then falls back to the current config.
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Cache { path, source }),
        }
    }

    fn remove_cache(&self, container_id: &str, ifname: &str) -> Result<(), Error> {
        let path = self.cache_path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Cache { path, source }),
        }
    }

    fn cached_entries(&self) -> Result<Vec<CacheEntry>, Error> {
        let dir = self.results_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Cache { path: dir, source }),
        };
        let prefix = format!("{}-", self.config.name);
        Ok(rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            // Another network whose name shares our prefix is not ours.
            .filter(|c| c.network_name == self.config.name)
            .collect())
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

fn bad_output(plugin: &str, command: Command, out: &[u8], reason: String) -> Error {
    Error::BadOutput {
        plugin: plugin.to_string(),
        command: command.as_str(),
        output: String::from_utf8_lossy(out).chars().take(500).collect(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::invoke::Output;

    /// Records every call and answers ADD with a result naming the plugin.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(String, String, Value)>>,
    }

    impl Runner for Recorder {
        fn run(
            &self,
            binary: &Path,
            env: &[(String, String)],
            stdin: &[u8],
            _: Duration,
        ) -> Result<Output, RunError> {
            let get = |k: &str| {
                env.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let name = binary.file_name().unwrap().to_string_lossy().into_owned();
            let conf: Value = serde_json::from_slice(stdin).unwrap();
            self.calls
                .lock()
                .unwrap()
                .push((name.clone(), get("CNI_COMMAND"), conf));
            let n = if name == "first" { 2 } else { 3 };
            let out = format!(r#"{{"cniVersion":"1.1.0","ips":[{{"address":"10.0.0.{n}/24"}}]}}"#);
            Ok(Output {
                success: true,
                stdout: out.into_bytes(),
                stderr: Vec::new(),
            })
        }
    }

    #[test]
    fn chaining_capabilities_cache_and_order() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["first", "second"] {
            let f = dir.path().join(p);
            std::fs::write(&f, "").unwrap();
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let rec = Arc::new(Recorder::default());
        let list = r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"first","x":1},
            {"type":"second","capabilities":{"portMappings":true,"bandwidth":false}}]}"#;
        let net = Network::from_bytes(list.as_bytes(), Path::new("t"))
            .unwrap()
            .with_bin_dirs(vec![dir.path().into()])
            .with_cache_dir(dir.path().join("cache"))
            .with_runner(rec.clone());
        let mut att = Attachment {
            container_id: "c".into(),
            netns: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        att.capabilities.port_mappings.push(PortMapping {
            host_port: 80,
            container_port: 8080,
            protocol: "tcp".into(),
            host_ip: String::new(),
        });
        att.capabilities
            .other
            .insert("bandwidth".into(), serde_json::json!({"rate": 1}));
        let r = net.add(&att).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.3/24");
        net.del(&att).unwrap();
        net.gc(&[]).unwrap();
        let calls = rec.calls.lock().unwrap();
        let seq: Vec<(&str, &str)> = calls
            .iter()
            .map(|(n, c, _)| (n.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            seq,
            [
                ("first", "ADD"),
                ("second", "ADD"),
                ("second", "DEL"),
                ("first", "DEL"),
                ("first", "GC"),
                ("second", "GC")
            ]
        );
        let (first_add, second_add) = (&calls[0].2, &calls[1].2);
        assert_eq!(first_add["name"], "n");
        assert_eq!(first_add["x"], 1);
        assert!(first_add.get("prevResult").is_none() && first_add.get("runtimeConfig").is_none());
        assert_eq!(second_add["prevResult"]["ips"][0]["address"], "10.0.0.2/24");
        // Only declared (and true) capabilities reach the plugin.
        assert_eq!(
            second_add["runtimeConfig"]["portMappings"][0]["hostPort"],
            80
        );
        assert!(second_add["runtimeConfig"].get("bandwidth").is_none());
        // DEL gets the cached final result and the cached capabilities.
        assert_eq!(calls[2].2["prevResult"]["ips"][0]["address"], "10.0.0.3/24");
        assert_eq!(
            calls[2].2["runtimeConfig"]["portMappings"][0]["containerPort"],
            8080
        );
        assert_eq!(calls[4].2[VALID_ATTACHMENTS_KEY], serde_json::json!([]));
        assert!(net.cached_attachments().unwrap().is_empty());
    }
}
