//! Starts, replaces and stops pod workers as the desired set changes, and
//! finds what a previous skiffd left behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::worker::{self, Ctx, Msg};
use crate::kube::name::PodKey;
use crate::manifest::source::{Snapshot, SourceError};
use crate::store::{EventType, Involved};

struct Entry {
    uid: String,
    /// The containers' images the worker was last given.
    images: Vec<(String, Option<String>)>,
    tx: mpsc::UnboundedSender<Msg>,
    handle: JoinHandle<()>,
}

/// The images of a pod's containers, init containers first (what an API update may change).
fn images_of(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<(String, Option<String>)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect()
}

/// The pod manager.
pub struct Manager {
    ctx: Arc<Ctx>,
    workers: HashMap<PodKey, Entry>,
    /// Workers of pods being removed, until they are done.
    leaving: Vec<(mpsc::UnboundedSender<Msg>, JoinHandle<()>)>,
    reported: Vec<SourceError>,
    adopted: bool,
    /// Pods refused at admission (by UID), shown as Failed and never retried,
    /// like the kubelet; a new version of the manifest is judged afresh.
    refused: HashMap<PodKey, String>,
}

impl Manager {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Manager {
            ctx,
            workers: HashMap::new(),
            leaving: Vec::new(),
            reported: Vec::new(),
            adopted: false,
            refused: HashMap::new(),
        }
    }

    /// Brings the running set in line with `snapshot`.
    pub fn apply(&mut self, snapshot: Snapshot) {
        self.report(&snapshot.errors);
        let config_changed = self
            .ctx
            .store
            .set_config(snapshot.config_maps.clone(), snapshot.secrets.clone());
        self.ctx
            .store
            .set_desired_services(snapshot.services.clone(), snapshot.endpoints.clone());
        self.ctx
            .store
            .set_manifest_workloads(snapshot.workloads.clone());
        if !self.adopted {
            self.adopted = true;
            self.reap_orphans(&snapshot);
        }
        self.refused.retain(|k, uid| {
            snapshot
                .pods
                .get(k)
                .is_some_and(|d| d.uid() == uid.as_str())
        });
        for (key, desired) in &snapshot.pods {
            let uid = desired.uid().to_string();
            match self.workers.get_mut(key) {
                Some(e) if e.uid == uid => {
                    let images = images_of(&desired.pod);
                    if images != e.images {
                        e.images = images;
                        let _ = e.tx.send(Msg::Update(Box::new(desired.pod.clone())));
                    }
                    continue;
                }
                _ => {}
            }
            if self.refused.get(key) == Some(&uid) {
                continue;
            }
            if let Err((reason, message)) = self.admit(key, &desired.pod) {
                warn!(pod = %key.1, namespace = %key.0, reason = %reason, "pod rejected at admission");
                let mut pod = desired.pod.clone();
                pod.metadata.creation_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                );
                pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some("Failed".into()),
                    reason: Some(reason.clone()),
                    message: Some(message.clone()),
                    qos_class: Some(crate::runtime::resources::qos_class(&pod).into()),
                    ..Default::default()
                });
                let obj = Involved::pod(&pod);
                if let Some(old) = self.workers.remove(key) {
                    let _ = old.tx.send(Msg::Terminate);
                    self.leaving.push((old.tx, old.handle));
                }
                self.ctx.store.put_pod(pod, true);
                self.ctx
                    .store
                    .event(&obj, EventType::Warning, &reason, &message);
                self.refused.insert(key.clone(), uid);
                continue;
            }
            let previous = self.workers.remove(key).map(|old| {
                info!(pod = %key.1, namespace = %key.0, "manifest changed; replacing pod");
                let _ = old.tx.send(Msg::Terminate);
                old.handle
            });
            let mut pod = desired.pod.clone();
            pod.metadata.creation_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            );
            if let Some(saved) = self.ctx.runtime.load_pod(&uid) {
                pod.metadata.creation_timestamp = saved.metadata.creation_timestamp;
            }
            if previous.is_none() {
                info!(pod = %key.1, namespace = %key.0, uid = %uid, "pod added");
            }
            // Show the new pod at once; the worker fills in its status.
            let mut shown = pod.clone();
            shown.status = Some(worker::initial_status(&pod));
            self.ctx.store.put_pod(shown, true);
            let (tx, handle) = worker::spawn(self.ctx.clone(), pod, previous);
            let images = images_of(&desired.pod);
            self.workers.insert(
                key.clone(),
                Entry {
                    uid,
                    images,
                    tx,
                    handle,
                },
            );
        }
        let gone: Vec<PodKey> = self
            .workers
            .keys()
            .filter(|k| !snapshot.pods.contains_key(*k))
            .cloned()
            .collect();
        // Refused pods whose manifest went away just disappear.
        for pod in self.ctx.store.list_pods(None) {
            let key = crate::store::key_of(&pod);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let failed_admission = pod
                .status
                .as_ref()
                .and_then(|s| s.reason.as_deref())
                .is_some_and(|r| {
                    r.starts_with("OutOf")
                        || ["SysctlForbidden", "NodeAffinity", "AppArmor"].contains(&r)
                });
            if failed_admission
                && !self.workers.contains_key(&key)
                && !snapshot.pods.contains_key(&key)
            {
                self.ctx.store.remove_pod(&key, &uid);
            }
        }
        for key in gone {
            if let Some(old) = self.workers.remove(&key) {
                info!(pod = %key.1, namespace = %key.0, "manifest removed; stopping pod");
                let _ = old.tx.send(Msg::Terminate);
                self.leaving.push((old.tx, old.handle));
            }
        }
        self.leaving.retain(|(_, h)| !h.is_finished());
        if config_changed {
            // Mounted ConfigMaps and Secrets are updated in place; waiting pods may start.
            self.resync_all();
        }
    }

    /// The kubelet's admission: the pod's requests must fit what the node
    /// has left after the pods already admitted; sysctls must be allowed; the node must
    /// match its node selector and required affinity; AppArmor must be there if asked for.
    fn admit(
        &self,
        key: &PodKey,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Result<(), (String, String)> {
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        for s in spec
            .security_context
            .iter()
            .flat_map(|s| s.sysctls.iter().flatten())
        {
            if !crate::runtime::security::is_namespaced_sysctl(&s.name, host_network) {
                return Err((
                    "SysctlForbidden".into(),
                    format!(
                        "Pod was rejected: forbidden sysctl: {:?} not allowlisted",
                        s.name
                    ),
                ));
            }
        }
        let rejected =
            |r: super::admission::Refusal| (r.reason, format!("Pod was rejected: {}", r.message));
        let labels = self.ctx.store.node_labels();
        super::admission::node_affinity(pod, self.ctx.store.node_name(), &labels)
            .map_err(rejected)?;
        super::admission::apparmor(pod, super::admission::host_apparmor_enabled())
            .map_err(rejected)?;
        super::admission::extended_resources(pod).map_err(rejected)?;
        let (want_cpu, want_mem) = crate::runtime::resources::pod_requests(pod);
        let (used_cpu, used_mem) = self
            .ctx
            .store
            .list_pods(None)
            .iter()
            .filter(|p| crate::store::key_of(p) != *key)
            .filter(|p| self.workers.contains_key(&crate::store::key_of(p)))
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded") | Some("Failed")
                )
            })
            .map(crate::runtime::resources::pod_requests)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let (cap_cpu, cap_mem) = crate::node::allocatable();
        if want_cpu > 0 && used_cpu + want_cpu > cap_cpu {
            return Err((
                "OutOfcpu".into(),
                format!(
                    "Pod was rejected: Node didn't have enough resource: cpu, requested: {want_cpu}, used: {used_cpu}, capacity: {cap_cpu}"
                ),
            ));
        }
        if want_mem > 0 && used_mem + want_mem > cap_mem {
            return Err((
                "OutOfmemory".into(),
                format!(
                    "Pod was rejected: Node didn't have enough resource: memory, requested: {want_mem}, used: {used_mem}, capacity: {cap_mem}"
                ),
            ));
        }
        Ok(())
    }

    /// Pods on disk that no manifest asks for any more are stopped and removed.
    fn reap_orphans(&mut self, snapshot: &Snapshot) {
        let wanted: HashSet<&str> = snapshot.pods.values().map(|d| d.uid()).collect();
        // Network attachments of pods that no longer exist at all (e.g. a
        // crash between CNI ADD and writing the pod's state) are freed now;
        // pods being removed below DEL their own.
        let on_disk = self.ctx.runtime.pods_on_disk();
        self.ctx.runtime.gc_network(&on_disk);
        for uid in self.ctx.runtime.pods_on_disk() {
            if wanted.contains(uid.as_str()) {
                continue;
            }
            match self.ctx.runtime.load_pod(&uid) {
                Some(pod) => {
                    info!(uid = %uid, pod = ?pod.metadata.name, "removing pod left by a previous run");
                    let handle = worker::spawn_removal(self.ctx.clone(), pod);
                    self.leaving.push((mpsc::unbounded_channel().0, handle));
                }
                None => {
                    warn!(uid = %uid, "removing unreadable pod state");
                    for found in self.ctx.runtime.list_containers(&uid) {
                        if let Some(shim) = &found.shim {
                            shim.signal(libc::SIGKILL);
                        }
                    }
                    let _ = self.ctx.runtime.remove_sandbox(&uid);
                    let _ = self.ctx.runtime.remove_pod_state(&uid);
                }
            }
        }
    }

    /// Logs and records new manifest errors once, and tells the store which pods were refused.
    fn report(&mut self, errors: &[SourceError]) {
        let mut rejected = BTreeMap::new();
        for e in errors {
            if let Some(o) = &e.object {
                rejected.insert((o.namespace.clone(), o.name.clone()), e.to_string());
            }
            if self.reported.contains(e) {
                continue;
            }
            warn!(file = %e.file.display(), object = ?e.object.as_ref().map(|o| o.to_string()), error = %e.message, "manifest rejected");
            let involved = match &e.object {
                Some(o) => Involved {
                    kind: o.kind.clone(),
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    uid: None,
                },
                None => Involved {
                    kind: "Manifest".into(),
                    namespace: "default".into(),
                    name: e
                        .file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    uid: None,
                },
            };
            self.ctx.store.event(
                &involved,
                EventType::Warning,
                "FailedManifest",
                &e.to_string(),
            );
        }
        self.ctx.store.set_rejected(rejected);
        self.reported = errors.to_vec();
    }

    /// Asks every worker to re-check what it waits for.
    pub fn resync_all(&self) {
        for e in self.workers.values() {
            let _ = e.tx.send(Msg::Resync);
        }
    }

    /// Stops the workers without touching their containers (they keep
    /// running and are adopted by the next skiffd), like a kubelet restart.
    pub async fn detach(self) {
        // Pods half-way through removal are found again as orphans by the next skiffd.
        for e in self.workers.into_values() {
            e.handle.abort();
        }
        for (_, h) in self.leaving {
            h.abort();
        }
    }
}

/// Runs the manager on snapshots until the channel closes; `resync` asks for a pass over
/// every pod. `complete` adds to each snapshot, just before it is applied, what is not in the
/// manifest directory (the objects made through the API, as they are at that moment).
pub async fn run(
    mut manager: Manager,
    mut snapshots: mpsc::Receiver<Snapshot>,
    complete: impl Fn(Snapshot) -> Snapshot,
    mut resync: mpsc::UnboundedReceiver<()>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            snap = snapshots.recv() => match snap {
                Some(s) => manager.apply(complete(s)),
                None => break,
            },
            Some(()) = resync.recv() => manager.resync_all(),
            _ = &mut shutdown => break,
        }
    }
    manager.detach().await;
}
