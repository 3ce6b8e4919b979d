//! Multi-host (issue 11): what the store knows of the cluster's pods that run elsewhere.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;

use super::Store;
use crate::kube::workload::controlled;

impl Store {
    /// Multi-host: the controllers' pods of `ns` that do not run on this node (unbound, or bound
    /// to another node), with the status their node published in etcd. Empty on a single node.
    pub fn elsewhere_pods(&self, ns: &str) -> Vec<Pod> {
        if !self.clustered() {
            return Vec::new();
        }
        let here: BTreeSet<String> = self
            .list_pods(Some(ns))
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let remote = self.remote().pods;
        let mut out = Vec::new();
        for ((_, pns, name), v) in self.api_objects("pods") {
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
}
