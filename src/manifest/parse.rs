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
    /// A Deployment, ReplicaSet or ReplicationController (issue 11).
    Workload(Box<super::workload::Workload>),
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
            Object::Workload(w) => {
                let (ns, name) = w.meta();
                return ObjectRef {
                    kind: w.kind.name().into(),
                    namespace: ns.into(),
                    name: name.into(),
                };
            }
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
const NOT_YET: [&str; 1] = ["StatefulSet"];

/// Whether the manifest source should read this directory entry at all.
pub fn is_manifest_file(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    if [".swp", ".bak", ".tmp"].iter().any(|s| lower.ends_with(s)) {
        return false;
    }
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|s| lower.ends_with(s))
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
        values = parse_yaml(text)?;
    }
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        expand(v, i, &mut objects, &mut errors);
    }
    Ok((objects, errors))
}

/// Parses a YAML stream as kubectl's parser (go-yaml v2 behind sigs.k8s.io/yaml) does.
///
/// libyaml, which serde_yaml_ng is a port of, refuses `\'` in a double-quoted scalar as an
/// unknown escape, while go-yaml takes it as `'` (the documentation's manifests use it in shell
/// one-liners). Rather than guess where double-quoted scalars are, the parser itself says so:
/// when it stops at an unknown escape that is `\'`, that backslash is dropped (`'` needs no
/// escape between double quotes) and the stream parsed again. Every other escape libyaml
/// refuses go-yaml refuses too, so those errors stand.
fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut text = std::borrow::Cow::Borrowed(text);
    // Each retry removes one `\'`, so this ends; the bound is only a belt.
    for _ in 0..=text.matches("\\'").count() {
        match parse_yaml_once(&text) {
            Ok(values) => return Ok(values),
            Err(e) => {
                let at = e
                    .location()
                    .filter(|_| e.to_string().contains("found unknown escape character"))
                    // libyaml counts characters, not bytes.
                    .and_then(|l| text.char_indices().nth(l.index()).map(|(i, _)| i))
                    .filter(|&i| text[i..].starts_with("\\'"));
                match at {
                    Some(i) => text.to_mut().remove(i),
                    None => return Err(format!("invalid YAML: {e}")),
                };
            }
        }
    }
    Err("invalid YAML: too many escapes".into())
}

fn parse_yaml_once(text: &str) -> Result<Vec<Value>, serde_yaml_ng::Error> {
    let mut values = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let mut v = Value::deserialize(doc)?;
        super::validate::yaml11_octal_modes(&mut v);
        if !v.is_null() {
            values.push(v);
        }
    }
    Ok(values)
}

fn expand(v: Value, index: usize, objects: &mut Vec<Object>, errors: &mut Vec<ManifestError>) {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
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

/// Fields that older manifests still carry but the API no longer has: (kind, field, hint).
/// The apiserver drops them with a warning under non-strict validation; skiff keeps manifest
/// files strict (a silently dropped field is a surprise later) but names the replacement.
const RENAMED: &[(&str, &str, &str)] = &[
    (
        "Service",
        "spec.ipFamily",
        "removed in Kubernetes 1.20: use spec.ipFamilies, e.g. [IPv4], with spec.ipFamilyPolicy",
    ),
    (
        "Service",
        "spec.topologyKeys",
        "removed in Kubernetes 1.22: use spec.trafficDistribution or internalTrafficPolicy",
    ),
];

/// What to do with a field the kind does not have (the apiserver's `fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Refuse the object naming the field (manifest files are always read so).
    #[default]
    Strict,
    /// Drop the field and say so.
    Warn,
    /// Drop the field silently.
    Ignore,
}

/// Parses one object as the API receives it (a Pod, ConfigMap, Secret or Service), with the
/// same checks and defaults as a manifest file's; returns it and the warnings about dropped
/// unknown fields (with [`FieldValidation::Warn`]).
pub fn parse_api_object(
    v: Value,
    mode: FieldValidation,
) -> Result<(Object, Vec<String>), ManifestError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut warnings = Vec::new();
    let obj = parse_object_with(v, &kind, mode, &mut warnings)?;
    Ok((obj, warnings))
}

/// Deserializes `v` as `T` under `mode`, collecting the warnings of [`FieldValidation::Warn`].
pub fn decode<T: serde::de::DeserializeOwned>(
    v: Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<T, ManifestError> {
    let fail = |message: String| ManifestError {
        object: None,
        message,
    };
    strict(v, &fail, mode, warnings)
}

/// Deserializes like kubectl's strict field validation: an unknown field is an error
/// (or, with another `mode`, a warning or nothing).
fn strict<T: serde::de::DeserializeOwned>(
    v: Value,
    fail: &impl Fn(String) -> ManifestError,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<T, ManifestError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object")
        .to_string();
    let mut unknown = BTreeSet::new();
    let obj: T = serde_ignored::deserialize(v, |path| {
        unknown.insert(field_path(&path.to_string()));
    })
    .map_err(|e| fail(format!("invalid {kind}: {e}")))?;
    if mode != FieldValidation::Strict {
        if mode == FieldValidation::Warn {
            warnings.extend(
                unknown
                    .into_iter()
                    .map(|f| format!("unknown field \"{f}\"")),
            );
        }
        return Ok(obj);
    }
    if let Some(field) = unknown.into_iter().next() {
        let hint = RENAMED
            .iter()
            .find(|(k, f, _)| *k == kind && *f == field)
            .map(|(_, _, h)| format!(" ({h})"))
            .unwrap_or_default();
        return Err(fail(format!("unknown field \"{field}\"{hint}")));
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
    parse_object_with(v, kind, FieldValidation::Strict, &mut Vec::new())
}

fn parse_object_with(
    v: Value,
    kind: &str,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Object, ManifestError> {
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
            let pod: Pod = strict(v, &fail, mode, warnings)?;
            let pod = super::validate::validate_pod(pod).map_err(fail)?;
            Ok(Object::Pod(Box::new(pod)))
        }
        "ConfigMap" => {
            if api_version != "v1" {
                return Err(fail(format!(
                    "apiVersion {api_version:?} is not served for ConfigMap (use \"v1\")"
                )));
            }
            let cm: ConfigMap = strict(v, &fail, mode, warnings)?;
            let cm = super::validate::validate_config_map(cm).map_err(fail)?;
            Ok(Object::ConfigMap(Box::new(cm)))
        }
        "Secret" => {
            if api_version != "v1" {
                return Err(fail(format!(
                    "apiVersion {api_version:?} is not served for Secret (use \"v1\")"
                )));
            }
            let secret: Secret = strict(v, &fail, mode, warnings)?;
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
                let svc: Service = strict(v, &fail, mode, warnings)?;
                let svc = super::service::validate_service(svc).map_err(fail)?;
                Ok(Object::Service(std::sync::Arc::new(svc)))
            } else {
                let ep: Endpoints = strict(v, &fail, mode, warnings)?;
                let ep = super::service::validate_endpoints(ep).map_err(fail)?;
                Ok(Object::Endpoints(std::sync::Arc::new(ep)))
            }
        }
        k if super::workload::WorkloadKind::from_name(k).is_some() => {
            let kind = super::workload::WorkloadKind::from_name(k).expect("matched above");
            let value =
                super::workload::check(kind, v, mode, warnings).map_err(|e| fail(e.message))?;
            Ok(Object::Workload(Box::new(super::workload::Workload {
                kind,
                value,
            })))
        }
        k if NOT_YET.contains(&k) => Err(fail(format!(
            "kind {k} is not supported by this version of skiff yet"
        ))),
        k => Err(fail(format!(
            "unknown kind {k:?} (apiVersion {api_version:?})"
        ))),
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
        for bad in [
            ".a.yaml",
            "a.yaml~",
            "a.yaml.swp",
            "a.bak",
            "a.tmp",
            "a.txt",
            ".#x.yaml",
        ] {
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
    fn double_quoted_escapes_are_those_kubectl_takes() {
        let pod = |arg: &str| {
            POD.replace(
                "image: busybox",
                &format!("image: busybox\n    args: [{arg}]"),
            )
        };
        let args = |text: &str| {
            let (objs, errs) = parse("x.yaml", text);
            assert!(errs.is_empty(), "{errs:?}");
            match &objs[0] {
                Object::Pod(p) => p.spec.as_ref().unwrap().containers[0].args.clone().unwrap(),
                _ => unreachable!(),
            }
        };
        // go-yaml takes \' as ', twice on a line and in a second document too.
        let text = pod(r#""echo \'a\' \'b\'", 'it''s', "t\tn\"q\\""#);
        assert_eq!(args(&text), ["echo 'a' 'b'", "it's", "t\tn\"q\\"]);
        let two = format!("{}---\n{}", POD, pod(r#""x\'y""#).replace("web", "db"));
        let (objs, errs) = parse("x.yaml", &two);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(objs.len(), 2);
        // Outside double quotes a backslash is literal and stays.
        assert_eq!(args(&pod(r#"'a\''b'"#)), ["a\\'b"]);
        assert_eq!(args(&pod(r#"a\'b"#)), ["a\\'b"]);
        // An escape go-yaml refuses as well is still an error, with its position.
        let err = parse_file(Path::new("x.yaml"), &pod(r#""a\qb""#)).unwrap_err();
        assert!(err.contains("unknown escape"), "{err}");
        let err = parse_file(Path::new("x.yaml"), &pod(r#""a\'b\qc""#)).unwrap_err();
        assert!(err.contains("unknown escape"), "{err}");
    }

    #[test]
    fn removed_service_fields_name_their_replacement() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ipFamily: IPv4\n  ports:\n  - port: 80\n";
        let (objs, errs) = parse("x.yaml", text);
        assert!(objs.is_empty());
        assert!(
            errs[0].message.contains("unknown field \"spec.ipFamily\"")
                && errs[0].message.contains("use spec.ipFamilies"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[0].object.as_ref().unwrap().name, "s");
    }

    #[test]
    fn unknown_kind_and_unknown_field_name_the_object() {
        let text = "apiVersion: v1\nkind: Gizmo\nmetadata:\n  name: g\n---\n".to_string()
            + &POD.replace(
                "image: busybox",
                "image: busybox\n    imagePullPolcy: Never",
            );
        let (objs, errs) = parse("x.yaml", &text);
        assert!(objs.is_empty());
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("unknown kind \"Gizmo\""));
        assert_eq!(errs[1].object.as_ref().unwrap().name, "web");
        assert!(
            errs[1]
                .message
                .contains("unknown field \"spec.containers[0].imagePullPolcy\""),
            "{}",
            errs[1].message
        );
    }
}
