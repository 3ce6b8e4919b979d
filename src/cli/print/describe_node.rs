//! `skiff describe node`: a short form of kubectl's `describeNode`.

use std::collections::BTreeMap;
use std::fmt::Write;

use jiff::tz::TimeZone;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::describe_pod::{annotations_multiline, labels_multiline};
use super::nodes::node_roles;
use super::ts;
use crate::cli::humanize::rfc1123z_in;
use crate::cli::tabwriter::{self, KUBECTL_DESCRIBE};

/// Renders name, roles, labels, conditions, addresses, capacity, allocatable and system info.
pub fn describe_node(node: &Node, tz: &TimeZone) -> String {
    let mut w = String::new();
    let meta = &node.metadata;
    let status = node.status.clone().unwrap_or_default();
    let time = |t| ts(t).map(|t| rfc1123z_in(t, tz)).unwrap_or_default();

    let _ = writeln!(w, "Name:\t{}", meta.name.as_deref().unwrap_or_default());
    let _ = writeln!(w, "Roles:\t{}", node_roles(node));
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "Annotations", meta.annotations.as_ref());
    let _ = writeln!(
        w,
        "CreationTimestamp:\t{}",
        time(meta.creation_timestamp.as_ref())
    );
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let _ = writeln!(w, "Unschedulable:\t{unschedulable}");

    match status.conditions.as_deref().filter(|c| !c.is_empty()) {
        None => w.push_str("Conditions:\t<none>\n"),
        Some(conds) => {
            w.push_str("Conditions:\n  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n");
            w.push_str("  ----\t------\t-----------------\t------------------\t------\t-------\n");
            for c in conds {
                let _ = writeln!(
                    w,
                    "  {} \t{} \t{} \t{} \t{} \t{}",
                    c.type_,
                    c.status,
                    time(c.last_heartbeat_time.as_ref()),
                    time(c.last_transition_time.as_ref()),
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default(),
                );
            }
        }
    }
    match status.addresses.as_deref().filter(|a| !a.is_empty()) {
        None => w.push_str("Addresses:\t<none>\n"),
        Some(addrs) => {
            w.push_str("Addresses:\n");
            for a in addrs {
                let _ = writeln!(w, "  {}:\t{}", a.type_, a.address);
            }
        }
    }
    resource_list(&mut w, "Capacity", status.capacity.as_ref());
    resource_list(&mut w, "Allocatable", status.allocatable.as_ref());
    if let Some(info) = &status.node_info {
        w.push_str("System Info:\n");
        for (k, v) in [
            ("Machine ID", &info.machine_id),
            ("System UUID", &info.system_uuid),
            ("Boot ID", &info.boot_id),
            ("Kernel Version", &info.kernel_version),
            ("OS Image", &info.os_image),
            ("Operating System", &info.operating_system),
            ("Architecture", &info.architecture),
            ("Container Runtime Version", &info.container_runtime_version),
            ("Kubelet Version", &info.kubelet_version),
            ("Kube-Proxy Version", &info.kube_proxy_version),
        ] {
            let _ = writeln!(w, "  {k}:\t{v}");
        }
    }
    if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
        let _ = writeln!(w, "PodCIDR:\t{cidr}");
    }
    tabwriter::align(&w, KUBECTL_DESCRIBE)
}

fn resource_list(w: &mut String, title: &str, list: Option<&BTreeMap<String, Quantity>>) {
    match list.filter(|l| !l.is_empty()) {
        None => {
            let _ = writeln!(w, "{title}:\t<none>");
        }
        Some(list) => {
            let _ = writeln!(w, "{title}:");
            for (k, q) in list {
                let _ = writeln!(w, "  {k}:\t{}", q.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::print::nodes::tests::node;

    #[test]
    fn describe() {
        let text = describe_node(&node("node1", Some("True")), &TimeZone::UTC);
        let expected = "\
Name:               node1
Roles:              <none>
Labels:             <none>
Annotations:        <none>
CreationTimestamp:  Sun, 28 Apr 2024 12:00:00 +0000
Unschedulable:      false
Conditions:
  Type    Status  LastHeartbeatTime                 LastTransitionTime                Reason       Message
  ----    ------  -----------------                 ------------------                ------       -------
  Ready   True    Wed, 01 May 2024 11:59:55 +0000   Wed, 01 May 2024 11:00:00 +0000   SkiffReady   skiffd is posting ready status
Addresses:
  InternalIP:  192.168.1.10
Capacity:
  cpu:        2
  memory:     4020220Ki
Allocatable:  <none>
System Info:
  Machine ID:                 
  System UUID:                
  Boot ID:                    
  Kernel Version:             6.8.0
  OS Image:                   
  Operating System:           linux
  Architecture:               amd64
  Container Runtime Version:  
  Kubelet Version:            skiff-v0.1.0
  Kube-Proxy Version:         
";
        assert_eq!(text, expected, "\n{text}");
    }
}
