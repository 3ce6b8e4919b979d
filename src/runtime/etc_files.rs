//! The pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, written
//! once per pod and bind-mounted into each of its containers, like the kubelet.

use std::fs;
use std::io;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

/// Size of the tmpfs the three files live on: a container can write to them, and they are
/// outside its writable layer, so this bounds what it can put there (they are also counted
/// in the pod's ephemeral storage, see `EphemeralUsage::pod_files`).
pub const SIZE_LIMIT: i64 = 64 << 20;

/// The cluster domain used for pod FQDNs when none is configured.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The node's DNS settings as the kubelet takes them: `--cluster-dns`, `--cluster-domain`,
/// `--resolv-conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// The cluster DNS address pods with `ClusterFirst` get; `None`: they get the node's.
    pub cluster_dns: Option<String>,
    /// The cluster domain.
    pub domain: String,
    /// The node's resolv.conf.
    pub resolv_conf: std::path::PathBuf,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            cluster_dns: None,
            domain: CLUSTER_DOMAIN.into(),
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }
}

static DNS: std::sync::OnceLock<DnsSettings> = std::sync::OnceLock::new();

/// Sets the node's DNS settings, once, at skiffd's start (before any pod is set up).
pub fn set_dns(settings: DnsSettings) {
    let _ = DNS.set(settings);
}

fn dns() -> DnsSettings {
    DNS.get().cloned().unwrap_or_default()
}

/// Writes the three files into `dir`. `pod_ip` adds the pod's own entry.
///
/// Each file is rewritten in place (truncated, same inode), never replaced: containers
/// bind-mount them as files, and a bind mount keeps pointing at the old inode.
pub fn write(dir: &Path, pod: &Pod, pod_ip: Option<&str>) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("hostname"), format!("{}\n", hostname_of(pod)))?;
    write_hosts(dir, pod, pod_ip)?;
    let dns = dns();
    let host_resolv = fs::read_to_string(&dns.resolv_conf).unwrap_or_default();
    fs::write(
        dir.join("resolv.conf"),
        resolv_conf(pod, &host_resolv, &dns),
    )?;
    Ok(())
}

/// Rewrites only `dir/hosts`, in place: how the pod's own entry is added once its IP is
/// known, after its first container was created with the file bind-mounted (see
/// `Runtime::create_sandbox_overlapped`).
pub fn write_hosts(dir: &Path, pod: &Pod, pod_ip: Option<&str>) -> io::Result<()> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let text = if host_network {
        let node = fs::read_to_string("/etc/hosts").unwrap_or_default();
        host_network_hosts(pod, &node)
    } else {
        hosts(pod, &hostname_of(pod), pod_ip)
    };
    // `fs::write` opens with O_TRUNC: the inode stays, as the bind mounts need.
    fs::write(dir.join("hosts"), text)
}

/// The pod's hostname as its containers see it.
pub fn hostname_of(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        // hostNetwork pods share the node's UTS name and hosts file, as on a kubelet.
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or(name)
    } else {
        spec.and_then(|s| s.hostname.clone())
            .unwrap_or(name)
            .chars()
            .take(63)
            .collect()
    }
}

/// The kubelet's managed hosts file, with `hostAliases`.
pub fn hosts(pod: &Pod, hostname: &str, pod_ip: Option<&str>) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => out.push_str(&format!(
                "{ip}\t{hostname}.{sub}.{ns}.svc.{}\t{hostname}\n",
                dns().domain
            )),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    push_aliases(&mut out, pod);
    out
}

/// A `hostNetwork` pod's hosts file: the node's, plus `hostAliases`.
pub fn host_network_hosts(pod: &Pod, node_hosts: &str) -> String {
    let mut out = node_hosts.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    push_aliases(&mut out, pod);
    out
}

fn push_aliases(out: &mut String, pod: &Pod) {
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
}

/// resolv.conf from `dnsPolicy` and `dnsConfig`, by the kubelet's rules (`GetPodDNS`):
/// - `ClusterFirst` (the default; for a `hostNetwork` pod only as `ClusterFirstWithHostNet`):
///   `nameserver <cluster-dns>`, `search <ns>.svc.<domain> svc.<domain> <domain>` and the
///   node's search domains, `options ndots:5`. Without a cluster DNS it falls back to
///   `Default`, as the kubelet does.
/// - `Default` (and `ClusterFirst` on `hostNetwork`): the node's resolv.conf.
/// - `None`: nothing but `dnsConfig`.
///
/// `dnsConfig` is then merged in: nameservers and searches appended, options replacing
/// those of the same name; duplicates dropped, at most 3 nameservers and 32 search domains.
pub fn resolv_conf(pod: &Pod, host: &str, dns: &DnsSettings) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .dns_policy
        .clone()
        .unwrap_or_else(|| "ClusterFirst".into());
    let host_network = spec.host_network.unwrap_or(false);
    let cluster = match policy.as_str() {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let (mut ns, mut search): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    if policy != "None" {
        for line in host.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => ns.extend(f.next().map(String::from)),
                Some("search") => search.extend(f.map(String::from)),
                Some("options") => {
                    for o in f {
                        let (k, v) = match o.split_once(':') {
                            Some((k, v)) => (k.to_string(), Some(v.to_string())),
                            None => (o.to_string(), None),
                        };
                        options.push((k, v));
                    }
                }
                _ => {}
            }
        }
    }
    if let (true, Some(server)) = (cluster, dns.cluster_dns.as_ref()) {
        let pod_ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let d = &dns.domain;
        ns = vec![server.clone()];
        let mut s = vec![format!("{pod_ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
        s.append(&mut search);
        search = s;
        options = vec![("ndots".into(), Some("5".into()))];
    }
    if let Some(cfg) = spec.dns_config {
        ns.extend(cfg.nameservers.unwrap_or_default());
        search.extend(cfg.searches.unwrap_or_default());
        for o in cfg.options.unwrap_or_default() {
            let name = o.name.unwrap_or_default();
            options.retain(|(k, _)| *k != name);
            options.push((name, o.value));
        }
    }
    // The kubelet's omitDuplicates: the first occurrence wins, order kept.
    let mut seen = std::collections::HashSet::new();
    ns.retain(|n| seen.insert(n.clone()));
    ns.truncate(3);
    let mut seen = std::collections::HashSet::new();
    search.retain(|n| seen.insert(n.clone()));
    search.truncate(32);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for n in ns {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}:{v}"),
                None => k,
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn hosts_file_has_pod_entry_and_aliases() {
        let p = pod(
            "metadata: {name: web, namespace: shop}\nspec:\n  subdomain: backend\n  hostAliases: [{ip: 10.1.2.3, hostnames: [foo.local, bar.local]}]\n  containers: []",
        );
        let h = hosts(&p, "web", Some("10.244.0.7"));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(
            h.contains("10.244.0.7\tweb.backend.shop.svc.cluster.local\tweb\n"),
            "{h}"
        );
        assert!(h.contains("10.1.2.3\tfoo.local\tbar.local\n"), "{h}");
    }

    #[test]
    fn host_network_pods_get_the_node_hosts_file_and_aliases() {
        let p = pod(
            "metadata: {name: web}\nspec:\n  hostNetwork: true\n  hostAliases: [{ip: 10.9.9.9, hostnames: [x.local]}]\n  containers: []",
        );
        let h = host_network_hosts(&p, "127.0.0.1 localhost\n192.168.1.5 node1");
        assert_eq!(
            h,
            "127.0.0.1 localhost\n192.168.1.5 node1\n\n# Entries added by HostAliases.\n10.9.9.9\tx.local\n"
        );
    }

    #[test]
    fn hosts_is_rewritten_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = pod("metadata: {name: web, namespace: shop}\nspec:\n  containers: []");
        write(dir.path(), &p, None).unwrap();
        let before = fs::metadata(dir.path().join("hosts")).unwrap().ino();
        assert!(
            !fs::read_to_string(dir.path().join("hosts"))
                .unwrap()
                .contains("\tweb\n")
        );
        write_hosts(dir.path(), &p, Some("10.244.0.7")).unwrap();
        // Same inode: a bind mount of the old file sees the new content.
        assert_eq!(
            fs::metadata(dir.path().join("hosts")).unwrap().ino(),
            before
        );
        assert!(
            fs::read_to_string(dir.path().join("hosts"))
                .unwrap()
                .contains("10.244.0.7\tweb\n")
        );
    }

    #[test]
    fn resolv_conf_policies() {
        let host = "nameserver 1.1.1.1\nsearch example.com\noptions ndots:2\n";
        let no_cluster_dns = DnsSettings::default();
        let resolv_conf = |p: &Pod, host: &str| super::resolv_conf(p, host, &no_cluster_dns);
        let p = pod("spec: {containers: []}");
        assert_eq!(
            resolv_conf(&p, host),
            "search example.com\nnameserver 1.1.1.1\noptions ndots:2\n"
        );
        let p = pod(
            "spec:\n  dnsPolicy: None\n  dnsConfig: {nameservers: [9.9.9.9], searches: [a.b], options: [{name: ndots, value: '5'}, {name: edns0}]}\n  containers: []",
        );
        assert_eq!(
            resolv_conf(&p, host),
            "search a.b\nnameserver 9.9.9.9\noptions ndots:5 edns0\n"
        );
        let p = pod(
            "spec:\n  dnsConfig: {nameservers: [8.8.8.8, 1.1.1.1], searches: [x.y, example.com]}\n  containers: []",
        );
        assert_eq!(
            resolv_conf(&p, host),
            "search example.com x.y\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:2\n"
        );
        let p = pod("spec:\n  dnsConfig: {options: [{name: ndots, value: '1'}]}\n  containers: []");
        assert!(resolv_conf(&p, host).contains("options ndots:1\n"));
    }

    #[test]
    fn resolv_conf_with_cluster_dns() {
        let host = "nameserver 127.0.0.53\nsearch corp.example\noptions edns0 trust-ad\n";
        let dns = DnsSettings {
            cluster_dns: Some("10.96.0.10".into()),
            domain: "cluster.local".into(),
            resolv_conf: "/x".into(),
        };
        // ClusterFirst (the default): the cluster DNS, its search path, ndots:5.
        let p = pod("metadata: {name: web, namespace: shop}\nspec: {containers: []}");
        assert_eq!(
            resolv_conf(&p, host, &dns),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        // Without a namespace: default.
        let p = pod("metadata: {name: web}\nspec: {dnsPolicy: ClusterFirst, containers: []}");
        assert!(resolv_conf(&p, host, &dns).starts_with("search default.svc.cluster.local "));
        // hostNetwork with ClusterFirst keeps the node's resolver, as the kubelet does.
        let p =
            pod("metadata: {name: h, namespace: shop}\nspec: {hostNetwork: true, containers: []}");
        assert_eq!(
            resolv_conf(&p, host, &dns),
            "search corp.example\nnameserver 127.0.0.53\noptions edns0 trust-ad\n"
        );
        // ... ClusterFirstWithHostNet gives it the cluster DNS.
        let p = pod(
            "metadata: {name: h, namespace: shop}\nspec: {hostNetwork: true, dnsPolicy: ClusterFirstWithHostNet, containers: []}",
        );
        assert!(resolv_conf(&p, host, &dns).contains("nameserver 10.96.0.10\n"));
        // ClusterFirstWithHostNet on a pod network pod: the same as ClusterFirst.
        let p = pod(
            "metadata: {name: w, namespace: shop}\nspec: {dnsPolicy: ClusterFirstWithHostNet, containers: []}",
        );
        assert!(resolv_conf(&p, host, &dns).contains("nameserver 10.96.0.10\n"));
        // Default: the node's.
        let p =
            pod("metadata: {name: d, namespace: shop}\nspec: {dnsPolicy: Default, containers: []}");
        assert_eq!(
            resolv_conf(&p, host, &dns),
            "search corp.example\nnameserver 127.0.0.53\noptions edns0 trust-ad\n"
        );
        // dnsConfig merges into ClusterFirst: servers and searches appended, options by name.
        let p = pod(
            "metadata: {name: c, namespace: shop}\nspec:\n  dnsConfig: {nameservers: [1.1.1.1], searches: [x.y], options: [{name: ndots, value: '2'}, {name: edns0}]}\n  containers: []",
        );
        assert_eq!(
            resolv_conf(&p, host, &dns),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example x.y\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
        // None: only dnsConfig.
        let p = pod(
            "metadata: {name: n, namespace: shop}\nspec:\n  dnsPolicy: None\n  dnsConfig: {nameservers: [9.9.9.9]}\n  containers: []",
        );
        assert_eq!(resolv_conf(&p, host, &dns), "nameserver 9.9.9.9\n");
        // Another cluster domain.
        let other = DnsSettings {
            domain: "k8s.corp".into(),
            ..dns.clone()
        };
        let p = pod("metadata: {name: web, namespace: a}\nspec: {containers: []}");
        assert!(
            resolv_conf(&p, "", &other)
                .starts_with("search a.svc.k8s.corp svc.k8s.corp k8s.corp\n")
        );
    }
}
