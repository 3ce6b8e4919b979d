//! Pod validation and defaulting, following the API server's rules for the
//! fields skiff honours.

use std::collections::HashSet;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// Checks a DNS-1123 label (container names, namespaces): at most 63
/// characters of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!("must be no more than 63 characters (is {})", value.len()));
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric();
    if !ok_chars || !ends_ok {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (object names): at most 253 characters,
/// dot-separated labels of `[a-z0-9-]`.
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 253 {
        return Err(format!("must be no more than 253 characters (is {})", value.len()));
    }
    for part in value.split('.') {
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || !part.as_bytes()[0].is_ascii_alphanumeric()
            || !part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
        {
            return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
        }
    }
    Ok(())
}

/// Checks a ConfigMap/Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn check_config_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("{key:?}: a valid config key must be 1 to 253 characters"));
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err(format!("{key:?}: must not be '.' or '..' or start with '..'"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn check_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<(), String> {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name: Required value".into());
    }
    check_dns1123_subdomain(&name)
        .map_err(|e| format!("metadata.name: Invalid value {name:?}: {e}"))?;
    let namespace = meta.namespace.get_or_insert_with(|| "default".to_string()).clone();
    check_dns1123_label(&namespace)
        .map_err(|e| format!("metadata.namespace: Invalid value {namespace:?}: {e}"))
}

/// Validates a ConfigMap: name, keys, and no key both in data and binaryData.
pub fn validate_config_map(mut cm: ConfigMap) -> Result<ConfigMap, String> {
    check_meta(&mut cm.metadata)?;
    for key in cm.data.iter().flatten().map(|(k, _)| k) {
        check_config_key(key).map_err(|e| format!("data[{key}]: Invalid value: {e}"))?;
    }
    for key in cm.binary_data.iter().flatten().map(|(k, _)| k) {
        check_config_key(key).map_err(|e| format!("binaryData[{key}]: Invalid value: {e}"))?;
        if cm.data.as_ref().is_some_and(|d| d.contains_key(key)) {
            return Err(format!("data[{key}]: Invalid value: duplicate of key present in binaryData"));
        }
    }
    Ok(cm)
}

/// Validates a Secret, merges `stringData` into `data` (as the API server
/// does) and checks the keys a typed Secret must have.
pub fn validate_secret(mut s: Secret) -> Result<Secret, String> {
    check_meta(&mut s.metadata)?;
    let type_ = s.type_.get_or_insert_with(|| "Opaque".into()).clone();
    if let Some(strings) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in strings {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    for key in s.data.iter().flatten().map(|(k, _)| k) {
        check_config_key(key).map_err(|e| format!("data[{key}]: Invalid value: {e}"))?;
    }
    let has = |k: &str| s.data.as_ref().is_some_and(|d| d.contains_key(k));
    match type_.as_str() {
        "kubernetes.io/tls" => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    return Err(format!("data[{k}]: Required value"));
                }
            }
        }
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            return Err("data[.dockerconfigjson]: Required value".into());
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            return Err("data: Required value: one of username or password".into());
        }
        _ => {}
    }
    Ok(s)
}

/// Validates a Pod and fills in the API server's defaults.
pub fn validate_pod(mut pod: Pod) -> Result<Pod, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name: Required value".into());
    }
    check_dns1123_subdomain(&name)
        .map_err(|e| format!("metadata.name: Invalid value {name:?}: {e}"))?;
    let namespace = pod
        .metadata
        .namespace
        .get_or_insert_with(|| "default".to_string())
        .clone();
    check_dns1123_label(&namespace)
        .map_err(|e| format!("metadata.namespace: Invalid value {namespace:?}: {e}"))?;
    let Some(spec) = pod.spec.as_mut() else {
        return Err("spec: Required value".into());
    };
    if spec.containers.is_empty() {
        return Err("spec.containers: Required value".into());
    }
    let policy = spec.restart_policy.get_or_insert_with(|| "Always".into());
    if !["Always", "OnFailure", "Never"].contains(&policy.as_str()) {
        return Err(format!(
            "spec.restartPolicy: Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
        ));
    }
    let grace = spec.termination_grace_period_seconds.get_or_insert(30);
    if *grace < 0 {
        return Err(format!(
            "spec.terminationGracePeriodSeconds: Invalid value: {grace}: must be >= 0"
        ));
    }
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    spec.node_name.get_or_insert_with(String::new);
    let mut seen = HashSet::new();
    let groups = [
        ("spec.initContainers", spec.init_containers.get_or_insert_with(Vec::new)),
    ];
    for (field, list) in groups {
        for (i, c) in list.iter_mut().enumerate() {
            validate_container(c, &format!("{field}[{i}]"), &mut seen)?;
        }
    }
    for (i, c) in spec.containers.iter_mut().enumerate() {
        validate_container(c, &format!("spec.containers[{i}]"), &mut seen)?;
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    Ok(pod)
}

fn validate_container(c: &mut Container, field: &str, seen: &mut HashSet<String>) -> Result<(), String> {
    check_dns1123_label(&c.name)
        .map_err(|e| format!("{field}.name: Invalid value {:?}: {e}", c.name))?;
    if !seen.insert(c.name.clone()) {
        return Err(format!("{field}.name: Duplicate value: {:?}", c.name));
    }
    let image = c.image.clone().unwrap_or_default();
    if image.trim().is_empty() {
        return Err(format!("{field}.image: Required value"));
    }
    let policy = c
        .image_pull_policy
        .get_or_insert_with(|| default_pull_policy(&image).into());
    if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
        return Err(format!(
            "{field}.imagePullPolicy: Unsupported value: {policy:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""
        ));
    }
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    for (j, p) in c.ports.iter_mut().flatten().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            return Err(format!(
                "{field}.ports[{j}].containerPort: Invalid value: {}: must be between 1 and 65535, inclusive",
                p.container_port
            ));
        }
        let proto = p.protocol.get_or_insert_with(|| "TCP".into());
        if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
            return Err(format!(
                "{field}.ports[{j}].protocol: Unsupported value: {proto:?}"
            ));
        }
    }
    Ok(())
}

/// The API server's default pull policy: `Always` for `:latest` or untagged images.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_filled() {
        let p = validate_pod(pod(
            "metadata: {name: a}\nspec: {containers: [{name: c, image: 'reg:5000/x:1.0', ports: [{containerPort: 80}]}]}",
        ))
        .unwrap();
        let spec = p.spec.unwrap();
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(spec.containers[0].ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("busybox@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn invalid_names_and_fields_are_refused_with_the_field() {
        let cases = [
            ("metadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: i}]}", "metadata.name"),
            ("metadata: {name: a}\nspec: {containers: []}", "spec.containers: Required"),
            ("metadata: {name: a}\nspec: {containers: [{name: C, image: i}]}", "spec.containers[0].name"),
            ("metadata: {name: a}\nspec: {containers: [{name: c}]}", "spec.containers[0].image: Required"),
            ("metadata: {name: a}\nspec: {initContainers: [{name: c, image: i}], containers: [{name: c, image: i}]}", "Duplicate value"),
            ("metadata: {name: a}\nspec: {restartPolicy: Sometimes, containers: [{name: c, image: i}]}", "spec.restartPolicy"),
            ("metadata: {name: a}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: 70000}]}]}", "containerPort"),
            ("metadata: {name: a, namespace: Not_OK}\nspec: {containers: [{name: c, image: i}]}", "metadata.namespace"),
        ];
        for (yaml, want) in cases {
            let err = validate_pod(pod(yaml)).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}
