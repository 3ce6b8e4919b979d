//! Where an import reads from: a directory, or a tar archive staged into the store's `tmp/`.
//!
//! A tar (optionally gzipped) is read once, front to back: each regular file is copied into
//! the staging directory while being hashed, and symlinks and hard links between entries
//! (older `docker save` links duplicate layers) are resolved to those copies. Files whose
//! digest matches the blob they are imported as are then renamed into the blob store instead
//! of being copied a second time.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use tracing::debug;

use crate::Error;
use crate::digest::{HashingReader, copy_hashed};

/// A file of the source, ready to be read.
pub(crate) struct SourceFile {
    /// Where it is on disk.
    pub(crate) path: PathBuf,
    /// `sha256:<hex>` and size when already known (staged tar entries).
    pub(crate) digest: Option<(String, u64)>,
    /// Whether `path` is a staging copy the store may move away.
    pub(crate) movable: bool,
}

#[derive(Clone)]
pub(crate) struct Staged {
    path: PathBuf,
    digest: String,
    size: u64,
}

pub(crate) enum Source {
    Dir(PathBuf),
    Tar {
        archive: PathBuf,
        files: HashMap<String, Staged>,
    },
}

/// Normalises a path inside the source to `a/b/c`; `None` if it leaves the root.
fn clean(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(c) => parts.push(c.to_str()?),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

impl Source {
    /// Opens `path`: a directory as is, anything else as a (gzipped) tar staged in `staging`.
    pub(crate) fn open(path: &Path, staging: &Path) -> Result<Source, Error> {
        let meta = fs::metadata(path).map_err(Error::io("stat", path))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_owned()));
        }
        // A FIFO would block the open (and then the read) forever; a device could be endless.
        if !meta.is_file() {
            return Err(Error::NotImportable {
                path: path.to_owned(),
                kind: kind_of(&meta.file_type()),
            });
        }
        // O_NONBLOCK: the path could have been swapped for a FIFO since the stat; the fstat
        // below decides on what was actually opened (a regular file reads normally anyway).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(Error::io("open", path))?;
        let opened = file.metadata().map_err(Error::io("stat", path))?;
        if !opened.is_file() {
            return Err(Error::NotImportable {
                path: path.to_owned(),
                kind: kind_of(&opened.file_type()),
            });
        }
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let gzip = reader
            .fill_buf()
            .map_err(Error::io("read", path))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let files = stage_tar(reader, staging).map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidData || source.kind() == io::ErrorKind::Other
            {
                debug!(%source, "not a tar archive");
                Error::UnknownFormat(path.to_owned())
            } else {
                Error::Io {
                    op: "read archive",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Ok(Source::Tar {
            archive: path.to_owned(),
            files,
        })
    }

    /// The path of the import, for messages.
    pub(crate) fn origin(&self) -> &Path {
        match self {
            Source::Dir(p) => p,
            Source::Tar { archive, .. } => archive,
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingEntry {
            archive: self.origin().to_owned(),
            entry: name.to_owned(),
        }
    }

    /// Whether the source has a regular file `name`.
    pub(crate) fn exists(&self, name: &str) -> bool {
        self.file(name).is_ok()
    }

    /// Looks up the regular file `name` (relative to the source root).
    pub(crate) fn file(&self, name: &str) -> Result<SourceFile, Error> {
        let cleaned = clean(name).ok_or_else(|| self.missing(name))?;
        match self {
            Source::Dir(root) => {
                let path = root.join(&cleaned);
                match fs::metadata(&path) {
                    Ok(m) if m.is_file() => Ok(SourceFile {
                        path,
                        digest: None,
                        movable: false,
                    }),
                    _ => Err(self.missing(name)),
                }
            }
            Source::Tar { files, .. } => {
                let staged = files.get(&cleaned).ok_or_else(|| self.missing(name))?;
                Ok(SourceFile {
                    path: staged.path.clone(),
                    digest: Some((staged.digest.clone(), staged.size)),
                    movable: true,
                })
            }
        }
    }

    /// Reads a small file (JSON document) whole.
    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>, Error> {
        let file = self.file(name)?;
        fs::read(&file.path).map_err(Error::io("read", &file.path))
    }

    /// `sha256:<hex>` and size of a file, hashing it if not known yet.
    pub(crate) fn digest(&self, name: &str) -> Result<(String, u64), Error> {
        let file = self.file(name)?;
        if let Some(d) = file.digest {
            return Ok(d);
        }
        let f = File::open(&file.path).map_err(Error::io("open", &file.path))?;
        HashingReader::new(f)
            .finish()
            .map_err(Error::io("read", &file.path))
    }
}

/// What a non-regular file is, for messages.
fn kind_of(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a file that is not a regular file"
    }
}

/// Copies every regular file of the tar into `staging`, hashing it; returns them by cleaned
/// name, with symlinks and hard links resolved to the file they name.
fn stage_tar(reader: impl Read, staging: &Path) -> io::Result<HashMap<String, Staged>> {
    let mut archive = tar::Archive::new(reader);
    let mut files: HashMap<String, Staged> = HashMap::new();
    let mut symlinks: Vec<(String, String)> = Vec::new();
    let mut n = 0usize;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(name) = clean(&raw) else { continue };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                n += 1;
                let path = staging.join(format!("f{n}"));
                let mut out = File::create_new(&path)?;
                let (digest, size) = copy_hashed(&mut entry, &mut out)?;
                files.insert(name, Staged { path, digest, size });
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.map(|t| t.to_string_lossy().into_owned());
                if let Some(staged) = target
                    .as_deref()
                    .and_then(clean)
                    .and_then(|t| files.get(&t))
                {
                    files.insert(name, staged.clone());
                }
            }
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name()? {
                    let target = target.to_string_lossy();
                    // Relative to the link's directory; absolute means the archive root.
                    let joined = match (target.starts_with('/'), name.rsplit_once('/')) {
                        (true, _) | (false, None) => target.into_owned(),
                        (false, Some((dir, _))) => format!("{dir}/{target}"),
                    };
                    if let Some(t) = clean(&joined) {
                        symlinks.push((name, t));
                    }
                }
            }
            _ => {}
        }
    }
    // Links to links: a few rounds settle any sane chain.
    for _ in 0..8 {
        let mut changed = false;
        for (name, target) in &symlinks {
            if !files.contains_key(name)
                && let Some(staged) = files.get(target).cloned()
            {
                files.insert(name.clone(), staged);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(files)
}
