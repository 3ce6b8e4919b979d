//! The in-process object store: pods with their status and the event stream.
//! Workers write status here; the API reads from it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, EventSource, Namespace, NamespaceSpec, NamespaceStatus, ObjectReference, Pod,
    PodCondition, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::kube::name::PodKey;

/// Most events kept; older ones are dropped first, like the API server's TTL.
const MAX_EVENTS: usize = 2000;

/// Pod changes kept for watches that resume from a `resourceVersion`; an older version gets
/// 410 Gone, as from the apiserver's watch cache.
pub const POD_HISTORY: usize = 1000;

/// Pod changes a watcher may fall behind by before it is dropped (it then relists, as
/// client-go does); skiffd never waits for a slow reader.
pub const WATCH_BUFFER: usize = 1024;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Added,
    Modified,
    Deleted,
}

impl WatchKind {
    /// The name in a watch stream.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::Added => "ADDED",
            WatchKind::Modified => "MODIFIED",
            WatchKind::Deleted => "DELETED",
        }
    }
}

/// One change of a pod, at the resourceVersion it made.
#[derive(Debug, Clone)]
pub struct PodEvent {
    pub kind: WatchKind,
    pub rv: u64,
    pub pod: Arc<Pod>,
}

/// A pod watch as [`Store::watch_pods`] starts it: nothing is missed or repeated between
/// `initial`/`backlog` and what `rx` receives.
pub struct PodWatch {
    /// Every pod at `rv`, when no version to resume from was given.
    pub initial: Vec<Pod>,
    /// Changes after the requested version up to `rv`.
    pub backlog: Vec<Arc<PodEvent>>,
    /// The store's resourceVersion when the watch started.
    pub rv: u64,
    /// Later changes.
    pub rx: broadcast::Receiver<Arc<PodEvent>>,
}

/// A resourceVersion older than the kept history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Gone {
    pub requested: u64,
    /// The oldest version a watch can resume from.
    pub oldest: u64,
}

// moved to kube/events.rs; re-exported for callers not yet updated
pub use crate::kube::events::{EventType, Involved};

/// The annotation saying where an object came from: `api`, or `manifest:<file>`.
pub const SOURCE_ANNOTATION: &str = "skiff.dev/source";

/// Namespaces that always exist, as on an apiserver.
pub const BUILTIN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// `(plural, namespace, name)` of an object made through the API; the namespace is empty for
/// cluster-scoped kinds.
pub type ObjKey = (String, String, String);

/// Kinds whose watch history the API object store keeps itself (the others are recorded
/// where they are served from).
const SELF_WATCHED: [&str; 9] = [
    "namespaces",
    "deployments",
    "replicasets",
    "replicationcontrollers",
    "horizontalpodautoscalers",
    "jobs",
    "cronjobs",
    "daemonsets",
    "controllerrevisions",
];

mod cluster;
mod views;
mod workloads;

pub use views::Views;

/// One change of any kind's object, at the resourceVersion it made.
#[derive(Debug, Clone)]
pub struct ObjEvent {
    pub kind: WatchKind,
    pub rv: u64,
    pub object: Arc<Value>,
}

/// A watch of one kind as [`Store::watch_kind`] starts it (see [`PodWatch`]).
pub struct KindWatch {
    pub initial: Vec<Value>,
    pub backlog: Vec<Arc<ObjEvent>>,
    pub rv: u64,
    pub rx: broadcast::Receiver<(String, Arc<ObjEvent>)>,
}

#[derive(Default)]
struct Inner {
    /// Objects made through the API (the desired state; also on disk), by kind.
    api_objects: BTreeMap<ObjKey, Value>,
    /// Per-kind change history (not pods: see `pod_history`), oldest first.
    kind_history: BTreeMap<String, VecDeque<Arc<ObjEvent>>>,
    /// The built-in namespaces as served.
    builtin_namespaces: BTreeMap<String, Namespace>,
    /// The one monotonic counter behind every object's and list's `resourceVersion`.
    resource_version: u64,
    /// The last [`POD_HISTORY`] pod changes, oldest first.
    pod_history: VecDeque<Arc<PodEvent>>,
    pods: BTreeMap<PodKey, Pod>,
    /// Pods whose worker is done but whose API object finalizers still hold: served, terminal,
    /// until the last finalizer goes (see [`Store::delete_api_object`]), with their UIDs.
    held_pods: BTreeMap<PodKey, String>,
    /// Conditions clients set through `pods/status`, by pod UID: laid over every status the
    /// pod's worker publishes (see [`crate::kube::pod_conditions`]).
    client_conditions: BTreeMap<String, Vec<PodCondition>>,
    /// Why a named pod from the manifests is not running (shown in 404s).
    rejected: BTreeMap<PodKey, String>,
    config_maps: BTreeMap<PodKey, ConfigMap>,
    secrets: BTreeMap<PodKey, Secret>,
    desired_services: BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Service>>,
    manual_endpoints: BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Endpoints>>,
    service_views: Views,
    events: Vec<Event>,
    next_event: u64,
    /// Node conditions reported by skiffd's parts: type -> (status, reason, message, since).
    node_conditions: BTreeMap<String, NodeCondition>,
    /// What the other nodes of the cluster published (multi-host).
    remote: Remote,
    /// (pod CIDR, InternalIP) of this node.
    node_network: (Option<String>, Option<String>),
    /// `--node-labels`.
    node_labels: BTreeMap<String, String>,
    /// Workloads from the manifest directory as served (with their status).
    manifest_workloads: BTreeMap<ObjKey, Value>,
}

/// The cluster as the other nodes published it in etcd.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remote {
    /// Services defined on other nodes, with their cluster-wide addresses.
    pub services: BTreeMap<PodKey, k8s_openapi::api::core::v1::Service>,
    /// Other nodes' pods, as endpoints need them (IP, labels, readiness, ports).
    pub pods: Vec<Pod>,
    /// Other nodes' Node objects.
    pub nodes: Vec<serde_json::Value>,
}

/// One node condition as a part of skiffd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    pub status: bool,
    pub reason: String,
    pub message: String,
    /// When the status last changed.
    pub since: Timestamp,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: RwLock<Inner>,
    node_name: String,
    changed: watch::Sender<u64>,
    pod_changes: broadcast::Sender<Arc<PodEvent>>,
    /// Changes of every other kind, with the kind's plural.
    kind_changes: broadcast::Sender<(String, Arc<ObjEvent>)>,
    /// Bumped after every change of an API-made object.
    api_changed: watch::Sender<u64>,
    /// Bumped each time the service controller publishes its views.
    views_published: watch::Sender<u64>,
    /// `<root-dir>/objects`, once [`Store::load_objects`] ran.
    objects_dir: OnceLock<PathBuf>,
    /// Multi-host (`--etcd-endpoints`): controllers' pods are left unbound for the cluster
    /// scheduler and only pods bound to this node run here.
    clustered: std::sync::atomic::AtomicBool,
    /// Multi-host: the node the controllers' lease names, as the cluster mirror last read it
    /// (this node's own name only once it acts as leader).
    cluster_leader: std::sync::Mutex<Option<String>>,
}

impl Store {
    pub fn new(node_name: impl Into<String>) -> Self {
        let mut inner = Inner::default();
        let now = Time(Timestamp::now());
        for name in BUILTIN_NAMESPACES {
            inner.resource_version += 1;
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    uid: Some(random_uid()),
                    creation_timestamp: Some(now.clone()),
                    resource_version: Some(inner.resource_version.to_string()),
                    labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        name.to_string(),
                    )])),
                    ..Default::default()
                },
                spec: Some(NamespaceSpec {
                    finalizers: Some(vec!["kubernetes".into()]),
                }),
                status: Some(NamespaceStatus {
                    phase: Some("Active".into()),
                    ..Default::default()
                }),
            };
            inner.builtin_namespaces.insert(name.into(), ns);
        }
        Self {
            inner: RwLock::new(inner),
            node_name: node_name.into(),
            changed: watch::channel(0).0,
            pod_changes: broadcast::channel(WATCH_BUFFER).0,
            kind_changes: broadcast::channel(WATCH_BUFFER).0,
            api_changed: watch::channel(0).0,
            views_published: watch::channel(0).0,
            objects_dir: OnceLock::new(),
            clustered: std::sync::atomic::AtomicBool::new(false),
            cluster_leader: std::sync::Mutex::new(None),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Marks the store as one node's part of a multi-host cluster.
    pub fn set_clustered(&self, on: bool) {
        self.clustered
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this node is part of a multi-host cluster (see [`Store::set_clustered`]).
    pub fn clustered(&self) -> bool {
        self.clustered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records which node leads the cluster's controllers (`None`: unknown, or no leader).
    pub fn set_cluster_leader(&self, node: Option<String>) {
        *self
            .cluster_leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = node;
    }

    /// The node that leads the cluster's controllers (see [`Store::set_cluster_leader`]).
    pub fn cluster_leader(&self) -> Option<String> {
        self.cluster_leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a pod, unless a different pod (another UID) now owns the name.
    pub fn put_pod(&self, pod: Pod, replace_other_uid: bool) -> bool {
        let key = key_of(&pod);
        let mut inner = self.write();
        if let Some(existing) = inner.pods.get(&key)
            && existing.metadata.uid != pod.metadata.uid
            && !replace_other_uid
        {
            return false;
        }
        inner.rejected.remove(&key);
        let mut pod = pod;
        // A deletion, once asked for, stays: a worker publishing its status from its own copy
        // of the pod does not take back the API's deletionTimestamp and grace period.
        if let Some(old) = inner.pods.get(&key)
            && old.metadata.uid == pod.metadata.uid
            && old.metadata.deletion_timestamp.is_some()
            && pod.metadata.deletion_timestamp.is_none()
        {
            pod.metadata.deletion_timestamp = old.metadata.deletion_timestamp.clone();
            pod.metadata.deletion_grace_period_seconds = old.metadata.deletion_grace_period_seconds;
        }
        let previous = inner
            .pods
            .get(&key)
            .filter(|old| old.metadata.uid == pod.metadata.uid)
            .and_then(|old| old.status.as_ref());
        Self::lay_client_conditions(&inner, &mut pod, previous);
        match inner.pods.get(&key) {
            Some(old) if same_pod(old, &pod) => {
                pod.metadata.resource_version = old.metadata.resource_version.clone();
            }
            Some(old) if old.metadata.uid != pod.metadata.uid => {
                let old = old.clone();
                Self::forget_pod(&mut inner, &key);
                self.record(&mut inner, WatchKind::Deleted, old);
                self.record(&mut inner, WatchKind::Added, &mut pod);
            }
            Some(_) => self.record(&mut inner, WatchKind::Modified, &mut pod),
            None => self.record(&mut inner, WatchKind::Added, &mut pod),
        }
        inner.pods.insert(key, pod);
        drop(inner);
        self.bump();
        true
    }

    /// Shows a pod just made through the API, unless the pod manager has already published
    /// one under its name: the manager may refuse or start the pod between the API's write and
    /// this call, and its status (`Failed` at admission, `Running`) must not be taken back by
    /// the API's first `Pending`. Returns whether the pod was added.
    pub fn add_pod(&self, pod: Pod) -> bool {
        let key = key_of(&pod);
        let mut inner = self.write();
        if inner.pods.contains_key(&key) {
            return false;
        }
        inner.rejected.remove(&key);
        let mut pod = pod;
        self.record(&mut inner, WatchKind::Added, &mut pod);
        inner.pods.insert(key, pod);
        drop(inner);
        self.bump();
        true
    }

    /// Gives `pod` the next resourceVersion and tells pod watchers. Called with the write
    /// lock held, so history and broadcast order are the store's order.
    fn record(
        &self,
        inner: &mut Inner,
        kind: WatchKind,
        mut pod: impl std::borrow::BorrowMut<Pod>,
    ) {
        inner.resource_version += 1;
        let rv = inner.resource_version;
        let pod = pod.borrow_mut();
        pod.metadata.resource_version = Some(rv.to_string());
        let event = Arc::new(PodEvent {
            kind,
            rv,
            pod: Arc::new(pod.clone()),
        });
        if inner.pod_history.len() >= POD_HISTORY {
            inner.pod_history.pop_front();
        }
        inner.pod_history.push_back(event.clone());
        // No receiver is not an error; a full receiver lags and is dropped by its reader.
        let _ = self.pod_changes.send(event);
    }

    /// The store's current resourceVersion (of lists).
    pub fn resource_version(&self) -> u64 {
        self.read().resource_version
    }

    /// Pods of one namespace (or all) and the resourceVersion they are at, read together.
    pub fn list_pods_at(&self, namespace: Option<&str>) -> (Vec<Pod>, u64) {
        let inner = self.read();
        let pods = inner
            .pods
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, p)| p.clone())
            .collect();
        (pods, inner.resource_version)
    }

    /// Starts a pod watch: from `since` (changes after it; [`Gone`] when they are no longer
    /// kept), or, without it, from every pod now.
    pub fn watch_pods(&self, since: Option<u64>) -> Result<PodWatch, Gone> {
        // The write lock: no change can come between the snapshot and the subscription.
        let inner = self.write();
        let rx = self.pod_changes.subscribe();
        let rv = inner.resource_version;
        let Some(since) = since else {
            return Ok(PodWatch {
                initial: inner.pods.values().cloned().collect(),
                backlog: Vec::new(),
                rv,
                rx,
            });
        };
        // The oldest version a watch can resume from: the one before the first kept change.
        let oldest = inner.pod_history.front().map_or(rv, |e| e.rv - 1);
        if since < oldest {
            return Err(Gone {
                requested: since,
                oldest,
            });
        }
        let backlog = inner
            .pod_history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        Ok(PodWatch {
            initial: Vec::new(),
            backlog,
            rv,
            rx,
        })
    }

    /// Lays the conditions clients set on `pod` (by its UID) over its status and holds
    /// `Ready` False while a readiness gate is not True, as the kubelet does.
    fn lay_client_conditions(inner: &Inner, pod: &mut Pod, previous: Option<&PodStatus>) {
        let client = pod
            .metadata
            .uid
            .as_ref()
            .and_then(|u| inner.client_conditions.get(u))
            .map(Vec::as_slice)
            .unwrap_or_default();
        crate::kube::pod_conditions::merge(pod, client, &[], previous);
    }

    /// Replaces the conditions clients set on a pod (`pods/status` writes) if it still has
    /// this UID; conditions of types no longer set go. Returns the pod as served after, or
    /// `None` when the pod is gone or another UID has the name.
    pub fn set_client_conditions(
        &self,
        key: &PodKey,
        uid: &str,
        conditions: Vec<PodCondition>,
    ) -> Option<Pod> {
        let mut inner = self.write();
        let before = inner
            .pods
            .get(key)
            .filter(|p| p.metadata.uid.as_deref() == Some(uid))?
            .clone();
        let old = inner
            .client_conditions
            .insert(uid.to_string(), conditions.clone())
            .unwrap_or_default();
        let dropped: Vec<String> = old
            .into_iter()
            .map(|c| c.type_)
            .filter(|t| !conditions.iter().any(|c| &c.type_ == t))
            .collect();
        let mut pod = before.clone();
        crate::kube::pod_conditions::merge(&mut pod, &conditions, &dropped, before.status.as_ref());
        if !same_pod(&before, &pod) {
            self.record(&mut inner, WatchKind::Modified, &mut pod);
            inner.pods.insert(key.clone(), pod.clone());
            drop(inner);
            self.bump();
        }
        Some(pod)
    }

    /// Removes a pod if it still has this UID.
    pub fn remove_pod(&self, key: &PodKey, uid: &str) {
        let mut inner = self.write();
        if inner
            .pods
            .get(key)
            .is_none_or(|p| p.metadata.uid.as_deref() != Some(uid))
        {
            return;
        }
        let api_key = ("pods".to_string(), key.0.clone(), key.1.clone());
        let held = inner.api_objects.get(&api_key).is_some_and(|v| {
            v["metadata"]["uid"] == uid
                && v["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
        });
        if held {
            // Stopped, but the API object's finalizers keep it: it stays served, terminal,
            // as the apiserver keeps a pod the kubelet is done with.
            let mut pod = inner.pods.get(key).cloned().unwrap_or_default();
            let status = pod.status.get_or_insert_with(Default::default);
            if status.phase.as_deref() != Some("Succeeded") {
                status.phase = Some("Failed".into());
            }
            self.record(&mut inner, WatchKind::Modified, &mut pod);
            inner.pods.insert(key.clone(), pod);
            inner.held_pods.insert(key.clone(), uid.to_string());
        } else {
            self.drop_pod(&mut inner, key);
        }
        drop(inner);
        self.bump();
    }

    /// Removes a served pod and what the store keeps beside it (under the write lock).
    fn drop_pod(&self, inner: &mut Inner, key: &PodKey) {
        Self::forget_pod(inner, key);
        if let Some(pod) = inner.pods.remove(key) {
            self.record(inner, WatchKind::Deleted, pod);
        }
    }

    /// Forgets what the store keeps beside the served pod under `key`: its client conditions
    /// and its being held by finalizers.
    fn forget_pod(inner: &mut Inner, key: &PodKey) {
        inner.held_pods.remove(key);
        if let Some(uid) = inner.pods.get(key).and_then(|p| p.metadata.uid.clone()) {
            inner.client_conditions.remove(&uid);
        }
    }

    /// Changes a stored pod in place if it still has this UID.
    pub fn update_pod(&self, key: &PodKey, uid: &str, f: impl FnOnce(&mut Pod)) {
        let mut inner = self.write();
        let Some(p) = inner.pods.get(key) else {
            return;
        };
        if p.metadata.uid.as_deref() != Some(uid) {
            return;
        }
        let mut changed = p.clone();
        f(&mut changed);
        Self::lay_client_conditions(&inner, &mut changed, p.status.as_ref());
        if same_pod(p, &changed) {
            return;
        }
        self.record(&mut inner, WatchKind::Modified, &mut changed);
        inner.pods.insert(key.clone(), changed);
        drop(inner);
        self.bump();
    }

    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.read()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Pods of one namespace, or of all when `namespace` is `None`.
    pub fn list_pods(&self, namespace: Option<&str>) -> Vec<Pod> {
        self.read()
            .pods
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Replaces the ConfigMaps and Secrets; returns whether anything changed. Each object keeps
    /// its resourceVersion while it stays the same and gets the next one when it changes.
    pub fn set_config(
        &self,
        config_maps: BTreeMap<PodKey, ConfigMap>,
        secrets: BTreeMap<PodKey, Secret>,
    ) -> bool {
        let mut inner = self.write();
        let old = std::mem::take(&mut inner.config_maps);
        let (config_maps, a) = self.reconcile(&mut inner, "configmaps", old, config_maps);
        inner.config_maps = config_maps;
        let old = std::mem::take(&mut inner.secrets);
        let (secrets, b) = self.reconcile(&mut inner, "secrets", old, secrets);
        inner.secrets = secrets;
        drop(inner);
        let changed = a || b;
        if changed {
            self.bump();
        }
        changed
    }

    /// Services and manual Endpoints from the manifests; returns whether they changed.
    pub fn set_desired_services(
        &self,
        services: BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Service>>,
        endpoints: BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Endpoints>>,
    ) -> bool {
        let mut inner = self.write();
        let changed = inner.desired_services != services || inner.manual_endpoints != endpoints;
        inner.desired_services = services;
        inner.manual_endpoints = endpoints;
        drop(inner);
        if changed {
            self.bump();
        }
        changed
    }

    #[allow(clippy::type_complexity)]
    pub fn desired_services(
        &self,
    ) -> (
        BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Service>>,
        BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Endpoints>>,
    ) {
        let inner = self.read();
        // A manifest's Endpoints of the same name win: the file is their source of truth.
        let mut manual = inner.manual_endpoints.clone();
        for (key, e) in Self::api_endpoints(&inner) {
            manual.entry(key).or_insert(e);
        }
        (inner.desired_services.clone(), manual)
    }

    /// What the service controller computed. Does not wake watchers (the
    /// controller itself is one).
    pub fn set_service_views(&self, mut views: Views) {
        let mut inner = self.write();
        let old = std::mem::take(&mut inner.service_views);
        views.services = self.version_views(&mut inner, "services", old.services, views.services);
        views.endpoints =
            self.version_views(&mut inner, "endpoints", old.endpoints, views.endpoints);
        inner.service_views = views;
        drop(inner);
        self.views_published.send_modify(|v| *v += 1);
    }

    /// Gives each published Service or Endpoints a resourceVersion and records its changes
    /// for watchers: an unchanged object keeps its version; a changed one takes the version
    /// it brings (an object written through the API) when that is newer and one of this
    /// store's, else the next one.
    fn version_views<T>(
        &self,
        inner: &mut Inner,
        plural: &str,
        old: BTreeMap<PodKey, T>,
        new: BTreeMap<PodKey, T>,
    ) -> BTreeMap<PodKey, T>
    where
        T: Clone + PartialEq + serde::Serialize + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        let rv_of_meta = |o: &T| {
            o.metadata()
                .resource_version
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
        };
        let mut out = BTreeMap::new();
        for (key, mut obj) in new {
            let prev = old.get(&key);
            let brought = rv_of_meta(&obj);
            let prev_rv = prev.and_then(rv_of_meta);
            let same_content = prev.is_some_and(|p| {
                let (mut a, mut b) = (p.clone(), obj.clone());
                a.metadata_mut().resource_version = None;
                b.metadata_mut().resource_version = None;
                a == b
            });
            if same_content && (brought.is_none() || brought == prev_rv) {
                obj.metadata_mut().resource_version = prev_rv.map(|r| r.to_string());
                out.insert(key, obj);
                continue;
            }
            let rv = match brought {
                Some(b) if prev_rv.is_none_or(|p| b > p) && b <= inner.resource_version => b,
                _ => Self::take_rv(inner),
            };
            obj.metadata_mut().resource_version = Some(rv.to_string());
            let kind = if prev.is_some() {
                WatchKind::Modified
            } else {
                WatchKind::Added
            };
            let v = serde_json::to_value(&obj).unwrap_or_default();
            self.record_kind(inner, plural, kind, rv, v);
            out.insert(key, obj);
        }
        for (key, obj) in old {
            if !out.contains_key(&key) {
                let rv = Self::take_rv(inner);
                let mut v = serde_json::to_value(&obj).unwrap_or_default();
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                self.record_kind(inner, plural, WatchKind::Deleted, rv, v);
            }
        }
        out
    }

    /// Wakes after each publication of the service controller's views.
    pub fn subscribe_service_views(&self) -> watch::Receiver<u64> {
        self.views_published.subscribe()
    }

    pub fn services(&self, namespace: Option<&str>) -> Vec<k8s_openapi::api::core::v1::Service> {
        self.read()
            .service_views
            .services
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The Endpoints as published by the service controller, and those made through the API
    /// for which no Service exists (yet).
    pub fn endpoints(&self, namespace: Option<&str>) -> Vec<k8s_openapi::api::core::v1::Endpoints> {
        let inner = self.read();
        let views = &inner.service_views.endpoints;
        let mut out: Vec<_> = views
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| s.clone())
            .collect();
        for ((plural, ns, name), v) in &inner.api_objects {
            if plural == "endpoints"
                && namespace.is_none_or(|n| n == ns)
                && !views.contains_key(&(ns.clone(), name.clone()))
                && let Ok(e) = serde_json::from_value(v.clone())
            {
                out.push(e);
            }
        }
        out
    }

    /// Endpoints made through the API, as the service controller takes manual ones.
    fn api_endpoints(
        inner: &Inner,
    ) -> impl Iterator<Item = (PodKey, Arc<k8s_openapi::api::core::v1::Endpoints>)> + '_ {
        inner
            .api_objects
            .iter()
            .filter(|((plural, _, _), _)| plural == "endpoints")
            .filter_map(|((_, ns, name), v)| {
                let e = serde_json::from_value(v.clone()).ok()?;
                Some(((ns.clone(), name.clone()), Arc::new(e)))
            })
    }

    pub fn service_rejection(&self, namespace: &str, name: &str) -> Option<String> {
        self.read()
            .service_views
            .rejected
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.read()
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.read()
            .secrets
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list_config_maps(&self, namespace: Option<&str>) -> Vec<ConfigMap> {
        self.read()
            .config_maps
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub fn list_secrets(&self, namespace: Option<&str>) -> Vec<Secret> {
        self.read()
            .secrets
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub fn set_rejected(&self, rejected: BTreeMap<PodKey, String>) {
        self.write().rejected = rejected;
    }

    pub fn rejection(&self, namespace: &str, name: &str) -> Option<String> {
        self.read()
            .rejected
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Replaces what is known of the other nodes; wakes watchers when their Services or pods
    /// changed. Node objects alone (heartbeats) do not wake anyone.
    pub fn set_remote(&self, remote: Remote) {
        let mut inner = self.write();
        let changed = inner.remote.services != remote.services || inner.remote.pods != remote.pods;
        inner.remote = remote;
        drop(inner);
        if changed {
            self.bump();
        }
    }

    /// What the other nodes published.
    pub fn remote(&self) -> Remote {
        self.read().remote.clone()
    }

    /// This node's pod subnet and underlay address, for its Node object.
    pub fn set_node_network(&self, pod_cidr: Option<String>, internal_ip: Option<String>) {
        self.write().node_network = (pod_cidr, internal_ip);
    }

    /// Sets the labels given with `--node-labels`.
    pub fn set_node_labels(&self, labels: BTreeMap<String, String>) {
        self.write().node_labels = labels;
    }

    /// The Node object's labels: the well-known ones and `--node-labels`, which win as with
    /// the kubelet.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        let inner = self.read();
        // Labels clients set through the API (`kubectl label node`) come first: the kubelet's
        // own win, as it puts them back on its Node object.
        let key = ("nodes".to_string(), String::new(), self.node_name.clone());
        let mut labels: BTreeMap<String, String> = inner
            .api_objects
            .get(&key)
            .and_then(|o| serde_json::from_value(o["metadata"]["labels"].clone()).ok())
            .unwrap_or_default();
        labels.extend(crate::node::well_known_labels(&self.node_name));
        labels.extend(inner.node_labels.clone());
        labels
    }

    /// (pod CIDR, InternalIP) as set by [`Store::set_node_network`].
    pub fn node_network(&self) -> (Option<String>, Option<String>) {
        self.read().node_network.clone()
    }

    /// Sets a node condition (`skiff get node -o json`); the transition time moves only when
    /// the status changes.
    pub fn set_node_condition(&self, kind: &str, status: bool, reason: &str, message: &str) {
        let mut inner = self.write();
        let since = match inner.node_conditions.get(kind) {
            Some(c) if c.status == status => c.since,
            _ => Timestamp::now(),
        };
        inner.node_conditions.insert(
            kind.to_string(),
            NodeCondition {
                status,
                reason: reason.into(),
                message: message.into(),
                since,
            },
        );
    }

    /// Node conditions reported so far, by type.
    pub fn node_conditions(&self) -> Vec<(String, NodeCondition)> {
        self.read()
            .node_conditions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records an event; a repeat of the same reason and message on the same
    /// object bumps the count and last-seen time, like the kubelet's recorder.
    pub fn event(&self, obj: &Involved, kind: EventType, reason: &str, message: &str) {
        let now = Time(Timestamp::now());
        let type_ = match kind {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let mut inner = self.write();
        inner.resource_version += 1;
        let rv = inner.resource_version;
        let repeat = inner.events.iter().rposition(|e| {
            e.reason.as_deref() == Some(reason)
                && e.message.as_deref() == Some(message)
                && e.involved_object.name.as_deref() == Some(obj.name.as_str())
                && e.involved_object.namespace.as_deref() == Some(obj.namespace.as_str())
                && e.involved_object.uid == obj.uid
        });
        if let Some(i) = repeat {
            let e = &mut inner.events[i];
            e.count = Some(e.count.unwrap_or(1) + 1);
            e.last_timestamp = Some(now);
            e.metadata.resource_version = Some(rv.to_string());
            let v = serde_json::to_value(&*e).unwrap_or_default();
            self.record_kind(&mut inner, "events", WatchKind::Modified, rv, v);
        } else {
            inner.next_event += 1;
            let seq = inner.next_event;
            let event = Event {
                metadata: ObjectMeta {
                    name: Some(format!(
                        "{}.{:x}{:04x}",
                        obj.name,
                        Timestamp::now().as_second(),
                        seq % 0xffff
                    )),
                    namespace: Some(obj.namespace.clone()),
                    creation_timestamp: Some(now.clone()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some(obj.kind.clone()),
                    name: Some(obj.name.clone()),
                    namespace: Some(obj.namespace.clone()),
                    uid: obj.uid.clone(),
                    ..Default::default()
                },
                reason: Some(reason.into()),
                message: Some(message.into()),
                type_: Some(type_.into()),
                count: Some(1),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                source: Some(EventSource {
                    component: Some("skiffd".into()),
                    host: Some(self.node_name.clone()),
                }),
                reporting_component: Some("skiffd".into()),
                reporting_instance: Some(self.node_name.clone()),
                ..Default::default()
            };
            let mut event = event;
            event.metadata.resource_version = Some(rv.to_string());
            let v = serde_json::to_value(&event).unwrap_or_default();
            self.record_kind(&mut inner, "events", WatchKind::Added, rv, v);
            inner.events.push(event);
            if inner.events.len() > MAX_EVENTS {
                let extra = inner.events.len() - MAX_EVENTS;
                let dropped: Vec<Event> = inner.events.drain(..extra).collect();
                for e in dropped {
                    self.record_event_gone(&mut inner, e);
                }
            }
        }
        drop(inner);
        self.bump();
    }

    /// Tells event watchers that an event went (expired, or pushed out by newer ones).
    fn record_event_gone(&self, inner: &mut Inner, e: Event) {
        let rv = Self::take_rv(inner);
        let mut v = serde_json::to_value(&e).unwrap_or_default();
        v["metadata"]["resourceVersion"] = rv.to_string().into();
        self.record_kind(inner, "events", WatchKind::Deleted, rv, v);
    }

    /// Events, optionally of one namespace and one involved object name.
    pub fn list_events(&self, namespace: Option<&str>, involved_name: Option<&str>) -> Vec<Event> {
        self.read()
            .events
            .iter()
            .filter(|e| namespace.is_none_or(|n| e.involved_object.namespace.as_deref() == Some(n)))
            .filter(|e| involved_name.is_none_or(|n| e.involved_object.name.as_deref() == Some(n)))
            .cloned()
            .collect()
    }
}

/// A fresh random UID (version-4 UUID form).
/// A UID in the UUID text form from the first 32 hex digits of a digest (the stable UIDs of
/// manifest objects).
pub fn uid_from_hex(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn random_uid() -> String {
    let mut b = [0u8; 16];
    // ring's generator reads the kernel's; a UID only has to be unique.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Where an object made through the API is kept: `<dir>/<plural>/<namespace>/<name>.json`
/// (`<dir>/<plural>/<name>.json` for a cluster-scoped kind).
pub fn object_path(dir: &Path, key: &ObjKey) -> PathBuf {
    let (plural, ns, name) = key;
    let mut p = dir.join(plural);
    if !ns.is_empty() {
        p.push(ns);
    }
    p.join(format!("{name}.json"))
}

/// Writes an API object's file (0600, its directory made 0700 if missing) so that a crash
/// or a power loss leaves the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    crate::util::private::create_dir_all(dir)?;
    let mode = crate::util::private::FILE_MODE;
    hostkit::atomic::write(path, data, mode, hostkit::atomic::Sync::Durable)
}

fn remove_durable(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
        // A namespace's directory goes with its last object (it fails while others remain).
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// The resourceVersion in an object's metadata.
pub fn rv_of(v: &Value) -> Option<u64> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

impl Store {
    /// Gives each of `new` a resourceVersion (kept when unchanged, or when it brings one:
    /// an object made through the API) and records the changes in `plural`'s history.
    fn reconcile<T>(
        &self,
        inner: &mut Inner,
        plural: &str,
        old: BTreeMap<PodKey, T>,
        new: BTreeMap<PodKey, T>,
    ) -> (BTreeMap<PodKey, T>, bool)
    where
        T: Clone + PartialEq + serde::Serialize + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        let mut out = BTreeMap::new();
        let mut changed = false;
        for (key, mut obj) in new {
            let prev = old.get(&key);
            let same = prev.is_some_and(|p| {
                let (mut a, mut b) = (p.clone(), obj.clone());
                a.metadata_mut().resource_version = None;
                b.metadata_mut().resource_version = None;
                a == b
            });
            if same {
                obj.metadata_mut().resource_version =
                    prev.and_then(|p| p.metadata().resource_version.clone());
            } else {
                changed = true;
                let rv = match obj.metadata().resource_version.as_deref().map(str::parse) {
                    Some(Ok(rv)) => rv,
                    _ => {
                        inner.resource_version += 1;
                        inner.resource_version
                    }
                };
                obj.metadata_mut().resource_version = Some(rv.to_string());
                let kind = if prev.is_some() {
                    WatchKind::Modified
                } else {
                    WatchKind::Added
                };
                self.record_kind(
                    inner,
                    plural,
                    kind,
                    rv,
                    serde_json::to_value(&obj).unwrap_or_default(),
                );
            }
            out.insert(key, obj);
        }
        for (key, obj) in old {
            if !out.contains_key(&key) {
                changed = true;
                inner.resource_version += 1;
                let rv = inner.resource_version;
                let mut v = serde_json::to_value(&obj).unwrap_or_default();
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                self.record_kind(inner, plural, WatchKind::Deleted, rv, v);
            }
        }
        (out, changed)
    }

    /// Keeps a change of a kind other than pods for its watchers.
    fn record_kind(
        &self,
        inner: &mut Inner,
        plural: &str,
        kind: WatchKind,
        rv: u64,
        object: Value,
    ) {
        let event = Arc::new(ObjEvent {
            kind,
            rv,
            object: Arc::new(object),
        });
        let history = inner.kind_history.entry(plural.to_string()).or_default();
        if history.len() >= POD_HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        let _ = self.kind_changes.send((plural.to_string(), event));
    }

    /// Starts a watch of one kind (`configmaps`, `secrets`, `namespaces`, ...) as
    /// [`Store::watch_pods`] does for pods; `initial` is what `list` gives now.
    pub fn watch_kind(
        &self,
        plural: &str,
        since: Option<u64>,
        list: impl FnOnce(&Store) -> Vec<Value>,
    ) -> Result<KindWatch, Gone> {
        let rx = self.kind_changes.subscribe();
        // Listing takes the read lock itself: the history check below then covers a change
        // made in between (it is in the backlog or in `rx`; a repeat has an older rv).
        let initial = if since.is_none() {
            list(self)
        } else {
            Vec::new()
        };
        let inner = self.read();
        let rv = inner.resource_version;
        let history = inner.kind_history.get(plural);
        let Some(since) = since else {
            return Ok(KindWatch {
                initial,
                backlog: Vec::new(),
                rv,
                rx,
            });
        };
        let oldest = history
            .and_then(|h| h.front())
            .map_or(0, |e| e.rv - 1)
            .min(rv);
        if since < oldest && history.is_some_and(|h| h.len() >= POD_HISTORY) {
            return Err(Gone {
                requested: since,
                oldest,
            });
        }
        let backlog = history
            .iter()
            .flat_map(|h| h.iter())
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        Ok(KindWatch {
            initial,
            backlog,
            rv,
            rx,
        })
    }

    /// The next resourceVersion, taken now.
    fn take_rv(inner: &mut Inner) -> u64 {
        inner.resource_version += 1;
        inner.resource_version
    }

    /// A receiver that sees a new value after every change of an API-made object.
    pub fn subscribe_api(&self) -> watch::Receiver<u64> {
        self.api_changed.subscribe()
    }

    /// Loads the objects made through the API from `<root>/objects` and keeps writing there.
    /// A file that cannot be read or parsed is skipped with a log line and a Warning event.
    /// The resourceVersion counter continues ahead of every loaded object and of the
    /// previous run's versions (it starts no lower than the clock in milliseconds).
    pub fn load_objects(&self, root: &Path) -> usize {
        let dir = root.join("objects");
        if let Err(e) = crate::util::private::ensure_private(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot prepare the object store");
        }
        let _ = self.objects_dir.set(dir.clone());
        let mut found = Vec::new();
        let mut bad = Vec::new();
        for plural in [
            "namespaces",
            "pods",
            "services",
            "configmaps",
            "secrets",
            "endpoints",
            "deployments",
            "replicasets",
            "replicationcontrollers",
            "horizontalpodautoscalers",
            "jobs",
            "cronjobs",
            "daemonsets",
            "controllerrevisions",
            "nodes",
        ] {
            let base = dir.join(plural);
            let mut files = Vec::new();
            let Ok(rd) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    for f in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                        files.push(f.path());
                    }
                } else {
                    files.push(p);
                }
            }
            for f in files {
                let name = f
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                match read_object(&f) {
                    Ok(v) => {
                        let ns = v
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let n = v
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let key = (plural.to_string(), ns, n);
                        if object_path(&dir, &key) != f {
                            bad.push((
                                f,
                                "its name or namespace does not match its path".to_string(),
                            ));
                            continue;
                        }
                        found.push((key, v));
                    }
                    Err(e) => bad.push((f, e)),
                }
            }
        }
        let n = found.len();
        let mut inner = self.write();
        let now_ms = Timestamp::now().as_millisecond().max(0) as u64;
        let max_rv = found
            .iter()
            .filter_map(|(_, v)| rv_of(v))
            .max()
            .unwrap_or(0);
        inner.resource_version = inner.resource_version.max(max_rv).max(now_ms);
        for (key, v) in found {
            inner.api_objects.insert(key, v);
        }
        drop(inner);
        for (file, why) in bad {
            tracing::warn!(file = %file.display(), error = %why, "skipping a corrupt object file of the API's store");
            self.event(
                &Involved {
                    kind: "Node".into(),
                    namespace: "default".into(),
                    name: self.node_name.clone(),
                    uid: None,
                },
                EventType::Warning,
                "CorruptObject",
                &format!("skipped object file {}: {why}", file.display()),
            );
        }
        self.api_changed.send_modify(|v| *v += 1);
        self.bump();
        n
    }

    /// An object made through the API, as stored.
    pub fn api_object(&self, key: &ObjKey) -> Option<Value> {
        self.read().api_objects.get(key).cloned()
    }

    /// The objects of one kind made through the API.
    pub fn api_objects(&self, plural: &str) -> Vec<(ObjKey, Value)> {
        self.read()
            .api_objects
            .iter()
            .filter(|(k, _)| k.0 == plural)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Stores an object made through the API with the next resourceVersion, on disk first
    /// (atomically) when the store persists; returns it as stored.
    pub fn put_api_object(&self, key: ObjKey, v: Value) -> std::io::Result<Value> {
        let mut inner = self.write();
        let v = self.put_api_locked(&mut inner, key, v)?;
        drop(inner);
        self.api_changed.send_modify(|x| *x += 1);
        self.bump();
        Ok(v)
    }

    /// [`Store::put_api_object`] with the write lock held.
    fn put_api_locked(
        &self,
        inner: &mut Inner,
        key: ObjKey,
        mut v: Value,
    ) -> std::io::Result<Value> {
        let rv = Self::take_rv(inner);
        v["metadata"]["resourceVersion"] = rv.to_string().into();
        if let Some(dir) = self.objects_dir.get() {
            let data = serde_json::to_vec_pretty(&v).map_err(std::io::Error::other)?;
            write_atomic(&object_path(dir, &key), &data)?;
        }
        let kind = if inner.api_objects.contains_key(&key) {
            WatchKind::Modified
        } else {
            WatchKind::Added
        };
        if SELF_WATCHED.contains(&key.0.as_str()) {
            self.record_kind(inner, &key.0, kind, rv, v.clone());
        }
        inner.api_objects.insert(key, v.clone());
        Ok(v)
    }

    /// Removes an object made through the API (its file too); returns it.
    pub fn delete_api_object(&self, key: &ObjKey) -> std::io::Result<Option<Value>> {
        let mut inner = self.write();
        if !inner.api_objects.contains_key(key) {
            return Ok(None);
        }
        if let Some(dir) = self.objects_dir.get() {
            remove_durable(&object_path(dir, key))?;
        }
        let old = inner.api_objects.remove(key);
        // A pod its finalizers held, and whose worker is done, goes with its object (a pod
        // still stopping is its worker's to remove, since nothing holds it any more).
        let pod_key = (key.1.clone(), key.2.clone());
        if key.0 == "pods"
            && let Some(uid) = old.as_ref().and_then(|o| o["metadata"]["uid"].as_str())
            && inner.held_pods.get(&pod_key).map(String::as_str) == Some(uid)
        {
            self.drop_pod(&mut inner, &pod_key);
        }
        if SELF_WATCHED.contains(&key.0.as_str())
            && let Some(o) = &old
        {
            let rv = Self::take_rv(&mut inner);
            let mut o = o.clone();
            o["metadata"]["resourceVersion"] = rv.to_string().into();
            self.record_kind(&mut inner, &key.0, WatchKind::Deleted, rv, o);
        }
        drop(inner);
        self.api_changed.send_modify(|x| *x += 1);
        self.bump();
        Ok(old)
    }

    /// Every namespace: the built-in ones and those made through the API.
    pub fn namespaces(&self) -> Vec<Namespace> {
        let inner = self.read();
        let mut out: BTreeMap<String, Namespace> = inner.builtin_namespaces.clone();
        for ((plural, _, name), v) in &inner.api_objects {
            if plural == "namespaces"
                && let Ok(ns) = serde_json::from_value::<Namespace>(v.clone())
            {
                out.insert(name.clone(), ns);
            }
        }
        out.into_values().collect()
    }

    pub fn namespace(&self, name: &str) -> Option<Namespace> {
        self.namespaces()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    }

    /// Serves a ConfigMap or Secret made through the API at once (the manager's next
    /// snapshot brings the same); `None` removes it.
    pub fn serve_config(&self, plural: &str, key: PodKey, value: Option<&Value>) {
        let inner = self.read();
        let mut cms = inner.config_maps.clone();
        let mut secrets = inner.secrets.clone();
        match (plural, value) {
            ("configmaps", Some(v)) => {
                if let Ok(cm) = serde_json::from_value(v.clone()) {
                    cms.insert(key, cm);
                }
            }
            ("configmaps", None) => {
                cms.remove(&key);
            }
            ("secrets", Some(v)) => {
                if let Ok(s) = serde_json::from_value(v.clone()) {
                    secrets.insert(key, s);
                }
            }
            ("secrets", None) => {
                secrets.remove(&key);
            }
            _ => return,
        }
        drop(inner);
        self.set_config(cms, secrets);
    }

    /// Serves a Service made through the API at once; `None` removes it.
    pub fn serve_service(&self, key: PodKey, svc: Option<k8s_openapi::api::core::v1::Service>) {
        let mut inner = self.write();
        match svc {
            Some(s) => {
                inner.desired_services.insert(key, Arc::new(s));
            }
            None => {
                inner.desired_services.remove(&key);
            }
        }
        drop(inner);
        self.bump();
    }
}

fn read_object(path: &Path) -> Result<Value, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let v: Value = serde_json::from_slice(&data).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object()
        || v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none()
    {
        return Err("not an object with metadata.name".into());
    }
    if v.pointer("/metadata/uid").and_then(Value::as_str).is_none() {
        return Err("no metadata.uid".into());
    }
    Ok(v)
}

/// Equal but for the resourceVersion: such a write is no change and makes no watch event.
fn same_pod(a: &Pod, b: &Pod) -> bool {
    a.metadata.resource_version == b.metadata.resource_version && a == b || {
        let (mut a, mut b) = (a.clone(), b.clone());
        a.metadata.resource_version = None;
        b.metadata.resource_version = None;
        a == b
    }
}

pub fn key_of(pod: &Pod) -> PodKey {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Env and volume resolution ([`crate::kube::env`]) read ConfigMaps and Secrets from here.
impl crate::kube::env::Objects for Store {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        Store::config_map(self, namespace, name)
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        Store::secret(self, namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn updates_only_apply_to_the_same_uid() {
        let s = Store::new("n");
        assert!(s.put_pod(pod("a", "1"), false));
        assert!(!s.put_pod(pod("a", "2"), false));
        let key = ("default".to_string(), "a".to_string());
        s.update_pod(&key, "2", |p| p.metadata.generation = Some(5));
        assert_eq!(s.get_pod("default", "a").unwrap().metadata.generation, None);
        s.remove_pod(&key, "2");
        assert!(s.get_pod("default", "a").is_some());
        s.remove_pod(&key, "1");
        assert!(s.get_pod("default", "a").is_none());
    }

    #[test]
    fn the_api_pending_never_replaces_a_published_pod() {
        let s = Store::new("n");
        let mut failed = pod("a", "1");
        failed.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        s.put_pod(failed, true);
        assert!(
            !s.add_pod(pod("a", "1")),
            "the manager's Failed was taken back"
        );
        let got = s.get_pod("default", "a").unwrap();
        assert_eq!(got.status.unwrap().phase.as_deref(), Some("Failed"));
        assert!(s.add_pod(pod("b", "2")));
        assert!(s.get_pod("default", "b").is_some());
    }

    #[test]
    fn a_pod_held_by_finalizers_stays_served_until_released() {
        let s = Store::new("n");
        let key = ("default".to_string(), "a".to_string());
        let api = ("pods".to_string(), "default".to_string(), "a".to_string());
        let object = |uid: &str, finalizers: &[&str]| {
            serde_json::json!({"metadata": {"name": "a", "namespace": "default", "uid": uid,
                "finalizers": finalizers}})
        };
        s.put_pod(pod("a", "1"), false);
        s.put_api_object(api.clone(), object("1", &["example.com/hold"]))
            .unwrap();
        // The worker is done: the pod stays, terminal.
        s.remove_pod(&key, "1");
        let got = s
            .get_pod("default", "a")
            .expect("a held pod is still served");
        assert_eq!(got.status.unwrap().phase.as_deref(), Some("Failed"));
        // Its API object goes with the last finalizer: so does the pod.
        s.delete_api_object(&api).unwrap();
        assert!(s.get_pod("default", "a").is_none());
        // A pod whose worker still runs is not taken by its object's deletion: its worker
        // removes it when done.
        s.put_pod(pod("a", "2"), true);
        s.put_api_object(api.clone(), object("2", &[])).unwrap();
        s.delete_api_object(&api).unwrap();
        assert!(
            s.get_pod("default", "a").is_some(),
            "removed a pod nothing held"
        );
        s.remove_pod(&key, "2");
        assert!(s.get_pod("default", "a").is_none());
    }

    #[test]
    fn a_status_update_keeps_the_deletion_asked_for() {
        let s = Store::new("n");
        let key = ("default".to_string(), "a".to_string());
        s.put_pod(pod("a", "1"), false);
        s.update_pod(&key, "1", |p| {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
            p.metadata.deletion_grace_period_seconds = Some(2);
        });
        // The worker republishes from its own copy, which has no deletion fields.
        let mut status = pod("a", "1");
        status.metadata.generation = Some(3);
        s.put_pod(status, false);
        let got = s.get_pod("default", "a").unwrap();
        assert_eq!(got.metadata.generation, Some(3));
        assert_eq!(got.metadata.deletion_grace_period_seconds, Some(2));
        assert!(got.metadata.deletion_timestamp.is_some());
        // A new pod under the name (another UID) starts clean.
        s.put_pod(pod("a", "2"), true);
        let got = s.get_pod("default", "a").unwrap();
        assert!(got.metadata.deletion_timestamp.is_none());
    }

    #[test]
    fn repeated_events_are_aggregated() {
        let s = Store::new("n");
        let p = pod("a", "1");
        let obj = Involved::pod(&p);
        s.event(&obj, EventType::Warning, "BackOff", "Back-off restarting");
        s.event(&obj, EventType::Warning, "BackOff", "Back-off restarting");
        s.event(&obj, EventType::Normal, "Started", "Started container c");
        let ev = s.list_events(Some("default"), Some("a"));
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].count, Some(2));
        assert!(s.list_events(Some("other"), None).is_empty());
    }

    #[test]
    fn every_pod_change_gets_the_next_resource_version() {
        let s = Store::new("n");
        let key = ("default".to_string(), "a".to_string());
        s.put_pod(pod("a", "1"), false);
        let rv1 = s.resource_version();
        assert_eq!(
            s.get_pod("default", "a").unwrap().metadata.resource_version,
            Some(rv1.to_string())
        );
        // The same pod again, or an update that changes nothing: no new version.
        s.put_pod(pod("a", "1"), false);
        s.update_pod(&key, "1", |_| {});
        assert_eq!(s.resource_version(), rv1);
        s.update_pod(&key, "1", |p| p.metadata.generation = Some(2));
        let rv2 = s.resource_version();
        assert!(rv2 > rv1);
        let (pods, list_rv) = s.list_pods_at(None);
        assert_eq!(list_rv, rv2);
        assert_eq!(pods[0].metadata.resource_version, Some(rv2.to_string()));
        s.remove_pod(&key, "1");
        assert!(s.resource_version() > rv2);
    }

    #[test]
    fn watches_resume_from_a_version_or_are_gone() {
        let s = Store::new("n");
        let key = ("default".to_string(), "a".to_string());
        s.put_pod(pod("a", "1"), false);
        let start = s.resource_version();
        let mut w = s.watch_pods(None).unwrap();
        assert_eq!(w.initial.len(), 1);
        assert_eq!(w.rv, start);
        s.update_pod(&key, "1", |p| p.metadata.generation = Some(2));
        s.remove_pod(&key, "1");
        let e = w.rx.try_recv().unwrap();
        assert_eq!((e.kind, e.rv), (WatchKind::Modified, start + 1));
        assert_eq!(w.rx.try_recv().unwrap().kind, WatchKind::Deleted);
        // Resuming from `start` replays both changes, in order.
        let r = s.watch_pods(Some(start)).unwrap();
        let kinds: Vec<WatchKind> = r.backlog.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [WatchKind::Modified, WatchKind::Deleted]);
        assert!(r.initial.is_empty());
        // Push the first changes out of the history: resuming from them is Gone.
        for i in 0..POD_HISTORY as i64 {
            s.put_pod(pod("b", "2"), true);
            s.update_pod(&("default".into(), "b".into()), "2", |p| {
                p.metadata.generation = Some(i)
            });
        }
        let err = s.watch_pods(Some(start)).err().unwrap();
        assert_eq!(err.requested, start);
        assert!(err.oldest > start);
        assert!(
            s.watch_pods(Some(s.resource_version()))
                .unwrap()
                .backlog
                .is_empty()
        );
    }

    #[test]
    fn a_watcher_that_never_reads_lags_without_blocking_writers() {
        let s = Store::new("n");
        let mut w = s.watch_pods(None).unwrap();
        let key = ("default".to_string(), "a".to_string());
        s.put_pod(pod("a", "1"), false);
        for i in 0..(WATCH_BUFFER as i64 + 10) {
            s.update_pod(&key, "1", |p| p.metadata.generation = Some(i));
        }
        assert!(matches!(
            w.rx.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    fn cm(name: &str) -> Value {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "data": {"a": "b"}})
    }

    fn key(name: &str) -> ObjKey {
        ("configmaps".into(), "default".into(), name.into())
    }

    #[test]
    fn api_objects_persist_atomically_and_come_back_ahead() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new("n");
        assert_eq!(s.load_objects(dir.path()), 0);
        let stored = s.put_api_object(key("a"), cm("a")).unwrap();
        let rv = rv_of(&stored).unwrap();
        let file = dir.path().join("objects/configmaps/default/a.json");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("objects")), 0o700);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
        s.put_api_object(key("b"), cm("b")).unwrap();
        s.delete_api_object(&key("b")).unwrap();
        assert!(
            !dir.path()
                .join("objects/configmaps/default/b.json")
                .exists()
        );

        // A restart finds the same object (same uid and version) and continues ahead.
        let s2 = Store::new("n");
        assert_eq!(s2.load_objects(dir.path()), 1);
        let back = s2.api_object(&key("a")).unwrap();
        assert_eq!(back["metadata"]["uid"], "uid-a");
        assert_eq!(rv_of(&back), Some(rv));
        // The list's version is at least the newest object's (equal when the restart comes
        // within the same millisecond); the next write is ahead of both.
        assert!(s2.resource_version() >= rv);
        let again = s2.put_api_object(key("c"), cm("c")).unwrap();
        assert!(rv_of(&again).unwrap() > rv);
    }

    #[test]
    fn a_corrupt_object_file_is_skipped_with_a_warning_event() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new("n");
        s.load_objects(dir.path());
        s.put_api_object(key("good"), cm("good")).unwrap();
        let bad = dir.path().join("objects/configmaps/default/bad.json");
        std::fs::write(&bad, "{\"metadata\": {\"name\": ").unwrap();
        let s2 = Store::new("n");
        assert_eq!(s2.load_objects(dir.path()), 1);
        assert!(s2.api_object(&key("good")).is_some());
        let events = s2.list_events(None, Some("n"));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason.as_deref(), Some("CorruptObject"));
        assert!(events[0].message.as_deref().unwrap().contains("bad.json"));
        assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    }

    #[test]
    fn config_changes_get_versions_history_and_watches() {
        let s = Store::new("n");
        let mk = |v: &str| {
            let mut c = ConfigMap::default();
            c.metadata.name = Some("c".into());
            c.metadata.namespace = Some("default".into());
            c.data = Some(BTreeMap::from([("k".to_string(), v.to_string())]));
            BTreeMap::from([(("default".to_string(), "c".to_string()), c)])
        };
        let start = s.resource_version();
        assert!(s.set_config(mk("1"), BTreeMap::new()));
        let rv1 = s
            .config_map("default", "c")
            .unwrap()
            .metadata
            .resource_version;
        assert_eq!(rv1, Some((start + 1).to_string()));
        // The same again: no change, same version.
        assert!(!s.set_config(mk("1"), BTreeMap::new()));
        assert_eq!(
            s.config_map("default", "c")
                .unwrap()
                .metadata
                .resource_version,
            rv1
        );
        let mut w = s
            .watch_kind("configmaps", None, |st| {
                st.list_config_maps(None)
                    .iter()
                    .map(|c| serde_json::to_value(c).unwrap())
                    .collect()
            })
            .unwrap();
        assert_eq!(w.initial.len(), 1);
        assert!(s.set_config(mk("2"), BTreeMap::new()));
        assert!(s.set_config(BTreeMap::new(), BTreeMap::new()));
        let (plural, e) = w.rx.try_recv().unwrap();
        assert_eq!(
            (plural.as_str(), e.kind),
            ("configmaps", WatchKind::Modified)
        );
        assert_eq!(w.rx.try_recv().unwrap().1.kind, WatchKind::Deleted);
        let r = s
            .watch_kind("configmaps", Some(start), |_| Vec::new())
            .unwrap();
        let kinds: Vec<WatchKind> = r.backlog.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [WatchKind::Added, WatchKind::Modified, WatchKind::Deleted]
        );
    }

    #[test]
    fn builtin_namespaces_always_exist() {
        let s = Store::new("n");
        let names: Vec<String> = s
            .namespaces()
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert_eq!(
            names,
            ["default", "kube-node-lease", "kube-public", "kube-system"]
        );
        s.put_api_object(
            ("namespaces".into(), String::new(), "team".into()),
            serde_json::json!({"metadata": {"name": "team", "uid": "u"}}),
        )
        .unwrap();
        assert!(s.namespace("team").is_some());
    }
}
