//! Reading images out of an OCI image layout or a `docker save` archive.
//!
//! # Names
//!
//! An OCI layout with an `index.json` is preferred (newer docker and podman archives are
//! both). Each index entry's names come, in order of preference, from:
//! 1. the `io.containerd.image.name` annotation (docker 25+, containerd, our test script);
//! 2. the `org.opencontainers.image.ref.name` annotation, if it is a full reference (it has a
//!    `/`, `:` or `@` and parses, e.g. `quay.io/a/b:1`);
//! 3. otherwise `localhost/import:<ref.name>` when `ref.name` is a valid tag, as OCI layouts
//!    written by skopeo or umoci carry only the tag (`latest`);
//! 4. plus any `RepoTags` of a `manifest.json` entry with the same config (docker save).
//!
//! An image with no name at all is still imported and reachable by id.
//!
//! A `manifest.json`-only archive (`docker save` before docker 25, `podman save`) is turned
//! into an OCI manifest whose layer media types come from the files' magic numbers.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::digest::{self, sha256_hex};
use crate::reference::{self, Reference};
use crate::source::Source;
use crate::{Error, ImageConfig};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Prefix for images whose layout only gives a tag.
const IMPORT_REPOSITORY: &str = "localhost/import";

/// OCI content descriptor (also docker's, which has the same shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    #[serde(default)]
    pub(crate) manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

/// One `manifest.json` entry of a `docker save` archive.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// The subset of an image config the store reads; everything else is ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) created: Option<String>,
    #[serde(default)]
    pub(crate) config: Option<ContainerConfig>,
    pub(crate) rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

impl ConfigFile {
    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.as_ref();
        ImageConfig {
            entrypoint: c.and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
            cmd: c.and_then(|c| c.cmd.clone()).unwrap_or_default(),
            env: c.and_then(|c| c.env.clone()).unwrap_or_default(),
            working_dir: c.and_then(|c| c.working_dir.clone()).unwrap_or_default(),
            user: c.and_then(|c| c.user.clone()).unwrap_or_default(),
            exposed_ports: c
                .and_then(|c| c.exposed_ports.as_ref())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
            labels: c.and_then(|c| c.labels.clone()).unwrap_or_default(),
        }
    }

    /// `created`, re-rendered as RFC 3339 UTC; dropped if it does not parse.
    pub(crate) fn created(&self) -> Option<String> {
        let raw = self.created.as_deref()?;
        raw.parse::<jiff::Timestamp>().ok().map(|t| t.to_string())
    }
}

/// A blob to take from the source.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub(crate) descriptor: Descriptor,
    /// Path inside the source.
    pub(crate) path: String,
}

/// An image found in the source, not yet stored.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) manifest_digest: String,
    pub(crate) manifest_bytes: Vec<u8>,
    pub(crate) config: Blob,
    pub(crate) layers: Vec<Blob>,
    pub(crate) names: BTreeSet<String>,
}

/// The host's architecture in GOARCH spelling, as image platforms use.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

pub(crate) fn platform_matches(p: &Platform) -> bool {
    p.os == "linux" && p.architecture == host_arch()
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what(),
        source,
    })
}

fn blob_path(digest: &str) -> Result<String, Error> {
    Ok(format!("blobs/sha256/{}", sha256_hex(digest)?))
}

/// Reads a blob of an OCI layout and checks its digest.
fn read_blob(src: &Source, digest: &str) -> Result<Vec<u8>, Error> {
    let bytes = src.read(&blob_path(digest)?)?;
    let actual = digest::of_bytes(&bytes);
    if actual != digest {
        return Err(Error::DigestMismatch {
            what: format!("{}: blob", src.origin().display()),
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}

/// Finds the images in `src`.
pub(crate) fn candidates(src: &Source) -> Result<Vec<Candidate>, Error> {
    let has_index = src.exists("index.json");
    let has_docker = src.exists("manifest.json");
    if !has_index && !has_docker {
        return Err(Error::UnknownFormat(src.origin().to_owned()));
    }
    let docker = if has_docker {
        parse_json::<Vec<DockerEntry>>(&src.read("manifest.json")?, || {
            format!("{}: manifest.json", src.origin().display())
        })?
    } else {
        Vec::new()
    };
    let mut found = Vec::new();
    if has_index {
        found = from_index(src)?;
    }
    if found.is_empty() {
        found = from_docker(src, &docker)?;
    } else {
        // Names from manifest.json for the same config.
        for entry in &docker {
            let Ok((config_digest, _)) = src.digest(&entry.config) else {
                continue;
            };
            for c in found
                .iter_mut()
                .filter(|c| c.config.descriptor.digest == config_digest)
            {
                c.names.extend(repo_tags(entry));
            }
        }
    }
    Ok(found)
}

fn from_index(src: &Source) -> Result<Vec<Candidate>, Error> {
    let index: Index = parse_json(&src.read("index.json")?, || {
        format!("{}: index.json", src.origin().display())
    })?;
    let mut found: Vec<Candidate> = Vec::new();
    for desc in &index.manifests {
        let names = names_from_annotations(desc.annotations.as_ref());
        if let Some(p) = &desc.platform
            && !platform_matches(p)
        {
            debug!(digest = %desc.digest, os = %p.os, arch = %p.architecture, "skipping manifest for another platform");
            continue;
        }
        let Some(manifest_desc) = resolve_manifest(src, desc)? else {
            continue;
        };
        let bytes = read_blob(src, &manifest_desc.digest)?;
        let manifest: Manifest =
            parse_json(&bytes, || format!("manifest {}", manifest_desc.digest))?;
        if !matches!(
            manifest.config.media_type.as_str(),
            OCI_CONFIG | DOCKER_CONFIG | ""
        ) {
            debug!(digest = %manifest_desc.digest, media_type = %manifest.config.media_type, "skipping non-image artifact");
            continue;
        }
        if let Some(existing) = found
            .iter_mut()
            .find(|c| c.manifest_digest == manifest_desc.digest)
        {
            existing.names.extend(names);
            continue;
        }
        let config = Blob {
            path: blob_path(&manifest.config.digest)?,
            descriptor: manifest.config.clone(),
        };
        let layers = manifest
            .layers
            .iter()
            .map(|d| {
                Ok(Blob {
                    path: blob_path(&d.digest)?,
                    descriptor: d.clone(),
                })
            })
            .collect::<Result<_, Error>>()?;
        found.push(Candidate {
            manifest_digest: manifest_desc.digest.clone(),
            manifest_bytes: bytes,
            config,
            layers,
            names,
        });
    }
    Ok(found)
}

/// Follows a (possibly nested) index to the manifest for this platform.
fn resolve_manifest(src: &Source, desc: &Descriptor) -> Result<Option<Descriptor>, Error> {
    let mut desc = desc.clone();
    for _ in 0..4 {
        match desc.media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => return Ok(Some(desc)),
            OCI_INDEX | DOCKER_LIST => {
                let bytes = read_blob(src, &desc.digest)?;
                let index: Index = parse_json(&bytes, || format!("index {}", desc.digest))?;
                let chosen = index.manifests.into_iter().find(|m| {
                    m.platform.as_ref().is_some_and(platform_matches)
                        && matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
                });
                match chosen {
                    Some(m) => desc = m,
                    None => {
                        warn!(digest = %desc.digest, arch = host_arch(), "image index has no manifest for this platform");
                        return Ok(None);
                    }
                }
            }
            other => {
                debug!(digest = %desc.digest, media_type = %other, "skipping index entry");
                return Ok(None);
            }
        }
    }
    Ok(None)
}

fn names_from_annotations(annotations: Option<&BTreeMap<String, String>>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(a) = annotations else { return names };
    if let Some(name) = a.get(ANNOTATION_IMAGE_NAME) {
        match reference::normalize(name) {
            Ok(n) => {
                names.insert(n);
                return names;
            }
            Err(err) => warn!(%err, "ignoring invalid {ANNOTATION_IMAGE_NAME} annotation"),
        }
    }
    if let Some(ref_name) = a.get(ANNOTATION_REF_NAME) {
        let full = ref_name.contains(['/', ':', '@']);
        let name = if full {
            reference::normalize(ref_name).ok()
        } else {
            reference::normalize(&format!("{IMPORT_REPOSITORY}:{ref_name}")).ok()
        };
        match name {
            Some(n) => {
                names.insert(n);
            }
            None => {
                warn!(ref_name = %ref_name, "ignoring unusable {ANNOTATION_REF_NAME} annotation")
            }
        }
    }
    names
}

fn repo_tags(entry: &DockerEntry) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for tag in entry.repo_tags.iter().flatten() {
        match Reference::parse_normalized(tag) {
            // RepoTags never carry digests; a name:tag@digest would be odd, keep name:tag.
            Ok(r) if r.tag.is_some() || r.digest.is_none() => {
                let r = Reference { digest: None, ..r }.with_default_tag();
                names.insert(r.to_string());
            }
            Ok(_) => {}
            Err(err) => warn!(%err, "ignoring invalid RepoTag"),
        }
    }
    names
}

fn from_docker(src: &Source, entries: &[DockerEntry]) -> Result<Vec<Candidate>, Error> {
    let mut found = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = src.digest(&entry.config)?;
        let config = Blob {
            path: entry.config.clone(),
            descriptor: Descriptor {
                media_type: OCI_CONFIG.to_owned(),
                digest: config_digest,
                size: config_size,
                platform: None,
                annotations: None,
            },
        };
        let mut layers = Vec::new();
        for path in &entry.layers {
            let (digest, size) = src.digest(path)?;
            let file = src.file(path)?;
            let media_type = sniff_layer_type(&file.path)?;
            layers.push(Blob {
                path: path.clone(),
                descriptor: Descriptor {
                    media_type: media_type.to_owned(),
                    digest,
                    size,
                    platform: None,
                    annotations: None,
                },
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: config.descriptor.clone(),
            layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
            what: "synthesised manifest".into(),
            source,
        })?;
        found.push(Candidate {
            manifest_digest: digest::of_bytes(&manifest_bytes),
            manifest_bytes,
            config,
            layers,
            names: repo_tags(entry),
        });
    }
    Ok(found)
}

fn sniff_layer_type(path: &std::path::Path) -> Result<&'static str, Error> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let n = f.read(&mut magic).map_err(Error::io("read", path))?;
    let magic = &magic[..n];
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER_TAR
    })
}

/// Whether the store can unpack a layer of this media type.
pub(crate) fn is_supported_layer(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}
