//! The content store: blobs, unpacked layers and the image index on disk.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::digest::{HashingReader, copy_hashed, sha256_hex};
use crate::layout::{self, Blob, Candidate, ConfigFile};
use crate::reference::Reference;
use crate::source::Source;
use crate::{Error, Image, ReferenceError, unpack};

const INDEX_FILE: &str = "images.json";
const LOCK_FILE: &str = "lock";
const INDEX_VERSION: u32 = 1;
/// Prefix of in-progress (or crashed) layer directories under `layers/`.
const LAYER_TMP_PREFIX: &str = ".tmp-";
/// Shortest image id prefix `resolve` accepts, as docker shows 12 characters.
const MIN_SHORT_ID: usize = 12;

/// An image store rooted at one directory.
///
/// Cheap to clone (it is only a path). Mutations (`open`'s cleanup, `import`, `remove`) take an
/// exclusive `flock` on `<root>/lock`, so several processes or threads can share a root; reads
/// take no lock because the index is replaced atomically. All methods block on disk I/O (and
/// `import`/`remove` on the lock): call them from `spawn_blocking` in async code.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// `images.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub(crate) version: u32,
    pub(crate) images: Vec<Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) image: Image,
    /// Digests of the (compressed) layer blobs, in manifest order.
    pub(crate) layer_digests: Vec<String>,
    /// `repository@digest` references the image was pulled by (the digest may be that of a
    /// multi-platform index), so `resolve` finds it by them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) repo_digests: Vec<String>,
    /// Seconds since the epoch of the last import, pull or [`ImageStore::touch`]; the image
    /// garbage collector removes least recently used images first.
    #[serde(default)]
    pub(crate) last_used: u64,
}

// moved to fsutil.rs (breaks the store <-> staging cycle); re-exported for callers not yet updated
pub(crate) use crate::fsutil::{fsync_dir, remove_any, unique};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            warn!(path = %self.0.display(), %err, "cannot remove staging directory");
        }
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` and removes what a crash left behind:
    /// staging files under `tmp/`, half-unpacked `layers/.tmp-*` directories, and blobs and
    /// layers no image in the index refers to (a pull killed inside its commit has moved some
    /// into place but not recorded the image).
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, Error> {
        let store = ImageStore { root: root.into() };
        for dir in [
            store.root.clone(),
            store.blobs_dir(),
            store.layers_dir(),
            store.tmp_dir(),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(Error::io("create directory", &dir))?;
        }
        let _lock = store.lock()?;
        store.remove_garbage()?;
        // A corrupt index (a disk that lost a write, a hand edit) is rebuilt from the blobs
        // and saved, so that one bad file does not stop every pod start.
        match store.load_or_rebuild() {
            Ok((index, true)) => {
                if let Err(err) = store.save(&index) {
                    warn!(%err, "cannot save the rebuilt image index");
                }
            }
            Ok(_) => {}
            Err(err) => warn!(%err, "cannot read the image index"),
        }
        // Under the lock no import or commit is half done, so whatever the index does not
        // refer to is garbage. A store whose index cannot be read keeps everything.
        if let Err(err) = store.load().and_then(|index| store.gc(&index)) {
            warn!(%err, "cannot collect unreferenced blobs and layers");
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.blobs_dir().join(sha256_hex(digest)?))
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> Result<PathBuf, Error> {
        Ok(self.layers_dir().join(sha256_hex(diff_id)?))
    }

    pub(crate) fn lock(&self) -> Result<Flock<File>, Error> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            op: "flock",
            path,
            source: errno.into(),
        })
    }

    fn remove_garbage(&self) -> Result<(), Error> {
        let mut garbage = Vec::new();
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(Error::io("read directory", &tmp))? {
            let path = entry.map_err(Error::io("read directory", &tmp))?.path();
            if crate::staging::in_use(&path) {
                debug!(path = %path.display(), "staging directory in use by a running pull");
                continue;
            }
            garbage.push(path);
        }
        for dir in [self.layers_dir(), self.blobs_dir()] {
            for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
                let entry = entry.map_err(Error::io("read directory", &dir))?;
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(LAYER_TMP_PREFIX)
                {
                    garbage.push(entry.path());
                }
            }
        }
        for path in garbage {
            info!(path = %path.display(), "removing leftover from an interrupted operation");
            remove_any(&path).map_err(Error::io("remove", &path))?;
        }
        Ok(())
    }

    /// The index; rebuilt from the blobs (in memory) when `images.json` cannot be parsed.
    pub(crate) fn load(&self) -> Result<IndexFile, Error> {
        self.load_or_rebuild().map(|(index, _)| index)
    }

    /// [`ImageStore::load`], and whether the index had to be rebuilt.
    fn load_or_rebuild(&self) -> Result<(IndexFile, bool), Error> {
        match self.load_file() {
            Err(err @ Error::Json { .. }) => {
                let index = self.rebuild_index();
                warn!(
                    %err,
                    images = index.images.len(),
                    "the image index is corrupt; rebuilt it from the stored manifests. Image names and pull references were kept only there and are lost: the images answer to their ids until imported or pulled again"
                );
                Ok((index, true))
            }
            other => other.map(|index| (index, false)),
        }
    }

    /// Every complete image in the store, found from its content: a blob that parses as an
    /// image manifest whose config blob and unpacked layers are all here. Names are not in
    /// the content, so the images come back without them.
    fn rebuild_index(&self) -> IndexFile {
        // Manifests are small; layer blobs are not even read.
        const MAX_MANIFEST: u64 = 4 << 20;
        let mut images: Vec<Record> = Vec::new();
        let mut entries: Vec<_> = fs::read_dir(self.blobs_dir())
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if !entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_MANIFEST)
            {
                continue;
            }
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<layout::Manifest>(&bytes) else {
                continue;
            };
            let digest = crate::digest::of_bytes(&bytes);
            if digest.strip_prefix("sha256:") != Some(&*entry.file_name().to_string_lossy()) {
                continue;
            }
            let config = self
                .blob_path(&manifest.config.digest)
                .ok()
                .and_then(|p| fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<ConfigFile>(&b).ok());
            let Some(config) = config else { continue };
            let diff_ids = config.rootfs.diff_ids.clone();
            let complete = diff_ids.len() == manifest.layers.len()
                && diff_ids.iter().all(|d| self.has_layer(d))
                && manifest.layers.iter().all(|l| self.has_blob(&l.digest));
            if !complete || images.iter().any(|r| r.image.id == manifest.config.digest) {
                continue;
            }
            let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
            images.push(Record {
                image: Image {
                    id: manifest.config.digest.clone(),
                    names: Vec::new(),
                    manifest_digest: digest,
                    size,
                    created: config.created(),
                    config: config.image_config(),
                    diff_ids,
                },
                layer_digests: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
                repo_digests: Vec::new(),
                last_used: now_secs(),
            });
        }
        IndexFile {
            version: INDEX_VERSION,
            images,
        }
    }

    fn load_file(&self) -> Result<IndexFile, Error> {
        let path = self.root.join(INDEX_FILE);
        match fs::read(&path) {
            Ok(bytes) => layout::parse_json(&bytes, || path.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile {
                version: INDEX_VERSION,
                images: Vec::new(),
            }),
            Err(e) => Err(Error::Io {
                op: "read",
                path,
                source: e,
            }),
        }
    }

    /// Writes the index to a temporary file, fsyncs it and renames it over the old one.
    pub(crate) fn save(&self, index: &IndexFile) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| Error::Json {
            what: INDEX_FILE.into(),
            source,
        })?;
        let tmp = self.tmp_dir().join(format!("index-{}", unique()));
        let write = || -> io::Result<()> {
            let mut f = File::create_new(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write().map_err(Error::io("write", &tmp))?;
        let path = self.root.join(INDEX_FILE);
        fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
        fsync_dir(&self.root)
    }

    /// Imports every image found at `path`: an OCI image layout directory, an OCI layout tar,
    /// or a `docker save`/`podman save` archive (either may be gzipped). An `index.json` is
    /// preferred over `manifest.json` when both exist; nested indexes resolve to linux on this
    /// host's architecture. Layers are unpacked now. Returns the imported images.
    ///
    /// Names: the index entry's `io.containerd.image.name` annotation if present; else its
    /// `org.opencontainers.image.ref.name` if that is a full reference (has `/`, `:` or `@`);
    /// else `localhost/import:<ref.name>`; plus the `RepoTags` of a `manifest.json` entry with
    /// the same config. An image without any name is kept and reachable by id. A name already
    /// held by another image moves to the imported one (the old image may end up nameless).
    pub fn import(&self, path: &Path) -> Result<Vec<Image>, Error> {
        let _lock = self.lock()?;
        let staging = self.tmp_dir().join(format!("import-{}", unique()));
        DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(Error::io("mkdir", &staging))?;
        let staging = TempDir(staging);
        let src = Source::open(path, &staging.0)?;
        let candidates = layout::candidates(&src)?;
        if candidates.is_empty() {
            return Err(Error::NothingToImport(path.to_owned()));
        }
        let mut index = self.load()?;
        let mut ids = Vec::new();
        let mut result = Ok(());
        for candidate in candidates {
            match self.store_candidate(&src, candidate) {
                Ok(record) => {
                    ids.push(record.image.id.clone());
                    merge(&mut index, record);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            // Drop the blobs and layers written for the failed import.
            if let Err(gc_err) = self.load().and_then(|index| self.gc(&index)) {
                warn!(err = %gc_err, "cleanup after failed import");
            }
            return Err(e);
        }
        self.save(&index)?;
        self.gc(&index)?;
        let images = ids
            .iter()
            .filter_map(|id| index.images.iter().find(|r| &r.image.id == id))
            .map(|r| r.image.clone())
            .collect();
        Ok(images)
    }

    fn store_candidate(&self, src: &Source, c: Candidate) -> Result<Record, Error> {
        for layer in &c.layers {
            if !layout::is_supported_layer(&layer.descriptor.media_type) {
                return Err(Error::UnsupportedMediaType {
                    digest: layer.descriptor.digest.clone(),
                    media_type: layer.descriptor.media_type.clone(),
                });
            }
        }
        self.put_blob_bytes(&c.manifest_digest, &c.manifest_bytes)?;
        self.put_blob(src, &c.config)?;
        let config_path = self.blob_path(&c.config.descriptor.digest)?;
        let config_bytes = fs::read(&config_path).map_err(Error::io("read", &config_path))?;
        let config: ConfigFile = layout::parse_json(&config_bytes, || {
            format!("config {}", c.config.descriptor.digest)
        })?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != c.layers.len() {
            return Err(Error::InvalidImage {
                manifest: c.manifest_digest,
                reason: format!(
                    "manifest has {} layers but config has {} diff_ids",
                    c.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        for diff_id in &diff_ids {
            sha256_hex(diff_id)?;
        }
        for layer in &c.layers {
            self.put_blob(src, layer)?;
        }
        for (layer, diff_id) in c.layers.iter().zip(&diff_ids) {
            self.unpack_layer(&layer.descriptor.digest, diff_id)?;
        }
        let size =
            c.config.descriptor.size + c.layers.iter().map(|l| l.descriptor.size).sum::<u64>();
        let image = Image {
            id: c.config.descriptor.digest.clone(),
            names: c.names.into_iter().collect(),
            manifest_digest: c.manifest_digest,
            size,
            created: config.created(),
            config: config.image_config(),
            diff_ids,
        };
        info!(id = %image.id, names = ?image.names, "imported image");
        Ok(Record {
            image,
            layer_digests: c
                .layers
                .iter()
                .map(|l| l.descriptor.digest.clone())
                .collect(),
            repo_digests: Vec::new(),
            last_used: now_secs(),
        })
    }

    /// Stores in-memory content under `digest`, verifying it.
    fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), Error> {
        let dest = self.blob_path(digest)?;
        if dest.exists() {
            return Ok(());
        }
        let actual = crate::digest::of_bytes(bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: "blob".into(),
                expected: digest.into(),
                actual,
            });
        }
        let tmp = self.tmp_dir().join(format!("blob-{}", unique()));
        let write = || -> io::Result<()> {
            let mut f = File::create_new(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        write().map_err(Error::io("write", &tmp))?;
        fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))?;
        fsync_dir(&self.blobs_dir())
    }

    /// Copies (or, for staged archive entries, moves) a blob from the source into the store,
    /// verifying its digest on the way.
    fn put_blob(&self, src: &Source, blob: &Blob) -> Result<(), Error> {
        let digest = &blob.descriptor.digest;
        let dest = self.blob_path(digest)?;
        if dest.exists() {
            return Ok(());
        }
        let file = src.file(&blob.path)?;
        let mismatch = |actual: String| Error::DigestMismatch {
            what: format!("{}: {}", src.origin().display(), blob.path),
            expected: digest.clone(),
            actual,
        };
        match file.digest {
            Some((actual, _)) if file.movable => {
                if &actual != digest {
                    return Err(mismatch(actual));
                }
                File::open(&file.path)
                    .and_then(|f| f.sync_all())
                    .map_err(Error::io("fsync", &file.path))?;
                fs::rename(&file.path, &dest).map_err(Error::io("rename", &dest))?;
            }
            _ => {
                let tmp = self.tmp_dir().join(format!("blob-{}", unique()));
                let copy = || -> io::Result<String> {
                    let input = File::open(&file.path)?;
                    let mut out = File::create_new(&tmp)?;
                    let (actual, _) = copy_hashed(input, &mut out)?;
                    out.sync_all()?;
                    Ok(actual)
                };
                let actual = copy().map_err(Error::io("copy", &file.path))?;
                if &actual != digest {
                    let _ = fs::remove_file(&tmp);
                    return Err(mismatch(actual));
                }
                fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))?;
            }
        }
        fsync_dir(&self.blobs_dir())
    }

    /// Unpacks a layer blob into `layers/<diff_id hex>` unless it is there already. Works in
    /// `layers/.tmp-<hex>-<unique>` and renames at the end, so a crash never leaves a partial
    /// layer under its final name.
    fn unpack_layer(&self, blob_digest: &str, diff_id: &str) -> Result<(), Error> {
        let dest = self.layer_path(diff_id)?;
        if dest.is_dir() {
            debug!(%diff_id, "layer already unpacked");
            return Ok(());
        }
        let hex = sha256_hex(diff_id)?;
        let tmp = self
            .layers_dir()
            .join(format!("{LAYER_TMP_PREFIX}{hex}-{}", unique()));
        DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(Error::io("mkdir", &tmp))?;
        let result = self.unpack_into(blob_digest, diff_id, &tmp);
        if let Err(e) = result {
            if let Err(err) = fs::remove_dir_all(&tmp) {
                warn!(path = %tmp.display(), %err, "cannot remove partial layer");
            }
            return Err(e);
        }
        fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))?;
        fsync_dir(&self.layers_dir())
    }

    fn unpack_into(&self, blob_digest: &str, diff_id: &str, tmp: &Path) -> Result<(), Error> {
        let blob = self.blob_path(blob_digest)?;
        unpack_file(&blob, blob_digest, diff_id, tmp)
    }

    /// Removes blobs and layers no image references.
    pub(crate) fn gc(&self, index: &IndexFile) -> Result<(), Error> {
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        for r in &index.images {
            for d in [&r.image.manifest_digest, &r.image.id]
                .into_iter()
                .chain(&r.layer_digests)
            {
                blobs.insert(sha256_hex(d)?.to_owned());
            }
            for d in &r.image.diff_ids {
                layers.insert(sha256_hex(d)?.to_owned());
            }
        }
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
            let entry = entry.map_err(Error::io("read directory", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                debug!(blob = %name, "removing unreferenced blob");
                remove_any(&entry.path()).map_err(Error::io("remove", entry.path()))?;
            }
        }
        let dir = self.layers_dir();
        for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
            let entry = entry.map_err(Error::io("read directory", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if layers.contains(&name) {
                continue;
            }
            debug!(layer = %name, "removing unreferenced layer");
            // Renamed first so that a crash midway leaves `.tmp-*` garbage for `open`, never a
            // half-deleted layer under its real name.
            let path = if name.starts_with(LAYER_TMP_PREFIX) {
                entry.path()
            } else {
                let doomed = dir.join(format!("{LAYER_TMP_PREFIX}rm-{name}-{}", unique()));
                fs::rename(entry.path(), &doomed).map_err(Error::io("rename", entry.path()))?;
                doomed
            };
            remove_any(&path).map_err(Error::io("remove", &path))?;
        }
        Ok(())
    }

    /// Moves what a pull staged into the store and records the image, under the store lock.
    /// Blobs and layers missing from `staging` must already be in the store (the pull skipped
    /// them); if one vanished meanwhile (a concurrent removal), [`Error::LayerMissing`] or
    /// [`Error::NotFound`] tells the puller to try again.
    pub(crate) fn commit_pull(
        &self,
        staging: &crate::staging::Staging,
        mut record: Record,
    ) -> Result<Image, Error> {
        let _lock = self.lock()?;
        let blobs = [&record.image.manifest_digest, &record.image.id]
            .into_iter()
            .chain(&record.layer_digests);
        for digest in blobs {
            let hex = sha256_hex(digest)?;
            let dest = self.blob_path(digest)?;
            let staged = staging.blob(hex);
            if dest.exists() {
                continue;
            }
            if !staged.exists() {
                return Err(Error::NotFound(format!("blob {digest}")));
            }
            fs::rename(&staged, &dest).map_err(Error::io("rename", &dest))?;
        }
        fsync_dir(&self.blobs_dir())?;
        for diff_id in &record.image.diff_ids {
            let hex = sha256_hex(diff_id)?;
            let dest = self.layer_path(diff_id)?;
            let staged = staging.layer(hex);
            if dest.is_dir() {
                continue;
            }
            if !staged.is_dir() {
                return Err(Error::LayerMissing {
                    image: record.image.id.clone(),
                    diff_id: diff_id.clone(),
                });
            }
            fs::rename(&staged, &dest).map_err(Error::io("rename", &dest))?;
        }
        fsync_dir(&self.layers_dir())?;
        let mut index = self.load()?;
        record.last_used = now_secs();
        let id = record.image.id.clone();
        merge(&mut index, record);
        self.save(&index)?;
        let image = index
            .images
            .iter()
            .find(|r| r.image.id == id)
            .map(|r| r.image.clone())
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        info!(id = %image.id, names = ?image.names, "pulled image");
        Ok(image)
    }

    /// The image with manifest `manifest_digest`, if it is stored with all its layers.
    pub(crate) fn find_complete(&self, manifest_digest: &str) -> Result<Option<Image>, Error> {
        let index = self.load()?;
        Ok(index
            .images
            .into_iter()
            .find(|r| {
                r.image.manifest_digest == manifest_digest
                    && r.image.diff_ids.iter().all(|d| self.has_layer(d))
                    && r.layer_digests.iter().all(|d| self.has_blob(d))
            })
            .map(|r| r.image))
    }

    /// Whether the blob `digest` is in the store.
    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Whether the layer `diff_id` is unpacked in the store.
    pub(crate) fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_path(diff_id).is_ok_and(|p| p.is_dir())
    }

    /// Adds `name` (a normalised reference) to the image `id`, taking it from any other image:
    /// a pull that found the image already present still moves the tag.
    pub(crate) fn tag(
        &self,
        id: &str,
        name: Option<&str>,
        repo_digest: &str,
    ) -> Result<Image, Error> {
        let _lock = self.lock()?;
        let mut index = self.load()?;
        let mut record = index
            .images
            .iter()
            .find(|r| r.image.id == id)
            .cloned()
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        record.image.names = name.map(|n| vec![n.to_owned()]).unwrap_or_default();
        record.repo_digests = vec![repo_digest.to_owned()];
        record.last_used = now_secs();
        merge(&mut index, record);
        self.save(&index)?;
        index
            .images
            .iter()
            .find(|r| r.image.id == id)
            .map(|r| r.image.clone())
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Marks the image as used now (a container started from it), for the least recently used
    /// order of [`ImageStore::prune`]. Unknown ids are ignored.
    pub fn touch(&self, id: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        let mut index = self.load()?;
        if let Some(r) = index.images.iter_mut().find(|r| r.image.id == id) {
            r.last_used = now_secs();
            self.save(&index)?;
        }
        Ok(())
    }

    /// All images, in import order.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        Ok(self.load()?.images.into_iter().map(|r| r.image).collect())
    }

    /// Finds an image by reference (`busybox` is `docker.io/library/busybox:latest`;
    /// `name@sha256:...` matches the manifest digest), or by image id: `sha256:<hex>` (full or
    /// prefix) or a bare hex prefix of at least 12 characters. Names win over id prefixes.
    /// `Ok(None)` if nothing matches; an error for an invalid reference or an ambiguous prefix.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, Error> {
        let index = self.load()?;
        Ok(find(&index, reference)?.map(|i| index.images[i].image.clone()))
    }

    /// The unpacked layer directories of `image`, lowest layer first (overlayfs wants the
    /// reverse order in `lowerdir`).
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, Error> {
        image
            .diff_ids
            .iter()
            .map(|diff_id| {
                let path = self.layer_path(diff_id)?;
                if path.is_dir() {
                    Ok(path)
                } else {
                    Err(Error::LayerMissing {
                        image: image.id.clone(),
                        diff_id: diff_id.clone(),
                    })
                }
            })
            .collect()
    }

    /// Removes a name, or a whole image. By name: the name goes, and the image with it if it
    /// was its last name. By id: the image and all its names go. Blobs and layers no other
    /// image uses are deleted, so the caller must not remove images that running containers
    /// use. `Error::NotFound` if nothing matches.
    pub fn remove(&self, reference: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        let mut index = self.load()?;
        let i = find(&index, reference)?.ok_or_else(|| Error::NotFound(reference.to_owned()))?;
        let by_name = Reference::parse_normalized(reference)
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| r.with_default_tag().to_string())
            .filter(|n| index.images[i].image.names.contains(n));
        let record = &mut index.images[i];
        match by_name {
            Some(name) if record.image.names.len() > 1 => {
                record.image.names.retain(|n| n != &name);
                info!(id = %record.image.id, %name, "untagged image");
            }
            _ => {
                info!(id = %record.image.id, names = ?record.image.names, "removed image");
                index.images.remove(i);
            }
        }
        self.save(&index)?;
        self.gc(&index)
    }
}

/// Adds or updates an image record; names it takes are removed from other images.
pub(crate) fn merge(index: &mut IndexFile, mut record: Record) {
    let new_names: BTreeSet<String> = record.image.names.iter().cloned().collect();
    for other in index
        .images
        .iter_mut()
        .filter(|r| r.image.id != record.image.id)
    {
        other.image.names.retain(|n| !new_names.contains(n));
    }
    match index
        .images
        .iter_mut()
        .find(|r| r.image.id == record.image.id)
    {
        Some(existing) => {
            let mut names: BTreeSet<String> = existing.image.names.iter().cloned().collect();
            names.extend(new_names);
            record.image.names = names.into_iter().collect();
            let mut repo_digests: BTreeSet<String> =
                existing.repo_digests.iter().cloned().collect();
            repo_digests.extend(record.repo_digests);
            record.repo_digests = repo_digests.into_iter().collect();
            record.last_used = record.last_used.max(existing.last_used);
            *existing = record;
        }
        None => index.images.push(record),
    }
}

fn find_by_id_prefix(
    index: &IndexFile,
    reference: &str,
    hex: &str,
) -> Result<Option<usize>, Error> {
    let mut matches = index.images.iter().enumerate().filter(|(_, r)| {
        r.image
            .id
            .strip_prefix("sha256:")
            .is_some_and(|id| id.starts_with(hex))
    });
    match (matches.next(), matches.next()) {
        (Some((i, _)), None) => Ok(Some(i)),
        (Some(_), Some(_)) => Err(Error::Ambiguous(reference.to_owned())),
        _ => Ok(None),
    }
}

fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn find(index: &IndexFile, reference: &str) -> Result<Option<usize>, Error> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err(ReferenceError::Empty.into());
    }
    if let Some(hex) = reference.strip_prefix("sha256:") {
        if !is_hex_prefix(hex) {
            return Err(Error::InvalidDigest(reference.to_owned()));
        }
        return find_by_id_prefix(index, reference, hex);
    }
    match Reference::parse_normalized(reference) {
        Ok(r) => {
            if let Some(digest) = &r.digest {
                let repo = r.repository();
                let mut by_digest = index.images.iter().enumerate().filter(|(_, x)| {
                    &x.image.manifest_digest == digest
                        || x.repo_digests
                            .iter()
                            .any(|rd| rd.rsplit_once('@').is_some_and(|(_, d)| d == digest))
                });
                let all: Vec<_> = by_digest.by_ref().collect();
                // Prefer an image of the same repository; any image with that manifest will do.
                let same_repo = all.iter().find(|(_, x)| {
                    x.image.names.iter().any(|n| {
                        Reference::parse_normalized(n).is_ok_and(|nr| nr.repository() == repo)
                    })
                });
                return Ok(same_repo.or(all.first()).map(|(i, _)| *i));
            }
            let name = r.with_default_tag().to_string();
            if let Some(i) = index
                .images
                .iter()
                .position(|x| x.image.names.contains(&name))
            {
                return Ok(Some(i));
            }
        }
        // A 64-hex string is not a valid name but may well be an id.
        Err(_) if is_hex_prefix(reference) => {}
        Err(e) => return Err(e.into()),
    }
    if reference.len() >= MIN_SHORT_ID && is_hex_prefix(reference) {
        return find_by_id_prefix(index, reference, reference);
    }
    Ok(None)
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unpacks the layer blob at `blob` into the empty directory `dest`, checking that the
/// uncompressed stream hashes to `diff_id`.
pub(crate) fn unpack_file(
    blob: &Path,
    blob_digest: &str,
    diff_id: &str,
    dest: &Path,
) -> Result<(), Error> {
    let file = File::open(blob).map_err(Error::io("open", blob))?;
    let reader = unpack::decompressed(file).map_err(Error::io("read", blob))?;
    let mut hashing = HashingReader::new(reader);
    unpack::unpack(&mut hashing, dest).map_err(|source| Error::Unpack {
        diff_id: diff_id.to_owned(),
        source,
    })?;
    let (actual, _) = hashing.finish().map_err(|e| Error::Unpack {
        diff_id: diff_id.to_owned(),
        source: unpack::UnpackError::Archive(e),
    })?;
    if actual != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed layer {blob_digest}"),
            expected: diff_id.to_owned(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageConfig;

    fn record(id_hex: &str, names: &[&str]) -> Record {
        Record {
            image: Image {
                id: format!("sha256:{id_hex}"),
                names: names.iter().map(|n| n.to_string()).collect(),
                manifest_digest: format!("sha256:{}", "f".repeat(64)),
                size: 0,
                created: None,
                config: ImageConfig::default(),
                diff_ids: Vec::new(),
            },
            layer_digests: Vec::new(),
            repo_digests: Vec::new(),
            last_used: 0,
        }
    }

    #[test]
    fn short_ids_must_be_unambiguous() {
        let a = format!("abcdef012345{}", "0".repeat(52));
        let b = format!("abcdef012345{}", "1".repeat(52));
        let index = IndexFile {
            version: INDEX_VERSION,
            images: vec![record(&a, &["docker.io/library/x:latest"]), record(&b, &[])],
        };
        assert!(matches!(
            find(&index, "abcdef012345"),
            Err(Error::Ambiguous(_))
        ));
        assert!(matches!(
            find(&index, "sha256:abc"),
            Err(Error::Ambiguous(_))
        ));
        assert_eq!(find(&index, "abcdef0123450").unwrap(), Some(0));
        assert_eq!(find(&index, &format!("sha256:{b}")).unwrap(), Some(1));
        // Names win over id prefixes, and a bare 11-char prefix is too short.
        assert_eq!(find(&index, "x").unwrap(), Some(0));
        assert_eq!(find(&index, "abcdef01234").unwrap(), None);
        // name@digest matches the manifest digest.
        let by_digest = format!("x@sha256:{}", "f".repeat(64));
        assert_eq!(find(&index, &by_digest).unwrap(), Some(0));
    }

    #[test]
    fn merge_moves_names() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut index = IndexFile {
            version: INDEX_VERSION,
            images: vec![record(&a, &["n1", "n2"])],
        };
        merge(&mut index, record(&b, &["n2"]));
        merge(&mut index, record(&a, &["n3"]));
        assert_eq!(index.images[0].image.names, ["n1", "n3"]);
        assert_eq!(index.images[1].image.names, ["n2"]);
    }
}
