//! AppArmor profiles for containers on hosts that have AppArmor (elsewhere the pod is
//! refused at admission, see [`crate::pod::admission::apparmor`]). The profile comes from the
//! container's `securityContext.appArmorProfile`, else the pod's, else the beta annotation
//! `container.apparmor.security.beta.kubernetes.io/<container>`, and goes into the OCI spec's
//! `process.apparmorProfile`.

use k8s_openapi::api::core::v1::{Container, Pod};

/// The beta annotation's prefix; the container name follows.
pub const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Whether the host enforces AppArmor (the kernel module's `enabled` parameter).
pub fn host_apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.starts_with('Y'))
}

/// Runtime default profiles a host may have loaded (containerd's, then Docker's); skiff
/// does not compile profiles itself.
const RUNTIME_DEFAULTS: [&str; 2] = ["cri-containerd.apparmor.d", "docker-default"];

/// What the pod asks for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The container's profile by the API's precedence; `None` when nothing is asked.
pub fn wanted(pod: &Pod, c: &Container) -> Result<Option<Wanted>, String> {
    let field = c
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.clone())
        .or_else(|| {
            pod.spec
                .as_ref()?
                .security_context
                .as_ref()?
                .app_armor_profile
                .clone()
        });
    if let Some(p) = field {
        return match p.type_.as_str() {
            "Unconfined" => Ok(Some(Wanted::Unconfined)),
            "RuntimeDefault" => Ok(Some(Wanted::RuntimeDefault)),
            "Localhost" => match p.localhost_profile.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => Ok(Some(Wanted::Localhost(name.to_string()))),
                _ => Err("invalid empty AppArmor profile name for type Localhost".into()),
            },
            other => Err(format!("unknown AppArmor profile type {other:?}")),
        };
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{APPARMOR_ANNOTATION}{}", c.name)));
    match annotation.map(String::as_str) {
        None => Ok(None),
        Some("unconfined") => Ok(Some(Wanted::Unconfined)),
        Some("runtime/default") => Ok(Some(Wanted::RuntimeDefault)),
        Some(v) => match v.strip_prefix("localhost/") {
            Some(name) if !name.trim().is_empty() => {
                Ok(Some(Wanted::Localhost(name.trim().to_string())))
            }
            _ => Err(format!("invalid AppArmor profile name: {v:?}")),
        },
    }
}

/// Names of the loaded profiles, from the kernel's list (`name (mode)` per line).
pub fn loaded(profiles_file: &str) -> Vec<String> {
    profiles_file
        .lines()
        .filter_map(|l| l.rfind(" (").map(|i| l[..i].trim().to_string()))
        .collect()
}

/// The OCI `process.apparmorProfile` for what is wanted, given the loaded profiles.
pub fn resolve(w: &Wanted, loaded: &[String]) -> Result<String, String> {
    match w {
        Wanted::Unconfined => Ok("unconfined".into()),
        Wanted::RuntimeDefault => RUNTIME_DEFAULTS
            .iter()
            .find(|p| loaded.iter().any(|l| l == *p))
            .map(|p| p.to_string())
            .ok_or_else(|| {
                format!(
                    "AppArmor RuntimeDefault: no runtime default profile is loaded on this host (skiff uses {})",
                    RUNTIME_DEFAULTS.join(" or ")
                )
            }),
        Wanted::Localhost(name) => {
            if loaded.iter().any(|l| l == name) {
                Ok(name.clone())
            } else {
                Err(format!("apparmor profile not found {name}"))
            }
        }
    }
}

/// The container's profile on this host: `None` when the pod asks for none or the host has
/// no AppArmor (admission refused the pods that ask for one there).
pub fn for_container(pod: &Pod, c: &Container) -> Result<Option<String>, String> {
    let Some(w) = wanted(pod, c)? else {
        return Ok(None);
    };
    if !host_apparmor_enabled() {
        return Ok(None);
    }
    let list = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
        .map_err(|e| format!("reading the loaded AppArmor profiles: {e}"))?;
    resolve(&w, &loaded(&list)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn the_container_field_wins_over_the_pod_field_and_the_annotation() {
        let p = pod(
            "metadata: {annotations: {container.apparmor.security.beta.kubernetes.io/a: localhost/from-annot}}\nspec:\n  securityContext: {appArmorProfile: {type: RuntimeDefault}}\n  containers:\n  - {name: a, securityContext: {appArmorProfile: {type: Localhost, localhostProfile: mine}}}\n  - {name: b}\n  - {name: c, securityContext: {appArmorProfile: {type: Unconfined}}}\n",
        );
        let c = |i: usize| p.spec.as_ref().unwrap().containers[i].clone();
        assert_eq!(
            wanted(&p, &c(0)),
            Ok(Some(Wanted::Localhost("mine".into())))
        );
        assert_eq!(wanted(&p, &c(1)), Ok(Some(Wanted::RuntimeDefault)));
        assert_eq!(wanted(&p, &c(2)), Ok(Some(Wanted::Unconfined)));
        let p = pod(
            "metadata: {annotations: {container.apparmor.security.beta.kubernetes.io/a: localhost/k8s-deny}}\nspec: {containers: [{name: a}, {name: b}]}",
        );
        assert_eq!(
            wanted(&p, &p.spec.as_ref().unwrap().containers[0]),
            Ok(Some(Wanted::Localhost("k8s-deny".into())))
        );
        assert_eq!(
            wanted(&p, &p.spec.as_ref().unwrap().containers[1]),
            Ok(None)
        );
        let bad = pod(
            "metadata: {annotations: {container.apparmor.security.beta.kubernetes.io/a: k8s-deny}}\nspec: {containers: [{name: a}]}",
        );
        assert!(wanted(&bad, &bad.spec.as_ref().unwrap().containers[0]).is_err());
    }

    #[test]
    fn profiles_resolve_against_the_loaded_ones() {
        let list = loaded(
            "docker-default (enforce)\nk8s-apparmor-example-deny-write (enforce)\n/usr/bin/man (complain)\n",
        );
        assert_eq!(
            list,
            [
                "docker-default",
                "k8s-apparmor-example-deny-write",
                "/usr/bin/man"
            ]
        );
        assert_eq!(
            resolve(&Wanted::RuntimeDefault, &list).as_deref(),
            Ok("docker-default")
        );
        assert_eq!(
            resolve(
                &Wanted::Localhost("k8s-apparmor-example-deny-write".into()),
                &list
            )
            .as_deref(),
            Ok("k8s-apparmor-example-deny-write")
        );
        assert_eq!(
            resolve(&Wanted::Localhost("nope".into()), &list),
            Err("apparmor profile not found nope".into())
        );
        assert!(resolve(&Wanted::RuntimeDefault, &[]).is_err());
        assert_eq!(
            resolve(&Wanted::Unconfined, &[]).as_deref(),
            Ok("unconfined")
        );
    }
}
