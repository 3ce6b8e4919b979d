//! Writing a stored image out as an OCI image layout (directory or tar) or a docker archive.
//!
//! Blobs are written exactly as stored (the compressed layers the registry served), so every
//! digest of the export equals the store's: manifest, config and layers. The docker archive
//! is the docker 25 shape: an OCI layout plus `manifest.json` whose `Config` and `Layers` name
//! files under `blobs/sha256/`; `docker load`, `podman load` and skopeo read it.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::sha256_hex;
use crate::layout::{self, OCI_MANIFEST};
use crate::reference::Reference;
use crate::store::{fsync_dir, unique};
use crate::{Error, Image, ImageStore};

/// Output format of [`ImageStore::export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// An OCI image layout directory (`oci:DIR` for skopeo, `umoci --layout DIR`).
    OciDir,
    /// An OCI image layout in a tar file (`oci-archive:FILE`).
    OciArchive,
    /// A `docker save`-compatible tar (`docker-archive:FILE`, `docker load`).
    DockerArchive,
}

impl ImageStore {
    /// Exports the image `reference` resolves to into `dest` (a directory that must not exist
    /// or be empty, or a tar file that is replaced atomically). The index entry carries the
    /// image's first name (`io.containerd.image.name`) and its tag
    /// (`org.opencontainers.image.ref.name`, `latest` for a nameless image).
    pub fn export(
        &self,
        reference: &str,
        dest: &Path,
        format: ExportFormat,
    ) -> Result<Image, Error> {
        let image = self
            .resolve(reference)?
            .ok_or_else(|| Error::NotFound(reference.to_owned()))?;
        let index = self.load()?;
        let record = index
            .images
            .iter()
            .find(|r| r.image.id == image.id)
            .ok_or_else(|| Error::NotFound(reference.to_owned()))?;
        let manifest_path = self.blob_path(&image.manifest_digest)?;
        let manifest_bytes = fs::read(&manifest_path).map_err(Error::io("read", &manifest_path))?;
        let manifest: layout::Manifest = layout::parse_json(&manifest_bytes, || {
            format!("manifest {}", image.manifest_digest)
        })?;
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.to_owned());
        // The name asked for if it is one of the image's, else its first.
        let wanted = crate::normalize(reference).ok();
        let name = wanted
            .filter(|n| image.names.contains(n))
            .or_else(|| image.names.first().cloned());
        let tag = name
            .as_deref()
            .and_then(|n| Reference::parse_normalized(n).ok())
            .and_then(|r| r.tag)
            .unwrap_or_else(|| "latest".to_owned());
        let mut annotations = serde_json::Map::new();
        if let Some(n) = &name {
            annotations.insert("io.containerd.image.name".into(), json!(n));
        }
        annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
        let index_json = json!({
            "schemaVersion": 2,
            "mediaType": layout::OCI_INDEX,
            "manifests": [{
                "mediaType": media_type,
                "digest": image.manifest_digest,
                "size": manifest_bytes.len(),
                "annotations": annotations,
            }],
        });
        let mut files: Vec<(String, Content)> = vec![(
            "oci-layout".into(),
            Content::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        )];
        let mut seen = std::collections::HashSet::new();
        for digest in [&image.manifest_digest, &image.id]
            .into_iter()
            .chain(&record.layer_digests)
        {
            if seen.insert(digest.clone()) {
                files.push((
                    format!("blobs/sha256/{}", sha256_hex(digest)?),
                    Content::File(self.blob_path(digest)?),
                ));
            }
        }
        if format == ExportFormat::DockerArchive {
            let repo_tags: Vec<String> = image.names.iter().map(|n| docker_name(n)).collect();
            let manifest_json = json!([{
                "Config": format!("blobs/sha256/{}", sha256_hex(&image.id)?),
                "RepoTags": repo_tags,
                "Layers": record.layer_digests.iter()
                    .map(|d| Ok(format!("blobs/sha256/{}", sha256_hex(d)?)))
                    .collect::<Result<Vec<_>, Error>>()?,
            }]);
            files.push((
                "manifest.json".into(),
                Content::Bytes(to_json(&manifest_json)?),
            ));
        }
        files.push(("index.json".into(), Content::Bytes(to_json(&index_json)?)));
        match format {
            ExportFormat::OciDir => write_dir(dest, &files)?,
            ExportFormat::OciArchive | ExportFormat::DockerArchive => write_tar(dest, &files)?,
        }
        Ok(image)
    }
}

enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn to_json(v: &serde_json::Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|source| Error::Json {
        what: "export".into(),
        source,
    })
}

/// docker's short form: `docker.io/library/busybox:1` is `busybox:1`.
fn docker_name(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short
        .strip_prefix("library/")
        .filter(|rest| !rest.contains('/'))
        .unwrap_or(short)
        .to_owned()
}

fn write_dir(dest: &Path, files: &[(String, Content)]) -> Result<(), Error> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Io {
                    op: "export to",
                    path: dest.to_owned(),
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "directory not empty"),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Io {
                op: "read directory",
                path: dest.to_owned(),
                source: e,
            });
        }
    }
    DirBuilder::new()
        .recursive(true)
        .create(dest.join("blobs/sha256"))
        .map_err(Error::io("mkdir", dest))?;
    // index.json is last in `files`, so a partial export has no index.
    for (name, content) in files {
        let path = dest.join(name);
        match content {
            Content::Bytes(b) => fs::write(&path, b).map_err(Error::io("write", &path))?,
            Content::File(src) => {
                if fs::hard_link(src, &path).is_err() {
                    fs::copy(src, &path).map_err(Error::io("copy", src))?;
                }
            }
        }
    }
    Ok(())
}

fn write_tar(dest: &Path, files: &[(String, Content)]) -> Result<(), Error> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", unique()));
    let write = || -> io::Result<()> {
        let out = File::create_new(&tmp)?;
        let mut builder = tar::Builder::new(io::BufWriter::new(out));
        let mut dirs = vec!["blobs/", "blobs/sha256/"];
        for d in dirs.drain(..) {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_size(0);
            builder.append_data(&mut h, d, io::empty())?;
        }
        for (name, content) in files {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(0);
            match content {
                Content::Bytes(b) => {
                    h.set_size(b.len() as u64);
                    builder.append_data(&mut h, name, b.as_slice())?;
                }
                Content::File(src) => {
                    let f = File::open(src)?;
                    h.set_size(f.metadata()?.len());
                    builder.append_data(&mut h, name, f)?;
                }
            }
        }
        let mut out = builder
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        out.flush()?;
        out.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io {
            op: "write",
            path: dest.to_owned(),
            source: e,
        });
    }
    fs::rename(&tmp, dest).map_err(Error::io("rename", dest))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::docker_name;

    #[test]
    fn docker_short_names() {
        assert_eq!(docker_name("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(docker_name("docker.io/user/app:v"), "user/app:v");
        assert_eq!(docker_name("quay.io/a/b:c"), "quay.io/a/b:c");
    }
}
