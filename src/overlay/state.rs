//! Cluster state in etcd: what each node publishes and what it learns from the others.
//!
//! Every node puts, on an etcd lease of its own (so a node that is gone is forgotten after the
//! TTL):
//! - `<prefix>/registry/nodes/<node>`: its Node object, refreshed as a heartbeat;
//! - `<prefix>/registry/pods/<node>/<ns>/<name>`: each pod as endpoints need it (IP, labels,
//!   readiness, container ports);
//! - `<prefix>/registry/services/<ns>/<name>`: each Service from its manifests with the
//!   addresses it was given, together with claims `<prefix>/registry/clusterips/<ip>` and
//!   `<prefix>/registry/nodeports/<port>-<proto>`, all in one transaction that only succeeds
//!   when no other Service holds those claims. The loser of a race sees the winner's Service
//!   come in, gives up the address and is allocated another (see the service controller).
//!
//! Every node watches the whole registry and hands the other nodes' Services, pods and Nodes to
//! the store, where the service controller programs them like its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodSpec, PodStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::etcd::{Client, Compare, EtcdError, Event, Op};
use crate::store::{Remote, Store};

/// A Service as published: its owner and the object with its addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Published {
    node: String,
    service: Service,
}

/// Keys of the registry.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            root: format!("{}/registry/", prefix.trim_end_matches('/')),
        }
    }
    fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.root)
    }
    fn pod(&self, node: &str, ns: &str, name: &str) -> String {
        format!("{}pods/{node}/{ns}/{name}", self.root)
    }
    fn service(&self, ns: &str, name: &str) -> String {
        format!("{}services/{ns}/{name}", self.root)
    }
    fn cluster_ip(&self, ip: &str) -> String {
        format!("{}clusterips/{ip}", self.root)
    }
    fn node_port(&self, port: i32, proto: &str) -> String {
        format!("{}nodeports/{port}-{proto}", self.root)
    }
}

/// A pod reduced to what another node's service controller and cluster DNS need (the DNS
/// names a headless Service's endpoint by the pod's `hostname` when its `subdomain` is the
/// Service, and gives `hostNetwork` pods no pod record).
pub fn endpoint_pod(pod: &Pod, node: &str) -> Pod {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone(),
            deletion_timestamp: pod.metadata.deletion_timestamp.clone(),
            // For the cluster's pod lists on the other nodes (issue 11).
            creation_timestamp: pod.metadata.creation_timestamp.clone(),
            owner_references: pod.metadata.owner_references.clone(),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            containers: spec
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| Container {
                            name: c.name.clone(),
                            ports: c.ports.clone(),
                            ..Default::default()
                        })
                        .collect()
                })
                .unwrap_or_default(),
            hostname: spec.and_then(|s| s.hostname.clone()),
            subdomain: spec.and_then(|s| s.subdomain.clone()),
            host_network: spec.and_then(|s| s.host_network),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: status.and_then(|s| s.phase.clone()),
            pod_ip: status.and_then(|s| s.pod_ip.clone()),
            container_statuses: status.and_then(|s| s.container_statuses.clone()),
            start_time: status.and_then(|s| s.start_time.clone()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                // minReadySeconds of the leader's controllers counts from here.
                last_transition_time: status
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .and_then(|c| c.last_transition_time.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// Publishes this node's part and follows the others'.
pub struct ClusterState {
    client: Client,
    keys: Keys,
    node: String,
    ttl: Duration,
    store: Arc<Store>,
    /// The node's own Node object (without heartbeat), from the API layer.
    node_object: Arc<dyn Fn() -> Value + Send + Sync>,
    lease: Option<i64>,
    /// What this node has put, key -> value.
    published: BTreeMap<String, Vec<u8>>,
    /// Services whose publication was refused, with the reason (reported once).
    refused: BTreeMap<String, String>,
    /// Everything under the registry, as last read.
    seen: BTreeMap<String, Vec<u8>>,
}

impl ClusterState {
    pub fn new(
        client: Client,
        prefix: &str,
        ttl: Duration,
        store: Arc<Store>,
        node_object: Arc<dyn Fn() -> Value + Send + Sync>,
    ) -> Self {
        ClusterState {
            client,
            keys: Keys::new(prefix),
            node: store.node_name().to_string(),
            ttl,
            store,
            node_object,
            lease: None,
            published: BTreeMap::new(),
            refused: BTreeMap::new(),
            seen: BTreeMap::new(),
        }
    }

    /// Runs until `shutdown`; etcd errors only delay convergence.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = Duration::from_millis(300);
        loop {
            let ended = tokio::select! {
                e = self.round() => Some(e),
                _ = &mut shutdown => None,
            };
            let Some(err) = ended else { break };
            debug!(error = %err, "cluster state: etcd round ended; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => break,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        // Leave the lease to expire: a restart within the TTL takes over the same keys.
    }

    /// One list + watch round with publishing and heartbeats; returns why it ended.
    async fn round(&mut self) -> EtcdError {
        let (kvs, rev) = match self.client.range(&self.keys.root, true).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        self.seen = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        self.hand_over();
        let mut watch = match self.client.watch(&self.keys.root, rev + 1).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        let mut changes = self.store.subscribe();
        let mut heartbeat = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(300)));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if let Err(e) = self.keepalive().await {
                        return e;
                    }
                }
                _ = tick.tick() => {}
                r = changes.changed() => {
                    if r.is_err() {
                        return EtcdError::Watch("the store closed".into());
                    }
                    // Let a burst settle.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    changes.borrow_and_update();
                }
                batch = watch.next() => {
                    match batch {
                        Some(Ok(events)) => {
                            for ev in events {
                                match ev {
                                    Event::Put(kv) => { self.seen.insert(kv.key, kv.value); }
                                    Event::Delete(kv) => { self.seen.remove(&kv.key); }
                                }
                            }
                            self.hand_over();
                        }
                        Some(Err(e)) => return e,
                        None => return EtcdError::Watch("the watch stream ended".into()),
                    }
                }
            }
            if let Err(e) = self.publish().await {
                return e;
            }
        }
    }

    /// Keep the node's lease alive (a fresh one, with everything put again, if it expired)
    /// and refresh the Node object's heartbeat.
    async fn keepalive(&mut self) -> Result<(), EtcdError> {
        if let Some(id) = self.lease {
            match self.client.keepalive(id).await {
                Ok(_) => {}
                Err(EtcdError::LeaseGone(_)) => {
                    warn!("cluster state: the node's etcd lease expired; publishing again");
                    self.lease = None;
                    self.published.clear();
                }
                Err(e) => return Err(e),
            }
        }
        let lease = self.lease().await?;
        let mut node = (self.node_object)();
        let now = jiff::Timestamp::now().to_string();
        if let Some(conds) = node["status"]["conditions"].as_array_mut() {
            for c in conds {
                c["lastHeartbeatTime"] = Value::String(now.clone());
            }
        }
        let value = serde_json::to_vec(&node).unwrap_or_default();
        self.client
            .put(&self.keys.node(&self.node), &value, lease)
            .await
    }

    async fn lease(&mut self) -> Result<i64, EtcdError> {
        if let Some(id) = self.lease {
            return Ok(id);
        }
        let id = self.client.grant(self.ttl.as_secs().max(1) as i64).await?;
        self.lease = Some(id);
        Ok(id)
    }

    /// Bring etcd in line with this node's pods and Services.
    async fn publish(&mut self) -> Result<(), EtcdError> {
        let lease = self.lease().await?;
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for pod in self.store.list_pods(None) {
            let has_ip = pod.status.as_ref().is_some_and(|s| s.pod_ip.is_some());
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            if !has_ip {
                continue;
            }
            let value = serde_json::to_vec(&endpoint_pod(&pod, &self.node)).unwrap_or_default();
            want.insert(self.keys.pod(&self.node, ns, name), value);
        }
        // Pods: plain puts and deletes of our own keys.
        for (k, v) in &want {
            if self.published.get(k) != Some(v) {
                self.client.put(k, v, lease).await?;
                self.published.insert(k.clone(), v.clone());
            }
        }
        // Services with their claims, one transaction each.
        let (local, _) = self.store.desired_services();
        let views = self.store.services(None);
        for svc in views {
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let name = svc.metadata.name.clone().unwrap_or_default();
            if !local.contains_key(&(ns.clone(), name.clone())) {
                continue;
            }
            let id = format!("{ns}/{name}");
            let group = self.service_group(&ns, &name, &svc);
            for (k, v) in &group {
                want.insert(k.clone(), v.clone());
            }
            if group.iter().all(|(k, v)| self.published.get(k) == Some(v)) {
                continue;
            }
            match self.claim(&id, &group, lease).await? {
                Ok(()) => {
                    self.refused.remove(&id);
                    for (k, v) in group {
                        self.published.insert(k, v);
                    }
                }
                Err(why) => {
                    // Not ours: the claimed keys stay with the other Service.
                    for (k, _) in &group {
                        want.remove(k);
                    }
                    if self.refused.get(&id) != Some(&why) {
                        warn!(service = %id, reason = %why, "cluster state: Service not published");
                        self.refused.insert(id, why);
                    }
                }
            }
        }
        // Whatever we published and no longer want goes (only while it is still ours).
        let stale: Vec<(String, Vec<u8>)> = self
            .published
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in stale {
            self.client
                .txn(&[Compare::Value(k.clone(), v)], &[Op::Delete(k.clone())])
                .await?;
            self.published.remove(&k);
        }
        Ok(())
    }

    /// The keys of one Service: the object and its claims.
    fn service_group(&self, ns: &str, name: &str, svc: &Service) -> Vec<(String, Vec<u8>)> {
        let id = format!("{ns}/{name}");
        let owner = format!("{id}@{}", self.node);
        let mut group = vec![(
            self.keys.service(ns, name),
            serde_json::to_vec(&Published {
                node: self.node.clone(),
                service: svc.clone(),
            })
            .unwrap_or_default(),
        )];
        let spec = svc.spec.as_ref();
        if let Some(ip) = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty() && *ip != "None")
        {
            group.push((self.keys.cluster_ip(ip), owner.clone().into_bytes()));
        }
        for p in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            if let Some(np) = p.node_port {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                group.push((self.keys.node_port(np, proto), owner.clone().into_bytes()));
            }
        }
        group
    }

    /// Put a Service's keys in one transaction, if each is free or already this node's.
    async fn claim(
        &self,
        id: &str,
        group: &[(String, Vec<u8>)],
        lease: i64,
    ) -> Result<Result<(), String>, EtcdError> {
        let mut compares = Vec::new();
        for (k, v) in group {
            let (kvs, _) = self.client.range(k, false).await?;
            match kvs.into_iter().next() {
                None => compares.push(Compare::Absent(k.clone())),
                Some(kv) => {
                    let ours = if k.contains("/services/") {
                        serde_json::from_slice::<Published>(&kv.value)
                            .is_ok_and(|p| p.node == self.node)
                    } else {
                        kv.value == *v
                    };
                    if !ours {
                        let holder = if k.contains("/services/") {
                            serde_json::from_slice::<Published>(&kv.value)
                                .map(|p| format!("node {}", p.node))
                                .unwrap_or_else(|_| "another writer".into())
                        } else {
                            String::from_utf8_lossy(&kv.value).into_owned()
                        };
                        return Ok(Err(format!(
                            "{} is held by {holder}",
                            k.rsplit("/registry/").next().unwrap_or(k)
                        )));
                    }
                    compares.push(Compare::ModRevision(k.clone(), kv.mod_revision));
                }
            }
        }
        let ops: Vec<Op> = group
            .iter()
            .map(|(k, v)| Op::Put(k.clone(), v.clone(), lease))
            .collect();
        if self.client.txn(&compares, &ops).await? {
            debug!(service = %id, "cluster state: Service published");
            Ok(Ok(()))
        } else {
            Ok(Err(
                "another node changed its claims meanwhile; retrying".into()
            ))
        }
    }

    /// Give the store what the other nodes published.
    fn hand_over(&self) {
        let mut remote = Remote::default();
        let root = &self.keys.root;
        for (k, v) in &self.seen {
            let Some(rest) = k.strip_prefix(root.as_str()) else {
                continue;
            };
            if let Some(rest) = rest.strip_prefix("pods/") {
                if rest.starts_with(&format!("{}/", self.node)) {
                    continue;
                }
                if let Ok(pod) = serde_json::from_slice::<Pod>(v) {
                    remote.pods.push(pod);
                }
            } else if let Some(rest) = rest.strip_prefix("services/") {
                let Some((ns, name)) = rest.split_once('/') else {
                    continue;
                };
                match serde_json::from_slice::<Published>(v) {
                    Ok(p) if p.node != self.node => {
                        remote
                            .services
                            .insert((ns.to_string(), name.to_string()), p.service);
                    }
                    Ok(_) => {}
                    Err(e) => debug!(key = %k, error = %e, "cluster state: unreadable Service"),
                }
            } else if let Some(name) = rest.strip_prefix("nodes/")
                && name != self.node
                && let Ok(n) = serde_json::from_slice::<Value>(v)
            {
                remote.nodes.push(n);
            }
        }
        let before = self.store.remote();
        if before.nodes.len() != remote.nodes.len() || before.pods.len() != remote.pods.len() {
            info!(
                nodes = remote.nodes.len(),
                pods = remote.pods.len(),
                services = remote.services.len(),
                "cluster state: other nodes' objects"
            );
        }
        self.store.set_remote(remote);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodStatus, ServiceSpec};

    use super::*;
    use crate::overlay::etcd::tests::Etcd;
    use crate::store::Views;

    fn service(name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A node with one local Service (already allocated `ip`) and one running pod.
    fn node(etcd: &Etcd, name: &str, svc: &str, ip: &str, pod_ip: &str) -> ClusterState {
        let store = Arc::new(Store::new(name));
        let key = ("default".to_string(), svc.to_string());
        store.set_desired_services(
            BTreeMap::from([(key.clone(), Arc::new(service(svc, ip)))]),
            BTreeMap::new(),
        );
        store.set_service_views(Views {
            services: BTreeMap::from([(key, service(svc, ip))]),
            ..Default::default()
        });
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-pod")),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), svc.into())])),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: Some(pod_ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        store.put_pod(pod, true);
        let n = name.to_string();
        ClusterState::new(
            etcd.client(),
            "/t",
            Duration::from_secs(5),
            store,
            Arc::new(
                move || serde_json::json!({"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready"}]}}),
            ),
        )
    }

    async fn refresh(cs: &mut ClusterState) {
        let (kvs, _) = cs.client.range(&cs.keys.root, true).await.unwrap();
        cs.seen = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        cs.hand_over();
    }

    /// What another node gets of a pod: enough for Endpoints and for the DNS names of a
    /// headless Service's endpoints (hostname, subdomain), nothing of its containers' commands.
    #[test]
    fn endpoint_pod_keeps_what_endpoints_and_dns_need() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                hostname: Some("db-0".into()),
                subdomain: Some("db".into()),
                containers: vec![Container {
                    name: "main".into(),
                    command: Some(vec!["secret-command".into()]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.244.1.7".into()),
                ..Default::default()
            }),
        };
        let out = endpoint_pod(&pod, "a");
        let spec = out.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("db-0"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        assert_eq!(spec.node_name.as_deref(), Some("a"));
        assert_eq!(spec.host_network, None);
        assert_eq!(spec.containers[0].command, None);
        let ready = &out.status.as_ref().unwrap().conditions.as_ref().unwrap()[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "False")
        );
    }

    /// Two nodes that picked the same cluster IP on their own: the first to publish holds it,
    /// the other's Service is refused (and its node then sees the winner's). Pods and Node
    /// objects of each node reach the other; a Service that goes releases its claims.
    #[tokio::test]
    async fn claims_are_exclusive_and_objects_reach_the_other_node() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let mut a = node(&etcd, "a", "web", "10.96.0.10", "10.244.1.2");
        let mut b = node(&etcd, "b", "api", "10.96.0.10", "10.244.2.2");
        a.keepalive().await.unwrap();
        b.keepalive().await.unwrap();
        a.publish().await.unwrap();
        b.publish().await.unwrap();
        assert!(a.refused.is_empty());
        let why = &b.refused["default/api"];
        assert!(
            why.contains("clusterips/10.96.0.10 is held by default/web@a"),
            "{why}"
        );

        refresh(&mut b).await;
        let remote = b.store.remote();
        assert_eq!(
            remote.services.keys().collect::<Vec<_>>(),
            [&("default".to_string(), "web".to_string())]
        );
        assert_eq!(remote.pods.len(), 1);
        assert_eq!(
            remote.pods[0].status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.1.2")
        );
        assert_eq!(
            remote.pods[0].spec.as_ref().unwrap().node_name.as_deref(),
            Some("a")
        );
        assert_eq!(remote.nodes[0]["metadata"]["name"], "a");
        assert!(remote.nodes[0]["status"]["conditions"][0]["lastHeartbeatTime"].is_string());

        // b moves to another address: now it publishes.
        let key = ("default".to_string(), "api".to_string());
        b.store.set_service_views(Views {
            services: BTreeMap::from([(key, service("api", "10.96.0.11"))]),
            ..Default::default()
        });
        b.publish().await.unwrap();
        assert!(b.refused.is_empty());
        refresh(&mut a).await;
        assert!(
            a.store
                .remote()
                .services
                .contains_key(&("default".to_string(), "api".to_string()))
        );

        // a's Service goes: its object and claim go with it, so b can take the address.
        a.store
            .set_desired_services(BTreeMap::new(), BTreeMap::new());
        a.store.set_service_views(Views::default());
        a.publish().await.unwrap();
        let (kvs, _) = etcd
            .client()
            .range("/t/registry/clusterips/", true)
            .await
            .unwrap();
        let claims: Vec<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(claims, ["/t/registry/clusterips/10.96.0.11"]);
        refresh(&mut b).await;
        assert!(b.store.remote().services.is_empty());
    }
}
