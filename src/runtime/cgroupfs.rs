//! How a container sees `/sys/fs/cgroup`.
//!
//! A non-privileged container must neither rewrite its own limits (`echo -1 >
//! memory.limit_in_bytes`, `echo max > pids.max`) nor see the host's hierarchies. On cgroup
//! v2, libcontainer mounts `cgroup2` inside the container's cgroup namespace with the spec's
//! options, so a `ro` option is enough. On v1 (legacy and hybrid hosts) libcontainer 0.7
//! mounts every hierarchy read-write and ignores the `ro` option, so skiff does what runc
//! does itself: a tmpfs on `/sys/fs/cgroup` (made read-only at the end through
//! `readonlyPaths`) and, per hierarchy, a read-only bind of the container's own cgroup
//! directory. Hierarchies skiff's cgroup manager does not manage (`name=systemd`, `rdma`,
//! `misc`) hold no cgroup of the container and are left out: nothing of the host's tree
//! is visible.

use std::path::Path;

/// The v1 controllers libcgroups puts every container into (its `CONTROLLERS`): a
/// hierarchy with one of these holds the container's own cgroup by the time its
/// mounts are set up.
const MANAGED_V1: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// The host's cgroup layout, as far as the container's `/sys/fs/cgroup` is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CgroupFs {
    /// cgroup v2 only: one `cgroup2` mount, read-only, in the container's cgroup namespace.
    #[default]
    Unified,
    /// cgroup v1 (legacy or hybrid): the hierarchies that hold the container's cgroup.
    V1(Vec<V1Hierarchy>),
}

/// One v1 hierarchy mounted directly under `/sys/fs/cgroup` on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Its directory name under `/sys/fs/cgroup`, e.g. `memory` or `cpu,cpuacct`.
    pub dir: String,
    /// The managed controllers it carries; for a co-mounted hierarchy each also gets a
    /// path of its own in the container, as the host's `cpu -> cpu,cpuacct` symlinks give.
    pub controllers: Vec<String>,
}

/// The host's layout: `/sys/fs/cgroup/cgroup.controllers` exists only on a pure v2 host.
pub fn detect() -> CgroupFs {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return CgroupFs::Unified;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    CgroupFs::V1(v1_hierarchies(&mountinfo))
}

/// The managed v1 hierarchies mounted right below `/sys/fs/cgroup`, from a mountinfo text.
pub fn v1_hierarchies(mountinfo: &str) -> Vec<V1Hierarchy> {
    let mut out: Vec<V1Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        if right.next() != Some("cgroup") {
            continue;
        }
        let super_opts = right.nth(1).unwrap_or_default();
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let Some(dir) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if dir.is_empty() || dir.contains('/') || dir.contains('\\') {
            continue;
        }
        let controllers: Vec<String> = super_opts
            .split(',')
            .filter(|o| MANAGED_V1.contains(o))
            .map(String::from)
            .collect();
        if controllers.is_empty() || out.iter().any(|h| h.dir == dir) {
            continue;
        }
        out.push(V1Hierarchy {
            dir: dir.to_string(),
            controllers,
        });
    }
    out
}

/// The OCI mounts for `/sys/fs/cgroup` and whether `/sys/fs/cgroup` must be made read-only
/// afterwards (through `readonlyPaths`, after its sub-mounts are in place).
pub fn mounts(
    fs: &CgroupFs,
    cgroups_path: &str,
    privileged: bool,
) -> (Vec<serde_json::Value>, bool) {
    use serde_json::json;
    match fs {
        // Kubernetes gives privileged containers a writable cgroupfs; libcontainer mounts
        // it in the container's cgroup namespace.
        _ if privileged => (
            vec![
                json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime"]}),
            ],
            false,
        ),
        CgroupFs::Unified => (
            vec![
                json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
            ],
            false,
        ),
        CgroupFs::V1(hierarchies) => {
            // Writable while the binds get their mount points; read-only before the
            // container's process runs.
            let mut out = vec![
                json!({"destination": "/sys/fs/cgroup", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "noexec", "nodev", "mode=755", "size=64k"]}),
            ];
            let rel = cgroups_path.trim_start_matches('/');
            let mut dests: Vec<&str> = Vec::new();
            for h in hierarchies {
                let source = Path::new("/sys/fs/cgroup").join(&h.dir).join(rel);
                let mut names = vec![h.dir.as_str()];
                if h.controllers.len() > 1 || h.controllers[0] != h.dir {
                    names.extend(h.controllers.iter().map(String::as_str));
                }
                for name in names {
                    if dests.contains(&name) {
                        continue;
                    }
                    dests.push(name);
                    out.push(json!({"destination": format!("/sys/fs/cgroup/{name}"), "type": "bind",
                        "source": source, "options": ["bind", "rprivate", "nosuid", "noexec", "nodev", "ro"]}));
                }
            }
            (out, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/rdma rw,relatime - cgroup cgroup rw,rdma
50 23 0:32 / /mnt/elsewhere/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn v1_hierarchies_are_the_managed_ones_under_sys_fs_cgroup() {
        let h = v1_hierarchies(HYBRID);
        let dirs: Vec<&str> = h.iter().map(|h| h.dir.as_str()).collect();
        // Neither name=systemd, rdma, the unified mount nor a mount elsewhere.
        assert_eq!(dirs, ["cpu,cpuacct", "memory", "pids"]);
        assert_eq!(h[0].controllers, ["cpu", "cpuacct"]);
    }

    #[test]
    fn v1_mounts_bind_only_the_containers_own_cgroup_read_only() {
        let fs = CgroupFs::V1(v1_hierarchies(HYBRID));
        let (m, ro_after) = mounts(&fs, "/skiff/podu/c1", false);
        assert!(ro_after);
        assert_eq!(m[0]["type"], "tmpfs");
        let binds: Vec<(&str, &str)> = m[1..]
            .iter()
            .map(|m| {
                (
                    m["destination"].as_str().unwrap(),
                    m["source"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                (
                    "/sys/fs/cgroup/cpu,cpuacct",
                    "/sys/fs/cgroup/cpu,cpuacct/skiff/podu/c1"
                ),
                (
                    "/sys/fs/cgroup/cpu",
                    "/sys/fs/cgroup/cpu,cpuacct/skiff/podu/c1"
                ),
                (
                    "/sys/fs/cgroup/cpuacct",
                    "/sys/fs/cgroup/cpu,cpuacct/skiff/podu/c1"
                ),
                (
                    "/sys/fs/cgroup/memory",
                    "/sys/fs/cgroup/memory/skiff/podu/c1"
                ),
                ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/skiff/podu/c1"),
            ]
        );
        for b in &m[1..] {
            let opts = b["options"].as_array().unwrap();
            assert!(opts.iter().any(|o| o == "ro"), "{b}");
            assert!(!opts.iter().any(|o| o == "rbind"), "{b}");
        }
    }

    #[test]
    fn v2_and_privileged_mount_cgroupfs_in_the_cgroup_namespace() {
        let (m, ro_after) = mounts(&CgroupFs::Unified, "/skiff/podu/c1", false);
        assert!(!ro_after);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["type"], "cgroup");
        assert!(
            m[0]["options"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "ro")
        );
        for fs in [CgroupFs::Unified, CgroupFs::V1(v1_hierarchies(HYBRID))] {
            let (m, ro_after) = mounts(&fs, "/skiff/podu/c1", true);
            assert!(!ro_after);
            assert_eq!(m.len(), 1);
            assert!(
                !m[0]["options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o == "ro")
            );
        }
    }
}
