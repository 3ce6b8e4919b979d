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

fn node(s: &Shared) -> Value {
    let (kernel, arch) = uname();
    let arch = match arch.as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let now = jiff::Timestamp::now().to_string();
    let started = s.started.to_string();
    let name = s.store.node_name().to_string();
    let capacity = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_kib()), "pods": "110"});
    let cond = |t: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": started})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "creationTimestamp": started,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
            }
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "skiffd is posting ready status"),
            ],
            "addresses": [{"type": "Hostname", "address": name}],
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

pub async fn list(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": ""}, "items": [node(&s)]}))
}

pub async fn get_one(State(s): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    if name != s.store.node_name() {
        return Err(ApiError::not_found(format!("nodes \"{name}\" not found")));
    }
    Ok(Json(node(&s)))
}

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION")),
        "platform": "linux",
    }))
}
