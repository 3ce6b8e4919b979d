//! The cluster scheduler's decision (issue 11), pure: which node a pod goes to, as
//! kube-scheduler's default profile decides it with the plugins a skiff cluster needs.
//!
//! Filters (a node failing one is out, with the plugin's reason): `NodeUnschedulable`,
//! `NodeAffinity` (nodeSelector and required node affinity, `metadata.name` fields included),
//! `TaintToleration` (untolerated `NoSchedule`/`NoExecute`), `NodeResourcesFit` (CPU, memory
//! and pod count requested vs allocatable minus what is already bound). Scores, summed:
//! preferred node affinity (the weights of the matching terms), spreading (fewer pods of the
//! same owner is better) and least requested (more free CPU and memory is better). Ties go to
//! the node name, so the choice is deterministic.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Taint};

use crate::pod::admission::{node_affinity, term_matches};
use crate::workloads::daemonset::tolerates;

/// CPU (millicores), memory (bytes) and pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    pub allocatable: Resources,
}

/// A pod already bound to a node: what it requests and its controller's UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bound {
    pub node: String,
    pub requests: Resources,
    pub owner: Option<String>,
}

/// The scheduler's answer for a pod that fits nowhere: kube-scheduler's
/// `FailedScheduling` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable(pub String);

/// What a pod requests (the sum of its containers' requests, or limits where a request is
/// missing, as the apiserver defaults them), one pod.
pub fn requests(pod: &Pod) -> Resources {
    let mut r = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let Some(res) = &c.resources else { continue };
        let get = |name: &str| {
            res.requests
                .as_ref()
                .and_then(|m| m.get(name))
                .or_else(|| res.limits.as_ref().and_then(|m| m.get(name)))
                .map(|q| q.0.clone())
        };
        if let Some(cpu) = get("cpu") {
            r.milli_cpu += crate::quantity::millicores(&cpu).unwrap_or(0);
        }
        if let Some(mem) = get("memory") {
            r.memory += crate::quantity::bytes(&mem).unwrap_or(0);
        }
    }
    r
}

/// The UID of a pod's controller (its spreading group).
pub fn owner(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

/// Picks the node for `pod` among `nodes`, given the pods already `bound`.
pub fn schedule(pod: &Pod, nodes: &[Node], bound: &[Bound]) -> Result<String, Unschedulable> {
    let want = requests(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut fit = Vec::new();
    for n in nodes {
        let used = used_on(&n.name, bound);
        match filter(pod, n, want, used) {
            Ok(()) => fit.push((n, used)),
            Err(why) => {
                for w in why {
                    *reasons.entry(w).or_default() += 1;
                }
            }
        }
    }
    if fit.is_empty() {
        return Err(Unschedulable(message(nodes.len(), &reasons)));
    }
    let me = owner(pod);
    let best = fit
        .iter()
        .map(|(n, used)| (score(pod, n, *used, want, me.as_deref(), bound), n))
        .max_by(|(a, na), (b, nb)| a.cmp(b).then_with(|| nb.name.cmp(&na.name)))
        .map(|(_, n)| n.name.clone());
    Ok(best.unwrap_or_default())
}

fn used_on(node: &str, bound: &[Bound]) -> Resources {
    bound
        .iter()
        .filter(|b| b.node == node)
        .fold(Resources::default(), |a, b| Resources {
            milli_cpu: a.milli_cpu + b.requests.milli_cpu,
            memory: a.memory + b.requests.memory,
            pods: a.pods + b.requests.pods,
        })
}

/// Every reason `n` cannot take `pod` (empty: it can).
fn filter(pod: &Pod, n: &Node, want: Resources, used: Resources) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    if n.unschedulable {
        why.push("node(s) were unschedulable".to_string());
    }
    if node_affinity(pod, &n.name, &n.labels).is_err() {
        why.push("node(s) didn't match Pod's node affinity/selector".into());
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    if let Some(t) = n.taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !tolerations.iter().any(|x| tolerates(x, t))
    }) {
        let value = t.value.as_deref().filter(|v| !v.is_empty());
        why.push(match value {
            Some(v) => format!("node(s) had untolerated taint {{{}: {v}}}", t.key),
            None => format!("node(s) had untolerated taint {{{}: }}", t.key),
        });
    }
    let a = n.allocatable;
    if a.pods > 0 && used.pods + want.pods > a.pods {
        why.push("Too many pods".into());
    }
    if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > a.milli_cpu {
        why.push("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > a.memory {
        why.push("Insufficient memory".into());
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// kube-scheduler's message: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't
/// match Pod's node affinity/selector.` (reasons sorted, as its `FitError` sorts them).
fn message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// Higher is better: preferred affinity weights, then spreading, then least requested.
fn score(
    pod: &Pod,
    n: &Node,
    used: Resources,
    want: Resources,
    me: Option<&str>,
    bound: &[Bound],
) -> (i64, i64, i64) {
    let preferred: i64 = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| term_matches(&t.preference, &n.name, &n.labels))
        .map(|t| i64::from(t.weight))
        .sum();
    let same_owner = me.map_or(0, |uid| {
        bound
            .iter()
            .filter(|b| b.node == n.name && b.owner.as_deref() == Some(uid))
            .count() as i64
    });
    let free = |cap: i64, used: i64| {
        if cap <= 0 {
            0
        } else {
            ((cap - used).max(0) * 100) / cap
        }
    };
    let least = free(n.allocatable.milli_cpu, used.milli_cpu + want.milli_cpu)
        + free(n.allocatable.memory, used.memory + want.memory);
    (preferred, -same_owner, least)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Affinity, Container, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
        PreferredSchedulingTerm, ResourceRequirements, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn node(name: &str, cpu: i64) -> Node {
        Node {
            name: name.into(),
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
            allocatable: Resources {
                milli_cpu: cpu,
                memory: 8 << 30,
                pods: 110,
            },
            ..Default::default()
        }
    }

    fn pod(cpu: Option<&str>, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    resources: cpu.map(|c| ResourceRequirements {
                        requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(c.into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn bound(node: &str, cpu: i64, owner: Option<&str>) -> Bound {
        Bound {
            node: node.into(),
            requests: Resources {
                milli_cpu: cpu,
                memory: 0,
                pods: 1,
            },
            owner: owner.map(String::from),
        }
    }

    #[test]
    fn a_replica_set_spreads_over_the_nodes() {
        let nodes = [node("a", 2000), node("b", 2000), node("c", 2000)];
        let mut placed: Vec<Bound> = Vec::new();
        for _ in 0..6 {
            let p = pod(Some("100m"), Some("rs"));
            let n = schedule(&p, &nodes, &placed).unwrap();
            placed.push(bound(&n, 100, Some("rs")));
        }
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for b in &placed {
            *per.entry(b.node.clone()).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn least_requested_wins_between_owners() {
        let nodes = [node("a", 2000), node("b", 2000)];
        let busy = [bound("a", 1500, Some("other"))];
        assert_eq!(
            schedule(&pod(None, Some("rs")), &nodes, &busy).unwrap(),
            "b"
        );
    }

    #[test]
    fn resources_selector_taints_and_cordons_filter_with_the_schedulers_message() {
        let mut a = node("a", 1000);
        a.unschedulable = true;
        let mut b = node("b", 1000);
        b.taints = vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }];
        let c = node("c", 500);
        let nodes = [a, b, c];
        let err = schedule(&pod(Some("600m"), None), &nodes, &[]).unwrap_err();
        assert_eq!(
            err.0,
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were unschedulable."
        );
        // Tolerating the taint makes b fit.
        let mut p = pod(Some("600m"), None);
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert_eq!(schedule(&p, &nodes, &[]).unwrap(), "b");
        // Already-bound requests count against allocatable.
        let full = [bound("b", 500, None)];
        assert!(schedule(&p, &nodes, &full).is_err());
        // nodeSelector.
        let mut p = pod(None, None);
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        let err = schedule(&p, &nodes, &[]).unwrap_err();
        assert!(
            err.0
                .contains("3 node(s) didn't match Pod's node affinity/selector"),
            "{}",
            err.0
        );
        assert_eq!(
            schedule(&pod(None, None), &[], &[]).unwrap_err().0,
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn required_and_preferred_node_affinity() {
        let mut nodes = vec![node("a", 1000), node("b", 1000), node("c", 1000)];
        nodes[2].labels.insert("zone".into(), "z2".into());
        nodes[1].labels.insert("zone".into(), "z1".into());
        let term = |key: &str, v: &str| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: "In".into(),
                values: Some(vec![v.into()]),
            }]),
            ..Default::default()
        };
        let mut p = pod(None, None);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 10,
                        preference: term("zone", "z2"),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(schedule(&p, &nodes, &[]).unwrap(), "c");
        // A DaemonSet pod's metadata.name field term binds it to its node.
        let mut p = pod(None, None);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(
                    k8s_openapi::api::core::v1::NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_fields: Some(vec![NodeSelectorRequirement {
                                key: "metadata.name".into(),
                                operator: "In".into(),
                                values: Some(vec!["b".into()]),
                            }]),
                            ..Default::default()
                        }],
                    },
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(schedule(&p, &nodes, &[]).unwrap(), "b");
    }
}
