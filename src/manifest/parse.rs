//! Parsing and validation of manifest files into typed objects.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, Secret, Service};
use serde::Deserialize;
use serde_json::Value;

/// An object read from a manifest file.
#[derive(Debug, Clone)]
pub enum Object {
    Pod(Box<Pod>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    /// Shared with the store (a Service and its Endpoints are kept once,
    /// however many parts of skiffd read them).
    Service(std::sync::Arc<Service>),
    Endpoints(std::sync::Arc<Endpoints>),
}

impl Object {
    /// Kind, namespace and name.
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, meta) = match self {
            Object::Pod(p) => ("Pod", &p.metadata),
            Object::ConfigMap(c) => ("ConfigMap", &c.metadata),
            Object::Secret(s) => ("Secret", &s.metadata),
            Object::Service(s) => ("Service", &s.metadata),
            Object::Endpoints(e) => ("Endpoints", &e.metadata),
        };
        ObjectRef {
            kind: kind.into(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Why a file or one object in it was refused; the message names the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// `Kind namespace/name` when the object got far enough to be named.
    pub object: Option<ObjectRef>,
    pub message: String,
}

/// The identity of an object in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Kinds skiff knows about but whose support lands later; refused with a clear message.
const NOT_YET: [&str; 2] = ["Deployment", "ReplicaSet"];

/// Whether the manifest source should read this directory entry at all.
pub fn is_manifest_file(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    if [".swp", ".bak", ".tmp"].iter().any(|s| lower.ends_with(s)) {
        return false;
    }
    [".yaml", ".yml", ".json"].iter().any(|s| lower.ends_with(s))
}

/// Parses every document of a file. Returns the good objects and the errors of the bad ones;
/// a syntax error makes the whole file an error (nothing after it can be trusted).
pub fn parse_file(path: &Path, text: &str) -> Result<(Vec<Object>, Vec<ManifestError>), String> {
    let mut values = Vec::new();
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for v in stream {
            values.push(v.map_err(|e| format!("invalid JSON: {e}"))?);
        }
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let mut v = Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))?;
            super::validate::yaml11_octal_modes(&mut v);
            if !v.is_null() {
                values.push(v);
            }
        }
    }
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        expand(v, i, &mut objects, &mut errors);
    }
    Ok((objects, errors))
}

fn expand(v: Value, index: usize, objects: &mut Vec<Object>, errors: &mut Vec<ManifestError>) {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    if kind.ends_with("List") && v.get("items").is_some_and(Value::is_array) {
        if let Some(Value::Array(items)) = v.get("items").cloned() {
            for item in items {
                expand(item, index, objects, errors);
            }
        }
        return;
    }
    match parse_object(v, &kind) {
        Ok(o) => objects.push(o),
        Err(mut e) => {
            if e.object.is_none() {
                e.message = format!("document {}: {}", index + 1, e.message);
            }
            errors.push(e);
        }
    }
}

fn object_ref(v: &Value, kind: &str) -> Option<ObjectRef> {
    let name = v.pointer("/metadata/name")?.as_str()?.to_string();
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    Some(ObjectRef {
        kind: kind.to_string(),
        namespace,
        name,
    })
}

/// Deserializes like kubectl's strict field validation: an unknown field is an error.
fn strict<T: serde::de::DeserializeOwned>(
    v: Value,
    fail: &impl Fn(String) -> ManifestError,
) -> Result<T, ManifestError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("object").to_string();
    let mut unknown = BTreeSet::new();
    let obj: T = serde_ignored::deserialize(v, |path| {
        unknown.insert(field_path(&path.to_string()));
    })
    .map_err(|e| fail(format!("invalid {kind}: {e}")))?;
    if let Some(field) = unknown.into_iter().next() {
        return Err(fail(format!("unknown field \"{field}\"")));
    }
    Ok(obj)
}

/// Turns serde_ignored's `spec.?.containers.?.0.x` into kubectl's `spec.containers[0].x`.
fn field_path(raw: &str) -> String {
    let mut out = String::new();
    for part in raw.split('.').filter(|p| *p != "?") {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn parse_object(v: Value, kind: &str) -> Result<Object, ManifestError> {
    let oref = object_ref(&v, if kind.is_empty() { "Object" } else { kind });
    let fail = |message: String| ManifestError {
        object: oref.clone(),
        message,
    };
    if !v.is_object() {
        return Err(fail("not an object".into()));
    }
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    match kind {
        "" => Err(fail("missing \"kind\"".into())),
        "Pod" => {
            if api_version != "v1" {
                return Err(fail(format!(
                    "apiVersion {api_version:?} is not served for Pod (use \"v1\")"
                )));
            }
            let pod: Pod = strict(v, &fail)?;
            let pod = super::validate::validate_pod(pod).map_err(fail)?;
            Ok(Object::Pod(Box::new(pod)))
        }
        "ConfigMap" => {
            if api_version != "v1" {
                return Err(fail(format!(
                    "apiVersion {api_version:?} is not served for ConfigMap (use \"v1\")"
                )));
            }
            let cm: ConfigMap = strict(v, &fail)?;
            let cm = super::validate::validate_config_map(cm).map_err(fail)?;
            Ok(Object::ConfigMap(Box::new(cm)))
        }
        "Secret" => {
            if api_version != "v1" {
                return Err(fail(format!(
                    "apiVersion {api_version:?} is not served for Secret (use \"v1\")"
                )));
            }
            let secret: Secret = strict(v, &fail)?;
            let secret = super::validate::validate_secret(secret).map_err(fail)?;
            Ok(Object::Secret(Box::new(secret)))
        }
        "Service" | "Endpoints" => {
            if api_version != "v1" {
                return Err(fail(format!(
                    "apiVersion {api_version:?} is not served for {kind} (use \"v1\")"
                )));
            }
            if kind == "Service" {
                let svc: Service = strict(v, &fail)?;
                let svc = super::service::validate_service(svc).map_err(fail)?;
                Ok(Object::Service(std::sync::Arc::new(svc)))
            } else {
                let ep: Endpoints = strict(v, &fail)?;
                let ep = super::service::validate_endpoints(ep).map_err(fail)?;
                Ok(Object::Endpoints(std::sync::Arc::new(ep)))
            }
        }
        k if NOT_YET.contains(&k) => Err(fail(format!(
            "kind {k} is not supported by this version of skiff yet"
        ))),
        k => Err(fail(format!("unknown kind {k:?} (apiVersion {api_version:?})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> (Vec<Object>, Vec<ManifestError>) {
        parse_file(Path::new(name), text).unwrap()
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn file_filter_ignores_editor_and_backup_files() {
        for good in ["a.yaml", "b.yml", "c.json", "D.YAML"] {
            assert!(is_manifest_file(good), "{good}");
        }
        for bad in [".a.yaml", "a.yaml~", "a.yaml.swp", "a.bak", "a.tmp", "a.txt", ".#x.yaml"] {
            assert!(!is_manifest_file(bad), "{bad}");
        }
    }

    #[test]
    fn several_documents_per_file() {
        let text = format!("{POD}---\n{}\n---\n", POD.replace("web", "db"));
        let (objs, errs) = parse("x.yaml", &text);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(objs.len(), 2);
    }

    #[test]
    fn json_file_and_list_kind() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i"}]}}]}"#;
        let (objs, errs) = parse("x.json", text);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(objs.len(), 1);
    }

    #[test]
    fn syntax_error_fails_the_file() {
        let err = parse_file(Path::new("x.yaml"), "kind: Pod\n  bad: [").unwrap_err();
        assert!(err.contains("invalid YAML"), "{err}");
    }

    #[test]
    fn unknown_kind_and_unknown_field_name_the_object() {
        let text = "apiVersion: v1\nkind: Gizmo\nmetadata:\n  name: g\n---\n".to_string()
            + &POD.replace("image: busybox", "image: busybox\n    imagePullPolcy: Never");
        let (objs, errs) = parse("x.yaml", &text);
        assert!(objs.is_empty());
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("unknown kind \"Gizmo\""));
        assert_eq!(errs[1].object.as_ref().unwrap().name, "web");
        assert!(
            errs[1].message.contains("unknown field \"spec.containers[0].imagePullPolcy\""),
            "{}",
            errs[1].message
        );
    }
}
