//! The `skiff get nodes` table.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;

const ROLE_LABEL_PREFIX: &str = "node-role.kubernetes.io/";

/// The STATUS column: `Ready`, `NotReady` or `Unknown`, plus `SchedulingDisabled`.
pub fn node_status(node: &Node) -> String {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let mut status = match ready {
        Some(c) if c.status == "True" => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// The ROLES column: from `node-role.kubernetes.io/<role>` labels, `<none>` without any.
pub fn node_roles(node: &Node) -> String {
    let roles: Vec<&str> = node
        .metadata
        .labels
        .iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix(ROLE_LABEL_PREFIX))
        .filter(|r| !r.is_empty())
        .collect();
    if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    }
}

/// Renders the `skiff get nodes` table; `wide` adds kubectl's INTERNAL-IP, EXTERNAL-IP,
/// OS-IMAGE, KERNEL-VERSION and CONTAINER-RUNTIME columns.
pub fn nodes_table(nodes: &[Node], now: Timestamp, wide: bool) -> String {
    super::super::table::render(&super::super::table::nodes(nodes, now), false, wide)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::cli::print::pods::tests::{ago, now};

    pub(crate) fn node(name: &str, ready: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(ago(3 * 86400)),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions: ready.map(|r| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: r.into(),
                        reason: Some("SkiffReady".into()),
                        message: Some("skiffd is posting ready status".into()),
                        last_heartbeat_time: Some(ago(5)),
                        last_transition_time: Some(ago(3600)),
                    }]
                }),
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.168.1.10".into(),
                }]),
                capacity: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity("2".into())),
                    ("memory".to_owned(), Quantity("4020220Ki".into())),
                ])),
                node_info: Some(NodeSystemInfo {
                    kubelet_version: "skiff-v0.1.0".into(),
                    kernel_version: "6.8.0".into(),
                    operating_system: "linux".into(),
                    architecture: "amd64".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn table() {
        let mut worker = node("node-b", Some("False"));
        worker.metadata.labels = Some(BTreeMap::from([(
            "node-role.kubernetes.io/worker".to_owned(),
            String::new(),
        )]));
        let nodes = [node("node1", Some("True")), worker, node("node-c", None)];
        assert_eq!(
            nodes_table(&nodes, now(), false),
            "NAME     STATUS     ROLES    AGE   VERSION\n\
             node1    Ready      <none>   3d    skiff-v0.1.0\n\
             node-b   NotReady   worker   3d    skiff-v0.1.0\n\
             node-c   Unknown    <none>   3d    skiff-v0.1.0\n"
        );
        let wide = nodes_table(&nodes[..1], now(), true);
        let mut lines = wide.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "STATUS",
                "ROLES",
                "AGE",
                "VERSION",
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME"
            ]
        );
        let row = lines.next().unwrap();
        assert!(
            row.contains("192.168.1.10") && row.contains("<none>") && row.contains("6.8.0"),
            "{row}"
        );
    }
}
