//! The HTTP API on a root-only unix socket. It speaks Kubernetes' REST paths
//! and JSON shapes (`/api/v1/...`), so the `skiff` CLI and, later, the real
//! `kubectl` can read a node.

mod attach;
mod autoscaling_v1;
pub mod discovery;
mod endpoints_write;
mod eviction;
mod exec;
mod exec_ws;
pub mod fields;
mod images;
mod leader_only;
pub mod list;
pub mod listen;
mod logs;
pub mod metrics;
pub mod node_write;
pub mod nodes;
pub mod openapi;
mod pod_status;
mod pods;
mod portforward;
mod protobuf;
mod services;
mod spdy;
pub mod table;
mod watch;
mod watches;
pub mod write;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::runtime::Runtime;
use crate::store::Store;
use write::Kind;

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<Store>,
    pub runtime: Arc<Runtime>,
    /// Asks the pod manager to let every pod re-check what it waits for.
    pub resync: mpsc::UnboundedSender<()>,
    pub started: jiff::Timestamp,
    /// Resource usage for `metrics.k8s.io` (`kubectl top`).
    pub metrics: Arc<metrics::Sampler>,
}

pub type Shared = Arc<ApiState>;

/// A Kubernetes `Status` error response.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// `details` of the Status (the causes of a 422).
    details: Option<serde_json::Value>,
}

impl ApiError {
    /// The message, as the Status carries it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The Status reason (`AlreadyExists`, `Invalid`, ...).
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// A write that lost a race or that the object's owner refuses.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "AlreadyExists", message)
    }

    /// 422 with the apiserver's `details` (name, kind, causes).
    pub fn invalid(message: impl Into<String>, details: serde_json::Value) -> Self {
        ApiError {
            details: Some(details),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
        }
    }

    pub fn unsupported_media(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (not {content_type})"
            ),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// No token, or one nobody has (the apiserver's body for it).
    pub fn unauthorized() -> Self {
        ApiError {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }

    /// An authenticated user who may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: message.into(),
            details: None,
        }
    }

    /// A resourceVersion older than the kept history (the apiserver's "Expired").
    pub fn gone(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::GONE,
            reason: "Expired",
            message: message.into(),
            details: None,
        }
    }

    /// A request body above `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            code: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "RequestEntityTooLarge",
            message: format!("Request entity too large: limit is {limit}"),
            details: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = self.details {
            body["details"] = d;
        }
        (self.code, axum::Json(body)).into_response()
    }
}

/// The routes of the workload kinds: lists, writes, `/scale` and `/status`.
fn workload_routes(mut r: Router<Shared>) -> Router<Shared> {
    use crate::manifest::workload::WorkloadKind;
    for w in WorkloadKind::ALL {
        let kind = Kind::Workload(w);
        let base = match w.api_version() {
            "v1" => "/api/v1".to_string(),
            gv => format!("/apis/{gv}"),
        };
        let plural = w.plural();
        r = r
            .route(&format!("{base}/{plural}"), write::get_list(kind))
            .route(
                &format!("{base}/namespaces/{{ns}}/{plural}"),
                write::get_list(kind).merge(write::collection(kind)),
            )
            .route(
                &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}"),
                write::get_item(kind).merge(write::item(kind)),
            );
        if w.has_status() {
            r = r.route(
                &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}/status"),
                write::get_item(kind),
            );
        }
        if w.has_scale() {
            r = r.route(
                &format!("{base}/namespaces/{{ns}}/{plural}/{{name}}/scale"),
                write::scale(kind),
            );
        }
    }
    r
}

/// The API's routes: autoscaling/v1 converted to and from the v2 routes, then the rest.
pub fn router(state: Shared) -> Router {
    let routes = routes(state.clone());
    Router::new()
        .route(
            "/apis/autoscaling/v1/{*rest}",
            axum::routing::any(autoscaling_v1::serve),
        )
        .with_state(autoscaling_v1::V1 {
            shared: state,
            routes: routes.clone(),
        })
        .fallback_service(routes)
}

fn routes(state: Shared) -> Router {
    workload_routes(Router::new())
        .route("/version", get(nodes::version))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::prometheus))
        .route("/api", get(discovery::api))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis", get(discovery::apis))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_v1))
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/api/{version}", get(openapi::core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi::group))
        .route("/api/v1/pods", get(pods::list_all))
        .route("/api/v1/watch/pods", get(pods::watch_all))
        .route("/api/v1/watch/namespaces/{ns}/pods", get(pods::watch_ns))
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(pods::list_ns).merge(write::collection(Kind::Pod)),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(pods::get_one).merge(write::item(Kind::Pod)),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/status",
            get(pod_status::get)
                .put(pod_status::put)
                .patch(pod_status::patch),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(logs::log))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/eviction",
            post(eviction::evict),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/attach",
            get(attach::attach).post(attach::attach),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            post(exec::exec).get(exec::exec_get),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/portforward",
            get(portforward::portforward).post(portforward::portforward),
        )
        .route("/api/v1/watch/events", watches::route(watches::EVENTS))
        .route(
            "/api/v1/watch/namespaces/{ns}/events",
            watches::route(watches::EVENTS),
        )
        .route("/api/v1/watch/services", watches::route(watches::SERVICES))
        .route(
            "/api/v1/watch/namespaces/{ns}/services",
            watches::route(watches::SERVICES),
        )
        .route(
            "/api/v1/watch/endpoints",
            watches::route(watches::ENDPOINTS),
        )
        .route(
            "/api/v1/watch/namespaces/{ns}/endpoints",
            watches::route(watches::ENDPOINTS),
        )
        .route("/api/v1/events", get(pods::events_all))
        .route("/api/v1/namespaces/{ns}/events", get(pods::events_ns))
        .route("/api/v1/services", get(services::services_all))
        .route(
            "/api/v1/namespaces/{ns}/services",
            get(services::services_ns).merge(write::collection(Kind::Service)),
        )
        .route(
            "/api/v1/namespaces/{ns}/services/{name}",
            get(services::service).merge(write::item(Kind::Service)),
        )
        .route("/api/v1/configmaps", write::get_list(Kind::ConfigMap))
        .route(
            "/api/v1/namespaces/{ns}/configmaps",
            write::get_list(Kind::ConfigMap).merge(write::collection(Kind::ConfigMap)),
        )
        .route(
            "/api/v1/namespaces/{ns}/configmaps/{name}",
            write::get_item(Kind::ConfigMap).merge(write::item(Kind::ConfigMap)),
        )
        .route("/api/v1/secrets", write::get_list(Kind::Secret))
        .route(
            "/api/v1/namespaces/{ns}/secrets",
            write::get_list(Kind::Secret).merge(write::collection(Kind::Secret)),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            write::get_item(Kind::Secret).merge(write::item(Kind::Secret)),
        )
        .route(
            "/api/v1/namespaces",
            write::get_list(Kind::Namespace).merge(write::collection(Kind::Namespace)),
        )
        .route(
            "/api/v1/namespaces/{ns}",
            write::get_item(Kind::Namespace).merge(write::item(Kind::Namespace)),
        )
        .route("/api/v1/endpoints", get(services::endpoints_all))
        .route(
            "/api/v1/namespaces/{ns}/endpoints",
            get(services::endpoints_ns).post(endpoints_write::create),
        )
        .route(
            "/api/v1/namespaces/{ns}/endpoints/{name}",
            get(services::endpoints)
                .put(endpoints_write::put)
                .patch(endpoints_write::patch)
                .delete(endpoints_write::delete),
        )
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            get(services::slices_all),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            get(services::slices_ns),
        )
        .route("/apis/metrics.k8s.io/v1beta1/nodes", get(metrics::nodes))
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            get(metrics::node),
        )
        .route("/apis/metrics.k8s.io/v1beta1/pods", get(metrics::pods_all))
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
            get(metrics::pods_ns),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}",
            get(metrics::pod),
        )
        .route("/api/v1/nodes", get(nodes::list))
        .route(
            "/api/v1/nodes/{name}",
            get(nodes::get_one)
                .patch(node_write::write)
                .put(node_write::write),
        )
        .route(
            "/api/v1/nodes/{name}/status",
            get(nodes::get_one)
                .patch(node_write::write)
                .put(node_write::write),
        )
        .route("/apis/skiff.dev/v1/images", get(images::list))
        .route("/apis/skiff.dev/v1/images/import", post(images::import))
        .route("/apis/skiff.dev/v1/images/pull", post(images::pull))
        .route("/apis/skiff.dev/v1/images/prune", post(images::prune))
        .route("/apis/skiff.dev/v1/images/export", post(images::export))
        .route(
            "/apis/skiff.dev/v1/images/{reference}",
            delete(images::remove).get(images::get_one),
        )
        .fallback(|| async {
            ApiError::not_found("the server could not find the requested resource")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            list::list_options,
        ))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(listen::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(listen::limit_body))
        .layer(axum::middleware::from_fn(table::as_table))
}

/// The TLS listener's address and credentials.
pub struct TlsListen {
    pub addr: std::net::SocketAddr,
    pub pki: crate::pki::Pki,
    /// Where pods reach the API when `addr` does not cover it (see `service::master`).
    pub advertised: Option<std::net::SocketAddr>,
    /// Verifies service account tokens.
    pub service_accounts: Option<Arc<crate::serviceaccount::ServiceAccounts>>,
}

/// Binds the socket with mode 0600 (root only) and, with `tls`, the TCP address, and serves
/// both until `shutdown`. Requests over TCP need a bearer token; the socket's do not.
pub async fn serve(
    path: &Path,
    tls: Option<TlsListen>,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bind under a tight umask so the socket is never briefly world-accessible.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let store = state.store.clone();
    let app = router(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(listen::serve_unix(listener, app.clone(), stop_rx.clone()));
    if let Some(tls) = tls {
        let auth = Arc::new(crate::serviceaccount::auth::Authenticator::new(
            tls.pki.tokens,
            tls.service_accounts,
            store,
        ));
        let app = app.layer(axum::middleware::from_fn_with_state(
            auth,
            listen::authenticate,
        ));
        if let Some(addr) = tls.advertised {
            let tcp = crate::service::master::bind_advertised(addr)?;
            tracing::info!(%addr, "serving the API over TLS for pods (the kubernetes Service's endpoint)");
            servers.spawn(listen::serve_tls(
                tcp,
                tls.pki.tls.clone(),
                app.clone(),
                stop_rx.clone(),
            ));
        }
        // The address may not be there yet (a loopback still down, an address not yet
        // configured): the node keeps running its pods and the TLS API comes up once it binds.
        servers.spawn(async move {
            let mut stop = stop_rx;
            let mut warned = false;
            let tcp = loop {
                match listen::bind_tcp(tls.addr).await {
                    Ok(l) => break l,
                    Err(error) => {
                        if !warned {
                            tracing::error!(addr = %tls.addr, %error, "cannot bind the TLS API yet; retrying every 2s");
                            warned = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                            _ = stop.wait_for(|v| *v) => return Ok(()),
                        }
                    }
                }
            };
            tracing::info!(addr = %tls.addr, "serving the API over TLS");
            listen::serve_tls(tcp, tls.pki.tls, app, stop).await
        });
    }
    tokio::pin!(shutdown);
    let failed = tokio::select! {
        _ = &mut shutdown => None,
        Some(res) = servers.join_next() => Some(res),
    };
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    match failed {
        None => Ok(()),
        Some(Ok(Ok(()))) => Err(std::io::Error::other("an API listener stopped")),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
    }
}
