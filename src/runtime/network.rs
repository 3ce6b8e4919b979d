//! Pod networking through CNI, the way the kubelet and containerd do it:
//! one ADD per pod sandbox, DEL on teardown (also for sandboxes found
//! half-made after a crash), GC with the pods that really exist at start.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni::{Attachment, Capabilities, Network, PortMapping};
use k8s_openapi::api::core::v1::Pod;
use tracing::{info, warn};

/// The interface name inside every pod.
pub const IFNAME: &str = "eth0";

/// Name of the config skiffd writes into an empty conf dir.
pub const DEFAULT_CONFLIST: &str = "10-skiff.conflist";

/// Network settings of the node.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// `--cni-conf-dir`: the first config by file name wins.
    pub conf_dir: PathBuf,
    /// `--cni-bin-dir`: plugin directories (`CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Where the result cache lives (libcni's layout).
    pub cache_dir: PathBuf,
    /// host-local's allocations for the default network.
    pub data_dir: PathBuf,
    /// This node's pod subnet (`--pod-cidr`).
    pub pod_cidr: String,
    /// MTU of the pod interfaces and the bridge.
    pub mtu: u32,
    /// Whether the bridge masquerades traffic leaving the pod subnet. Off with the overlay,
    /// whose own rules masquerade only traffic leaving the cluster.
    pub ip_masq: bool,
}

/// The node's pod network.
pub struct PodNetwork {
    cfg: NetConfig,
}

impl PodNetwork {
    pub fn new(cfg: NetConfig) -> Self {
        PodNetwork { cfg }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Prepares the node: writes skiff's default conflist when the conf dir
    /// has no config, and sets the sysctls pod networking needs.
    pub fn setup_node(&self) -> io::Result<()> {
        fs::create_dir_all(&self.cfg.conf_dir)?;
        let has_config = fs::read_dir(&self.cfg.conf_dir)?.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json")
        });
        let ours = self.cfg.conf_dir.join(DEFAULT_CONFLIST);
        let want = default_conflist(&self.cfg);
        // skiffd owns its default file: a new pod subnet (the overlay leased another one,
        // --pod-cidr changed) or MTU rewrites it. Any other file is the operator's.
        let stale = fs::read_to_string(&ours).is_ok_and(|text| text != want);
        if !has_config || stale {
            fs::write(&ours, &want)?;
            info!(path = %ours.display(), pod_cidr = %self.cfg.pod_cidr, mtu = self.cfg.mtu, "wrote the default pod network config (bridge cni0)");
        }
        set_sysctl("net/ipv4/ip_forward", "1");
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            set_sysctl("net/bridge/bridge-nf-call-iptables", "1");
        }
        Ok(())
    }

    fn load(&self) -> Result<Network, String> {
        Ok(Network::load(&self.cfg.conf_dir)
            .map_err(|e| {
                format!(
                    "loading CNI config from {}: {e}",
                    self.cfg.conf_dir.display()
                )
            })?
            .with_bin_dirs(self.cfg.bin_dirs.clone())
            .with_cache_dir(self.cfg.cache_dir.clone()))
    }

    fn attachment(pod: &Pod, netns: &Path) -> Attachment {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let port_mappings = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let host = p.host_port.filter(|h| *h > 0)?;
                Some(PortMapping {
                    host_port: host.into(),
                    container_port: p.container_port.into(),
                    protocol: p
                        .protocol
                        .clone()
                        .unwrap_or_else(|| "TCP".into())
                        .to_lowercase(),
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                })
            })
            .collect();
        Attachment {
            container_id: uid.clone(),
            netns: netns.to_path_buf(),
            ifname: IFNAME.into(),
            args: vec![
                (
                    "K8S_POD_NAMESPACE".into(),
                    pod.metadata.namespace.clone().unwrap_or_default(),
                ),
                (
                    "K8S_POD_NAME".into(),
                    pod.metadata.name.clone().unwrap_or_default(),
                ),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), uid.clone()),
                ("K8S_POD_UID".into(), uid),
            ],
            capabilities: Capabilities {
                port_mappings,
                ..Default::default()
            },
        }
    }

    /// Attaches the pod's netns and returns its IP. A pod attached before
    /// (a daemon restart) gets its cached result back, not a second ADD.
    pub fn attach(&self, pod: &Pod, netns: &Path) -> Result<IpAddr, String> {
        let net = self.load()?;
        let att = Self::attachment(pod, netns);
        if let Ok(Some(res)) = net.cached_result(&att.container_id, IFNAME) {
            if let Some(ip) = res.ips.first()
                && has_interface(netns, IFNAME)
            {
                return Ok(ip.address.addr);
            }
            // The cache (under the root dir) outlived the netns (under /run): after a
            // reboot the pod's netns is new and empty. DEL the stale attachment, which
            // frees its IP, and ADD afresh.
            info!(uid = %att.container_id, netns = %netns.display(), "cached CNI result without its interface; re-attaching");
            if let Err(e) = net.del(&att) {
                warn!(uid = %att.container_id, error = %e, "CNI DEL of a stale attachment");
            }
        }
        match net.add(&att) {
            Ok(res) => res.ips.first().map(|ip| ip.address.addr).ok_or_else(|| {
                format!("network {}: the plugins returned no IP address", net.name())
            }),
            Err(e) => {
                // Undo whatever the failed ADD did (the kubelet does the same).
                if let Err(d) = net.del(&att) {
                    warn!(error = %d, "CNI DEL after a failed ADD");
                }
                Err(format!("network {}: {e}", net.name()))
            }
        }
    }

    /// Detaches a pod; works when its netns is gone already. Idempotent.
    pub fn detach(&self, uid: &str, netns: &Path) -> Result<(), String> {
        let net = self.load()?;
        let att = Attachment {
            container_id: uid.to_string(),
            netns: netns.to_path_buf(),
            ifname: IFNAME.into(),
            ..Default::default()
        };
        net.del(&att)
            .map_err(|e| format!("network {}: {e}", net.name()))
    }

    /// Frees every attachment that does not belong to one of `live` pods.
    pub fn gc(&self, live: &[(String, PathBuf)]) {
        let Ok(net) = self.load() else {
            return;
        };
        let valid: Vec<Attachment> = live
            .iter()
            .map(|(uid, netns)| Attachment {
                container_id: uid.clone(),
                netns: netns.clone(),
                ifname: IFNAME.into(),
                ..Default::default()
            })
            .collect();
        match net.gc(&valid) {
            Ok(()) => {
                info!(network = %net.name(), live = live.len(), "CNI garbage collection done")
            }
            Err(e) => warn!(network = %net.name(), error = %e, "CNI garbage collection"),
        }
    }
}

/// True when the netns at `netns` has an interface `ifname`.
fn has_interface(netns: &Path, ifname: &'static str) -> bool {
    netns::run_in(netns, move || nix::net::if_::if_nametoindex(ifname).is_ok()).unwrap_or(false)
}

fn set_sysctl(key: &str, value: &str) {
    let path = Path::new("/proc/sys").join(key);
    let dotted = key.replace('/', ".");
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == value => {}
        _ => match fs::write(&path, value) {
            Ok(()) => info!(sysctl = %dotted, value, "set sysctl for pod networking"),
            Err(e) => {
                warn!(sysctl = %dotted, error = %e, "could not set sysctl for pod networking")
            }
        },
    }
}

/// skiff's default network: bridge `cni0` with the node's pod subnet and
/// gateway `.1`, masquerade for traffic leaving it, hostPorts through portmap.
pub fn default_conflist(cfg: &NetConfig) -> String {
    let conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "skiff",
        "plugins": [
            {
                "type": "skiff-bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": cfg.ip_masq,
                "hairpinMode": true,
                "mtu": cfg.mtu,
                "ipam": {
                    "type": "skiff-host-local",
                    "ranges": [[{"subnet": cfg.pod_cidr}]],
                    "dataDir": cfg.data_dir,
                }
            },
            {"type": "skiff-portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

/// The node's own IPv4 address: the one on the default route's interface,
/// else the first non-loopback address not on the pod bridge.
pub fn node_ip() -> Option<IpAddr> {
    let route = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_if = route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, IpAddr::V4(ip)))
        })
        .collect();
    if let Some(ifname) = default_if
        && let Some((_, ip)) = addrs.iter().find(|(n, _)| *n == ifname)
    {
        return Some(*ip);
    }
    addrs
        .into_iter()
        .find(|(n, ip)| n != "cni0" && !ip.is_loopback())
        .map(|(_, ip)| ip)
}
