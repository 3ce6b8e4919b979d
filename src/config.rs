//! skiffd's configuration: command-line flags (kubelet's names), each also
//! settable in a YAML/JSON config file given with `--config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// skiffd: runs the Kubernetes pods whose manifests are in a directory.
#[derive(Debug, Parser)]
#[command(name = "skiffd", version)]
pub struct Flags {
    /// Config file (YAML or JSON) with any of the settings below in camelCase; flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of Pod manifests (*.yaml, *.yml, *.json) [default: /etc/skiff/manifests].
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// Directory for skiff's state: images, pods, logs [default: /var/lib/skiff].
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// Directory for the API socket, named namespaces and runtime state [default: /run/skiff].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// This node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// How often the manifest directory is re-listed in full, in seconds, in case an event was missed [default: 20].
    #[arg(long)]
    pub file_check_frequency: Option<u64>,
    /// Path of the skiff-shim binary [default: next to skiffd, else from PATH].
    #[arg(long)]
    pub shim_path: Option<PathBuf>,
    /// Log filter, e.g. `info` or `skiff=debug` [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// CNI network configs; the first by file name wins. skiffd writes its default bridge network here when it is empty [default: /etc/cni/net.d].
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories, comma-separated [default: skiffd's own directory, /opt/cni/bin, /usr/lib/cni].
    #[arg(long, value_delimiter = ',')]
    pub cni_bin_dir: Option<Vec<PathBuf>>,
    /// CNI result cache [default: <root-dir>/cni/cache].
    #[arg(long)]
    pub cni_cache_dir: Option<PathBuf>,
    /// This node's pod subnet, used by the default network [default: 10.244.0.0/24].
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Maximum processes per container (pids cgroup); -1 for no limit [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    pub pod_pids_limit: Option<i64>,
    /// Give every container whose pod and container name no seccompProfile the RuntimeDefault profile (the kubelet's flag); without it they run Unconfined.
    #[arg(long)]
    pub seccomp_default: bool,
    /// Largest size of a container's log file before the shim rotates it, a quantity like 10Mi [default: 10Mi].
    #[arg(long)]
    pub container_log_max_size: Option<String>,
    /// Most log files kept per container run, the current one included; at least 2 [default: 5].
    #[arg(long)]
    pub container_log_max_files: Option<u32>,
    /// Range of Service cluster IPs [default: 10.96.0.0/12].
    #[arg(long)]
    pub service_cluster_ip_range: Option<String>,
    /// Range of Service node ports, `LOW-HIGH` [default: 30000-32767].
    #[arg(long)]
    pub service_node_port_range: Option<String>,
    /// The pod network of the whole cluster; traffic to a Service from outside it is masqueraded [default: 10.244.0.0/16].
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Remove every iptables rule skiff installed and exit.
    #[arg(long)]
    pub cleanup_iptables: bool,
    /// Also remove skiff's iptables rules on an orderly shutdown.
    #[arg(long)]
    pub cleanup_iptables_on_exit: bool,
    /// Docker-style config.json with registry credentials for every pull [default: <root-dir>/config.json if it exists, else /root/.docker/config.json].
    #[arg(long)]
    pub image_credential_config: Option<PathBuf>,
    /// Per-registry settings (TOML: plain_http, ca_file, skip_verify, mirrors); a missing file is empty [default: /etc/skiff/registries.toml].
    #[arg(long)]
    pub registries_config: Option<PathBuf>,
    /// Disk use (percent) of the image store's filesystem at which image GC starts; 100 disables it [default: 85].
    #[arg(long)]
    pub image_gc_high_threshold: Option<u8>,
    /// Disk use (percent) image GC frees down to [default: 80].
    #[arg(long)]
    pub image_gc_low_threshold: Option<u8>,
    /// How often the service proxy checks its rules (kube-proxy's --iptables-sync-period): a flush by someone else is repaired then; everything is rewritten hourly anyway. A duration like 30s, 500ms, 1m [default: 30s].
    #[arg(long)]
    pub iptables_sync_period: Option<String>,
    /// etcd client URLs, comma-separated: join the multi-host overlay (VXLAN subnets, shared Services) kept there. Without it everything stays local.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix of skiff's data in etcd (flannel's layout below it) [default: /skiff].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// CA bundle (PEM) that signed etcd's server certificate, for https:// endpoints [default: the system roots].
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client certificate auth.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// Private key (PEM) of --etcd-certfile.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user for etcd's password auth (etcdctl's --user); needs --etcd-password-file.
    #[arg(long)]
    pub etcd_username: Option<String>,
    /// File holding the password of --etcd-username (its first line); refused when group or others can read it.
    #[arg(long)]
    pub etcd_password_file: Option<PathBuf>,
    /// TTL of this node's subnet lease in etcd, in seconds; a node gone that long loses its subnet and routes [default: 60].
    #[arg(long)]
    pub subnet_lease_ttl: Option<u64>,
    /// Multi-host: how long a node may be gone from etcd before the leader replaces its pods elsewhere (kube-controller-manager's --pod-eviction-timeout). A duration like 5m, 30s [default: 5m].
    #[arg(long)]
    pub pod_eviction_timeout: Option<String>,
    /// The underlay interface for VXLAN [default: the default route's].
    #[arg(long)]
    pub iface: Option<String>,
    /// The address other nodes send VXLAN packets to [default: the underlay interface's].
    #[arg(long)]
    pub public_ip: Option<std::net::Ipv4Addr>,
    /// Labels to add to this node, `key=value` pairs separated by commas (the kubelet's flag); pods select nodes by them (nodeSelector, node affinity).
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Option<Vec<String>>,
    /// Turn off tx checksum offload on the VXLAN device (workaround for the kernel/NIC checksum bug that drops VXLAN traffic).
    #[arg(long)]
    pub vxlan_tx_checksum_off: bool,
    // --- the Kubernetes API over TLS (issue 10) ---
    /// Address of the TLS API for kubectl and client libraries (bearer tokens from <root-dir>/pki/tokens); `none` turns it off [default: 127.0.0.1:6443].
    #[arg(long)]
    pub api_listen: Option<String>,
    /// The address pods reach the TLS API on, the endpoint of the `default/kubernetes` Service (the apiserver's --advertise-address); skiffd also listens there [default: the --api-listen address when it is a node address, else the pod network's gateway (the first address of the pod CIDR)].
    #[arg(long)]
    pub api_advertise_address: Option<std::net::Ipv4Addr>,
    /// The `iss` claim of service account tokens, and the audience the TLS API accepts [default: https://kubernetes.default.svc.cluster.local].
    #[arg(long)]
    pub service_account_issuer: Option<String>,
    /// The longest lifetime of a service account token; longer requests get this (the apiserver's flag; short values are for tests of token rotation) [default: none].
    #[arg(long)]
    pub service_account_max_token_expiration: Option<String>,
    /// How often the resource metrics (`kubectl top`, metrics.k8s.io) are read; CPU is the rate between two readings (metrics-server's --metric-resolution) [default: 10s].
    #[arg(long)]
    pub metric_resolution: Option<String>,
    // --- cluster DNS (issue 12) ---
    /// The cluster DNS address pods get as their nameserver (ClusterFirst), served by skiffd behind the kube-system/kube-dns Service; `none` turns skiff's DNS off [default: the 10th address of --service-cluster-ip-range, 10.96.0.10].
    #[arg(long)]
    pub cluster_dns: Option<String>,
    /// The cluster's DNS domain: Services are `NAME.NAMESPACE.svc.DOMAIN` [default: cluster.local].
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// The node's resolver config: its nameservers answer names outside the cluster, its search domains are added to pods' [default: /etc/resolv.conf].
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
    /// UDP queries a second the cluster DNS answers from one client address; more are dropped, so a flooding pod cannot starve the others. 0 turns the limit off (for benchmarks) [default: 2000].
    #[arg(long)]
    pub cluster_dns_rate_limit: Option<u32>,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// Directory of Pod manifests.
    pub pod_manifest_path: Option<PathBuf>,
    /// Directory for skiff's state.
    pub root_dir: Option<PathBuf>,
    /// Directory for sockets, named namespaces and runtime state.
    pub run_dir: Option<PathBuf>,
    /// This node's name.
    pub node_name: Option<String>,
    /// Labels to add to this node.
    pub node_labels: Option<std::collections::BTreeMap<String, String>>,
    /// Full re-list period of the manifest directory, in seconds.
    pub file_check_frequency: Option<u64>,
    /// Path of the skiff-shim binary.
    pub shim_path: Option<PathBuf>,
    /// Log filter.
    pub log_level: Option<String>,
    /// CNI network config directory.
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories.
    pub cni_bin_dir: Option<Vec<PathBuf>>,
    /// CNI result cache directory.
    pub cni_cache_dir: Option<PathBuf>,
    /// This node's pod subnet.
    pub pod_cidr: Option<String>,
    /// pids cgroup limit per container; -1 for none.
    pub pod_pids_limit: Option<i64>,
    /// RuntimeDefault seccomp for containers without a profile.
    pub seccomp_default: Option<bool>,
    /// Log file size at which a container's log is rotated (quantity).
    pub container_log_max_size: Option<String>,
    /// Log files kept per container run.
    pub container_log_max_files: Option<u32>,
    /// Range of Service cluster IPs.
    pub service_cluster_ip_range: Option<String>,
    /// Range of Service node ports, `LOW-HIGH`.
    pub service_node_port_range: Option<String>,
    /// The cluster's pod network.
    pub cluster_cidr: Option<String>,
    /// Remove skiff's iptables rules on an orderly shutdown.
    pub cleanup_iptables_on_exit: Option<bool>,
    /// Docker-style config.json with registry credentials.
    pub image_credential_config: Option<PathBuf>,
    /// Registries TOML file.
    pub registries_config: Option<PathBuf>,
    /// Image GC high threshold, percent of disk.
    pub image_gc_high_threshold: Option<u8>,
    /// Image GC low threshold, percent of disk.
    pub image_gc_low_threshold: Option<u8>,
    /// Service proxy check period (duration).
    pub iptables_sync_period: Option<String>,
    /// etcd client URLs.
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix in etcd.
    pub etcd_prefix: Option<String>,
    /// etcd CA bundle.
    pub etcd_cafile: Option<PathBuf>,
    /// etcd client certificate.
    pub etcd_certfile: Option<PathBuf>,
    /// etcd client key.
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user (password auth).
    pub etcd_username: Option<String>,
    /// File with the etcd user's password.
    pub etcd_password_file: Option<PathBuf>,
    /// Subnet lease TTL, seconds.
    pub subnet_lease_ttl: Option<u64>,
    /// Pod eviction timeout of a node gone from the cluster (duration).
    pub pod_eviction_timeout: Option<String>,
    /// Underlay interface.
    pub iface: Option<String>,
    /// Public (underlay) address.
    pub public_ip: Option<std::net::Ipv4Addr>,
    /// tx checksum offload off on the VXLAN device.
    pub vxlan_tx_checksum_off: Option<bool>,
    /// Address of the TLS API, or `none`.
    pub api_listen: Option<String>,
    /// Address pods reach the TLS API on.
    pub api_advertise_address: Option<std::net::Ipv4Addr>,
    /// Issuer of service account tokens.
    pub service_account_issuer: Option<String>,
    /// Longest service account token lifetime (duration).
    pub service_account_max_token_expiration: Option<String>,
    /// How often resource metrics are read (duration).
    pub metric_resolution: Option<String>,
    /// Cluster DNS address, or `none`.
    pub cluster_dns: Option<String>,
    /// Cluster DNS domain.
    pub cluster_domain: Option<String>,
    /// The node's resolv.conf.
    pub resolv_conf: Option<PathBuf>,
    /// Cluster DNS queries a second per client address (0: no limit).
    pub cluster_dns_rate_limit: Option<u32>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub pod_manifest_path: PathBuf,
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub node_name: String,
    /// `--node-labels` (checked: the well-known labels are added by the store).
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub file_check_frequency: Duration,
    pub shim_path: PathBuf,
    pub log_level: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_cache_dir: PathBuf,
    pub pod_cidr: String,
    pub pod_pids_limit: i64,
    pub seccomp_default: bool,
    /// Container log rotation.
    pub container_log: crate::runtime::supervise::LogLimits,
    pub service_cluster_ip_range: crate::proxy::Ipv4Cidr,
    pub service_node_port_range: (u16, u16),
    pub cluster_cidr: crate::proxy::Ipv4Cidr,
    pub cleanup_iptables: bool,
    pub cleanup_iptables_on_exit: bool,
    pub image_credential_config: PathBuf,
    pub registries_config: PathBuf,
    pub image_gc_high_threshold: u8,
    pub image_gc_low_threshold: u8,
    /// The overlay, when `--etcd-endpoints` is given.
    pub etcd: Option<EtcdConfig>,
    pub iptables_sync_period: Duration,
    /// Where the TLS API listens; `None` when turned off (`--api-listen none`).
    pub api_listen: Option<std::net::SocketAddr>,
    /// `--api-advertise-address`: where pods reach the API (see [`crate::service::master`]).
    pub api_advertise_address: Option<std::net::Ipv4Addr>,
    /// Service account token issuing.
    pub service_account: crate::serviceaccount::Settings,
    /// `--metric-resolution`: how often container and node usage is read.
    pub metric_resolution: Duration,
    /// `--cluster-dns`; `None` when turned off.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// `--resolv-conf`.
    pub resolv_conf: PathBuf,
    /// `--cluster-dns-rate-limit`: UDP queries a second per client address; 0 is no limit.
    pub cluster_dns_rate_limit: u32,
}

/// A duration as Kubernetes components take them: `500ms`, `30s`, `1m`, `1h`, or bare seconds.
pub fn parse_duration(flag: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Invalid {
        flag,
        message: format!("{s:?}: expected a duration like 500ms, 30s, 1m"),
    };
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Multi-host settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub subnet_lease_ttl: Duration,
    /// How long a node may be gone before its pods are replaced elsewhere.
    pub pod_eviction_timeout: Duration,
    pub iface: Option<String>,
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub vxlan_tx_checksum_off: bool,
    pub tls: crate::overlay::etcd::TlsFiles,
    /// etcd user and password (`--etcd-username`, `--etcd-password-file`).
    pub auth: Option<crate::overlay::etcd::Credentials>,
}

impl EtcdConfig {
    /// A client for the configured endpoints.
    pub fn client(&self) -> Result<crate::overlay::etcd::Client, crate::overlay::etcd::EtcdError> {
        let refs: Vec<&str> = self.endpoints.iter().map(String::as_str).collect();
        let tls = (self.tls != Default::default()).then_some(&self.tls);
        let client = crate::overlay::etcd::Client::connect_to(&refs, tls)?;
        Ok(match &self.auth {
            Some(creds) => client.with_auth(creds.clone()),
            None => client,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error("invalid configuration: {0}")]
    Bad(String),
}

impl Config {
    /// Merges flags over the config file over built-in defaults.
    pub fn load(mut flags: Flags) -> Result<Config, ConfigError> {
        let mut file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let root_dir: PathBuf = flags
            .root_dir
            .clone()
            .or(file.root_dir.clone())
            .unwrap_or_else(|| "/var/lib/skiff".into());
        let node_name = flags
            .node_name
            .or(file.node_name)
            .unwrap_or_else(default_node_name);
        let node_labels = match flags.node_labels.take() {
            Some(pairs) => {
                let mut labels = std::collections::BTreeMap::new();
                for pair in pairs.iter().filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| ConfigError::Invalid {
                        flag: "--node-labels",
                        message: format!("{pair:?} is not key=value"),
                    })?;
                    labels.insert(k.trim().to_string(), v.trim().to_string());
                }
                labels
            }
            None => file.node_labels.take().unwrap_or_default(),
        };
        crate::node::check_node_labels(&node_labels).map_err(|message| ConfigError::Invalid {
            flag: "--node-labels",
            message,
        })?;
        let image_gc_high_threshold = flags
            .image_gc_high_threshold
            .or(file.image_gc_high_threshold)
            .unwrap_or(85);
        let image_gc_low_threshold = flags
            .image_gc_low_threshold
            .or(file.image_gc_low_threshold)
            .unwrap_or(80);
        // The kubelet's validation of the same two flags.
        if image_gc_high_threshold > 100 || image_gc_low_threshold > image_gc_high_threshold {
            return Err(ConfigError::Bad(format!(
                "imageGCLowThresholdPercent ({image_gc_low_threshold}) must be at most imageGCHighThresholdPercent ({image_gc_high_threshold}), which must be at most 100"
            )));
        }
        let image_credential_config = flags
            .image_credential_config
            .or(file.image_credential_config)
            .unwrap_or_else(|| default_credential_config(&root_dir));
        let container_log = container_log_limits(
            flags
                .container_log_max_size
                .as_deref()
                .or(file.container_log_max_size.as_deref()),
            flags
                .container_log_max_files
                .or(file.container_log_max_files),
        )?;
        let endpoints: Vec<String> = flags
            .etcd_endpoints
            .or(file.etcd_endpoints)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        let etcd = if endpoints.is_empty() {
            None
        } else {
            let prefix = flags
                .etcd_prefix
                .or(file.etcd_prefix)
                .unwrap_or_else(|| "/skiff".into());
            if !prefix.starts_with('/') {
                return Err(ConfigError::Invalid {
                    flag: "--etcd-prefix",
                    message: format!("{prefix:?}: must start with /"),
                });
            }
            let cfg = EtcdConfig {
                endpoints,
                prefix: prefix.trim_end_matches('/').to_string(),
                subnet_lease_ttl: Duration::from_secs(
                    flags
                        .subnet_lease_ttl
                        .or(file.subnet_lease_ttl)
                        .unwrap_or(60)
                        .max(1),
                ),
                pod_eviction_timeout: parse_duration(
                    "--pod-eviction-timeout",
                    flags
                        .pod_eviction_timeout
                        .or(file.pod_eviction_timeout)
                        .as_deref()
                        .unwrap_or("5m"),
                )?,
                iface: flags.iface.or(file.iface),
                public_ip: flags.public_ip.or(file.public_ip),
                vxlan_tx_checksum_off: flags.vxlan_tx_checksum_off
                    || file.vxlan_tx_checksum_off.unwrap_or(false),
                tls: crate::overlay::etcd::TlsFiles {
                    ca_file: flags.etcd_cafile.or(file.etcd_cafile),
                    cert_file: flags.etcd_certfile.or(file.etcd_certfile),
                    key_file: flags.etcd_keyfile.or(file.etcd_keyfile),
                },
                auth: match (
                    flags.etcd_username.or(file.etcd_username),
                    flags.etcd_password_file.or(file.etcd_password_file),
                ) {
                    (Some(user), Some(path)) => Some(
                        crate::overlay::etcd::Credentials::from_file(&user, &path).map_err(
                            |err| ConfigError::Invalid {
                                flag: "--etcd-password-file",
                                message: err.to_string(),
                            },
                        )?,
                    ),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid {
                            flag: "--etcd-username",
                            message: "--etcd-username and --etcd-password-file go together".into(),
                        });
                    }
                },
            };
            cfg.client().map_err(|err| ConfigError::Invalid {
                flag: "--etcd-endpoints",
                message: err.to_string(),
            })?;
            Some(cfg)
        };
        let iptables_sync_period = parse_duration(
            "--iptables-sync-period",
            flags
                .iptables_sync_period
                .or(file.iptables_sync_period)
                .as_deref()
                .unwrap_or("30s"),
        )?;
        let api_listen = parse_api_listen(
            flags
                .api_listen
                .or(file.api_listen)
                .as_deref()
                .unwrap_or("127.0.0.1:6443"),
        )?;
        let issuer = flags
            .service_account_issuer
            .or(file.service_account_issuer)
            .unwrap_or_else(|| crate::serviceaccount::DEFAULT_ISSUER.into());
        if issuer.trim().is_empty() || issuer.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                flag: "--service-account-issuer",
                message: format!("{issuer:?}: expected a URL or identifier without spaces"),
            });
        }
        let max_expiration = flags
            .service_account_max_token_expiration
            .or(file.service_account_max_token_expiration)
            .map(|s| parse_duration("--service-account-max-token-expiration", &s))
            .transpose()?;
        let service_cluster_ip_range = parse_cidr(
            "--service-cluster-ip-range",
            flags
                .service_cluster_ip_range
                .take()
                .or(file.service_cluster_ip_range.take())
                .as_deref()
                .unwrap_or("10.96.0.0/12"),
        )?;
        let metric_resolution = flags
            .metric_resolution
            .or(file.metric_resolution)
            .map(|s| parse_duration("--metric-resolution", &s))
            .transpose()?
            .unwrap_or(Duration::from_secs(10));
        let (cluster_dns, cluster_domain) = cluster_dns(
            flags.cluster_dns.or(file.cluster_dns),
            flags.cluster_domain.or(file.cluster_domain),
            service_cluster_ip_range,
        )?;
        Ok(Config {
            cluster_dns,
            cluster_domain,
            cluster_dns_rate_limit: flags
                .cluster_dns_rate_limit
                .or(file.cluster_dns_rate_limit)
                .unwrap_or(crate::dns::RATE_PER_CLIENT),
            resolv_conf: flags
                .resolv_conf
                .or(file.resolv_conf)
                .unwrap_or_else(|| "/etc/resolv.conf".into()),
            metric_resolution,
            api_listen,
            api_advertise_address: flags.api_advertise_address.or(file.api_advertise_address),
            service_account: crate::serviceaccount::Settings {
                issuer,
                max_expiration,
            },
            iptables_sync_period,
            etcd,
            image_credential_config,
            registries_config: flags
                .registries_config
                .or(file.registries_config)
                .unwrap_or_else(|| "/etc/skiff/registries.toml".into()),
            image_gc_high_threshold,
            image_gc_low_threshold,
            pod_manifest_path: flags
                .pod_manifest_path
                .or(file.pod_manifest_path)
                .unwrap_or_else(|| "/etc/skiff/manifests".into()),
            cni_conf_dir: flags
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_bin_dirs: flags
                .cni_bin_dir
                .or(file.cni_bin_dir)
                .unwrap_or_else(default_cni_bin_dirs),
            cni_cache_dir: flags
                .cni_cache_dir
                .or(file.cni_cache_dir)
                .unwrap_or_else(|| root_dir.join("cni/cache")),
            pod_cidr: flags
                .pod_cidr
                .or(file.pod_cidr)
                .unwrap_or_else(|| "10.244.0.0/24".into()),
            pod_pids_limit: flags.pod_pids_limit.or(file.pod_pids_limit).unwrap_or(-1),
            seccomp_default: flags.seccomp_default || file.seccomp_default.unwrap_or(false),
            container_log,
            service_cluster_ip_range,
            service_node_port_range: parse_port_range(
                flags
                    .service_node_port_range
                    .or(file.service_node_port_range)
                    .as_deref()
                    .unwrap_or("30000-32767"),
            )?,
            cluster_cidr: parse_cidr(
                "--cluster-cidr",
                flags
                    .cluster_cidr
                    .or(file.cluster_cidr)
                    .as_deref()
                    .unwrap_or("10.244.0.0/16"),
            )?,
            cleanup_iptables: flags.cleanup_iptables,
            cleanup_iptables_on_exit: flags.cleanup_iptables_on_exit
                || file.cleanup_iptables_on_exit.unwrap_or(false),
            root_dir,
            run_dir: flags
                .run_dir
                .or(file.run_dir)
                .unwrap_or_else(|| "/run/skiff".into()),
            node_name,
            node_labels,
            file_check_frequency: Duration::from_secs(
                flags
                    .file_check_frequency
                    .or(file.file_check_frequency)
                    .unwrap_or(20)
                    .max(1),
            ),
            shim_path: flags
                .shim_path
                .or(file.shim_path)
                .unwrap_or_else(default_shim_path),
            log_level: flags
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        })
    }

    /// The API socket.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("skiff.sock")
    }
}

/// `--cluster-dns` (an IPv4 address, or `none`) and `--cluster-domain` (a DNS name).
fn cluster_dns(
    dns: Option<String>,
    domain: Option<String>,
    range: crate::proxy::Ipv4Cidr,
) -> Result<(Option<std::net::Ipv4Addr>, String), ConfigError> {
    let dns = match dns {
        None => Some(crate::dns::default_address(range)),
        Some(s) if s.trim().eq_ignore_ascii_case("none") => None,
        Some(s) => Some(s.trim().parse().map_err(|_| ConfigError::Invalid {
            flag: "--cluster-dns",
            message: format!("{s:?}: expected an IPv4 address, or none"),
        })?),
    };
    let domain = domain.unwrap_or_else(|| "cluster.local".into());
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 200 || !domain.split('.').all(label_ok) {
        return Err(ConfigError::Invalid {
            flag: "--cluster-domain",
            message: format!("{domain:?}: expected a DNS name like cluster.local"),
        });
    }
    Ok((dns, domain))
}

/// The kubelet's validation: a positive size, at least two files.
fn container_log_limits(
    size: Option<&str>,
    files: Option<u32>,
) -> Result<crate::runtime::supervise::LogLimits, ConfigError> {
    let mut limits = crate::runtime::supervise::LogLimits::default();
    if let Some(s) = size {
        limits.max_size = crate::quantity::bytes(s)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| ConfigError::Invalid {
                flag: "--container-log-max-size",
                message: format!("{s:?}: expected a positive quantity like 10Mi"),
            })? as u64;
    }
    if let Some(n) = files {
        if n < 2 {
            return Err(ConfigError::Invalid {
                flag: "--container-log-max-files",
                message: format!("{n}: must be at least 2"),
            });
        }
        limits.max_files = n as usize;
    }
    Ok(limits)
}

/// `HOST:PORT` of the TLS API, or `none`.
fn parse_api_listen(s: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::Invalid {
            flag: "--api-listen",
            message: format!("{s:?}: expected an address like 127.0.0.1:6443, or none"),
        })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .unwrap_or_else(|| "localhost".into())
}

fn parse_cidr(flag: &'static str, s: &str) -> Result<crate::proxy::Ipv4Cidr, ConfigError> {
    s.parse().map_err(|e| ConfigError::Invalid {
        flag,
        message: format!("{s:?}: {e}"),
    })
}

fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let err = |m: &str| ConfigError::Invalid {
        flag: "--service-node-port-range",
        message: format!("{s:?}: {m}"),
    };
    let (a, b) = s.split_once('-').ok_or_else(|| err("expected LOW-HIGH"))?;
    let lo: u16 = a.trim().parse().map_err(|_| err("not a port number"))?;
    let hi: u16 = b.trim().parse().map_err(|_| err("not a port number"))?;
    if lo == 0 || lo > hi {
        return Err(err("LOW must be at least 1 and not above HIGH"));
    }
    Ok((lo, hi))
}

fn default_cni_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        dirs.push(dir);
    }
    dirs.push("/opt/cni/bin".into());
    dirs.push("/usr/lib/cni".into());
    dirs
}

/// Where the kubelet looks for a node-wide docker config: its root dir first, then root's home.
fn default_credential_config(root_dir: &Path) -> PathBuf {
    let in_root = root_dir.join("config.json");
    if in_root.exists() {
        return in_root;
    }
    "/root/.docker/config.json".into()
}

fn default_shim_path() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("skiff-shim");
        if sibling.exists() {
            return sibling;
        }
    }
    "skiff-shim".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example config (scripts/skiff.yaml, every key) loads as is.
    #[test]
    fn the_example_config_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/skiff.yaml");
        let c = Config::load(Flags::parse_from(["skiffd", "--config", path])).unwrap();
        assert_eq!(c.iptables_sync_period, Duration::from_secs(30));
        assert!(c.etcd.is_none());
        assert!(!c.seccomp_default);
        let c = Config::load(Flags::parse_from([
            "skiffd",
            "--config",
            path,
            "--seccomp-default",
        ]))
        .unwrap();
        assert!(c.seccomp_default);
    }

    #[test]
    fn durations_and_etcd_settings() {
        let d = |s| parse_duration("--x", s);
        assert_eq!(d("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(d("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(d("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(d("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(d("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "0s", "-1s", "5x", "s"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        let load = |args: &[&str]| Config::load(Flags::parse_from([&["skiffd"], args].concat()));
        let c = load(&[]).unwrap();
        assert!(c.etcd.is_none());
        assert_eq!(c.iptables_sync_period, Duration::from_secs(30));
        let c = load(&[
            "--etcd-endpoints",
            "http://10.0.0.1:2379,http://10.0.0.2:2379",
            "--etcd-prefix",
            "/lab/",
            "--subnet-lease-ttl",
            "5",
        ])
        .unwrap();
        let e = c.etcd.unwrap();
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.prefix, "/lab");
        assert_eq!(e.subnet_lease_ttl, Duration::from_secs(5));
        let err = load(&["--etcd-endpoints", "http://a:1/x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--etcd-endpoints"), "{err}");
        let err = load(&["--etcd-endpoints", "http://a:1", "--etcd-prefix", "skiff"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--etcd-prefix"), "{err}");
        let err = load(&[
            "--etcd-endpoints",
            "https://a:1",
            "--etcd-certfile",
            "/c.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--etcd-keyfile"), "{err}");
    }

    #[test]
    fn cluster_dns_settings() {
        let load = |args: &[&str]| Config::load(Flags::parse_from([&["skiffd"], args].concat()));
        let c = load(&[]).unwrap();
        assert_eq!(c.cluster_dns, Some("10.96.0.10".parse().unwrap()));
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(c.cluster_dns_rate_limit, 2000);
        let c = load(&["--cluster-dns-rate-limit", "0"]).unwrap();
        assert_eq!(c.cluster_dns_rate_limit, 0);
        let c = load(&["--service-cluster-ip-range", "10.100.0.0/16"]).unwrap();
        assert_eq!(c.cluster_dns, Some("10.100.0.10".parse().unwrap()));
        let c = load(&["--cluster-dns", "none", "--cluster-domain", "Corp.Example."]).unwrap();
        assert_eq!(
            (c.cluster_dns, c.cluster_domain.as_str()),
            (None, "corp.example")
        );
        let err = load(&["--cluster-dns", "dns.local"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cluster-dns"), "{err}");
        let err = load(&["--cluster-domain", "a..b"]).unwrap_err().to_string();
        assert!(err.contains("--cluster-domain"), "{err}");
    }

    #[test]
    fn container_log_rotation_settings() {
        let load = |args: &[&str]| Config::load(Flags::parse_from([&["skiffd"], args].concat()));
        let c = load(&[]).unwrap();
        assert_eq!(
            (c.container_log.max_size, c.container_log.max_files),
            (10 << 20, 5)
        );
        let c = load(&[
            "--container-log-max-size",
            "64Ki",
            "--container-log-max-files",
            "2",
        ])
        .unwrap();
        assert_eq!(
            (c.container_log.max_size, c.container_log.max_files),
            (65536, 2)
        );
        let err = load(&["--container-log-max-files", "1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--container-log-max-files"), "{err}");
        let err = load(&["--container-log-max-size", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--container-log-max-size"), "{err}");
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        std::fs::write(
            &cfg,
            "nodeName: from-file\nrootDir: /var/lib/x\nfileCheckFrequency: 5\n",
        )
        .unwrap();
        let flags = Flags::parse_from([
            "skiffd",
            "--config",
            cfg.to_str().unwrap(),
            "--node-name",
            "from-flag",
        ]);
        let c = Config::load(flags).unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(c.pod_manifest_path, PathBuf::from("/etc/skiff/manifests"));
        assert_eq!(c.run_dir, PathBuf::from("/run/skiff"));
        assert_eq!(c.file_check_frequency, Duration::from_secs(5));
    }

    #[test]
    fn image_flags_and_gc_threshold_validation() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let flags = Flags::parse_from(["skiffd", "--root-dir", root.to_str().unwrap()]);
        let c = Config::load(flags).unwrap();
        assert_eq!(
            (c.image_gc_high_threshold, c.image_gc_low_threshold),
            (85, 80)
        );
        assert_eq!(
            c.registries_config,
            PathBuf::from("/etc/skiff/registries.toml")
        );
        assert_eq!(
            c.image_credential_config,
            PathBuf::from("/root/.docker/config.json")
        );
        std::fs::write(root.join("config.json"), "{}").unwrap();
        let flags = Flags::parse_from(["skiffd", "--root-dir", root.to_str().unwrap()]);
        assert_eq!(
            Config::load(flags).unwrap().image_credential_config,
            root.join("config.json")
        );
        let flags = Flags::parse_from([
            "skiffd",
            "--image-gc-high-threshold",
            "70",
            "--image-gc-low-threshold",
            "75",
        ]);
        let err = Config::load(flags).unwrap_err().to_string();
        assert!(err.contains("75") && err.contains("70"), "{err}");
    }

    #[test]
    fn unknown_config_key_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        std::fs::write(&cfg, "nodeNme: typo\n").unwrap();
        let flags = Flags::parse_from(["skiffd", "--config", cfg.to_str().unwrap()]);
        let err = Config::load(flags).unwrap_err().to_string();
        assert!(err.contains("c.yaml") && err.contains("nodeNme"), "{err}");
    }
}
