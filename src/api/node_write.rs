//! Writes to this node's `Node` object (issue 10): labels, annotations, `spec.taints` and
//! `spec.unschedulable` through PATCH and PUT (`kubectl label/annotate/taint/cordon node`),
//! and conditions that clients add through `nodes/status`. What clients set is kept as one
//! object of the API's store (`<root-dir>/objects/nodes/<node>.json`, written atomically) laid
//! over the node skiffd builds: the kubelet's own labels and conditions stay skiffd's.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Taint;
use serde_json::{Map, Value, json};

use super::write::{apply_patch, dry_run, parse_body, patch_type};
use super::{ApiError, Shared};
use crate::store::{ObjKey, Store};

/// The taint the node lifecycle controller puts on a cordoned node (`TaintNodesByCondition`).
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The taint effects the apiserver accepts.
const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// The store key of what clients set on node `name`.
pub fn overlay_key(name: &str) -> ObjKey {
    ("nodes".into(), String::new(), name.into())
}

/// What clients set on this node, as stored.
pub fn overlay(store: &Store) -> Option<Value> {
    store.api_object(&overlay_key(store.node_name()))
}

/// This node's taints: those clients set, and the unschedulable one while it is cordoned.
pub fn taints(store: &Store) -> Vec<Taint> {
    let node = overlaid(json!({}), overlay(store).as_ref());
    serde_json::from_value(node["spec"]["taints"].clone()).unwrap_or_default()
}

/// Lays what clients set over the node as skiffd builds it. Labels are merged by
/// [`Store::node_labels`] already (the kubelet's win); the client's conditions come after the
/// kubelet's, whose types they cannot take.
pub fn overlaid(mut node: Value, overlay: Option<&Value>) -> Value {
    if let Some(o) = overlay {
        if let Some(a) = o["metadata"]["annotations"]
            .as_object()
            .filter(|a| !a.is_empty())
        {
            node["metadata"]["annotations"] = Value::Object(a.clone());
        }
        if let Some(uid) = o["metadata"]["uid"].as_str() {
            node["metadata"]["uid"] = uid.into();
        }
        if let Some(rv) = o["metadata"]["resourceVersion"].as_str() {
            node["metadata"]["resourceVersion"] = rv.into();
        }
        if let Some(t) = o["spec"]["taints"].as_array().filter(|t| !t.is_empty()) {
            node["spec"]["taints"] = Value::Array(t.clone());
        }
        if o["spec"]["unschedulable"] == true {
            node["spec"]["unschedulable"] = true.into();
        }
        let owned = condition_types(&node);
        let extra: Vec<Value> = o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| !owned.contains(c["type"].as_str().unwrap_or_default()))
            .cloned()
            .collect();
        if !extra.is_empty() {
            match node["status"]["conditions"].as_array_mut() {
                Some(conds) => conds.extend(extra),
                None => node["status"]["conditions"] = Value::Array(extra),
            }
        }
    }
    if node["spec"]["unschedulable"] == true {
        let taint = json!({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"});
        match node["spec"]["taints"].as_array_mut() {
            Some(t) => t.push(taint),
            None => node["spec"]["taints"] = json!([taint]),
        }
    }
    node
}

fn condition_types(node: &Value) -> BTreeSet<String> {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(String::from))
        .collect()
}

/// 404 for a node nobody knows, 403 for another node (its own skiffd owns its object).
fn local(s: &Shared, name: &str) -> Result<(), ApiError> {
    if name == s.store.node_name() {
        return Ok(());
    }
    let known = s
        .store
        .remote()
        .nodes
        .iter()
        .any(|n| n["metadata"]["name"].as_str() == Some(name));
    if known {
        return Err(ApiError::forbidden(format!(
            "nodes \"{name}\" is forbidden: its own skiffd serves it; write it through that node's API"
        )));
    }
    Err(ApiError::not_found(format!("nodes \"{name}\" not found")))
}

/// PATCH of `nodes/{name}` (`status`: of `nodes/{name}/status`).
fn patch_node(
    s: &Shared,
    name: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    status: bool,
) -> Result<Value, ApiError> {
    local(s, name)?;
    let dry = dry_run(q)?;
    let ct = patch_type(headers);
    if ct.starts_with("application/apply-patch") {
        return Err(ApiError::unsupported_media(&ct));
    }
    let cur = super::nodes::node(s);
    let mut target = cur.clone();
    apply_patch(&mut target, &ct, body)?;
    save(s, name, &cur, &target, status, dry)
}

/// PUT of `nodes/{name}` (or its status), with the resourceVersion as a precondition.
fn put_node(
    s: &Shared,
    name: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    status: bool,
) -> Result<Value, ApiError> {
    local(s, name)?;
    let dry = dry_run(q)?;
    let target = parse_body(headers, body)?;
    let cur = super::nodes::node(s);
    let wanted = target["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !wanted.is_empty() && Some(wanted) != cur["metadata"]["resourceVersion"].as_str() {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        )));
    }
    save(s, name, &cur, &target, status, dry)
}

/// A 422 naming the field, as the apiserver's validation.
fn invalid(name: &str, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        format!("Node \"{name}\" is invalid: {field}: {message}"),
        json!({"name": name, "kind": "Node", "causes": [
            {"reason": "FieldValueInvalid", "message": message, "field": field}
        ]}),
    )
}

/// The string map at `v` (labels, annotations), checked.
fn string_map(name: &str, field: &str, v: &Value) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(m) if m.values().all(Value::is_string) => Ok(m.clone()),
        _ => Err(invalid(
            name,
            field,
            "Invalid value: must be a map of strings",
        )),
    }
}

/// Checks the labels, annotations and spec a client asks for; returns what to store.
fn checked_spec(name: &str, cur: &Value, target: &Value) -> Result<Value, ApiError> {
    if target["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            target["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    let labels = string_map(name, "metadata.labels", &target["metadata"]["labels"])?;
    for (k, v) in &labels {
        crate::selector::validate_label_key(k).map_err(|e| {
            invalid(
                name,
                "metadata.labels",
                &format!("Invalid value: {k:?}: {e}"),
            )
        })?;
        crate::selector::validate_label_value(v.as_str().unwrap_or_default())
            .map_err(|e| invalid(name, "metadata.labels", &format!("Invalid value: {v}: {e}")))?;
    }
    let annotations = string_map(
        name,
        "metadata.annotations",
        &target["metadata"]["annotations"],
    )?;
    for field in ["podCIDR", "podCIDRs", "providerID"] {
        let (old, new) = (&cur["spec"][field], &target["spec"][field]);
        if old != new && !old.is_null() {
            return Err(invalid(
                name,
                &format!("spec.{field}"),
                "Forbidden: node updates may not change podCIDR except from \"\" to valid",
            ));
        }
    }
    let unschedulable = match &target["spec"]["unschedulable"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        other => {
            return Err(invalid(
                name,
                "spec.unschedulable",
                &format!("Invalid value: {other}: must be a boolean"),
            ));
        }
    };
    let taints = checked_taints(name, &target["spec"]["taints"])?;
    Ok(json!({
        "labels": labels,
        "annotations": annotations,
        "spec": {"taints": taints, "unschedulable": unschedulable},
    }))
}

/// The taints as the apiserver validates them (`validateNodeTaints`), without the
/// unschedulable one, which follows `spec.unschedulable`.
fn checked_taints(name: &str, v: &Value) -> Result<Vec<Value>, ApiError> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let taints: Vec<Taint> = serde_json::from_value(v.clone())
        .map_err(|e| invalid(name, "spec.taints", &format!("Invalid value: {e}")))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, t) in taints.iter().enumerate() {
        let field = format!("spec.taints[{i}]");
        crate::selector::validate_label_key(&t.key).map_err(|e| {
            invalid(
                name,
                &format!("{field}.key"),
                &format!("Invalid value: {:?}: {e}", t.key),
            )
        })?;
        if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty()) {
            crate::selector::validate_label_value(v).map_err(|e| {
                invalid(
                    name,
                    &format!("{field}.value"),
                    &format!("Invalid value: {v:?}: {e}"),
                )
            })?;
        }
        if !EFFECTS.contains(&t.effect.as_str()) {
            return Err(invalid(
                name,
                &format!("{field}.effect"),
                &format!(
                    "Unsupported value: {:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
                    t.effect
                ),
            ));
        }
        if !seen.insert((t.key.clone(), t.effect.clone())) {
            return Err(invalid(
                name,
                &field,
                &format!(
                    "Duplicate value: \"{}:{}\": taints must be unique by key and effect pair",
                    t.key, t.effect
                ),
            ));
        }
        if t.key == UNSCHEDULABLE_TAINT && t.effect == "NoSchedule" {
            continue;
        }
        out.push(serde_json::to_value(t).unwrap_or_default());
    }
    Ok(out)
}

/// The conditions a client may set through `nodes/status`: any type but the kubelet's
/// (`owned`), whose reports are skiffd's; a client's copy of one is dropped.
fn checked_conditions(
    name: &str,
    owned: &BTreeSet<String>,
    target: &Value,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for (i, c) in target["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = c["type"].as_str().unwrap_or_default();
        if t.is_empty() {
            return Err(invalid(
                name,
                &format!("status.conditions[{i}].type"),
                "Required value",
            ));
        }
        if !matches!(c["status"].as_str(), Some("True" | "False" | "Unknown")) {
            return Err(invalid(
                name,
                &format!("status.conditions[{i}].status"),
                &format!(
                    "Unsupported value: {}: supported values: \"False\", \"True\", \"Unknown\"",
                    c["status"]
                ),
            ));
        }
        if !owned.contains(t) {
            out.push(c.clone());
        }
    }
    Ok(out)
}

/// Stores what a write asks for (spec and metadata, or with `status` the client's
/// conditions) and answers the node as served after it.
fn save(
    s: &Shared,
    name: &str,
    cur: &Value,
    target: &Value,
    status: bool,
    dry: bool,
) -> Result<Value, ApiError> {
    // The store's object files carry a uid; this one becomes the Node object's.
    let mut o = overlay(&s.store).unwrap_or_else(|| {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "uid": crate::store::random_uid()}})
    });
    let built = super::nodes::node_without_overlay(s);
    if status {
        let owned = condition_types(&built);
        o["status"]["conditions"] = Value::Array(checked_conditions(name, &owned, target)?);
    } else {
        let spec = checked_spec(name, cur, target)?;
        o["metadata"]["labels"] = spec["labels"].clone();
        o["metadata"]["annotations"] = spec["annotations"].clone();
        o["spec"] = spec["spec"].clone();
    }
    if dry {
        let mut preview = built;
        if let Some(l) = o["metadata"]["labels"].as_object() {
            let mut labels = l.clone();
            for (k, v) in preview["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default()
            {
                labels.insert(k, v);
            }
            preview["metadata"]["labels"] = Value::Object(labels);
        }
        return Ok(overlaid(preview, Some(&o)));
    }
    s.store
        .put_api_object(overlay_key(name), o)
        .map_err(|e| ApiError::internal(format!("storing node {name:?}: {e}")))?;
    tracing::info!(node = %name, status, "node object written through the API");
    // Pods waiting on node labels (a nodeSelector) re-check them.
    let _ = s.resync.send(());
    Ok(super::nodes::node(s))
}

fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// PATCH `/api/v1/nodes/{name}`.
pub async fn patch(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(patch_node(&s, &name, q.as_deref(), &headers, &body, false))
}

/// PUT `/api/v1/nodes/{name}`.
pub async fn put(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(put_node(&s, &name, q.as_deref(), &headers, &body, false))
}

/// PATCH `/api/v1/nodes/{name}/status`.
pub async fn patch_status(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(patch_node(&s, &name, q.as_deref(), &headers, &body, true))
}

/// PUT `/api/v1/nodes/{name}/status`.
pub async fn put_status(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(put_node(&s, &name, q.as_deref(), &headers, &body, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cordon_adds_the_unschedulable_taint_and_client_conditions_follow_the_kubelets() {
        let node = json!({"metadata": {"name": "n"}, "spec": {}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "t"}
        ]}});
        let o = json!({"metadata": {"annotations": {"a": "b"}}, "spec": {
            "unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]
        }, "status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "example.com/Cabled", "status": "True"}
        ]}});
        let n = overlaid(node, Some(&o));
        assert_eq!(n["metadata"]["annotations"]["a"], "b");
        assert_eq!(n["spec"]["taints"][1]["key"], UNSCHEDULABLE_TAINT);
        let types: Vec<&str> = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Ready", "example.com/Cabled"]);
        assert_eq!(n["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn taints_are_validated_as_the_apiserver_does() {
        let bad_effect = json!([{"key": "k", "effect": "Sometimes"}]);
        let e = checked_taints("n", &bad_effect).unwrap_err();
        assert!(
            e.message().contains("spec.taints[0].effect"),
            "{}",
            e.message()
        );
        let dup = json!([{"key": "k", "effect": "NoSchedule"}, {"key": "k", "value": "x", "effect": "NoSchedule"}]);
        assert!(
            checked_taints("n", &dup)
                .unwrap_err()
                .message()
                .contains("Duplicate")
        );
        let cordon = json!([{"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}]);
        assert!(checked_taints("n", &cordon).unwrap().is_empty());
    }
}
