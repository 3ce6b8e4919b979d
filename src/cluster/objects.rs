//! Cluster objects in etcd (issue 11): the leader keeps the workload objects made through
//! the API, the namespaces and the controllers' pods under
//! `<prefix>/registry/objects/<plural>/<ns>/<name>` (each write a transaction fenced on its
//! leadership, see [`super::leader::fence`]); every other node mirrors them into its own
//! store, so its API serves them and its pod manager runs the pods bound to it. The leader
//! also binds the controllers' new pods to nodes ([`super::scheduler`]) and replaces the pods
//! of a node gone from etcd for longer than the pod eviction timeout.
//!
//! A node that becomes leader first mirrors what etcd holds, then acts: its controllers start
//! only once its store is the cluster's (the `acting` channel).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::scheduler::{self, Bound, Resources};
use crate::api::write::{Kind, Writer, internal};
use crate::kube::workload::controlled;
use crate::manifest::workload::WorkloadKind;
use crate::overlay::etcd::{Client, EtcdError, Op};
use crate::store::{EventType, Involved, ObjKey, Store};

/// How often the mirror runs without a change.
const PERIOD: Duration = Duration::from_millis(500);

/// The kinds kept in etcd (pods: only those a controller owns).
fn kinds() -> Vec<&'static str> {
    let mut k: Vec<&'static str> = WorkloadKind::ALL.iter().map(|w| w.plural()).collect();
    k.extend(["namespaces", "pods"]);
    k
}

/// The mirror's settings.
pub struct Settings {
    pub client: Client,
    /// skiff's etcd prefix.
    pub prefix: String,
    pub store: Arc<Store>,
    /// Wakes the pod manager after a change of the pods bound here.
    pub resync: tokio::sync::mpsc::UnboundedSender<()>,
    /// This node's Node object (for the scheduler).
    pub local_node: Arc<dyn Fn() -> Value + Send + Sync>,
    pub eviction_timeout: Duration,
}

/// Keeps the cluster objects between etcd and this node's store.
pub struct Mirror {
    s: Settings,
    root: String,
    node: String,
    /// What this node, as leader, last wrote to etcd (`None`: not acting as leader).
    exported: Option<BTreeMap<String, Vec<u8>>>,
    /// The objects this node took from etcd.
    imported: BTreeSet<ObjKey>,
    /// Whether `imported` took in what the store had from before this run.
    seeded: bool,
    /// Nodes the leader's pods are bound to that are gone from etcd, since when.
    missing: BTreeMap<String, Instant>,
    /// The last scheduling failure reported per pod (reported again when it changes).
    unschedulable: BTreeMap<(String, String), String>,
}

impl Mirror {
    pub fn new(s: Settings) -> Self {
        Mirror {
            root: format!("{}/registry/objects/", s.prefix.trim_end_matches('/')),
            node: s.store.node_name().to_string(),
            s,
            exported: None,
            imported: BTreeSet::new(),
            seeded: false,
            missing: BTreeMap::new(),
            unschedulable: BTreeMap::new(),
        }
    }

    /// Runs until `shutdown`. `leader` is the election's verdict; `acting` is set while this
    /// node leads and its store holds the cluster's objects (the controllers run then).
    pub async fn run(
        mut self,
        mut leader: watch::Receiver<bool>,
        acting: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut changes = self.s.store.subscribe();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = changes.changed() => if r.is_err() { break },
                r = leader.changed() => if r.is_err() { break },
                _ = &mut shutdown => break,
            }
            changes.borrow_and_update();
            let leads = *leader.borrow_and_update();
            // A pass waits on etcd, which may be out of reach: a shutdown does not wait for it.
            let pass = async {
                let r = if leads {
                    self.lead(&acting).await
                } else {
                    if self.exported.take().is_some() {
                        acting.send_replace(false);
                        self.missing.clear();
                    }
                    self.import().await.map(drop)
                };
                self.note_leader().await;
                r
            };
            let r = tokio::select! {
                r = pass => r,
                _ = &mut shutdown => break,
            };
            if let Err(e) = r {
                debug!(error = %e, "cluster objects: etcd pass failed");
                if matches!(e, EtcdError::Watch(_)) && self.exported.take().is_some() {
                    warn!(
                        "cluster objects: a fenced write was refused; this node stops acting as leader"
                    );
                    acting.send_replace(false);
                }
            }
        }
        acting.send_replace(false);
    }

    /// One pass as leader: take over (mirror etcd once), bind, evict, write etcd.
    async fn lead(&mut self, acting: &watch::Sender<bool>) -> Result<(), EtcdError> {
        if self.exported.is_none() {
            let held = self.import().await?;
            self.imported.clear();
            info!(
                objects = held.len(),
                "cluster objects: taking over as leader"
            );
            self.exported = Some(held);
            acting.send_replace(true);
        }
        self.schedule();
        self.evict();
        self.export().await
    }

    /// Tells the store which node leads: this one once it acts (its store is the cluster's),
    /// else the node the lease names.
    async fn note_leader(&self) {
        let leader = if self.exported.is_some() {
            Some(self.node.clone())
        } else {
            let key = super::leader::key(&self.s.prefix);
            match self.s.client.range(&key, false).await {
                Ok((kvs, _)) => kvs
                    .into_iter()
                    .find(|kv| kv.key == key)
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    .filter(|n| *n != self.node),
                Err(_) => None,
            }
        };
        self.s.store.set_cluster_leader(leader);
    }

    fn key_of(&self, k: &ObjKey) -> String {
        format!("{}{}/{}/{}", self.root, k.0, k.1, k.2)
    }

    fn obj_key(&self, key: &str) -> Option<ObjKey> {
        let rest = key.strip_prefix(&self.root)?;
        let mut it = rest.splitn(3, '/');
        let (p, ns, name) = (it.next()?, it.next()?, it.next()?);
        Some((p.to_string(), ns.to_string(), name.to_string()))
    }

    /// What of this node's store belongs in etcd, key -> value.
    fn wanted(&self) -> BTreeMap<String, Vec<u8>> {
        self.wanted_keys()
            .into_iter()
            .map(|(k, v)| (self.key_of(&k), encode(&v)))
            .collect()
    }

    /// The objects of this node's store that are the cluster's (a controller's pods, not a
    /// client's pod made on this node).
    fn wanted_keys(&self) -> Vec<(ObjKey, Value)> {
        let mut out = Vec::new();
        for plural in kinds() {
            for (k, v) in self.s.store.api_objects(plural) {
                if plural == "pods" && !controlled(&v) {
                    continue;
                }
                out.push((k, v));
            }
        }
        out
    }

    /// Brings this node's store in line with etcd; returns what etcd holds.
    async fn import(&mut self) -> Result<BTreeMap<String, Vec<u8>>, EtcdError> {
        let (kvs, _) = self.s.client.range(&self.root, true).await?;
        if !self.seeded && !kvs.is_empty() {
            // What this node's store kept on disk from before (it may have led, then died):
            // etcd is the cluster's truth, so what is not there any more goes, and a pod that
            // was evicted while the node was away is stopped, never run twice. (An empty
            // registry is a new cluster: the first leader's own objects seed it.)
            self.seeded = true;
            for (k, _) in self.wanted_keys() {
                self.imported.insert(k);
            }
        }
        let held: BTreeMap<String, Vec<u8>> =
            kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let mut pods_changed = false;
        let mut seen = BTreeSet::new();
        // Namespaces first: a pod's namespace must exist for it to run.
        let mut order: Vec<(&String, &Vec<u8>)> = held.iter().collect();
        order.sort_by_key(|(k, _)| !k.contains("/objects/namespaces/"));
        for (key, value) in order {
            let Some(k) = self.obj_key(key) else { continue };
            let Ok(v) = serde_json::from_slice::<Value>(value) else {
                continue;
            };
            seen.insert(k.clone());
            let same = self
                .s
                .store
                .api_object(&k)
                .is_some_and(|cur| encode(&cur) == *value);
            if !same {
                pods_changed |= k.0 == "pods";
                if let Err(e) = self.s.store.put_api_object(k.clone(), v) {
                    warn!(object = ?k, error = %e, "cluster objects: storing a mirrored object");
                    continue;
                }
            }
            self.imported.insert(k);
        }
        let gone: Vec<ObjKey> = self.imported.difference(&seen).cloned().collect();
        for k in gone {
            self.imported.remove(&k);
            pods_changed |= k.0 == "pods";
            self.remove_local(&k);
        }
        if pods_changed {
            let _ = self.s.resync.send(());
        }
        Ok(held)
    }

    /// Removes an object the leader deleted; a pod goes through the API's delete, so that
    /// this node stops it with its grace period.
    fn remove_local(&self, k: &ObjKey) {
        if k.0 == "pods" {
            let w = Writer {
                store: &self.s.store,
                resync: &self.s.resync,
            };
            if let Err(e) = internal::delete(&w, Kind::Pod, &k.1, &k.2) {
                debug!(pod = %k.2, error = %e.message(), "cluster objects: deleting a mirrored pod");
            }
        } else if let Err(e) = self.s.store.delete_api_object(k) {
            warn!(object = ?k, error = %e, "cluster objects: deleting a mirrored object");
        }
    }

    /// Writes the store's cluster objects to etcd, each write fenced on the leadership.
    async fn export(&mut self) -> Result<(), EtcdError> {
        let want = self.wanted();
        let fence = super::leader::fence(&self.s.prefix, &self.node);
        let exported = self.exported.get_or_insert_with(BTreeMap::new);
        let mut ops: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for (k, v) in &want {
            if exported.get(k) != Some(v) {
                ops.push((k.clone(), Some(v.clone())));
            }
        }
        for k in exported.keys() {
            if !want.contains_key(k) {
                ops.push((k.clone(), None));
            }
        }
        for (k, v) in ops {
            let op = match &v {
                Some(v) => Op::Put(k.clone(), v.clone(), 0),
                None => Op::Delete(k.clone()),
            };
            if !self
                .s
                .client
                .txn(std::slice::from_ref(&fence), &[op])
                .await?
            {
                return Err(EtcdError::Watch(
                    "the leader key no longer names this node".into(),
                ));
            }
            let exported = self.exported.get_or_insert_with(BTreeMap::new);
            match v {
                Some(v) => exported.insert(k, v),
                None => exported.remove(&k),
            };
        }
        Ok(())
    }

    /// Every node of the cluster as the scheduler sees it.
    fn nodes(&self) -> Vec<scheduler::Node> {
        let mut all = vec![(self.s.local_node)()];
        all.extend(self.s.store.remote().nodes);
        all.iter().filter_map(node_of).collect()
    }

    /// Binds the controllers' unbound pods to nodes.
    fn schedule(&mut self) {
        let pods = self.s.store.api_objects("pods");
        let unbound: Vec<&(ObjKey, Value)> = pods
            .iter()
            .filter(|(_, v)| {
                v["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
                    && v["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        if unbound.is_empty() {
            self.unschedulable.clear();
            return;
        }
        let nodes = self.nodes();
        let mut bound = self.bound(&pods);
        let mut local = false;
        for (k, v) in unbound {
            let Ok(pod) = serde_json::from_value::<Pod>(v.clone()) else {
                continue;
            };
            let id = (k.1.clone(), k.2.clone());
            match scheduler::schedule(&pod, &nodes, &bound) {
                Ok(node) => {
                    let mut v = v.clone();
                    v["spec"]["nodeName"] = node.clone().into();
                    if let Err(e) = self.s.store.put_api_object(k.clone(), v) {
                        warn!(pod = %k.2, error = %e, "scheduler: storing the binding");
                        continue;
                    }
                    self.unschedulable.remove(&id);
                    bound.push(Bound {
                        node: node.clone(),
                        requests: scheduler::requests(&pod),
                        owner: scheduler::owner(&pod),
                    });
                    local |= node == self.node;
                    debug!(pod = %k.2, node = %node, "scheduler: bound");
                    self.s.store.event(
                        &Involved::pod(&pod),
                        EventType::Normal,
                        "Scheduled",
                        &format!("Successfully assigned {}/{} to {node}", k.1, k.2),
                    );
                }
                Err(why) => {
                    if self.unschedulable.get(&id) != Some(&why.0) {
                        self.s.store.event(
                            &Involved::pod(&pod),
                            EventType::Warning,
                            "FailedScheduling",
                            &why.0,
                        );
                        self.unschedulable.insert(id, why.0);
                    }
                }
            }
        }
        if local {
            let _ = self.s.resync.send(());
        }
    }

    /// The pods bound to nodes: the API's, and this node's own (static pods included).
    fn bound(&self, pods: &[(ObjKey, Value)]) -> Vec<Bound> {
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (k, v) in pods {
            // An unbound pod the API shows here is not this node's (not counted below).
            names.insert((k.1.clone(), k.2.clone()));
            let Some(node) = v["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(pod) = serde_json::from_value::<Pod>(v.clone()) else {
                continue;
            };
            out.push(Bound {
                node: node.to_string(),
                requests: scheduler::requests(&pod),
                owner: scheduler::owner(&pod),
            });
        }
        for p in self.s.store.list_pods(None) {
            let id = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            if !names.contains(&id) {
                out.push(Bound {
                    node: self.node.clone(),
                    requests: scheduler::requests(&p),
                    owner: scheduler::owner(&p),
                });
            }
        }
        out
    }

    /// Deletes the controllers' pods of nodes gone from etcd for longer than the eviction
    /// timeout (kube-controller-manager's node lifecycle controller); their controllers then
    /// replace them on the nodes that are left.
    fn evict(&mut self) {
        let present: BTreeSet<String> = self.nodes().into_iter().map(|n| n.name).collect();
        self.missing.retain(|n, _| !present.contains(n));
        let now = Instant::now();
        for (k, v) in self.s.store.api_objects("pods") {
            let Some(node) = v["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
                continue;
            };
            if present.contains(node) || !controlled(&v) {
                continue;
            }
            let since = *self.missing.entry(node.to_string()).or_insert_with(|| {
                warn!(node = %node, "cluster: a node is gone from etcd; its pods are replaced after the eviction timeout");
                now
            });
            if now.duration_since(since) < self.s.eviction_timeout {
                continue;
            }
            let Ok(pod) = serde_json::from_value::<Pod>(v.clone()) else {
                continue;
            };
            info!(pod = %k.2, node = %node, "cluster: evicting a pod of a gone node");
            if let Err(e) = self.s.store.delete_api_object(&k) {
                warn!(pod = %k.2, error = %e, "cluster: evicting a pod");
                continue;
            }
            self.s.store.event(
                &Involved::pod(&pod),
                EventType::Normal,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {}/{}", k.1, k.2),
            );
        }
    }
}

/// An object as kept in etcd: without this store's resourceVersion.
fn encode(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A Node object as the scheduler sees it.
fn node_of(n: &Value) -> Option<scheduler::Node> {
    let name = n["metadata"]["name"].as_str().filter(|s| !s.is_empty())?;
    let alloc = &n["status"]["allocatable"];
    let q = |f: &str| alloc[f].as_str().map(str::to_string);
    Some(scheduler::Node {
        name: name.to_string(),
        labels: serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default(),
        taints: serde_json::from_value(n["spec"]["taints"].clone()).unwrap_or_default(),
        unschedulable: n["spec"]["unschedulable"] == true,
        allocatable: Resources {
            milli_cpu: q("cpu")
                .and_then(|c| crate::quantity::millicores(&c).ok())
                .unwrap_or(0),
            memory: q("memory")
                .and_then(|m| crate::quantity::bytes(&m).ok())
                .unwrap_or(0),
            pods: q("pods").and_then(|p| p.parse().ok()).unwrap_or(110),
        },
    })
}
