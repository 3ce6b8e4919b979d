//! Server-side Tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): the `Table`
//! document and the middleware that answers with it. The columns and cells are built in
//! [`crate::cli::table`] (shared with `skiff get`), re-exported here at their old paths.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::{Value, json};

pub use crate::cli::table::*;

/// How much of each row's object a Table carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    fn from_query(q: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(q.unwrap_or("")).unwrap_or_default();
        match pairs
            .iter()
            .find(|(k, _)| k == "includeObject")
            .map(|(_, v)| v.as_str())
        {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The `meta.k8s.io` Table document.
pub fn to_json(
    table: &Table,
    api_version: &str,
    resource_version: &str,
    include: IncludeObject,
) -> Value {
    let columns: Vec<Value> = table
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = table
        .rows
        .iter()
        .map(|r| {
            let object = match include {
                IncludeObject::None => Value::Null,
                IncludeObject::Object => r.object.clone(),
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": r.object["metadata"],
                }),
            };
            let mut row = json!({"cells": r.cells});
            if !object.is_null() {
                row["object"] = object;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The Table version the client asks for in `Accept`, if it asks for a Table.
pub(crate) fn wants_table(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())?;
    for t in accept.split(',') {
        let params: Vec<String> = t.split(';').map(|p| p.trim().replace(' ', "")).collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        if has("as=Table") && has("g=meta.k8s.io") {
            if has("v=v1") {
                return Some("meta.k8s.io/v1");
            }
            if has("v=v1beta1") {
                return Some("meta.k8s.io/v1beta1");
            }
        }
    }
    None
}

/// Largest list body turned into a table (10k pods are far below it).
const MAX_TABLE_SOURCE: usize = 256 * 1024 * 1024;

/// Middleware: answers a request for a Table with the table of the JSON object or list the
/// handler produced. Streams (watch, logs, exec) are left alone.
pub async fn as_table(req: Request, next: Next) -> Response {
    let Some(api_version) = wants_table(req.headers()) else {
        return next.run(req).await;
    };
    if super::list::ListQuery::parse(req.uri().query()).is_ok_and(|q| q.watch)
        || super::list::is_watch_path(req.uri().path())
    {
        // Watches stream their own tables.
        return next.run(req).await;
    }
    let include = IncludeObject::from_query(req.uri().query());
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if resp.status() != StatusCode::OK || !is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_TABLE_SOURCE).await {
        Ok(b) => b,
        Err(e) => {
            return super::ApiError::internal(format!("building a table: {e}")).into_response();
        }
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let (kind, items, rv) = match kind.strip_suffix("List") {
        Some(k) if value["items"].is_array() => (
            k.to_string(),
            value["items"].as_array().cloned().unwrap_or_default(),
            value["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        _ if value["kind"] == "Status" || kind.is_empty() => {
            return Response::from_parts(parts, Body::from(bytes));
        }
        _ => {
            let rv = value["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (kind, vec![value], rv)
        }
    };
    let table = for_kind(&kind, items, Timestamp::now());
    axum::Json(to_json(&table, api_version, &rv, include)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_value() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5",
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]},
        })
    }

    #[test]
    fn pod_table_has_the_apiservers_columns() {
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let t = for_kind("Pod", vec![pod_value()], now);
        let names: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(
            t.rows[0].cells,
            [
                "web",
                "1/1",
                "Running",
                "0",
                "5m",
                "10.244.0.5",
                "n1",
                "<none>",
                "<none>"
            ]
        );
        let doc = to_json(&t, "meta.k8s.io/v1", "7", IncludeObject::Metadata);
        assert_eq!(doc["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(doc["rows"][0]["object"]["metadata"]["namespace"], "default");
        assert_eq!(doc["columnDefinitions"][5]["priority"], 1);
        let text = render(&t, true, false);
        assert_eq!(
            text,
            "NAMESPACE   NAME   READY   STATUS    RESTARTS   AGE\ndefault     web    1/1     Running   0          5m\n"
        );
        assert!(
            render(&t, false, true).starts_with("NAME   READY   STATUS    RESTARTS   AGE   IP")
        );
    }

    #[test]
    fn table_is_asked_for_in_accept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(wants_table(&h), Some("meta.k8s.io/v1"));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert_eq!(wants_table(&h), None);
    }

    #[test]
    fn unknown_kinds_get_name_and_age() {
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let o = json!({"kind": "Image", "metadata": {"name": "busybox", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        let t = for_kind("Image", vec![o], now);
        assert_eq!(t.rows[0].cells, ["busybox", "60m"]);
    }
}
