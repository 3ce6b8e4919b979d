//! Pods and events.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::{Value, json};

use super::{ApiError, Shared, watches};

fn list(kind: &str, items: Vec<Value>) -> Json<Value> {
    Json(json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": {"resourceVersion": ""},
        "items": items,
    }))
}

pub fn pod_json(pod: &Pod) -> Value {
    let mut v = serde_json::to_value(pod).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), "v1".into());
        o.insert("kind".into(), "Pod".into());
    }
    v
}

fn event_json(e: &Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), "v1".into());
        o.insert("kind".into(), "Event".into());
    }
    v
}

fn filtered(pods: Vec<Pod>, q: &HashMap<String, String>) -> Result<Vec<Value>, ApiError> {
    let selector = q.get("labelSelector").map(String::as_str).unwrap_or("");
    let selector = crate::selector::Selector::parse(selector)
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    Ok(pods
        .into_iter()
        .filter(|p| selector.matches(&p.metadata.labels.clone().unwrap_or_default()))
        .map(|p| pod_json(&p))
        .collect())
}

/// Multi-host: the pods other nodes run (as they published them in etcd) join this node's
/// in a list, so `kubectl get pods -o wide` on any node shows the cluster's pods with their
/// node. Empty on a single node.
fn with_remote(mut pods: Vec<Pod>, s: &Shared, ns: Option<&str>) -> Vec<Pod> {
    for p in s.store.remote().pods {
        let pns = p.metadata.namespace.as_deref();
        if ns.is_some_and(|n| Some(n) != pns) {
            continue;
        }
        if !pods
            .iter()
            .any(|x| x.metadata.namespace.as_deref() == pns && x.metadata.name == p.metadata.name)
        {
            pods.push(p);
        }
    }
    // Pods the scheduler has not bound yet: Pending, without a node, on every node's list.
    let unbound = if s.store.clustered() {
        s.store.api_objects("pods")
    } else {
        Vec::new()
    };
    for ((_, pns, _), v) in unbound {
        if ns.is_some_and(|n| n != pns) || !v["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        {
            continue;
        }
        let Ok(mut p) = serde_json::from_value::<Pod>(v) else {
            continue;
        };
        if pods.iter().any(|x| {
            x.metadata.namespace == p.metadata.namespace && x.metadata.name == p.metadata.name
        }) {
            continue;
        }
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
        pods.push(p);
    }
    pods
}

pub async fn list_all(
    State(s): State<Shared>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if is_watch(&q) {
        return super::watch::pods(&s, None, raw.as_deref(), &headers);
    }
    let (pods, rv) = s.store.list_pods_at(None);
    let pods = with_remote(pods, &s, None);
    Ok(list_at("PodList", filtered(pods, &q)?, rv).into_response())
}

pub async fn list_ns(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if is_watch(&q) {
        return super::watch::pods(&s, Some(ns), raw.as_deref(), &headers);
    }
    let (pods, rv) = s.store.list_pods_at(Some(&ns));
    let pods = with_remote(pods, &s, Some(&ns));
    Ok(list_at("PodList", filtered(pods, &q)?, rv).into_response())
}

/// `/api/v1/watch/pods`.
pub async fn watch_all(
    State(s): State<Shared>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::watch::pods(&s, None, raw.as_deref(), &headers)
}

/// `/api/v1/watch/namespaces/{ns}/pods`.
pub async fn watch_ns(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::watch::pods(&s, Some(ns), raw.as_deref(), &headers)
}

fn is_watch(q: &HashMap<String, String>) -> bool {
    q.get("watch")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn list_at(kind: &str, items: Vec<Value>, rv: u64) -> Json<Value> {
    Json(json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
}

/// Finds a pod or explains why it is not there (e.g. its manifest was refused).
pub fn find(s: &Shared, ns: &str, name: &str) -> Result<Pod, ApiError> {
    s.store.get_pod(ns, name).ok_or_else(|| {
        let mut msg = format!("pods \"{name}\" not found");
        if let Some(why) = s.store.rejection(ns, name) {
            msg.push_str(&format!(": manifest rejected: {why}"));
        }
        ApiError::not_found(msg)
    })
}

pub async fn get_one(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(pod_json(&find(&s, &ns, &name)?)))
}

fn involved_name(q: &HashMap<String, String>) -> Option<String> {
    q.get("fieldSelector").and_then(|fs| {
        fs.split(',')
            .find_map(|p| p.strip_prefix("involvedObject.name=").map(String::from))
    })
}

pub async fn events_all(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if watches::wanted(&uri) {
        return watches::stream(&s, watches::EVENTS, &uri, &headers);
    }
    let name = involved_name(&q);
    let items = s.store.list_events(None, name.as_deref());
    list("EventList", items.iter().map(event_json).collect()).into_response()
}

pub async fn events_ns(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if watches::wanted(&uri) {
        return watches::stream(&s, watches::EVENTS, &uri, &headers);
    }
    let name = involved_name(&q);
    let items = s.store.list_events(Some(&ns), name.as_deref());
    list("EventList", items.iter().map(event_json).collect()).into_response()
}
