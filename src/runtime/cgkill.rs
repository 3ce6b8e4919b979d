//! Killing whatever runs in a pod's or a container's cgroup, and removing the
//! cgroup, when its supervisor is gone.
//!
//! A shim that was SIGKILLed leaves its container running, reparented to PID 1,
//! and a `state.json` or `meta.json` that cannot be read hides it from the
//! daemon. Pids from state files can be stale or reused; the cgroup cannot lie,
//! so the container is found (and ended) through `/skiff/pod<uid>/<id>` in
//! every hierarchy: each v1 controller's tree, or the one v2 tree (on a hybrid
//! host also the named and unified trees libcontainer joins).
//!
//! Ending it as the kubelet and runc do: `cgroup.kill` where cgroup v2 has it
//! (kernel 5.14+); else freeze the cgroup (v1 `freezer.state`, v2
//! `cgroup.freeze`) so that nothing forks in between, SIGKILL every process
//! listed, thaw, and repeat until the cgroup is empty.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long to keep killing before giving up (a process stuck in the kernel,
/// e.g. in uninterruptible sleep on a dead NFS server, cannot be helped).
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Existing directories of the cgroup `rel` (e.g. `skiff/pod<uid>`) in every
/// mounted hierarchy.
pub fn dirs(rel: &str) -> Vec<PathBuf> {
    dirs_under(Path::new(CGROUP_ROOT), rel)
}

fn dirs_under(root: &Path, rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    let mut out = Vec::new();
    if root.join("cgroup.controllers").exists() {
        // cgroup v2: the root itself is the one hierarchy.
        out.push(root.join(rel));
    } else if let Ok(rd) = fs::read_dir(root) {
        // v1: one mount per controller (and `unified`, `systemd`) below it.
        for e in rd.flatten() {
            let p = e.path();
            // Controller co-mounts show up twice (`cpu,cpuacct` and a `cpu` symlink).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(p.join(rel));
            }
        }
    }
    out.retain(|d| d.is_dir());
    out
}

/// Every directory of the tree at `dir`, children before their parent.
fn tree_bottom_up(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree_bottom_up(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// Pids in `dirs` and all their descendants.
fn pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut all: Vec<i32> = dirs
        .iter()
        .flat_map(|d| tree_bottom_up(d))
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|&p| p > 0)
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Writes a control file, ignoring one the kernel does not have.
fn control(dir: &Path, file: &str, value: &str) -> bool {
    fs::write(dir.join(file), value).is_ok()
}

fn set_frozen(dirs: &[PathBuf], frozen: bool) {
    for d in dirs {
        if d.join("freezer.state").exists() {
            control(d, "freezer.state", if frozen { "FROZEN" } else { "THAWED" });
        } else if d.join("cgroup.freeze").exists() {
            control(d, "cgroup.freeze", if frozen { "1" } else { "0" });
        }
    }
}

/// Kills every process in the cgroup `rel` (all hierarchies, the whole subtree)
/// and waits until none is left. Returns how many processes were found.
/// Nothing to do (no such cgroup) is success.
pub fn kill_all(rel: &str) -> io::Result<usize> {
    let dirs = dirs(rel);
    if dirs.is_empty() {
        return Ok(0);
    }
    let first = pids(&dirs);
    if first.is_empty() {
        return Ok(0);
    }
    // cgroup v2's one-shot kill, for the whole subtree.
    for d in &dirs {
        control(d, "cgroup.kill", "1");
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        set_frozen(&dirs, true);
        let left = pids(&dirs);
        for &pid in &left {
            // SAFETY: kill(2) with a pid read from the cgroup and a constant signal;
            // a process that exited meanwhile gives ESRCH, which is fine.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Frozen tasks (v1) take a pending SIGKILL only once thawed.
        set_frozen(&dirs, false);
        if left.is_empty() {
            return Ok(first.len());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{} process(es) still in cgroup {rel} after SIGKILL: {left:?}",
                left.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills what runs in the cgroup `rel` and removes it from every hierarchy.
/// Idempotent; failures are logged (the caller's teardown goes on regardless).
pub fn kill_and_remove(rel: &str) {
    match kill_all(rel) {
        Ok(0) => {}
        Ok(n) => warn!(
            cgroup = rel,
            processes = n,
            "killed processes left in a cgroup without a supervisor"
        ),
        Err(e) => warn!(cgroup = rel, error = %e, "killing the processes of a cgroup"),
    }
    for d in dirs(rel) {
        for sub in tree_bottom_up(&d) {
            if let Err(e) = fs::remove_dir(&sub)
                && e.kind() != io::ErrorKind::NotFound
            {
                debug!(path = %sub.display(), error = %e, "removing cgroup");
            }
        }
    }
}

/// The cgroup of a pod, relative to a hierarchy's root.
pub fn pod_cgroup(uid: &str) -> String {
    format!("skiff/pod{uid}")
}

/// The cgroup of one container of a pod (its OCI `cgroupsPath`).
pub fn container_cgroup(uid: &str, id: &str) -> String {
    format!("skiff/pod{uid}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup_in_every_v1_hierarchy_and_in_v2() {
        let v1 = tempfile::tempdir().unwrap();
        for h in ["memory", "pids", "unified"] {
            fs::create_dir_all(v1.path().join(h).join("skiff/podU/c1")).unwrap();
        }
        fs::create_dir_all(v1.path().join("cpu")).unwrap();
        let mut found = dirs_under(v1.path(), "/skiff/podU");
        found.sort();
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(v1.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["memory/skiff/podU", "pids/skiff/podU", "unified/skiff/podU"]
        );
        let bottom_up = tree_bottom_up(&found[0]);
        assert_eq!(bottom_up.len(), 2);
        assert!(
            bottom_up[0].ends_with("c1"),
            "children first: {bottom_up:?}"
        );

        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "memory pids").unwrap();
        fs::create_dir_all(v2.path().join("skiff/podU")).unwrap();
        assert_eq!(
            dirs_under(v2.path(), "skiff/podU"),
            [v2.path().join("skiff/podU")]
        );
        assert!(dirs_under(v2.path(), "skiff/podX").is_empty());
    }
}
