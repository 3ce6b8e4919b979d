//! Pod validation and defaulting, following the API server's rules for the
//! fields skiff honours.

use std::collections::HashSet;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

/// Checks a DNS-1123 label (container names, namespaces): at most 63
/// characters of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            value.len()
        ));
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
        return Err(format!(
            "must be no more than 253 characters (is {})",
            value.len()
        ));
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
        return Err(format!(
            "{key:?}: a valid config key must be 1 to 253 characters"
        ));
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err(format!(
            "{key:?}: must not be '.' or '..' or start with '..'"
        ));
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

fn check_meta(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(), String> {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name: Required value".into());
    }
    check_dns1123_subdomain(&name)
        .map_err(|e| format!("metadata.name: Invalid value {name:?}: {e}"))?;
    let namespace = meta
        .namespace
        .get_or_insert_with(|| "default".to_string())
        .clone();
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
            return Err(format!(
                "data[{key}]: Invalid value: duplicate of key present in binaryData"
            ));
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
    // The ServiceAccount admission: `default` account, token volume automounted.
    crate::serviceaccount::admission::admit(&mut pod)?;
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
    let volumes = validate_volumes(spec.volumes.as_deref().unwrap_or_default())?;
    let mut seen = HashSet::new();
    let groups = [(
        "spec.initContainers",
        spec.init_containers.get_or_insert_with(Vec::new),
    )];
    for (field, list) in groups {
        for (i, c) in list.iter_mut().enumerate() {
            validate_container(c, &format!("{field}[{i}]"), &mut seen)?;
            validate_mounts(c, &format!("{field}[{i}]"), &volumes)?;
        }
    }
    for (i, c) in spec.containers.iter_mut().enumerate() {
        validate_container(c, &format!("spec.containers[{i}]"), &mut seen)?;
        validate_mounts(c, &format!("spec.containers[{i}]"), &volumes)?;
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    crate::pod::admission::validate_node_affinity(&pod)?;
    crate::runtime::pod_cgroup::validate(&pod)?;
    Ok(pod)
}

fn validate_container(
    c: &mut Container,
    field: &str,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
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
    // Quantities that do not parse, or requests above limits, are refused
    // like the API server does instead of failing at container start.
    // Container-level restartPolicy: only `Always`, only on init containers (native sidecars).
    let init = field.starts_with("spec.initContainers");
    if let Some(p) = &c.restart_policy {
        if !init {
            return Err(format!(
                "{field}.restartPolicy: Forbidden: may not be set for non-init containers"
            ));
        }
        if p != "Always" {
            return Err(format!(
                "{field}.restartPolicy: Unsupported value: {p:?}: supported values: \"Always\""
            ));
        }
    }
    // A regular init container runs to completion: no hooks and no probes (the API
    // server's validateInitContainers); a sidecar may have them all.
    if init && c.restart_policy.is_none() {
        let set = [
            ("lifecycle", c.lifecycle.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
        ];
        if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{field}.{name}: Forbidden: may not be set for init containers without restartPolicy=Always"
            ));
        }
    }
    crate::pod::admission::validate_extended(c, field)?;
    crate::kube::resources::amounts(c).map_err(|e| {
        let e = e
            .strip_prefix(&format!("container {}: ", c.name))
            .unwrap_or(&e)
            .to_string();
        format!("{field}.{e}")
    })?;
    let path = c
        .termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    if !path.starts_with('/') {
        return Err(format!(
            "{field}.terminationMessagePath: Invalid value: {path:?}: must be an absolute path"
        ));
    }
    let policy = c
        .termination_message_policy
        .get_or_insert_with(|| "File".into());
    if !["File", "FallbackToLogsOnError"].contains(&policy.as_str()) {
        return Err(format!(
            "{field}.terminationMessagePolicy: Unsupported value: {policy:?}: supported values: \"File\", \"FallbackToLogsOnError\""
        ));
    }
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

/// File modes in manifests are written the YAML 1.1 way, as kubectl reads
/// them: `defaultMode: 0644` is octal. YAML 1.2 (our parser) reads a leading
/// zero as a string, so below `volumes` a `mode`/`defaultMode` that looks like
/// `0644` or `0o644` becomes the octal number it means.
pub fn yaml11_octal_modes(v: &mut serde_json::Value) {
    fn fix(v: &mut serde_json::Value, in_volumes: bool) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if in_volumes && (k == "mode" || k == "defaultMode") {
                        if let Some(s) = child.as_str() {
                            let digits = s.strip_prefix("0o").or_else(|| s.strip_prefix('0'));
                            if let Some(n) = digits.and_then(|d| i64::from_str_radix(d, 8).ok()) {
                                *child = serde_json::Value::from(n);
                            }
                        }
                        continue;
                    }
                    fix(child, in_volumes || (k == "volumes" && child.is_array()));
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| fix(i, in_volumes)),
            _ => {}
        }
    }
    fix(v, false);
}

/// A path below a volume (`items[].path`, `subPath`): relative and without a
/// `..` element, so nothing can be written or mounted from outside the volume
/// (the API server's `validateLocalDescendingPath`). Key paths also must not
/// start with `..`, which the atomic writer reserves.
pub fn check_local_path(path: &str, reserved_dots: bool) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("must be a relative path".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("must not contain '..'".into());
    }
    if reserved_dots && path.starts_with("..") {
        return Err("must not start with '..'".into());
    }
    Ok(())
}

fn check_mode(field: &str, mode: Option<i32>) -> Result<(), String> {
    match mode {
        Some(m) if !(0..=0o777).contains(&m) => Err(format!(
            "{field}: Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive"
        )),
        _ => Ok(()),
    }
}

/// Validates `spec.volumes`: names, one source each, file paths and modes.
/// Returns the volume names.
fn validate_volumes(volumes: &[Volume]) -> Result<HashSet<String>, String> {
    let mut names = HashSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        check_dns1123_label(&v.name)
            .map_err(|e| format!("{field}.name: Invalid value {:?}: {e}", v.name))?;
        if !names.insert(v.name.clone()) {
            return Err(format!("{field}.name: Duplicate value: {:?}", v.name));
        }
        let sources = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.downward_api.is_some(),
            v.projected.is_some(),
            v.persistent_volume_claim.is_some(),
        ];
        let known = sources.iter().filter(|s| **s).count();
        let json = serde_json::to_value(v).unwrap_or_default();
        let given = json
            .as_object()
            .map_or(0, |o| o.keys().filter(|k| *k != "name").count());
        if given == 0 {
            return Err(format!(
                "{field}: Required value: must specify a volume type"
            ));
        }
        if given > 1 {
            return Err(format!(
                "{field}: Forbidden: may not specify more than 1 volume type"
            ));
        }
        if known == 0 {
            let kind = json
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                .unwrap_or_default();
            return Err(format!(
                "{field}.{kind}: Unsupported value: this volume type is not supported by skiff"
            ));
        }
        let items = |sub: &str,
                     items: Option<&[KeyToPath]>,
                     default_mode: Option<i32>|
         -> Result<(), String> {
            check_mode(&format!("{field}.{sub}.defaultMode"), default_mode)?;
            for (j, it) in items.unwrap_or_default().iter().enumerate() {
                let f = format!("{field}.{sub}.items[{j}]");
                if it.path.is_empty() {
                    return Err(format!("{f}.path: Required value"));
                }
                check_local_path(&it.path, true)
                    .map_err(|e| format!("{f}.path: Invalid value: {:?}: {e}", it.path))?;
                check_mode(&format!("{f}.mode"), it.mode)?;
            }
            Ok(())
        };
        let downward = |sub: &str, items: &[DownwardAPIVolumeFile]| -> Result<(), String> {
            for (j, it) in items.iter().enumerate() {
                let f = format!("{field}.{sub}.items[{j}]");
                check_local_path(&it.path, true)
                    .map_err(|e| format!("{f}.path: Invalid value: {:?}: {e}", it.path))?;
                check_mode(&format!("{f}.mode"), it.mode)?;
                if it.field_ref.is_some() == it.resource_field_ref.is_some() {
                    return Err(format!(
                        "{f}: Invalid value: exactly one of fieldRef or resourceFieldRef is required"
                    ));
                }
            }
            Ok(())
        };
        if let Some(c) = &v.config_map {
            items("configMap", c.items.as_deref(), c.default_mode)?;
        }
        if let Some(s) = &v.secret {
            items("secret", s.items.as_deref(), s.default_mode)?;
        }
        if let Some(d) = &v.downward_api {
            check_mode(&format!("{field}.downwardAPI.defaultMode"), d.default_mode)?;
            downward("downwardAPI", d.items.as_deref().unwrap_or_default())?;
        }
        if let Some(p) = &v.projected {
            check_mode(&format!("{field}.projected.defaultMode"), p.default_mode)?;
            for (j, src) in p.sources.iter().flatten().enumerate() {
                let sub = format!("projected.sources[{j}]");
                if let Some(c) = &src.config_map {
                    items(&format!("{sub}.configMap"), c.items.as_deref(), None)?;
                }
                if let Some(s) = &src.secret {
                    items(&format!("{sub}.secret"), s.items.as_deref(), None)?;
                }
                if let Some(d) = &src.downward_api {
                    downward(
                        &format!("{sub}.downwardAPI"),
                        d.items.as_deref().unwrap_or_default(),
                    )?;
                }
                if let Some(t) = &src.service_account_token {
                    crate::serviceaccount::admission::validate_token_projection(
                        &format!("{field}.{sub}.serviceAccountToken"),
                        t,
                    )?;
                }
            }
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') {
                return Err(format!(
                    "{field}.hostPath.path: Invalid value: {:?}: must be an absolute path",
                    h.path
                ));
            }
            const TYPES: [&str; 8] = [
                "",
                "DirectoryOrCreate",
                "Directory",
                "FileOrCreate",
                "File",
                "Socket",
                "CharDevice",
                "BlockDevice",
            ];
            if let Some(t) = h.type_.as_deref().filter(|t| !TYPES.contains(t)) {
                return Err(format!(
                    "{field}.hostPath.type: Unsupported value: {t:?}: supported values: {}",
                    TYPES[1..].join(", ")
                ));
            }
        }
        if let Some(m) = v
            .empty_dir
            .as_ref()
            .and_then(|e| e.medium.as_deref())
            .filter(|m| !m.is_empty() && *m != "Memory")
        {
            return Err(format!(
                "{field}.emptyDir.medium: Unsupported value: {m:?}: supported values: \"\", \"Memory\""
            ));
        }
    }
    Ok(names)
}

/// Validates a container's `volumeMounts` against the pod's volumes.
fn validate_mounts(c: &Container, field: &str, volumes: &HashSet<String>) -> Result<(), String> {
    let mut paths = HashSet::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let f = format!("{field}.volumeMounts[{j}]");
        if !volumes.contains(&m.name) {
            return Err(format!("{f}.name: Not found: {:?}", m.name));
        }
        if !m.mount_path.starts_with('/') {
            return Err(format!(
                "{f}.mountPath: Invalid value: {:?}: must be an absolute path",
                m.mount_path
            ));
        }
        if !paths.insert(m.mount_path.trim_end_matches('/').to_string()) {
            return Err(format!(
                "{f}.mountPath: Invalid value: {:?}: must be unique",
                m.mount_path
            ));
        }
        let sub = m.sub_path.as_deref().unwrap_or_default();
        let expr = m.sub_path_expr.as_deref().unwrap_or_default();
        if !sub.is_empty() && !expr.is_empty() {
            return Err(format!(
                "{f}.subPathExpr: Invalid value: {expr:?}: subPathExpr and subPath are mutually exclusive"
            ));
        }
        for (name, value) in [("subPath", sub), ("subPathExpr", expr)] {
            check_local_path(value, false)
                .map_err(|e| format!("{f}.{name}: Invalid value: {value:?}: {e}"))?;
        }
        if let Some(p) = m.mount_propagation.as_deref() {
            if !["None", "HostToContainer", "Bidirectional"].contains(&p) {
                return Err(format!(
                    "{f}.mountPropagation: Unsupported value: {p:?}: supported values: \"Bidirectional\", \"HostToContainer\", \"None\""
                ));
            }
            let privileged = c
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false);
            if p == "Bidirectional" && !privileged {
                return Err(format!(
                    "{f}.mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers"
                ));
            }
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

    #[test]
    fn container_restart_policy_makes_a_sidecar_and_is_refused_elsewhere() {
        let pod = |yaml: &str| -> Pod { serde_yaml_ng::from_str(yaml).unwrap() };
        let p = validate_pod(pod("metadata: {name: p}\nspec:\n  initContainers: [{name: s, image: x, restartPolicy: Always, startupProbe: {exec: {command: [true]}}, readinessProbe: {exec: {command: [true]}}, livenessProbe: {exec: {command: [true]}}, lifecycle: {preStop: {exec: {command: [true]}}}}]\n  containers: [{name: a, image: x}]\n")).unwrap();
        let init = p.spec.unwrap().init_containers.unwrap();
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        let e = validate_pod(pod("metadata: {name: p}\nspec:\n  containers: [{name: a, image: x, restartPolicy: Always}]\n")).unwrap_err();
        assert_eq!(
            e,
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
        );
        let e = validate_pod(pod("metadata: {name: p}\nspec:\n  initContainers: [{name: s, image: x, restartPolicy: Never}]\n  containers: [{name: a, image: x}]\n")).unwrap_err();
        assert!(e.contains("supported values: \"Always\""), "{e}");
    }

    #[test]
    fn regular_init_containers_may_not_have_probes_or_hooks() {
        for (field, yaml) in [
            ("livenessProbe", "livenessProbe: {exec: {command: [true]}}"),
            (
                "readinessProbe",
                "readinessProbe: {exec: {command: [true]}}",
            ),
            ("startupProbe", "startupProbe: {exec: {command: [true]}}"),
            (
                "lifecycle",
                "lifecycle: {postStart: {exec: {command: [true]}}}",
            ),
        ] {
            let e = validate_pod(pod(&format!(
                "metadata: {{name: p}}\nspec:\n  initContainers: [{{name: o, image: x}}, {{name: i, image: x, {yaml}}}]\n  containers: [{{name: a, image: x}}]\n"
            )))
            .unwrap_err();
            assert_eq!(
                e,
                format!(
                    "spec.initContainers[1].{field}: Forbidden: may not be set for init containers without restartPolicy=Always"
                )
            );
        }
    }

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
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0]
                .protocol
                .as_deref(),
            Some("TCP")
        );
    }

    #[test]
    fn volumes_and_mounts_that_stay_inside_are_accepted() {
        let p = validate_pod(pod(
            "metadata: {name: a}\nspec:\n  volumes:\n  - {name: cm, configMap: {name: c, defaultMode: 0o640, items: [{key: k, path: conf/app.ini, mode: 0o600}]}}\n  - {name: d, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}\n  - {name: e, emptyDir: {medium: Memory}}\n  containers: [{name: c, image: i, volumeMounts: [{name: cm, mountPath: /etc/c}, {name: e, mountPath: /x, subPath: a/b..c}, {name: e, mountPath: /y, subPathExpr: $(POD)}]}]",
        ));
        assert!(p.is_ok(), "{p:?}");
    }

    #[test]
    fn yaml_1_1_octal_modes_are_read_as_kubectl_reads_them() {
        let yaml = "kind: Pod\nmetadata: {name: a}\nspec:\n  volumes:\n  - {name: cm, configMap: {name: c, defaultMode: 0640, items: [{key: k, path: p, mode: 0400}]}}\n  - {name: s, secret: {secretName: s, defaultMode: 420}}\n  - {name: p, projected: {defaultMode: 0o755, sources: []}}\n  containers: [{name: c, image: i, env: [{name: mode, value: '0644'}]}]\n";
        let mut v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        yaml11_octal_modes(&mut v);
        let p: Pod = serde_json::from_value(v).unwrap();
        let vols = p.spec.as_ref().unwrap().volumes.clone().unwrap();
        let cm = vols[0].config_map.clone().unwrap();
        assert_eq!(cm.default_mode, Some(0o640));
        assert_eq!(cm.items.unwrap()[0].mode, Some(0o400));
        assert_eq!(vols[1].secret.clone().unwrap().default_mode, Some(420));
        assert_eq!(vols[2].projected.clone().unwrap().default_mode, Some(0o755));
        let env = p.spec.unwrap().containers[0].env.clone().unwrap();
        assert_eq!(
            env[0].value.as_deref(),
            Some("0644"),
            "only modes below volumes change"
        );
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
            (
                "metadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: i}]}",
                "metadata.name",
            ),
            (
                "metadata: {name: a}\nspec: {containers: []}",
                "spec.containers: Required",
            ),
            (
                "metadata: {name: a}\nspec: {containers: [{name: C, image: i}]}",
                "spec.containers[0].name",
            ),
            (
                "metadata: {name: a}\nspec: {containers: [{name: c}]}",
                "spec.containers[0].image: Required",
            ),
            (
                "metadata: {name: a}\nspec: {initContainers: [{name: c, image: i}], containers: [{name: c, image: i}]}",
                "Duplicate value",
            ),
            (
                "metadata: {name: a}\nspec: {restartPolicy: Sometimes, containers: [{name: c, image: i}]}",
                "spec.restartPolicy",
            ),
            (
                "metadata: {name: a}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: 70000}]}]}",
                "containerPort",
            ),
            (
                "metadata: {name: a, namespace: Not_OK}\nspec: {containers: [{name: c, image: i}]}",
                "metadata.namespace",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, configMap: {name: c, items: [{key: k, path: ../x}]}}], containers: [{name: c, image: i}]}",
                "spec.volumes[0].configMap.items[0].path: Invalid value: \"../x\": must not contain '..'",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, secret: {secretName: s, items: [{key: k, path: /etc/x}]}}], containers: [{name: c, image: i}]}",
                "spec.volumes[0].secret.items[0].path: Invalid value: \"/etc/x\": must be a relative path",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, configMap: {name: c, items: [{key: k, path: ..data}]}}], containers: [{name: c, image: i}]}",
                "must not start with '..'",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, projected: {sources: [{downwardAPI: {items: [{path: a/../../b, fieldRef: {fieldPath: metadata.name}}]}}]}}], containers: [{name: c, image: i}]}",
                "spec.volumes[0].projected.sources[0].downwardAPI.items[0].path",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, configMap: {name: c, defaultMode: 4096}}], containers: [{name: c, image: i}]}",
                "defaultMode: Invalid value: 4096",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}}, {name: v, emptyDir: {}}], containers: [{name: c, image: i}]}",
                "spec.volumes[1].name: Duplicate value",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v}], containers: [{name: c, image: i}]}",
                "must specify a volume type",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}, hostPath: {path: /x}}], containers: [{name: c, image: i}]}",
                "may not specify more than 1 volume type",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, nfs: {server: s, path: /x}}], containers: [{name: c, image: i}]}",
                "spec.volumes[0].nfs: Unsupported value",
            ),
            (
                "metadata: {name: a}\nspec: {containers: [{name: c, image: i, volumeMounts: [{name: nope, mountPath: /x}]}]}",
                "spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: /x, subPath: ../../etc}]}]}",
                "volumeMounts[0].subPath: Invalid value: \"../../etc\": must not contain '..'",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: /x, subPath: /etc}]}]}",
                "subPath: Invalid value: \"/etc\": must be a relative path",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: /x, subPath: a, subPathExpr: b}]}]}",
                "mutually exclusive",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: x}]}]}",
                "mountPath: Invalid value: \"x\": must be an absolute path",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: /x, mountPropagation: Bidirectional}]}]}",
                "only to privileged containers",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, emptyDir: {medium: HugePages}}], containers: [{name: c, image: i}]}",
                "emptyDir.medium: Unsupported value",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, hostPath: {path: rel}}], containers: [{name: c, image: i}]}",
                "hostPath.path: Invalid value",
            ),
            (
                "metadata: {name: a}\nspec: {volumes: [{name: v, hostPath: {path: /x, type: Dir}}], containers: [{name: c, image: i}]}",
                "hostPath.type: Unsupported value: \"Dir\"",
            ),
            (
                "metadata: {name: a}\nspec: {containers: [{name: c, image: i, resources: {requests: {cpu: '2'}, limits: {cpu: '1'}}}]}",
                "spec.containers[0].resources.requests.cpu: Invalid value: must be less than or equal to cpu limit",
            ),
            (
                "metadata: {name: a}\nspec: {containers: [{name: c, image: i, resources: {limits: {memory: 12Q}}}]}",
                "spec.containers[0].resources.limits.memory: Invalid value: quantity \"12Q\"",
            ),
        ];
        for (yaml, want) in cases {
            let err = validate_pod(pod(yaml)).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}
