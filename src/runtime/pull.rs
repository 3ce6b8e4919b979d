//! Images for container starts, the kubelet's image manager: the pull policy, pull secrets,
//! `ErrImagePull` then `ImagePullBackOff` with a back-off per pod and image, the `Pulling` /
//! `Pulled` / `Failed` / `BackOff` events, and image garbage collection that never removes an
//! image an existing container uses.
//!
//! A pull runs as a task of its own: a container start waits for it at most [`PULL_WAIT`] and
//! otherwise reports [`PULLING`], so the pod worker stays responsive; when the pull ends the
//! workers are asked to resync and the next start finds its result.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use images::{
    Credentials, GcPolicy, Image, ImageStore, PruneReport, PullDecision, PullOptions, PullPolicy,
    Puller,
};
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::StartError;
use crate::kube::events::{EventType, Involved};

/// What image pulls need from the rest of the node: a sink for their events, the pull
/// secrets, and the pods whose images garbage collection keeps. The store implements it (in
/// the daemon, the layer above both), so pulls do not depend on the store.
pub trait PullHost: Send + Sync + 'static {
    /// Records an event about `obj`.
    fn event(&self, obj: &Involved, kind: EventType, reason: &str, message: &str);
    /// The Secret `namespace/name`, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
    /// Every pod the node knows.
    fn pods(&self) -> Vec<Pod>;
}

/// How long a container start waits for a pull before it reports [`PULLING`] and lets the
/// pull finish in the background.
pub const PULL_WAIT: Duration = Duration::from_secs(1);
/// The waiting reason of a container whose image is being pulled (as the kubelet shows it).
pub const PULLING: &str = "ContainerCreating";
/// How often images are garbage-collected (the kubelet's `ImageGCPeriod`).
pub const GC_PERIOD: Duration = Duration::from_secs(300);
/// GC leaves images pulled more recently than this (the kubelet's
/// `--minimum-image-ttl-duration`), so a fresh pull is not collected before its container
/// starts or right after `skiff pull`.
pub const GC_MIN_AGE: Duration = Duration::from_secs(120);
/// The kubelet's image pull back-off: 10 s, doubling, at most 300 s.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The kubelet's `flowcontrol.Backoff` for one key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullBackoff {
    delay: Duration,
    last: Option<Instant>,
}

impl PullBackoff {
    /// Records a failure at `now`: 10 s the first time (or after 2 × 300 s of quiet), else
    /// double the last delay, at most 300 s.
    pub fn failed(&mut self, now: Instant) {
        self.delay = match self.last {
            Some(last) if now.duration_since(last) <= 2 * BACKOFF_MAX && !self.delay.is_zero() => {
                (self.delay * 2).min(BACKOFF_MAX)
            }
            _ => BACKOFF_INITIAL,
        };
        self.last = Some(now);
    }

    /// How long the back-off still lasts at `now`, if it does.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let end = self.last? + self.delay;
        (now < end).then(|| end - now)
    }
}

/// A finished pull as its waiters see it.
type Outcome = Option<Result<Image, String>>;

enum Phase {
    Idle,
    Pulling(watch::Receiver<Outcome>),
    /// The last pull failed; `reported` once a start returned `ErrImagePull` for it.
    Failed {
        message: String,
        reported: bool,
    },
}

struct Entry {
    phase: Phase,
    backoff: PullBackoff,
}

struct Shared {
    puller: Puller,
    store: Arc<dyn PullHost>,
    /// Pull state per `<pod uid>_<image>`, as the kubelet keys its back-off.
    entries: Mutex<HashMap<String, Entry>>,
    /// Image ids between lookup and container creation (not yet on disk), with a count.
    starting: Mutex<HashMap<String, usize>>,
    /// When images were last pulled, by id (for [`GC_MIN_AGE`]).
    pulled: Mutex<HashMap<String, Instant>>,
    /// Wakes every pod worker (a pull ended).
    resync: mpsc::UnboundedSender<()>,
    /// Asks the GC loop for a run (after a pull).
    gc: mpsc::UnboundedSender<()>,
}

impl Shared {
    fn note_pulled(&self, image: &Image) {
        let now = Instant::now();
        let mut pulled = lock(&self.pulled);
        pulled.retain(|_, at| now.duration_since(*at) < GC_MIN_AGE);
        pulled.insert(image.id.clone(), now);
        drop(pulled);
        let _ = self.gc.send(());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps an image out of GC while a container is being created from it.
pub struct Starting {
    shared: Arc<Shared>,
    id: String,
}

impl Drop for Starting {
    fn drop(&mut self) {
        let mut map = lock(&self.shared.starting);
        if let Some(n) = map.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// The image of a container, ready to start from.
pub struct Ensured {
    pub image: Image,
    /// Hold until the container exists on disk.
    pub starting: Starting,
}

/// Pulls images for container starts; owns the pull tasks (aborted when dropped).
pub struct ImageService {
    shared: Arc<Shared>,
    gc_policy: GcPolicy,
    tasks: Mutex<JoinSet<()>>,
}

impl ImageService {
    /// `resync` wakes the pod workers when a pull ends; `gc` requests a GC run.
    pub fn new(
        puller: Puller,
        store: Arc<dyn PullHost>,
        gc_policy: GcPolicy,
        resync: mpsc::UnboundedSender<()>,
        gc: mpsc::UnboundedSender<()>,
    ) -> ImageService {
        ImageService {
            shared: Arc::new(Shared {
                puller,
                store,
                entries: Mutex::new(HashMap::new()),
                starting: Mutex::new(HashMap::new()),
                pulled: Mutex::new(HashMap::new()),
                resync,
                gc,
            }),
            gc_policy,
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// The puller (for `skiff pull`).
    pub fn puller(&self) -> &Puller {
        &self.shared.puller
    }

    fn images(&self) -> &ImageStore {
        self.shared.puller.store()
    }

    /// Records a pull that did not come from a pod (`skiff pull`) and asks for a GC run.
    pub fn pulled(&self, image: &Image) {
        self.shared.note_pulled(image);
    }

    /// Finds or pulls the image of `c` according to its pull policy, with events on `pod`.
    pub async fn ensure(&self, pod: &Pod, c: &Container) -> Result<Ensured, StartError> {
        let reference = c.image.clone().unwrap_or_default();
        let obj = Involved::pod(pod);
        let invalid = |e: &dyn std::fmt::Display| StartError::ImageMissing {
            reason: "InvalidImageName",
            message: format!("Failed to apply default image tag \"{reference}\": {e}"),
        };
        let policy = match PullPolicy::for_container(c.image_pull_policy.as_deref(), &reference) {
            Ok(p) => p,
            Err(images::PolicyError::Reference(e)) => return Err(invalid(&e)),
            Err(e @ images::PolicyError::Policy(_)) => {
                return Err(StartError::Config {
                    reason: "CreateContainerConfigError",
                    message: e.to_string(),
                });
            }
        };
        let present = self.images().resolve(&reference).map_err(|e| invalid(&e))?;
        let image = match policy.decide(present.is_some()) {
            PullDecision::UseLocal => {
                let msg = format!("Container image \"{reference}\" already present on machine");
                self.shared
                    .store
                    .event(&obj, EventType::Normal, "Pulled", &msg);
                present.ok_or_else(|| invalid(&"image vanished"))?
            }
            PullDecision::NeverPull => {
                return Err(StartError::ImageMissing {
                    reason: "ErrImageNeverPull",
                    message: format!(
                        "Container image \"{reference}\" is not present with pull policy of Never"
                    ),
                });
            }
            PullDecision::Pull => self.pull_for(pod, &obj, &reference).await?,
        };
        Ok(Ensured {
            starting: self.starting(&image.id),
            image,
        })
    }

    fn starting(&self, id: &str) -> Starting {
        *lock(&self.shared.starting)
            .entry(id.to_owned())
            .or_default() += 1;
        Starting {
            shared: self.shared.clone(),
            id: id.to_owned(),
        }
    }

    async fn pull_for(
        &self,
        pod: &Pod,
        obj: &Involved,
        reference: &str,
    ) -> Result<Image, StartError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let key = format!("{uid}_{reference}");
        let now = Instant::now();
        let rx = {
            let mut entries = lock(&self.shared.entries);
            let entry = entries.entry(key.clone()).or_insert(Entry {
                phase: Phase::Idle,
                backoff: PullBackoff::default(),
            });
            let in_flight = match &mut entry.phase {
                Phase::Pulling(rx) => Some(rx.clone()),
                Phase::Failed { message, reported } if !*reported => {
                    *reported = true;
                    return Err(err_image_pull(message.clone()));
                }
                Phase::Failed { message, .. } if entry.backoff.remaining(now).is_some() => {
                    let msg = format!("Back-off pulling image \"{reference}\"");
                    self.shared
                        .store
                        .event(obj, EventType::Normal, "BackOff", &msg);
                    return Err(StartError::ImageMissing {
                        reason: "ImagePullBackOff",
                        message: format!("{msg}: {message}"),
                    });
                }
                _ => None,
            };
            match in_flight {
                Some(rx) => rx,
                None => {
                    let rx = self.spawn_pull(pod, obj, &key, reference);
                    entry.phase = Phase::Pulling(rx.clone());
                    rx
                }
            }
        };
        self.wait(rx, &key, reference).await
    }

    /// Waits up to [`PULL_WAIT`] for a pull's outcome.
    async fn wait(
        &self,
        mut rx: watch::Receiver<Outcome>,
        key: &str,
        reference: &str,
    ) -> Result<Image, StartError> {
        let outcome = tokio::time::timeout(PULL_WAIT, rx.wait_for(Option::is_some)).await;
        match outcome {
            Ok(Ok(done)) => match done.clone() {
                Some(Ok(image)) => Ok(image),
                Some(Err(message)) => {
                    if let Some(Entry {
                        phase: Phase::Failed { reported, .. },
                        ..
                    }) = lock(&self.shared.entries).get_mut(key)
                    {
                        *reported = true;
                    }
                    Err(err_image_pull(message))
                }
                None => Err(pulling(reference)),
            },
            // Still pulling (or the task was aborted at shutdown).
            _ => Err(pulling(reference)),
        }
    }

    fn spawn_pull(
        &self,
        pod: &Pod,
        obj: &Involved,
        key: &str,
        reference: &str,
    ) -> watch::Receiver<Outcome> {
        let (tx, rx) = watch::channel(None);
        let credentials = self.pod_credentials(pod, obj);
        let shared = self.shared.clone();
        let (obj, key, reference) = (obj.clone(), key.to_owned(), reference.to_owned());
        shared.store.event(
            &obj,
            EventType::Normal,
            "Pulling",
            &format!("Pulling image \"{reference}\""),
        );
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let started = Instant::now();
            let options = PullOptions {
                credentials,
                progress: None,
            };
            let result = shared.puller.pull(&reference, &options).await;
            crate::metrics::get().image_pulled(started.elapsed(), result.is_ok());
            let took = go_duration(started.elapsed());
            let outcome = {
                let mut entries = lock(&shared.entries);
                let entry = entries.entry(key).or_insert(Entry {
                    phase: Phase::Idle,
                    backoff: PullBackoff::default(),
                });
                match result {
                    Ok(image) => {
                        let msg = format!(
                            "Successfully pulled image \"{reference}\" in {took} ({took} including waiting). Image size: {} bytes.",
                            image.size
                        );
                        shared.store.event(&obj, EventType::Normal, "Pulled", &msg);
                        shared.note_pulled(&image);
                        entry.phase = Phase::Idle;
                        entry.backoff = PullBackoff::default();
                        Ok(image)
                    }
                    Err(e) => {
                        let message = e.to_string();
                        warn!(image = %reference, pod = %obj.name, namespace = %obj.namespace, error = %message, "image pull failed");
                        let msg = format!("Failed to pull image \"{reference}\": {message}");
                        shared.store.event(&obj, EventType::Warning, "Failed", &msg);
                        entry.phase = Phase::Failed {
                            message: message.clone(),
                            reported: false,
                        };
                        entry.backoff.failed(Instant::now());
                        Err(message)
                    }
                }
            };
            let _ = tx.send(Some(outcome));
            // A start still waiting takes the result itself; otherwise wake the workers (not
            // both: an immediate resync would turn `ErrImagePull` into `ImagePullBackOff` at
            // once, where the kubelet shows it until its next sync).
            if tx.receiver_count() == 0 {
                let _ = shared.resync.send(());
            }
        });
        rx
    }

    /// Credentials from the pod's `imagePullSecrets` (the node's `config.json` is the puller's).
    fn pod_credentials(&self, pod: &Pod, obj: &Involved) -> Credentials {
        let mut creds = Credentials::new();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let names = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone());
        let mut missing = Vec::new();
        for name in names {
            let Some(secret) = self.shared.store.secret(ns, &name) else {
                missing.push(name);
                continue;
            };
            match secret_credentials(&secret, &format!("secret {ns}/{name}")) {
                Ok(c) => creds.extend(c),
                Err(e) => {
                    warn!(secret = %name, namespace = %ns, error = %e, "unusable image pull secret");
                    self.shared.store.event(
                        obj,
                        EventType::Warning,
                        "FailedToRetrieveImagePullSecret",
                        &e,
                    );
                }
            }
        }
        if !missing.is_empty() {
            // The kubelet's wording: the pull is still tried, maybe anonymously.
            let msg = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.shared.store.event(
                obj,
                EventType::Warning,
                "FailedToRetrieveImagePullSecret",
                &msg,
            );
        }
        creds
    }

    /// Forgets pull state of pods that are gone.
    fn forget_gone_pods(&self) {
        let live: HashSet<String> = self
            .shared
            .store
            .pods()
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect();
        lock(&self.shared.entries).retain(|k, e| {
            matches!(e.phase, Phase::Pulling(_))
                || k.split_once('_').is_some_and(|(uid, _)| live.contains(uid))
        });
    }

    /// Image ids to keep: those of `container_images` (`repo@digest` or ids, as container
    /// records and pod statuses hold them), of every container in a pod status, and of
    /// containers being created.
    fn keep(&self, container_images: &[String]) -> Result<HashSet<String>, images::Error> {
        let mut refs: Vec<String> = container_images.to_vec();
        for p in self.shared.store.pods() {
            let statuses = p.status.into_iter().flat_map(|s| {
                s.container_statuses
                    .into_iter()
                    .flatten()
                    .chain(s.init_container_statuses.into_iter().flatten())
            });
            refs.extend(statuses.map(|c| c.image_id).filter(|i| !i.is_empty()));
        }
        let mut keep: HashSet<String> = lock(&self.shared.starting).keys().cloned().collect();
        for image in self.images().list()? {
            let digest = format!("@{}", image.manifest_digest);
            if refs.iter().any(|r| *r == image.id || r.ends_with(&digest)) {
                keep.insert(image.id);
            }
        }
        Ok(keep)
    }

    /// The kubelet's image GC: by disk thresholds, least recently used first, never an image
    /// in use. Blocking.
    pub fn gc(&self, container_images: &[String]) -> Result<PruneReport, images::Error> {
        self.forget_gone_pods();
        // The kubelet's rule: a high threshold of 100 disables image GC.
        if self.gc_policy.high_threshold_percent >= 100 {
            return Ok(PruneReport::default());
        }
        let mut keep = self.keep(container_images)?;
        let now = Instant::now();
        keep.extend(
            lock(&self.shared.pulled)
                .iter()
                .filter(|(_, at)| now.duration_since(**at) < GC_MIN_AGE)
                .map(|(id, _)| id.clone()),
        );
        let report = self.images().prune(&keep, &self.gc_policy)?;
        if !report.removed.is_empty() {
            info!(removed = ?report.removed, freed = report.freed, "image garbage collection");
        }
        Ok(report)
    }

    /// Removes every image no container uses (`skiff image prune`). Blocking.
    pub fn prune_unused(&self, container_images: &[String]) -> Result<PruneReport, images::Error> {
        let keep = self.keep(container_images)?;
        let report = self.images().prune_unused(&keep)?;
        info!(removed = ?report.removed, freed = report.freed, "images pruned");
        Ok(report)
    }
}

fn err_image_pull(message: String) -> StartError {
    StartError::ImageMissing {
        reason: "ErrImagePull",
        message,
    }
}

fn pulling(reference: &str) -> StartError {
    debug!(image = %reference, "pull still in progress");
    StartError::ImageMissing {
        reason: PULLING,
        message: format!("Pulling image \"{reference}\""),
    }
}

/// Registry credentials of a `kubernetes.io/dockerconfigjson` (or legacy
/// `kubernetes.io/dockercfg`) Secret.
pub fn secret_credentials(
    secret: &k8s_openapi::api::core::v1::Secret,
    origin: &str,
) -> Result<Credentials, String> {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    let key = match type_ {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        other => {
            return Err(format!(
                "{origin}: type {other} is not kubernetes.io/dockerconfigjson"
            ));
        }
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| format!("{origin}: no {key} key"))?;
    Credentials::from_docker_config(&bytes, origin).map_err(|e| e.to_string())
}

/// A duration as Go prints a `time.Duration` truncated to milliseconds (`1.234s`, `523ms`,
/// `1m2.5s`), as in the kubelet's `Pulled` event.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let frac = |ms: u64| {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    let (h, m, rest) = (ms / 3_600_000, (ms / 60_000) % 60, ms % 60_000);
    match (h, m) {
        (0, 0) => format!("{}s", frac(rest)),
        (0, m) => format!("{m}m{}s", frac(rest)),
        (h, m) => format!("{h}h{m}m{}s", frac(rest)),
    }
}

/// Runs image GC every [`GC_PERIOD`] and on request until `shutdown`. `container_images`
/// lists the images of all containers on disk (see [`super::Runtime::container_images`]).
pub async fn gc_loop(
    service: Arc<ImageService>,
    container_images: impl Fn() -> Vec<String> + Send + Sync + 'static,
    mut requests: mpsc::UnboundedReceiver<()>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let container_images = Arc::new(container_images);
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(GC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
            Some(()) = requests.recv() => {
                // Several pulls in a row ask once.
                while requests.try_recv().is_ok() {}
            }
        }
        let (svc, list) = (service.clone(), container_images.clone());
        let result = tokio::task::spawn_blocking(move || svc.gc(&list())).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "image garbage collection failed"),
            Err(e) => warn!(error = %e, "image garbage collection task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_the_kubelets() {
        let t0 = Instant::now();
        let mut b = PullBackoff::default();
        assert_eq!(b.remaining(t0), None);
        b.failed(t0);
        assert_eq!(b.remaining(t0), Some(Duration::from_secs(10)));
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            t += Duration::from_secs(1);
            b.failed(t);
            delays.push(b.remaining(t).unwrap().as_secs());
        }
        assert_eq!(delays, [20, 40, 80, 160, 300, 300, 300]);
        // Quiet for longer than twice the maximum: start over.
        let later = t + Duration::from_secs(601);
        assert_eq!(b.remaining(later), None);
        b.failed(later);
        assert_eq!(b.remaining(later), Some(Duration::from_secs(10)));
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_micros(300)), "0s");
        assert_eq!(go_duration(Duration::from_millis(523)), "523ms");
        assert_eq!(go_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(go_duration(Duration::from_millis(1234)), "1.234s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(62_500)), "1m2.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn pull_secret_credentials() {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::Secret;
        let auth = r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#;
        let mut s = Secret {
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some([(".dockerconfigjson".to_string(), ByteString(auth.into()))].into()),
            ..Default::default()
        };
        let c = secret_credentials(&s, "secret default/reg").unwrap();
        let found = c.matching("127.0.0.1:5000", "test/busybox");
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].username.as_str(), found[0].password.as_str()),
            ("user", "pass")
        );
        s.type_ = Some("Opaque".into());
        let err = secret_credentials(&s, "secret default/reg").unwrap_err();
        assert!(
            err.contains("secret default/reg") && err.contains("Opaque"),
            "{err}"
        );
        s.type_ = Some("kubernetes.io/dockerconfigjson".into());
        s.data = None;
        assert!(
            secret_credentials(&s, "x")
                .unwrap_err()
                .contains(".dockerconfigjson")
        );
    }
}
