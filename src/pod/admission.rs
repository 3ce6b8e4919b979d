//! The kubelet's admission checks that depend on this node: node selection (`nodeSelector`
//! and required node affinity against the Node's labels and name), extended resources the
//! node does not have, and AppArmor on a host without it. A refused pod is `Failed` with
//! the kubelet's reason and message (see [`Refusal`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

/// Moved into [`crate::kube::podspec`] (manifest validation uses them); the old paths stay
/// for existing imports.
pub use crate::kube::podspec::{
    Refusal, is_extended, node_affinity, term_matches, validate_extended, validate_node_affinity,
};
/// Moved into [`crate::runtime::apparmor`], which applies profiles; the old paths stay.
pub use crate::runtime::apparmor::{APPARMOR_ANNOTATION, host_apparmor_enabled};

/// Extended resources (`example.com/dongle`): a name outside the `kubernetes.io` namespace
/// with a domain, which only device plugins provide. skiff has none, so any request of one
/// does not fit: `OutOf<name>`, as the kubelet says when its capacity is 0.
pub fn extended_resources(pod: &Pod) -> Result<(), Refusal> {
    let Some(spec) = &pod.spec else { return Ok(()) };
    // The pod's request per resource: the sum over app containers, or the largest init
    // container's when that is more.
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for c in &spec.containers {
        for (k, v) in extended_requests(c) {
            *want.entry(k).or_default() += v;
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, v) in extended_requests(c) {
            let e = want.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    match want.into_iter().find(|(_, v)| *v > 0) {
        Some((name, requested)) => Err(Refusal {
            reason: format!("OutOf{name}"),
            message: format!(
                "Node didn't have enough resource: {name}, requested: {requested}, used: 0, capacity: 0"
            ),
        }),
        None => Ok(()),
    }
}

/// A container's extended resource requests (a limit alone counts as the request).
fn extended_requests(c: &Container) -> BTreeMap<String, i64> {
    let r = c.resources.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for m in [&r.limits, &r.requests].into_iter().flatten() {
        for (k, q) in m {
            if is_extended(k) {
                out.insert(k.clone(), q.0.trim().parse::<i64>().unwrap_or(1));
            }
        }
    }
    out
}

/// Whether the pod asks for AppArmor at all (the kubelet's `isRequired`): any profile but
/// `Unconfined`, in the pod's or a container's security context or in the beta annotation.
pub fn apparmor_required(pod: &Pod) -> bool {
    let confined = |t: &str| t != "Unconfined";
    let spec = pod.spec.clone().unwrap_or_default();
    if spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        .is_some_and(|p| confined(&p.type_))
    {
        return true;
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    if containers
        .filter_map(|c| c.security_context.as_ref()?.app_armor_profile.as_ref())
        .any(|p| confined(&p.type_))
    {
        return true;
    }
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .any(|(k, v)| k.starts_with(APPARMOR_ANNOTATION) && v != "unconfined")
}

/// The kubelet's AppArmor admission: a pod that asks for a profile is refused on a host
/// without AppArmor rather than run unconfined.
pub fn apparmor(pod: &Pod, host_enabled: bool) -> Result<(), Refusal> {
    if apparmor_required(pod) && !host_enabled {
        return Err(Refusal {
            reason: "AppArmor".into(),
            message: "Cannot enforce AppArmor: AppArmor is not enabled on the host".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::podspec::requirement_matches;
    use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn labels() -> BTreeMap<String, String> {
        [
            ("kubernetes.io/hostname", "n1"),
            ("kubernetes.io/os", "linux"),
            ("disktype", "ssd"),
            ("cores", "8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn expr(op: &str, key: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn requirements_match_as_the_scheduler_does() {
        let l = labels();
        let cases: &[(&str, &str, &[&str], bool)] = &[
            ("In", "disktype", &["ssd", "nvme"], true),
            ("In", "disktype", &["hdd"], false),
            ("In", "missing", &["x"], false),
            ("NotIn", "disktype", &["hdd"], true),
            ("NotIn", "disktype", &["ssd"], false),
            ("NotIn", "missing", &["x"], true),
            ("Exists", "disktype", &[], true),
            ("Exists", "missing", &[], false),
            ("DoesNotExist", "missing", &[], true),
            ("DoesNotExist", "disktype", &[], false),
            ("Gt", "cores", &["4"], true),
            ("Gt", "cores", &["8"], false),
            ("Lt", "cores", &["16"], true),
            ("Lt", "cores", &["8"], false),
            ("Gt", "disktype", &["1"], false),
            ("Gt", "missing", &["1"], false),
            ("Bogus", "disktype", &["ssd"], false),
        ];
        for (op, key, values, want) in cases {
            let r = expr(op, key, values);
            assert_eq!(
                requirement_matches(&r, l.get(*key).map(String::as_str)),
                *want,
                "{op} {key} {values:?}"
            );
        }
    }

    #[test]
    fn terms_are_ored_and_their_parts_anded() {
        let l = labels();
        let term =
            |e: Vec<NodeSelectorRequirement>, f: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
                match_expressions: Some(e),
                match_fields: Some(f),
            };
        let cases = [
            (
                term(
                    vec![
                        expr("In", "disktype", &["ssd"]),
                        expr("Exists", "cores", &[]),
                    ],
                    vec![],
                ),
                true,
            ),
            (
                term(
                    vec![expr("In", "disktype", &["ssd"]), expr("Exists", "gpu", &[])],
                    vec![],
                ),
                false,
            ),
            (
                term(vec![], vec![expr("In", "metadata.name", &["n1"])]),
                true,
            ),
            (
                term(vec![], vec![expr("NotIn", "metadata.name", &["n1"])]),
                false,
            ),
            (
                term(
                    vec![expr("Exists", "cores", &[])],
                    vec![expr("In", "metadata.name", &["n2"])],
                ),
                false,
            ),
            (term(vec![], vec![]), false),
            (
                term(vec![], vec![expr("In", "metadata.namespace", &["n1"])]),
                false,
            ),
        ];
        for (i, (t, want)) in cases.iter().enumerate() {
            assert_eq!(term_matches(t, "n1", &l), *want, "case {i}");
        }
    }

    #[test]
    fn node_selector_and_required_affinity_refuse_with_the_kubelets_message() {
        let l = labels();
        let ok = pod("spec:\n  nodeSelector: {disktype: ssd}\n  containers: []\n");
        assert_eq!(node_affinity(&ok, "n1", &l), Ok(()));
        let bad = pod("spec:\n  nodeSelector: {disktype: hdd}\n  containers: []\n");
        let e = node_affinity(&bad, "n1", &l).unwrap_err();
        assert_eq!(e.reason, "NodeAffinity");
        assert_eq!(
            e.message,
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
        );
        let aff = |terms: &str| {
            pod(&format!(
                "spec:\n  containers: []\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms: {terms}\n"
            ))
        };
        // Second term matches: admitted.
        let p = aff(
            "[{matchExpressions: [{key: disktype, operator: In, values: [hdd]}]}, {matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}]",
        );
        assert_eq!(node_affinity(&p, "n1", &l), Ok(()));
        let p = aff("[{matchExpressions: [{key: disktype, operator: In, values: [hdd]}]}]");
        assert!(node_affinity(&p, "n1", &l).is_err());
        // Preferred affinity never refuses.
        let p = pod(
            "spec:\n  containers: []\n  affinity:\n    nodeAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, preference: {matchExpressions: [{key: disktype, operator: In, values: [hdd]}]}}]\n",
        );
        assert_eq!(node_affinity(&p, "n1", &l), Ok(()));
    }

    #[test]
    fn affinity_validation_names_the_field() {
        let aff = |terms: &str| {
            pod(&format!(
                "spec:\n  containers: []\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms: {terms}\n"
            ))
        };
        let cases = [
            ("[]", "must have at least one node selector term"),
            (
                "[{matchExpressions: [{key: a, operator: In}]}]",
                "matchExpressions[0].values: Required value",
            ),
            (
                "[{matchExpressions: [{key: a, operator: Exists, values: [x]}]}]",
                "may not be specified",
            ),
            (
                "[{matchExpressions: [{key: a, operator: Gt, values: [x]}]}]",
                "must be an integer",
            ),
            (
                "[{matchExpressions: [{key: a, operator: Near, values: [x]}]}]",
                "Unsupported value: \"Near\"",
            ),
            (
                "[{matchFields: [{key: metadata.uid, operator: In, values: [x]}]}]",
                "not a valid field selector key",
            ),
            (
                "[{matchFields: [{key: metadata.name, operator: In, values: [x, y]}]}]",
                "must be only one value",
            ),
        ];
        for (terms, want) in cases {
            let e = validate_node_affinity(&aff(terms)).unwrap_err();
            assert!(e.contains(want), "{terms}: {e}");
        }
        assert_eq!(
            validate_node_affinity(&aff(
                "[{matchFields: [{key: metadata.name, operator: In, values: [n1]}]}]"
            )),
            Ok(())
        );
    }

    #[test]
    fn extended_resources_do_not_fit_and_are_validated() {
        let p = pod(
            "spec:\n  containers: [{name: a, resources: {limits: {example.com/dongle: 2}}}, {name: b, resources: {requests: {cpu: 1}}}]\n",
        );
        let e = extended_resources(&p).unwrap_err();
        assert_eq!(e.reason, "OutOfexample.com/dongle");
        assert_eq!(
            e.message,
            "Node didn't have enough resource: example.com/dongle, requested: 2, used: 0, capacity: 0"
        );
        let p = pod(
            "spec:\n  containers: [{name: a, resources: {limits: {cpu: 1, hugepages-2Mi: 2Mi}}}]\n",
        );
        assert_eq!(extended_resources(&p), Ok(()));
        assert!(is_extended("example.com/dongle") && is_extended("nvidia.com/gpu"));
        for not in [
            "cpu",
            "memory",
            "kubernetes.io/x",
            "node.kubernetes.io/y",
            "hugepages-1Gi",
        ] {
            assert!(!is_extended(not), "{not}");
        }
        let c = |yaml: &str| -> Container { serde_yaml_ng::from_str(yaml).unwrap() };
        let e = validate_extended(
            &c("{name: a, resources: {requests: {example.com/dongle: 1}}}"),
            "spec.containers[0]",
        )
        .unwrap_err();
        assert!(
            e.contains("Limit must be set for non overcommitable resources"),
            "{e}"
        );
        let e = validate_extended(&c("{name: a, resources: {requests: {example.com/dongle: 1}, limits: {example.com/dongle: 2}}}"), "f").unwrap_err();
        assert!(
            e.contains("must be equal to example.com/dongle limit of 2"),
            "{e}"
        );
        let e = validate_extended(
            &c("{name: a, resources: {limits: {example.com/dongle: 500m}}}"),
            "f",
        )
        .unwrap_err();
        assert!(e.contains("must be an integer"), "{e}");
    }

    #[test]
    fn apparmor_is_required_unless_unconfined() {
        let cases = [
            (
                "metadata: {annotations: {container.apparmor.security.beta.kubernetes.io/c: runtime/default}}\nspec: {containers: [{name: c}]}",
                true,
            ),
            (
                "metadata: {annotations: {container.apparmor.security.beta.kubernetes.io/c: unconfined}}\nspec: {containers: [{name: c}]}",
                false,
            ),
            (
                "spec: {securityContext: {appArmorProfile: {type: RuntimeDefault}}, containers: [{name: c}]}",
                true,
            ),
            (
                "spec: {containers: [{name: c, securityContext: {appArmorProfile: {type: Localhost, localhostProfile: k8s-deny}}}]}",
                true,
            ),
            (
                "spec: {containers: [{name: c, securityContext: {appArmorProfile: {type: Unconfined}}}]}",
                false,
            ),
            ("spec: {containers: [{name: c}]}", false),
        ];
        for (yaml, want) in cases {
            assert_eq!(apparmor_required(&pod(yaml)), want, "{yaml}");
            let refused = apparmor(&pod(yaml), false).is_err();
            assert_eq!(refused, want, "{yaml}");
            assert_eq!(apparmor(&pod(yaml), true), Ok(()));
        }
        let e = apparmor(&pod(cases[0].0), false).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.message.as_str()),
            (
                "AppArmor",
                "Cannot enforce AppArmor: AppArmor is not enabled on the host"
            )
        );
    }
}
