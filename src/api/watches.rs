//! Watches of Services, Endpoints and Events (`?watch=1` on their lists and
//! `/api/v1/watch/...`): the store records each published change of them in its per-kind
//! history, and [`super::watch::objects`] streams it as for ConfigMaps.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::Value;

use super::Shared;
use crate::store::Store;

/// A kind streamed from the store's per-kind history.
#[derive(Clone, Copy)]
pub struct Watched {
    pub plural: &'static str,
    pub kind: &'static str,
    /// Every object now (the ADDED events of a watch that does not resume).
    pub list: fn(&Store) -> Vec<Value>,
}

fn values<T: serde::Serialize>(items: Vec<T>) -> Vec<Value> {
    items
        .iter()
        .filter_map(|x| serde_json::to_value(x).ok())
        .collect()
}

pub const SERVICES: Watched = Watched {
    plural: "services",
    kind: "Service",
    list: |st| values(st.services(None)),
};

pub const ENDPOINTS: Watched = Watched {
    plural: "endpoints",
    kind: "Endpoints",
    list: |st| values(st.endpoints(None)),
};

pub const EVENTS: Watched = Watched {
    plural: "events",
    kind: "Event",
    list: |st| values(st.list_events(None, None)),
};

/// Whether a list request asks for a watch (`?watch=1|true`).
pub fn wanted(uri: &Uri) -> bool {
    super::list::ListQuery::parse(uri.query()).is_ok_and(|q| q.watch)
}

/// The namespace of a list or watch path (`.../namespaces/{ns}/{plural}`), if any.
fn namespace_of(uri: &Uri) -> Option<String> {
    let segs: Vec<&str> = uri.path().split('/').collect();
    let i = segs.iter().position(|s| *s == "namespaces")?;
    // `/api/v1/namespaces` itself is the namespaces list, not a namespace.
    segs.get(i + 2)?;
    segs.get(i + 1).map(|s| s.to_string())
}

/// Streams a watch of `w` for the request.
pub fn stream(s: &Shared, w: Watched, uri: &Uri, headers: &HeaderMap) -> Response {
    super::watch::objects(
        s,
        w.plural,
        w.kind,
        namespace_of(uri),
        uri.query(),
        headers,
        w.list,
    )
    .unwrap_or_else(|e| e.into_response())
}

/// GET on `/api/v1/watch/[namespaces/{ns}/]{plural}`.
pub fn route(w: Watched) -> MethodRouter<Shared> {
    get(
        move |State(s): State<Shared>, uri: Uri, headers: HeaderMap| async move {
            stream(&s, w, &uri, &headers)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_come_from_the_path() {
        let ns = |p: &str| namespace_of(&p.parse::<Uri>().unwrap());
        assert_eq!(
            ns("/api/v1/watch/namespaces/team/services"),
            Some("team".into())
        );
        assert_eq!(
            ns("/api/v1/namespaces/default/events?watch=1"),
            Some("default".into())
        );
        assert_eq!(ns("/api/v1/watch/endpoints"), None);
        assert_eq!(ns("/api/v1/services"), None);
    }
}
