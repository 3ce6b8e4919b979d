//! The multi-host control plane (issue 11): with `--etcd-endpoints`, one skiffd elected
//! through an etcd lease ([`leader`]) runs the workload controllers and the scheduler
//! ([`scheduler`]) for the whole cluster; the workload objects and their pods are kept in etcd
//! by the leader and mirrored into every node's store ([`objects`]), so every node's API
//! serves them and each node runs the pods bound to it.

pub mod leader;
pub mod objects;
pub mod scheduler;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::store::Store;

/// Whether an object has a controller owner reference (a controller made it).
pub fn controlled(v: &Value) -> bool {
    v["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["controller"] == true))
}

/// Multi-host: the controllers' pods of `ns` that do not run on this node (unbound, or bound
/// to another node), with the status their node published in etcd. Empty on a single node.
pub fn elsewhere_pods(store: &Store, ns: &str) -> Vec<Pod> {
    if !store.clustered() {
        return Vec::new();
    }
    let here: BTreeSet<String> = store
        .list_pods(Some(ns))
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let remote = store.remote().pods;
    let mut out = Vec::new();
    for ((_, pns, name), v) in store.api_objects("pods") {
        if pns != ns || here.contains(&name) || !controlled(&v) {
            continue;
        }
        let Ok(mut pod) = serde_json::from_value::<Pod>(v) else {
            continue;
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if let Some(r) = remote.iter().find(|r| {
            r.metadata.namespace.as_deref() == Some(ns)
                && r.metadata.name.as_deref() == Some(name.as_str())
                && r.metadata.uid == pod.metadata.uid
                && r.spec.as_ref().and_then(|s| s.node_name.clone()) == node
        }) {
            pod.status = r.status.clone();
        }
        out.push(pod);
    }
    out
}
