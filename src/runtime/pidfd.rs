//! Process file descriptors: wait for and signal a process that is not our
//! child (a shim that outlived a previous skiffd) without PID-reuse races.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// A pidfd for one process.
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// Opens a pidfd for `pid`.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the process; a process that is gone is not an error.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number and no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// Resolves when the process has exited.
    pub async fn exited(self) -> io::Result<()> {
        // SAFETY: the OwnedFd stays open as long as the AsyncFd that owns it.
        let afd = unsafe {
            AsyncFd::register_with_interest(RawPidFd(self.fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let _guard = afd.readable().await?;
        Ok(())
    }
}

struct RawPidFd(OwnedFd);

impl AsRawFd for RawPidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl PidFd {
    /// A second handle on the same process.
    pub fn try_clone(&self) -> io::Result<PidFd> {
        Ok(PidFd {
            fd: self.fd.try_clone()?,
            pid: self.pid,
        })
    }
}
