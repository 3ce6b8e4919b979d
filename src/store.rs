//! The in-process object store: pods with their status and the event stream.
//! Workers write status here; the API reads from it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::watch;

use crate::manifest::source::PodKey;

/// Most events kept; older ones are dropped first, like the API server's TTL.
const MAX_EVENTS: usize = 2000;

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Involved {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl Involved {
    pub fn pod(pod: &Pod) -> Self {
        Involved {
            kind: "Pod".into(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
        }
    }
}

/// Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<PodKey, Pod>,
    /// Why a named pod from the manifests is not running (shown in 404s).
    rejected: BTreeMap<PodKey, String>,
    config_maps: BTreeMap<PodKey, ConfigMap>,
    secrets: BTreeMap<PodKey, Secret>,
    desired_services: BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Service>>,
    manual_endpoints: BTreeMap<PodKey, Arc<k8s_openapi::api::core::v1::Endpoints>>,
    service_views: crate::service::Views,
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
}

impl Store {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            inner: RwLock::default(),
            node_name: node_name.into(),
            changed: watch::channel(0).0,
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
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
        if let Some(existing) = inner.pods.get(&key) {
            if existing.metadata.uid != pod.metadata.uid && !replace_other_uid {
                return false;
            }
        }
        inner.rejected.remove(&key);
        inner.pods.insert(key, pod);
        drop(inner);
        self.bump();
        true
    }

    /// Removes a pod if it still has this UID.
    pub fn remove_pod(&self, key: &PodKey, uid: &str) {
        let mut inner = self.write();
        if inner
            .pods
            .get(key)
            .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid))
        {
            inner.pods.remove(key);
            drop(inner);
            self.bump();
        }
    }

    /// Changes a stored pod in place if it still has this UID.
    pub fn update_pod(&self, key: &PodKey, uid: &str, f: impl FnOnce(&mut Pod)) {
        let mut inner = self.write();
        if let Some(p) = inner.pods.get_mut(key) {
            if p.metadata.uid.as_deref() == Some(uid) {
                f(p);
                drop(inner);
                self.bump();
            }
        }
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

    /// Replaces the ConfigMaps and Secrets; returns whether anything changed.
    pub fn set_config(
        &self,
        config_maps: BTreeMap<PodKey, ConfigMap>,
        secrets: BTreeMap<PodKey, Secret>,
    ) -> bool {
        let mut inner = self.write();
        let changed = inner.config_maps != config_maps || inner.secrets != secrets;
        inner.config_maps = config_maps;
        inner.secrets = secrets;
        drop(inner);
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
        (inner.desired_services.clone(), inner.manual_endpoints.clone())
    }

    /// What the service controller computed. Does not wake watchers (the
    /// controller itself is one).
    pub fn set_service_views(&self, views: crate::service::Views) {
        self.write().service_views = views;
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

    pub fn endpoints(&self, namespace: Option<&str>) -> Vec<k8s_openapi::api::core::v1::Endpoints> {
        self.read()
            .service_views
            .endpoints
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, s)| s.clone())
            .collect()
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
        let mut labels = crate::node::well_known_labels(&self.node_name);
        labels.extend(self.read().node_labels.clone());
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
        if let Some(e) = inner.events.iter_mut().rev().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.message.as_deref() == Some(message)
                && e.involved_object.name.as_deref() == Some(obj.name.as_str())
                && e.involved_object.namespace.as_deref() == Some(obj.namespace.as_str())
                && e.involved_object.uid == obj.uid
        }) {
            e.count = Some(e.count.unwrap_or(1) + 1);
            e.last_timestamp = Some(now);
        } else {
            inner.next_event += 1;
            let seq = inner.next_event;
            let event = Event {
                metadata: ObjectMeta {
                    name: Some(format!("{}.{:x}{:04x}", obj.name, Timestamp::now().as_second(), seq % 0xffff)),
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
            inner.events.push(event);
            if inner.events.len() > MAX_EVENTS {
                let extra = inner.events.len() - MAX_EVENTS;
                inner.events.drain(..extra);
            }
        }
        drop(inner);
        self.bump();
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

pub fn key_of(pod: &Pod) -> PodKey {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
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
}
