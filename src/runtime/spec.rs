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
    /// Extra bind mounts, in order.
    pub binds: Vec<Bind>,
    /// Hard limit of open files the host allows; the container never gets more.
    pub nofile_limit: u64,
    /// Capabilities (bounding, effective, permitted); `None` means the defaults.
    pub caps: Option<Vec<String>>,
    pub privileged: bool,
    pub read_only_rootfs: bool,
    pub no_new_privs: bool,
    /// An OCI seccomp profile, or none (unconfined).
    pub seccomp: Option<Value>,
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Share the host's PID namespace.
    pub host_pid: bool,
    /// The pod's shared PID namespace to join (`shareProcessNamespace`); `None`: a new one.
    pub pid_ns: Option<PathBuf>,
    pub cgroup: super::resources::Cgroup,
    /// The host's cgroup layout, for the container's `/sys/fs/cgroup` (read-only and
    /// showing only its own cgroup unless privileged).
    pub cgroupfs: super::cgroupfs::CgroupFs,
    /// Device nodes to create in the container's `/dev` (OCI `linux.devices`): the host's
    /// for a privileged container (see [`super::devices`]), else none beyond the defaults.
    pub devices: Vec<Value>,
    /// OCI `process.apparmorProfile` (hosts with AppArmor only, see [`super::apparmor`]).
    pub apparmor_profile: Option<String>,
    /// `tty: true`: the process gets a terminal of the container's devpts (`process.terminal`).
    pub terminal: bool,
}

/// A bind mount into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    /// `rprivate` (default), `rslave` (HostToContainer) or `rshared` (Bidirectional).
    pub propagation: &'static str,
}

/// Renders the spec as JSON.
pub fn render(c: &ContainerSpec) -> Value {
    let caps: Vec<String> = c
        .caps
        .clone()
        .unwrap_or_else(|| DEFAULT_CAPS.iter().map(|s| s.to_string()).collect());
    let mut namespaces = vec![json!({"type": "mount"})];
    match (&c.pid_ns, c.host_pid) {
        (_, true) => {}
        (Some(p), false) => namespaces.push(json!({"type": "pid", "path": p})),
        (None, false) => namespaces.push(json!({"type": "pid"})),
    }
    // A missing path means the host's namespace (hostNetwork, hostIPC).
    for (kind, path) in [
        ("network", &c.net_ns),
        ("ipc", &c.ipc_ns),
        ("uts", &c.uts_ns),
    ] {
        if let Some(p) = path {
            namespaces.push(json!({"type": kind, "path": p}));
        }
    }
    namespaces.push(json!({"type": "cgroup"}));
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": if c.privileged { json!(["nosuid", "noexec", "nodev"]) } else { json!(["nosuid", "noexec", "nodev", "ro"]) }}),
    ];
    let (cgroup_mounts, cgroupfs_ro_after) =
        super::cgroupfs::mounts(&c.cgroupfs, &c.cgroups_path, c.privileged);
    mounts.extend(cgroup_mounts);
    for b in &c.binds {
        let propagation = if b.propagation.is_empty() {
            "rprivate"
        } else {
            b.propagation
        };
        let mut opts = vec!["rbind", propagation];
        if b.read_only {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": opts}));
    }
    let nofile = c.nofile_limit.clamp(1024, 1_048_576);
    let mut resources = json!({
        "devices": if c.privileged {
            json!([{"allow": true, "access": "rwm"}])
        } else {
            json!([{"allow": false, "access": "rwm"}])
        }
    });
    let mut cpu = serde_json::Map::new();
    if let Some(v) = c.cgroup.cpu_shares {
        cpu.insert("shares".into(), json!(v));
    }
    if let Some(v) = c.cgroup.cpu_quota {
        cpu.insert("quota".into(), json!(v));
    }
    if let Some(v) = c.cgroup.cpu_period {
        cpu.insert("period".into(), json!(v));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(m) = c.cgroup.memory_limit {
        resources["memory"] = json!({"limit": m});
    }
    if let Some(p) = c.cgroup.pids_limit {
        resources["pids"] = json!({"limit": p});
    }
    let (masked, mut readonly): (Vec<&str>, Vec<&str>) = if c.privileged {
        (Vec::new(), Vec::new())
    } else {
        (MASKED_PATHS.to_vec(), READONLY_PATHS.to_vec())
    };
    if cgroupfs_ro_after {
        // The v1 tmpfs under the read-only binds; libcontainer applies readonlyPaths last.
        readonly.push("/sys/fs/cgroup");
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": c.cgroups_path,
        "resources": resources,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    });
    if !c.sysctls.is_empty() {
        linux["sysctl"] = json!(c.sysctls);
    }
    if !c.devices.is_empty() {
        linux["devices"] = Value::Array(c.devices.clone());
    }
    if let Some(profile) = &c.seccomp {
        linux["seccomp"] = profile.clone();
    }
    // As containerd does: a Bidirectional mount needs the container's mount namespace to be
    // shared with the host's, or its mounts cannot travel back. The other bind mounts get
    // their own propagation afterwards (see `propagation`).
    if c.binds.iter().any(|b| b.propagation == "rshared") {
        linux["rootfsPropagation"] = json!("shared");
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.terminal,
            "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { c.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": c.no_new_privs
        },
        "root": {"path": c.rootfs, "readonly": c.read_only_rootfs},
        "mounts": mounts,
        "linux": linux
    });
    if let Some(p) = &c.apparmor_profile {
        spec["process"]["apparmorProfile"] = json!(p);
    }
    spec
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
            no_new_privs: true,
            ..Default::default()
        }
    }

    #[test]
    fn spec_parses_as_oci_and_has_safe_defaults() {
        let v = render(&sample());
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert!(
            spec.linux()
                .as_ref()
                .unwrap()
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        assert_eq!(v["process"]["rlimits"][0]["hard"], 20000);
        assert_eq!(v["linux"]["cgroupsPath"], "/skiff/podu/c");
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/skiff/netns/x")
        );
    }

    #[test]
    fn apparmor_profile_goes_into_the_process() {
        let mut c = sample();
        assert!(render(&c)["process"].get("apparmorProfile").is_none());
        c.apparmor_profile = Some("k8s-deny-write".into());
        let spec: oci_spec::runtime::Spec = serde_json::from_value(render(&c)).unwrap();
        assert_eq!(
            spec.process()
                .as_ref()
                .unwrap()
                .apparmor_profile()
                .as_deref(),
            Some("k8s-deny-write")
        );
    }

    #[test]
    fn host_network_has_no_network_namespace() {
        let mut c = sample();
        c.net_ns = None;
        let v = render(&c);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
    }

    #[test]
    fn privileged_resources_and_binds() {
        let mut c = sample();
        c.privileged = true;
        c.host_pid = true;
        c.cgroup.memory_limit = Some(1 << 20);
        c.cgroup.cpu_shares = Some(256);
        c.binds.push(Bind {
            source: "/v".into(),
            destination: "/data".into(),
            read_only: true,
            propagation: "rslave",
        });
        let v = render(&c);
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        assert!(
            spec.linux()
                .as_ref()
                .unwrap()
                .masked_paths()
                .as_ref()
                .unwrap()
                .is_empty()
        );
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], true);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "pid"));
        let m = v["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(m["options"], json!(["rbind", "rslave", "ro"]));
    }

    /// On a cgroup v2 host the container gets its own cgroup namespace and a read-only
    /// cgroup2 mount (libcontainer mounts `type: cgroup` as cgroup2 with the spec's options).
    #[test]
    fn v2_cgroupfs_is_namespaced_and_read_only() {
        let v = render(&sample());
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "cgroup" && n.get("path").is_none())
        );
        let cg: Vec<&Value> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/sys/fs/cgroup")
            .collect();
        assert_eq!(cg.len(), 1);
        assert_eq!(cg[0]["type"], "cgroup");
        assert!(
            cg[0]["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "ro")
        );
        assert!(
            !v["linux"]["readonlyPaths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "/sys/fs/cgroup")
        );
    }

    /// On v1 the tmpfs holding the per-hierarchy binds turns read-only through readonlyPaths.
    #[test]
    fn v1_cgroupfs_tmpfs_becomes_read_only() {
        let mut c = sample();
        c.cgroupfs =
            crate::runtime::cgroupfs::CgroupFs::V1(crate::runtime::cgroupfs::v1_hierarchies(
                "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            ));
        let v = render(&c);
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        assert!(
            spec.linux()
                .as_ref()
                .unwrap()
                .readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/sys/fs/cgroup".into())
        );
        let m = v["mounts"].as_array().unwrap();
        assert!(m.iter().any(|m| m["destination"] == "/sys/fs/cgroup/memory"
            && m["source"] == "/sys/fs/cgroup/memory/skiff/podu/c"));
        c.privileged = true;
        let v = render(&c);
        assert!(
            !v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/sys/fs/cgroup/memory")
        );
    }
}
