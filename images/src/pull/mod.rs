//! Pulling images from registries (the OCI distribution protocol, pull side).
//!
//! [`Puller::pull`] resolves a reference on the first endpoint that answers (mirrors first,
//! see [`RegistriesConfig`]), picks the manifest for this node's platform out of an index,
//! downloads the config and the layers that are not in the store yet (several at a time,
//! resuming with `Range` requests after a dropped connection), verifies every digest, unpacks
//! each layer as soon as it is complete, and finally moves everything into the store at once.
//! Until that last step all work happens in a locked staging directory under `<root>/tmp/`,
//! so an interrupted pull leaves the image absent and `ImageStore::open` removes the rest.
//!
//! Concurrent pulls of the same reference through one `Puller` share one download: the first
//! caller does the work (and gets progress callbacks), the others wait for its result. If the
//! first caller's future is dropped, a waiter takes over.

mod auth;
mod client;

pub use client::no_verify_config;
mod hosts;
mod proxy;
mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use self::auth::{Credential, Credentials};
pub use self::hosts::{RegistriesConfig, RegistryConfig};
pub use self::proxy::ProxyConfig;
use crate::reference::{Reference, ReferenceError};
use crate::{Image, ImageStore};

/// How long to wait for the network before giving up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (per address).
    pub connect: Duration,
    /// From sending a request to the response head (also covers the TLS handshake).
    pub response: Duration,
    /// Between two pieces of a response body.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        }
    }
}

/// Node-wide puller settings.
#[derive(Debug, Clone)]
pub struct PullerConfig {
    /// Per-registry HTTP/TLS/mirror settings.
    pub registries: RegistriesConfig,
    /// A PEM CA bundle trusted for every registry, on top of the system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// The node's docker-style `config.json`, read at each pull (a missing file is fine).
    pub docker_config: Option<PathBuf>,
    /// Network timeouts.
    pub timeouts: Timeouts,
    /// How many times a blob download is resumed or retried after a transient failure.
    pub retries: u32,
    /// Layers downloaded at the same time.
    pub max_concurrent_downloads: usize,
    /// The HTTP proxy for registries (none by default; skiffd takes it from the environment).
    pub proxy: ProxyConfig,
}

impl Default for PullerConfig {
    fn default() -> PullerConfig {
        PullerConfig {
            registries: RegistriesConfig::default(),
            extra_ca_file: None,
            docker_config: None,
            timeouts: Timeouts::default(),
            retries: 5,
            max_concurrent_downloads: 3,
            proxy: ProxyConfig::default(),
        }
    }
}

/// What a layer is doing, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPhase {
    /// Already in the store; nothing to download.
    Cached,
    /// Bytes are arriving (`done` of `total`).
    Downloading,
    /// Downloaded and verified; being unpacked.
    Unpacking,
    /// Unpacked.
    Done,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The layer's (compressed) digest.
    pub layer: String,
    /// Position of the layer in the manifest, from 0.
    pub index: usize,
    /// Number of layers of the image.
    pub layers: usize,
    /// Bytes downloaded so far.
    pub done: u64,
    /// Size of the layer blob.
    pub total: u64,
    /// What is happening.
    pub phase: LayerPhase,
}

/// A progress callback. Called from the pulling task, often: keep it cheap.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Per-pull options.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Credentials tried before the node's `config.json` (e.g. from `imagePullSecrets`).
    pub credentials: Credentials,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("credentials", &self.credentials)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Why a pull failed. Cloneable so that every waiter of a shared pull gets the error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registries file is invalid.
    #[error("registry configuration {origin}: {reason}")]
    Config {
        /// File (or other origin).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A docker `config.json` or pull secret is invalid.
    #[error("credentials from {origin}: {reason}")]
    Credentials {
        /// File or secret.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS trust cannot be set up (e.g. an unreadable CA file).
    #[error("TLS setup for {authority}: {reason}")]
    Tls {
        /// The registry host.
        authority: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting or talking to the registry failed (refused, reset, TLS handshake).
    #[error("{url}: {reason}")]
    Connect {
        /// The request.
        url: String,
        /// The cause, with its chain.
        reason: String,
    },
    /// The registry did not answer in time.
    #[error("{url}: registry sent no {what} within {after:?}")]
    Timeout {
        /// The request.
        url: String,
        /// `response` (head) or `data` (body).
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The registry does not have this tag or digest (or repository).
    #[error("{reference}: not found in the registry (manifest unknown)")]
    NotFound {
        /// The reference pulled.
        reference: String,
    },
    /// Authentication is required and failed or was impossible.
    #[error("{registry}/{repository}: unauthorized: {reason}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What happened.
        reason: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{url}: unexpected HTTP status {status}: {body}")]
    Status {
        /// The request.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The start of the response body (registries explain errors in JSON).
        body: String,
    },
    /// The registry answered something that is not valid for the protocol.
    #[error("{url}: invalid response: {reason}")]
    Protocol {
        /// The request.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Downloaded content does not hash to the digest that names it.
    #[error("{what}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// Which manifest or blob.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// The image index has no manifest for this node.
    #[error("{reference}: no image for {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// The wanted platform.
        platform: String,
        /// The platforms the index offers.
        available: String,
    },
    /// A manifest, config or layer of a type skiff cannot use.
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// Which document or blob.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// The store failed (disk, or an invalid image config).
    #[error("image store: {0}")]
    Store(Arc<crate::Error>),
}

impl From<crate::Error> for PullError {
    fn from(e: crate::Error) -> PullError {
        PullError::Store(Arc::new(e))
    }
}

impl PullError {
    /// Worth retrying on the same endpoint (a blob download) or another one.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            PullError::Connect { .. } | PullError::Timeout { .. } => true,
            PullError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

type Outcome = Option<Result<Image, PullError>>;

/// Pulls images into an [`ImageStore`]. Cheap to clone; clones share in-flight pulls and
/// HTTP connections.
#[derive(Clone)]
pub struct Puller {
    store: ImageStore,
    config: Arc<PullerConfig>,
    transport: Arc<client::Transport>,
    in_flight: Arc<Mutex<HashMap<String, watch::Receiver<Outcome>>>>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

/// Removes an in-flight entry when the pull that owns it ends, however it ends.
struct InFlightGuard<'a> {
    map: &'a Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    key: String,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Puller {
    /// A puller storing into `store`.
    pub fn new(store: ImageStore, config: PullerConfig) -> Puller {
        let transport = Arc::new(client::Transport::new(
            config.timeouts.clone(),
            proxy::Proxies::new(&config.proxy),
        ));
        Puller {
            store,
            config: Arc::new(config),
            transport,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The store pulled into.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Pulls `reference` (normalised like docker: `busybox` is
    /// `docker.io/library/busybox:latest`) and returns the stored image, which then carries the
    /// reference as a name (unless it is digest-only) and is found by `resolve(reference)`.
    /// Always asks the registry; use [`crate::PullPolicy`] to decide whether to call this.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<Image, PullError> {
        let r = Reference::parse_normalized(reference)?.with_default_tag();
        let key = r.to_string();
        loop {
            let existing = {
                let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(key.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            match existing {
                Ok(tx) => {
                    let _guard = InFlightGuard {
                        map: &self.in_flight,
                        key: key.clone(),
                    };
                    let result = self.pull_now(&r, options).await;
                    // Nobody waiting is fine.
                    let _ = tx.send(Some(result.clone()));
                    return result;
                }
                Err(mut rx) => {
                    debug!(reference = %key, "waiting for a pull already in progress");
                    match rx.wait_for(Option::is_some).await {
                        Ok(outcome) => {
                            if let Some(result) = outcome.clone() {
                                return result;
                            }
                        }
                        // The leader was cancelled: try again, maybe as the leader.
                        Err(_) => continue,
                    }
                }
            }
        }
    }

    async fn pull_now(&self, r: &Reference, options: &PullOptions) -> Result<Image, PullError> {
        let started = std::time::Instant::now();
        let mut result = registry::pull(self, r, options).await;
        // A blob or layer the pull relied on was removed meanwhile: once more from scratch.
        if let Err(PullError::Store(e)) = &result
            && matches!(
                **e,
                crate::Error::NotFound(_) | crate::Error::LayerMissing { .. }
            )
        {
            warn!(reference = %r, err = %e, "store changed during pull; pulling again");
            result = registry::pull(self, r, options).await;
        }
        match &result {
            Ok(image) => {
                info!(reference = %r, id = %image.id, elapsed = ?started.elapsed(), "pull complete")
            }
            Err(err) => warn!(reference = %r, %err, "pull failed"),
        }
        result
    }
}
