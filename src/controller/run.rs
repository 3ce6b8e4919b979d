//! The workload controllers' loop (issue 11): the ReplicaSet/ReplicationController controller,
//! the Deployment controller and the garbage collector, run inside skiffd over the store, as
//! kube-controller-manager runs them over the apiserver. Each pass reads the store, asks the
//! pure decisions in [`super::replicaset`] and [`super::deployment`], and carries them out
//! through the API's own write path (`api::write::internal`), so a controller's pod is checked
//! exactly as a client's. The store answers at once (there is no cache to fall behind), so no
//! expectations are needed: the next pass sees what this one did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{deployment as dep, replicaset as rs};
use crate::api::write::{Kind, Writer, internal};
use crate::manifest::workload::WorkloadKind;
use crate::selector::Selector;
use crate::store::{EventType, Involved, ObjKey, SOURCE_ANNOTATION, Store};

/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations not copied to its ReplicaSets (the controller's list).
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// How often a pass runs without a change (minReadySeconds, progress deadlines).
const PERIOD: Duration = Duration::from_secs(1);

/// Runs the controllers until the store's sender goes away; the HPAs read pod usage from
/// `sampler`. In a multi-host cluster `acting` says when this node is the elected leader
/// (with the cluster's objects in its store): the controllers pass only then.
pub async fn run(
    store: Arc<Store>,
    resync: tokio::sync::mpsc::UnboundedSender<()>,
    sampler: Arc<crate::api::metrics::Sampler>,
    mut acting: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let memory = Arc::new(std::sync::Mutex::new(super::autoscale::Memory::default()));
    let mut changed = store.subscribe();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        changed.borrow_and_update();
        if let Some(rx) = acting.as_mut()
            && !*rx.borrow_and_update()
        {
            continue;
        }
        let (st, tx) = (store.clone(), resync.clone());
        let (sampler, memory) = (sampler.clone(), memory.clone());
        let pass = tokio::task::spawn_blocking(move || {
            let w = Writer {
                store: &st,
                resync: &tx,
            };
            let now = Timestamp::now();
            sync_all(&w, now);
            let mut memory = memory.lock().unwrap_or_else(|e| e.into_inner());
            super::autoscale::sync_all(&w, &|ns| sampler.pods(Some(ns)), &mut memory, now);
        });
        if let Err(e) = pass.await {
            warn!(error = %e, "a workload controller pass failed");
        }
    }
}

/// One pass of every controller.
pub fn sync_all(w: &Writer, now: Timestamp) {
    collect_garbage(w);
    for d in w.store.list_workloads("deployments", None) {
        sync_deployment(w, &d, now);
    }
    for kind in [
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
    ] {
        for r in w.store.list_workloads(kind.plural(), None) {
            sync_replica_set(w, kind, &r, now);
        }
    }
    super::batch::sync_all(w, now);
    super::daemon::sync_all(w, now);
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

fn involved(kind: WorkloadKind, v: &Value) -> Involved {
    Involved {
        kind: kind.name().into(),
        namespace: meta_str(v, "namespace").into(),
        name: meta_str(v, "name").into(),
        uid: Some(meta_str(v, "uid").into()),
    }
}

fn owner_ref(kind: WorkloadKind, v: &Value) -> Value {
    json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "name": meta_str(v, "name"),
        "uid": meta_str(v, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn controller_uid(v: &Value) -> Option<&str> {
    v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

fn from_manifest(v: &Value) -> bool {
    v["metadata"]["annotations"][SOURCE_ANNOTATION]
        .as_str()
        .is_some_and(|s| s.starts_with("manifest:"))
}

fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// The pod selector of a workload (an RC's is a plain map).
pub(crate) fn selector_for(kind: WorkloadKind, v: &Value) -> Option<Selector> {
    let sel = &v["spec"]["selector"];
    if kind == WorkloadKind::ReplicationController {
        let m: BTreeMap<String, String> = serde_json::from_value(sel.clone()).ok()?;
        return Selector::from_map(&m).ok();
    }
    let ls = serde_json::from_value(sel.clone()).ok()?;
    Selector::from_label_selector(&ls).ok()
}

/// The pods a controller may own: those made through the API (a static pod belongs to its
/// file) in the namespace; in a multi-host cluster also those running on other nodes or
/// waiting for the scheduler.
pub(crate) fn api_pods(store: &Store, ns: &str) -> Vec<Pod> {
    let mut pods: Vec<Pod> = store
        .list_pods(Some(ns))
        .into_iter()
        .filter(|p| {
            !p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_ANNOTATION))
                .is_some_and(|s| s.starts_with("manifest:"))
        })
        .collect();
    pods.extend(store.elsewhere_pods(ns));
    pods
}

/// Whether the owner `v` still exists with the same uid and is not being deleted.
fn still_adopting(w: &Writer, kind: WorkloadKind, v: &Value) -> bool {
    w.store
        .workload(&obj_key(kind, v))
        .is_some_and(|cur| cur["metadata"]["uid"] == v["metadata"]["uid"] && !deleting(&cur))
}

fn event(w: &Writer, kind: WorkloadKind, v: &Value, ty: EventType, reason: &str, msg: &str) {
    w.store.event(&involved(kind, v), ty, reason, msg);
}

/// Keeps a ReplicaSet's (or RC's) pods at its replicas and reports its status.
fn sync_replica_set(w: &Writer, kind: WorkloadKind, r: &Value, now: Timestamp) {
    let ns = meta_str(r, "namespace");
    let name = meta_str(r, "name");
    let uid = meta_str(r, "uid");
    let Some(selector) = selector_for(kind, r) else {
        return;
    };
    let Ok(template) = serde_json::from_value::<PodTemplateSpec>(r["spec"]["template"].clone())
    else {
        return;
    };
    let owner = rs::Owner {
        uid,
        replicas: r["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize,
        selector: &selector,
        template: &template,
        min_ready_seconds: r["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
        deleting: deleting(r),
    };
    let pods = api_pods(w.store, ns);
    let plan = rs::plan(&owner, &pods);
    let me = owner_ref(kind, r);
    let mut failure: Option<String> = None;
    for p in &plan.adopt {
        // Read again just before adopting (the controller's `canAdopt`): an orphaning delete
        // may have begun since this sync read the owner.
        if !still_adopting(w, kind, r) {
            break;
        }
        let mut refs: Vec<Value> = pods
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(p))
            .and_then(|x| serde_json::to_value(&x.metadata.owner_references).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        refs.push(me.clone());
        if let Err(e) = internal::set_pod_owners(w, ns, p, Some(refs)) {
            debug!(pod = %p, error = %e.message(), "adopting a pod");
        }
    }
    for p in &plan.release {
        let refs: Vec<Value> = pods
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(p))
            .and_then(|x| serde_json::to_value(&x.metadata.owner_references).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|x| x["uid"] != uid)
            .collect();
        let _ = internal::set_pod_owners(w, ns, p, Some(refs));
    }
    if !owner.deleting {
        for _ in 0..plan.create {
            let mut meta = serde_json::to_value(template.metadata.clone().unwrap_or_default())
                .unwrap_or_else(|_| json!({}));
            meta["generateName"] = format!("{name}-").into();
            meta["namespace"] = ns.into();
            meta["ownerReferences"] = json!([me.clone()]);
            if let Some(m) = meta.as_object_mut() {
                m.remove("name");
            }
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": meta,
                "spec": r["spec"]["template"]["spec"].clone(),
            });
            match internal::create(w, Kind::Pod, ns, pod) {
                Ok(p) => event(
                    w,
                    kind,
                    r,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta_str(&p, "name")),
                ),
                Err(e) => {
                    let msg = format!("Error creating: {}", e.message());
                    event(w, kind, r, EventType::Warning, "FailedCreate", &msg);
                    failure = Some(msg);
                    break;
                }
            }
        }
    }
    for p in &plan.delete {
        match internal::delete(w, Kind::Pod, ns, p) {
            Ok(()) => event(
                w,
                kind,
                r,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {p}"),
            ),
            Err(e) => event(
                w,
                kind,
                r,
                EventType::Warning,
                "FailedDelete",
                &format!("Error deleting: {}", e.message()),
            ),
        }
    }
    let pods = api_pods(w.store, ns);
    let c = rs::status(&owner, &pods, now);
    let generation = r["metadata"]["generation"].as_i64().unwrap_or(1);
    let mut conditions: Vec<Value> = Vec::new();
    if let Some(msg) = &failure {
        let since = r["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "ReplicaFailure"))
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| now.to_string().into());
        conditions.push(json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": msg, "lastTransitionTime": since,
        }));
    }
    let mut status = json!({
        "replicas": c.replicas,
        "fullyLabeledReplicas": c.fully_labeled_replicas,
        "readyReplicas": c.ready_replicas,
        "availableReplicas": c.available_replicas,
        "observedGeneration": generation,
    });
    if !conditions.is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    if r["status"] != status {
        let _ = w
            .store
            .update_workload(&obj_key(kind, r), uid, |v| v["status"] = status);
    }
}

/// A Deployment's ReplicaSet as the rollout sees it.
struct Set {
    value: Value,
    name: String,
    uid: String,
    replicas: i32,
    available: i32,
    created: Timestamp,
    revision: i64,
}

impl Set {
    fn of(v: Value) -> Set {
        Set {
            name: meta_str(&v, "name").into(),
            uid: meta_str(&v, "uid").into(),
            replicas: v["spec"]["replicas"].as_i64().unwrap_or(0) as i32,
            available: v["status"]["availableReplicas"].as_i64().unwrap_or(0) as i32,
            created: meta_str(&v, "creationTimestamp")
                .parse()
                .unwrap_or(Timestamp::UNIX_EPOCH),
            revision: v["metadata"]["annotations"][REVISION]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            value: v,
        }
    }

    fn rs(&self) -> dep::Rs {
        dep::Rs {
            name: self.name.clone(),
            replicas: self.replicas,
            available: self.available,
            created: self.created,
        }
    }
}

// Templates compare without nulls and empty maps and lists: one sent back by a client
// (`resources: {}` from kubectl's rollback) is the same template (semantic equality).
use crate::kube::workload::normalized;

/// A ReplicaSet's template without its `pod-template-hash` label, to compare with its
/// Deployment's (the controller's `EqualIgnoreHash`).
fn template_without_hash(t: &Value) -> Value {
    let mut t = normalized(t);
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove(HASH_LABEL);
        if l.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    if t["metadata"].as_object().is_some_and(|m| m.is_empty()) {
        t.as_object_mut().map(|m| m.remove("metadata"));
    }
    t
}

fn scale_set(w: &Writer, d: &Value, set: &Set, to: i32, annotations: &[(&str, String)]) -> bool {
    let key = obj_key(WorkloadKind::ReplicaSet, &set.value);
    let r = w.store.update_workload(&key, &set.uid, |v| {
        v["spec"]["replicas"] = to.into();
        for (k, a) in annotations {
            v["metadata"]["annotations"][*k] = a.clone().into();
        }
    });
    if set.replicas != to && matches!(r, Ok(Some(_))) {
        let (dir, from) = if to > set.replicas {
            ("up", set.replicas)
        } else {
            ("down", set.replicas)
        };
        event(
            w,
            WorkloadKind::Deployment,
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!("Scaled {dir} replica set {} from {from} to {to}", set.name),
        );
        return true;
    }
    false
}

fn condition(
    old: &Value,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
    touch: bool,
) -> Value {
    let prev = old["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let same = prev.is_some_and(|p| p["status"] == status);
    let transition = match prev {
        Some(p) if same => p["lastTransitionTime"].clone(),
        _ => now.to_string().into(),
    };
    let update = match prev {
        Some(p) if same && !touch && p["reason"] == reason => p["lastUpdateTime"].clone(),
        _ => now.to_string().into(),
    };
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition,
    })
}

/// One Deployment: its ReplicaSets, the rollout step, cleanup and status.
fn sync_deployment(w: &Writer, d: &Value, now: Timestamp) {
    if deleting(d) {
        return;
    }
    let ns = meta_str(d, "namespace");
    let dname = meta_str(d, "name");
    let duid = meta_str(d, "uid");
    let Some(selector) = selector_for(WorkloadKind::Deployment, d) else {
        return;
    };
    let spec = &d["spec"];
    let replicas = spec["replicas"].as_i64().unwrap_or(1) as i32;
    let paused = spec["paused"] == true;
    let recreate = spec["strategy"]["type"] == "Recreate";
    let ru = &spec["strategy"]["rollingUpdate"];
    let io = |v: &Value| serde_json::from_value::<IntOrString>(v.clone()).ok();
    let (surge, unavailable) = dep::fenceposts(
        io(&ru["maxSurge"]).as_ref(),
        io(&ru["maxUnavailable"]).as_ref(),
        replicas,
    )
    .unwrap_or((1, 0));
    let (surge, unavailable) = if recreate {
        (0, replicas)
    } else {
        (surge, unavailable)
    };
    let mut progressed = false;

    // Claim ReplicaSets: adopt matching orphans, release owned ones that stopped matching.
    let mut sets: Vec<Set> = Vec::new();
    for r in w.store.list_workloads("replicasets", Some(ns)) {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(r["metadata"]["labels"].clone()).unwrap_or_default();
        let matches = selector.matches(&labels);
        match controller_uid(&r) {
            Some(u) if u == duid => {
                if matches {
                    sets.push(Set::of(r));
                } else {
                    let uid = meta_str(&r, "uid").to_string();
                    let _ = w.store.update_workload(
                        &obj_key(WorkloadKind::ReplicaSet, &r),
                        &uid,
                        |v| {
                            if let Some(a) = v["metadata"]["ownerReferences"].as_array_mut() {
                                a.retain(|x| x["uid"] != duid);
                            }
                        },
                    );
                }
            }
            None if matches
                && !from_manifest(&r)
                && !deleting(&r)
                && still_adopting(w, WorkloadKind::Deployment, d) =>
            {
                let uid = meta_str(&r, "uid").to_string();
                let me = owner_ref(WorkloadKind::Deployment, d);
                if let Ok(Some(v)) =
                    w.store
                        .update_workload(&obj_key(WorkloadKind::ReplicaSet, &r), &uid, |v| {
                            let refs = v["metadata"]["ownerReferences"]
                                .as_array()
                                .cloned()
                                .unwrap_or_default();
                            let mut refs = refs;
                            refs.push(me);
                            v["metadata"]["ownerReferences"] = Value::Array(refs);
                        })
                {
                    sets.push(Set::of(v));
                }
            }
            _ => {}
        }
    }
    let template = &normalized(&spec["template"]);
    let max_revision = sets.iter().map(|s| s.revision).max().unwrap_or(0);
    let mut new_idx = sets
        .iter()
        .position(|s| template_without_hash(&s.value["spec"]["template"]) == *template);
    let mut created_new: Option<String> = None;
    let mut collision = d["status"]["collisionCount"].as_i64().unwrap_or(0);
    // Annotations the new ReplicaSet carries: the Deployment's own (change-cause), revision,
    // desired and max replicas.
    let copied: BTreeMap<String, Value> = d["metadata"]["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()) && *k != SOURCE_ANNOTATION)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let rs_annotations: Vec<(&str, String)> = vec![
        (DESIRED, replicas.to_string()),
        (MAX_REPLICAS, (replicas + surge).to_string()),
    ];
    if new_idx.is_none() && !paused {
        let hash = dep::pod_template_hash(template, (collision > 0).then_some(collision as u32));
        let name = format!("{dname}-{hash}");
        let mut t = template.clone();
        t["metadata"]["labels"][HASH_LABEL] = hash.clone().into();
        let mut sel = spec["selector"].clone();
        sel["matchLabels"][HASH_LABEL] = hash.clone().into();
        let mut labels = template["metadata"]["labels"].clone();
        labels[HASH_LABEL] = hash.clone().into();
        let mut ann = serde_json::Map::new();
        for (k, v) in &copied {
            ann.insert(k.clone(), v.clone());
        }
        ann.insert(REVISION.into(), (max_revision + 1).to_string().into());
        ann.insert(DESIRED.into(), replicas.to_string().into());
        ann.insert(MAX_REPLICAS.into(), (replicas + surge).to_string().into());
        let empty = dep::Rs {
            name: name.clone(),
            replicas: 0,
            available: 0,
            created: now,
        };
        let all: Vec<dep::Rs> = sets.iter().map(Set::rs).collect();
        let initial = if recreate {
            0
        } else if sets.iter().all(|s| s.replicas == 0) {
            replicas
        } else {
            dep::new_rs_replicas(replicas, surge, &all, &empty)
        };
        let body = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": name, "namespace": ns, "labels": labels,
                "annotations": ann,
                "ownerReferences": [owner_ref(WorkloadKind::Deployment, d)],
            },
            "spec": {
                "replicas": initial,
                "minReadySeconds": spec["minReadySeconds"].as_i64().unwrap_or(0),
                "selector": sel,
                "template": t,
            },
        });
        match internal::create(w, Kind::Workload(WorkloadKind::ReplicaSet), ns, body) {
            Ok(v) => {
                if initial > 0 {
                    event(
                        w,
                        WorkloadKind::Deployment,
                        d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {name} from 0 to {initial}"),
                    );
                }
                created_new = Some(name);
                sets.push(Set::of(v));
                new_idx = Some(sets.len() - 1);
                progressed = true;
            }
            Err(e) if e.reason() == "AlreadyExists" => {
                // Another object has the name: the next pass tries the next hash.
                collision += 1;
            }
            Err(e) => {
                event(
                    w,
                    WorkloadKind::Deployment,
                    d,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Failed to create new replica set {name:?}: {}", e.message()),
                );
            }
        }
    }

    if let Some(i) = new_idx {
        // A rollback makes an old ReplicaSet new again: it gets the next revision. (Its
        // replica annotations change only with its size, below: they tell a scaling event.)
        let mut extra: Vec<(&str, String)> = Vec::new();
        if sets[i].revision < max_revision || sets[i].revision == 0 {
            extra.push((REVISION, (max_revision + 1).to_string()));
        }
        for (k, v) in &copied {
            if let Some(text) = v.as_str() {
                extra.push((k.as_str(), text.to_string()));
            }
        }
        let cur = &sets[i].value["metadata"]["annotations"];
        if extra
            .iter()
            .any(|(k, v)| cur[*k].as_str() != Some(v.as_str()))
        {
            let key = obj_key(WorkloadKind::ReplicaSet, &sets[i].value);
            if let Ok(Some(v)) = w.store.update_workload(&key, &sets[i].uid.clone(), |v| {
                for (k, a) in &extra {
                    v["metadata"]["annotations"][*k] = a.clone().into();
                }
            }) {
                sets[i] = Set::of(v);
            }
        }
    }

    // Pods of the old ReplicaSets that still run (for Recreate).
    let active_old_pods = |sets: &[Set], new: Option<usize>| -> usize {
        let old_uids: BTreeSet<&str> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new)
            .map(|(_, s)| s.uid.as_str())
            .collect();
        api_pods(w.store, ns)
            .iter()
            .filter(|p| {
                rs::controller_of(p).is_some_and(|r| old_uids.contains(r.uid.as_str()))
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded")
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed")
            })
            .count()
    };

    // A scaling event: an active ReplicaSet was sized for another replica count.
    let scaling_event = sets.iter().any(|s| {
        s.replicas > 0
            && s.value["metadata"]["annotations"][DESIRED]
                .as_str()
                .is_some_and(|d| d != replicas.to_string())
    });
    let all_rs: Vec<dep::Rs> = sets.iter().map(Set::rs).collect();
    let total: i32 = sets.iter().map(|s| s.replicas).sum();
    if created_new.is_none() && (paused || (scaling_event && !recreate)) {
        // The controller's `scale`: one active (or, with none, the latest) ReplicaSet takes
        // the new count; a saturated new one has the old ones scaled to 0; otherwise the
        // change is shared proportionally. Every active set gets its annotations brought in
        // line, which ends the scaling event.
        let active: Vec<usize> = (0..sets.len()).filter(|i| sets[*i].replicas > 0).collect();
        let single = match active.len() {
            0 => new_idx.or_else(|| (0..sets.len()).max_by_key(|i| sets[*i].created)),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = single {
            progressed |= scale_set(w, d, &sets[i], replicas, &rs_annotations);
        } else if let Some(ni) =
            new_idx.filter(|ni| sets[*ni].replicas == replicas && sets[*ni].available >= replicas)
        {
            for &i in active.iter().filter(|i| **i != ni) {
                progressed |= scale_set(w, d, &sets[i], 0, &rs_annotations);
            }
        } else {
            // The controller's `GetProportion`: each set scales to its share of the new
            // allowed size, over the size it was last sized for (its max-replicas
            // annotation), rounded, without passing the total change; what rounding leaves
            // goes to the largest set (newer first when scaling up, older when down).
            let allowed = replicas + surge;
            let diff = allowed - total;
            let mut order = active.clone();
            order.sort_by(|a, b| {
                let (x, y) = (&sets[*a], &sets[*b]);
                y.replicas.cmp(&x.replicas).then(if diff > 0 {
                    y.created.cmp(&x.created)
                } else {
                    x.created.cmp(&y.created)
                })
            });
            let mut added = 0;
            let mut targets: Vec<(usize, i32)> = Vec::new();
            for &i in &order {
                let set = &sets[i];
                let annotated = set.value["metadata"]["annotations"][MAX_REPLICAS]
                    .as_str()
                    .and_then(|v| v.parse::<i32>().ok())
                    .filter(|v| *v > 0)
                    .unwrap_or(total.max(1));
                let fraction = if replicas == 0 {
                    -set.replicas
                } else {
                    (f64::from(set.replicas) * f64::from(allowed) / f64::from(annotated)).round()
                        as i32
                        - set.replicas
                };
                let share = if diff > 0 {
                    fraction.min(diff - added).max(0)
                } else {
                    fraction.max(diff - added).min(0)
                };
                added += share;
                targets.push((i, set.replicas + share));
            }
            if let Some(first) = targets.first_mut() {
                first.1 = (first.1 + diff - added).max(0);
            }
            for (i, to) in targets {
                progressed |= scale_set(w, d, &sets[i], to, &rs_annotations);
            }
        }
    } else if let Some(ni) = new_idx.filter(|_| created_new.is_none()) {
        if recreate {
            let mut any_old = false;
            for (i, set) in sets.iter().enumerate() {
                if i != ni && set.replicas > 0 {
                    any_old = true;
                    progressed |= scale_set(w, d, set, 0, &rs_annotations);
                }
            }
            if !any_old && active_old_pods(&sets, Some(ni)) == 0 && sets[ni].replicas != replicas {
                progressed |= scale_set(w, d, &sets[ni], replicas, &rs_annotations);
            }
        } else {
            let new_rs = sets[ni].rs();
            let want = if new_rs.replicas > replicas {
                replicas
            } else {
                dep::new_rs_replicas(replicas, surge, &all_rs, &new_rs)
            };
            if want != new_rs.replicas {
                progressed |= scale_set(w, d, &sets[ni], want, &rs_annotations);
            }
            let old: Vec<dep::Rs> = sets
                .iter()
                .enumerate()
                .filter(|(i, s)| *i != ni && s.replicas > 0)
                .map(|(_, s)| s.rs())
                .collect();
            let new_now = dep::Rs {
                replicas: want,
                ..new_rs
            };
            for (name, to) in dep::old_rs_scale_down(replicas, unavailable, &old, &new_now) {
                if let Some(s) = sets.iter().find(|s| s.name == name) {
                    progressed |= scale_set(w, d, s, to, &rs_annotations);
                }
            }
        }
    }

    // Re-read what the steps above changed.
    let sets: Vec<Set> = sets
        .iter()
        .filter_map(|s| {
            w.store
                .workload(&obj_key(WorkloadKind::ReplicaSet, &s.value))
                .map(Set::of)
        })
        .collect();
    let new = new_idx.and_then(|_| {
        sets.iter()
            .find(|s| template_without_hash(&s.value["spec"]["template"]) == *template)
    });

    // revisionHistoryLimit: old, empty ReplicaSets beyond it go, oldest revision first.
    let limit = spec["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let mut empty_old: Vec<&Set> = sets
        .iter()
        .filter(|s| {
            Some(s.name.as_str()) != new.map(|n| n.name.as_str())
                && s.replicas == 0
                && s.value["status"]["replicas"].as_i64().unwrap_or(0) == 0
        })
        .collect();
    if empty_old.len() > limit {
        empty_old.sort_by_key(|s| s.revision);
        for s in &empty_old[..empty_old.len() - limit] {
            let _ = internal::delete(w, Kind::Workload(WorkloadKind::ReplicaSet), ns, &s.name);
        }
    }

    // Status and conditions.
    let st = |s: &Set, f: &str| s.value["status"][f].as_i64().unwrap_or(0) as i32;
    let total_pods: i32 = sets.iter().map(|s| st(s, "replicas")).sum();
    let spec_total: i32 = sets.iter().map(|s| s.replicas).sum();
    let ready: i32 = sets.iter().map(|s| st(s, "readyReplicas")).sum();
    let available: i32 = sets.iter().map(|s| st(s, "availableReplicas")).sum();
    let updated = new.map(|n| st(n, "replicas")).unwrap_or(0);
    let mut conditions = Vec::new();
    let min_available = replicas - if recreate { replicas } else { unavailable };
    conditions.push(if available >= min_available {
        condition(
            d,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            now,
            false,
        )
    } else {
        condition(
            d,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
            false,
        )
    });
    let prev_progress = d["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
        .cloned();
    let new_name = new.map(|n| n.name.clone()).unwrap_or_default();
    let complete = dep::complete(replicas, updated, total_pods, available)
        && new.is_some_and(|n| n.replicas == replicas)
        && spec_total == replicas;
    let deadline = spec["progressDeadlineSeconds"].as_i64();
    let progressing = if paused {
        condition(
            d,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            now,
            false,
        )
    } else if let Some(n) = &created_new {
        condition(
            d,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            &format!("Created new replica set \"{n}\""),
            now,
            true,
        )
    } else if complete {
        condition(
            d,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            now,
            false,
        )
    } else if progressed
        || prev_progress
            .as_ref()
            .is_some_and(|p| p["reason"] == "DeploymentPaused")
    {
        condition(
            d,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{new_name}\" is progressing."),
            now,
            true,
        )
    } else {
        let last: Option<Timestamp> = prev_progress
            .as_ref()
            .and_then(|p| p["lastUpdateTime"].as_str())
            .and_then(|t| t.parse().ok());
        let timed_out = match (deadline, last) {
            (Some(secs), Some(t)) => now.as_second() - t.as_second() > secs,
            _ => false,
        };
        if timed_out
            || prev_progress
                .as_ref()
                .is_some_and(|p| p["reason"] == "ProgressDeadlineExceeded")
        {
            condition(
                d,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                now,
                false,
            )
        } else {
            match prev_progress {
                Some(p) => p,
                None => condition(
                    d,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("ReplicaSet \"{new_name}\" is progressing."),
                    now,
                    true,
                ),
            }
        }
    };
    conditions.push(progressing);
    if let Some(f) = new.and_then(|n| {
        n.value["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "ReplicaFailure"))
            .cloned()
    }) {
        conditions.push(condition(
            d,
            "ReplicaFailure",
            "True",
            "FailedCreate",
            f["message"].as_str().unwrap_or_default(),
            now,
            false,
        ));
    }
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"].as_i64().unwrap_or(1),
        "replicas": total_pods,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (spec_total.max(replicas) - available).max(0),
        "conditions": conditions,
    });
    if collision > 0 {
        status["collisionCount"] = collision.into();
    }
    let revision = new.map(|n| n.revision.to_string());
    let key = obj_key(WorkloadKind::Deployment, d);
    let changes = d["status"] != status
        || revision
            .as_deref()
            .is_some_and(|r| d["metadata"]["annotations"][REVISION].as_str() != Some(r));
    if changes {
        let _ = w.store.update_workload(&key, duid, |v| {
            v["status"] = status;
            if let Some(r) = revision {
                v["metadata"]["annotations"][REVISION] = r.into();
            }
        });
    }
}

/// The garbage collector: dependents whose controller is gone are deleted (a background
/// deletion's second half, a manifest workload removed from its file), and an owner being
/// deleted in the foreground goes once its dependents have.
fn collect_garbage(w: &Writer) {
    let mut owners: BTreeMap<String, (WorkloadKind, Value)> = BTreeMap::new();
    for k in WorkloadKind::ALL {
        for v in w.store.list_workloads(k.plural(), None) {
            owners.insert(meta_str(&v, "uid").to_string(), (k, v));
        }
    }
    let mut still_owning: BTreeSet<String> = BTreeSet::new();
    let foreground = |uid: &str| {
        owners.get(uid).is_some_and(|(_, v)| {
            deleting(v)
                && v["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"))
        })
    };
    for (k, v) in w.store.api_objects("pods") {
        let Some(refs) = v["metadata"]["ownerReferences"].as_array() else {
            continue;
        };
        for r in refs {
            let uid = r["uid"].as_str().unwrap_or_default();
            let gone = !owners.contains_key(uid);
            if gone || foreground(uid) {
                if r["controller"] == true || gone {
                    debug!(pod = %k.2, owner = %uid, "garbage collecting a pod");
                    // The Job controller lets go of the pods of a Job that is gone, so its
                    // tracking finalizer does not hold them.
                    let _ = internal::remove_pod_finalizer(
                        w,
                        &k.1,
                        &k.2,
                        super::job::TRACKING_FINALIZER,
                    );
                    let _ = internal::delete(w, Kind::Pod, &k.1, &k.2);
                }
                still_owning.insert(uid.to_string());
            }
        }
    }
    for (uid, (kind, v)) in &owners {
        let Some(owner) = controller_uid(v) else {
            continue;
        };
        if !owners.contains_key(owner) || foreground(owner) {
            still_owning.insert(owner.to_string());
            if !from_manifest(v) {
                let _ = internal::delete(
                    w,
                    Kind::Workload(*kind),
                    meta_str(v, "namespace"),
                    meta_str(v, "name"),
                );
            }
        }
        let _ = uid;
    }
    // Foreground owners whose dependents are all gone are removed now.
    for (uid, (kind, v)) in &owners {
        if foreground(uid) && !still_owning.contains(uid) {
            // It goes with its last finalizer (a client's may still hold it).
            let _ = internal::remove_finalizer(
                w,
                Kind::Workload(*kind),
                meta_str(v, "namespace"),
                meta_str(v, "name"),
                "foregroundDeletion",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// Plays the kubelet: pods whose image is `good` run and are ready (since long ago), the
    /// others stay pending (an image that does not resolve).
    fn kubelet(store: &Store, good: &str) {
        for p in store.list_pods(Some("default")) {
            let image = p.spec.as_ref().and_then(|s| s.containers[0].image.clone());
            if image.as_deref() != Some(good) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = p.metadata.uid.clone().unwrap_or_default();
            store.update_pod(&crate::store::key_of(&p), &uid, |p| {
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

    /// Deleted pods are gone at once (no grace period to wait for here).
    fn reap(store: &Store) {
        for p in store.list_pods(Some("default")) {
            if p.metadata.deletion_timestamp.is_some() {
                store.remove_pod(
                    &crate::store::key_of(&p),
                    p.metadata.uid.as_deref().unwrap_or_default(),
                );
            }
        }
    }

    fn settle(w: &Writer, good: &str) {
        for _ in 0..30 {
            sync_all(w, Timestamp::now());
            reap(w.store);
            kubelet(w.store, good);
        }
    }

    fn replicas_by_image(store: &Store) -> BTreeMap<String, i64> {
        store
            .list_workloads("replicasets", Some("default"))
            .iter()
            .map(|r| {
                (
                    r["spec"]["template"]["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    r["spec"]["replicas"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// The concepts guide's proportional scaling example: 10 replicas, maxSurge 3,
    /// maxUnavailable 2, an image that does not resolve blocks the rollout at 8 old and 5 new
    /// pods; scaling to 15 then shares the 5 more pods 3 to the old and 2 to the new ReplicaSet.
    #[test]
    fn proportional_scaling_as_in_the_guide() {
        let store = Store::new("n");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let w = Writer {
            store: &store,
            resync: &tx,
        };
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "nginx-deployment"},
            "spec": {
                "replicas": 10,
                "strategy": {"rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}},
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.7.9"}]},
                },
            },
        });
        let kind = Kind::Workload(WorkloadKind::Deployment);
        let made = internal::create(&w, kind, "default", d).unwrap();
        let uid = made["metadata"]["uid"].as_str().unwrap().to_string();
        let key: ObjKey = (
            "deployments".into(),
            "default".into(),
            "nginx-deployment".into(),
        );
        settle(&w, "nginx:1.7.9");
        assert_eq!(
            replicas_by_image(&store),
            BTreeMap::from([("nginx:1.7.9".to_string(), 10)])
        );
        let status = store.workload(&key).unwrap()["status"].clone();
        assert_eq!(status["availableReplicas"], 10, "{status}");
        store
            .update_workload(&key, &uid, |v| {
                v["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:sometag".into();
            })
            .unwrap();
        settle(&w, "nginx:1.7.9");
        assert_eq!(
            replicas_by_image(&store),
            BTreeMap::from([
                ("nginx:1.7.9".to_string(), 8),
                ("nginx:sometag".to_string(), 5)
            ])
        );
        store
            .update_workload(&key, &uid, |v| v["spec"]["replicas"] = 15.into())
            .unwrap();
        settle(&w, "nginx:1.7.9");
        assert_eq!(
            replicas_by_image(&store),
            BTreeMap::from([
                ("nginx:1.7.9".to_string(), 11),
                ("nginx:sometag".to_string(), 7)
            ])
        );
        let d = store.workload(&key).unwrap();
        assert_eq!(d["status"]["updatedReplicas"], 7, "{d}");
        assert_eq!(d["status"]["availableReplicas"], 11, "{d}");
    }

    #[test]
    fn a_replica_sets_template_is_compared_without_its_hash_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        let mut with_hash = t.clone();
        with_hash["metadata"]["labels"][HASH_LABEL] = "abc".into();
        assert_eq!(template_without_hash(&with_hash), normalized(&t));
        let bare = json!({"metadata": {"labels": {HASH_LABEL: "x"}}, "spec": {"a": 1}});
        assert_eq!(template_without_hash(&bare), json!({"spec": {"a": 1}}));
        // What kubectl's rollback sends back is the same template.
        let sent = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "resources": {}}], "volumes": []}});
        assert_eq!(
            template_without_hash(&sent),
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}})
        );
    }
}
