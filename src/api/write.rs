//! Writes through the API (issue 10): create, update, patch (merge, JSON, strategic and
//! server-side apply) and delete of Pods, Services, ConfigMaps, Secrets and Namespaces, with
//! `dryRun=All` and `fieldValidation`. Objects made here live in the store's own crash-safe
//! object files; objects from the manifest directory stay owned by their files (a write to
//! one is refused naming the file). Both paths validate with the same functions
//! (`manifest::parse`/`validate`).

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use serde_json::{Map, Value, json};

use super::{ApiError, Shared};
use crate::manifest::parse::{FieldValidation, Object, parse_api_object};
use crate::manifest::source::{DesiredPod, Snapshot};
use crate::manifest::workload::WorkloadKind;
use crate::store::{ObjKey, SOURCE_ANNOTATION, Store};

/// What the write path needs of the API's state (so it can be tested without a runtime).
pub struct Writer<'a> {
    pub store: &'a Store,
    /// Asks the pod manager to let pods re-check what they wait for.
    pub resync: &'a tokio::sync::mpsc::UnboundedSender<()>,
}

impl<'a> Writer<'a> {
    fn of(s: &'a Shared) -> Self {
        Writer {
            store: &s.store,
            resync: &s.resync,
        }
    }
}

/// A kind that accepts writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Service,
    ConfigMap,
    Secret,
    Namespace,
    /// Deployments, ReplicaSets and ReplicationControllers (issue 11).
    Workload(WorkloadKind),
}

impl Kind {
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::Namespace => "namespaces",
            Kind::Workload(w) => w.plural(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Namespace => "Namespace",
            Kind::Workload(w) => w.name(),
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Workload(w) => w.api_version(),
            _ => "v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

/// The write query parameters (and a DeleteOptions body's).
#[derive(Debug, Default)]
struct WriteOptions {
    dry_run: bool,
    field_validation: FieldValidation,
    field_manager: Option<String>,
    force: bool,
    /// A delete's `gracePeriodSeconds`: instead of the pod's own grace period.
    grace_period: Option<i64>,
    /// A delete's `propagationPolicy` (or `orphanDependents`).
    propagation: Option<Propagation>,
}

/// What happens to the objects an owner controls when it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The owner goes now; the garbage collector removes its dependents after.
    Background,
    /// The dependents go first; the owner stays, being deleted, until they are gone.
    Foreground,
    /// The dependents stay, without their owner reference.
    Orphan,
}

impl Propagation {
    fn parse(v: &str) -> Result<Propagation, ApiError> {
        match v {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            _ => Err(ApiError::bad_request(format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: {v:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ))),
        }
    }
}

impl WriteOptions {
    fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let mut o = WriteOptions {
            // The apiserver's default when the client does not say.
            field_validation: FieldValidation::Warn,
            ..Default::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "dryRun" => {
                    if v != "All" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid dry run value: {v:?}: supported values: \"All\""
                        )));
                    }
                    o.dry_run = true;
                }
                "fieldValidation" => {
                    o.field_validation = match v.as_str() {
                        "Strict" => FieldValidation::Strict,
                        "Warn" => FieldValidation::Warn,
                        "Ignore" => FieldValidation::Ignore,
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
                            )));
                        }
                    }
                }
                "fieldManager" => o.field_manager = Some(v),
                "force" => o.force = v == "true" || v == "1",
                "gracePeriodSeconds" => {
                    let n: i64 = v.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid gracePeriodSeconds {v:?}"))
                    })?;
                    // kubectl sends -1 for "the object's own".
                    o.grace_period = (n >= 0).then_some(n);
                }
                "propagationPolicy" => o.propagation = Some(Propagation::parse(&v)?),
                "orphanDependents" if v == "true" => o.propagation = Some(Propagation::Orphan),
                "pretty" => {}
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Whether the query asks for a dry run (`dryRun=All`); a bad value is a 400.
pub(super) fn dry_run(q: Option<&str>) -> Result<bool, ApiError> {
    Ok(WriteOptions::parse(q)?.dry_run)
}

/// `(ns, name)` from the request path (`/api/v1/namespaces/{ns}/{plural}[/{name}]`,
/// `/api/v1/namespaces[/{name}]`, `/api/v1/{plural}`).
fn names(kind: Kind, uri: &Uri) -> (String, String) {
    let path = uri.path();
    let rest = match path.strip_prefix("/apis/") {
        // `/apis/{group}/{version}/...`
        Some(r) => r.splitn(3, '/').nth(2).unwrap_or_default(),
        None => path.trim_start_matches("/api/v1/"),
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let at = |i: usize| segs.get(i).map(|s| s.to_string()).unwrap_or_default();
    match (kind, segs.first()) {
        (Kind::Namespace, _) => (String::new(), at(1)),
        (_, Some(&"namespaces")) => (at(1), at(3)),
        _ => (String::new(), String::new()),
    }
}

/// POST on a collection, and DELETE (`deletecollection`) for the namespaced kinds.
pub fn collection(kind: Kind) -> MethodRouter<Shared> {
    let create = post(
        move |State(s): State<Shared>,
              uri: Uri,
              RawQuery(q): RawQuery,
              headers: HeaderMap,
              body: Bytes| async move {
            let (ns, _) = names(kind, &uri);
            let written = super::leader_only::leader_only(&s.store, kind, &ns, None)
                .and_then(|()| create(&Writer::of(&s), kind, &ns, q.as_deref(), &headers, &body));
            respond(served_service(&s, kind, q.as_deref(), written).await)
        },
    );
    if !kind.namespaced() {
        // The apiserver has no deletecollection on namespaces either.
        return create;
    }
    create.merge(delete(
        move |State(s): State<Shared>, uri: Uri, RawQuery(q): RawQuery, body: Bytes| async move {
            let (ns, _) = names(kind, &uri);
            respond(
                super::leader_only::leader_only(&s.store, kind, &ns, None).and_then(|()| {
                    remove_collection(&Writer::of(&s), kind, &ns, q.as_deref(), &body)
                }),
            )
        },
    ))
}

/// PUT, PATCH and DELETE on one object.
pub fn item(kind: Kind) -> MethodRouter<Shared> {
    put(
        move |State(s): State<Shared>,
              uri: Uri,
              RawQuery(q): RawQuery,
              headers: HeaderMap,
              body: Bytes| async move {
            let (ns, name) = names(kind, &uri);
            let w = Writer::of(&s);
            let written = super::leader_only::leader_only(&s.store, kind, &ns, Some(&name))
                .and_then(|()| update(&w, kind, &ns, &name, q.as_deref(), &headers, &body));
            respond(served_service(&s, kind, q.as_deref(), written).await)
        },
    )
    .merge(patch(
        move |State(s): State<Shared>,
              uri: Uri,
              RawQuery(q): RawQuery,
              headers: HeaderMap,
              body: Bytes| async move {
            let (ns, name) = names(kind, &uri);
            let w = Writer::of(&s);
            let written = super::leader_only::leader_only(&s.store, kind, &ns, Some(&name))
                .and_then(|()| patch_object(&w, kind, &ns, &name, q.as_deref(), &headers, &body));
            respond(served_service(&s, kind, q.as_deref(), written).await)
        },
    ))
    .merge(delete(
        move |State(s): State<Shared>, uri: Uri, RawQuery(q): RawQuery, body: Bytes| async move {
            let (ns, name) = names(kind, &uri);
            respond(
                super::leader_only::leader_only(&s.store, kind, &ns, Some(&name))
                    .and_then(|()| remove(&Writer::of(&s), kind, &ns, &name, q.as_deref(), &body)),
            )
        },
    ))
}

/// GET of one object of a kind served only here (ConfigMaps, Secrets, Namespaces).
pub fn get_item(kind: Kind) -> MethodRouter<Shared> {
    get(move |State(s): State<Shared>, uri: Uri| async move {
        let (ns, name) = names(kind, &uri);
        match current(&s.store, kind, &ns, &name) {
            Some(v) => axum::Json(v).into_response(),
            None => not_found(kind, &name).into_response(),
        }
    })
}

/// GET of a collection of a kind served only here, in one namespace or all.
pub fn get_list(kind: Kind) -> MethodRouter<Shared> {
    get(
        move |State(s): State<Shared>, uri: Uri, headers: HeaderMap| async move {
            let (ns, _) = names(kind, &uri);
            let ns = Some(ns).filter(|n| !n.is_empty());
            let is_watch = super::list::ListQuery::parse(uri.query()).is_ok_and(|q| q.watch);
            if is_watch && kind != Kind::Service && kind != Kind::Pod {
                let lister: fn(&Store) -> Vec<Value> = match kind {
                    Kind::ConfigMap => |st| list(st, Kind::ConfigMap, None),
                    Kind::Secret => |st| list(st, Kind::Secret, None),
                    Kind::Workload(WorkloadKind::Deployment) => {
                        |st| list(st, Kind::Workload(WorkloadKind::Deployment), None)
                    }
                    Kind::Workload(WorkloadKind::ReplicaSet) => {
                        |st| list(st, Kind::Workload(WorkloadKind::ReplicaSet), None)
                    }
                    Kind::Workload(WorkloadKind::HorizontalPodAutoscaler) => |st| {
                        list(
                            st,
                            Kind::Workload(WorkloadKind::HorizontalPodAutoscaler),
                            None,
                        )
                    },
                    Kind::Workload(WorkloadKind::ReplicationController) => |st| {
                        list(
                            st,
                            Kind::Workload(WorkloadKind::ReplicationController),
                            None,
                        )
                    },
                    Kind::Workload(WorkloadKind::Job) => {
                        |st| list(st, Kind::Workload(WorkloadKind::Job), None)
                    }
                    Kind::Workload(WorkloadKind::CronJob) => {
                        |st| list(st, Kind::Workload(WorkloadKind::CronJob), None)
                    }
                    Kind::Workload(WorkloadKind::DaemonSet) => {
                        |st| list(st, Kind::Workload(WorkloadKind::DaemonSet), None)
                    }
                    Kind::Workload(WorkloadKind::ControllerRevision) => {
                        |st| list(st, Kind::Workload(WorkloadKind::ControllerRevision), None)
                    }
                    _ => |st| list(st, Kind::Namespace, None),
                };
                return super::watch::objects(
                    &s,
                    kind.plural(),
                    kind.name(),
                    ns,
                    uri.query(),
                    &headers,
                    lister,
                )
                .unwrap_or_else(|e| e.into_response());
            }
            let items = list(&s.store, kind, ns.as_deref());
            axum::Json(json!({
                "kind": format!("{}List", kind.name()),
                "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": s.store.resource_version().to_string()},
                "items": items,
            }))
            .into_response()
        },
    )
}

/// An answer with `Warning` headers for what was dropped or needs saying.
struct Written {
    code: StatusCode,
    body: Value,
    warnings: Vec<String>,
}

/// How long a Service write waits for the service controller to serve it.
const SERVICE_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Answers a Service write once the service controller serves the written version, with the
/// cluster IP (and node ports) it was given: the apiserver allocates them before it answers,
/// and a client that reads right after (`kubectl expose` then `kubectl get service`) must find
/// the Service. A Service the controller refuses, or one it has not served within
/// [`SERVICE_SETTLE`], is answered as stored; dry runs and other kinds as they are.
async fn served_service(
    s: &Shared,
    kind: Kind,
    q: Option<&str>,
    written: Result<Written, ApiError>,
) -> Result<Written, ApiError> {
    let Ok(mut w) = written else {
        return written;
    };
    if kind != Kind::Service || WriteOptions::parse(q).is_ok_and(|o| o.dry_run) {
        return Ok(w);
    }
    let meta = &w.body["metadata"];
    let field = |f: &str| meta[f].as_str().unwrap_or_default().to_string();
    let (ns, name, rv) = (field("namespace"), field("name"), field("resourceVersion"));
    let mut published = s.store.subscribe_service_views();
    let wait = async {
        loop {
            let view = s.store.services(Some(&ns)).into_iter().find(|v| {
                v.metadata.name.as_deref() == Some(name.as_str())
                    && v.metadata.resource_version.as_deref() == Some(rv.as_str())
            });
            if view.is_some() || s.store.service_rejection(&ns, &name).is_some() {
                return view;
            }
            if published.changed().await.is_err() {
                return None;
            }
        }
    };
    if let Ok(Some(view)) = tokio::time::timeout(SERVICE_SETTLE, wait).await
        && let Ok(v) = serde_json::to_value(view)
    {
        w.body = with_kind(v, Kind::Service);
    }
    Ok(w)
}

fn respond(r: Result<Written, ApiError>) -> Response {
    match r {
        Ok(w) => {
            let mut resp = (w.code, axum::Json(w.body)).into_response();
            for warning in w.warnings {
                let text = format!("299 - {:?}", warning.replace('"', "'"));
                if let Ok(v) = HeaderValue::from_str(&text) {
                    resp.headers_mut().append("Warning", v);
                }
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::not_found(format!("{} \"{name}\" not found", kind.plural()))
}

fn with_kind(mut v: Value, kind: Kind) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), kind.api_version().into());
        o.insert("kind".into(), kind.name().into());
    }
    v
}

/// The object as served now (a pod with its status, a Service with its cluster IP).
pub fn current(store: &Store, kind: Kind, ns: &str, name: &str) -> Option<Value> {
    let v = match kind {
        Kind::Pod => match store.get_pod(ns, name) {
            Some(p) => serde_json::to_value(p).ok()?,
            // Multi-host: a controller's pod bound to another node (or to none yet) is only
            // the cluster's object here; the leader deletes or rewrites it through that.
            None if store.clustered() => {
                store.api_object(&("pods".into(), ns.into(), name.into()))?
            }
            None => return None,
        },
        Kind::Service => {
            let served = store
                .services(Some(ns))
                .into_iter()
                .find(|s| s.metadata.name.as_deref() == Some(name));
            match served {
                Some(s) => serde_json::to_value(s).ok()?,
                None => {
                    let (desired, _) = store.desired_services();
                    let s = desired.get(&(ns.to_string(), name.to_string()))?;
                    serde_json::to_value(s.as_ref()).ok()?
                }
            }
        }
        Kind::ConfigMap => serde_json::to_value(store.config_map(ns, name)?).ok()?,
        Kind::Secret => serde_json::to_value(store.secret(ns, name)?).ok()?,
        Kind::Namespace => serde_json::to_value(store.namespace(name)?).ok()?,
        Kind::Workload(_) => store.workload(&key(kind, ns, name))?,
    };
    Some(with_kind(v, kind))
}

fn list(store: &Store, kind: Kind, ns: Option<&str>) -> Vec<Value> {
    let vals: Vec<Value> = match kind {
        Kind::ConfigMap => store
            .list_config_maps(ns)
            .iter()
            .filter_map(|x| serde_json::to_value(x).ok())
            .collect(),
        Kind::Secret => store
            .list_secrets(ns)
            .iter()
            .filter_map(|x| serde_json::to_value(x).ok())
            .collect(),
        Kind::Namespace => store
            .namespaces()
            .iter()
            .filter_map(|x| serde_json::to_value(x).ok())
            .collect(),
        Kind::Pod => store
            .list_pods(ns)
            .iter()
            .filter_map(|x| serde_json::to_value(x).ok())
            .collect(),
        Kind::Service => store
            .services(ns)
            .iter()
            .filter_map(|x| serde_json::to_value(x).ok())
            .collect(),
        Kind::Workload(w) => store.list_workloads(w.plural(), ns),
    };
    vals.into_iter().map(|v| with_kind(v, kind)).collect()
}

/// The manifest file an object comes from, if it does.
fn manifest_source(obj: &Value) -> Option<String> {
    obj.pointer(&format!(
        "/metadata/annotations/{}",
        SOURCE_ANNOTATION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .and_then(|s| s.strip_prefix("manifest:"))
    .map(String::from)
}

/// 403 for a write to an object its manifest file owns (not 409: clients such as
/// `kubectl scale` retry a conflict, and this one never clears).
fn refuse_manifest(kind: Kind, name: &str, file: &str) -> ApiError {
    ApiError::forbidden(format!(
        "{} \"{name}\" is defined in the manifest file {file}, which is its source of truth: edit that file instead",
        kind.plural()
    ))
}

fn key(kind: Kind, ns: &str, name: &str) -> ObjKey {
    let ns = if kind.namespaced() { ns } else { "" };
    (kind.plural().to_string(), ns.to_string(), name.to_string())
}

/// Parses a request body as JSON, YAML, or the protobuf kubectl's generators send.
pub(super) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        return super::protobuf::to_json(body).map_err(|e| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the protobuf body was not understood ({e}): send application/json"),
            )
        });
    }
    let v: Value = if ct.contains("yaml") {
        serde_yaml_ng::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not an object",
        ));
    }
    Ok(v)
}

/// The apiserver's 422 for a validation error (`field: reason`), with its cause.
fn invalid(kind: Kind, name: &str, message: &str) -> ApiError {
    let (field, detail) = match message.split_once(": ") {
        Some((f, d)) if !f.contains(' ') => (Some(f), d),
        _ => (None, message),
    };
    let reason = if detail.starts_with("Required value") {
        "FieldValueRequired"
    } else if detail.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else if detail.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if detail.starts_with("Duplicate value") {
        "FieldValueDuplicate"
    } else {
        "FieldValueInvalid"
    };
    let mut cause = json!({"reason": reason, "message": detail});
    if let Some(f) = field {
        cause["field"] = f.into();
    }
    ApiError::invalid(
        format!("{} \"{name}\" is invalid: {message}", kind.name()),
        json!({"name": name, "kind": kind.name(), "causes": [cause]}),
    )
}

/// Checks a body, fills in what the server owns and validates it as the manifest path does.
/// Returns the object to store (no status) and the warnings.
fn admit(
    s: &Writer,
    kind: Kind,
    ns: &str,
    mut v: Value,
    old: Option<&Value>,
    mode: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let body_kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if !body_kind.is_empty() && body_kind != kind.name() {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({body_kind}) does not match the resource ({})",
            kind.plural()
        )));
    }
    let want = kind.api_version();
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or(want);
    if api_version != want {
        return Err(ApiError::bad_request(format!(
            "apiVersion {api_version:?} is not served for {} (use {want:?})",
            kind.name()
        )));
    }
    v["kind"] = kind.name().into();
    v["apiVersion"] = want.into();
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if kind.namespaced() {
        match v["metadata"]["namespace"].as_str() {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => v["metadata"]["namespace"] = ns.into(),
        }
    } else if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    {
        let m = v["metadata"].as_object_mut().expect("made an object above");
        for server_owned in [
            "resourceVersion",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            m.remove(server_owned);
        }
        let old_meta = old.map(|o| &o["metadata"]);
        let uid = old_meta
            .and_then(|o| o["uid"].as_str())
            .map(String::from)
            .unwrap_or_else(crate::store::random_uid);
        m.insert("uid".into(), uid.into());
        let created = old_meta
            .and_then(|o| o.get("creationTimestamp").cloned())
            .filter(|c| !c.is_null())
            .unwrap_or_else(|| jiff::Timestamp::now().to_string().into());
        m.insert("creationTimestamp".into(), created);
        if !m.contains_key("managedFields")
            && let Some(mf) = old_meta.and_then(|o| o.get("managedFields"))
        {
            m.insert("managedFields".into(), mf.clone());
        }
        let ann = m
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata.annotations must be a map"))?;
        ann.insert(SOURCE_ANNOTATION.into(), "api".into());
        for copied in [
            "skiff.dev/manifest",
            "kubernetes.io/config.source",
            "kubernetes.io/config.hash",
            "kubernetes.io/config.mirror",
        ] {
            ann.remove(copied);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    let mut warnings = Vec::new();
    let stored = match kind {
        Kind::Namespace => {
            let mut n: Namespace = crate::manifest::parse::decode(v, mode, &mut warnings)
                .map_err(|e| strict_error(kind, &e.message))?;
            crate::kube::validation::check_dns1123_label(&name).map_err(|e| {
                invalid(
                    kind,
                    &name,
                    &format!("metadata.name: Invalid value: {name:?}: {e}"),
                )
            })?;
            n.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("kubernetes.io/metadata.name".into(), name.clone());
            n.spec = Some(k8s_openapi::api::core::v1::NamespaceSpec {
                finalizers: Some(vec!["kubernetes".into()]),
            });
            n.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some("Active".into()),
                ..Default::default()
            });
            serde_json::to_value(n).map_err(|e| ApiError::internal(e.to_string()))?
        }
        _ => {
            // A controller's pod in a multi-host cluster keeps the node its controller bound
            // it to (a DaemonSet's) or waits for the cluster scheduler to bind it; every
            // other pod runs on the node it was made on.
            let for_cluster = s.store.clustered() && crate::kube::workload::controlled(&v);
            if kind == Kind::Pod
                && !for_cluster
                && let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.insert("nodeName".into(), s.store.node_name().into());
            }
            let (obj, w) = parse_api_object(v, mode).map_err(|e| {
                if e.message.starts_with("unknown field") || e.message.starts_with("invalid ") {
                    strict_error(kind, &e.message)
                } else {
                    invalid(kind, &name, &e.message)
                }
            })?;
            warnings = w;
            let out = match obj {
                Object::Pod(p) => serde_json::to_value(*p),
                Object::ConfigMap(c) => serde_json::to_value(*c),
                Object::Secret(x) => serde_json::to_value(*x),
                Object::Service(x) => serde_json::to_value(x.as_ref()),
                Object::Endpoints(x) => serde_json::to_value(x.as_ref()),
                Object::Workload(w) => Ok(w.value),
            };
            out.map_err(|e| ApiError::internal(e.to_string()))?
        }
    };
    if let Some(o) = old {
        immutable(kind, &name, o, &stored)?;
    }
    let mut stored = stored;
    if kind == Kind::Workload(WorkloadKind::DaemonSet) {
        crate::manifest::daemonset::set_template_generation(old, &mut stored);
    }
    Ok((with_kind(stored, kind), warnings))
}

/// 400 for a body that does not decode (an unknown field under Strict, a wrong type).
fn strict_error(kind: Kind, message: &str) -> ApiError {
    let version = kind.api_version().rsplit('/').next().unwrap_or("v1");
    ApiError::bad_request(format!(
        "{k} in version \"{version}\" cannot be handled as a {k}: strict decoding error: {message}",
        k = kind.name()
    ))
}

/// Refuses changes the apiserver refuses: most of a pod's spec, a Service's cluster IP.
fn immutable(kind: Kind, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    match kind {
        Kind::Pod => {
            let (Ok(old), Ok(new)) = (
                serde_json::from_value::<Pod>(old.clone()),
                serde_json::from_value::<Pod>(new.clone()),
            ) else {
                return Ok(());
            };
            let (Some(mut o), Some(n)) = (old.spec, new.spec) else {
                return Ok(());
            };
            // What may change: images, activeDeadlineSeconds, added tolerations.
            for (oc, nc) in o.containers.iter_mut().zip(&n.containers) {
                oc.image = nc.image.clone();
            }
            for (oc, nc) in o
                .init_containers
                .iter_mut()
                .flatten()
                .zip(n.init_containers.iter().flatten())
            {
                oc.image = nc.image.clone();
            }
            o.active_deadline_seconds = n.active_deadline_seconds;
            let old_tol = o.tolerations.clone().unwrap_or_default();
            let new_tol = n.tolerations.clone().unwrap_or_default();
            if old_tol.iter().all(|t| new_tol.contains(t)) {
                o.tolerations = n.tolerations.clone();
            }
            if o != n {
                return Err(invalid(
                    kind,
                    name,
                    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
            Ok(())
        }
        Kind::Service => {
            let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str);
            let new_ip = new.pointer("/spec/clusterIP").and_then(Value::as_str);
            match (old_ip, new_ip) {
                (Some(o), Some(n)) if !o.is_empty() && !n.is_empty() && o != n => Err(invalid(
                    kind,
                    name,
                    &format!("spec.clusterIP: Invalid value: {n:?}: field is immutable"),
                )),
                _ => Ok(()),
            }
        }
        Kind::Workload(WorkloadKind::Job) => {
            // The apiserver's Job update rules: what makes the pods is fixed once created
            // (an Indexed Job may change completions together with parallelism).
            let indexed = old["spec"]["completionMode"] == "Indexed";
            let elastic = indexed
                && new["spec"]["completions"] == new["spec"]["parallelism"]
                && old["spec"]["completions"] == old["spec"]["parallelism"];
            for field in ["selector", "template", "completionMode", "completions"] {
                let (o, n) = (&old["spec"][field], &new["spec"][field]);
                if o != n && !(field == "completions" && elastic) {
                    return Err(invalid(
                        kind,
                        name,
                        &format!("spec.{field}: Invalid value: {n}: field is immutable"),
                    ));
                }
            }
            Ok(())
        }
        Kind::Workload(w) if w != WorkloadKind::ReplicationController => {
            let (o, n) = (&old["spec"]["selector"], &new["spec"]["selector"]);
            if o != n {
                return Err(invalid(
                    kind,
                    name,
                    &format!("spec.selector: Invalid value: {n}: field is immutable"),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Makes the stored object visible at once where the store serves it from (the manager's
/// next snapshot brings the same).
fn serve(s: &Writer, kind: Kind, stored: &Value, created: bool) {
    let ns = stored["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = stored["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match kind {
        Kind::ConfigMap | Kind::Secret => {
            s.store
                .serve_config(kind.plural(), (ns, name), Some(stored));
        }
        Kind::Service => {
            if let Ok(svc) = serde_json::from_value::<Service>(stored.clone()) {
                s.store.serve_service((ns, name), Some(svc));
            }
        }
        Kind::Pod => {
            let Ok(pod) = serde_json::from_value::<Pod>(stored.clone()) else {
                return;
            };
            // Multi-host: a pod waiting for the scheduler, or bound to another node, is not
            // this node's to show as its own (the pod lists add it from the cluster's copy).
            let elsewhere = s.store.clustered()
                && pod.spec.as_ref().and_then(|p| p.node_name.as_deref())
                    != Some(s.store.node_name());
            if created && elsewhere {
                return;
            }
            if created {
                let mut shown = pod;
                shown.status = Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some("Pending".into()),
                    qos_class: Some(crate::runtime::resources::qos_class(&shown).into()),
                    ..Default::default()
                });
                s.store.add_pod(shown);
            } else {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                s.store.update_pod(&(ns, name), &uid, |p| {
                    p.metadata.owner_references = pod.metadata.owner_references.clone();
                    p.metadata.labels = pod.metadata.labels.clone();
                    p.metadata.annotations = pod.metadata.annotations.clone();
                    p.metadata.managed_fields = pod.metadata.managed_fields.clone();
                    p.metadata.finalizers = pod.metadata.finalizers.clone();
                    p.spec = pod.spec.clone();
                });
            }
        }
        Kind::Namespace | Kind::Workload(_) => {}
    }
}

fn namespace_exists(s: &Writer, kind: Kind, ns: &str) -> Result<(), ApiError> {
    // A namespace the manifest directory uses counts as existing.
    let used = || {
        !s.store.list_pods(Some(ns)).is_empty()
            || !s.store.list_config_maps(Some(ns)).is_empty()
            || !s.store.list_secrets(Some(ns)).is_empty()
            || !s.store.services(Some(ns)).is_empty()
    };
    if kind.namespaced() && s.store.namespace(ns).is_none() && !used() {
        return Err(ApiError::not_found(format!(
            "namespaces \"{ns}\" not found"
        )));
    }
    Ok(())
}

/// Letters the apiserver uses for generated name suffixes.
const SUFFIX: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated(prefix: &str) -> String {
    let mut b = [0u8; 5];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let suffix: String = b
        .iter()
        .map(|x| SUFFIX[*x as usize % SUFFIX.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}

fn create(
    s: &Writer,
    kind: Kind,
    ns: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Written, ApiError> {
    let opts = WriteOptions::parse(q)?;
    let mut v = parse_body(headers, body)?;
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    if v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
        && let Some(prefix) = v["metadata"]["generateName"].as_str()
    {
        let name = generated(prefix);
        v["metadata"]["name"] = name.into();
    }
    create_value(s, kind, ns, v, &opts, Vec::new())
}

fn create_value(
    s: &Writer,
    kind: Kind,
    ns: &str,
    v: Value,
    opts: &WriteOptions,
    managed: Vec<Value>,
) -> Result<Written, ApiError> {
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    namespace_exists(s, kind, ns)?;
    if !name.is_empty() && current(s.store, kind, ns, &name).is_some() {
        return Err(ApiError::already_exists(format!(
            "{} \"{name}\" already exists",
            kind.plural()
        )));
    }
    let (mut stored, warnings) = admit(s, kind, ns, v, None, opts.field_validation)?;
    if !managed.is_empty() {
        stored["metadata"]["managedFields"] = Value::Array(managed);
    }
    if matches!(kind, Kind::Workload(_)) {
        stored["metadata"]["generation"] = 1.into();
    }
    if opts.dry_run {
        return Ok(Written {
            code: StatusCode::CREATED,
            body: stored,
            warnings,
        });
    }
    let stored = s
        .store
        .put_api_object(key(kind, ns, &name), stored)
        .map_err(|e| ApiError::internal(format!("storing {} {name:?}: {e}", kind.plural())))?;
    serve(s, kind, &stored, true);
    let body = if kind == Kind::Pod {
        current(s.store, kind, ns, &name).unwrap_or(stored)
    } else {
        stored
    };
    Ok(Written {
        code: StatusCode::CREATED,
        body,
        warnings,
    })
}

fn update(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Written, ApiError> {
    let opts = WriteOptions::parse(q)?;
    let v = parse_body(headers, body)?;
    let body_name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(name);
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let requested_rv = v
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(String::from);
    update_value(s, kind, ns, name, v, requested_rv, &opts, None)
}

/// Replaces an object with `v` (an update, or the result of a patch).
#[allow(clippy::too_many_arguments)]
fn update_value(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    mut v: Value,
    requested_rv: Option<String>,
    opts: &WriteOptions,
    managed: Option<Vec<Value>>,
) -> Result<Written, ApiError> {
    let Some(cur) = current(s.store, kind, ns, name) else {
        return Err(not_found(kind, name));
    };
    if let Some(file) = manifest_source(&cur) {
        return Err(refuse_manifest(kind, name, &file));
    }
    if kind == Kind::Namespace && crate::store::BUILTIN_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace is built into skiff and may not be changed"
        )));
    }
    let cur_rv = cur
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(rv) = &requested_rv
        && rv != cur_rv
    {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.plural()
        )));
    }
    let stored_old = s
        .store
        .api_object(&key(kind, ns, name))
        .unwrap_or(cur.clone());
    // A Service keeps the cluster IP it was given when the client leaves it out.
    if kind == Kind::Service
        && v.pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        && let Some(ip) = cur
            .pointer("/spec/clusterIP")
            .filter(|ip| ip.as_str().is_some_and(|i| !i.is_empty()))
        && v.get("spec").is_some_and(Value::is_object)
    {
        v["spec"]["clusterIP"] = ip.clone();
        if let Some(ips) = cur.pointer("/spec/clusterIPs") {
            v["spec"]["clusterIPs"] = ips.clone();
        }
    }
    let mut old_for_check = stored_old.clone();
    if kind == Kind::Service {
        old_for_check = cur.clone();
    }
    let (mut stored, warnings) =
        admit(s, kind, ns, v, Some(&old_for_check), opts.field_validation)?;
    if let Some(m) = managed {
        stored["metadata"]["managedFields"] = Value::Array(m);
    }
    if matches!(kind, Kind::Workload(_)) {
        // The status is the controller's; the generation counts changes of the spec.
        let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
        let g = if cur["spec"] == stored["spec"] {
            g
        } else {
            g + 1
        };
        stored["metadata"]["generation"] = g.into();
        if !cur["status"].is_null() {
            stored["status"] = cur["status"].clone();
        }
    }
    keep_deletion(kind, name, &stored_old, &mut stored)?;
    if opts.dry_run {
        return Ok(Written {
            code: StatusCode::OK,
            body: stored,
            warnings,
        });
    }
    let stored = s
        .store
        .put_api_object(key(kind, ns, name), stored)
        .map_err(|e| ApiError::internal(format!("storing {} {name:?}: {e}", kind.plural())))?;
    serve(s, kind, &stored, false);
    if being_deleted(&stored) && finalizers(&stored).is_empty() {
        finish_delete(s, kind, ns, name)?;
        return Ok(Written {
            code: StatusCode::OK,
            body: stored,
            warnings,
        });
    }
    let body = if kind == Kind::Pod {
        current(s.store, kind, ns, name).unwrap_or(stored)
    } else {
        stored
    };
    Ok(Written {
        code: StatusCode::OK,
        body,
        warnings,
    })
}

/// Whether an object is being deleted (held by its finalizers).
fn being_deleted(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// An object's `metadata.finalizers`.
fn finalizers(v: &Value) -> Vec<String> {
    v["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `metadata.finalizers`, leaving the field out when the list is empty.
fn set_finalizers(v: &mut Value, list: &[String]) {
    if list.is_empty() {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("finalizers");
        }
    } else {
        v["metadata"]["finalizers"] = json!(list);
    }
}

/// The deletion is the server's to mark: an update keeps `deletionTimestamp` and
/// `deletionGracePeriodSeconds` as stored (a client neither sets nor clears them), and an
/// object being deleted takes no new finalizer, with the apiserver's message.
fn keep_deletion(kind: Kind, name: &str, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match old["metadata"].get(field).filter(|x| !x.is_null()) {
            Some(x) => new["metadata"][field] = x.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if !being_deleted(old) {
        return Ok(());
    }
    let before = finalizers(old);
    let added: Vec<String> = finalizers(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .map(|f| format!("{f:?}"))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    Err(invalid(
        kind,
        name,
        &format!(
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
            added.join(", ")
        ),
    ))
}

/// Adds `f` to an object's finalizers unless it is there.
fn add_finalizer(v: &mut Value, f: &str) {
    let mut list = finalizers(v);
    if !list.iter().any(|x| x == f) {
        list.push(f.to_string());
    }
    set_finalizers(v, &list);
}

/// Marks an object its finalizers hold as being deleted (`deletionTimestamp`, and the grace
/// period for a pod, whose worker then stops it) and returns it as now served; `None` when no
/// finalizer holds it (then it is deleted at once). The check and the mark are one change under
/// the store's lock, so a finalizer removed meanwhile is never taken back.
fn mark_deleted(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    grace: i64,
) -> Result<Option<Value>, ApiError> {
    let k = key(kind, ns, name);
    let Some(uid) = s
        .store
        .api_object(&k)
        .and_then(|v| v["metadata"]["uid"].as_str().map(String::from))
    else {
        return Ok(None);
    };
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
    let stored = s
        .store
        .update_workload(&k, &uid, |v| {
            if !finalizers(v).is_empty() && !being_deleted(v) {
                v["metadata"]["deletionTimestamp"] = at.to_string().into();
                v["metadata"]["deletionGracePeriodSeconds"] = grace.into();
            }
        })
        .map_err(|e| ApiError::internal(format!("deleting {} {name:?}: {e}", kind.plural())))?;
    let Some(stored) = stored.filter(|v| !finalizers(v).is_empty()) else {
        return Ok(None);
    };
    serve(s, kind, &stored, false);
    if kind == Kind::Pod {
        s.store
            .update_pod(&(ns.to_string(), name.to_string()), &uid, |p| {
                if p.metadata.deletion_timestamp.is_none() {
                    p.metadata.deletion_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
                    p.metadata.deletion_grace_period_seconds = Some(grace);
                }
            });
    }
    Ok(Some(current(s.store, kind, ns, name).unwrap_or(stored)))
}

/// The last finalizer of an object being deleted is gone: the object goes, and with it what
/// serves it (a held pod stays until its worker is done).
fn finish_delete(s: &Writer, kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
    s.store
        .delete_api_object(&key(kind, ns, name))
        .map_err(|e| ApiError::internal(format!("removing {} {name:?}: {e}", kind.plural())))?;
    let k = (ns.to_string(), name.to_string());
    match kind {
        // A held pod goes with its object (`Store::delete_api_object`).
        Kind::Pod => {}
        Kind::ConfigMap | Kind::Secret => s.store.serve_config(kind.plural(), k, None),
        Kind::Service => s.store.serve_service(k, None),
        Kind::Namespace | Kind::Workload(_) => {}
    }
    Ok(())
}

fn patch_object(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Written, ApiError> {
    let opts = WriteOptions::parse(q)?;
    let ct = patch_type(headers);
    if ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor" {
        if ct.ends_with("cbor") {
            return Err(ApiError::unsupported_media(&ct));
        }
        return apply(s, kind, ns, name, &opts, body);
    }
    let Some(cur) = current(s.store, kind, ns, name) else {
        return Err(not_found(kind, name));
    };
    if let Some(file) = manifest_source(&cur) {
        return Err(refuse_manifest(kind, name, &file));
    }
    let mut target = cur.clone();
    if let Some(o) = target.as_object_mut() {
        o.remove("status");
    }
    apply_patch(&mut target, &ct, body)?;
    // Only a patch that names a version is a precondition.
    let requested_rv = target
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && patch_names_rv(body))
        .map(String::from);
    update_value(s, kind, ns, name, target, requested_rv, &opts, None)
}

/// The media type of a PATCH, without its parameters.
pub(super) fn patch_type(headers: &HeaderMap) -> String {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ct.split(';').next().unwrap_or_default().trim().to_string()
}

/// Applies a JSON, merge or strategic merge patch (`ct`, its media type) to `target`.
pub(super) fn apply_patch(target: &mut Value, ct: &str, body: &[u8]) -> Result<(), ApiError> {
    match ct {
        "application/merge-patch+json" => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
            json_patch::merge(target, &p);
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(target, &p).map_err(|e| {
                ApiError::invalid(
                    format!("the server rejected our request due to an error in our request: {e}"),
                    json!({}),
                )
            })?;
        }
        "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("invalid strategic merge patch: {e}"))
            })?;
            strategic_merge(target, &p);
        }
        other => return Err(ApiError::unsupported_media(other)),
    }
    Ok(())
}

fn patch_names_rv(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|b| b.contains("resourceVersion"))
}

/// Server-side apply: creates the object or merges the applied configuration into it, and
/// records the field manager's fields in `metadata.managedFields`.
fn apply(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    opts: &WriteOptions,
    body: &[u8],
) -> Result<Written, ApiError> {
    let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let applied: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration is not an object",
        ));
    }
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": "v1",
        "time": jiff::Timestamp::now().to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(&applied),
    });
    match current(s.store, kind, ns, name) {
        None => {
            let mut v = applied;
            if v.pointer("/metadata/name").is_none() {
                v["metadata"]["name"] = name.into();
            }
            create_value(s, kind, ns, v, opts, vec![entry])
        }
        Some(cur) => {
            if let Some(file) = manifest_source(&cur) {
                return Err(refuse_manifest(kind, name, &file));
            }
            let mut target = cur.clone();
            if let Some(o) = target.as_object_mut() {
                o.remove("status");
            }
            let mut managed: Vec<Value> = cur
                .pointer("/metadata/managedFields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !opts.force {
                conflicts(&cur, &applied, &managed, &manager)?;
            }
            managed.retain(|m| !(m["manager"] == entry["manager"] && m["operation"] == "Apply"));
            managed.push(entry);
            strategic_merge(&mut target, &applied);
            if let Some(m) = target["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            update_value(s, kind, ns, name, target, None, opts, Some(managed))
        }
    }
}

/// The fields a `fieldsV1` set names, as JSON pointers; a list counts as one field.
fn leaf_paths(fields: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(m) = fields.as_object() else {
        return;
    };
    for (k, v) in m {
        let Some(name) = k.strip_prefix("f:") else {
            continue;
        };
        let path = format!("{prefix}/{}", name.replace('~', "~0").replace('/', "~1"));
        let leaf = v.as_object().is_none_or(|o| {
            o.is_empty() || o.keys().any(|k| k.starts_with("k:") || k.starts_with("v:"))
        });
        if leaf {
            out.push(path);
        } else {
            leaf_paths(v, &path, out);
        }
    }
}

/// Server-side apply's conflicts: a field another apply manager owns that this apply would
/// change. Refused with 409 unless forced, as the apiserver does.
fn conflicts(cur: &Value, applied: &Value, managed: &[Value], me: &str) -> Result<(), ApiError> {
    let mut mine = Vec::new();
    leaf_paths(&fields_v1(applied), "", &mut mine);
    let mut found = Vec::new();
    for m in managed {
        let Some(owner) = m["manager"].as_str() else {
            continue;
        };
        if owner == me || m["operation"] != "Apply" {
            continue;
        }
        let mut theirs = Vec::new();
        leaf_paths(&m["fieldsV1"], "", &mut theirs);
        for p in mine.iter().filter(|p| theirs.contains(p)) {
            if cur.pointer(p) != applied.pointer(p) {
                found.push((owner.to_string(), p.replace('/', ".")));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = found
        .iter()
        .map(|(o, f)| format!("conflict with \"{o}\": {f}"))
        .collect();
    let causes: Vec<Value> = found
        .iter()
        .map(|(o, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{o}\""), "field": f}))
        .collect();
    let mut e = ApiError::conflict(format!(
        "Apply failed with {} conflict{}: {}",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        list.join("; ")
    ));
    e.details = Some(json!({"causes": causes}));
    Err(e)
}

/// The `fieldsV1` set of an applied configuration: every field it sets, keyed list items by
/// their merge key.
fn fields_v1(v: &Value) -> Value {
    fn walk(v: &Value, field: &str) -> Value {
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, x) in m {
                    if matches!(k.as_str(), "apiVersion" | "kind") && field.is_empty() {
                        continue;
                    }
                    out.insert(format!("f:{k}"), walk(x, k));
                }
                Value::Object(out)
            }
            Value::Array(items) => {
                let mut out = Map::new();
                for item in items {
                    match merge_key(field, item).and_then(|k| item.get(k).map(|x| (k, x))) {
                        Some((k, x)) => {
                            let id = json!({k: x});
                            out.insert(format!("k:{id}"), walk(item, ""));
                        }
                        None => {
                            out.insert(format!("v:{item}"), json!({}));
                        }
                    }
                }
                Value::Object(out)
            }
            _ => json!({}),
        }
    }
    walk(v, "")
}

/// The strategic merge key of a list field, as the Kubernetes types declare it
/// (`patchMergeKey`) for the lists that matter here.
fn merge_key(field: &str, item: &Value) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        // Pod and node conditions (`patchMergeKey: type`).
        "conditions" => Some("type"),
        "ports" if item.get("containerPort").is_some() => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// A strategic merge patch: objects merge, `null` deletes, lists with a merge key merge item
/// by item (`$patch: delete` removes one), other lists are replaced; `$patch: replace`
/// replaces an object; `$setElementOrder`/`$retainKeys` directives are accepted.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    fn merge(target: &mut Value, patch: &Value) {
        let Some(p) = patch.as_object() else {
            *target = patch.clone();
            return;
        };
        if p.get("$patch").and_then(Value::as_str) == Some("replace") {
            let mut v = patch.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("$patch");
            }
            *target = v;
            return;
        }
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().expect("made an object above");
        for (k, pv) in p {
            if k.starts_with('$') {
                continue;
            }
            if pv.is_null() {
                t.remove(k);
                continue;
            }
            match (t.get_mut(k), pv) {
                (Some(Value::Array(items)), Value::Array(patches))
                    if patches
                        .iter()
                        .chain(items.iter())
                        .next()
                        .is_some_and(|i| merge_key(k, i).is_some()) =>
                {
                    merge_list(k, items, patches);
                }
                (Some(tv @ Value::Object(_)), Value::Object(_)) => merge(tv, pv),
                _ => {
                    let mut v = pv.clone();
                    strip_directives(&mut v);
                    t.insert(k.clone(), v);
                }
            }
        }
    }
    fn merge_list(field: &str, items: &mut Vec<Value>, patches: &[Value]) {
        for p in patches {
            let Some(mk) = merge_key(field, p) else {
                continue;
            };
            let id = p.get(mk);
            let pos = items.iter().position(|i| i.get(mk) == id && id.is_some());
            if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                if let Some(i) = pos {
                    items.remove(i);
                }
                continue;
            }
            match pos {
                Some(i) => merge(&mut items[i], p),
                None => {
                    let mut v = p.clone();
                    strip_directives(&mut v);
                    items.push(v);
                }
            }
        }
    }
    fn strip_directives(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| !k.starts_with('$'));
                for x in m.values_mut() {
                    strip_directives(x);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(strip_directives),
            _ => {}
        }
    }
    merge(target, patch)
}

/// DeleteOptions from the body, when kubectl sends one.
fn delete_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn remove(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    q: Option<&str>,
    body: &[u8],
) -> Result<Written, ApiError> {
    let mut opts = WriteOptions::parse(q)?;
    let b = delete_body(body);
    if b["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "All"))
    {
        opts.dry_run = true;
    }
    if let Some(n) = b["gracePeriodSeconds"].as_i64().filter(|n| *n >= 0) {
        opts.grace_period = Some(n);
    }
    if let Some(p) = b["propagationPolicy"].as_str() {
        opts.propagation = Some(Propagation::parse(p)?);
    }
    if b["orphanDependents"] == true {
        opts.propagation = Some(Propagation::Orphan);
    }
    let Some(cur) = current(s.store, kind, ns, name) else {
        return Err(not_found(kind, name));
    };
    if let Some(file) = manifest_source(&cur) {
        return Err(refuse_manifest(kind, name, &file));
    }
    if kind == Kind::Namespace && crate::store::BUILTIN_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    let k = key(kind, ns, name);
    let status_ok = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "kind": kind.plural(), "uid": cur["metadata"]["uid"]},
    });
    if opts.dry_run {
        return Ok(Written {
            code: StatusCode::OK,
            body: cur,
            warnings: Vec::new(),
        });
    }
    let mut warnings = Vec::new();
    if kind == Kind::Namespace {
        warnings = delete_namespace_contents(s, name)?;
    }
    if let Kind::Workload(_) = kind {
        let uid = cur["metadata"]["uid"].as_str().unwrap_or_default();
        match opts.propagation.unwrap_or(Propagation::Background) {
            Propagation::Orphan => {
                // Marked as being deleted first (the apiserver's `orphan` finalizer): a
                // controller then adopts nothing more, so a dependent released below cannot be
                // claimed back before the owner is gone and then collected as garbage.
                s.store
                    .update_workload(&k, uid, |v| {
                        v["metadata"]["deletionTimestamp"] =
                            jiff::Timestamp::now().to_string().into();
                        v["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                        add_finalizer(v, "orphan");
                    })
                    .map_err(|e| {
                        ApiError::internal(format!("deleting {} {name:?}: {e}", kind.plural()))
                    })?;
                orphan_dependents(s, ns, uid);
                // The orphan finalizer's work is done; others (a client's) may still hold.
                let left = s
                    .store
                    .update_workload(&k, uid, |v| {
                        let mut list = finalizers(v);
                        list.retain(|f| f != "orphan");
                        set_finalizers(v, &list);
                    })
                    .map_err(|e| {
                        ApiError::internal(format!("deleting {} {name:?}: {e}", kind.plural()))
                    })?;
                if let Some(v) = left.filter(|v| !finalizers(v).is_empty()) {
                    return Ok(Written {
                        code: StatusCode::OK,
                        body: with_kind(v, kind),
                        warnings,
                    });
                }
            }
            Propagation::Background => {}
            Propagation::Foreground => {
                // Kept, being deleted, until the garbage collector has removed what it owns.
                let deleting = s
                    .store
                    .update_workload(&k, uid, |v| {
                        v["metadata"]["deletionTimestamp"] =
                            jiff::Timestamp::now().to_string().into();
                        v["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                        add_finalizer(v, "foregroundDeletion");
                    })
                    .map_err(|e| {
                        ApiError::internal(format!("deleting {} {name:?}: {e}", kind.plural()))
                    })?;
                return Ok(Written {
                    code: StatusCode::OK,
                    body: deleting.map(|v| with_kind(v, kind)).unwrap_or(cur),
                    warnings,
                });
            }
        }
    }
    // The delete's own grace period wins over the pod's.
    let grace = opts.grace_period.unwrap_or_else(|| {
        cur.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
    });
    // Finalizers (a client's) hold the object: it is only marked, and goes when the last one
    // is removed (`finish_delete`).
    let held_grace = if kind == Kind::Pod { grace } else { 0 };
    if let Some(body) = mark_deleted(s, kind, ns, name, held_grace)? {
        return Ok(Written {
            code: StatusCode::OK,
            body,
            warnings,
        });
    }
    // A pod is marked terminating before its object goes: removing the object wakes its
    // worker, which reads the delete's grace period back from the stored pod.
    let pod_key = (ns.to_string(), name.to_string());
    let uid = cur["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if kind == Kind::Pod {
        s.store.update_pod(&pod_key, &uid, |p| {
            p.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace),
                ));
            p.metadata.deletion_grace_period_seconds = Some(grace);
        });
    }
    if let Err(e) = s.store.delete_api_object(&k) {
        if kind == Kind::Pod {
            s.store.update_pod(&pod_key, &uid, |p| {
                p.metadata.deletion_timestamp = None;
                p.metadata.deletion_grace_period_seconds = None;
            });
        }
        return Err(ApiError::internal(format!(
            "removing {} {name:?}: {e}",
            kind.plural()
        )));
    }
    let body = match kind {
        Kind::Pod => current(s.store, kind, ns, name).unwrap_or(cur),
        Kind::ConfigMap | Kind::Secret => {
            s.store
                .serve_config(kind.plural(), (ns.to_string(), name.to_string()), None);
            status_ok
        }
        Kind::Service => {
            s.store
                .serve_service((ns.to_string(), name.to_string()), None);
            status_ok
        }
        Kind::Namespace => {
            let mut v = cur;
            v["status"]["phase"] = "Terminating".into();
            v
        }
        Kind::Workload(_) => status_ok,
    };
    Ok(Written {
        code: StatusCode::OK,
        body,
        warnings,
    })
}

/// Deletes a pod for an eviction (`pods/eviction`) with the eviction's DeleteOptions
/// (`options`, JSON) and the query's `dryRun`; refused as any delete would be.
pub(super) fn evict_pod(
    s: &Shared,
    ns: &str,
    name: &str,
    q: Option<&str>,
    options: &Value,
) -> Result<(), ApiError> {
    let body = serde_json::to_vec(options).unwrap_or_default();
    remove(&Writer::of(s), Kind::Pod, ns, name, q, &body).map(|_| ())
}

/// `deletecollection`: deletes every object of `kind` in `ns` that the `labelSelector` and
/// `fieldSelector` select, each as a delete of its own (grace period, propagation and
/// `dryRun` from the query or the DeleteOptions body). Objects their manifest file owns stay,
/// with a warning naming the file; the answer is the list of what was (or would be) deleted.
fn remove_collection(
    s: &Writer,
    kind: Kind,
    ns: &str,
    q: Option<&str>,
    body: &[u8],
) -> Result<Written, ApiError> {
    // Checked first so that a bad option deletes nothing.
    WriteOptions::parse(q)?;
    let mut selected = json!({"items": list(s.store, kind, Some(ns))});
    let query = super::list::ListQuery::parse(q)?;
    let query = super::list::ListQuery {
        limit: None,
        continue_: None,
        ..query
    };
    super::list::apply(
        &mut selected,
        kind.name(),
        &query,
        s.store.resource_version(),
    )?;
    let mut deleted = Vec::new();
    let mut warnings = Vec::new();
    for obj in selected["items"].as_array().into_iter().flatten() {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(file) = manifest_source(obj) {
            warnings.push(format!(
                "{} {ns}/{name} stays: it is defined in the manifest file {file}",
                kind.name()
            ));
            continue;
        }
        match remove(s, kind, ns, name, q, body) {
            Ok(w) => {
                warnings.extend(w.warnings);
                // A pod answers with itself, terminating; the other kinds with a Status.
                deleted.push(if w.body["kind"] == "Status" {
                    obj.clone()
                } else {
                    w.body
                });
            }
            // Gone meanwhile (another client, the garbage collector): nothing left to do.
            Err(e) if e.reason() == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Written {
        code: StatusCode::OK,
        body: json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": s.store.resource_version().to_string()},
            "items": deleted,
        }),
        warnings,
    })
}

/// Deletes what was made through the API in namespace `ns`; returns warnings naming the
/// manifest objects in it, which stay (their files own them).
fn delete_namespace_contents(s: &Writer, ns: &str) -> Result<Vec<String>, ApiError> {
    let workloads = WorkloadKind::ALL.map(Kind::Workload);
    for kind in
        workloads
            .into_iter()
            .chain([Kind::Pod, Kind::Service, Kind::ConfigMap, Kind::Secret])
    {
        for (k, v) in s.store.api_objects(kind.plural()) {
            if k.1 != ns {
                continue;
            }
            let name = k.2.clone();
            s.store.delete_api_object(&k).map_err(|e| {
                ApiError::internal(format!("removing {} {name:?}: {e}", kind.plural()))
            })?;
            match kind {
                Kind::ConfigMap | Kind::Secret => {
                    s.store.serve_config(kind.plural(), (ns.into(), name), None)
                }
                Kind::Service => s.store.serve_service((ns.into(), name), None),
                Kind::Pod => {
                    let uid = v["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    s.store.update_pod(&(ns.into(), name), &uid, |p| {
                        p.metadata.deletion_timestamp =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                jiff::Timestamp::now(),
                            ));
                    });
                }
                Kind::Namespace | Kind::Workload(_) => {}
            }
        }
    }
    let mut warnings = Vec::new();
    for kind in [Kind::Pod, Kind::Service, Kind::ConfigMap, Kind::Secret] {
        for v in list(s.store, kind, Some(ns)) {
            if let Some(file) = manifest_source(&v) {
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let msg = format!(
                    "{} {ns}/{name} stays: it is defined in the manifest file {file}",
                    kind.name()
                );
                s.store.event(
                    &crate::store::Involved {
                        kind: "Namespace".into(),
                        namespace: ns.into(),
                        name: ns.into(),
                        uid: None,
                    },
                    crate::store::EventType::Warning,
                    "ManifestObjectKept",
                    &msg,
                );
                warnings.push(msg);
            }
        }
    }
    Ok(warnings)
}

/// Adds the objects made through the API to a snapshot of the manifest directory, so the
/// pod manager runs API-made pods and the service controller and volumes see API-made
/// Services, ConfigMaps and Secrets exactly as they see manifest ones. A manifest object
/// wins over an API-made one of the same name.
pub fn with_api_objects(mut snap: Snapshot, store: &Store) -> Snapshot {
    let namespaces: std::collections::BTreeSet<String> = store
        .namespaces()
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for ((_, ns, name), v) in store.api_objects("pods") {
        if !namespaces.contains(&ns) {
            continue;
        }
        // A pod being deleted but held by its finalizers is no longer to run; in a cluster
        // (multi-host), a pod not (yet) bound to this node runs elsewhere, or nowhere yet.
        if being_deleted(&v)
            || (store.clustered() && v["spec"]["nodeName"].as_str() != Some(store.node_name()))
        {
            continue;
        }
        if let Ok(pod) = serde_json::from_value::<Pod>(v) {
            snap.pods.entry((ns, name)).or_insert(DesiredPod {
                pod,
                source: PathBuf::from("api"),
            });
        }
    }
    for ((_, ns, name), v) in store.api_objects("configmaps") {
        if let Ok(cm) = serde_json::from_value(v) {
            snap.config_maps.entry((ns, name)).or_insert(cm);
        }
    }
    for ((_, ns, name), v) in store.api_objects("secrets") {
        if let Ok(x) = serde_json::from_value(v) {
            snap.secrets.entry((ns, name)).or_insert(x);
        }
    }
    for ((_, ns, name), v) in store.api_objects("services") {
        if let Ok(x) = serde_json::from_value::<Service>(v) {
            snap.services
                .entry((ns, name))
                .or_insert(std::sync::Arc::new(x));
        }
    }
    snap
}

/// Feeds the pod manager: every manifest snapshot, and the last one again after every API
/// write. The API-made objects are added by the manager itself when it applies a snapshot
/// ([`with_api_objects`]), not here: a snapshot waiting in the channel would otherwise carry
/// the API objects of its time and, applied after a newer write, take that write back (a
/// Service just made by `kubectl expose` vanished until the next snapshot).
pub async fn merge_snapshots(
    mut manifests: tokio::sync::mpsc::Receiver<Snapshot>,
    store: std::sync::Arc<Store>,
    tx: tokio::sync::mpsc::Sender<Snapshot>,
) {
    let mut api = store.subscribe_api();
    let mut last: Option<Snapshot> = None;
    loop {
        tokio::select! {
            s = manifests.recv() => match s {
                Some(s) => last = Some(s),
                None => return,
            },
            r = api.changed() => if r.is_err() { return },
        }
        if let Some(s) = &last
            && tx.send(s.clone()).await.is_err()
        {
            return;
        }
    }
}

/// A workload's `autoscaling/v1` Scale.
fn scale_of(v: &Value) -> Value {
    let m = &v["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": v["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": v["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": crate::selector::workload_selector_text(v),
        },
    })
}

/// GET, PUT and PATCH of a workload's `/scale` (`kubectl scale`, the HPA).
pub fn scale(kind: Kind) -> MethodRouter<Shared> {
    get(move |State(s): State<Shared>, uri: Uri| async move {
        let (ns, name) = names(kind, &uri);
        match current(&s.store, kind, &ns, &name) {
            Some(v) => axum::Json(scale_of(&v)).into_response(),
            None => not_found(kind, &name).into_response(),
        }
    })
    .put(
        move |State(s): State<Shared>,
              uri: Uri,
              RawQuery(q): RawQuery,
              headers: HeaderMap,
              body: Bytes| async move {
            let (ns, name) = names(kind, &uri);
            let r = super::leader_only::leader_only(&s.store, kind, &ns, Some(&name))
                .and_then(|()| parse_body(&headers, &body))
                .and_then(|v| rescale(&Writer::of(&s), kind, &ns, &name, q.as_deref(), v));
            respond(r)
        },
    )
    .patch(
        move |State(s): State<Shared>,
              uri: Uri,
              RawQuery(q): RawQuery,
              headers: HeaderMap,
              body: Bytes| async move {
            let (ns, name) = names(kind, &uri);
            let w = Writer::of(&s);
            let r = (|| {
                super::leader_only::leader_only(&s.store, kind, &ns, Some(&name))?;
                let cur =
                    current(w.store, kind, &ns, &name).ok_or_else(|| not_found(kind, &name))?;
                let mut target = scale_of(&cur);
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if ct.starts_with("application/json-patch+json") {
                    let p: json_patch::Patch = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut target, &p)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                } else {
                    let p: Value = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?;
                    json_patch::merge(&mut target, &p);
                }
                if !patch_names_rv(&body)
                    && let Some(m) = target["metadata"].as_object_mut()
                {
                    m.remove("resourceVersion");
                }
                rescale(&w, kind, &ns, &name, q.as_deref(), target)
            })();
            respond(r)
        },
    )
}

/// Sets a workload's replicas from a Scale object.
fn rescale(
    s: &Writer,
    kind: Kind,
    ns: &str,
    name: &str,
    q: Option<&str>,
    scale: Value,
) -> Result<Written, ApiError> {
    let opts = WriteOptions::parse(q)?;
    let Some(replicas) = scale.pointer("/spec/replicas").and_then(Value::as_i64) else {
        return Err(ApiError::bad_request(
            "Scale: spec.replicas: Required value",
        ));
    };
    if replicas < 0 {
        return Err(ApiError::invalid(
            format!(
                "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
            ),
            json!({"name": name, "kind": "Scale"}),
        ));
    }
    let Some(cur) = current(s.store, kind, ns, name) else {
        return Err(not_found(kind, name));
    };
    let requested_rv = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(String::from);
    let mut target = cur;
    if let Some(o) = target.as_object_mut() {
        o.remove("status");
    }
    target["spec"]["replicas"] = replicas.into();
    let w = update_value(s, kind, ns, name, target, requested_rv, &opts, None)?;
    Ok(Written {
        code: w.code,
        body: scale_of(&w.body),
        warnings: w.warnings,
    })
}

/// The controllers' own writes (issue 11): they create, change and delete objects through the
/// same path and checks as a client, as kube-controller-manager does through the apiserver.
pub mod internal {
    use super::*;

    /// Creates `v` in `ns` (a `generateName` gets its random suffix); returns it as stored.
    pub fn create(s: &Writer, kind: Kind, ns: &str, mut v: Value) -> Result<Value, ApiError> {
        if v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            && let Some(prefix) = v["metadata"]["generateName"].as_str()
        {
            v["metadata"]["name"] = generated(prefix).into();
        }
        let opts = WriteOptions {
            field_validation: FieldValidation::Strict,
            ..Default::default()
        };
        create_value(s, kind, ns, v, &opts, Vec::new()).map(|w| w.body)
    }

    /// Deletes an object (a pod with its own grace period); dependents go in the background.
    pub fn delete(s: &Writer, kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
        remove(s, kind, ns, name, None, b"").map(|_| ())
    }

    /// Sets a workload's replicas through its scale subresource (the HPA's write).
    pub fn scale(
        s: &Writer,
        kind: Kind,
        ns: &str,
        name: &str,
        replicas: i32,
    ) -> Result<(), ApiError> {
        let scale = json!({"spec": {"replicas": replicas}});
        rescale(s, kind, ns, name, None, scale).map(|_| ())
    }

    /// Rewrites the owner references of a pod made through the API (adoption, release).
    pub fn set_pod_owners(
        s: &Writer,
        ns: &str,
        name: &str,
        owners: Option<Vec<Value>>,
    ) -> Result<(), ApiError> {
        let Some(mut v) = s.store.api_object(&key(Kind::Pod, ns, name)) else {
            return Err(not_found(Kind::Pod, name));
        };
        match owners {
            Some(o) if !o.is_empty() => v["metadata"]["ownerReferences"] = Value::Array(o),
            _ => {
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
            }
        }
        let stored = s
            .store
            .put_api_object(key(Kind::Pod, ns, name), v)
            .map_err(|e| ApiError::internal(format!("storing pods {name:?}: {e}")))?;
        serve(s, Kind::Pod, &stored, false);
        Ok(())
    }

    /// Deletes an object with a propagation policy (the TTL controller deletes in the
    /// foreground).
    pub fn delete_with(
        s: &Writer,
        kind: Kind,
        ns: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<(), ApiError> {
        let body = json!({"propagationPolicy": format!("{propagation:?}")}).to_string();
        remove(s, kind, ns, name, None, body.as_bytes()).map(|_| ())
    }

    /// Drops `finalizer` from a pod: from its API object if it still has one, and from the
    /// pod as served (a pod deleted through the API stays served while it terminates).
    pub fn remove_pod_finalizer(
        s: &Writer,
        ns: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), ApiError> {
        remove_finalizer(s, Kind::Pod, ns, name, finalizer)?;
        if let Some(uid) = s.store.get_pod(ns, name).and_then(|p| p.metadata.uid) {
            s.store
                .update_pod(&(ns.to_string(), name.to_string()), &uid, |p| {
                    if let Some(list) = p.metadata.finalizers.as_mut() {
                        list.retain(|f| f != finalizer);
                        if list.is_empty() {
                            p.metadata.finalizers = None;
                        }
                    }
                });
        }
        Ok(())
    }

    /// Drops `finalizer` from an object made through the API; an object being deleted goes
    /// with its last finalizer.
    pub fn remove_finalizer(
        s: &Writer,
        kind: Kind,
        ns: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), ApiError> {
        let k = key(kind, ns, name);
        let Some(mut v) = s.store.api_object(&k) else {
            return Ok(());
        };
        let mut list = finalizers(&v);
        if !list.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        list.retain(|f| f != finalizer);
        set_finalizers(&mut v, &list);
        let stored = s
            .store
            .put_api_object(k, v)
            .map_err(|e| ApiError::internal(format!("storing {} {name:?}: {e}", kind.plural())))?;
        if being_deleted(&stored) && list.is_empty() {
            finish_delete(s, kind, ns, name)?;
        }
        Ok(())
    }
}

/// Drops the owner reference to `uid` from the objects in `ns` that have one (an orphaning
/// delete): pods and ReplicaSets stay, ownerless.
fn orphan_dependents(s: &Writer, ns: &str, uid: &str) {
    let strip = |refs: &Value| -> Option<Vec<Value>> {
        let refs = refs.as_array()?;
        refs.iter()
            .any(|r| r["uid"] == uid)
            .then(|| refs.iter().filter(|r| r["uid"] != uid).cloned().collect())
    };
    for (k, v) in s.store.api_objects("pods") {
        if k.1 != ns {
            continue;
        }
        if let Some(kept) = strip(&v["metadata"]["ownerReferences"]) {
            let _ = internal::set_pod_owners(s, ns, &k.2, Some(kept));
        }
    }
    for w in WorkloadKind::ALL {
        for v in s.store.list_workloads(w.plural(), Some(ns)) {
            if let Some(kept) = strip(&v["metadata"]["ownerReferences"]) {
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let own = v["metadata"]["uid"].as_str().unwrap_or_default();
                let _ = s
                    .store
                    .update_workload(&key(Kind::Workload(w), ns, name), own, |v| {
                        v["metadata"]["ownerReferences"] = Value::Array(kept);
                    });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_writer<T>(f: impl FnOnce(&Writer) -> T) -> T {
        let store = Store::new("n");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        f(&Writer {
            store: &store,
            resync: &tx,
        })
    }

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, v.parse().unwrap());
        h
    }

    fn cm(name: &str) -> Vec<u8> {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}})
            .to_string()
            .into_bytes()
    }

    fn status(r: Result<Written, ApiError>) -> (u16, String) {
        match r {
            Ok(w) => (w.code.as_u16(), w.body.to_string()),
            Err(e) => (e.code.as_u16(), format!("{} {}", e.reason, e.message)),
        }
    }

    #[test]
    fn create_conflicts_and_dry_run_as_the_apiserver() {
        with_writer(|w| {
            let j = ct("application/json");
            // Dry run: answered, nothing stored.
            let (code, _) = status(create(
                w,
                Kind::ConfigMap,
                "default",
                Some("dryRun=All"),
                &j,
                &cm("c"),
            ));
            assert_eq!(code, 201);
            assert!(w.store.config_map("default", "c").is_none());
            let created = create(w, Kind::ConfigMap, "default", None, &j, &cm("c"))
                .ok()
                .unwrap();
            assert_eq!(created.code, StatusCode::CREATED);
            let uid = created.body["metadata"]["uid"].clone();
            assert_eq!(
                created.body["metadata"]["annotations"][SOURCE_ANNOTATION],
                "api"
            );
            let served = w.store.config_map("default", "c").unwrap();
            assert_eq!(
                served.metadata.resource_version.as_deref(),
                created.body["metadata"]["resourceVersion"].as_str()
            );
            let (code, msg) = status(create(w, Kind::ConfigMap, "default", None, &j, &cm("c")));
            assert_eq!(
                (code, msg.as_str()),
                (409, "AlreadyExists configmaps \"c\" already exists")
            );
            // An update naming the current version goes through and keeps the uid ...
            let mut v: Value = serde_json::from_slice(&cm("c")).unwrap();
            v["metadata"]["resourceVersion"] = created.body["metadata"]["resourceVersion"].clone();
            v["data"]["a"] = "2".into();
            let up = update(
                w,
                Kind::ConfigMap,
                "default",
                "c",
                None,
                &j,
                v.to_string().as_bytes(),
            )
            .ok()
            .unwrap();
            assert_eq!(up.body["metadata"]["uid"], uid);
            assert_eq!(
                w.store.config_map("default", "c").unwrap().data.unwrap()["a"],
                "2"
            );
            // ... one naming an older version conflicts.
            let (code, msg) = status(update(
                w,
                Kind::ConfigMap,
                "default",
                "c",
                None,
                &j,
                v.to_string().as_bytes(),
            ));
            assert_eq!(code, 409);
            assert!(msg.contains("the object has been modified"), "{msg}");
            // A namespace that does not exist.
            let (code, msg) = status(create(w, Kind::ConfigMap, "nowhere", None, &j, &cm("c")));
            assert_eq!(
                (code, msg.as_str()),
                (404, "NotFound namespaces \"nowhere\" not found")
            );
            // generateName.
            let g = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"generateName": "gen-"}});
            let made = create(
                w,
                Kind::ConfigMap,
                "default",
                None,
                &j,
                g.to_string().as_bytes(),
            )
            .ok()
            .unwrap();
            let name = made.body["metadata"]["name"].as_str().unwrap();
            assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
        })
    }

    #[test]
    fn the_three_patch_types_and_server_side_apply() {
        with_writer(|w| {
            create(
                w,
                Kind::ConfigMap,
                "default",
                None,
                &ct("application/json"),
                &cm("c"),
            )
            .ok()
            .unwrap();
            let patch = |t: &str, body: &str, q: Option<&str>| {
                patch_object(
                    w,
                    Kind::ConfigMap,
                    "default",
                    "c",
                    q,
                    &ct(t),
                    body.as_bytes(),
                )
            };
            patch(
                "application/merge-patch+json",
                r#"{"data":{"m":"1","a":null}}"#,
                None,
            )
            .ok()
            .unwrap();
            patch(
                "application/json-patch+json",
                r#"[{"op":"add","path":"/data/j","value":"2"}]"#,
                None,
            )
            .ok()
            .unwrap();
            patch(
                "application/strategic-merge-patch+json",
                r#"{"metadata":{"labels":{"s":"3"}}}"#,
                None,
            )
            .ok()
            .unwrap();
            let c = w.store.config_map("default", "c").unwrap();
            let data = c.data.unwrap();
            assert_eq!(
                (data.get("a"), data["m"].as_str(), data["j"].as_str()),
                (None, "1", "2")
            );
            assert_eq!(c.metadata.labels.unwrap()["s"], "3");
            // A JSON patch that cannot apply: 422.
            let (code, _) = status(patch(
                "application/json-patch+json",
                r#"[{"op":"remove","path":"/data/zz"}]"#,
                None,
            ));
            assert_eq!(code, 422);
            let (code, _) = status(patch("text/plain", "x", None));
            assert_eq!(code, 415);
            // Server-side apply needs a field manager and records it.
            let (code, _) = status(patch(
                "application/apply-patch+yaml",
                "data:\n  ssa: x\n",
                None,
            ));
            assert_eq!(code, 400);
            let applied = patch(
                "application/apply-patch+yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  ssa: x\n",
                Some("fieldManager=me&force=true"),
            )
            .ok()
            .unwrap();
            assert_eq!(applied.body["data"]["ssa"], "x");
            assert_eq!(applied.body["data"]["m"], "1");
            assert_eq!(
                applied.body["metadata"]["managedFields"][0]["manager"],
                "me"
            );
            assert!(
                applied.body["metadata"]["managedFields"][0]["fieldsV1"]["f:data"]["f:ssa"]
                    .is_object()
            );
            // Another apply manager changing the same field conflicts unless forced.
            let other = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  ssa: y\n";
            let (code, msg) = status(patch(
                "application/apply-patch+yaml",
                other,
                Some("fieldManager=other"),
            ));
            assert_eq!(code, 409);
            assert!(msg.contains("conflict with \"me\": .data.ssa"), "{msg}");
            let same = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  ssa: x\n";
            patch(
                "application/apply-patch+yaml",
                same,
                Some("fieldManager=other"),
            )
            .ok()
            .unwrap();
            let forced = patch(
                "application/apply-patch+yaml",
                other,
                Some("fieldManager=other&force=true"),
            )
            .ok()
            .unwrap();
            assert_eq!(forced.body["data"]["ssa"], "y");
            // Apply to a missing object creates it.
            let made = patch_object(
                w,
                Kind::ConfigMap,
                "default",
                "new",
                Some("fieldManager=me"),
                &ct("application/apply-patch+yaml"),
                b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: new\n",
            )
            .ok()
            .unwrap();
            assert_eq!(made.code, StatusCode::CREATED);
        })
    }

    #[test]
    fn field_validation_and_422_causes() {
        with_writer(|w| {
            let j = ct("application/json");
            let body =
                br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u"},"bogus":1}"#;
            let (code, msg) = status(create(
                w,
                Kind::ConfigMap,
                "default",
                Some("fieldValidation=Strict"),
                &j,
                body,
            ));
            assert_eq!(code, 400);
            assert!(
                msg.contains("strict decoding error: unknown field \"bogus\""),
                "{msg}"
            );
            let made = create(
                w,
                Kind::ConfigMap,
                "default",
                Some("fieldValidation=Warn"),
                &j,
                body,
            )
            .ok()
            .unwrap();
            assert_eq!(made.warnings, ["unknown field \"bogus\""]);
            assert!(made.body.get("bogus").is_none());
            let body =
                br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"i"},"bogus":1}"#;
            let made = create(
                w,
                Kind::ConfigMap,
                "default",
                Some("fieldValidation=Ignore"),
                &j,
                body,
            )
            .ok()
            .unwrap();
            assert!(made.warnings.is_empty());
            let bad = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"restartPolicy":"Sometimes","containers":[{"name":"c","image":"i"}]}}"#;
            let e = create(w, Kind::Pod, "default", None, &j, bad)
                .err()
                .unwrap();
            assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
            let d = e.details.unwrap();
            assert_eq!(d["kind"], "Pod");
            assert_eq!(d["causes"][0]["field"], "spec.restartPolicy");
            assert_eq!(d["causes"][0]["reason"], "FieldValueNotSupported");
        })
    }

    #[test]
    fn manifest_objects_refuse_writes_naming_their_file() {
        with_writer(|w| {
            let mut c = k8s_openapi::api::core::v1::ConfigMap::default();
            c.metadata.name = Some("m".into());
            c.metadata.namespace = Some("default".into());
            c.metadata.annotations = Some(
                [(
                    SOURCE_ANNOTATION.to_string(),
                    "manifest:/etc/skiff/m.yaml".to_string(),
                )]
                .into(),
            );
            w.store.set_config(
                [(("default".to_string(), "m".to_string()), c)].into(),
                Default::default(),
            );
            let (code, msg) = status(patch_object(
                w,
                Kind::ConfigMap,
                "default",
                "m",
                None,
                &ct("application/merge-patch+json"),
                br#"{"data":{"x":"y"}}"#,
            ));
            assert_eq!(code, 403);
            assert!(msg.contains("/etc/skiff/m.yaml"), "{msg}");
            let (code, msg) = status(remove(w, Kind::ConfigMap, "default", "m", None, b""));
            assert_eq!(code, 403);
            assert!(msg.contains("/etc/skiff/m.yaml"), "{msg}");
        })
    }

    #[test]
    fn deleting_a_namespace_deletes_what_the_api_made_in_it() {
        with_writer(|w| {
            let j = ct("application/json");
            let ns = br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}"#;
            create(w, Kind::Namespace, "", None, &j, ns).ok().unwrap();
            create(w, Kind::ConfigMap, "team", None, &j, &cm("c"))
                .ok()
                .unwrap();
            assert!(w.store.config_map("team", "c").is_some());
            let (code, msg) = status(remove(w, Kind::Namespace, "", "default", None, b""));
            assert_eq!(code, 403, "{msg}");
            remove(w, Kind::Namespace, "", "team", None, b"")
                .ok()
                .unwrap();
            assert!(w.store.namespace("team").is_none());
            assert!(w.store.config_map("team", "c").is_none());
            assert!(w.store.api_objects("configmaps").is_empty());
        })
    }

    #[test]
    fn strategic_merge_merges_lists_by_their_keys() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "y"}
        ], "restartPolicy": "Always"}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [
            {"name": "a", "image": "x2", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 81}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "z"}
        ], "restartPolicy": null}});
        strategic_merge(&mut pod, &patch);
        let c = &pod["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["image"], "x2");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(c[1]["name"], "c");
        assert!(pod["spec"].get("restartPolicy").is_none());
        assert!(pod["spec"].get("$setElementOrder/containers").is_none());
        // A list without a merge key is replaced.
        let mut v = json!({"spec": {"tolerations": [{"key": "a"}]}});
        strategic_merge(&mut v, &json!({"spec": {"tolerations": [{"key": "b"}]}}));
        assert_eq!(v["spec"]["tolerations"], json!([{"key": "b"}]));
    }

    #[test]
    fn fields_v1_names_keyed_items() {
        let f = fields_v1(
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        assert!(
            f["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object(),
            "{f}"
        );
        assert!(f.get("f:kind").is_none());
    }

    #[test]
    fn validation_errors_become_422_with_the_field() {
        let e = invalid(Kind::Pod, "p", "spec.containers[0].image: Required value");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn pod_spec_is_immutable_but_for_images() {
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = "b".into();
        assert!(immutable(Kind::Pod, "p", &old, &new).is_ok());
        new["spec"]["containers"][0]["args"] = json!(["x"]);
        let e = immutable(Kind::Pod, "p", &old, &new).unwrap_err();
        assert!(
            e.message.contains("pod updates may not change fields"),
            "{}",
            e.message
        );
        let svc = |ip: &str| json!({"spec": {"clusterIP": ip}});
        assert!(immutable(Kind::Service, "s", &svc("10.0.0.1"), &svc("10.0.0.2")).is_err());
        assert!(immutable(Kind::Service, "s", &svc("10.0.0.1"), &svc("10.0.0.1")).is_ok());
    }
}
