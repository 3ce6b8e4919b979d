//! Writing a file whole: a crash leaves the old content or the new one, never a torn or empty
//! file. The one way skiff writes the state it reads back (pod and shim records, API objects,
//! cluster-IP allocations, keys, tokens, subnet.env).
//!
//! std and libc only: `skiff-shim-mon` includes this file by path, as it does
//! skiff's `runtime/supervise.rs`, which uses it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How far a write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Readers and a crashed process see the old or the new content; a power loss may still
    /// lose the new one. For what skiffd rebuilds when it starts.
    Atomic,
    /// Also survives a power loss: the file is fsynced before the rename and its directory
    /// after. For records nothing can rebuild (exit statuses, API objects, allocations, keys).
    Durable,
}

/// Writes `data` to `path` through a temporary file `.<name>.tmp` in the same directory,
/// created with `mode` (never through a symlink), then renamed over `path`. The directory
/// must exist.
pub fn write(path: &Path, data: &[u8], mode: u32, sync: Sync) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: no file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A leftover of a crash, perhaps with another mode: created anew below.
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(data)?;
        if sync == Sync::Durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if sync == Sync::Durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_content_with_the_mode_asked_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"old").unwrap();
        write(&path, b"new", 0o600, Sync::Durable).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_leftover_temporary_is_replaced_and_a_symlink_there_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // Someone placed the temporary's name as a link to another file.
        std::os::unix::fs::symlink(&victim, dir.path().join(".a.tmp")).unwrap();
        write(&dir.path().join("a"), b"data", 0o600, Sync::Atomic).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"data");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("f");
        assert!(write(&path, b"x", 0o600, Sync::Durable).is_err());
        assert!(!path.exists());
    }
}
