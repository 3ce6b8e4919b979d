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
        return Err(ApiError::conflict(format!(
            "image \"{reference}\" is in use by pod {}/{}",
            p.metadata.namespace.unwrap_or_default(),
            p.metadata.name.unwrap_or_default()
        )));
    }
    let r = reference.clone();
    tokio::task::spawn_blocking(move || rt.images.remove(&r))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": reference}}),
    ))
}

fn service(s: &Shared) -> Result<std::sync::Arc<crate::runtime::pull::ImageService>, ApiError> {
    s.runtime
        .image_service()
        .cloned()
        .ok_or_else(|| ApiError::internal("registry pulls are not configured"))
}

/// `GET images/{reference}`: one image (`skiff image inspect`).
pub async fn get_one(
    State(s): State<Shared>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rt = s.runtime.clone();
    let r = reference.clone();
    let image = tokio::task::spawn_blocking(move || rt.images.resolve(&r))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("image \"{reference}\" not found")))?;
    Ok(Json(serde_json::to_value(image).unwrap_or_default()))
}

#[derive(Deserialize)]
pub struct PullQuery {
    image: String,
}

/// One line of the pull stream: a layer's progress.
#[derive(serde::Serialize)]
struct ProgressLine<'a> {
    layer: &'a str,
    index: usize,
    layers: usize,
    done: u64,
    total: u64,
    phase: &'static str,
}

fn phase_name(p: images::LayerPhase) -> &'static str {
    match p {
        images::LayerPhase::Cached => "cached",
        images::LayerPhase::Downloading => "downloading",
        images::LayerPhase::Unpacking => "unpacking",
        images::LayerPhase::Done => "done",
    }
}

/// Streams lines to the client; dropping it (the client went away) cancels the pull.
struct PullStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<axum::body::Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl tokio_stream::Stream for PullStream {
    type Item = Result<axum::body::Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}

impl Drop for PullStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `POST images/pull?image=REF`: pulls with the node's credentials and streams
/// newline-delimited JSON: progress lines (`layer`, `index`, `layers`, `done`, `total`,
/// `phase`), then `{"image": IMAGE}` or `{"error": MESSAGE}`.
pub async fn pull(
    State(s): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<PullQuery>,
) -> Result<axum::response::Response, ApiError> {
    let service = service(&s)?;
    images::normalize(&q.image).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<axum::body::Bytes>();
    let line = |v: &Value| axum::body::Bytes::from(format!("{v}\n"));
    // Progress is reported very often; send a layer's line at most every 100 ms or on a change
    // of phase.
    let last = std::sync::Mutex::new(std::collections::HashMap::<
        usize,
        (std::time::Instant, &'static str),
    >::new());
    let progress_tx = tx.clone();
    let progress: images::ProgressFn = std::sync::Arc::new(move |p: &images::Progress| {
        let phase = phase_name(p.phase);
        let now = std::time::Instant::now();
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ph)) = last.get(&p.index)
            && *ph == phase
            && now.duration_since(*at) < std::time::Duration::from_millis(100)
        {
            return;
        }
        last.insert(p.index, (now, phase));
        let v = serde_json::to_value(ProgressLine {
            layer: &p.layer,
            index: p.index,
            layers: p.layers,
            done: p.done,
            total: p.total,
            phase,
        })
        .unwrap_or_default();
        let _ = progress_tx.send(line(&v));
    });
    let reference = q.image.clone();
    let resync = s.resync.clone();
    let task = tokio::spawn(async move {
        let options = images::PullOptions {
            credentials: images::Credentials::new(),
            progress: Some(progress),
        };
        let result = service.puller().pull(&reference, &options).await;
        let v = match result {
            Ok(image) => {
                tracing::info!(image = %reference, id = %image.id, "image pulled");
                // Pods waiting for this image can start now.
                let _ = resync.send(());
                service.pulled(&image);
                serde_json::json!({ "image": image })
            }
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let _ = tx.send(line(&v));
    });
    let body = axum::body::Body::from_stream(PullStream { rx, task });
    Ok(axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap_or_default())
}

/// `POST images/prune`: removes every image no container uses.
pub async fn prune(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let service = service(&s)?;
    let rt = s.runtime.clone();
    let report = tokio::task::spawn_blocking(move || service.prune_unused(&rt.container_images()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(
        serde_json::json!({ "removed": report.removed, "freed": report.freed }),
    ))
}

#[derive(Deserialize)]
pub struct ExportBody {
    reference: String,
    path: std::path::PathBuf,
    /// `oci` (a layout directory), `oci-archive` or `docker-archive`.
    format: String,
}

/// `POST images/export`: writes an image to a path on this machine.
pub async fn export(
    State(s): State<Shared>,
    Json(body): Json<ExportBody>,
) -> Result<Json<Value>, ApiError> {
    let format = match body.format.as_str() {
        "oci" => images::ExportFormat::OciDir,
        "oci-archive" => images::ExportFormat::OciArchive,
        "docker-archive" => images::ExportFormat::DockerArchive,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown export format {other:?} (oci, oci-archive or docker-archive)"
            )));
        }
    };
    let rt = s.runtime.clone();
    let (r, p) = (body.reference.clone(), body.path.clone());
    let image = tokio::task::spawn_blocking(move || rt.images.export(&r, &p, format))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| match e {
            images::Error::NotFound(_) => ApiError::not_found(e.to_string()),
            e => ApiError::bad_request(format!("exporting to {}: {e}", body.path.display())),
        })?;
    Ok(Json(serde_json::to_value(image).unwrap_or_default()))
}
