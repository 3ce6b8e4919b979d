//! skiff's own image API (`/apis/skiff.dev/v1/images`).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, Shared};

pub async fn list(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let rt = s.runtime.clone();
    let images = tokio::task::spawn_blocking(move || rt.images.list())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(serde_json::to_value(images).unwrap_or_default()))
}

#[derive(Deserialize)]
pub struct ImportBody {
    path: std::path::PathBuf,
}

pub async fn import(
    State(s): State<Shared>,
    Json(body): Json<ImportBody>,
) -> Result<Json<Value>, ApiError> {
    let rt = s.runtime.clone();
    let path = body.path.clone();
    let images = tokio::task::spawn_blocking(move || rt.images.import(&path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("importing {}: {e}", body.path.display())))?;
    tracing::info!(path = %body.path.display(), images = images.len(), "images imported");
    // Pods waiting for these images can start now.
    let _ = s.resync.send(());
    Ok(Json(serde_json::to_value(images).unwrap_or_default()))
}

pub async fn remove(
    State(s): State<Shared>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rt = s.runtime.clone();
    let image = {
        let rt = rt.clone();
        let r = reference.clone();
        tokio::task::spawn_blocking(move || rt.images.resolve(&r))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("image \"{reference}\" not found")))?
    };
    // An image a container uses stays (the kubelet's image GC rule).
    let in_use = s.store.list_pods(None).into_iter().find(|p| {
        p.status
            .iter()
            .flat_map(|st| {
                st.container_statuses
                    .iter()
                    .flatten()
                    .chain(st.init_container_statuses.iter().flatten())
            })
            .any(|c| {
                c.state.as_ref().is_some_and(|s| s.running.is_some())
                    && (c.image_id.ends_with(&image.manifest_digest) || c.image_id == image.id)
            })
    });
    if let Some(p) = in_use {
        return Err(ApiError {
            code: axum::http::StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "image \"{reference}\" is in use by pod {}/{}",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default()
            ),
        });
    }
    let r = reference.clone();
    tokio::task::spawn_blocking(move || rt.images.remove(&r))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": reference}})))
}
