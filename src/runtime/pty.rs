//! Terminals for `kubectl exec -t`, made in the container's own devpts as runc does: the
//! process must see its terminal as `/dev/pts/N` of its container (a host pty would not
//! exist there, so `tty`, `ttyname` and shells' job control fail).
//!
//! The master is opened from the host through `/proc/<init>/root/dev/pts/ptmx` with
//! `openat2(RESOLVE_IN_ROOT)`, so nothing the container put in its filesystem can send the
//! open elsewhere, and it must be a ptmx device (5:2); the slave is taken from the master with
//! `TIOCGPTPEER`, without any path lookup.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use libcontainer::container::Container;

/// The ptmx device's numbers.
const PTMX: (u32, u32) = (5, 2);

/// A terminal in the container `id`: (master, slave), both close-on-exec, the master in
/// blocking mode.
pub fn open_in_container(runtime_root: &Path, id: &str) -> io::Result<(OwnedFd, OwnedFd)> {
    let container = Container::load(runtime_root.join(id)).map_err(io::Error::other)?;
    let pid = container
        .pid()
        .ok_or_else(|| io::Error::other(format!("container {id} has no process")))?;
    let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
    let master = openat2_in_root(&root, "dev/pts/ptmx")?;
    let st = nix::sys::stat::fstat(master.as_raw_fd()).map_err(io::Error::from)?;
    let is_char = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    if !is_char || (libc::major(st.st_rdev), libc::minor(st.st_rdev)) != PTMX {
        return Err(io::Error::other(
            "the container's /dev/pts/ptmx is not a ptmx device",
        ));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// Opens `path` read-write below `root`, resolved by the kernel with `root` as `/`.
fn openat2_in_root(root: &std::fs::File, path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: an all-zero `open_how` is valid (no flags, no mode, no resolve bits).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path, and `how` of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}
