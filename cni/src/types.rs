//! CNI spec types (versions 1.0.0 and 1.1.0, with the older result shapes
//! 0.3.x/0.4.0 understood on input and produced on request).
//!
//! Unknown fields are kept or ignored, never rejected: the spec lets runtimes
//! and other plugins add fields (`args`, `runtimeConfig`, plugin options), and
//! a plugin must not fail on them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ipnet::IpNet;

/// The newest spec version this crate speaks.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Versions whose configs and results skiff's plugins accept.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Key of the GC verb's list of attachments that must be kept.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// Parses `a.b.c` into a comparable triple; `None` when malformed.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    it.next().is_none().then_some(t)
}

/// True when `v` is at least `min` (both `a.b.c`); malformed counts as older.
pub fn version_at_least(v: &str, min: &str) -> bool {
    match (parse_version(v), parse_version(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// A network configuration list (`.conflist`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetConfList {
    /// Spec version of the list and of every plugin config in it.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Alternative versions the list is valid for (1.1.0); the highest supported wins.
    #[serde(rename = "cniVersions", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    /// Network name, unique on the host; part of cache keys and IPAM directories.
    pub name: String,
    /// Skip CHECK for this network.
    #[serde(rename = "disableCheck", default, skip_serializing_if = "is_false")]
    pub disable_check: bool,
    /// Skip GC for this network (1.1.0).
    #[serde(rename = "disableGC", default, skip_serializing_if = "is_false")]
    pub disable_gc: bool,
    /// The plugin configurations, run in order for ADD and reversed for DEL.
    pub plugins: Vec<Map<String, Value>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A host port to forward into the container (`portMappings` capability).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the host.
    #[serde(rename = "hostPort")]
    pub host_port: i64,
    /// Port in the container.
    #[serde(rename = "containerPort")]
    pub container_port: i64,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Host address to bind; empty or unspecified means all local addresses.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// One interface in a result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path when the interface lives in the container; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Socket path for userspace interfaces (1.1.0).
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// PCI id of the device (1.1.0).
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address in a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Address with prefix length.
    pub address: IpNet,
    /// Default gateway for this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// One route in a result or an IPAM config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; absent means the subnet's gateway (or on-link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route to `dst` via `gw` with no 1.1.0 extras.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings of a result or a network config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set (the field is then left out of results).
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// The result of ADD (also `prevResult` and the cached result).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniResult {
    /// Spec version the result is written in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created or used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings for the container.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// An empty result of `version`.
    pub fn new(version: &str) -> Self {
        Self {
            cni_version: version.to_string(),
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        }
    }

    /// Parses a result of any version from 0.3.0 on (older ones have another shape).
    pub fn from_value(v: Value) -> Result<Self, serde_json::Error> {
        // 0.3.x/0.4.0 results carry a per-IP "version" field, which serde ignores here.
        serde_json::from_value(v)
    }

    /// Serializes the result in the shape of `version`: before 1.0.0 every IP
    /// also carries `"version": "4"|"6"`.
    pub fn to_value(&self, version: &str) -> Value {
        let mut r = self.clone();
        r.cni_version = version.to_string();
        let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
        if !version_at_least(version, "1.0.0")
            && let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut)
        {
            for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                let fam = if cfg.address.addr.is_ipv4() { "4" } else { "6" };
                ip["version"] = Value::String(fam.into());
            }
        }
        v
    }

    /// The first IPv4 address on the interface called `ifname` in a sandbox,
    /// or on no interface at all (what chained plugins such as portmap use).
    pub fn container_ip(&self, ifname: &str, v4: bool) -> Option<IpNet> {
        self.ips
            .iter()
            .filter(|ip| ip.address.addr.is_ipv4() == v4)
            .find(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(iface) => iface.name == ifname && iface.sandbox.is_some(),
                    None => true,
                },
            )
            .map(|ip| ip.address)
    }
}

/// The spec's well-known error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    IoFailure = 5,
    /// 6: failed to decode content.
    DecodingFailure = 6,
    /// 7: invalid network config.
    InvalidNetworkConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (STATUS).
    PluginNotAvailable = 50,
    /// 51: the plugin is not available, existing containers may be affected (STATUS).
    PluginNotAvailableLimited = 51,
    /// 100: skiff-specific: the IPAM range has no free address.
    RangeExhausted = 100,
    /// 999: any other failure (the reference plugins' generic code).
    Internal = 999,
}

/// The error a plugin prints on stdout when it fails.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct ErrorResult {
    /// Spec version of the error.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Error code (see [`Code`]).
    pub code: u32,
    /// Short message.
    #[serde(default)]
    pub msg: String,
    /// Longer explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorResult {
    /// An error with `code` and `msg`.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            cni_version: CURRENT_VERSION.to_string(),
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

/// Output of VERSION.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Version of this answer.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Versions the plugin can speak.
    #[serde(rename = "supportedVersions", default)]
    pub supported_versions: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments` for GC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GcAttachment {
    /// Container id of a live attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name of a live attachment.
    pub ifname: String,
}

/// `runtimeConfig` as skiff's plugins read it; other capabilities are kept raw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RuntimeConfig {
    /// Host ports to forward.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    /// Any other capability.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(!version_at_least("0.4.0", "1.0.0"));
        assert!(!version_at_least("garbage", "0.1.0"));
        assert_eq!(parse_version("0.3"), Some((0, 3, 0)));
    }

    #[test]
    fn result_round_trip_and_old_shape() {
        let json = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
            "ips":[{"version":"4","interface":0,"address":"10.0.0.2/24","gateway":"10.0.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let r = CniResult::from_value(serde_json::from_str(json).unwrap()).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
        let v1 = r.to_value("1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1.get("dns").is_none());
        let v04 = r.to_value("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(
            r.container_ip("eth0", true).unwrap().to_string(),
            "10.0.0.2/24"
        );
    }

    #[test]
    fn error_json() {
        let e = ErrorResult::new(Code::InvalidNetworkConfig, "bad").with_details("why");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad");
        assert_eq!(v["details"], "why");
    }
}
