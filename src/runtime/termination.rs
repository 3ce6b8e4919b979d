//! Termination messages (`terminationMessagePath` / `terminationMessagePolicy`), as the
//! kubelet reports them in `state.terminated.message`.
//!
//! Each container instance gets an empty, world-writable file of its own on the host,
//! bind-mounted at its `terminationMessagePath` (`/dev/termination-log` by default). When the
//! container ends, the file is read without following symlinks and at most
//! [`MAX_MESSAGE`] bytes of it kept. With `FallbackToLogsOnError`, an empty file of a container
//! that failed (non-zero exit) gives the end of its log instead: the last
//! [`MAX_LOG_LINES`] lines, at most [`MAX_LOG_BYTES`] bytes, as the kubelet does.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::core::v1::Container;

/// The host file's name in the container's directory.
pub const FILE: &str = "termination-log";
/// The kubelet's cap on a termination message read from the file.
pub const MAX_MESSAGE: u64 = 4096;
/// The kubelet's cap on a message taken from the log: lines, then bytes.
pub const MAX_LOG_LINES: usize = 80;
pub const MAX_LOG_BYTES: usize = 2048;

/// Where the container wants its termination message file.
pub fn path_of(c: &Container) -> &str {
    match c.termination_message_path.as_deref() {
        // The apiserver defaults an empty path too.
        None | Some("") => "/dev/termination-log",
        Some(p) => p,
    }
}

/// Creates the empty host file (mode 0666: the container may run as any user) in `dir`.
pub fn create(dir: &Path) -> io::Result<std::path::PathBuf> {
    let path = dir.join(FILE);
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    // umask would take the write bits away from an open() mode.
    f.set_permissions(fs::Permissions::from_mode(0o666))?;
    Ok(path)
}

/// The message of a container instance that ended with `exit_code`, read from the
/// termination file in `dir` or, by policy, from the end of its log at `log`.
pub fn message(c: &Container, dir: &Path, log: Option<&Path>, exit_code: i32) -> Option<String> {
    let from_file = read_capped(&dir.join(FILE)).unwrap_or_default();
    if !from_file.is_empty() {
        return Some(String::from_utf8_lossy(&from_file).into_owned());
    }
    let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if !fallback || exit_code == 0 {
        return None;
    }
    let tail = log_tail(log?).ok()?;
    (!tail.is_empty()).then(|| String::from_utf8_lossy(&tail).into_owned())
}

/// Reads at most [`MAX_MESSAGE`] bytes of a regular file, never through a symlink.
fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    // A FIFO or device put in its place must not block or feed us forever.
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(MAX_MESSAGE).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The last lines of what the container printed, from its CRI log file.
fn log_tail(path: &Path) -> io::Result<Vec<u8>> {
    // Enough raw records for 80 lines or 2 KiB of output, whichever is less; a record
    // cut at the start only shortens the oldest line, which the caps drop anyway.
    const WINDOW: u64 = 16 * 1024;
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(WINDOW);
    f.seek(SeekFrom::Start(start))?;
    let mut raw = Vec::new();
    f.read_to_end(&mut raw)?;
    if start > 0 {
        let first = raw
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| i + 1);
        raw.drain(..first);
    }
    let rendered = super::crilog::render(&raw, false);
    let lines = super::crilog::tail_lines(&rendered, MAX_LOG_LINES);
    Ok(lines[lines.len().saturating_sub(MAX_LOG_BYTES)..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(policy: &str) -> Container {
        Container {
            name: "c".into(),
            termination_message_policy: Some(policy.into()),
            ..Default::default()
        }
    }

    fn cri_log(dir: &Path, lines: &[String]) -> std::path::PathBuf {
        let path = dir.join("0.log");
        let text: String = lines
            .iter()
            .map(|l| format!("2026-01-01T00:00:00Z stdout F {l}\n"))
            .collect();
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn file_message_is_capped_and_wins_over_the_log() {
        let d = tempfile::tempdir().unwrap();
        let file = create(d.path()).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o666
        );
        let log = cri_log(d.path(), &["from the log".into()]);
        let c = container("FallbackToLogsOnError");
        // Empty file, failed: the log; succeeded: nothing.
        assert_eq!(
            message(&c, d.path(), Some(&log), 1).as_deref(),
            Some("from the log\n")
        );
        assert_eq!(message(&c, d.path(), Some(&log), 0), None);
        assert_eq!(message(&container("File"), d.path(), Some(&log), 1), None);
        fs::write(&file, "x".repeat(10_000)).unwrap();
        let m = message(&c, d.path(), Some(&log), 1).unwrap();
        assert_eq!(m.len(), MAX_MESSAGE as usize);
    }

    #[test]
    fn a_symlink_in_place_of_the_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        fs::write(&secret, "host secret").unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join(FILE)).unwrap();
        assert_eq!(message(&container("File"), d.path(), None, 1), None);
        // Nor is a FIFO read (it would block).
        fs::remove_file(d.path().join(FILE)).unwrap();
        nix::unistd::mkfifo(
            &d.path().join(FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .unwrap();
        assert_eq!(message(&container("File"), d.path(), None, 1), None);
    }

    #[test]
    fn log_fallback_keeps_the_last_80_lines_and_2048_bytes() {
        let d = tempfile::tempdir().unwrap();
        create(d.path()).unwrap();
        let c = container("FallbackToLogsOnError");
        let lines: Vec<String> = (0..200).map(|i| format!("l{i}")).collect();
        let log = cri_log(d.path(), &lines);
        let m = message(&c, d.path(), Some(&log), 2).unwrap();
        let want: String = (120..200).map(|i| format!("l{i}\n")).collect();
        assert_eq!(m, want);
        let long: Vec<String> = (0..100)
            .map(|i| format!("{i:03}{}", "y".repeat(97)))
            .collect();
        let log = cri_log(d.path(), &long);
        let m = message(&c, d.path(), Some(&log), 2).unwrap();
        assert_eq!(m.len(), MAX_LOG_BYTES);
        assert!(m.ends_with(&format!("099{}\n", "y".repeat(97))), "{m}");
    }
}
