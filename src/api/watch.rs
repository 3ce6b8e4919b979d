//! Pod watches (`?watch=1`, `/api/v1/watch/...`): a chunked stream of JSON lines
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK","object":...}` with the apiserver's
//! `resourceVersion`, `sendInitialEvents`, `allowWatchBookmarks` and `timeoutSeconds`
//! semantics. Each watcher has a bounded buffer: one that does not read is dropped, and
//! skiffd never waits for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::fields::FieldSelector;
use super::pods::pod_json;
use super::{ApiError, Shared, table};
use crate::store::{PodEvent, WatchKind};

/// Lines a watcher's stream may hold before it counts as not reading.
const STREAM_BUFFER: usize = 64;
/// How long a watcher may leave a full buffer unread before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a BOOKMARK is sent when asked for (the apiserver: about a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// The annotation on the BOOKMARK that ends `sendInitialEvents`.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// The watch parameters.
#[derive(Debug, Default)]
struct WatchQuery {
    resource_version: Option<String>,
    send_initial_events: Option<bool>,
    allow_bookmarks: bool,
    timeout: Option<Duration>,
    label_selector: String,
    field_selector: String,
}

impl WatchQuery {
    fn parse(q: Option<&str>) -> Result<WatchQuery, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let mut out = WatchQuery::default();
        let truthy = |v: &str| v == "1" || v.eq_ignore_ascii_case("true");
        for (k, v) in pairs {
            match k.as_str() {
                "resourceVersion" => out.resource_version = Some(v).filter(|v| !v.is_empty()),
                "sendInitialEvents" => out.send_initial_events = Some(truthy(&v)),
                "allowWatchBookmarks" => out.allow_bookmarks = truthy(&v),
                "timeoutSeconds" => {
                    let n: u64 = v.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds {v:?}"))
                    })?;
                    out.timeout = (n > 0).then(|| Duration::from_secs(n));
                }
                "labelSelector" => out.label_selector = v,
                "fieldSelector" => out.field_selector = v,
                _ => {}
            }
        }
        Ok(out)
    }
}

/// What a watch event's object is: the pod, or a one-row Table when the client asked.
struct Encoder {
    table: Option<&'static str>,
    headers_sent: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, pod: &Pod) -> Bytes {
        let object = match self.table {
            None => pod_json(pod),
            Some(api_version) => {
                let t = table::pods(std::slice::from_ref(pod), jiff::Timestamp::now());
                let mut doc = table::to_json(
                    &t,
                    api_version,
                    pod.metadata.resource_version.as_deref().unwrap_or_default(),
                    table::IncludeObject::Metadata,
                );
                // As the apiserver: the columns come with the first event only.
                if self.headers_sent {
                    doc["columnDefinitions"] = json!([]);
                }
                self.headers_sent = true;
                doc
            }
        };
        encode(json!({"type": kind, "object": object}))
    }
}

fn encode(v: Value) -> Bytes {
    let mut line = v.to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    encode(
        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": meta}}),
    )
}

/// A watch request's query, selectors (a 400 naming a field `kind` does not support, as for
/// lists) and where it starts: `None` for the current state (ADDED for each object: no
/// version, "0", or `sendInitialEvents`), else after that version.
fn start(
    query: Option<&str>,
    kind: &str,
) -> Result<
    (
        WatchQuery,
        crate::selector::Selector,
        FieldSelector,
        Option<u64>,
    ),
    ApiError,
> {
    let q = WatchQuery::parse(query)?;
    let labels = crate::selector::Selector::parse(&q.label_selector)
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(&q.field_selector).map_err(ApiError::bad_request)?;
    fields.check(kind).map_err(ApiError::bad_request)?;
    let since = match q.resource_version.as_deref() {
        None | Some("0") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version {v:?}: not a number skiffd gave"
            ))
        })?),
    };
    let since = since.filter(|_| q.send_initial_events != Some(true));
    Ok((q, labels, fields, since))
}

/// Serves a pod watch in `namespace` (all when `None`).
pub fn pods(
    s: &Shared,
    namespace: Option<String>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (q, labels, fields, since) = start(query, "Pod")?;
    let watch = s
        .store
        .watch_pods(since)
        .map_err(|g| ApiError::gone(g.to_string()))?;
    tracing::debug!(
        namespace = namespace.as_deref().unwrap_or("*"),
        ?since,
        rv = watch.rv,
        "pod watch started"
    );
    let matches = move |pod: &Pod| {
        namespace
            .as_deref()
            .is_none_or(|n| pod.metadata.namespace.as_deref() == Some(n))
            && labels.matches(&pod.metadata.labels.clone().unwrap_or_default())
            && fields.matches(&pod_json(pod))
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_BUFFER);
    let mut enc = Encoder {
        table: table::wants_table(headers),
        headers_sent: false,
    };
    let initial_end = q.send_initial_events == Some(true) && q.allow_bookmarks;
    let (allow_bookmarks, timeout) = (q.allow_bookmarks, q.timeout);
    tokio::spawn(async move {
        let send = |tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, b: Bytes| {
            let tx = tx.clone();
            async move {
                matches!(
                    tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(b))).await,
                    Ok(Ok(()))
                )
            }
        };
        let mut shown: HashSet<(String, String)> = HashSet::new();
        let key = |p: &Pod| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        };
        for pod in &watch.initial {
            if matches(pod) {
                shown.insert(key(pod));
                if !send(&tx, enc.line("ADDED", pod)).await {
                    return;
                }
            }
        }
        if initial_end && !send(&tx, bookmark(watch.rv, true)).await {
            return;
        }
        let mut last_rv = watch.rv;
        let mut rx = watch.rx;
        let mut backlog = watch.backlog.into_iter();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            let event: Arc<PodEvent> = if let Some(e) = backlog.next() {
                e
            } else {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(e) => e,
                        // Fell more than the broadcast buffer behind: drop it; clients relist.
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "dropping a pod watch that fell behind");
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = ticker.tick(), if allow_bookmarks => {
                        if !send(&tx, bookmark(last_rv, false)).await {
                            return;
                        }
                        continue;
                    }
                    _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => return,
                    _ = tx.closed() => return,
                }
            };
            last_rv = event.rv;
            let k = key(&event.pod);
            let now_matches = event.kind != WatchKind::Deleted && matches(&event.pod);
            let was_shown = shown.contains(&k);
            // An object that stops matching leaves the watcher's view as DELETED, one that
            // starts matching enters it as ADDED, as the apiserver's filtered watch does.
            let kind = match (event.kind, was_shown, now_matches) {
                (WatchKind::Deleted, true, _) => "DELETED",
                (WatchKind::Deleted, false, _) => {
                    if matches(&event.pod) {
                        "DELETED"
                    } else {
                        continue;
                    }
                }
                (_, false, true) => "ADDED",
                (_, true, true) => event.kind.as_str(),
                (_, true, false) => "DELETED",
                (_, false, false) => continue,
            };
            if now_matches {
                shown.insert(k);
            } else {
                shown.remove(&k);
            }
            if !send(&tx, enc.line(kind, &event.pod)).await {
                return;
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// A watch of ConfigMaps, Secrets or Namespaces (the store's per-kind history): the same
/// stream as a pod watch, with label selection and `metadata.name`/`metadata.namespace`
/// fields.
pub fn objects(
    s: &Shared,
    plural: &'static str,
    kind: &'static str,
    namespace: Option<String>,
    query: Option<&str>,
    headers: &HeaderMap,
    list: fn(&crate::store::Store) -> Vec<Value>,
) -> Result<Response, ApiError> {
    let (q, labels, fields, since) = start(query, kind)?;
    let watch = s
        .store
        .watch_kind(plural, since, list)
        .map_err(|g| ApiError::gone(g.to_string()))?;
    let matches = move |v: &Value| {
        let labels_of: std::collections::BTreeMap<String, String> =
            serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default();
        namespace
            .as_deref()
            .is_none_or(|n| v["metadata"]["namespace"].as_str() == Some(n))
            && labels.matches(&labels_of)
            && fields.matches(v)
    };
    let table_version = table::wants_table(headers);
    let mut headers_sent = false;
    let mut line = move |event: &str, v: &Value| {
        let mut object = v.clone();
        object["kind"] = kind.into();
        object["apiVersion"] = "v1".into();
        if let Some(api_version) = table_version {
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let t = table::for_kind(kind, vec![object], jiff::Timestamp::now());
            object = table::to_json(&t, api_version, &rv, table::IncludeObject::Metadata);
            if headers_sent {
                object["columnDefinitions"] = json!([]);
            }
            headers_sent = true;
        }
        encode(json!({"type": event, "object": object}))
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_BUFFER);
    let initial_end = q.send_initial_events == Some(true) && q.allow_bookmarks;
    let (allow_bookmarks, timeout) = (q.allow_bookmarks, q.timeout);
    tokio::spawn(async move {
        let send = |tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, b: Bytes| {
            let tx = tx.clone();
            async move {
                matches!(
                    tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(b))).await,
                    Ok(Ok(()))
                )
            }
        };
        let key = |v: &Value| {
            (
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        let mut shown: HashSet<(String, String)> = HashSet::new();
        for v in &watch.initial {
            if matches(v) {
                shown.insert(key(v));
                if !send(&tx, line("ADDED", v)).await {
                    return;
                }
            }
        }
        if initial_end && !send(&tx, bookmark(watch.rv, true)).await {
            return;
        }
        let mut last_rv = watch.rv;
        let mut rx = watch.rx;
        let mut backlog = watch.backlog.into_iter();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            let event = if let Some(e) = backlog.next() {
                e
            } else {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok((p, e)) if p == plural => e,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = ticker.tick(), if allow_bookmarks => {
                        if !send(&tx, bookmark(last_rv, false)).await {
                            return;
                        }
                        continue;
                    }
                    _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => return,
                    _ = tx.closed() => return,
                }
            };
            // The initial list may already hold a change the backlog or channel repeats.
            if event.rv <= watch.rv && since.is_none() {
                continue;
            }
            last_rv = event.rv;
            let k = key(&event.object);
            let now_matches = event.kind != WatchKind::Deleted && matches(&event.object);
            // Resumed from a version, the client already has what existed then.
            let was_shown =
                shown.contains(&k) || (since.is_some() && event.kind != WatchKind::Added);
            let kind = match (event.kind, was_shown, now_matches) {
                (WatchKind::Deleted, true, _) => "DELETED",
                (WatchKind::Deleted, false, _) => continue,
                (_, false, true) => "ADDED",
                (_, true, true) => event.kind.as_str(),
                (_, true, false) => "DELETED",
                (_, false, false) => continue,
            };
            if now_matches {
                shown.insert(k);
            } else {
                shown.remove(&k);
            }
            if !send(&tx, line(kind, &event.object)).await {
                return;
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
