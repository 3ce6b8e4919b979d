//! `pods/eviction` (policy/v1 `Eviction`), which `kubectl drain` posts for each pod it moves
//! off a node. skiffd has no PodDisruptionBudgets, so every eviction is allowed: the pod is
//! deleted with the eviction's DeleteOptions, through the same path as a `kubectl delete`.
//! A manifest file's pod is a mirror pod (`kubernetes.io/config.mirror`): drain leaves it,
//! and an eviction of it is refused naming its file, as a delete is.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::write::{evict_pod, parse_body};
use super::{ApiError, Shared};

/// Checks an Eviction body against the URL's pod.
fn checked(ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    let kind = body["kind"].as_str().unwrap_or("Eviction");
    if kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "the body of an eviction must be a policy/v1 Eviction, not a {kind}"
        )));
    }
    let named = body["metadata"]["name"].as_str().unwrap_or_default();
    if named != name {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object ({named:?} is not {name:?})"
        )));
    }
    if let Some(other) = body["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty() && *n != ns)
    {
        return Err(ApiError::bad_request(format!(
            "namespace in URL does not match namespace in Eviction object ({other:?} is not {ns:?})"
        )));
    }
    Ok(body["deleteOptions"].clone())
}

/// POST `/api/v1/namespaces/{ns}/pods/{name}/eviction`: 201 with a Success Status once the
/// pod is being deleted.
pub async fn evict(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let done = parse_body(&headers, &body)
        .and_then(|b| checked(&ns, &name, &b))
        .and_then(|options| evict_pod(&s, &ns, &name, q.as_deref(), &options));
    match done {
        Ok(()) => {
            tracing::info!(pod = %format!("{ns}/{name}"), "pod evicted through the API");
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Success", "code": 201,
                })),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eviction_must_name_the_pod_of_its_url() {
        let ok = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "p", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 0}});
        assert_eq!(
            checked("default", "p", &ok).unwrap()["gracePeriodSeconds"],
            0
        );
        let other = json!({"kind": "Eviction", "metadata": {"name": "q"}});
        assert!(
            checked("default", "p", &other)
                .unwrap_err()
                .message()
                .contains("does not match")
        );
        let wrong_ns = json!({"kind": "Eviction", "metadata": {"name": "p", "namespace": "x"}});
        assert!(checked("default", "p", &wrong_ns).is_err());
    }
}
