//! The shared PID namespace of a pod with `shareProcessNamespace: true`.
//!
//! A PID namespace lives only as long as its init: once PID 1 is gone the kernel kills every
//! other process in it and refuses new ones, so a bind-mounted pin (as for the pod's IPC and
//! UTS namespaces) is not enough. As the kubelet's pause container does, a tiny infra process
//! is PID 1 of the pod's namespace: `skiff-shim pause <dir>` unshares a PID namespace, forks
//! that init and exits. The init reaps every orphan of the pod's containers, and holds
//! nothing of the host: its root is an empty read-only tmpfs in a mount namespace of its
//! own, it has no capabilities and runs as `nobody` (containers see it as `/proc/1`).
//!
//! Its pid and start time are kept in `<run>/ns/<uid>/pause.pid`, so a restarted skiffd finds
//! the same namespace again and a reused pid is never mistaken for it. Each container of the
//! pod joins it through `/proc/<pid>/ns/pid`; a pause found dead (its containers died with
//! it) is replaced at the next container start. Pod removal kills it.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// The file under the pod's namespace directory naming its pause process.
pub const PAUSE_FILE: &str = "pause.pid";

/// Why the pod's PID namespace could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    #[error("starting the pod's pause process {shim}: {source}")]
    Spawn { shim: PathBuf, source: io::Error },
    #[error("the pod's pause process failed: {0}")]
    Pause(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The start time (clock ticks after boot) of `pid`, from `/proc/<pid>/stat`.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `state` was field 3; starttime is field 22.
    fields.nth(18)?.parse().ok()
}

/// The pod's live pause process (its pid), if there is one.
pub fn find(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join(PAUSE_FILE)).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let started: u64 = it.next()?.parse().ok()?;
    (pid > 0 && start_time(pid) == Some(started)).then_some(pid)
}

/// The pod's PID namespace (`/proc/<pid>/ns/pid` of its pause), starting the pause process
/// with `shim` if there is none alive.
pub fn ensure(dir: &Path, shim: &Path) -> Result<PathBuf, PidNsError> {
    if let Some(pid) = find(dir) {
        return Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")));
    }
    fs::create_dir_all(dir).map_err(|source| PidNsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let out = Command::new(shim)
        .arg("pause")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PidNsError::Spawn {
            shim: shim.to_path_buf(),
            source,
        })?;
    let line = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = match line.trim().parse() {
        Ok(pid) if out.status.success() => pid,
        _ => {
            return Err(PidNsError::Pause(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
    };
    let started = start_time(pid)
        .ok_or_else(|| PidNsError::Pause(format!("pause process {pid} exited at once")))?;
    let path = dir.join(PAUSE_FILE);
    super::shim::write_atomic(dir, PAUSE_FILE, format!("{pid} {started}\n").as_bytes())
        .map_err(|source| PidNsError::Write { path, source })?;
    info!(pid, dir = %dir.display(), "started the pod's pause process (shared PID namespace)");
    Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")))
}

/// Kills the pod's pause process (and with it whatever is left in its namespace) and
/// removes its file. Idempotent.
pub fn remove(dir: &Path) {
    let file = dir.join(PAUSE_FILE);
    if let Some(pid) = find(dir) {
        kill_and_wait(pid, &dir.join(PAUSE_FILE));
    }
    match fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %file.display(), error = %e, "removing the pause file"),
    }
}

fn kill_and_wait(pid: i32, file: &Path) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd was opened after `find` checked the start time; check again so that it
    // surely refers to the pause and not to a process that reused its pid meanwhile.
    let expected = fs::read_to_string(file).ok().and_then(|t| {
        t.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
    });
    if start_time(pid) != expected {
        return;
    }
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        debug!(pid, error = %io::Error::last_os_error(), "killing the pause process");
        return;
    }
    // A pidfd turns readable once its process has exited.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, 100 ms timeout.
        if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
            return;
        }
    }
    warn!(pid, "the pod's pause process did not exit after SIGKILL");
}

/// `skiff-shim pause <dir>`: creates the PID namespace and its init; prints the init's pid
/// once it is ready. Must run before the process has any thread besides the main one.
pub fn pause_main(dir: &Path) -> i32 {
    if let Err(e) = nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWPID | nix::sched::CloneFlags::CLONE_NEWNS,
    ) {
        eprintln!("unshare(CLONE_NEWPID|CLONE_NEWNS): {e}");
        return 1;
    }
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pipe: {e}");
            return 1;
        }
    };
    // SAFETY: the process is single-threaded (skiff-shim starts no thread before this verb),
    // so the child may run ordinary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            pause_init(dir, w)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            // The init closes the pipe without a word once it is ready, or writes why not.
            let mut msg = String::new();
            let _ = fs::File::from(r).read_to_string(&mut msg);
            if msg.is_empty() {
                println!("{child}");
                0
            } else {
                eprintln!("{msg}");
                1
            }
        }
        Err(e) => {
            eprintln!("fork: {e}");
            1
        }
    }
}

/// PID 1 of the pod's namespace: isolates itself, reports on `ready`, then reaps forever.
fn pause_init(dir: &Path, ready: OwnedFd) -> ! {
    if let Err(e) = isolate(dir) {
        let _ = nix::unistd::write(&ready, e.as_bytes());
        std::process::exit(1);
    }
    drop(ready);
    // SAFETY: closes every descriptor from 3 up; none is in use any more (stdio is /dev/null).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let _ = nix::sys::signal::SigSet::all().thread_block();
    let mut wanted = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::SIGCHLD,
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGINT,
    ] {
        wanted.add(s);
    }
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter for sigwaitinfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal set and out-parameter.
        let sig = unsafe { libc::sigwaitinfo(wanted.as_ref(), &mut info) };
        if sig == libc::SIGCHLD {
            // Orphans of every container end up here; reap them all.
            // SAFETY: waitpid with a null status pointer is allowed.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        } else if sig == libc::SIGTERM || sig == libc::SIGINT {
            // Only from outside the namespace (sender pid 0 here): a container of the pod
            // must not end the namespace of all the others.
            // SAFETY: reading the sender pid of a kill()-style siginfo.
            if unsafe { info.si_pid() } == 0 {
                std::process::exit(0);
            }
        }
    }
}

/// Stdio to /dev/null, no inherited fds, an empty read-only root in a private mount
/// namespace, no capabilities, `nobody`, no_new_privs.
fn isolate(dir: &Path) -> Result<(), String> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    drop(null);
    let _ = nix::unistd::setsid();
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=16k,mode=0755"),
    )
    .map_err(|e| format!("mounting tmpfs on {}: {e}", dir.display()))?;
    std::env::set_current_dir(dir).map_err(|e| format!("chdir {}: {e}", dir.display()))?;
    fs::create_dir("old").map_err(|e| format!("mkdir old: {e}"))?;
    nix::unistd::pivot_root(".", "old").map_err(|e| format!("pivot_root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    // Drops every copy of the host's mounts (other pods' namespaces and root filesystems
    // included), which would otherwise stay alive as long as this pod.
    umount2("/old", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    fs::remove_dir("/old").map_err(|e| format!("rmdir /old: {e}"))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("remounting / read-only: {e}"))?;
    for cap in 0..64 {
        // SAFETY: prctl with an integer argument; unknown capabilities fail with EINVAL.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let nobody_g = nix::unistd::Gid::from_raw(65534);
    let nobody_u = nix::unistd::Uid::from_raw(65534);
    nix::unistd::setresgid(nobody_g, nobody_g, nobody_g).map_err(|e| format!("setresgid: {e}"))?;
    // Leaving uid 0 clears the permitted and effective capabilities.
    nix::unistd::setresuid(nobody_u, nobody_u, nobody_u).map_err(|e| format!("setresuid: {e}"))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_file_of_a_dead_or_reused_pid_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path()), None);
        let me = std::process::id() as i32;
        let started = start_time(me).unwrap();
        fs::write(dir.path().join(PAUSE_FILE), format!("{me} {started}\n")).unwrap();
        assert_eq!(find(dir.path()), Some(me));
        // Same pid, other start time: a reused pid.
        fs::write(
            dir.path().join(PAUSE_FILE),
            format!("{me} {}\n", started + 1),
        )
        .unwrap();
        assert_eq!(find(dir.path()), None);
        fs::write(dir.path().join(PAUSE_FILE), "garbage").unwrap();
        assert_eq!(find(dir.path()), None);
    }
}
