//! HorizontalPodAutoscalers at autoscaling/v1 (issue 11): the store keeps autoscaling/v2 (the
//! preferred version), and this converts at the edge, as the apiserver's conversion does.
//! A v1 request's path is served by the v2 routes: a created or replaced object is converted
//! to v2 over the stored one ([`hpa::v1_over_v2`], so nothing v1 cannot say is lost), a
//! patch is applied to the v1 view and written as a replace, and every answer (objects,
//! lists, watch events) is converted back ([`hpa::v1_view`]). Tables pass as built from v2.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use k8s_openapi::api::autoscaling::{v1, v2};
use serde_json::Value;
use tower_service::Service;

use super::write::{Kind, current, strategic_merge};
use super::{ApiError, Shared};
use crate::manifest::workload::WorkloadKind;
use crate::workloads::hpa;

const V1_PREFIX: &str = "/apis/autoscaling/v1/";
const V2_PREFIX: &str = "/apis/autoscaling/v2/";
const KIND: &str = "HorizontalPodAutoscaler";
/// The largest body converted.
const MAX_BODY: usize = 64 << 20;

/// What the v1 routes need: the store (the object a write goes over) and the v2 routes.
#[derive(Clone)]
pub struct V1 {
    pub shared: Shared,
    pub routes: Router,
}

/// `(namespace, name)` from a v1 item path.
fn names(path: &str) -> (String, String) {
    let rest = path.strip_prefix(V1_PREFIX).unwrap_or_default();
    let segs: Vec<&str> = rest.split('/').collect();
    match segs.as_slice() {
        ["namespaces", ns, "horizontalpodautoscalers", name, ..] => {
            (ns.to_string(), name.to_string())
        }
        ["namespaces", ns, ..] => (ns.to_string(), String::new()),
        _ => (String::new(), String::new()),
    }
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(format!(
        "{KIND} in version \"v1\" cannot be handled as a {KIND}: {message}"
    ))
}

/// A served v2 object (JSON) as v1 JSON; anything else unchanged.
fn to_v1(v: Value) -> Value {
    match v["kind"].as_str() {
        Some(KIND) => match serde_json::from_value::<v2::HorizontalPodAutoscaler>(v.clone()) {
            Ok(h) => {
                let mut out = serde_json::to_value(hpa::v1_view(&h)).unwrap_or(v);
                out["apiVersion"] = "autoscaling/v1".into();
                out["kind"] = KIND.into();
                out
            }
            Err(_) => v,
        },
        Some("HorizontalPodAutoscalerList") => {
            let mut v = v;
            v["apiVersion"] = "autoscaling/v1".into();
            if let Some(items) = v["items"].as_array_mut() {
                for i in items.iter_mut() {
                    let mut item = std::mem::take(i);
                    if item["kind"].is_null() {
                        item["kind"] = KIND.into();
                    }
                    *i = to_v1(item);
                }
            }
            v
        }
        _ => v,
    }
}

/// The v2 body of a v1 create or replace.
fn v2_body(s: &Shared, ns: &str, name: &str, v1_json: Value) -> Result<Value, ApiError> {
    if v1_json["apiVersion"] != "autoscaling/v1" {
        return Err(bad(format!(
            "apiVersion {} is not autoscaling/v1",
            v1_json["apiVersion"]
        )));
    }
    let h: v1::HorizontalPodAutoscaler =
        serde_json::from_value(v1_json).map_err(|e| bad(e.to_string()))?;
    let name = if name.is_empty() {
        h.metadata.name.clone().unwrap_or_default()
    } else {
        name.to_string()
    };
    let stored = current(
        &s.store,
        Kind::Workload(WorkloadKind::HorizontalPodAutoscaler),
        ns,
        &name,
    )
    .and_then(|v| serde_json::from_value::<v2::HorizontalPodAutoscaler>(v).ok());
    let mut out = serde_json::to_value(hpa::v1_over_v2(stored.as_ref(), &h))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    out["apiVersion"] = "autoscaling/v2".into();
    out["kind"] = KIND.into();
    Ok(out)
}

/// The v1 view of the stored object with a patch of `content_type` applied.
fn patched(s: &Shared, ns: &str, name: &str, ct: &str, body: &[u8]) -> Result<Value, ApiError> {
    let stored = current(
        &s.store,
        Kind::Workload(WorkloadKind::HorizontalPodAutoscaler),
        ns,
        name,
    )
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "horizontalpodautoscalers.autoscaling \"{name}\" not found"
        ))
    })?;
    let mut target = to_v1(stored);
    let parse = |what: &str| {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))
    };
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => json_patch::merge(&mut target, &parse("merge patch")?),
        "application/strategic-merge-patch+json" => {
            strategic_merge(&mut target, &parse("strategic merge patch")?)
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut target, &p)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch failed: {e}")))?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the patch type {other:?} is not served for autoscaling/v1 (use autoscaling/v2)"
                ),
            ));
        }
    }
    Ok(target)
}

/// One line of a watch: its event's object converted.
fn convert_event(line: Vec<u8>) -> Bytes {
    match serde_json::from_slice::<Value>(&line) {
        Ok(mut ev) if ev["object"].is_object() => {
            ev["object"] = to_v1(std::mem::take(&mut ev["object"]));
            let mut text = ev.to_string().into_bytes();
            text.push(b'\n');
            Bytes::from(text)
        }
        _ => Bytes::from(line),
    }
}

/// A watch's stream of events (one JSON object a line) with each object converted; it ends
/// with the watch, and the watch ends when the client goes (the body is dropped).
fn convert_watch(body: Body) -> Body {
    let stream = body.into_data_stream();
    let lines = futures_util::stream::unfold(
        (stream, Vec::<u8>::new(), false),
        |(mut stream, mut buf, mut done)| async move {
            loop {
                if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    return Some((convert_event(line), (stream, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = std::mem::take(&mut buf);
                    return Some((Bytes::from(rest), (stream, buf, done)));
                }
                match stream.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    _ => done = true,
                }
            }
        },
    );
    Body::from_stream(lines.map(Ok::<_, Infallible>))
}

/// Serves one autoscaling/v1 request through the v2 routes.
pub async fn serve(State(v1s): State<V1>, req: Request) -> Response {
    match convert(v1s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn convert(v1s: V1, req: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let (ns, name) = names(&path);
    let v2_path = path.replacen(V1_PREFIX, V2_PREFIX, 1);
    let uri = match parts.uri.query() {
        Some(q) => format!("{v2_path}?{q}"),
        None => v2_path,
    };
    parts.uri = uri
        .parse::<Uri>()
        .map_err(|e| ApiError::bad_request(format!("invalid path: {e}")))?;
    let watch = super::list::ListQuery::parse(parts.uri.query()).is_ok_and(|q| q.watch)
        || super::list::is_watch_path(&path);
    let is_object_path = path.ends_with("/horizontalpodautoscalers") || !name.is_empty();
    let body =
        if is_object_path && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
            let is_status = path.ends_with("/status");
            let v1_json = if parts.method == Method::PATCH {
                let ct = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let v = patched(&v1s.shared, &ns, &name, &ct, &bytes)?;
                parts.method = Method::PUT;
                v
            } else {
                super::write::parse_body(&parts.headers, &bytes)?
            };
            if is_status {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "the status of a HorizontalPodAutoscaler is written by its controller",
                ));
            }
            let v2 = v2_body(&v1s.shared, &ns, &name, v1_json)?;
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(v2.to_string())
        } else {
            body
        };
    let mut routes = v1s.routes.clone();
    let resp = match routes.call(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    if watch {
        return Ok(Response::from_parts(parts, convert_watch(body)));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::internal(format!("reading an answer: {e}")))?;
    let out = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Bytes::from(to_v1(v).to_string()),
        Err(_) => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(out)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn v2_answers_read_as_v1() {
        let h = json!({
            "apiVersion": "autoscaling/v2", "kind": KIND,
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 4,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 50}}}]},
        });
        let one = to_v1(h.clone());
        assert_eq!(one["apiVersion"], "autoscaling/v1");
        assert_eq!(one["spec"]["targetCPUUtilizationPercentage"], 50);
        assert!(one["spec"]["metrics"].is_null());
        let list = to_v1(json!({"kind": "HorizontalPodAutoscalerList",
            "apiVersion": "autoscaling/v2", "items": [h]}));
        assert_eq!(list["apiVersion"], "autoscaling/v1");
        assert_eq!(
            list["items"][0]["spec"]["targetCPUUtilizationPercentage"],
            50
        );
        let status = json!({"kind": "Status", "code": 404});
        assert_eq!(to_v1(status.clone()), status);
        assert_eq!(
            names("/apis/autoscaling/v1/namespaces/ns1/horizontalpodautoscalers/web/status"),
            ("ns1".into(), "web".into())
        );
    }
}
