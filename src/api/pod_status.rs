//! `pods/status` (GET, PUT, PATCH): what `kubectl patch pod X --subresource=status` and
//! controllers that own a readiness gate write. The pod's worker owns the status and
//! publishes it whole, so the conditions a client sets are kept per pod UID in the store and
//! laid over every status the worker publishes; the kubelet's own fields (phase, container
//! statuses, `Ready`, `ContainersReady`, `Initialized`, `PodScheduled`) stay skiffd's, as a
//! kubelet overwrites them. Allowed on manifest pods too: status is not the file's.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::PodCondition;
use serde_json::{Value, json};

use super::pods::{find, pod_json};
use super::write::{apply_patch, dry_run, parse_body, patch_type};
use super::{ApiError, Shared};
use crate::kube::pod_conditions;
use crate::store::Store;

/// GET: the pod, as `/status` serves it on the apiserver.
pub async fn get(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(pod_json(&find(&s, &ns, &name)?)))
}

/// PUT: the whole pod, of which only the client conditions are taken.
pub async fn put(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(write(&s, &ns, &name, q.as_deref(), &headers, &body, true))
}

/// PATCH: merge, JSON or strategic merge (conditions merge by `type`).
pub async fn patch(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(write(&s, &ns, &name, q.as_deref(), &headers, &body, false))
}

fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn write(
    s: &Shared,
    ns: &str,
    name: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    whole: bool,
) -> Result<Value, ApiError> {
    let dry = dry_run(q)?;
    let pod = find(s, ns, name)?;
    let cur = pod_json(&pod);
    let written = if whole {
        parse_body(headers, body)?
    } else {
        let mut target = cur.clone();
        apply_patch(&mut target, &patch_type(headers), body)?;
        target
    };
    preconditions(name, &cur, &written, whole || names_rv(body))?;
    let conditions = conditions_of(name, &written)?;
    let client = pod_conditions::client_conditions(&conditions);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if dry {
        let mut shown = pod;
        pod_conditions::merge(&mut shown, &client, &[], None);
        return Ok(pod_json(&shown));
    }
    tracing::debug!(pod = %name, namespace = %ns, conditions = client.len(), "client conditions set through pods/status");
    set(&s.store, ns, name, &uid, client).map(|p| pod_json(&p))
}

fn set(
    store: &Store,
    ns: &str,
    name: &str,
    uid: &str,
    client: Vec<PodCondition>,
) -> Result<k8s_openapi::api::core::v1::Pod, ApiError> {
    store
        .set_client_conditions(&(ns.to_string(), name.to_string()), uid, client)
        .ok_or_else(|| ApiError::not_found(format!("pods \"{name}\" not found")))
}

fn names_rv(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|b| b.contains("resourceVersion"))
}

/// The apiserver's checks of a status write: the name, the UID and (when the client names
/// one) the resourceVersion must be the pod's.
fn preconditions(name: &str, cur: &Value, written: &Value, check_rv: bool) -> Result<(), ApiError> {
    let field = |v: &Value, f: &str| {
        v["metadata"][f]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    if let Some(n) = field(written, "name")
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(want), Some(have)) = (field(written, "uid"), field(cur, "uid"))
        && want != have
    {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled on pods \"{name}\": Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
        )));
    }
    if check_rv
        && let (Some(want), Some(have)) = (
            field(written, "resourceVersion"),
            field(cur, "resourceVersion"),
        )
        && want != have
    {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled on pods \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        )));
    }
    Ok(())
}

/// `status.conditions` of a written pod, validated (422 naming the field).
fn conditions_of(name: &str, written: &Value) -> Result<Vec<PodCondition>, ApiError> {
    let raw = written
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or(Value::Null);
    if raw.is_null() {
        return Ok(Vec::new());
    }
    let conditions: Vec<PodCondition> = serde_json::from_value(raw).map_err(|e| {
        invalid(
            name,
            &format!("status.conditions: Invalid value: {e}"),
            "status.conditions",
        )
    })?;
    for (i, c) in conditions.iter().enumerate() {
        if let Err(msg) = pod_conditions::validate(i, c) {
            let field = msg.split(": ").next().unwrap_or_default().to_string();
            return Err(invalid(name, &msg, &field));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in conditions.iter().enumerate() {
        if !seen.insert(c.type_.as_str()) {
            let field = format!("status.conditions[{i}].type");
            return Err(invalid(
                name,
                &format!("{field}: Duplicate value: {:?}", c.type_),
                &field,
            ));
        }
    }
    Ok(conditions)
}

fn invalid(name: &str, message: &str, field: &str) -> ApiError {
    let detail = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message);
    let reason = if detail.starts_with("Required value") {
        "FieldValueRequired"
    } else if detail.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else if detail.starts_with("Duplicate value") {
        "FieldValueDuplicate"
    } else {
        "FieldValueInvalid"
    };
    ApiError::invalid(
        format!("Pod \"{name}\" is invalid: {message}"),
        json!({"name": name, "kind": "Pod", "causes": [
            {"reason": reason, "message": detail, "field": field}
        ]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_validated_with_the_field() {
        let ok = json!({"status": {"conditions": [{"type": "x", "status": "True"}]}});
        assert_eq!(conditions_of("p", &ok).unwrap().len(), 1);
        let bad = json!({"status": {"conditions": [{"type": "x", "status": "maybe"}]}});
        let e = conditions_of("p", &bad).unwrap_err();
        assert_eq!(e.reason(), "Invalid");
        assert!(
            e.message().starts_with(
                "Pod \"p\" is invalid: status.conditions[0].status: Unsupported value"
            ),
            "{}",
            e.message()
        );
        let dup = json!({"status": {"conditions": [
            {"type": "x", "status": "True"}, {"type": "x", "status": "False"}]}});
        assert!(conditions_of("p", &dup).is_err());
    }

    #[test]
    fn preconditions_as_the_apiserver() {
        let cur = json!({"metadata": {"name": "p", "uid": "u1", "resourceVersion": "5"}});
        let same = json!({"metadata": {"name": "p", "resourceVersion": "5"}});
        assert!(preconditions("p", &cur, &same, true).is_ok());
        let old = json!({"metadata": {"resourceVersion": "4"}});
        assert_eq!(
            preconditions("p", &cur, &old, true).unwrap_err().reason(),
            "Conflict"
        );
        assert!(preconditions("p", &cur, &old, false).is_ok());
        let other = json!({"metadata": {"uid": "u2"}});
        assert!(preconditions("p", &cur, &other, false).is_err());
        let renamed = json!({"metadata": {"name": "q"}});
        assert_eq!(
            preconditions("p", &cur, &renamed, false)
                .unwrap_err()
                .reason(),
            "BadRequest"
        );
    }
}
