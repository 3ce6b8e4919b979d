//! The ServiceAccount admission plugin's part of pod defaulting: the service account name, the
//! check that it exists, and the automounted `kube-api-access-<suffix>` projected volume.

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use sha2::{Digest, Sha256};

/// Where the token, `ca.crt` and `namespace` appear in every container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The automounted volume's name prefix.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The automounted token's lifetime (the apiserver's: an hour plus 7 s, which tells these
/// tokens apart from requested ones).
pub const AUTOMOUNT_EXPIRATION_SECONDS: i64 = 3607;
/// A projected token's lifetime when `expirationSeconds` is not given.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a projected token may ask for (ten minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest (2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// The ConfigMap the root CA publisher puts in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The only service account there is: every namespace has its implicit `default`.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Defaults and checks the pod's service account and mounts its token, as the apiserver's
/// ServiceAccount admission does. Service accounts other than `default` cannot be declared on a
/// skiff node, so naming one fails with the apiserver's message for a missing account.
pub fn admit(pod: &mut Pod) -> Result<(), String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    // `serviceAccount` is the deprecated spelling of `serviceAccountName`.
    let sa = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.service_account.clone().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.into());
    if let Some(old) = spec.service_account.as_deref().filter(|s| !s.is_empty())
        && old != sa
    {
        return Err(format!(
            "spec.serviceAccount: Invalid value: {old:?}: must equal spec.serviceAccountName ({sa:?})"
        ));
    }
    if sa != DEFAULT_SERVICE_ACCOUNT {
        return Err(format!(
            "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
        ));
    }
    spec.service_account_name = Some(sa.clone());
    spec.service_account = Some(sa);
    if spec.automount_service_account_token == Some(false) {
        return Ok(());
    }
    let existing = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(VOLUME_PREFIX))
        .map(|v| v.name.clone());
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", suffix(&ns, &name)));
    let mount = VolumeMount {
        name: volume_name.clone(),
        mount_path: MOUNT_PATH.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut needed = false;
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        // A container that mounts something of its own there keeps it.
        let taken = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH);
        if !taken {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount.clone());
            needed = true;
        }
    }
    if needed && existing.is_none() {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: volume_name,
            projected: Some(token_volume_source()),
            ..Default::default()
        });
    }
    Ok(())
}

/// The automounted volume: token, the cluster CA and the namespace.
pub fn token_volume_source() -> ProjectedVolumeSource {
    ProjectedVolumeSource {
        default_mode: Some(0o644),
        sources: Some(vec![
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    expiration_seconds: Some(AUTOMOUNT_EXPIRATION_SECONDS),
                    path: "token".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: ROOT_CA_CONFIG_MAP.into(),
                    items: Some(vec![KeyToPath {
                        key: "ca.crt".into(),
                        path: "ca.crt".into(),
                        ..Default::default()
                    }]),
                    optional: None,
                }),
                ..Default::default()
            },
            VolumeProjection {
                downward_api: Some(DownwardAPIProjection {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: "namespace".into(),
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: "metadata.namespace".into(),
                        }),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Five characters of the apiserver's name-generator alphabet. The apiserver picks them at
/// random once; a manifest is defaulted again at every read, so they come from the pod's name
/// here, or every re-read would change the pod.
fn suffix(namespace: &str, name: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let d = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    d.iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Checks a `serviceAccountToken` projection (the apiserver's validation).
pub fn validate_token_projection(
    field: &str,
    p: &ServiceAccountTokenProjection,
) -> Result<(), String> {
    if p.path.is_empty() {
        return Err(format!("{field}.path: Required value"));
    }
    crate::kube::validation::check_local_path(&p.path, true)
        .map_err(|e| format!("{field}.path: Invalid value: {:?}: {e}", p.path))?;
    let secs = p.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if secs < MIN_EXPIRATION_SECONDS {
        return Err(format!(
            "{field}.expirationSeconds: Invalid value: {secs}: may not specify a duration less than 10 minutes"
        ));
    }
    if secs > MAX_EXPIRATION_SECONDS {
        return Err(format!(
            "{field}.expirationSeconds: Invalid value: {secs}: may not specify a duration larger than 2^32 seconds"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const BASE: &str = "metadata: {name: web, namespace: shop}\nspec:\n  initContainers: [{name: init, image: i}]\n  containers: [{name: a, image: i}, {name: b, image: i, volumeMounts: [{name: own, mountPath: /var/run/secrets/kubernetes.io/serviceaccount/}]}]\n  volumes: [{name: own, emptyDir: {}}]\n";

    #[test]
    fn automount_adds_one_volume_and_mounts_it_where_nothing_else_is() {
        let mut p = pod(BASE);
        admit(&mut p).unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        let vols: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(vols.len(), 2);
        let name = vols[1];
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.name.clone())
                .collect()
        };
        assert_eq!(
            mounts(&spec.init_containers.as_ref().unwrap()[0]),
            vec![name]
        );
        assert_eq!(mounts(&spec.containers[0]), vec![name]);
        assert_eq!(mounts(&spec.containers[1]), vec!["own"]);
        let src = spec.volumes.as_ref().unwrap()[1].projected.clone().unwrap();
        assert_eq!(src, token_volume_source());
        // Defaulting again (a re-read manifest) changes nothing.
        let mut again = p.clone();
        admit(&mut again).unwrap();
        assert_eq!(again, p);
        let mut fresh = pod(BASE);
        admit(&mut fresh).unwrap();
        assert_eq!(fresh, p, "the suffix is the same at every read");
    }

    #[test]
    fn automount_false_on_the_pod_mounts_nothing() {
        let mut p = pod(
            "metadata: {name: web}\nspec:\n  automountServiceAccountToken: false\n  containers: [{name: a, image: i}]\n",
        );
        admit(&mut p).unwrap();
        let spec = p.spec.unwrap();
        assert!(spec.volumes.is_none());
        assert!(spec.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn unknown_service_account_is_refused_with_the_apiserver_message() {
        let mut p = pod(
            "metadata: {name: x, namespace: ns}\nspec:\n  serviceAccountName: robot\n  containers: [{name: a, image: i}]\n",
        );
        assert_eq!(
            admit(&mut p).unwrap_err(),
            "pods \"x\" is forbidden: error looking up service account ns/robot: serviceaccount \"robot\" not found"
        );
        let mut old = pod(
            "metadata: {name: x}\nspec:\n  serviceAccount: default\n  containers: [{name: a, image: i}]\n",
        );
        admit(&mut old).unwrap();
        assert_eq!(
            old.spec.unwrap().service_account_name.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn token_projection_limits() {
        let p = |secs: Option<i64>, path: &str| ServiceAccountTokenProjection {
            expiration_seconds: secs,
            path: path.into(),
            ..Default::default()
        };
        assert!(validate_token_projection("f", &p(None, "token")).is_ok());
        assert!(validate_token_projection("f", &p(Some(600), "token")).is_ok());
        let e = validate_token_projection("f", &p(Some(599), "token")).unwrap_err();
        assert!(e.contains("less than 10 minutes"), "{e}");
        assert!(validate_token_projection("f", &p(Some(1 << 33), "t")).is_err());
        assert!(validate_token_projection("f", &p(None, "../t")).is_err());
        assert!(validate_token_projection("f", &p(None, "")).is_err());
    }
}
