//! Builds the OCI runtime spec (`config.json`) for one container of a pod.

use std::path::PathBuf;

use serde_json::{Value, json};

/// Docker's (and containerd's) default capability set for containers.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from containers (runc's and the kubelet's defaults).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths mounted read-only in containers.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything that varies per container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Namespace files to join; `None` for the network means the host's network.
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// Absolute cgroup path below every hierarchy, e.g. `/skiff/pod<uid>/<id>`.
    pub cgroups_path: String,
    /// Extra bind mounts: (host source, container destination, read-only).
    pub binds: Vec<(PathBuf, String, bool)>,
    /// Hard limit of open files the host allows; the container never gets more.
    pub nofile_limit: u64,
}

/// Renders the spec as JSON.
pub fn render(c: &ContainerSpec) -> Value {
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    for (kind, path) in [("network", &c.net_ns), ("ipc", &c.ipc_ns), ("uts", &c.uts_ns)] {
        match path {
            Some(p) => namespaces.push(json!({"type": kind, "path": p})),
            None if kind == "network" => {}
            None => namespaces.push(json!({"type": kind})),
        }
    }
    namespaces.push(json!({"type": "cgroup"}));
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (src, dst, ro) in &c.binds {
        let mut opts = vec!["rbind", "rprivate"];
        if *ro {
            opts.push("ro");
        }
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": opts}));
    }
    let nofile = c.nofile_limit.clamp(1024, 1_048_576);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { c.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": true
        },
        "root": {"path": c.rootfs, "readonly": false},
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": c.cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ContainerSpec {
        ContainerSpec {
            rootfs: "/r".into(),
            args: vec!["sleep".into(), "1".into()],
            env: vec!["A=b".into()],
            net_ns: Some("/run/skiff/netns/x".into()),
            ipc_ns: Some("/run/skiff/ns/x/ipc".into()),
            uts_ns: Some("/run/skiff/ns/x/uts".into()),
            cgroups_path: "/skiff/podu/c".into(),
            nofile_limit: 20000,
            ..Default::default()
        }
    }

    #[test]
    fn spec_parses_as_oci_and_has_safe_defaults() {
        let v = render(&sample());
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(v["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        assert!(
            spec.linux().as_ref().unwrap().masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string())
        );
        assert_eq!(v["process"]["rlimits"][0]["hard"], 20000);
        assert_eq!(v["linux"]["cgroupsPath"], "/skiff/podu/c");
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/run/skiff/netns/x"));
    }

    #[test]
    fn host_network_has_no_network_namespace() {
        let mut c = sample();
        c.net_ns = None;
        let v = render(&c);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
    }
}
