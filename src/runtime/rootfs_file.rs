//! Reading a file of a container's root filesystem from the host without trusting it:
//! the image's `/etc/passwd` and `/etc/group` are whatever the image author put there.
//!
//! A symlink is resolved inside the rootfs, never on the host (`etc/passwd -> /etc/shadow`
//! reads the rootfs's own `/etc/shadow`); only regular files are read, so a symlink to a
//! FIFO cannot hang a thread and a device node is never even opened (`/dev/zero` would
//! grow skiffd until the OOM killer came); at most a fixed size is read. The kernel does the
//! confinement with `openat2(RESOLVE_IN_ROOT)` (Linux 5.6); older kernels get a
//! component-by-component walk with `O_NOFOLLOW` that applies the same rules.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// At most this much of an image's `/etc/passwd` or `/etc/group` is read.
pub const MAX_USER_DB: u64 = 1 << 20;

/// Symlinks followed before giving up, as the kernel's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// Why a file of the rootfs could not be read; each names the file (as the container sees it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a regular file ({kind})")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
}

/// Reads `path` (absolute as the container sees it, e.g. `/etc/passwd`) from the rootfs at
/// `root`, at most `limit` bytes. `Ok(None)` when it does not exist.
pub fn read(root: &Path, path: &str, limit: u64) -> Result<Option<Vec<u8>>, ReadError> {
    read_with(root, path, limit, true)
}

/// [`read`]; `openat2: false` forces the walk older kernels get (for its tests).
fn read_with(
    root: &Path,
    path: &str,
    limit: u64,
    openat2: bool,
) -> Result<Option<Vec<u8>>, ReadError> {
    let io_err = |source: io::Error| ReadError::Io {
        path: path.to_string(),
        source,
    };
    let root_fd = open_at(
        None,
        root.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(io_err)?;
    let found = if openat2 {
        match resolve_openat2(root_fd.as_fd(), path) {
            // No openat2 (before 5.6), or a seccomp filter that refuses it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                resolve_walk(&root_fd, path)
            }
            r => r,
        }
    } else {
        resolve_walk(&root_fd, path)
    };
    let fd = match found {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None);
        }
        Err(e) => return Err(io_err(e)),
    };
    let st = fstat(fd.as_fd()).map_err(io_err)?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFSOCK => Some("a socket"),
        libc::S_IFDIR => Some("a directory"),
        _ => Some("not a file"),
    };
    if let Some(kind) = kind {
        return Err(ReadError::NotRegular {
            path: path.to_string(),
            kind,
        });
    }
    if st.st_size as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_string(),
            limit,
        });
    }
    // The O_PATH descriptor pins the inode checked above; reopening it through /proc reads
    // that very file (O_NONBLOCK all the same: nothing here may ever wait).
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = open_at(
        None,
        proc_path.as_bytes(),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(io_err)?;
    let mut data = Vec::new();
    // One byte over the limit tells a file that grew since the fstat.
    std::fs::File::from(file)
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_string(),
            limit,
        });
    }
    Ok(Some(data))
}

/// `openat(dir, path, flags | O_CLOEXEC)`, `dir` `None` for the current directory.
fn open_at(dir: Option<BorrowedFd<'_>>, path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dirfd = dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a live descriptor and `st` a valid place to write to.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// An `O_PATH` descriptor of `path` resolved by the kernel with `root` as `/`.
fn resolve_openat2(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: an all-zero `open_how` is valid (no flags, no mode, no resolve bits).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
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

/// [`resolve_openat2`] for kernels without it: one component at a time, each opened
/// `O_PATH | O_NOFOLLOW` below the one before; a symlink's target is read and walked the
/// same way, an absolute one from `root`, and `..` never climbs above `root`.
fn resolve_walk(root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    let mut todo: std::collections::VecDeque<Vec<u8>> = split(path.as_bytes());
    // The directories walked into below `root`, innermost last.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == b".." {
            dirs.pop();
            continue;
        }
        let cur = dirs.last().unwrap_or(root).as_fd();
        let fd = open_at(Some(cur), &name, libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = fstat(fd.as_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = readlink(fd.as_fd())?;
                if target.first() == Some(&b'/') {
                    dirs.clear();
                }
                for c in split(&target).into_iter().rev() {
                    todo.push_front(c);
                }
            }
            _ if todo.is_empty() => return Ok(fd),
            libc::S_IFDIR => dirs.push(fd),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    // The path named a directory (or the root itself).
    match dirs.pop() {
        Some(d) => Ok(d),
        None => root.try_clone(),
    }
}

/// The components of a path, without empty ones and `.`.
fn split(path: &[u8]) -> std::collections::VecDeque<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// The target of the symlink `fd` (an `O_PATH | O_NOFOLLOW` descriptor) is.
fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty path makes readlinkat read the link `fd` refers to; `buf` is writable
    // for the length passed.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    /// Both resolvers, so the walk older kernels get is tested on this one too.
    fn read_both(root: &Path, path: &str, limit: u64) -> Vec<Result<Option<Vec<u8>>, String>> {
        [true, false]
            .into_iter()
            .map(|o| read_with(root, path, limit, o).map_err(|e| e.to_string()))
            .collect()
    }

    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        t
    }

    #[test]
    fn regular_files_and_symlinks_inside_the_root_are_read() {
        let t = rootfs();
        fs::create_dir_all(t.path().join("usr/share")).unwrap();
        fs::write(t.path().join("usr/share/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        symlink("../usr/share/passwd", t.path().join("etc/passwd")).unwrap();
        for r in read_both(t.path(), "/etc/passwd", MAX_USER_DB) {
            assert_eq!(r.unwrap().unwrap(), b"root:x:0:0::/:/bin/sh\n");
        }
        for r in read_both(t.path(), "/etc/group", MAX_USER_DB) {
            assert_eq!(r.unwrap(), None);
        }
    }

    #[test]
    fn absolute_and_climbing_symlinks_resolve_inside_the_root() {
        let t = rootfs();
        // On the host these name the host's files; inside the root they name the root's.
        fs::write(t.path().join("etc/hostname"), "inside\n").unwrap();
        symlink("/etc/hostname", t.path().join("etc/passwd")).unwrap();
        symlink("../../../../../../etc/hostname", t.path().join("etc/group")).unwrap();
        for path in ["/etc/passwd", "/etc/group"] {
            for r in read_both(t.path(), path, MAX_USER_DB) {
                assert_eq!(r.unwrap().unwrap(), b"inside\n", "{path}");
            }
        }
        // A host file with no counterpart in the root is simply not there.
        symlink("/proc/self/environ", t.path().join("etc/shadow")).unwrap();
        for r in read_both(t.path(), "/etc/shadow", MAX_USER_DB) {
            assert_eq!(r.unwrap(), None);
        }
    }

    #[test]
    fn devices_fifos_and_loops_are_refused_without_blocking() {
        let t = rootfs();
        symlink("/dev/zero", t.path().join("etc/passwd")).unwrap();
        // The root's /dev/zero is what counts: make it the real device when we may.
        fs::create_dir_all(t.path().join("dev")).unwrap();
        let dev = nix::sys::stat::makedev(1, 5);
        let made_dev = nix::sys::stat::mknod(
            &t.path().join("dev/zero"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            dev,
        )
        .is_ok();
        for r in read_both(t.path(), "/etc/passwd", MAX_USER_DB) {
            if made_dev {
                assert!(r.unwrap_err().contains("character device"));
            } else {
                assert_eq!(r.unwrap(), None);
            }
        }
        nix::unistd::mkfifo(
            &t.path().join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        symlink("/fifo", t.path().join("etc/group")).unwrap();
        for r in read_both(t.path(), "/etc/group", MAX_USER_DB) {
            let e = r.unwrap_err();
            assert!(
                e.contains("/etc/group is not a regular file (a FIFO)"),
                "{e}"
            );
        }
        symlink("loop", t.path().join("etc/loop")).unwrap();
        for r in read_both(t.path(), "/etc/loop", MAX_USER_DB) {
            assert!(r.is_err());
        }
        for r in read_both(t.path(), "/etc", MAX_USER_DB) {
            assert!(r.unwrap_err().contains("a directory"));
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        let t = rootfs();
        fs::write(t.path().join("etc/passwd"), vec![b'x'; 2048]).unwrap();
        for r in read_both(t.path(), "/etc/passwd", 1024) {
            let e = r.unwrap_err();
            assert!(e.contains("/etc/passwd is larger than 1024 bytes"), "{e}");
        }
        for r in read_both(t.path(), "/etc/passwd", 2048) {
            assert_eq!(r.unwrap().unwrap().len(), 2048);
        }
    }
}
