//! Multi-host (issue 11): the API's gate for writes of cluster objects. The elected leader's
//! store is the cluster's (see `cluster::objects`); a write kept on another node would be taken
//! back by the next mirror pass, so it is refused naming the leader.

use crate::kube::workload::controlled;
use crate::store::Store;

use super::ApiError;
use super::write::Kind;

/// Multi-host: refuses a client's write of a cluster object (a workload, a namespace, a
/// controller's pod) on a node that does not lead the controllers. The leader's store is the
/// cluster's; a write kept on another node would be taken back by the next mirror pass.
pub fn leader_only(
    store: &Store,
    kind: Kind,
    ns: &str,
    name: Option<&str>,
) -> Result<(), ApiError> {
    if !store.clustered() {
        return Ok(());
    }
    let cluster_object = match kind {
        Kind::Workload(_) | Kind::Namespace => true,
        Kind::Pod => name.is_some_and(|n| {
            store
                .api_object(&("pods".into(), ns.into(), n.into()))
                .is_some_and(|v| controlled(&v))
        }),
        _ => false,
    };
    let leader = store.cluster_leader();
    if !cluster_object || leader.as_deref() == Some(store.node_name()) {
        return Ok(());
    }
    let what = match name {
        Some(n) => format!("{} \"{n}\"", kind.plural()),
        None => kind.plural().to_string(),
    };
    let here = store.node_name();
    Err(ApiError::forbidden(match leader {
        Some(l) => format!(
            "{what} is forbidden: node {here} does not run the cluster's controllers; write it through the API of the elected leader, node {l}"
        ),
        None => format!(
            "{what} is forbidden: node {here} does not run the cluster's controllers and no leader is elected yet; try again shortly"
        ),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::manifest::workload::WorkloadKind;

    #[test]
    fn only_the_leader_takes_writes_of_cluster_objects() {
        let store = Store::new("n2");
        let deploy = Kind::Workload(WorkloadKind::Deployment);
        // A single node takes everything.
        assert!(leader_only(&store, deploy, "default", Some("web")).is_ok());
        store.set_clustered(true);
        let e = leader_only(&store, deploy, "default", Some("web")).unwrap_err();
        assert!(
            e.message().contains("no leader is elected yet"),
            "{}",
            e.message()
        );
        store.set_cluster_leader(Some("n1".into()));
        let e = leader_only(&store, deploy, "default", Some("web")).unwrap_err();
        assert_eq!(e.reason(), "Forbidden");
        assert_eq!(
            e.message(),
            "deployments \"web\" is forbidden: node n2 does not run the cluster's controllers; write it through the API of the elected leader, node n1"
        );
        assert!(leader_only(&store, Kind::Namespace, "", None).is_err());
        // A pod nobody controls, a ConfigMap: this node's own.
        assert!(leader_only(&store, Kind::Pod, "default", Some("mine")).is_ok());
        assert!(leader_only(&store, Kind::ConfigMap, "default", Some("c")).is_ok());
        let owned = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-x", "namespace": "default", "uid": "u1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web", "uid": "rs", "controller": true}]}});
        store
            .put_api_object(("pods".into(), "default".into(), "web-x".into()), owned)
            .unwrap();
        assert!(leader_only(&store, Kind::Pod, "default", Some("web-x")).is_err());
        store.set_cluster_leader(Some("n2".into()));
        assert!(leader_only(&store, deploy, "default", Some("web")).is_ok());
    }
}
