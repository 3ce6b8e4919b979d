//! The DaemonSet controller's loop (issue 11), run by [`super::run::sync_all`] on every pass
//! over the store: per DaemonSet, its revision history (ControllerRevisions it owns, the
//! current one made or renumbered as `kubectl rollout undo` needs), the pure decisions of
//! [`super::daemonset`] over [`cluster_nodes`] and its pods carried out through the API's own
//! write path (`api::write::internal`), its status, and the history beyond
//! `revisionHistoryLimit` cleaned up. Deleting a DaemonSet leaves its pods and revisions to
//! the garbage collector, as for the other kinds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::daemonset::{
    self as ds, Eligible, FailedPodsBackoff, GENERATION_LABEL, HASH_LABEL, NodeInfo, PodInfo,
};
use crate::api::write::{Kind, Writer, internal};
use crate::manifest::workload::WorkloadKind;
use crate::store::{EventType, Involved, ObjKey, SOURCE_ANNOTATION, Store};

/// The failed-pod backoff of every DaemonSet, kept across passes as the controller keeps it in
/// memory (a restarted skiffd starts over at 1 s).
static FAILED_PODS_BACKOFF: Mutex<FailedPodsBackoff> = Mutex::new(FailedPodsBackoff::new());

const DAEMON_SET: WorkloadKind = WorkloadKind::DaemonSet;
const REVISION: Kind = Kind::Workload(WorkloadKind::ControllerRevision);

/// The nodes DaemonSets place pods on: this node (its `--node-labels` and well-known labels)
/// and, in a multi-host cluster, every other node published in etcd (its labels and taints).
pub fn cluster_nodes(store: &Store) -> Vec<NodeInfo> {
    let mut nodes = vec![NodeInfo {
        name: store.node_name().to_string(),
        labels: store.node_labels(),
        taints: crate::api::node_write::taints(store),
    }];
    for n in store.remote().nodes {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() || nodes.iter().any(|x| x.name == name) {
            continue;
        }
        nodes.push(NodeInfo {
            name,
            labels: serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default(),
            taints: serde_json::from_value(n["spec"]["taints"].clone()).unwrap_or_default(),
        });
    }
    nodes
}

/// One pass over every DaemonSet.
pub fn sync_all(w: &Writer, now: Timestamp) {
    let sets = w.store.list_workloads(DAEMON_SET.plural(), None);
    if sets.is_empty() {
        return;
    }
    let nodes = cluster_nodes(w.store);
    for d in sets {
        if d["metadata"]["deletionTimestamp"].is_null() {
            sync_daemon_set(w, &d, &nodes, now);
        }
    }
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v["metadata"][field].as_str().unwrap_or_default()
}

fn obj_key(kind: WorkloadKind, v: &Value) -> ObjKey {
    (
        kind.plural().to_string(),
        meta_str(v, "namespace").to_string(),
        meta_str(v, "name").to_string(),
    )
}

fn owner_ref(v: &Value) -> Value {
    json!({
        "apiVersion": DAEMON_SET.api_version(),
        "kind": DAEMON_SET.name(),
        "name": meta_str(v, "name"),
        "uid": meta_str(v, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn controlled_by(v: &Value, uid: &str) -> bool {
    v["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["controller"] == true && r["uid"] == uid)
        })
}

fn event(w: &Writer, d: &Value, ty: EventType, reason: &str, msg: &str) {
    let involved = Involved {
        kind: DAEMON_SET.name().into(),
        namespace: meta_str(d, "namespace").into(),
        name: meta_str(d, "name").into(),
        uid: Some(meta_str(d, "uid").into()),
    };
    w.store.event(&involved, ty, reason, msg);
}

/// The node a pod is bound to: its `nodeName`, else the `metadata.name` term of its
/// required node affinity.
fn node_of(p: &Pod) -> String {
    let spec = p.spec.as_ref();
    if let Some(n) = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        return n.to_string();
    }
    spec.and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .and_then(|s| s.node_selector_terms.first())
        .and_then(|t| t.match_fields.as_ref())
        .and_then(|f| f.iter().find(|r| r.key == "metadata.name"))
        .and_then(|r| r.values.as_ref()?.first().cloned())
        .unwrap_or_default()
}

fn pod_info(p: &Pod) -> PodInfo {
    PodInfo {
        name: p.metadata.name.clone().unwrap_or_default(),
        node: node_of(p),
        hash: p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL))
            .cloned()
            .unwrap_or_default(),
        ready_since: super::replicaset::ready_since(p),
        failed: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"),
        deleting: p.metadata.deletion_timestamp.is_some(),
        created: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    }
}

/// The DaemonSet's pods (made through the API in its namespace, controlled by it), after
/// adopting matching orphans.
fn owned_pods(w: &Writer, d: &Value) -> Vec<Pod> {
    let ns = meta_str(d, "namespace");
    let uid = meta_str(d, "uid");
    let selector = super::run::selector_for(DAEMON_SET, d);
    let mut out = Vec::new();
    for p in super::run::api_pods(w.store, ns) {
        let mine = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == uid);
        let orphan = !p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true));
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let matches = selector.as_ref().is_some_and(|s| s.matches(&labels));
        if mine {
            out.push(p);
        } else if orphan && matches && p.metadata.deletion_timestamp.is_none() {
            let name = p.metadata.name.clone().unwrap_or_default();
            let mut refs: Vec<Value> = serde_json::to_value(&p.metadata.owner_references)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            refs.push(owner_ref(d));
            if internal::set_pod_owners(w, ns, &name, Some(refs)).is_ok() {
                out.push(p);
            }
        }
    }
    out
}

/// The current revision: the ControllerRevision whose data is the template's (renumbered
/// past the others when an older one comes back), made when there is none. Returns its hash
/// and the DaemonSet's revisions, or `None` if it could not be made (a name collision bumps
/// `collisionCount`, returned as the second value).
fn current_revision(w: &Writer, d: &Value, collision: i64) -> (Option<(String, Vec<Value>)>, i64) {
    let ns = meta_str(d, "namespace");
    let uid = meta_str(d, "uid");
    let template = &d["spec"]["template"];
    let data = ds::revision_data(template);
    let mut revisions: Vec<Value> = w
        .store
        .list_workloads(REVISION.plural(), Some(ns))
        .into_iter()
        .filter(|r| controlled_by(r, uid))
        .collect();
    let max = revisions
        .iter()
        .filter_map(|r| r["revision"].as_i64())
        .max()
        .unwrap_or(0);
    let same = |r: &Value| ds::normalized(&r["data"]) == ds::normalized(&data);
    // Duplicates of the current data (a lost write): the newest revision stays.
    let mut current: Vec<Value> = revisions.iter().filter(|r| same(r)).cloned().collect();
    current.sort_by_key(|r| r["revision"].as_i64().unwrap_or(0));
    if let Some(cur) = current.last() {
        let hash = cur["metadata"]["labels"][HASH_LABEL]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| ds::revision_hash(template, None));
        let stale: Vec<String> = current[..current.len() - 1]
            .iter()
            .map(|r| meta_str(r, "name").to_string())
            .collect();
        for name in &stale {
            let _ = internal::delete(w, REVISION, ns, name);
        }
        revisions.retain(|r| !stale.iter().any(|s| s == meta_str(r, "name")));
        let cur_name = meta_str(cur, "name").to_string();
        if cur["revision"].as_i64().unwrap_or(0) < max {
            let key = (REVISION.plural().into(), ns.into(), cur_name.clone());
            let cur_uid = meta_str(cur, "uid").to_string();
            if let Ok(Some(v)) = w
                .store
                .update_workload(&key, &cur_uid, |v| v["revision"] = (max + 1).into())
            {
                revisions.retain(|r| meta_str(r, "name") != cur_name);
                revisions.push(v);
            }
        }
        return (Some((hash, revisions)), collision);
    }
    let hash = ds::revision_hash(template, (collision > 0).then_some(collision as u32));
    let name = format!("{}-{hash}", meta_str(d, "name"));
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[HASH_LABEL] = hash.clone().into();
    let annotations: serde_json::Map<String, Value> = d["metadata"]["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .filter(|(k, _)| *k != SOURCE_ANNOTATION)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let body = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {
            "name": name, "namespace": ns, "labels": labels, "annotations": annotations,
            "ownerReferences": [owner_ref(d)],
        },
        "data": data,
        "revision": max + 1,
    });
    match internal::create(w, REVISION, ns, body) {
        Ok(v) => {
            revisions.push(v);
            (Some((hash, revisions)), collision)
        }
        Err(e) if e.reason() == "AlreadyExists" => (None, collision + 1),
        Err(e) => {
            warn!(daemonset = %meta_str(d, "name"), error = %e.message(), "creating a ControllerRevision");
            (None, collision)
        }
    }
}

/// `(node, shouldRun, shouldContinueRunning)` of every node for a template's pod spec (with
/// the default tolerations).
fn eligibility(nodes: &[NodeInfo], template: &PodSpec) -> Vec<(String, bool, bool)> {
    let mut spec = template.clone();
    ds::add_default_tolerations(&mut spec);
    nodes
        .iter()
        .map(|n| {
            let (run, keep) = ds::should_run(n, &spec);
            (n.name.clone(), run, keep)
        })
        .collect()
}

fn as_eligible(owned: &[(String, bool, bool)]) -> Vec<Eligible<'_>> {
    owned.iter().map(|(n, r, k)| (n.as_str(), *r, *k)).collect()
}

/// One DaemonSet: revisions, pods, status, history cleanup.
fn sync_daemon_set(w: &Writer, d: &Value, nodes: &[NodeInfo], now: Timestamp) {
    let ns = meta_str(d, "namespace");
    let name = meta_str(d, "name");
    let Ok(template) = serde_json::from_value::<PodTemplateSpec>(d["spec"]["template"].clone())
    else {
        return;
    };
    let collision = d["status"]["collisionCount"].as_i64().unwrap_or(0);
    let (found, collision) = current_revision(w, d, collision);
    let Some((hash, revisions)) = found else {
        write_status(w, d, None, collision, now, nodes);
        return;
    };
    let spec: PodSpec = template.spec.clone().unwrap_or_default();
    let eligible_owned = eligibility(nodes, &spec);
    let eligible = as_eligible(&eligible_owned);
    let strategy = ds::Strategy::of(&d["spec"]["updateStrategy"]);
    let pods: Vec<PodInfo> = owned_pods(w, d).iter().map(pod_info).collect();
    let uid = meta_str(d, "uid");
    let mut backoff = FAILED_PODS_BACKOFF
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    backoff.gc(now);
    let waiting: BTreeSet<String> = nodes
        .iter()
        .filter(|n| backoff.in_backoff(&FailedPodsBackoff::key(uid, &n.name), now))
        .map(|n| n.name.clone())
        .collect();
    let daemon = ds::Daemon {
        hash: &hash,
        strategy: &strategy,
        backoff: &waiting,
        min_ready_seconds: d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
    };
    let mut plan = ds::plan(&daemon, &eligible, &pods, now);
    for (node, pod) in &plan.failed {
        backoff.next(&FailedPodsBackoff::key(uid, node), now);
        let msg = format!("Found failed daemon pod {ns}/{pod} on node {node}, will try to kill it");
        event(w, d, EventType::Warning, "FailedDaemonPod", &msg);
    }
    drop(backoff);
    for gone in ds::orphaned_by_node(&eligible, &pods) {
        plan.delete.push(gone.to_string());
    }
    for p in &plan.delete {
        match internal::delete(w, Kind::Pod, ns, p) {
            Ok(()) => event(
                w,
                d,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {p}"),
            ),
            Err(e) if e.reason() == "NotFound" => {}
            Err(e) => event(
                w,
                d,
                EventType::Warning,
                "FailedDelete",
                &format!("Error deleting: {}", e.message()),
            ),
        }
    }
    // The apiserver's template generation (the generation for an object that has none).
    let generation = d["metadata"]["annotations"][crate::manifest::daemonset::TEMPLATE_GENERATION]
        .as_str()
        .and_then(|g| g.parse::<i64>().ok())
        .or_else(|| d["metadata"]["generation"].as_i64())
        .unwrap_or(1);
    for node in &plan.create {
        let mut meta = serde_json::to_value(template.metadata.clone().unwrap_or_default())
            .unwrap_or_else(|_| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.remove("name");
        }
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        meta["labels"][HASH_LABEL] = hash.clone().into();
        meta["labels"][GENERATION_LABEL] = generation.to_string().into();
        meta["generateName"] = format!("{name}-").into();
        meta["namespace"] = ns.into();
        meta["ownerReferences"] = json!([owner_ref(d)]);
        let mut pod_spec = ds::pod_spec_for(&spec, node);
        pod_spec.node_name = Some(node.clone());
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": meta,
            "spec": serde_json::to_value(&pod_spec).unwrap_or(Value::Null),
        });
        match internal::create(w, Kind::Pod, ns, pod) {
            Ok(p) => event(
                w,
                d,
                EventType::Normal,
                "SuccessfulCreate",
                &format!("Created pod: {}", meta_str(&p, "name")),
            ),
            Err(e) => {
                let msg = format!("Error creating: {}", e.message());
                debug!(daemonset = %name, namespace = %ns, error = %msg, "creating a daemon pod");
                event(w, d, EventType::Warning, "FailedCreate", &msg);
                break;
            }
        }
    }
    // History beyond the limit: the oldest revisions no pod runs go.
    let live: BTreeSet<String> = owned_pods(w, d)
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(HASH_LABEL).cloned())
        .collect();
    let limit = d["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let mut old: Vec<&Value> = revisions
        .iter()
        .filter(|r| {
            let h = r["metadata"]["labels"][HASH_LABEL]
                .as_str()
                .unwrap_or_default();
            h != hash && !live.contains(h)
        })
        .collect();
    if old.len() > limit {
        old.sort_by_key(|r| r["revision"].as_i64().unwrap_or(0));
        for r in &old[..old.len() - limit] {
            let _ = internal::delete(w, REVISION, ns, meta_str(r, "name"));
        }
    }
    write_status(w, d, Some(&daemon), collision, now, nodes);
}

/// Writes the DaemonSet's status (the controller's `updateDaemonSetStatus`); the counts that
/// Go omits when zero are left out.
fn write_status(
    w: &Writer,
    d: &Value,
    daemon: Option<&ds::Daemon<'_>>,
    collision: i64,
    now: Timestamp,
    nodes: &[NodeInfo],
) {
    let uid = meta_str(d, "uid");
    let mut status = d["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    if let Some(daemon) = daemon {
        let spec: PodSpec =
            serde_json::from_value(d["spec"]["template"]["spec"].clone()).unwrap_or_default();
        let eligible_owned = eligibility(nodes, &spec);
        let eligible = as_eligible(&eligible_owned);
        let pods: Vec<PodInfo> = owned_pods(w, d)
            .iter()
            .map(pod_info)
            .filter(|p| !p.deleting)
            .collect();
        let c = ds::status(daemon, &eligible, &pods, now);
        let mut s = BTreeMap::new();
        s.insert("currentNumberScheduled", json!(c.current));
        s.insert("desiredNumberScheduled", json!(c.desired));
        s.insert("numberMisscheduled", json!(c.misscheduled));
        s.insert("numberReady", json!(c.ready));
        for (k, n) in [
            ("numberAvailable", c.available),
            ("numberUnavailable", c.unavailable()),
            ("updatedNumberScheduled", c.updated),
        ] {
            if n != 0 {
                s.insert(k, json!(n));
            }
        }
        s.insert(
            "observedGeneration",
            json!(d["metadata"]["generation"].as_i64().unwrap_or(1)),
        );
        let conditions = status.get("conditions").cloned();
        status = json!(s);
        if let Some(c) = conditions {
            status["conditions"] = c;
        }
    }
    if collision > 0 {
        status["collisionCount"] = collision.into();
    }
    if d["status"] != status {
        let key = obj_key(DAEMON_SET, d);
        if let Err(e) = w.store.update_workload(&key, uid, |v| v["status"] = status) {
            warn!(daemonset = %key.2, namespace = %key.1, error = %e, "writing a status");
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    /// Plays the kubelet: every pod not being deleted runs and is ready; deleted ones go.
    fn kubelet(store: &Store) {
        for p in store.list_pods(Some("default")) {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let key = crate::store::key_of(&p);
            if p.metadata.deletion_timestamp.is_some() {
                store.remove_pod(&key, &uid);
                continue;
            }
            store.update_pod(&key, &uid, |p| {
                p.status = Some(PodStatus {
                    phase: Some("Running".into()),
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
            });
        }
    }

    fn images(store: &Store) -> Vec<String> {
        store
            .list_pods(Some("default"))
            .iter()
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn a_daemonset_runs_one_pod_per_node_and_rolls_out_with_history() {
        let store = Store::new("n1");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let w = Writer {
            store: &store,
            resync: &tx,
        };
        let d = json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "one"}]},
                },
            },
        });
        let made = internal::create(&w, Kind::Workload(DAEMON_SET), "default", d).unwrap();
        let uid = made["metadata"]["uid"].as_str().unwrap().to_string();
        let key: ObjKey = ("daemonsets".into(), "default".into(), "agent".into());
        for _ in 0..5 {
            super::super::run::sync_all(&w, Timestamp::now());
            kubelet(&store);
        }
        let pods = store.list_pods(Some("default"));
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert!(p.metadata.name.as_deref().unwrap().starts_with("agent-"));
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels["pod-template-generation"], "1");
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let revs = store.list_workloads("controllerrevisions", Some("default"));
        assert_eq!(revs.len(), 1);
        assert_eq!(revs[0]["revision"], 1);
        assert_eq!(
            labels[HASH_LABEL],
            revs[0]["metadata"]["labels"][HASH_LABEL].as_str().unwrap()
        );
        let s = store.workload(&key).unwrap()["status"].clone();
        assert_eq!(
            s,
            json!({"currentNumberScheduled": 1, "desiredNumberScheduled": 1, "numberMisscheduled": 0,
                   "numberReady": 1, "numberAvailable": 1, "updatedNumberScheduled": 1,
                   "observedGeneration": 1}),
        );
        // A new image: the pod is replaced, a second revision recorded.
        store
            .update_workload(&key, &uid, |v| {
                v["spec"]["template"]["spec"]["containers"][0]["image"] = "two".into();
            })
            .unwrap();
        for _ in 0..5 {
            super::super::run::sync_all(&w, Timestamp::now());
            kubelet(&store);
        }
        assert_eq!(images(&store), ["two"]);
        let revs = store.list_workloads("controllerrevisions", Some("default"));
        assert_eq!(revs.len(), 2);
        // Undo: the first revision's data put back renumbers it 3 and brings its pod back.
        let first = revs.iter().find(|r| r["revision"] == 1).unwrap().clone();
        store
            .update_workload(&key, &uid, |v| {
                crate::api::write::strategic_merge(v, &first["data"]);
            })
            .unwrap();
        for _ in 0..5 {
            super::super::run::sync_all(&w, Timestamp::now());
            kubelet(&store);
        }
        assert_eq!(images(&store), ["one"]);
        let revs = store.list_workloads("controllerrevisions", Some("default"));
        let mut numbers: Vec<i64> = revs
            .iter()
            .map(|r| r["revision"].as_i64().unwrap())
            .collect();
        numbers.sort();
        assert_eq!(numbers, [2, 3]);
        let s = store.workload(&key).unwrap()["status"].clone();
        assert_eq!(s["observedGeneration"], 3);
        assert_eq!(s["updatedNumberScheduled"], 1);
        // A node label the template selects on: the pod goes, then comes back.
        store
            .update_workload(&key, &uid, |v| {
                v["spec"]["template"]["spec"]["nodeSelector"] = json!({"role": "edge"});
            })
            .unwrap();
        for _ in 0..5 {
            super::super::run::sync_all(&w, Timestamp::now());
            kubelet(&store);
        }
        assert!(store.list_pods(Some("default")).is_empty());
        let s = store.workload(&key).unwrap()["status"].clone();
        assert_eq!(s["desiredNumberScheduled"], 0, "{s}");
        store.set_node_labels(BTreeMap::from([("role".into(), "edge".into())]));
        for _ in 0..5 {
            super::super::run::sync_all(&w, Timestamp::now());
            kubelet(&store);
        }
        assert_eq!(store.list_pods(Some("default")).len(), 1);
        // Deleting the DaemonSet: the collector removes its pods and revisions.
        internal::delete(&w, Kind::Workload(DAEMON_SET), "default", "agent").unwrap();
        for _ in 0..5 {
            super::super::run::sync_all(&w, Timestamp::now());
            kubelet(&store);
        }
        assert!(store.list_pods(Some("default")).is_empty());
        assert!(store.list_workloads("controllerrevisions", None).is_empty());
    }
}
