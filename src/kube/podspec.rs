//! The apiserver's validation of the pod spec parts the kubelet also acts on: the required
//! node affinity and extended resources (which the kubelet's admission refuses, see
//! `pod::admission`).

use k8s_openapi::api::core::v1::{Container, NodeSelectorRequirement, Pod};

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
