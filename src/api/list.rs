//! What every list answer gets, whatever handler made it: `labelSelector` and `fieldSelector`
//! (400 naming an unsupported field), `metadata.resourceVersion`, and `limit`/`continue`
//! paging. Applied to the JSON a handler produced, so each kind's handler stays simple.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::fields::FieldSelector;
use super::{ApiError, Shared};

/// The list query parameters this layer handles.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_: Option<String>,
    pub watch: bool,
}

impl ListQuery {
    /// Parses the query string.
    pub fn parse(q: Option<&str>) -> Result<ListQuery, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let mut out = ListQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "labelSelector" => out.label_selector = Some(v),
                "fieldSelector" => out.field_selector = Some(v),
                "limit" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?;
                    out.limit = (n > 0).then_some(n as usize);
                }
                "continue" => out.continue_ = Some(v).filter(|v| !v.is_empty()),
                "watch" => out.watch = v == "1" || v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// `/api/v1/watch/...` and `/apis/{group}/{version}/watch/...`: streams.
pub fn is_watch_path(path: &str) -> bool {
    path.starts_with("/api/v1/watch/")
        || path
            .strip_prefix("/apis/")
            .is_some_and(|rest| rest.split('/').nth(2) == Some("watch"))
}

/// The continue token: where the next page starts, and at which version the list began.
fn encode_continue(rv: &str, after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "skiff.dev/v1", "rv": rv, "start": after}).to_string())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let bad =
        || ApiError::bad_request("continue key is not valid: this is not a token skiffd made");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    v["start"].as_str().map(str::to_string).ok_or_else(bad)
}

fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Middleware for GETs of lists (watches are streamed by their handlers and left alone).
pub async fn list_options(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET {
        return next.run(req).await;
    }
    let q = match ListQuery::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if q.watch || is_watch_path(req.uri().path()) {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if resp.status() != StatusCode::OK || !is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(format!("reading a list: {e}")).into_response(),
    };
    let mut value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    let Some(kind) = value["kind"]
        .as_str()
        .and_then(|k| k.strip_suffix("List"))
        .map(str::to_string)
    else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    match apply(&mut value, &kind, &q, s.store.resource_version()) {
        Ok(()) => axum::Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Filters, versions and pages one list in place.
pub fn apply(list: &mut Value, kind: &str, q: &ListQuery, store_rv: u64) -> Result<(), ApiError> {
    let labels = crate::selector::Selector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(q.field_selector.as_deref().unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    fields.check(kind).map_err(ApiError::bad_request)?;
    let mut items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    items.retain(|o| {
        let obj_labels: std::collections::BTreeMap<String, String> =
            serde_json::from_value(o["metadata"]["labels"].clone()).unwrap_or_default();
        labels.matches(&obj_labels) && fields.matches(o)
    });
    items.sort_by_key(key_of);
    let rv = match list["metadata"]["resourceVersion"].as_str() {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => store_rv.to_string(),
    };
    if let Some(token) = &q.continue_ {
        let after = decode_continue(token)?;
        items.retain(|o| key_of(o) > after);
    }
    let mut next = None;
    if let Some(limit) = q.limit
        && items.len() > limit
    {
        items.truncate(limit);
        next = items.last().map(|o| encode_continue(&rv, &key_of(o)));
    }
    list["items"] = Value::Array(items);
    list["metadata"]["resourceVersion"] = Value::String(rv);
    if let Some(next) = next {
        list["metadata"]["continue"] = Value::String(next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: usize) -> Value {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"kind": "Pod", "metadata": {"name": format!("p{i:02}"), "namespace": "default", "labels": {"i": i.to_string()}}, "status": {"phase": if i % 2 == 0 {"Running"} else {"Pending"}}}))
            .collect();
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
    }

    #[test]
    fn pages_follow_each_other() {
        let q = |limit, cont: Option<String>| ListQuery {
            limit: Some(limit),
            continue_: cont,
            ..Default::default()
        };
        let mut l = pods(5);
        apply(&mut l, "Pod", &q(2, None), 9).unwrap();
        assert_eq!(l["items"].as_array().unwrap().len(), 2);
        assert_eq!(l["metadata"]["resourceVersion"], "9");
        let mut seen = vec![
            l["items"][0]["metadata"]["name"].clone(),
            l["items"][1]["metadata"]["name"].clone(),
        ];
        let mut token = l["metadata"]["continue"].as_str().map(str::to_string);
        while let Some(t) = token {
            let mut l = pods(5);
            apply(&mut l, "Pod", &q(2, Some(t)), 9).unwrap();
            seen.extend(
                l["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["metadata"]["name"].clone()),
            );
            token = l["metadata"]["continue"].as_str().map(str::to_string);
        }
        assert_eq!(seen, ["p00", "p01", "p02", "p03", "p04"]);
        assert!(apply(&mut pods(1), "Pod", &q(1, Some("garbage".into())), 1).is_err());
    }

    #[test]
    fn selectors_filter_and_bad_fields_are_refused() {
        let mut l = pods(4);
        let q = ListQuery {
            field_selector: Some("status.phase=Running".into()),
            label_selector: Some("i in (0,1,2)".into()),
            ..Default::default()
        };
        apply(&mut l, "Pod", &q, 1).unwrap();
        let names: Vec<&str> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["p00", "p02"]);
        let q = ListQuery {
            field_selector: Some("spec.containers=x".into()),
            ..Default::default()
        };
        assert!(apply(&mut pods(1), "Pod", &q, 1).is_err());
    }
}
