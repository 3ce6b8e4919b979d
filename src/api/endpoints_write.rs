//! Writes of core/v1 Endpoints (create, update, patch, delete) for Services without a
//! selector, as kube-proxy users make them to point a Service at addresses outside the
//! cluster. The objects live in the store's crash-safe object files; the service controller
//! takes them as it takes a manifest's Endpoints (the proxy's rules for the Service's virtual
//! IP). The Endpoints of a Service with a selector are the endpoints controller's: a write to
//! one is refused with a 403 naming the Service (the controller would overwrite it at once).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Endpoints;
use serde_json::{Value, json};

use super::write::{apply_patch, dry_run, parse_body, patch_type};
use super::{ApiError, Shared};
use crate::store::{ObjKey, SOURCE_ANNOTATION, Store};

fn key(ns: &str, name: &str) -> ObjKey {
    ("endpoints".into(), ns.into(), name.into())
}

fn answer(r: Result<(StatusCode, Value), ApiError>) -> Response {
    match r {
        Ok((code, v)) => (code, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// POST on `/api/v1/namespaces/{ns}/endpoints`.
pub async fn create(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer((|| {
        let v = parse_body(&headers, &body)?;
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(invalid(
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if s.store
            .endpoints(Some(&ns))
            .iter()
            .any(|e| e.metadata.name.as_deref() == Some(&name))
        {
            return Err(ApiError::already_exists(format!(
                "endpoints \"{name}\" already exists"
            )));
        }
        let stored = store(&s.store, &ns, &name, v, None, dry_run(q.as_deref())?)?;
        Ok((StatusCode::CREATED, stored))
    })())
}

/// PUT on one Endpoints.
pub async fn put(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer((|| {
        let v = parse_body(&headers, &body)?;
        let cur = owned(&s.store, &ns, &name)?;
        let stored = store(&s.store, &ns, &name, v, Some(&cur), dry_run(q.as_deref())?)?;
        Ok((StatusCode::OK, stored))
    })())
}

/// PATCH (merge, JSON, strategic) on one Endpoints.
pub async fn patch(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer((|| {
        let cur = owned(&s.store, &ns, &name)?;
        let mut v = cur.clone();
        apply_patch(&mut v, &patch_type(&headers), &body)?;
        if !String::from_utf8_lossy(&body).contains("resourceVersion") {
            v["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
        }
        let stored = store(&s.store, &ns, &name, v, Some(&cur), dry_run(q.as_deref())?)?;
        Ok((StatusCode::OK, stored))
    })())
}

/// DELETE of one Endpoints.
pub async fn delete(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    answer((|| {
        let cur = owned(&s.store, &ns, &name)?;
        if !dry_run(q.as_deref())? {
            s.store
                .delete_api_object(&key(&ns, &name))
                .map_err(|e| ApiError::internal(format!("deleting endpoints {ns}/{name}: {e}")))?;
            tracing::info!(namespace = %ns, name = %name, "endpoints deleted through the API");
        }
        Ok((StatusCode::OK, cur))
    })())
}

/// The API-made Endpoints under this name, or why a write to it is refused.
fn owned(store: &Store, ns: &str, name: &str) -> Result<Value, ApiError> {
    if let Some(v) = store.api_object(&key(ns, name)) {
        return Ok(with_kind(v));
    }
    if let Some(refusal) = controller_owned(store, ns, name) {
        return Err(refusal);
    }
    if store
        .endpoints(Some(ns))
        .iter()
        .any(|e| e.metadata.name.as_deref() == Some(name))
    {
        return Err(ApiError::forbidden(format!(
            "endpoints \"{name}\" is defined by skiffd or the manifest directory, which is its source of truth"
        )));
    }
    Err(ApiError::not_found(format!(
        "endpoints \"{name}\" not found"
    )))
}

/// A 403 when a Service of this name has a selector: its Endpoints are the controller's.
fn controller_owned(store: &Store, ns: &str, name: &str) -> Option<ApiError> {
    let svc = store
        .services(Some(ns))
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))?;
    let has_selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    has_selector.then(|| {
        ApiError::forbidden(format!(
            "endpoints \"{name}\" is managed by the endpoints controller: Service {ns}/{name} has a selector; remove the selector to set its Endpoints yourself"
        ))
    })
}

fn with_kind(mut v: Value) -> Value {
    v["apiVersion"] = "v1".into();
    v["kind"] = "Endpoints".into();
    v
}

fn invalid(name: &str, message: &str) -> ApiError {
    let (field, detail) = message.split_once(": ").unwrap_or(("", message));
    ApiError::invalid(
        format!("Endpoints \"{name}\" is invalid: {message}"),
        json!({"name": name, "kind": "Endpoints", "causes": [
            {"reason": "FieldValueInvalid", "message": detail, "field": field}]}),
    )
}

/// Validates an Endpoints as the apiserver does for what the proxy reads: IPv4 addresses
/// and ports 1-65535, named when there are several.
pub fn validate(name: &str, ep: &Endpoints) -> Result<(), ApiError> {
    for (i, s) in ep.subsets.iter().flatten().enumerate() {
        for field in ["addresses", "notReadyAddresses"] {
            let addrs = if field == "addresses" {
                &s.addresses
            } else {
                &s.not_ready_addresses
            };
            for (j, a) in addrs.iter().flatten().enumerate() {
                if a.ip.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err(invalid(
                        name,
                        &format!(
                            "subsets[{i}].{field}[{j}].ip: Invalid value: {:?}: must be a valid IPv4 address",
                            a.ip
                        ),
                    ));
                }
            }
        }
        let ports = s.ports.as_deref().unwrap_or_default();
        for (j, p) in ports.iter().enumerate() {
            if !(1..=65535).contains(&p.port) {
                return Err(invalid(
                    name,
                    &format!(
                        "subsets[{i}].ports[{j}].port: Invalid value: {}: must be between 1 and 65535, inclusive",
                        p.port
                    ),
                ));
            }
            if ports.len() > 1 && p.name.as_deref().unwrap_or_default().is_empty() {
                return Err(invalid(
                    name,
                    &format!("subsets[{i}].ports[{j}].name: Required value"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks and stores an Endpoints (`cur`: what it replaces); returns it as stored.
fn store(
    store: &Store,
    ns: &str,
    name: &str,
    mut v: Value,
    cur: Option<&Value>,
    dry: bool,
) -> Result<Value, ApiError> {
    if v["kind"].as_str().is_some_and(|k| k != "Endpoints") {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({}) does not match the endpoints resource",
            v["kind"].as_str().unwrap_or_default()
        )));
    }
    if let Some(n) = v["metadata"]["name"].as_str().filter(|n| *n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(refusal) = controller_owned(store, ns, name) {
        return Err(refusal);
    }
    if store.namespace(ns).is_none() {
        return Err(ApiError::not_found(format!(
            "namespaces \"{ns}\" not found"
        )));
    }
    if let Some(cur) = cur {
        let want = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !want.is_empty() && cur["metadata"]["resourceVersion"].as_str() != Some(want) {
            return Err(ApiError::conflict(format!(
                "Operation cannot be fulfilled on endpoints \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            )));
        }
    }
    let ep: Endpoints = serde_json::from_value(v.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "Endpoints in version \"v1\" cannot be handled as a Endpoints: {e}"
        ))
    })?;
    validate(name, &ep)?;
    let meta = v["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    meta.insert("name".into(), name.into());
    meta.insert("namespace".into(), ns.into());
    let keep = |f: &str| cur.and_then(|c| c["metadata"].get(f).cloned());
    meta.insert(
        "uid".into(),
        keep("uid").unwrap_or_else(|| crate::store::random_uid().into()),
    );
    meta.insert(
        "creationTimestamp".into(),
        keep("creationTimestamp").unwrap_or_else(|| jiff::Timestamp::now().to_string().into()),
    );
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(SOURCE_ANNOTATION.into(), "api".into());
    }
    let v = with_kind(v);
    if dry {
        return Ok(v);
    }
    let stored = store
        .put_api_object(key(ns, name), v)
        .map_err(|e| ApiError::internal(format!("storing endpoints {ns}/{name}: {e}")))?;
    tracing::info!(namespace = %ns, name = %name, "endpoints written through the API");
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated_naming_the_field() {
        let ep = |v: Value| serde_json::from_value::<Endpoints>(v).unwrap();
        let ok = ep(json!({"metadata": {"name": "x"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}));
        assert!(validate("x", &ok).is_ok());
        let bad_ip = ep(json!({"metadata": {"name": "x"}, "subsets": [
            {"addresses": [{"ip": "nope"}], "ports": [{"port": 80}]}]}));
        let e = validate("x", &bad_ip).unwrap_err();
        assert!(
            e.message().contains("subsets[0].addresses[0].ip"),
            "{}",
            e.message()
        );
        let bad_port = ep(json!({"metadata": {"name": "x"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 0}]}]}));
        assert!(validate("x", &bad_port).is_err());
        let unnamed = ep(json!({"metadata": {"name": "x"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}, {"port": 81}]}]}));
        assert!(
            validate("x", &unnamed)
                .unwrap_err()
                .message()
                .contains("ports[0].name")
        );
    }

    #[test]
    fn api_endpoints_are_stored_with_preconditions_and_dry_runs() {
        let s = Store::new("n");
        let v = json!({"metadata": {"name": "ext"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]});
        let stored = store(&s, "default", "ext", v.clone(), None, false).unwrap();
        assert_eq!(stored["metadata"]["annotations"][SOURCE_ANNOTATION], "api");
        assert!(s.api_object(&key("default", "ext")).is_some());
        // A stale version is a conflict.
        let mut stale = stored.clone();
        stale["metadata"]["resourceVersion"] = "1".into();
        let e = store(&s, "default", "ext", stale, Some(&stored), false).unwrap_err();
        assert_eq!(e.reason(), "Conflict");
        // A dry run stores nothing.
        let mut dry = v;
        dry["metadata"]["name"] = "dry".into();
        store(&s, "default", "dry", dry, None, true).unwrap();
        assert!(s.api_object(&key("default", "dry")).is_none());
    }
}
