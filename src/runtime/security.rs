//! A container's security settings from the pod's and the container's
//! `securityContext`, with safe defaults when nothing is asked.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::spec::DEFAULT_CAPS;

/// Every capability the kernel knows, for `privileged` and `add: [ALL]`.
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Sysctls that are namespaced (safe to set per pod), as the kubelet's list.
pub fn is_namespaced_sysctl(name: &str, host_network: bool) -> bool {
    matches!(
        name,
        "kernel.shm_rmid_forced"
            | "kernel.shmmax"
            | "kernel.shmall"
            | "kernel.shmmni"
            | "kernel.sem"
            | "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
    ) || name.starts_with("fs.mqueue.")
        || (!host_network && name.starts_with("net."))
}

/// The seccomp choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    Unconfined,
    RuntimeDefault,
    /// A profile file under `<root-dir>/seccomp/`.
    Localhost(String),
}

/// Resolved security settings of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub privileged: bool,
    pub caps: Vec<String>,
    pub read_only_rootfs: bool,
    pub no_new_privs: bool,
    pub seccomp: Seccomp,
    pub sysctls: BTreeMap<String, String>,
    pub host_pid: bool,
    pub host_ipc: bool,
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// Computes the settings. `image_user` is the image's user already resolved
/// against its `/etc/passwd` (uid, primary gid), `gid_of` looks up a uid's
/// primary group in the image.
/// `seccomp_default` is the kubelet's `--seccomp-default`: RuntimeDefault for containers
/// whose pod and container name no profile.
pub fn compute(
    pod: &Pod,
    c: &Container,
    image_user: (u32, u32),
    gid_of: impl Fn(u32) -> Option<u32>,
    seccomp_default: bool,
) -> Result<Security, String> {
    compute_with(
        pod,
        c,
        image_user,
        gid_of,
        current_bounding_set(),
        seccomp_default,
    )
}

/// The capability bounding set skiff itself runs with (`CapBnd`); all bits
/// when it cannot be read.
pub fn current_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// Every capability in `bounding`: what `privileged` and `add: [ALL]` grant.
/// Like containerd's `WithAllCurrentCapabilities`, a capability skiff does not
/// have itself is left out (asking for it would make capset fail with EPERM,
/// e.g. inside a VM or container without CAP_SYS_RESOURCE).
fn all_caps(bounding: u64) -> Vec<String> {
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1u64 << i) != 0)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// [`compute`] with the bounding set to draw `privileged`/`ALL` from.
pub fn compute_with(
    pod: &Pod,
    c: &Container,
    image_user: (u32, u32),
    gid_of: impl Fn(u32) -> Option<u32>,
    bounding: u64,
    seccomp_default: bool,
) -> Result<Security, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let run_as_user = csc.run_as_user.or(psc.run_as_user);
    let run_as_group = csc.run_as_group.or(psc.run_as_group);
    for (what, v) in [("runAsUser", run_as_user), ("runAsGroup", run_as_group)] {
        if let Some(v) = v
            && !(0..=i64::from(u32::MAX - 1)).contains(&v)
        {
            return Err(format!("{what}: Invalid value: {v}"));
        }
    }
    let uid = run_as_user.map(|u| u as u32).unwrap_or(image_user.0);
    let gid = match (run_as_group, run_as_user) {
        (Some(g), _) => g as u32,
        (None, Some(u)) => gid_of(u as u32).unwrap_or(0),
        (None, None) => image_user.1,
    };
    let non_root = csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false);
    if non_root && uid == 0 {
        return Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.uid.clone().unwrap_or_default(),
            c.name
        ));
    }
    let mut additional_gids: Vec<u32> = psc
        .supplemental_groups
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g as u32)
        .collect();
    if let Some(g) = psc.fs_group {
        additional_gids.push(g as u32);
    }
    // The runtime keeps the primary group in the supplementary list too
    // (`id` in a pod shows groups=<fsGroup>,<runAsGroup>,<supplementalGroups>).
    if !additional_gids.is_empty() {
        additional_gids.push(gid);
    }
    additional_gids.sort_unstable();
    additional_gids.dedup();
    let privileged = csc.privileged.unwrap_or(false);
    let mut caps: Vec<String> = if privileged {
        all_caps(bounding)
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    if !privileged && let Some(cs) = &csc.capabilities {
        for d in cs.drop.iter().flatten() {
            if d.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else {
                let n = cap_name(d);
                caps.retain(|c| *c != n);
            }
        }
        for a in cs.add.iter().flatten() {
            if a.eq_ignore_ascii_case("ALL") {
                caps = all_caps(bounding);
                continue;
            }
            let n = cap_name(a);
            if !ALL_CAPS.contains(&n.as_str()) {
                return Err(format!("capabilities.add: unknown capability {a:?}"));
            }
            if !caps.contains(&n) {
                caps.push(n);
            }
        }
    }
    let escalation = csc.allow_privilege_escalation;
    if escalation == Some(false) && privileged {
        return Err("cannot set allowPrivilegeEscalation to false and privileged to true".into());
    }
    // skiff's safe default: no_new_privs unless escalation is asked for explicitly.
    let no_new_privs = !privileged && escalation != Some(true);
    let profile = csc.seccomp_profile.or(psc.seccomp_profile);
    let seccomp = match profile {
        None if seccomp_default => Seccomp::RuntimeDefault,
        None => Seccomp::Unconfined,
        Some(p) => match p.type_.as_str() {
            "Unconfined" => Seccomp::Unconfined,
            "RuntimeDefault" => Seccomp::RuntimeDefault,
            "Localhost" => {
                let path = p.localhost_profile.unwrap_or_default();
                if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
                    return Err(format!(
                        "seccompProfile.localhostProfile: Invalid value {path:?}: must be a relative path without '..'"
                    ));
                }
                Seccomp::Localhost(path)
            }
            other => return Err(format!("seccompProfile.type: Unsupported value: {other:?}")),
        },
    };
    let seccomp = if privileged {
        Seccomp::Unconfined
    } else {
        seccomp
    };
    let host_network = spec.host_network.unwrap_or(false);
    let mut sysctls = BTreeMap::new();
    for s in psc.sysctls.iter().flatten() {
        if !is_namespaced_sysctl(&s.name, host_network) {
            return Err(format!(
                "forbidden sysctl: {:?} is not a namespaced sysctl skiff allows",
                s.name
            ));
        }
        sysctls.insert(s.name.clone(), s.value.clone());
    }
    Ok(Security {
        uid,
        gid,
        additional_gids,
        privileged,
        caps,
        read_only_rootfs: csc.read_only_root_filesystem.unwrap_or(false),
        no_new_privs,
        seccomp,
        sysctls,
        host_pid: spec.host_pid.unwrap_or(false),
        host_ipc: spec.host_ipc.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        let mut p: Pod = serde_yaml_ng::from_str(yaml).unwrap();
        p.metadata.uid = Some("u".into());
        crate::manifest::validate::validate_pod(p).unwrap()
    }

    fn sec(yaml: &str, image_user: (u32, u32)) -> Result<Security, String> {
        let p = pod(yaml);
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        compute_with(
            &p,
            &c,
            image_user,
            |u| (u == 1000).then_some(1000),
            u64::MAX,
            false,
        )
    }

    #[test]
    fn defaults_are_safe() {
        let s = sec(
            "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}",
            (0, 0),
        )
        .unwrap();
        assert_eq!(s.caps.len(), 14);
        assert!(s.no_new_privs && !s.privileged && !s.read_only_rootfs);
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        assert_eq!((s.uid, s.gid), (0, 0));
    }

    #[test]
    fn users_groups_and_non_root() {
        let s = sec("metadata: {name: p}\nspec:\n  securityContext: {runAsUser: 1000, supplementalGroups: [5, 6], fsGroup: 2000}\n  containers: [{name: c, image: i}]", (0, 0)).unwrap();
        assert_eq!((s.uid, s.gid), (1000, 1000));
        assert_eq!(s.additional_gids, vec![5, 6, 1000, 2000]);
        let s = sec("metadata: {name: p}\nspec:\n  securityContext: {runAsUser: 1000}\n  containers: [{name: c, image: i, securityContext: {runAsUser: 7, runAsGroup: 8}}]", (0, 0)).unwrap();
        assert_eq!((s.uid, s.gid), (7, 8));
        let err = sec("metadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true}\n  containers: [{name: c, image: i}]", (0, 0)).unwrap_err();
        assert!(
            err.contains("runAsNonRoot and image will run as root"),
            "{err}"
        );
        assert!(sec("metadata: {name: p}\nspec:\n  securityContext: {runAsNonRoot: true}\n  containers: [{name: c, image: i}]", (65534, 65534)).is_ok());
    }

    #[test]
    fn capabilities_privileged_and_escalation() {
        let s = sec("metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {capabilities: {drop: [ALL], add: [NET_ADMIN, CAP_CHOWN]}}}]}", (0, 0)).unwrap();
        assert_eq!(s.caps, vec!["CAP_NET_ADMIN", "CAP_CHOWN"]);
        let s = sec("metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {capabilities: {drop: [NET_RAW]}}}]}", (0, 0)).unwrap();
        assert!(!s.caps.contains(&"CAP_NET_RAW".to_string()) && s.caps.len() == 13);
        let s = sec("metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {privileged: true}}]}", (0, 0)).unwrap();
        assert!(s.privileged && !s.no_new_privs && s.caps.len() == ALL_CAPS.len());
        let s = sec("metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {allowPrivilegeEscalation: true}}]}", (0, 0)).unwrap();
        assert!(!s.no_new_privs);
        assert!(sec("metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {capabilities: {add: [BOGUS]}}}]}", (0, 0)).is_err());
        // privileged gets what skiff itself has: here everything but CAP_SYS_RESOURCE (24).
        let p = pod(
            "metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {privileged: true}}]}",
        );
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let s = compute_with(
            &p,
            &c,
            (0, 0),
            |_| None,
            ((1u64 << 41) - 1) & !(1 << 24),
            false,
        )
        .unwrap();
        assert_eq!(s.caps.len(), ALL_CAPS.len() - 1);
        assert!(!s.caps.contains(&"CAP_SYS_RESOURCE".to_string()));
    }

    #[test]
    fn seccomp_and_sysctls() {
        let s = sec("metadata: {name: p}\nspec:\n  securityContext: {seccompProfile: {type: RuntimeDefault}, sysctls: [{name: net.core.somaxconn, value: '1024'}]}\n  containers: [{name: c, image: i}]", (0, 0)).unwrap();
        assert_eq!(s.seccomp, Seccomp::RuntimeDefault);
        assert_eq!(
            s.sysctls.get("net.core.somaxconn").map(String::as_str),
            Some("1024")
        );
        let err = sec("metadata: {name: p}\nspec:\n  securityContext: {sysctls: [{name: kernel.panic, value: '1'}]}\n  containers: [{name: c, image: i}]", (0, 0)).unwrap_err();
        assert!(err.contains("forbidden sysctl"), "{err}");
        let err = sec("metadata: {name: p}\nspec:\n  containers: [{name: c, image: i, securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../x.json}}}]", (0, 0)).unwrap_err();
        assert!(err.contains("localhostProfile"), "{err}");
        // The node default (`--seccomp-default`) applies when neither pod nor container has a
        // profile; an explicit Unconfined and privileged containers stay unconfined.
        let with_default = |yaml: &str| {
            let p = pod(yaml);
            let c = p.spec.as_ref().unwrap().containers[0].clone();
            compute_with(&p, &c, (0, 0), |_| None, u64::MAX, true)
                .unwrap()
                .seccomp
        };
        assert_eq!(
            with_default("metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}"),
            Seccomp::RuntimeDefault
        );
        assert_eq!(
            with_default(
                "metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {seccompProfile: {type: Unconfined}}}]}"
            ),
            Seccomp::Unconfined
        );
        assert_eq!(
            with_default(
                "metadata: {name: p}\nspec:\n  securityContext: {seccompProfile: {type: Unconfined}}\n  containers: [{name: c, image: i}]"
            ),
            Seccomp::Unconfined
        );
        assert_eq!(
            with_default(
                "metadata: {name: p}\nspec: {containers: [{name: c, image: i, securityContext: {privileged: true}}]}"
            ),
            Seccomp::Unconfined
        );
    }
}
