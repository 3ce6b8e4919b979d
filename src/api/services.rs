//! Services, Endpoints and EndpointSlices as the service controller computed them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Endpoints;
use serde_json::{Value, json};

use super::watches::{self, ENDPOINTS, SERVICES};
use super::{ApiError, Shared};

fn with_kind<T: serde::Serialize>(obj: &T, kind: &str, api_version: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), api_version.into());
        o.insert("kind".into(), kind.into());
    }
    v
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Response {
    Json(
        json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": ""}, "items": items}),
    )
    .into_response()
}

pub async fn services_all(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    if watches::wanted(&uri) {
        return watches::stream(&s, SERVICES, &uri, &headers);
    }
    list(
        "ServiceList",
        "v1",
        s.store
            .services(None)
            .iter()
            .map(|x| with_kind(x, "Service", "v1"))
            .collect(),
    )
}

pub async fn services_ns(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if watches::wanted(&uri) {
        return watches::stream(&s, SERVICES, &uri, &headers);
    }
    list(
        "ServiceList",
        "v1",
        s.store
            .services(Some(&ns))
            .iter()
            .map(|x| with_kind(x, "Service", "v1"))
            .collect(),
    )
}

pub async fn service(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    s.store
        .services(Some(&ns))
        .into_iter()
        .find(|x| x.metadata.name.as_deref() == Some(name.as_str()))
        .map(|x| Json(with_kind(&x, "Service", "v1")))
        .ok_or_else(|| {
            let mut msg = format!("services \"{name}\" not found");
            if let Some(why) = s.store.service_rejection(&ns, &name) {
                msg.push_str(&format!(": {why}"));
            } else if let Some(why) = s.store.rejection(&ns, &name) {
                msg.push_str(&format!(": manifest rejected: {why}"));
            }
            ApiError::not_found(msg)
        })
}

pub async fn endpoints_all(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    if watches::wanted(&uri) {
        return watches::stream(&s, ENDPOINTS, &uri, &headers);
    }
    list(
        "EndpointsList",
        "v1",
        s.store
            .endpoints(None)
            .iter()
            .map(|x| with_kind(x, "Endpoints", "v1"))
            .collect(),
    )
}

pub async fn endpoints_ns(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if watches::wanted(&uri) {
        return watches::stream(&s, ENDPOINTS, &uri, &headers);
    }
    list(
        "EndpointsList",
        "v1",
        s.store
            .endpoints(Some(&ns))
            .iter()
            .map(|x| with_kind(x, "Endpoints", "v1"))
            .collect(),
    )
}

pub async fn endpoints(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    s.store
        .endpoints(Some(&ns))
        .into_iter()
        .find(|x| x.metadata.name.as_deref() == Some(name.as_str()))
        .map(|x| Json(with_kind(&x, "Endpoints", "v1")))
        .ok_or_else(|| ApiError::not_found(format!("endpoints \"{name}\" not found")))
}

/// The EndpointSlice (discovery.k8s.io/v1) view of an Endpoints object.
fn slice(ep: &Endpoints) -> Value {
    let name = ep.metadata.name.clone().unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut ports: Vec<Value> = Vec::new();
    for s in ep.subsets.iter().flatten() {
        for p in s.ports.iter().flatten() {
            let v = json!({"name": p.name.clone().unwrap_or_default(), "port": p.port, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())});
            if !ports.contains(&v) {
                ports.push(v);
            }
        }
        for (addrs, ready) in [(&s.addresses, true), (&s.not_ready_addresses, false)] {
            for a in addrs.iter().flatten() {
                endpoints.push(json!({
                    "addresses": [a.ip],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                    "nodeName": a.node_name,
                    "targetRef": a.target_ref,
                }));
            }
        }
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-skiff"),
            "namespace": ep.metadata.namespace,
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "skiffd"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

pub async fn slices_all(State(s): State<Shared>) -> Response {
    list(
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        s.store.endpoints(None).iter().map(slice).collect(),
    )
}

pub async fn slices_ns(State(s): State<Shared>, Path(ns): Path<String>) -> Response {
    list(
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        s.store.endpoints(Some(&ns)).iter().map(slice).collect(),
    )
}
