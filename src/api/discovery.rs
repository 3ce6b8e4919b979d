//! API discovery as the apiserver serves it: `/api`, `/apis`, the per-version resource lists,
//! and aggregated discovery (`apidiscovery.k8s.io/v2`, which kubectl asks for first). All of
//! it comes from one table, [`RESOURCES`], so `kubectl api-resources` lists exactly what the
//! router serves.

use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The content type of an aggregated discovery document.
const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Read-only verbs, for every listed kind.
const READ: &[&str] = &["get", "list"];

/// Verbs of the kinds that accept writes (issue 10).
const WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
];
/// ... and watched (the store's per-kind history).
const WRITE_WATCH: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces: no `deletecollection`, as on the apiserver.
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// One served resource (or subresource, `pods/log`).
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// API group, "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural name, with `/sub` for a subresource.
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
}

const fn res(
    group: &'static str,
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version: "v1",
        name,
        singular,
        kind,
        namespaced,
        verbs: READ,
        short_names,
        categories,
    }
}

const fn sub(name: &'static str, kind: &'static str, verbs: &'static [&'static str]) -> Resource {
    Resource {
        group: "",
        version: "v1",
        name,
        singular: "",
        kind,
        namespaced: true,
        verbs,
        short_names: &[],
        categories: &[],
    }
}

/// Verbs of a `/scale` subresource.
const SCALE: &[&str] = &["get", "patch", "update"];

const fn sub_of(
    group: &'static str,
    version: &'static str,
    name: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        name,
        singular: "",
        kind,
        namespaced: true,
        verbs,
        short_names: &[],
        categories: &[],
    }
}

/// Everything the API serves, by group and version.
pub const RESOURCES: &[Resource] = &[
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            &[],
        )
    },
    res(
        "",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        &[],
    ),
    res("", "events", "event", "Event", true, &["ev"], &[]),
    Resource {
        verbs: NAMESPACE_VERBS,
        ..res(
            "",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            &[],
        )
    },
    Resource {
        verbs: &["get", "list", "patch", "update"],
        ..res("", "nodes", "node", "Node", false, &["no"], &[])
    },
    Resource {
        namespaced: false,
        ..sub("nodes/status", "Node", &["get", "patch", "update"])
    },
    Resource {
        verbs: WRITE_WATCH,
        ..res("", "pods", "pod", "Pod", true, &["po"], &["all"])
    },
    sub("pods/eviction", "Eviction", &["create"]),
    sub("pods/exec", "PodExecOptions", &["create", "get"]),
    sub("pods/log", "Pod", &["get"]),
    sub(
        "pods/portforward",
        "PodPortForwardOptions",
        &["create", "get"],
    ),
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "",
            "replicationcontrollers",
            "replicationcontroller",
            "ReplicationController",
            true,
            &["rc"],
            &["all"],
        )
    },
    sub_of("", "v1", "replicationcontrollers/scale", "Scale", SCALE),
    sub_of(
        "",
        "v1",
        "replicationcontrollers/status",
        "ReplicationController",
        &["get"],
    ),
    Resource {
        verbs: WRITE_WATCH,
        ..res("", "secrets", "secret", "Secret", true, &[], &[])
    },
    Resource {
        verbs: WRITE,
        ..res(
            "",
            "services",
            "service",
            "Service",
            true,
            &["svc"],
            &["all"],
        )
    },
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "apps",
            "controllerrevisions",
            "controllerrevision",
            "ControllerRevision",
            true,
            &[],
            &[],
        )
    },
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "apps",
            "daemonsets",
            "daemonset",
            "DaemonSet",
            true,
            &["ds"],
            &["all"],
        )
    },
    sub_of("apps", "v1", "daemonsets/status", "DaemonSet", &["get"]),
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "apps",
            "deployments",
            "deployment",
            "Deployment",
            true,
            &["deploy"],
            &["all"],
        )
    },
    sub_of("apps", "v1", "deployments/scale", "Scale", SCALE),
    sub_of("apps", "v1", "deployments/status", "Deployment", &["get"]),
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "apps",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            true,
            &["rs"],
            &["all"],
        )
    },
    sub_of("apps", "v1", "replicasets/scale", "Scale", SCALE),
    sub_of("apps", "v1", "replicasets/status", "ReplicaSet", &["get"]),
    Resource {
        verbs: WRITE_WATCH,
        version: "v2",
        ..res(
            "autoscaling",
            "horizontalpodautoscalers",
            "horizontalpodautoscaler",
            "HorizontalPodAutoscaler",
            true,
            &["hpa"],
            &["all"],
        )
    },
    sub_of(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers/status",
        "HorizontalPodAutoscaler",
        &["get"],
    ),
    // autoscaling/v1, converted at the edge (v2 stays the preferred version).
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "autoscaling",
            "horizontalpodautoscalers",
            "horizontalpodautoscaler",
            "HorizontalPodAutoscaler",
            true,
            &["hpa"],
            &["all"],
        )
    },
    sub_of(
        "autoscaling",
        "v1",
        "horizontalpodautoscalers/status",
        "HorizontalPodAutoscaler",
        &["get"],
    ),
    Resource {
        verbs: WRITE_WATCH,
        ..res(
            "batch",
            "cronjobs",
            "cronjob",
            "CronJob",
            true,
            &["cj"],
            &["all"],
        )
    },
    sub_of("batch", "v1", "cronjobs/status", "CronJob", &["get"]),
    Resource {
        verbs: WRITE_WATCH,
        ..res("batch", "jobs", "job", "Job", true, &[], &["all"])
    },
    sub_of("batch", "v1", "jobs/status", "Job", &["get"]),
    res(
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        &[],
    ),
    Resource {
        verbs: &["delete", "get", "list"],
        ..res("skiff.dev", "images", "image", "Image", false, &[], &[])
    },
    // metrics-server's resources (kubectl top).
    Resource {
        version: "v1beta1",
        ..res(
            "metrics.k8s.io",
            "nodes",
            "",
            "NodeMetrics",
            false,
            &[],
            &[],
        )
    },
    Resource {
        version: "v1beta1",
        ..res("metrics.k8s.io", "pods", "", "PodMetrics", true, &[], &[])
    },
];

/// The named groups, in the order `/apis` lists them.
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// The versions a group serves, preferred first (table order).
fn versions(group: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if r.group == group && !out.contains(&r.version) {
            out.push(r.version);
        }
    }
    out
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// The aggregated discovery content type the client accepts, if any.
fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    // Media types in the order the client prefers them; the first we can serve wins.
    for t in accept.split(',') {
        let params: Vec<String> = t.split(';').map(|p| p.trim().replace(' ', "")).collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") {
            if has("v=v2") {
                return Some(AGGREGATED_V2);
            }
            if has("v=v2beta1") {
                return Some(AGGREGATED_V2BETA1);
            }
        }
        if params
            .first()
            .is_some_and(|m| m == "application/json" || m == "*/*")
            && params.len() == 1
        {
            return None;
        }
    }
    None
}

/// `/api`: the core group's versions, or its aggregated discovery document.
pub async fn api(headers: HeaderMap) -> Response {
    if let Some(ct) = wants_aggregated(&headers) {
        return aggregated(ct, &[""]);
    }
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
    .into_response()
}

/// `/apis`: the named groups, or their aggregated discovery document.
pub async fn apis(headers: HeaderMap) -> Response {
    let groups = groups();
    if let Some(ct) = wants_aggregated(&headers) {
        return aggregated(ct, &groups);
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let gvs: Vec<Value> = versions(g)
                .iter()
                .map(|v| json!({"groupVersion": group_version(g, v), "version": v}))
                .collect();
            json!({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
        })
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": items})).into_response()
}

/// The group and version of what a (sub)resource answers with: `/scale` answers an
/// autoscaling/v1 Scale and `pods/eviction` takes a policy/v1 Eviction wherever they are.
fn response_group_version(r: &Resource) -> (&'static str, &'static str) {
    match r.kind {
        "Scale" => ("autoscaling", "v1"),
        "Eviction" => ("policy", "v1"),
        _ => (r.group, r.version),
    }
}

/// The APIResourceList of one group version, or `None` if not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let mut v = json!({
                "name": r.name,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                v["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                v["categories"] = json!(r.categories);
            }
            // kubectl drain finds the Eviction's group here (`CheckEvictionSupport`).
            let (group, version) = response_group_version(r);
            if (group, version) != (r.group, r.version) {
                v["group"] = group.into();
                v["version"] = version.into();
            }
            v
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    }))
}

/// `/api/v1`.
pub async fn core_v1() -> Json<Value> {
    Json(resource_list("", "v1").unwrap_or_default())
}

/// `/apis/{group}/{version}`.
pub async fn group_v1(
    axum::extract::Path((group, version)): axum::extract::Path<(String, String)>,
) -> Result<Json<Value>, super::ApiError> {
    resource_list(&group, &version).map(Json).ok_or_else(|| {
        super::ApiError::not_found("the server could not find the requested resource")
    })
}

/// `/apis/{group}`: one APIGroup.
pub async fn group(
    axum::extract::Path(group): axum::extract::Path<String>,
) -> Result<Json<Value>, super::ApiError> {
    if !groups().contains(&group.as_str()) {
        return Err(super::ApiError::not_found(
            "the server could not find the requested resource",
        ));
    }
    let gvs: Vec<Value> = versions(&group)
        .iter()
        .map(|v| json!({"groupVersion": group_version(&group, v), "version": v}))
        .collect();
    Ok(Json(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "preferredVersion": gvs[0],
        "versions": gvs,
    })))
}

/// An APIGroupDiscoveryList for `groups` ("" = core), as `content_type`.
fn aggregated(content_type: &'static str, groups: &[&str]) -> Response {
    let api_version = if content_type == AGGREGATED_V2 {
        "apidiscovery.k8s.io/v2"
    } else {
        "apidiscovery.k8s.io/v2beta1"
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let versions: Vec<Value> = versions(g)
                .into_iter()
                .map(|version| json!({"version": version, "resources": resources_of(g, version), "freshness": "Current"}))
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    });
    ([(header::CONTENT_TYPE, content_type)], body.to_string()).into_response()
}

/// The aggregated discovery entries of one group version.
fn resources_of(g: &str, version: &str) -> Vec<Value> {
    RESOURCES
        .iter()
        .filter(|r| r.group == g && r.version == version && !r.name.contains('/'))
        .map(|r| {
            let subs: Vec<Value> = RESOURCES
                .iter()
                .filter_map(|s| {
                    let (parent, name) = s.name.split_once('/')?;
                    (s.group == r.group && s.version == r.version && parent == r.name).then(|| {
                        let (group, version) = response_group_version(s);
                        json!({
                            "subresource": name,
                            "responseKind": {"group": group, "version": version, "kind": s.kind},
                            "verbs": s.verbs,
                        })
                    })
                })
                .collect();
            let mut v = json!({
                "resource": r.name,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                v["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                v["categories"] = json!(r.categories);
            }
            if !subs.is_empty() {
                v["subresources"] = json!(subs);
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn kubectl_gets_aggregated_discovery_when_it_asks() {
        // What kubectl 1.33 sends for /api and /apis.
        let k = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(&accept(k)), Some(AGGREGATED_V2));
        assert_eq!(wants_aggregated(&accept("application/json")), None);
        assert_eq!(wants_aggregated(&HeaderMap::new()), None);
        let b = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList, application/json";
        assert_eq!(wants_aggregated(&accept(b)), Some(AGGREGATED_V2BETA1));
    }

    #[test]
    fn resource_lists_name_every_served_kind() {
        let core = resource_list("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "configmaps",
                "endpoints",
                "events",
                "namespaces",
                "nodes",
                "nodes/status",
                "pods",
                "pods/eviction",
                "pods/exec",
                "pods/log",
                "pods/portforward",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "secrets",
                "services"
            ]
        );
        let pods = &core["resources"][6];
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(
            pods["verbs"],
            json!([
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ])
        );
        assert_eq!(pods["namespaced"], true);
        let eviction = &core["resources"][7];
        assert_eq!(
            (&eviction["group"], &eviction["version"], &eviction["kind"]),
            (&json!("policy"), &json!("v1"), &json!("Eviction"))
        );
        assert!(resource_list("discovery.k8s.io", "v1").is_some());
        let apps = resource_list("apps", "v1").unwrap();
        assert_eq!(apps["resources"][0]["name"], "controllerrevisions");
        assert_eq!(apps["resources"][1]["name"], "daemonsets");
        assert_eq!(apps["resources"][1]["shortNames"], json!(["ds"]));
        assert_eq!(apps["resources"][3]["name"], "deployments");
        assert_eq!(apps["resources"][3]["shortNames"], json!(["deploy"]));
        assert_eq!(
            groups(),
            [
                "apps",
                "autoscaling",
                "batch",
                "discovery.k8s.io",
                "skiff.dev",
                "metrics.k8s.io"
            ]
        );
        let batch = resource_list("batch", "v1").unwrap();
        assert_eq!(batch["resources"][0]["name"], "cronjobs");
        assert_eq!(batch["resources"][0]["shortNames"], json!(["cj"]));
        assert_eq!(batch["resources"][1]["name"], "cronjobs/status");
        assert_eq!(batch["resources"][2]["name"], "jobs");
        let metrics = resource_list("metrics.k8s.io", "v1beta1").unwrap();
        assert_eq!(metrics["groupVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(metrics["resources"][0]["kind"], "NodeMetrics");
        assert_eq!(metrics["resources"][1]["kind"], "PodMetrics");
    }
}
