//! This node as a Kubernetes `Node`, and the version endpoint.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ApiError, Shared};

fn uname() -> (String, String) {
    let u = nix::sys::utsname::uname().ok();
    let kernel = u
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let arch = u
        .as_ref()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    (kernel, arch)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The kubelet's pressure conditions with its default hard eviction
/// thresholds: memory.available < 100Mi, nodefs.available < 10% (of the
/// filesystem holding the root dir), and PIDs over 90% of pid_max.
pub fn pressure_conditions(
    root: &std::path::Path,
) -> Vec<(&'static str, bool, &'static str, String)> {
    let avail_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(u64::MAX);
    let memory = avail_kib < 100 * 1024;
    let disk = nix::sys::statvfs::statvfs(root)
        .map(|st| {
            let total = st.blocks() as f64;
            total > 0.0 && (st.blocks_available() as f64) / total < 0.10
        })
        .unwrap_or(false);
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let procs = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    let pids = procs * 10 > pid_max * 9;
    vec![
        (
            "MemoryPressure",
            memory,
            if memory {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            if memory {
                "memory.available is below 100Mi".into()
            } else {
                "skiffd has sufficient memory available".into()
            },
        ),
        (
            "DiskPressure",
            disk,
            if disk {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            if disk {
                format!(
                    "less than 10% of the filesystem of {} is free",
                    root.display()
                )
            } else {
                "skiffd has no disk pressure".into()
            },
        ),
        (
            "PIDPressure",
            pids,
            if pids {
                "KubeletHasInsufficientPID"
            } else {
                "KubeletHasSufficientPID"
            },
            if pids {
                "more than 90% of pid_max is in use".into()
            } else {
                "skiffd has sufficient PID available".into()
            },
        ),
    ]
}

/// This node as a Kubernetes `Node`, with what clients set on it (labels, annotations,
/// taints, cordon, their own conditions).
pub fn node(s: &Shared) -> Value {
    super::node_write::overlaid(
        node_without_overlay(s),
        super::node_write::overlay(&s.store).as_ref(),
    )
}

/// This node as skiffd itself reports it (the kubelet's part of the object).
pub fn node_without_overlay(s: &Shared) -> Value {
    let (kernel, arch) = uname();
    let arch = match arch.as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let now = jiff::Timestamp::now().to_string();
    let started = s.started.to_string();
    let name = s.store.node_name().to_string();
    let capacity =
        json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_kib()), "pods": "110"});
    let cond = |t: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": started})
    };
    let (pod_cidr, internal_ip) = s.store.node_network();
    let mut addresses = vec![json!({"type": "Hostname", "address": name})];
    if let Some(ip) = internal_ip {
        addresses.insert(0, json!({"type": "InternalIP", "address": ip}));
    }
    let spec = match pod_cidr {
        Some(c) => json!({"podCIDR": c, "podCIDRs": [c]}),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "creationTimestamp": started,
            "labels": s.store.node_labels(),
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": pressure_conditions(s.runtime.root_dir()).into_iter().map(|(t, on, reason, msg)| {
                cond(t, if on { "True" } else { "False" }, reason, &msg)
            }).chain(s.store.node_conditions().into_iter().map(|(t, c)| {
                json!({"type": t, "status": if c.status { "True" } else { "False" }, "reason": c.reason,
                       "message": c.message, "lastHeartbeatTime": now, "lastTransitionTime": c.since.to_string()})
            })).chain(std::iter::once(
                cond("Ready", "True", "KubeletReady", "skiffd is posting ready status"),
            )).collect::<Vec<_>>(),
            "addresses": addresses,
            "nodeInfo": {
                "machineID": std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim(),
                "systemUUID": "",
                "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim(),
                "kernelVersion": kernel,
                "osImage": os_image(),
                "containerRuntimeVersion": format!("skiff://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            }
        }
    })
}

/// How long another node may go without a heartbeat before its Ready condition turns
/// `Unknown` (the node controller's default --node-monitor-grace-period).
const NODE_MONITOR_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(40);

/// Another node's object as this node sees it: `Ready` turns `Unknown` when its heartbeat is
/// older than [`NODE_MONITOR_GRACE`], like the node controller marks it; it goes from the list
/// when its etcd lease expires.
fn observed(mut n: Value, now: jiff::Timestamp) -> Value {
    if let Some(conds) = n["status"]["conditions"].as_array_mut() {
        for c in conds.iter_mut().filter(|c| c["type"] == "Ready") {
            let beat = c["lastHeartbeatTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            if beat.is_some_and(|b| now.duration_since(b) > NODE_MONITOR_GRACE) {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("skiffd stopped posting node status.");
            }
        }
    }
    n
}

/// This node, then the other nodes of the cluster (multi-host) by name.
pub async fn list(State(s): State<Shared>) -> Json<Value> {
    let mut items = vec![node(&s)];
    let now = jiff::Timestamp::now();
    let mut others: Vec<Value> = s
        .store
        .remote()
        .nodes
        .into_iter()
        .map(|n| observed(n, now))
        .collect();
    others.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    items.extend(others);
    Json(
        json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": ""}, "items": items}),
    )
}

pub async fn get_one(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if name == s.store.node_name() {
        return Ok(Json(node(&s)));
    }
    s.store
        .remote()
        .nodes
        .into_iter()
        .find(|n| n["metadata"]["name"].as_str() == Some(name.as_str()))
        .map(|n| Json(observed(n, jiff::Timestamp::now())))
        .ok_or_else(|| ApiError::not_found(format!("nodes \"{name}\" not found")))
}

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION")),
        "platform": "linux",
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_silent_node_turns_unknown() {
        let now: jiff::Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let n = |beat: &str| serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": beat}]}});
        let fresh = super::observed(n("2026-11-26T09:59:50Z"), now);
        assert_eq!(fresh["status"]["conditions"][0]["status"], "True");
        let stale = super::observed(n("2026-11-26T09:59:00Z"), now);
        assert_eq!(stale["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(
            stale["status"]["conditions"][0]["reason"],
            "NodeStatusUnknown"
        );
    }

    #[test]
    fn pressure_conditions_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let conds = super::pressure_conditions(dir.path());
        let types: Vec<&str> = conds.iter().map(|c| c.0).collect();
        assert_eq!(types, vec!["MemoryPressure", "DiskPressure", "PIDPressure"]);
        // This test machine is not out of memory or PIDs.
        assert!(!conds[0].1 && !conds[2].1, "{conds:?}");
    }
}
