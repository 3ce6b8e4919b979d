//! Named Linux namespaces for pod sandboxes.
//!
//! A pod's network, IPC and UTS namespaces are created on a throwaway OS thread
//! (`unshare` there, never on a tokio worker) and kept alive by bind-mounting
//! `/proc/thread-self/ns/<kind>` onto a file, the way `ip netns add` does. The
//! containers of the pod then join them by path, so no "pause" process is needed.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Errors of namespace handling; each names the namespace file concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating {kind} namespace at {path}: {source}")]
    Create {
        kind: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("removing namespace {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("entering namespace {path}: {source}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("namespace thread for {path} panicked")]
    ThreadPanicked { path: PathBuf },
}

/// The namespace kinds a pod sandbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Ipc,
    Uts,
}

impl Kind {
    fn proc_name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn clone_flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// Creates a new namespace of `kind` and pins it at `path` (a new file).
///
/// For `Kind::Net` the loopback device is brought up; for `Kind::Uts` the
/// hostname is set to `hostname` when given. An existing pin at `path` is
/// replaced only if it is not a live namespace mount; otherwise it is kept
/// (idempotent re-creation after a daemon restart).
pub fn create(path: &Path, kind: Kind, hostname: Option<&str>) -> Result<(), Error> {
    let err = |source| Error::Create {
        kind: kind.proc_name(),
        path: path.to_path_buf(),
        source,
    };
    if is_pinned(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    let target = path.to_path_buf();
    let hostname = hostname.map(str::to_owned);
    // The thread that unshares is thrown away afterwards, so the process never
    // needs to switch back (switching back can fail and would poison a pool thread).
    let result = std::thread::spawn(move || -> io::Result<()> {
        unshare(kind.clone_flag()).map_err(io::Error::from)?;
        if let Some(name) = &hostname {
            nix::unistd::sethostname(name).map_err(io::Error::from)?;
        }
        if kind == Kind::Net {
            loopback_up()?;
        }
        let source = format!("/proc/thread-self/ns/{}", kind.proc_name());
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| Error::ThreadPanicked {
        path: path.to_path_buf(),
    })?;
    if let Err(source) = result {
        let _ = fs::remove_file(path);
        return Err(err(source));
    }
    Ok(())
}

/// Unpins and removes the namespace file at `path`. A missing file is success.
pub fn remove(path: &Path) -> Result<(), Error> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::Remove {
                path: path.to_path_buf(),
                source: e.into(),
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// True when `path` holds a live namespace bind mount (an nsfs inode).
pub fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type().0 == NSFS_MAGIC,
        Err(_) => false,
    }
}

/// Runs `f` on a dedicated OS thread that has joined the network namespace at `path`.
///
/// The thread is discarded afterwards, so a failure to switch back cannot leak a
/// thread in the wrong namespace.
pub fn run_in<F, T>(path: &Path, f: F) -> Result<T, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let file = File::open(path).map_err(|source| Error::Enter {
        path: path.to_path_buf(),
        source,
    })?;
    let p = path.to_path_buf();
    std::thread::spawn(move || -> Result<T, Error> {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Enter {
            path: p.clone(),
            source: e.into(),
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::ThreadPanicked {
        path: path.to_path_buf(),
    })?
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = CString::new("lo").expect("static name");
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name and the fd is a live socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel reads the flags we just set.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root"]
    fn create_run_in_remove_netns() {
        testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns1");
        create(&path, Kind::Net, None).unwrap();
        assert!(is_pinned(&path));
        // Idempotent.
        create(&path, Kind::Net, None).unwrap();
        let host_ino = fs::metadata("/proc/self/ns/net").unwrap();
        let inside = run_in(&path, || {
            let lo_up = fs::read_to_string("/proc/thread-self/net/dev").is_ok();
            let ino = fs::metadata("/proc/thread-self/ns/net").unwrap();
            (lo_up, std::os::unix::fs::MetadataExt::ino(&ino))
        })
        .unwrap();
        assert_ne!(inside.1, std::os::unix::fs::MetadataExt::ino(&host_ino));
        // Loopback is up inside: a TCP listener on 127.0.0.1 accepts a connection.
        let ok = run_in(&path, || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std::net::TcpStream::connect(l.local_addr().unwrap()).is_ok()
        })
        .unwrap();
        assert!(ok);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    #[ignore = "needs root"]
    fn uts_namespace_gets_hostname() {
        testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uts");
        create(&path, Kind::Uts, Some("pod-host")).unwrap();
        let file = File::open(&path).unwrap();
        let name = std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWUTS).unwrap();
            nix::unistd::gethostname().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(name.to_str().unwrap(), "pod-host");
        remove(&path).unwrap();
    }
}
