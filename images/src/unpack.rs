//! Applying one layer tar to an empty directory, in overlayfs format.
//!
//! OCI "applying changesets" semantics, converted for overlayfs because the daemon stacks
//! layer directories as `lowerdir`s:
//! - a whiteout `.wh.NAME` becomes a character device 0:0 named `NAME`;
//! - an opaque marker `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory;
//! - other `.wh..wh.*` entries (aufs metadata) are skipped.
//!
//! The archive is untrusted. Entry names are made relative (a leading `/` is dropped) and any
//! `..` component fails the layer. Nothing is ever written through a symlink: every existing
//! parent component is checked with `lstat` and must be a real directory, files are created
//! with `O_EXCL|O_NOFOLLOW`, and all metadata calls act on the link itself. Since only this
//! process writes to the (fresh, private) directory while unpacking, these checks cannot race.
//! Hard links must name an earlier entry of the same layer. Device nodes are skipped (only
//! whiteouts become devices), and `trusted.overlay.*` xattrs from the archive are dropped so a
//! layer cannot forge overlay metadata (opaque dirs, redirects).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use tar::EntryType;
use tracing::debug;

use crate::sys;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the tar stream failed (corrupt archive or decompression error).
    #[error("reading layer archive: {0}")]
    Archive(#[source] io::Error),
    /// Writing to the layer directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Path inside the layer.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry tries to leave the layer directory or write through a symlink.
    #[error("unsafe entry {path:?}: {reason}")]
    UnsafePath {
        /// The entry name as found in the archive.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let path = path.to_owned();
    move |source| UnpackError::Io { op, path, source }
}

fn unsafe_path(path: &Path, reason: &'static str) -> UnpackError {
    UnpackError::UnsafePath {
        path: path.to_owned(),
        reason,
    }
}

/// Makes an archive path relative to the layer root: drops `/` and `.`, refuses `..`.
/// `None` stands for the root itself.
fn sanitize(raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path(raw, "contains '..'")),
            Component::Prefix(_) => return Err(unsafe_path(raw, "has a path prefix")),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Metadata of an entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, UnpackError> {
    let header = entry.header();
    let mut meta = Meta {
        mode: header.mode().map_err(UnpackError::Archive)? & 0o7777,
        // Like Go's archive/tar, an empty numeric field reads as 0 (some writers leave them).
        uid: header.uid().unwrap_or(0) as u32,
        gid: header.gid().unwrap_or(0) as u32,
        mtime: header.mtime().unwrap_or(0) as i64,
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for ext in extensions {
            let ext = ext.map_err(UnpackError::Archive)?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()?
                    .split('.')
                    .next()?
                    .parse::<i64>()
                    .ok()
            };
            match key {
                "uid" => meta.uid = number().map_or(meta.uid, |n| n as u32),
                "gid" => meta.gid = number().map_or(meta.gid, |n| n as u32),
                "mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                        meta.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// Unpacks the tar stream `reader` into the existing, empty directory `dest`.
pub(crate) fn unpack(reader: impl Read, dest: &Path) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker {
        dest,
        dirs: HashMap::new(),
    };
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        unpacker.entry(&mut entry)?;
    }
    // Directory times last: creating children changed them.
    for (path, mtime) in &unpacker.dirs {
        sys::set_mtime(&dest.join(path), *mtime).map_err(io_err("set mtime", path))?;
    }
    if !unpacker.dirs.contains_key(Path::new("")) {
        // The layer root is created private; without a "./" entry it gets the usual 0755.
        fs::set_permissions(dest, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", dest))?;
    }
    Ok(())
}

struct Unpacker<'a> {
    dest: &'a Path,
    /// Directories whose mtime must be set at the end, relative to `dest` ("" is the root).
    dirs: HashMap<PathBuf, i64>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let raw = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let Some(rel) = sanitize(&raw)? else {
            if kind == EntryType::Directory {
                let meta = read_meta(entry)?;
                self.apply_meta(Path::new(""), &meta, true)?;
                self.dirs.insert(PathBuf::new(), meta.mtime);
            }
            return Ok(());
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().unwrap_or_default();
        self.make_parents(&raw, parent)?;

        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&raw, parent, name, OsStr::from_bytes(target));
        }

        let full = self.dest.join(&rel);
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove(&full)?;
                        fs::create_dir(&full).map_err(io_err("mkdir", &rel))?;
                    }
                    Err(_) => fs::create_dir(&full).map_err(io_err("mkdir", &rel))?,
                }
                let meta = read_meta(entry)?;
                self.apply_meta(&rel, &meta, true)?;
                self.dirs.insert(rel, meta.mtime);
            }
            EntryType::Regular | EntryType::Continuous => {
                let meta = read_meta(entry)?;
                remove(&full)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&full)
                    .map_err(io_err("create", &rel))?;
                io::copy(entry, &mut file).map_err(UnpackError::Archive)?;
                drop(file);
                self.apply_meta(&rel, &meta, false)?;
            }
            EntryType::Symlink => {
                let meta = read_meta(entry)?;
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Archive)?
                    .ok_or_else(|| unsafe_path(&raw, "symlink without target"))?;
                remove(&full)?;
                // The target is stored verbatim: it is resolved inside the container's
                // rootfs later, never by us.
                std::os::unix::fs::symlink(&target, &full).map_err(io_err("symlink", &rel))?;
                self.apply_owner_xattrs_mtime(&rel, &meta);
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name()
                    .map_err(UnpackError::Archive)?
                    .ok_or_else(|| unsafe_path(&raw, "hard link without target"))?
                    .into_owned();
                let target = sanitize(&target_raw)?
                    .ok_or_else(|| unsafe_path(&raw, "hard link to the layer root"))?;
                self.check_existing_parents(&target_raw, target.parent().unwrap_or(Path::new("")))?;
                let target_full = self.dest.join(&target);
                match fs::symlink_metadata(&target_full) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => return Err(unsafe_path(&raw, "hard link to a directory")),
                    Err(_) => {
                        return Err(unsafe_path(&raw, "hard link target is not in this layer"));
                    }
                }
                if target_full == full {
                    return Ok(());
                }
                remove(&full)?;
                // linkat(2) without AT_SYMLINK_FOLLOW: links a symlink itself, never its target.
                fs::hard_link(&target_full, &full).map_err(io_err("link", &rel))?;
            }
            EntryType::Fifo => {
                let meta = read_meta(entry)?;
                remove(&full)?;
                sys::mkfifo(&full, 0o600).map_err(io_err("mkfifo", &rel))?;
                self.apply_meta(&rel, &meta, false)?;
            }
            EntryType::Char | EntryType::Block => {
                debug!(path = %rel.display(), "skipping device node in layer");
            }
            other => {
                debug!(path = %rel.display(), kind = ?other, "skipping unsupported tar entry");
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        raw: &Path,
        parent: &Path,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<(), UnpackError> {
        let dir = self.dest.join(parent);
        if name == OPAQUE_MARKER {
            sys::lsetxattr(&dir, b"trusted.overlay.opaque", b"y")
                .map_err(io_err("set opaque xattr on", parent))?;
            return Ok(());
        }
        if name.as_bytes().starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            debug!(path = %raw.display(), "skipping aufs metadata entry");
            return Ok(());
        }
        if target.is_empty() || target == "." || target == ".." {
            return Err(unsafe_path(raw, "whiteout of an invalid name"));
        }
        let path = dir.join(target);
        remove(&path)?;
        sys::mknod_whiteout(&path).map_err(io_err("mknod whiteout", &parent.join(target)))
    }

    /// Creates missing parent directories (0755, root-owned, like docker does for entries
    /// whose directory is not in the archive); refuses symlinks and non-directories.
    fn make_parents(&mut self, raw: &Path, parent: &Path) -> Result<(), UnpackError> {
        let mut cur = self.dest.to_path_buf();
        for component in parent.components() {
            cur.push(component);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_path(raw, "a parent directory is a symlink"));
                }
                Ok(_) => return Err(unsafe_path(raw, "a parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(io_err("mkdir", &cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &cur))?;
                }
                Err(e) => {
                    return Err(UnpackError::Io {
                        op: "lstat",
                        path: cur,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// Like [`Self::make_parents`] but creates nothing.
    fn check_existing_parents(&self, raw: &Path, parent: &Path) -> Result<(), UnpackError> {
        let mut cur = self.dest.to_path_buf();
        for component in parent.components() {
            cur.push(component);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(unsafe_path(raw, "link target path goes through a symlink")),
                Err(_) => return Err(unsafe_path(raw, "hard link target is not in this layer")),
            }
        }
        Ok(())
    }

    /// Owner, mode, xattrs and (for non-directories) mtime of a file or directory we created.
    fn apply_meta(&self, rel: &Path, meta: &Meta, is_dir: bool) -> Result<(), UnpackError> {
        let full = self.dest.join(rel);
        set_owner(&full, meta);
        // chmod after chown: chown clears set-uid/set-gid bits.
        fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode))
            .map_err(io_err("chmod", rel))?;
        set_xattrs(&full, meta);
        if !is_dir {
            sys::set_mtime(&full, meta.mtime).map_err(io_err("set mtime", rel))?;
        }
        Ok(())
    }

    /// For symlinks: there is no mode to set, and failures are not fatal.
    fn apply_owner_xattrs_mtime(&self, rel: &Path, meta: &Meta) {
        let full = self.dest.join(rel);
        set_owner(&full, meta);
        set_xattrs(&full, meta);
        if let Err(err) = sys::set_mtime(&full, meta.mtime) {
            debug!(path = %rel.display(), %err, "cannot set symlink mtime");
        }
    }
}

fn set_owner(path: &Path, meta: &Meta) {
    // Fails without CAP_CHOWN (unprivileged tests); the files then belong to the caller.
    if let Err(err) = sys::lchown(path, meta.uid, meta.gid) {
        debug!(path = %path.display(), %err, "cannot chown");
    }
}

fn set_xattrs(path: &Path, meta: &Meta) {
    for (name, value) in &meta.xattrs {
        if name.starts_with(OVERLAY_XATTR_PREFIX) {
            debug!(path = %path.display(), "dropping overlay xattr from layer archive");
            continue;
        }
        if let Err(err) = sys::lsetxattr(path, name, value) {
            debug!(path = %path.display(), name = %String::from_utf8_lossy(name), %err, "cannot set xattr");
        }
    }
}

/// Removes whatever is at `path` (a later entry replaces an earlier one); a directory is
/// removed with its contents. `remove_dir_all` does not follow symlinks.
fn remove(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UnpackError::Io {
            op: "lstat",
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Opens a blob for unpacking, picking the decompressor by magic number (gzip, zstd, or a
/// plain tar), which is more reliable than media types in `docker save` archives.
pub(crate) fn decompressed(file: File) -> io::Result<Box<dyn Read>> {
    let mut reader = io::BufReader::with_capacity(256 * 1024, file);
    let magic = {
        let buf = reader.fill_buf()?;
        buf.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
    };
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if is_zstd_magic(&magic) {
        Box::new(ZstdReader {
            source: reader,
            decoder: FrameDecoder::new(),
            in_frame: false,
        })
    } else {
        Box::new(reader)
    })
}

fn is_zstd_magic(magic: &[u8]) -> bool {
    // A regular frame, or a skippable frame (0x184D2A50..=0x184D2A5F, little endian).
    magic == [0x28, 0xb5, 0x2f, 0xfd]
        || (magic.len() == 4 && magic[0] & 0xf0 == 0x50 && magic[1..] == [0x2a, 0x4d, 0x18])
}

/// Decodes a zstd stream of any number of frames (zstd:chunked layers are many frames plus
/// skippable metadata frames); ruzstd's `StreamingDecoder` stops after the first frame.
struct ZstdReader<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        continue;
                    }
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let need = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(need))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                self.in_frame = false;
            }
        }
    }
}
