//! The host's devices for privileged containers: as runc/containerd do for
//! `privileged: true`, every device node under the host's `/dev` is created in the
//! container's `/dev` (OCI `linux.devices`), next to the allow-all device cgroup.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde_json::{Value, json};

/// Directories under `/dev` that are mounts of their own in a container (or per-process
/// views), skipped as containerd does.
const SKIP_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
/// Nodes the runtime sets up itself (`/dev/console` is the container's, `/dev/ptmx` a
/// link into its own devpts).
const SKIP_FILES: [&str; 2] = ["console", "ptmx"];

/// Every character and block device under `dev` (the host's `/dev`), as OCI devices.
pub fn host_devices(dev: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    walk(dev, dev, &mut out, 0);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Value>, depth: usize) {
    // /dev is shallow; a loop through a bind mount must not run away.
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // symlink_metadata: links (e.g. /dev/stdin, /dev/disk/by-id/*) are not devices.
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_dir() {
            if dir == root && SKIP_DIRS.contains(&name.as_ref()) {
                continue;
            }
            walk(root, &e.path(), out, depth + 1);
            continue;
        }
        if dir == root && SKIP_FILES.contains(&name.as_ref()) {
            continue;
        }
        let kind = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            continue;
        };
        let Ok(rel) = e.path().strip_prefix(root).map(Path::to_path_buf) else {
            continue;
        };
        let rdev = md.rdev();
        out.push(json!({
            "path": Path::new("/dev").join(rel),
            "type": kind,
            "major": libc::major(rdev),
            "minor": libc::minor(rdev),
            "fileMode": md.mode() & 0o7777,
            "uid": md.uid(),
            "gid": md.gid(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_devices_are_device_nodes_only() {
        let devs = host_devices(Path::new("/dev"));
        // /dev/null exists on every Linux host.
        let null = devs
            .iter()
            .find(|d| d["path"] == "/dev/null")
            .expect("/dev/null");
        assert_eq!(
            (
                null["type"].as_str(),
                null["major"].as_u64(),
                null["minor"].as_u64()
            ),
            (Some("c"), Some(1), Some(3))
        );
        for d in &devs {
            let p = d["path"].as_str().unwrap();
            assert!(
                !p.starts_with("/dev/pts/") && p != "/dev/ptmx" && p != "/dev/console",
                "{p}"
            );
        }
        // Parses as OCI devices.
        let _: Vec<oci_spec::runtime::LinuxDevice> =
            serde_json::from_value(Value::Array(devs)).unwrap();
    }
}
