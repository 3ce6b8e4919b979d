//! This node's capacity, allocatable resources and labels.

use std::sync::OnceLock;

/// Memory kept back from pods, like the kubelet's default hard eviction threshold.
pub const RESERVED_MEMORY: i64 = 100 << 20;

/// (cpu millicores, memory bytes) of the machine.
pub fn capacity() -> (i64, i64) {
    static CAP: OnceLock<(i64, i64)> = OnceLock::new();
    *CAP.get_or_init(|| {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64;
        let kib: i64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        (cpus * 1000, kib * 1024)
    })
}

/// What pods may request in total.
pub fn allocatable() -> (i64, i64) {
    let (cpu, mem) = capacity();
    (cpu, (mem - RESERVED_MEMORY).max(0))
}

/// The architecture as Go (and so Kubernetes) names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}

/// The labels the kubelet always puts on its Node.
pub fn well_known_labels(node_name: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", node_name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", go_arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", go_arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Labels in the `kubernetes.io` and `k8s.io` namespaces a kubelet may set on itself
/// (the rest are the control plane's, and the kubelet refuses them).
const KUBELET_LABELS: [&str; 12] = [
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "node.kubernetes.io/exclude-from-external-load-balancers",
];

/// Checks `--node-labels` as the kubelet does: valid label keys and values, and no label in
/// the `kubernetes.io`/`k8s.io` namespaces but those a kubelet may set.
pub fn check_node_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let mut forbidden = Vec::new();
    for (k, v) in labels {
        check_label_key(k).map_err(|e| format!("invalid node label key {k:?}: {e}"))?;
        if !v.is_empty() {
            check_label_name(v)
                .map_err(|e| format!("invalid value {v:?} of node label {k:?}: {e}"))?;
        }
        let domain = k.split_once('/').map(|(d, _)| d).unwrap_or("");
        let restricted = ["kubernetes.io", "k8s.io"]
            .iter()
            .any(|ns| domain == *ns || domain.ends_with(&format!(".{ns}")));
        let allowed = KUBELET_LABELS.contains(&k.as_str())
            || ["kubelet.kubernetes.io", "node.kubernetes.io"]
                .iter()
                .any(|ns| domain == *ns || domain.ends_with(&format!(".{ns}")));
        if restricted && !allowed {
            forbidden.push(k.clone());
        }
    }
    if !forbidden.is_empty() {
        return Err(format!(
            "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: {forbidden:?}; --node-labels in the 'kubernetes.io' namespace must begin with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io) or be in the specifically allowed set"
        ));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        crate::kube::validation::check_dns1123_subdomain(p)
            .map_err(|e| format!("prefix part {e}"))?;
    }
    check_label_name(name)
}

/// A label name or value: at most 63 characters, alphanumerics, `-`, `_` and `.`, starting
/// and ending with an alphanumeric.
fn check_label_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("must be 63 characters or less, beginning and ending with an alphanumeric character ([a-z0-9A-Z]) with dashes (-), underscores (_), dots (.), and alphanumerics between".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_labels_are_checked_as_the_kubelet_does() {
        let ok = labels(&[
            ("disktype", "ssd"),
            ("example.com/rack", "r1"),
            ("node.kubernetes.io/pool", "a"),
            ("topology.kubernetes.io/zone", "z1"),
            ("empty", ""),
        ]);
        assert_eq!(check_node_labels(&ok), Ok(()));
        let e = check_node_labels(&labels(&[("node-role.kubernetes.io/master", "")])).unwrap_err();
        assert!(
            e.contains("unknown 'kubernetes.io' or 'k8s.io' labels")
                && e.contains("node-role.kubernetes.io/master"),
            "{e}"
        );
        assert!(check_node_labels(&labels(&[("bad key", "x")])).is_err());
        assert!(check_node_labels(&labels(&[("k", "-x")])).is_err());
        assert!(check_node_labels(&labels(&[("Bad_Prefix/k", "x")])).is_err());
        assert_eq!(well_known_labels("n1")["kubernetes.io/hostname"], "n1");
    }
}
