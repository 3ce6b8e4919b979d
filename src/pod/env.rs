//! A container's environment as the kubelet builds it: `envFrom` sources,
//! then `env` with `valueFrom` (fieldRef, resourceFieldRef, configMapKeyRef,
//! secretKeyRef) and `$(VAR)` expansion from what is defined before.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use crate::kube::expand::expand;
use crate::quantity;
use crate::store::Store;

/// What the values can come from.
pub struct EnvContext<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<&'a str>,
    pub host_ip: Option<&'a str>,
    /// Node allocatable (millicores, bytes): the value of an unset limit.
    pub allocatable: (i64, i64),
    pub store: &'a Store,
    /// Service variables (`{SVC}_SERVICE_HOST`...), lowest precedence.
    pub service_env: &'a [(String, String)],
}

/// Resolves the container's environment, in definition order.
pub fn resolve(c: &Container, cx: &EnvContext<'_>) -> Result<Vec<(String, String)>, String> {
    let ns = cx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out: Vec<(String, String)> = Vec::new();
    // The kubernetes Service's variables go to every pod, service links or not (the kubelet's).
    let service_env = crate::service::env::with_master(cx.service_env, cx.store);
    let mut defined: HashMap<String, String> = service_env.iter().cloned().collect();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            out.push((k, v));
        }
    };
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        let pairs: Vec<(String, String)> = if let Some(r) = &src.config_map_ref {
            let name = r.name.clone();
            match cx.store.config_map(ns, &name) {
                Some(cm) => cm.data.unwrap_or_default().into_iter().collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(format!("configmap \"{name}\" not found")),
            }
        } else if let Some(r) = &src.secret_ref {
            let name = r.name.clone();
            match cx.store.secret(ns, &name) {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(format!("secret \"{name}\" not found")),
            }
        } else {
            Vec::new()
        };
        for (k, v) in pairs {
            let key = format!("{prefix}{k}");
            // The kubelet skips keys that are not valid variable names (with an event).
            if !valid_env_name(&key) {
                continue;
            }
            defined.insert(key.clone(), v.clone());
            set(&mut out, key, v);
        }
    }
    for e in c.env.iter().flatten() {
        let value = value_of(e, c, cx, ns, &defined)?;
        let Some(value) = value else { continue };
        defined.insert(e.name.clone(), value.clone());
        set(&mut out, e.name.clone(), value);
    }
    for (k, v) in &service_env {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The value of one variable; `None` for an optional reference that is missing.
fn value_of(
    e: &EnvVar,
    c: &Container,
    cx: &EnvContext<'_>,
    ns: &str,
    defined: &HashMap<String, String>,
) -> Result<Option<String>, String> {
    let Some(from) = &e.value_from else {
        return Ok(Some(expand(e.value.as_deref().unwrap_or(""), defined)));
    };
    if let Some(f) = &from.field_ref {
        return field_value(&f.field_path, cx).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        let target = match &r.container_name {
            Some(n) if !n.is_empty() => cx
                .pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|x| &x.name == n)
                .ok_or_else(|| format!("env {}: container {n:?} not found", e.name))?,
            _ => c,
        };
        return resource_value(
            &r.resource,
            r.divisor.as_ref().map(|q| q.0.as_str()),
            target,
            cx,
        )
        .map(Some);
    }
    if let Some(r) = &from.config_map_key_ref {
        let name = r.name.clone();
        return match cx.store.config_map(ns, &name) {
            None if r.optional == Some(true) => Ok(None),
            None => Err(format!("configmap \"{name}\" not found")),
            Some(cm) => {
                let v = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .cloned()
                    .or_else(|| {
                        cm.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    });
                match v {
                    Some(v) => Ok(Some(v)),
                    None if r.optional == Some(true) => Ok(None),
                    None => Err(format!(
                        "couldn't find key {} in ConfigMap {ns}/{name}",
                        r.key
                    )),
                }
            }
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let name = r.name.clone();
        return match cx.store.secret(ns, &name) {
            None if r.optional == Some(true) => Ok(None),
            None => Err(format!("secret \"{name}\" not found")),
            Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if r.optional == Some(true) => Ok(None),
                None => Err(format!("couldn't find key {} in Secret {ns}/{name}", r.key)),
            },
        };
    }
    Ok(Some(String::new()))
}

/// Whether anything of the pod (an env `fieldRef` of any container, a downwardAPI or
/// projected volume item) reads the pod's own IP: such a pod needs its network attached
/// before its containers' specs and volumes are built, so it gets no overlapped start.
pub fn needs_pod_ip(pod: &Pod) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| {
                (k == "fieldPath" && v.as_str().is_some_and(|p| p.starts_with("status.podIP")))
                    || walk(v)
            }),
            serde_json::Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    // Unserializable (cannot happen for a parsed pod): take the safe, sequential path.
    serde_json::to_value(&pod.spec).map_or(true, |spec| walk(&spec))
}

/// The downward API's field paths.
pub fn field_value(path: &str, cx: &EnvContext<'_>) -> Result<String, String> {
    let meta = &cx.pod.metadata;
    let spec = cx.pod.spec.clone().unwrap_or_default();
    let bracket = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(rest.to_string())
    };
    let map_text = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(&meta.labels),
        "metadata.annotations" => map_text(&meta.annotations),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => cx.pod_ip.unwrap_or("").to_string(),
        "status.hostIP" | "status.hostIPs" => cx.host_ip.unwrap_or("").to_string(),
        p => {
            if let Some(k) = bracket("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = bracket("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef fieldPath {p:?}"));
            }
        }
    })
}

/// `resourceFieldRef`: a request or limit, unset limits meaning node allocatable.
pub fn resource_value(
    resource: &str,
    divisor: Option<&str>,
    c: &Container,
    cx: &EnvContext<'_>,
) -> Result<String, String> {
    let res = c.resources.clone().unwrap_or_default();
    let get = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()) };
    // As the kubelet: cpu in millicores, the rest in base units, integer
    // values divided and rounded up (`ceil(MilliValue / divisor.MilliValue)`).
    let (lim, req) = (&res.limits, &res.requests);
    let (value, is_cpu) = match resource {
        "limits.cpu" => (
            get(lim, "cpu")
                .map(|q| quantity::millicores(&q))
                .transpose()?
                .unwrap_or(cx.allocatable.0),
            true,
        ),
        "requests.cpu" => (
            get(req, "cpu")
                .map(|q| quantity::millicores(&q))
                .transpose()?
                .unwrap_or(0),
            true,
        ),
        "limits.memory" => (
            get(lim, "memory")
                .map(|q| quantity::bytes(&q))
                .transpose()?
                .unwrap_or(cx.allocatable.1),
            false,
        ),
        "requests.memory" => (
            get(req, "memory")
                .map(|q| quantity::bytes(&q))
                .transpose()?
                .unwrap_or(0),
            false,
        ),
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => {
            let m = if resource.starts_with("limits") {
                lim
            } else {
                req
            };
            (
                get(m, "ephemeral-storage")
                    .map(|q| quantity::bytes(&q))
                    .transpose()?
                    .unwrap_or(0),
                false,
            )
        }
        other => return Err(format!("unsupported resourceFieldRef resource {other:?}")),
    };
    let divisor = match (divisor, is_cpu) {
        (Some(d), true) => quantity::millicores(d)?,
        (Some(d), false) => quantity::bytes(d)?,
        (None, true) => 1000,
        (None, false) => 1,
    };
    if divisor <= 0 {
        return Err(format!(
            "resourceFieldRef {resource}: divisor must be positive"
        ));
    }
    Ok(format!("{}", quantity::ceil(value as f64 / divisor as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn store() -> Store {
        let s = Store::new("n");
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_yaml_ng::from_str(
            "metadata: {name: cfg, namespace: default}\ndata: {color: blue, size: L, 1bad: x}",
        )
        .unwrap();
        let sec: k8s_openapi::api::core::v1::Secret = serde_yaml_ng::from_str(
            "metadata: {name: sec, namespace: default}\ndata: {password: c2VjcmV0}",
        )
        .unwrap();
        s.set_config(
            BTreeMap::from([(("default".into(), "cfg".into()), cm)]),
            BTreeMap::from([(("default".into(), "sec".into()), sec)]),
        );
        s
    }

    fn pod(yaml: &str) -> Pod {
        let mut p: Pod = serde_yaml_ng::from_str(yaml).unwrap();
        p.metadata.uid = Some("u-1".into());
        crate::manifest::validate::validate_pod(p).unwrap()
    }

    fn env_of(p: &Pod, store: &Store) -> Result<Vec<(String, String)>, String> {
        let cx = EnvContext {
            pod: p,
            pod_ip: Some("10.244.0.5"),
            host_ip: Some("192.168.1.2"),
            allocatable: (2000, 4 << 30),
            store,
            service_env: &[("WEB_SERVICE_HOST".into(), "10.96.0.10".into())],
        };
        resolve(&p.spec.as_ref().unwrap().containers[0], &cx)
    }

    #[test]
    fn value_from_sources_and_expansion() {
        let s = store();
        let p = pod(r#"
metadata: {name: web, labels: {app: shop}}
spec:
  nodeName: node1
  containers:
  - name: c
    image: i
    resources: {limits: {memory: 256Mi}, requests: {cpu: 110m}}
    envFrom: [{configMapRef: {name: cfg}, prefix: CFG_}]
    env:
    - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: CPUREQ, valueFrom: {resourceFieldRef: {resource: requests.cpu}}}
    - {name: MEMBYTES, valueFrom: {resourceFieldRef: {resource: limits.memory}}}
    - {name: CPULIM, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: PASS, valueFrom: {secretKeyRef: {name: sec, key: password}}}
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: cfg, key: color}}}
    - {name: MISSING, valueFrom: {configMapKeyRef: {name: nope, key: x, optional: true}}}
    - {name: GREETING, value: "$(NAME) in $(CFG_color) via $(WEB_SERVICE_HOST) $$(NAME)"}
"#);
        let env = env_of(&p, &s).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_color"), Some("blue"));
        assert_eq!(get("CFG_1bad"), Some("x"), "a prefix makes the name valid");
        assert_eq!(get("NAME"), Some("web"));
        assert_eq!(get("APP"), Some("shop"));
        assert_eq!(get("IP"), Some("10.244.0.5"));
        assert_eq!(get("NODE"), Some("node1"));
        assert_eq!(get("MEM"), Some("256"));
        assert_eq!(get("CPU"), Some("110"), "no float noise");
        assert_eq!(get("CPUREQ"), Some("1"), "cores, rounded up");
        assert_eq!(get("MEMBYTES"), Some("268435456"));
        assert_eq!(get("CPULIM"), Some("2"));
        assert_eq!(get("PASS"), Some("secret"));
        assert_eq!(get("COLOR"), Some("blue"));
        assert_eq!(get("MISSING"), None);
        assert_eq!(get("GREETING"), Some("web in blue via 10.96.0.10 $(NAME)"));
        assert_eq!(get("WEB_SERVICE_HOST"), Some("10.96.0.10"));
    }

    #[test]
    fn missing_references_name_the_object() {
        let s = store();
        for (env, want) in [
            (
                "{name: A, valueFrom: {configMapKeyRef: {name: nope, key: x}}}",
                "configmap \"nope\" not found",
            ),
            (
                "{name: A, valueFrom: {configMapKeyRef: {name: cfg, key: x}}}",
                "couldn't find key x in ConfigMap default/cfg",
            ),
            (
                "{name: A, valueFrom: {secretKeyRef: {name: nope, key: x}}}",
                "secret \"nope\" not found",
            ),
            (
                "{name: A, valueFrom: {fieldRef: {fieldPath: spec.bogus}}}",
                "unsupported fieldRef",
            ),
        ] {
            let p = pod(&format!(
                "metadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    image: i\n    env: [{env}]\n"
            ));
            let err = env_of(&p, &s).unwrap_err();
            assert!(err.contains(want), "{env}: {err}");
        }
    }

    #[test]
    fn pods_reading_their_own_ip_are_found() {
        let uses =
            |spec: &str| needs_pod_ip(&pod(&format!("metadata: {{name: p}}\nspec:\n{spec}")));
        assert!(!uses(
            "  containers:\n  - {name: c, image: i, env: [{name: N, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}]}\n"
        ));
        assert!(!uses(
            "  containers:\n  - {name: c, image: i, command: [echo, status.podIP]}\n"
        ));
        assert!(uses(
            "  containers:\n  - {name: c, image: i, env: [{name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]}\n"
        ));
        assert!(uses(
            "  initContainers:\n  - {name: i, image: i, env: [{name: IP, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}]}\n  containers:\n  - {name: c, image: i}\n"
        ));
        assert!(uses(
            "  containers:\n  - {name: c, image: i}\n  volumes:\n  - name: info\n    downwardAPI: {items: [{path: ip, fieldRef: {fieldPath: status.podIP}}]}\n"
        ));
        assert!(uses(
            "  containers:\n  - {name: c, image: i}\n  volumes:\n  - name: all\n    projected: {sources: [{downwardAPI: {items: [{path: ip, fieldRef: {fieldPath: status.podIP}}]}}]}\n"
        ));
    }
}
