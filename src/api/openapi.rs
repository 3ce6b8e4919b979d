//! OpenAPI v3 as the apiserver publishes it (`/openapi/v3` and one document per group
//! version), made from the same table as discovery ([`RESOURCES`]) so it lists exactly what is
//! served. kubectl reads it for three things:
//! - `kubectl explain`: the kind's schema (found by its `x-kubernetes-group-version-kind`) with
//!   the field descriptions, which k8s-openapi generates from Kubernetes' own spec;
//! - client-side `kubectl apply`: the strategic-merge metadata of lists
//!   (`x-kubernetes-patch-merge-key`/`-strategy`, added here from the Go types' tags);
//! - server-side field validation: kubectl asks the server to validate (`fieldValidation`)
//!   only when the kind's PATCH operation declares that query parameter.
//!
//! `/openapi/v2` is not served: kubectl reads v2 only as protobuf and only as a fallback when
//! v3 is missing, and falls back further to its compiled-in types.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::{apps, autoscaling, batch, core, discovery as disc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use super::ApiError;
use super::discovery::{RESOURCES, Resource};

/// Lists that strategic merge patch merges by a key instead of replacing: (schema, field,
/// merge key, strategy), from the `patchMergeKey`/`patchStrategy` tags of Kubernetes' Go types.
const PATCH_META: &[(&str, &str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "name", "merge"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "name",
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "name",
        "merge",
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip", "merge"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "name",
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "containerPort",
        "merge",
    ),
    ("io.k8s.api.core.v1.Container", "env", "name", "merge"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "mountPath",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "devicePath",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "containerPort",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "mountPath",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "devicePath",
        "merge",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port", "merge"),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "type",
        "merge",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "",
        "retainKeys",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetSpec",
        "updateStrategy",
        "",
        "retainKeys",
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        "type",
        "merge",
    ),
];

/// The document path of a group version, as `/openapi/v3` names it.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every served group version, in table order.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Adds the schema of a served kind to `generator` and returns its name, or `None` for a kind
/// without a Kubernetes schema (skiff's own images).
fn kind_schema(generator: &mut SchemaGenerator, r: &Resource) -> Option<String> {
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<String> {
        generator.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    match (r.group, r.version, r.kind) {
        ("", "v1", "Pod") => add::<core::v1::Pod>(generator),
        ("", "v1", "Service") => add::<core::v1::Service>(generator),
        ("", "v1", "Endpoints") => add::<core::v1::Endpoints>(generator),
        ("", "v1", "Event") => add::<core::v1::Event>(generator),
        ("", "v1", "Node") => add::<core::v1::Node>(generator),
        ("", "v1", "ConfigMap") => add::<core::v1::ConfigMap>(generator),
        ("", "v1", "Secret") => add::<core::v1::Secret>(generator),
        ("", "v1", "Namespace") => add::<core::v1::Namespace>(generator),
        ("", "v1", "ServiceAccount") => add::<core::v1::ServiceAccount>(generator),
        ("", "v1", "ReplicationController") => add::<core::v1::ReplicationController>(generator),
        ("discovery.k8s.io", "v1", "EndpointSlice") => add::<disc::v1::EndpointSlice>(generator),
        ("apps", "v1", "Deployment") => add::<apps::v1::Deployment>(generator),
        ("apps", "v1", "ReplicaSet") => add::<apps::v1::ReplicaSet>(generator),
        ("apps", "v1", "DaemonSet") => add::<apps::v1::DaemonSet>(generator),
        ("apps", "v1", "ControllerRevision") => add::<apps::v1::ControllerRevision>(generator),
        ("apps", "v1", "StatefulSet") => add::<apps::v1::StatefulSet>(generator),
        ("batch", "v1", "Job") => add::<batch::v1::Job>(generator),
        ("batch", "v1", "CronJob") => add::<batch::v1::CronJob>(generator),
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            add::<autoscaling::v1::HorizontalPodAutoscaler>(generator)
        }
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => {
            add::<autoscaling::v2::HorizontalPodAutoscaler>(generator)
        }
        _ => None,
    }
}

/// The schema name of a kind skiff serves without a Kubernetes schema.
fn own_schema_name(r: &Resource) -> String {
    let reversed: Vec<&str> = r.group.rsplit('.').collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn content(types: &[&str], schema: &Value) -> Value {
    let mut m = Map::new();
    for t in types {
        m.insert((*t).to_string(), json!({"schema": schema}));
    }
    Value::Object(m)
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

/// The parameters every write takes (the apiserver's).
fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
        ),
        query(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ];
    if patch {
        p.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    p
}

/// The operationId the apiserver gives: verb, group, version, scope, kind.
fn operation_id(verb: &str, r: &Resource, namespaced: bool, list: bool) -> String {
    let group: String = if r.group.is_empty() {
        "Core".into()
    } else {
        r.group
            .split('.')
            .next()
            .map(|g| {
                let mut c = g.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let mut version = r.version.to_string();
    if let Some(f) = version.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    let scope = if namespaced { "Namespaced" } else { "" };
    let suffix = if list && verb == "list" && !namespaced && r.namespaced {
        "ForAllNamespaces"
    } else {
        ""
    };
    format!("{verb}{group}{version}{scope}{}{suffix}", r.kind)
}

fn operation(verb: &str, action: &str, r: &Resource, namespaced: bool, schema: &Value) -> Value {
    let list = matches!(verb, "list" | "deletecollection" | "watch");
    let mut op = json!({
        "operationId": operation_id(verb, r, namespaced, list),
        "description": format!("{verb} {}", r.kind),
        "tags": [gv_path(r.group, r.version).replace('/', "_")],
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
        "responses": {
            "200": {"description": "OK", "content": content(&["application/json", "application/yaml"], schema)},
            "401": {"description": "Unauthorized"},
        },
    });
    let body: Option<Value> = match verb {
        "create" | "update" => Some(content(&["*/*"], schema)),
        "patch" => Some(content(
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ],
            &schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch"),
        )),
        _ => None,
    };
    if let Some(b) = body {
        op["requestBody"] = json!({"required": true, "content": b});
        op["parameters"] = Value::Array(write_params(verb == "patch"));
    }
    op
}

/// The paths of one resource, by the verbs it serves.
fn resource_paths(r: &Resource, schema: &Value, paths: &mut Map<String, Value>) {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let has = |v: &str| r.verbs.contains(&v);
    let ns_param = path_param(
        "namespace",
        "object name and auth scope, such as for teams and projects",
    );
    let name_param = path_param("name", &format!("name of the {}", r.kind));
    let scopes: Vec<(String, bool, Vec<Value>)> = if r.namespaced {
        vec![
            (
                format!("{base}/namespaces/{{namespace}}/{}", r.name),
                true,
                vec![ns_param.clone()],
            ),
            (format!("{base}/{}", r.name), false, vec![]),
        ]
    } else {
        vec![(format!("{base}/{}", r.name), false, vec![])]
    };
    for (collection, namespaced, params) in scopes {
        // Cluster-wide paths of namespaced kinds only list and watch.
        let all_namespaces = r.namespaced && !namespaced;
        let mut coll = Map::new();
        if has("list") {
            coll.insert(
                "get".into(),
                operation("list", "list", r, namespaced, schema),
            );
        }
        if has("create") && !all_namespaces {
            coll.insert(
                "post".into(),
                operation("create", "post", r, namespaced, schema),
            );
        }
        if has("deletecollection") && !all_namespaces {
            coll.insert(
                "delete".into(),
                operation(
                    "deletecollection",
                    "deletecollection",
                    r,
                    namespaced,
                    schema,
                ),
            );
        }
        if !coll.is_empty() {
            coll.insert("parameters".into(), Value::Array(params.clone()));
            paths.insert(collection.clone(), Value::Object(coll));
        }
        if all_namespaces {
            continue;
        }
        let mut item = Map::new();
        for (verb, method, action) in [
            ("get", "get", "get"),
            ("update", "put", "put"),
            ("patch", "patch", "patch"),
            ("delete", "delete", "delete"),
        ] {
            if has(verb) {
                let verb = if verb == "get" { "read" } else { verb };
                let verb = if verb == "update" { "replace" } else { verb };
                item.insert(
                    method.into(),
                    operation(verb, action, r, namespaced, schema),
                );
            }
        }
        if !item.is_empty() {
            let mut p = params.clone();
            p.insert(0, name_param.clone());
            item.insert("parameters".into(), Value::Array(p));
            paths.insert(format!("{collection}/{{name}}"), Value::Object(item));
        }
    }
}

/// Adds the group-version-kind and strategic-merge metadata the generator does not know.
fn annotate(schemas: &mut Map<String, Value>, kinds: &[(String, Value)]) {
    for (name, gvk) in kinds {
        if let Some(s) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            let list = s
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(a) = list.as_array_mut()
                && !a.contains(gvk)
            {
                a.push(gvk.clone());
            }
        }
    }
    for (schema, field, key, strategy) in PATCH_META {
        let Some(prop) = schemas
            .get_mut(*schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if !key.is_empty() {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
        prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
    }
}

/// The OpenAPI v3 document of one group version, or `None` if it is not served.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version && !r.name.contains('/'))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut generator = SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<meta::Status>();
    generator.subschema_for::<meta::DeleteOptions>();
    generator.subschema_for::<meta::Patch>();
    let mut paths = Map::new();
    let mut kinds = Vec::new();
    let mut own = Map::new();
    for r in &served {
        let name = match kind_schema(&mut generator, r) {
            Some(n) => n,
            None => {
                let n = own_schema_name(r);
                own.insert(
                    n.clone(),
                    json!({"description": format!("{} is a skiff object.", r.kind), "type": "object"}),
                );
                n
            }
        };
        kinds.push((name.clone(), gvk(r)));
        resource_paths(r, &schema_ref(&name), &mut paths);
    }
    let mut schemas = generator.take_definitions(true);
    schemas.extend(own);
    annotate(&mut schemas, &kinds);
    let schemas: BTreeMap<String, Value> = schemas.into_iter().collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION"))},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        },
        "security": [{"BearerToken": []}],
    }))
}

/// The hash of each group version's document, computed once (the table is static).
fn hashes() -> &'static BTreeMap<String, String> {
    static HASHES: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    HASHES.get_or_init(|| {
        group_versions()
            .into_iter()
            .filter_map(|(g, v)| {
                let doc = document(g, v)?;
                let bytes = serde_json::to_vec(&doc).ok()?;
                let digest = Sha512::digest(&bytes);
                let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
                Some((gv_path(g, v), hex))
            })
            .collect()
    })
}

/// `GET /openapi/v3`: where each group version's document is.
pub async fn root() -> Response {
    let paths: Map<String, Value> = hashes()
        .iter()
        .map(|(path, hash)| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            )
        })
        .collect();
    Json(json!({ "paths": paths })).into_response()
}

#[derive(Debug, Deserialize)]
pub struct HashQuery {
    hash: Option<String>,
}

fn serve(group: &str, version: &str, q: &HashQuery) -> Response {
    let Some(doc) = document(group, version) else {
        return ApiError::not_found(format!(
            "the server could not find the requested resource: /openapi/v3/{}",
            gv_path(group, version)
        ))
        .into_response();
    };
    // With the current hash in the URL the document never changes: clients may cache it.
    let current = hashes().get(&gv_path(group, version));
    let cache = if q.hash.is_some() && q.hash.as_ref() == current {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    ([(header::CACHE_CONTROL, cache)], Json(doc)).into_response()
}

/// `GET /openapi/v3/api/{version}`.
pub async fn core(Path(version): Path<String>, Query(q): Query<HashQuery>) -> Response {
    serve("", &version, &q)
}

/// `GET /openapi/v3/apis/{group}/{version}`.
pub async fn group(
    Path((group, version)): Path<(String, String)>,
    Query(q): Query<HashQuery>,
) -> Response {
    serve(&group, &version, &q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_schema_has_its_kind_descriptions_and_merge_keys() {
        let doc = document("", "v1").unwrap();
        let schemas = &doc["components"]["schemas"];
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert!(
            containers["description"]
                .as_str()
                .unwrap()
                .contains("List of containers")
        );
        // Every reference resolves inside the document.
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.get(name).is_some(), "dangling $ref {name}");
        }
    }

    #[test]
    fn paths_follow_the_served_verbs() {
        let doc = document("", "v1").unwrap();
        let pod = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"];
        assert_eq!(pod["get"]["operationId"], "readCoreV1NamespacedPod");
        assert_eq!(pod["get"]["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert_eq!(
            doc["paths"]["/api/v1/pods"]["get"]["operationId"],
            "listCoreV1PodForAllNamespaces"
        );
        // A write, where served, declares fieldValidation (kubectl then validates on the
        // server instead of downloading schemas).
        for (path, item) in doc["paths"].as_object().unwrap() {
            if let Some(patch) = item.get("patch") {
                let names: Vec<&str> = patch["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert!(names.contains(&"fieldValidation"), "{path}");
            }
        }
        assert!(document("apps", "v9").is_none());
    }

    #[test]
    fn the_root_lists_every_served_group_version() {
        let h = hashes();
        assert!(h.contains_key("api/v1"));
        assert!(h.contains_key("apis/discovery.k8s.io/v1"));
        assert!(h.contains_key("apis/skiff.dev/v1"));
        assert_eq!(h["api/v1"].len(), 128);
    }
}
