//! Private working directories under `<root>/tmp/` for pulls in progress.
//!
//! A pull downloads and unpacks into its own staging directory and only moves the results into
//! `blobs/` and `layers/` when everything is verified, under the store lock. The directory
//! holds an exclusive `flock` on its `.lock` file for as long as the pull runs, so
//! [`ImageStore::open`](crate::ImageStore::open) in another process (or another handle in this
//! one) leaves it alone, while the kernel drops the lock when the pulling process dies, which
//! turns the directory into garbage the next `open` removes.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

use crate::Error;
use crate::fsutil::{remove_any, unique};

const LOCK_FILE: &str = ".lock";

/// A staging directory, removed (and unlocked) on drop.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Staging {
    /// Creates `<tmp>/<prefix>-<unique>/` with `blobs/` and `layers/` inside, locked.
    pub(crate) fn new(tmp: &Path, prefix: &str) -> Result<Staging, Error> {
        let dir = tmp.join(format!("{prefix}-{}", unique()));
        for d in [dir.clone(), dir.join("blobs"), dir.join("layers")] {
            DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .map_err(Error::io("mkdir", &d))?;
        }
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("create", &path))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| Error::Io {
                op: "flock",
                path,
                source: errno.into(),
            })?;
        Ok(Staging { dir, _lock: lock })
    }

    /// Where a downloaded blob is kept until commit.
    pub(crate) fn blob(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join(hex)
    }

    /// Where an unpacked layer is kept until commit.
    pub(crate) fn layer(&self, hex: &str) -> PathBuf {
        self.dir.join("layers").join(hex)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = remove_any(&self.dir) {
            warn!(path = %self.dir.display(), %err, "cannot remove pull staging directory");
        }
    }
}

/// Whether `path` is the staging directory of a pull that is still running.
pub(crate) fn in_use(path: &Path) -> bool {
    let Ok(file) = File::open(path.join(LOCK_FILE)) else {
        return false;
    };
    matches!(
        Flock::lock(file, FlockArg::LockExclusiveNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageStore;

    #[test]
    fn open_removes_only_dead_staging() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        let live = Staging::new(&store.tmp_dir(), "pull").unwrap();
        assert!(in_use(&live.dir));
        // What a SIGKILLed pull leaves: the directory and an unlocked lock file.
        let dead = store.tmp_dir().join("pull-dead");
        std::fs::create_dir_all(dead.join("blobs")).unwrap();
        std::fs::write(dead.join(LOCK_FILE), b"").unwrap();
        std::fs::write(dead.join("blobs/partial"), b"xx").unwrap();
        assert!(!in_use(&dead));
        ImageStore::open(root.path()).unwrap();
        assert!(!dead.exists());
        assert!(live.dir.exists());
        let dir = live.dir.clone();
        drop(live);
        assert!(!dir.exists());
    }
}
