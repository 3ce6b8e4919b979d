//! Modes of what skiffd keeps on the host. Everything under `--root-dir` and `--run-dir` is
//! root's only: directories 0700, files 0600, as containerd and the kubelet do.
//!
//! The parent directories are the gate: a pod's rootfs (with whatever setuid binaries its
//! image or its writable layer hold), its Secret volumes, `bundle/config.json` (environment
//! taken from Secrets) and its logs are all below `<root>/pods/<uid>`, so an unprivileged
//! host user who cannot traverse that directory reaches none of them (Docker's
//! CVE-2021-41091, containerd's CVE-2021-41103). What a container itself must read (its
//! rootfs, volumes, `/etc/hosts`) keeps its own mode below the gate: bind mounts and
//! overlayfs resolve their sources as root, so the parents do not matter to the container.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

/// Mode of every directory skiffd creates for itself.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file skiffd writes for itself (state, specs, logs).
pub const FILE_MODE: u32 = 0o600;

/// `mkdir -p` where every directory created gets [`DIR_MODE`]; existing ones are left as
/// they are (see [`tighten`]).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Options that create (or truncate) a file with [`FILE_MODE`].
pub fn file_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(FILE_MODE);
    o
}

/// Makes an existing directory [`DIR_MODE`] when group or others have any access to it;
/// returns the mode it had when it changed it. A missing directory is left alone.
pub fn tighten(path: &Path) -> io::Result<Option<u32>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
    Ok(Some(mode))
}

/// Creates `dir` as [`create_dir_all`] does and fixes its mode if it existed with one that
/// lets other users in, saying so in the log: what skiffd does at start for the root dir,
/// the run dir and the pod directories an older skiffd left 0755.
pub fn ensure_private(dir: &Path) -> io::Result<()> {
    create_dir_all(dir)?;
    if let Some(old) = tighten(dir)? {
        warn!(path = %dir.display(), old_mode = format!("{old:o}"), new_mode = format!("{DIR_MODE:o}"), "directory was reachable by other users; made it private");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_dirs_are_private_and_open_ones_are_tightened() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let m = fs::metadata(t.path().join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o700, "{d}");
        }
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tighten(&open).unwrap(), Some(0o755));
        assert_eq!(
            fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(tighten(&open).unwrap(), None);
        assert_eq!(tighten(&t.path().join("missing")).unwrap(), None);
        let f = t.path().join("f");
        file_options().open(&f).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
