//! Mount propagation of bind mounts (`volumeMounts[].mountPropagation`).
//!
//! libcontainer 0.7 attaches bind mounts with `open_tree(OPEN_TREE_CLONE)` + `move_mount` and
//! drops the propagation options of the spec: the clone joins the source's peer group, so a
//! `None` (rprivate) volume on a shared host mount would still see mounts the host makes later.
//! The supervisor therefore sets each bind mount's propagation itself, between create and
//! start, from inside the container's mount namespace, as runc does with its second mount(2).

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use serde_json::Value;

/// `(destination, flags)` for every bind mount of `spec` (an OCI config.json) that asks for a
/// propagation type.
pub fn wanted(spec: &Value) -> Vec<(String, MsFlags)> {
    spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["type"] == "bind"
                || m["options"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
        })
        .filter_map(|m| {
            let dest = m["destination"].as_str()?.to_string();
            let flags = m["options"]
                .as_array()?
                .iter()
                .find_map(|o| match o.as_str()? {
                    "rprivate" => Some(MsFlags::MS_REC | MsFlags::MS_PRIVATE),
                    "private" => Some(MsFlags::MS_PRIVATE),
                    "rslave" => Some(MsFlags::MS_REC | MsFlags::MS_SLAVE),
                    "slave" => Some(MsFlags::MS_SLAVE),
                    "rshared" => Some(MsFlags::MS_REC | MsFlags::MS_SHARED),
                    "shared" => Some(MsFlags::MS_SHARED),
                    _ => None,
                })?;
            Some((dest, flags))
        })
        .collect()
}

/// Apply the propagation of every bind mount in `bundle`'s config.json inside the mount
/// namespace of the created (not yet started) container whose init is `pid`.
pub fn apply(bundle: &Path, pid: Pid) -> Result<(), String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec: Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mounts = wanted(&spec);
    if mounts.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("container mount namespace: {e}"))?;
    // A child enters the namespace (setns of a mount namespace needs a single-threaded caller
    // and must not move the supervisor itself).
    // SAFETY: the child only makes async-signal-safe system calls and leaves with _exit.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let mut code = 0;
            if setns(&ns, CloneFlags::CLONE_NEWNS).is_err() {
                code = 2;
            } else {
                for (i, (dest, flags)) in mounts.iter().enumerate() {
                    if mount(
                        None::<&str>,
                        dest.as_str(),
                        None::<&str>,
                        *flags,
                        None::<&str>,
                    )
                    .is_err()
                    {
                        code = 10 + i as i32;
                        break;
                    }
                }
            }
            // SAFETY: _exit skips destructors and atexit handlers of the forked copy.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, 2)) => {
                Err("entering the container's mount namespace failed".into())
            }
            Ok(WaitStatus::Exited(_, n)) if n >= 10 => {
                let (dest, _) = &mounts[(n - 10) as usize];
                Err(format!("setting the mount propagation of {dest} failed"))
            }
            other => Err(format!("setting mount propagation: {other:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_of_bind_mounts_only() {
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/a", "type": "bind", "source": "/x", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/b", "source": "/y", "options": ["rbind", "rslave"]},
            {"destination": "/c", "type": "bind", "source": "/z", "options": ["rbind", "rshared"]},
            {"destination": "/d", "type": "bind", "source": "/w", "options": ["rbind"]},
        ]});
        assert_eq!(
            wanted(&spec),
            [
                ("/a".to_string(), MsFlags::MS_REC | MsFlags::MS_PRIVATE),
                ("/b".to_string(), MsFlags::MS_REC | MsFlags::MS_SLAVE),
                ("/c".to_string(), MsFlags::MS_REC | MsFlags::MS_SHARED),
            ]
        );
    }
}
