//! skiff's local image store.
//!
//! Images come in as files (an OCI image layout directory, an OCI layout tar, or a
//! `docker save`/`podman save` archive) and are kept content-addressed under one root directory:
//!
//! ```text
//! <root>/blobs/sha256/<hex>     manifests, configs and compressed layers, digest-verified
//! <root>/layers/<diff-id hex>/  each layer unpacked once, in overlayfs format, shared by images
//! <root>/images.json            the metadata index, replaced atomically
//! <root>/tmp/                   staging; emptied by `ImageStore::open`
//! <root>/lock                   flock(2) target serialising mutations between processes
//! ```
//!
//! Layers are unpacked at import time, so starting a container only stacks directories.
//!
//! # Pulling
//!
//! The store's API is blocking; pulling is async (tokio). The daemon builds one [`Puller`]
//! and shares it (it is cheap to clone):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use images::{ImageStore, PullDecision, PullOptions, PullPolicy, Puller, PullerConfig};
//! let store = ImageStore::open("/var/lib/skiff/images")?;
//! let puller = Puller::new(store.clone(), PullerConfig {
//!     registries: images::RegistriesConfig::load("/etc/skiff/registries.toml".as_ref())?,
//!     docker_config: Some("/root/.docker/config.json".into()),
//!     ..PullerConfig::default()
//! });
//! let image = "nginx:1.27";
//! let policy = PullPolicy::for_container(None, image)?;
//! let present = store.resolve(image)?;
//! let image = match policy.decide(present.is_some()) {
//!     PullDecision::UseLocal => present.unwrap(),
//!     PullDecision::Pull => puller.pull(image, &PullOptions::default()).await?,
//!     PullDecision::NeverPull => return Err("ErrImageNeverPull".into()),
//! };
//! store.touch(&image.id)?;
//! # Ok(()) }
//! ```
//!
//! [`PullOptions`] carries the pod's `imagePullSecrets` ([`Credentials::from_docker_config`]
//! on each secret's `.dockerconfigjson`) and a [`ProgressFn`]. Registry settings (plain HTTP,
//! CAs, mirrors) are described in [`RegistriesConfig`]. A pull writes only into a locked
//! staging directory under `tmp/` until every digest is verified and every layer unpacked,
//! then moves blobs and layers into place and updates `images.json` under the store lock: a
//! killed pull leaves no image, and the next `open` removes its staging directory.
//!
//! Housekeeping: [`ImageStore::prune`] (kubelet-style GC by disk thresholds, least recently
//! used first, never an image in `keep`), [`ImageStore::prune_unused`], and
//! [`ImageStore::export`] to an OCI layout or docker archive.

mod digest;
mod export;
mod fsutil;
mod gc;
mod layout;
mod policy;
pub mod pull;
pub mod reference;
mod source;
mod staging;
mod store;
mod sys;
#[cfg(test)]
mod tests;
mod unpack;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::export::ExportFormat;
pub use crate::gc::{DiskUsage, GcPolicy, PruneReport};
pub use crate::policy::{InvalidPullPolicy, PolicyError, PullDecision, PullPolicy};
pub use crate::pull::{
    Credential, Credentials, LayerPhase, Progress, ProgressFn, ProxyConfig, PullError, PullOptions,
    Puller, PullerConfig, RegistriesConfig, RegistryConfig, Timeouts, no_verify_config,
};
pub use crate::reference::{ReferenceError, normalize};
pub use crate::store::ImageStore;
pub use crate::unpack::UnpackError;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<config digest hex>`: what `docker images` calls IMAGE ID.
    pub id: String,
    /// Normalised references, e.g. `docker.io/library/busybox:latest`. Empty for an image whose
    /// names all moved to newer images (docker's `<none>`); it is still reachable by id.
    pub names: Vec<String>,
    /// Digest of the image manifest, `sha256:...`.
    pub manifest_digest: String,
    /// Sum of the compressed layer sizes plus the config size, in bytes.
    pub size: u64,
    /// Creation time from the image config, RFC 3339.
    pub created: Option<String>,
    /// The runtime defaults from the image config.
    pub config: ImageConfig,
    /// Digests of the uncompressed layers, lowest first (`rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
}

/// The parts of an image config's `config` object a container runtime uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`; empty when unset.
    pub working_dir: String,
    /// `User` (`uid`, `uid:gid`, `name`, ...); empty when unset.
    pub user: String,
    /// Keys of `ExposedPorts`, e.g. `80/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The import path is none of the supported formats.
    #[error(
        "{0}: not an OCI image layout, OCI layout tar or docker-save archive (no index.json or manifest.json)"
    )]
    UnknownFormat(PathBuf),
    /// The import path is neither a directory nor a regular file (a FIFO, a device, a
    /// socket): refused before it is opened, since opening or reading it could block forever.
    #[error("{path}: cannot import {kind}: give an image layout directory or an archive file")]
    NotImportable {
        /// The path given.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The archive holds no image for this platform.
    #[error("{0}: no image to import (for linux/{arch})", arch = crate::layout::host_arch())]
    NothingToImport(PathBuf),
    /// A file the image needs is missing from the archive.
    #[error("{archive}: missing {entry}")]
    MissingEntry {
        /// The archive or layout imported.
        archive: PathBuf,
        /// The path inside it.
        entry: String,
    },
    /// A JSON document does not parse.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A digest string is malformed or not sha256.
    #[error("invalid or unsupported digest {0:?} (need sha256:<64 lowercase hex>)")]
    InvalidDigest(String),
    /// Content does not hash to the digest that names it.
    #[error("{what}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// A layer or config media type this store cannot handle (e.g. encrypted layers).
    #[error("blob {digest}: unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// The blob.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// The manifest and the config disagree, or a field is missing.
    #[error("image {manifest}: {reason}")]
    InvalidImage {
        /// Manifest digest.
        manifest: String,
        /// What is wrong.
        reason: String,
    },
    /// Unpacking a layer failed.
    #[error("unpacking layer {diff_id}: {source}")]
    Unpack {
        /// The layer's diff id.
        diff_id: String,
        /// The cause.
        #[source]
        source: UnpackError,
    },
    /// No image matches the reference.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// A short id matches several images.
    #[error("{0:?} matches several images; use a longer id")]
    Ambiguous(String),
    /// An image in the index has a layer that is not unpacked (the store was tampered with).
    #[error("image {image}: layer {diff_id} is missing from the store")]
    LayerMissing {
        /// Image id.
        image: String,
        /// Missing layer.
        diff_id: String,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
