//! The few raw filesystem calls std lacks, each turned into `io::Error` at once.
//!
//! All of them act on the path itself and never follow a final symlink.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Creates an overlayfs whiteout: a character device with device number 0:0.
pub(crate) fn mknod_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
}

/// Creates a FIFO.
pub(crate) fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    mknod(path, SFlag::S_IFIFO, Mode::from_bits_truncate(mode), 0).map_err(io::Error::from)
}

/// `lchown(2)`.
pub(crate) fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Sets access and modification time to `mtime` (seconds since the epoch).
pub(crate) fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let ts = TimeSpec::new(mtime, 0);
    utimensat(None, path, &ts, &ts, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

/// `lsetxattr(2)`.
pub(crate) fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cpath = cstring(path)?;
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and live across the call; value/len describe a
    // valid slice that the kernel only reads.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lgetxattr(2)`, for tests and checks; `None` if the attribute is absent.
#[cfg(test)]
pub(crate) fn lgetxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let cpath = cstring(path)?;
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: strings are NUL-terminated; buf is a writable buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}
