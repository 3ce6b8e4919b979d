//! The steps of one pull: resolve the manifest, fetch config and layers, commit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::client::{Session, next_chunk, read_body};
use super::{Credential, Credentials, LayerPhase, Progress, PullError, PullOptions, Puller};
use crate::digest::{of_bytes, sha256_hex};
use crate::layout::{self, ConfigFile, Descriptor, Index, Manifest};
use crate::reference::Reference;
use crate::staging::Staging;
use crate::store::{Record, unpack_file};
use crate::{Image, ImageStore};

const OCI_INDEX: &str = layout::OCI_INDEX;
const OCI_MANIFEST: &str = layout::OCI_MANIFEST;
const DOCKER_LIST: &str = layout::DOCKER_LIST;
const DOCKER_MANIFEST: &str = layout::DOCKER_MANIFEST;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and indexes are small; refuse anything silly.
const MAX_MANIFEST: usize = 4 << 20;
const MAX_CONFIG: usize = 16 << 20;
/// Report download progress at most every this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

/// The manifest chosen for this node.
struct Resolved {
    /// Digest of what the reference names (an index or a manifest).
    top_digest: String,
    /// Digest of the platform manifest.
    digest: String,
    bytes: Bytes,
    manifest: Manifest,
}

pub(super) async fn pull(
    p: &Puller,
    r: &Reference,
    options: &PullOptions,
) -> Result<Image, PullError> {
    let mut creds = options.credentials.clone();
    if let Some(path) = &p.config.docker_config {
        creds.extend(Credentials::from_docker_config_file(path)?);
    }
    let matching: Vec<Credential> = creds
        .matching(&r.domain, &r.path)
        .into_iter()
        .cloned()
        .collect();
    let endpoints = p
        .config
        .registries
        .endpoints(&r.domain, p.config.extra_ca_file.as_deref());
    let n = endpoints.len();
    let mut last_err = None;
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let (mirror, fallback) = (endpoint.mirror, endpoint.fallback);
        let session = Arc::new(Session::new(
            p.transport.clone(),
            endpoint,
            r.domain.clone(),
            r.path.clone(),
            matching.clone(),
        ));
        match resolve(&session, r).await {
            Ok(resolved) => return fetch(p, session, r, resolved, options).await,
            Err(err) => {
                let next = i + 1 < n
                    && (err.is_transient() || mirror || matches!(err, PullError::Tls { .. }));
                if !next {
                    // When the plain-HTTP retry of a loopback registry fails too, the HTTPS
                    // error (say, an unknown certificate) is the one that explains it.
                    return match last_err {
                        Some(https_err)
                            if fallback
                                && !matches!(
                                    err,
                                    PullError::NotFound { .. } | PullError::Unauthorized { .. }
                                ) =>
                        {
                            Err(https_err)
                        }
                        _ => Err(err),
                    };
                }
                warn!(reference = %r, endpoint = %session.endpoint.url(""), %err, "registry endpoint failed; trying the next one");
                last_err = Some(err);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| PullError::Config {
        origin: "registries".into(),
        reason: format!("no endpoint for registry {}", r.domain),
    }))
}

/// Fetches what the reference names and, for an index, the manifest for this platform.
async fn resolve(s: &Session, r: &Reference) -> Result<Resolved, PullError> {
    let target = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| crate::reference::DEFAULT_TAG.to_owned());
    let (mut media_type, mut bytes, top_digest) =
        fetch_manifest(s, r, &target, r.digest.as_deref()).await?;
    let mut digest = top_digest.clone();
    if matches!(media_type.as_str(), OCI_INDEX | DOCKER_LIST) {
        let index: Index = layout::parse_json(&bytes, || format!("index {top_digest}"))?;
        let chosen = choose_platform(&index).ok_or_else(|| PullError::NoMatchingPlatform {
            reference: r.to_string(),
            platform: format!("linux/{}", layout::host_arch()),
            available: available_platforms(&index),
        })?;
        debug!(reference = %r, manifest = %chosen.digest, "chose platform manifest");
        digest = chosen.digest.clone();
        (media_type, bytes, _) = fetch_manifest(s, r, &digest, Some(&digest)).await?;
    }
    if !matches!(media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
        return Err(PullError::UnsupportedMediaType {
            what: format!("manifest {digest}"),
            media_type,
        });
    }
    let manifest: Manifest = layout::parse_json(&bytes, || format!("manifest {digest}"))?;
    Ok(Resolved {
        top_digest,
        digest,
        bytes,
        manifest,
    })
}

fn choose_platform(index: &Index) -> Option<&Descriptor> {
    index.manifests.iter().find(|m| {
        matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "")
            && m.platform.as_ref().is_some_and(layout::platform_matches)
    })
}

fn available_platforms(index: &Index) -> String {
    let list: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|m| m.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// GETs a manifest or index: (media type, bytes, digest), verified against `expected`.
async fn fetch_manifest(
    s: &Session,
    r: &Reference,
    target: &str,
    expected: Option<&str>,
) -> Result<(String, Bytes, String), PullError> {
    let path = format!("manifests/{target}");
    let url = s.endpoint.url(&format!("{}/{path}", s.repository));
    let resp = s
        .get(&path, &[(header::ACCEPT, MANIFEST_ACCEPT.to_owned())])
        .await?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Err(PullError::NotFound {
            reference: r.to_string(),
        });
    }
    if !status.is_success() {
        return Err(status_error(resp, &url, s).await);
    }
    let content_type = header_str(resp.headers().get(header::CONTENT_TYPE))
        .map(|ct| ct.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    let header_digest = header_str(resp.headers().get("docker-content-digest")).map(str::to_owned);
    let bytes = read_body(resp, MAX_MANIFEST, &url, s.timeouts().idle).await?;
    let actual = of_bytes(&bytes);
    let want = expected
        .map(str::to_owned)
        .or(header_digest.filter(|d| d.starts_with("sha256:")));
    if let Some(want) = want
        && want != actual
    {
        return Err(PullError::DigestMismatch {
            what: format!("manifest {target} from {url}"),
            expected: want,
            actual,
        });
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = layout::parse_json(&bytes, || format!("manifest {target} from {url}"))?;
    // The body's own mediaType wins over a generic Content-Type (application/json).
    let media_type = match (probe.media_type, content_type.as_str()) {
        (Some(mt), _) => mt,
        (None, ct) if ct.starts_with("application/vnd.") => ct.to_owned(),
        (None, _) if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, _) => OCI_MANIFEST.to_owned(),
    };
    Ok((media_type, bytes, actual))
}

fn header_str(v: Option<&HeaderValue>) -> Option<&str> {
    v.and_then(|v| v.to_str().ok())
}

async fn status_error(
    resp: hyper::Response<hyper::body::Incoming>,
    url: &str,
    s: &Session,
) -> PullError {
    let status = resp.status().as_u16();
    let body = read_body(resp, 64 << 10, url, s.timeouts().idle)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b[..b.len().min(512)])
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    if status == 403 {
        return PullError::Unauthorized {
            registry: s.registry.clone(),
            repository: s.repository.clone(),
            reason: format!("access denied (403): {body}"),
        };
    }
    PullError::Status {
        url: url.to_owned(),
        status,
        body,
    }
}

/// Runs a blocking store operation off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            PullError::Store(Arc::new(crate::Error::Io {
                op: "run blocking task",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            }))
        })?
        .map_err(PullError::from)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PullError {
    let path = path.to_owned();
    move |source| PullError::from(crate::Error::Io { op, path, source })
}

async fn fetch(
    p: &Puller,
    session: Arc<Session>,
    r: &Reference,
    resolved: Resolved,
    options: &PullOptions,
) -> Result<Image, PullError> {
    let store = p.store.clone();
    let name = r.digest.is_none().then(|| r.to_string());
    let repo_digest = format!("{}@{}", r.repository(), resolved.top_digest);
    let manifest = &resolved.manifest;
    if !matches!(
        manifest.config.media_type.as_str(),
        layout::OCI_CONFIG | layout::DOCKER_CONFIG | ""
    ) {
        return Err(PullError::UnsupportedMediaType {
            what: format!("config of {r}"),
            media_type: manifest.config.media_type.clone(),
        });
    }
    for layer in &manifest.layers {
        if !layout::is_supported_layer(&layer.media_type) {
            return Err(PullError::UnsupportedMediaType {
                what: format!("layer {}", layer.digest),
                media_type: layer.media_type.clone(),
            });
        }
        sha256_hex(&layer.digest)?;
    }
    let config_digest = manifest.config.digest.clone();
    sha256_hex(&config_digest)?;

    // Already stored (same manifest): only the name may be new.
    {
        let lookup = store.clone();
        let digest = resolved.digest.clone();
        if let Some(image) = blocking(move || lookup.find_complete(&digest)).await? {
            debug!(reference = %r, id = %image.id, "image already in the store");
            let store = store.clone();
            let id = image.id.clone();
            return blocking(move || store.tag(&id, name.as_deref(), &repo_digest)).await;
        }
    }

    let staging = {
        let tmp = store.tmp_dir();
        Arc::new(blocking(move || Staging::new(&tmp, "pull")).await?)
    };

    // Config.
    let config_bytes = if store.has_blob(&config_digest) {
        let path = store.blob_path(&config_digest)?;
        Bytes::from(
            tokio::fs::read(&path)
                .await
                .map_err(io_err("read", &path))?,
        )
    } else {
        let path = format!("blobs/{config_digest}");
        let url = session
            .endpoint
            .url(&format!("{}/{path}", session.repository));
        let resp = session.get(&path, &[]).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &url, &session).await);
        }
        let bytes = read_body(resp, MAX_CONFIG, &url, session.timeouts().idle).await?;
        let actual = of_bytes(&bytes);
        if actual != config_digest {
            return Err(PullError::DigestMismatch {
                what: format!("config blob of {r}"),
                expected: config_digest,
                actual,
            });
        }
        let dest = staging.blob(sha256_hex(&config_digest)?);
        write_synced(&dest, &bytes).await?;
        bytes
    };
    let config: ConfigFile =
        layout::parse_json(&config_bytes, || format!("config {config_digest}"))?;
    let diff_ids = config.rootfs.diff_ids.clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(PullError::from(crate::Error::InvalidImage {
            manifest: resolved.digest.clone(),
            reason: format!(
                "manifest has {} layers but config has {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        }));
    }
    for d in &diff_ids {
        sha256_hex(d)?;
    }
    if !store.has_blob(&resolved.digest) {
        let dest = staging.blob(sha256_hex(&resolved.digest)?);
        write_synced(&dest, &resolved.bytes).await?;
    }

    // Layers, a few at a time; each is unpacked as soon as it is verified.
    let total_layers = manifest.layers.len();
    let semaphore = Arc::new(Semaphore::new(p.config.max_concurrent_downloads.max(1)));
    let mut tasks = JoinSet::new();
    let mut seen = HashSet::new();
    for (index, (desc, diff_id)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
        let report = {
            let progress = options.progress.clone();
            let layer = desc.digest.clone();
            let total = desc.size;
            move |done: u64, phase: LayerPhase| {
                if let Some(f) = &progress {
                    f(&Progress {
                        layer: layer.clone(),
                        index,
                        layers: total_layers,
                        done,
                        total,
                        phase,
                    });
                }
            }
        };
        let have_blob = store.has_blob(&desc.digest);
        let have_layer = store.has_layer(diff_id);
        if (have_blob && have_layer) || !seen.insert(desc.digest.clone()) {
            report(desc.size, LayerPhase::Cached);
            continue;
        }
        let job = LayerJob {
            session: session.clone(),
            store: store.clone(),
            staging: staging.clone(),
            desc: desc.clone(),
            diff_id: diff_id.clone(),
            have_blob,
            have_layer,
            retries: p.config.retries,
        };
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            job.run(report).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| {
            PullError::from(crate::Error::Io {
                op: "layer task",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        // Dropping the JoinSet on return aborts the other downloads.
        result?;
    }

    let record = Record {
        image: Image {
            id: config_digest.clone(),
            names: name.into_iter().collect(),
            manifest_digest: resolved.digest.clone(),
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            created: config.created(),
            config: config.image_config(),
            diff_ids,
        },
        layer_digests: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        repo_digests: vec![repo_digest],
        last_used: 0,
    };
    blocking(move || {
        let result = store.commit_pull(&staging, record);
        drop(staging);
        result
    })
    .await
}

async fn write_synced(dest: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let mut f = tokio::fs::File::create(dest)
        .await
        .map_err(io_err("create", dest))?;
    f.write_all(bytes).await.map_err(io_err("write", dest))?;
    f.sync_all().await.map_err(io_err("fsync", dest))
}

/// One layer to download and/or unpack.
struct LayerJob {
    session: Arc<Session>,
    store: ImageStore,
    staging: Arc<Staging>,
    desc: Descriptor,
    diff_id: String,
    have_blob: bool,
    have_layer: bool,
    retries: u32,
}

impl LayerJob {
    async fn run(self, report: impl Fn(u64, LayerPhase) + Send + 'static) -> Result<(), PullError> {
        let hex = sha256_hex(&self.desc.digest)?.to_owned();
        let blob = if self.have_blob {
            self.store.blob_path(&self.desc.digest)?
        } else {
            let dest = self.staging.blob(&hex);
            download_blob(&self.session, &self.desc, &dest, self.retries, &report).await?;
            dest
        };
        if !self.have_layer {
            report(self.desc.size, LayerPhase::Unpacking);
            let dest = self.staging.layer(sha256_hex(&self.diff_id)?);
            let digest = self.desc.digest.clone();
            let diff_id = self.diff_id.clone();
            blocking(move || {
                std::fs::create_dir(&dest).map_err(crate::Error::io("mkdir", &dest))?;
                unpack_file(&blob, &digest, &diff_id, &dest)
            })
            .await?;
        }
        report(self.desc.size, LayerPhase::Done);
        Ok(())
    }
}

/// Downloads a blob to `dest`, resuming with `Range` after transient failures, and checks
/// size and digest.
async fn download_blob(
    s: &Session,
    desc: &Descriptor,
    dest: &Path,
    retries: u32,
    report: &impl Fn(u64, LayerPhase),
) -> Result<(), PullError> {
    let path = format!("blobs/{}", desc.digest);
    let url = s.endpoint.url(&format!("{}/{path}", s.repository));
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(io_err("create", dest))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut failures = 0u32;
    report(0, LayerPhase::Downloading);
    loop {
        let attempt = async {
            let mut headers = Vec::new();
            if done > 0 {
                headers.push((header::RANGE, format!("bytes={done}-")));
            }
            let resp = s.get(&path, &headers).await?;
            match resp.status() {
                StatusCode::OK => {
                    if done > 0 {
                        debug!(%url, "server ignored the Range request; starting over");
                        out.flush().await.map_err(io_err("write", dest))?;
                        out.get_mut()
                            .set_len(0)
                            .await
                            .map_err(io_err("truncate", dest))?;
                        out.seek(std::io::SeekFrom::Start(0))
                            .await
                            .map_err(io_err("seek", dest))?;
                        hasher = Sha256::new();
                        done = 0;
                    }
                }
                StatusCode::PARTIAL_CONTENT => {
                    let range = header_str(resp.headers().get(header::CONTENT_RANGE)).unwrap_or("");
                    if !range.starts_with(&format!("bytes {done}-")) {
                        return Err(PullError::Protocol {
                            url: url.clone(),
                            reason: format!("asked for bytes {done}- but got range {range:?}"),
                        });
                    }
                }
                StatusCode::NOT_FOUND => {
                    return Err(PullError::Status {
                        url: url.clone(),
                        status: 404,
                        body: "blob unknown to the registry".into(),
                    });
                }
                _ => return Err(status_error(resp, &url, s).await),
            }
            let mut body = resp.into_body();
            let mut reported = done;
            while let Some(chunk) = next_chunk(&mut body, &url, s.timeouts().idle).await? {
                let len = chunk.len() as u64;
                if done + len > desc.size {
                    return Err(PullError::Protocol {
                        url: url.clone(),
                        reason: format!(
                            "blob is larger than the {} bytes its descriptor says",
                            desc.size
                        ),
                    });
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(io_err("write", dest))?;
                done += len;
                if done - reported >= PROGRESS_STEP || done == desc.size {
                    reported = done;
                    report(done, LayerPhase::Downloading);
                }
            }
            if done < desc.size {
                return Err(PullError::Connect {
                    url: url.clone(),
                    reason: format!("connection closed after {done} of {} bytes", desc.size),
                });
            }
            Ok(())
        }
        .await;
        match attempt {
            Ok(()) => break,
            Err(err) if err.is_transient() && failures < retries => {
                failures += 1;
                let delay =
                    Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5));
                warn!(%url, %err, done, attempt = failures, "blob download interrupted; resuming");
                tokio::time::sleep(delay).await;
            }
            Err(err) => return Err(err),
        }
    }
    out.flush().await.map_err(io_err("write", dest))?;
    out.get_mut()
        .sync_all()
        .await
        .map_err(io_err("fsync", dest))?;
    let actual = format!("sha256:{}", hex(&hasher.finalize()));
    if actual != desc.digest {
        return Err(PullError::DigestMismatch {
            what: format!("blob from {url}"),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
