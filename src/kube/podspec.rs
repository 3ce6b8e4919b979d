//! Pod spec parts the scheduler, the DaemonSet controller and the kubelet's admission
//! (`pod::admission`) all act on, pure: node selection against a node's name and labels, and
//! the apiserver's validation of the required node affinity and of extended resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, NodeSelectorRequirement, NodeSelectorTerm, Pod};

/// Why a pod was refused: the pod's `status.reason` and the part of `status.message`
/// after "Pod was rejected: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

/// The scheduler's (and kubelet's) node selection: every `nodeSelector` label, and one of
/// the required affinity's terms.
pub fn node_affinity(
    pod: &Pod,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), Refusal> {
    let refuse = || Refusal {
        reason: "NodeAffinity".into(),
        message: "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
            .into(),
    };
    let Some(spec) = &pod.spec else { return Ok(()) };
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Err(refuse());
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(sel) = required
        && !sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node_name, labels))
    {
        return Err(refuse());
    }
    Ok(())
}

/// A term matches when all of its expressions and fields do; an empty term matches nothing.
pub fn term_matches(
    t: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            // `metadata.name` is the only node field selectors may use (validated).
            r.key == "metadata.name" && requirement_matches(r, Some(node_name))
        })
}

/// Whether a label (or field) value satisfies one requirement; absent values fail `In`, `Gt`, `Lt`.
pub(crate) fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (
            value.and_then(number),
            values.first().and_then(|x| number(x)),
        ) {
            (Some(have), Some(want)) if r.operator == "Gt" => have > want,
            (Some(have), Some(want)) => have < want,
            _ => false,
        },
        _ => false,
    }
}

/// Validates the required node affinity as the apiserver does; the error names the field.
pub fn validate_node_affinity(pod: &Pod) -> Result<(), String> {
    let Some(sel) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return Ok(());
    };
    let base = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
    if sel.node_selector_terms.is_empty() {
        return Err(format!(
            "{base}: Required value: must have at least one node selector term"
        ));
    }
    for (i, t) in sel.node_selector_terms.iter().enumerate() {
        for (j, r) in t.match_expressions.iter().flatten().enumerate() {
            check_requirement(r, &format!("{base}[{i}].matchExpressions[{j}]"))?;
        }
        for (j, r) in t.match_fields.iter().flatten().enumerate() {
            let f = format!("{base}[{i}].matchFields[{j}]");
            if r.key != "metadata.name" {
                return Err(format!(
                    "{f}.key: Invalid value: {:?}: not a valid field selector key",
                    r.key
                ));
            }
            if !["In", "NotIn"].contains(&r.operator.as_str()) {
                return Err(format!(
                    "{f}.operator: Invalid value: {:?}: not a valid selector operator",
                    r.operator
                ));
            }
            if r.values.as_ref().map_or(0, Vec::len) != 1 {
                return Err(format!(
                    "{f}.values: Required value: must be only one value when `operator` is 'In' or 'NotIn' for node field selector"
                ));
            }
        }
    }
    Ok(())
}

fn check_requirement(r: &NodeSelectorRequirement, f: &str) -> Result<(), String> {
    let n = r.values.as_ref().map_or(0, Vec::len);
    match r.operator.as_str() {
        "In" | "NotIn" if n == 0 => Err(format!(
            "{f}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        )),
        "Exists" | "DoesNotExist" if n > 0 => Err(format!(
            "{f}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        )),
        "Gt" | "Lt" if n != 1 => Err(format!(
            "{f}.values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'"
        )),
        "Gt" | "Lt"
            if r.values
                .as_ref()
                .is_some_and(|v| v[0].parse::<i64>().is_err()) =>
        {
            Err(format!(
                "{f}.values[0]: Invalid value: {:?}: must be an integer",
                r.values.as_ref().map(|v| v[0].clone()).unwrap_or_default()
            ))
        }
        "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => Ok(()),
        other => Err(format!(
            "{f}.operator: Unsupported value: {other:?}: supported values: \"DoesNotExist\", \"Exists\", \"Gt\", \"In\", \"Lt\", \"NotIn\""
        )),
    }
}

/// Whether `name` is an extended resource (the apiserver's `IsExtendedResourceName`).
pub fn is_extended(name: &str) -> bool {
    let Some((domain, _)) = name.split_once('/') else {
        return false;
    };
    domain != "kubernetes.io"
        && !domain.ends_with(".kubernetes.io")
        && !name.starts_with("requests.")
}

/// Validates extended resources as the apiserver does: whole numbers, a limit always, and
/// a request equal to it (they cannot be overcommitted).
pub fn validate_extended(c: &Container, field: &str) -> Result<(), String> {
    let r = c.resources.clone().unwrap_or_default();
    for (which, m) in [("limits", &r.limits), ("requests", &r.requests)] {
        for (k, q) in m.iter().flatten().filter(|(k, _)| is_extended(k)) {
            if q.0.trim().parse::<u64>().is_err() {
                return Err(format!(
                    "{field}.resources.{which}[{k}]: Invalid value: {:?}: must be an integer",
                    q.0
                ));
            }
        }
    }
    for (k, q) in r.requests.iter().flatten().filter(|(k, _)| is_extended(k)) {
        match r.limits.as_ref().and_then(|l| l.get(k)) {
            None => {
                return Err(format!(
                    "{field}.resources.limits: Required value: Limit must be set for non overcommitable resources"
                ));
            }
            Some(l) if l.0.trim().parse::<u64>().ok() != q.0.trim().parse::<u64>().ok() => {
                return Err(format!(
                    "{field}.resources.requests[{k}]: Invalid value: {:?}: must be equal to {k} limit of {}",
                    q.0, l.0
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
