//! The ReplicaSet (and ReplicationController) controller's decisions, as kube-controller-manager
//! makes them (`pkg/controller/replicaset`), without I/O: which pods a ReplicaSet owns (claim:
//! adopt matching orphans, release owned pods that no longer match), how many to create or
//! which to delete (the controller's ranking), and the status it reports. The caller reads the
//! store, calls [`plan`], carries the plan out and writes [`status`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::selector::Selector;

/// At most this many creations or deletions in one sync (the controller's `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// What a ReplicaSet looks like to its controller, whatever its kind (ReplicaSet, RC).
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    pub uid: &'a str,
    pub replicas: usize,
    pub selector: &'a Selector,
    pub template: &'a PodTemplateSpec,
    pub min_ready_seconds: i64,
    /// Being deleted: it adopts nothing more.
    pub deleting: bool,
}

/// One sync's decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Orphans to adopt (set our controller reference), by name.
    pub adopt: Vec<String>,
    /// Owned pods whose labels no longer match: drop our controller reference.
    pub release: Vec<String>,
    /// How many pods to create from the template.
    pub create: usize,
    /// Pods to delete, in the order the controller picks them.
    pub delete: Vec<String>,
}

/// The pod's controller reference, if any.
pub fn controller_of(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// Not finished and not being deleted (the controller's `FilterActivePods`).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

fn condition_true(pod: &Pod, kind: &str) -> Option<jiff::Timestamp> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Ready, and since when.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    condition_true(pod, "Ready")
}

/// Ready for at least `min_ready_seconds` at `now` (the controller's `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i64, now: jiff::Timestamp) -> bool {
    ready_since(pod).is_some_and(|since| {
        min_ready_seconds == 0 || now.as_second() - since.as_second() >= min_ready_seconds
    })
}

/// The pods the owner controls after claiming: owned ones that still match, plus matching
/// orphans it adopts.
pub fn claim<'p>(owner: &Owner<'_>, pods: &'p [Pod]) -> (Vec<&'p Pod>, Vec<String>, Vec<String>) {
    let mut mine = Vec::new();
    let (mut adopt, mut release) = (Vec::new(), Vec::new());
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let matches = owner.selector.matches(&labels(pod));
        match controller_of(pod) {
            Some(r) if r.uid == owner.uid => {
                if matches {
                    mine.push(pod);
                } else if is_active(pod) {
                    release.push(name);
                }
            }
            Some(_) => {}
            None => {
                if matches && !owner.deleting && is_active(pod) {
                    adopt.push(name);
                    mine.push(pod);
                }
            }
        }
    }
    (mine, adopt, release)
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn created(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The controller's deletion order (`ActivePodsWithRanks`): the pod that should go first
/// sorts first. `rank` is the number of the owner's active pods on the same node: pods
/// doubled up on a node go before lone ones.
fn deletion_order(a: &Pod, ra: usize, b: &Pod, rb: usize) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("")
            .is_empty()
    };
    // 1. Unscheduled before scheduled.
    node(b)
        .cmp(&node(a))
        // 2. Pending < Unknown < Running.
        .then(phase_rank(a).cmp(&phase_rank(b)))
        // 3. Not ready before ready.
        .then(ready_since(a).is_some().cmp(&ready_since(b).is_some()))
        // 4. More pods of the owner on the same node first.
        .then(rb.cmp(&ra))
        // 5. Ready for less time first (both ready).
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        // 6. More restarts first.
        .then(restarts(b).cmp(&restarts(a)))
        // 7. No creation time, then newer before older.
        .then_with(|| match (created(a), created(b)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x),
        })
}

/// Which of `pods` to delete to remove `count`, in the controller's order.
pub fn pods_to_delete<'p>(pods: &[&'p Pod], count: usize) -> Vec<&'p Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let rank = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| per_node.get(n).copied())
            .unwrap_or(0)
    };
    let mut ranked: Vec<(&Pod, usize)> = pods.iter().map(|p| (*p, rank(p))).collect();
    ranked.sort_by(|(a, ra), (b, rb)| deletion_order(a, *ra, b, *rb));
    ranked.into_iter().take(count).map(|(p, _)| p).collect()
}

/// One sync: claim, then create or delete towards `replicas` (at most [`BURST_REPLICAS`]).
pub fn plan(owner: &Owner<'_>, pods: &[Pod]) -> Plan {
    let (mine, adopt, release) = claim(owner, pods);
    let active: Vec<&Pod> = mine.into_iter().filter(|p| is_active(p)).collect();
    let mut plan = Plan {
        adopt,
        release,
        ..Plan::default()
    };
    match active.len().cmp(&owner.replicas) {
        Ordering::Less => plan.create = (owner.replicas - active.len()).min(BURST_REPLICAS),
        Ordering::Greater => {
            let n = (active.len() - owner.replicas).min(BURST_REPLICAS);
            plan.delete = pods_to_delete(&active, n)
                .into_iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        }
        Ordering::Equal => {}
    }
    plan
}

/// The counts a ReplicaSet's status reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
}

/// The status counts over the owner's claimed active pods.
pub fn status(owner: &Owner<'_>, pods: &[Pod], now: jiff::Timestamp) -> Counts {
    let (mine, _, _) = claim(owner, pods);
    let template_labels = owner
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut c = Counts::default();
    for pod in mine.into_iter().filter(|p| is_active(p)) {
        c.replicas += 1;
        let l = labels(pod);
        if template_labels.iter().all(|(k, v)| l.get(k) == Some(v)) {
            c.fully_labeled_replicas += 1;
        }
        if ready_since(pod).is_some() {
            c.ready_replicas += 1;
        }
        if is_available(pod, owner.min_ready_seconds, now) {
            c.available_replicas += 1;
        }
    }
    c
}

/// The `<owner>-<5 chars>` name the apiserver gives a `generateName` of `<owner>-`, from its
/// alphabet (no vowels, no look-alike characters).
pub fn generated_name(prefix: &str, random: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random;
    let mut suffix = String::with_capacity(5);
    for _ in 0..5 {
        suffix.push(ALPHABET[(r % ALPHABET.len() as u64) as usize] as char);
        r /= ALPHABET.len() as u64;
    }
    // The apiserver keeps names at 63 characters: the prefix is cut to leave room.
    let keep = prefix.len().min(58);
    format!("{}{suffix}", &prefix[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWNER: &str = "rs-uid";

    fn pod(name: &str, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"app": "web"},
                          "creationTimestamp": "2026-01-01T00:00:00Z",
                          "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                               "name": "rs", "uid": OWNER, "controller": true}]},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running"},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn ready(at: &str) -> serde_json::Value {
        json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at}]}})
    }

    fn template() -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}}))
            .unwrap()
    }

    fn with_owner<T>(replicas: usize, f: impl FnOnce(&Owner<'_>) -> T) -> T {
        let sel = Selector::parse("app=web").unwrap();
        let t = template();
        let owner = Owner {
            uid: OWNER,
            replicas,
            selector: &sel,
            template: &t,
            min_ready_seconds: 0,
            deleting: false,
        };
        f(&owner)
    }

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn creates_the_missing_pods_and_deletes_the_surplus() {
        let pods = vec![pod("a", json!({})), pod("b", json!({}))];
        let p = with_owner(5, |o| plan(o, &pods));
        assert_eq!(p.create, 3);
        assert!(p.delete.is_empty());
        let p = with_owner(1, |o| plan(o, &pods));
        assert_eq!(p.create, 0);
        assert_eq!(p.delete.len(), 1);
        let p = with_owner(2, |o| plan(o, &pods));
        assert_eq!(p, Plan::default());
        // At most a burst per sync.
        let p = with_owner(2000, |o| plan(o, &pods));
        assert_eq!(p.create, BURST_REPLICAS);
    }

    #[test]
    fn finished_and_terminating_pods_are_replaced() {
        let pods = vec![
            pod("done", json!({"status": {"phase": "Succeeded"}})),
            pod("failed", json!({"status": {"phase": "Failed"}})),
            pod(
                "going",
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:10Z"}}),
            ),
            pod("ok", json!({})),
        ];
        let p = with_owner(3, |o| plan(o, &pods));
        assert_eq!(p.create, 2);
    }

    #[test]
    fn orphans_matching_are_adopted_and_mismatching_owned_pods_released() {
        let orphan = pod("orphan", json!({"metadata": {"ownerReferences": null}}));
        let other = pod(
            "other",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "x", "uid": "someone-else", "controller": true}]}}),
        );
        let relabeled = pod(
            "relabeled",
            json!({"metadata": {"labels": {"app": "debug"}}}),
        );
        let unmatched_orphan = pod(
            "stray",
            json!({"metadata": {"ownerReferences": null, "labels": {"app": "db"}}}),
        );
        let pods = vec![orphan, other, relabeled, unmatched_orphan];
        let p = with_owner(1, |o| plan(o, &pods));
        assert_eq!(names(&p.adopt), ["orphan"]);
        assert_eq!(names(&p.release), ["relabeled"]);
        assert_eq!(p.create, 0, "the adopted orphan counts");
        // A ReplicaSet being deleted adopts nothing.
        let sel = Selector::parse("app=web").unwrap();
        let t = template();
        let deleting = Owner {
            uid: OWNER,
            replicas: 1,
            selector: &sel,
            template: &t,
            min_ready_seconds: 0,
            deleting: true,
        };
        assert!(plan(&deleting, &pods).adopt.is_empty());
    }

    #[test]
    fn scale_down_removes_pods_in_the_controllers_order() {
        let pods = vec![
            pod("ready-old", json!({"spec": {"nodeName": "n1"}}).clone()),
            pod(
                "pending",
                json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}),
            ),
            pod("unscheduled", json!({"status": {"phase": "Pending"}})),
            pod("not-ready", json!({"spec": {"nodeName": "n1"}})),
            pod(
                "restarty",
                json!({"spec": {"nodeName": "n2"}, "status": {"containerStatuses": [
                {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 5}]}}),
            ),
        ];
        // Make the first ready (long ago), the others not ready.
        let mut pods = pods;
        pods[0] = pod(
            "ready-old",
            json!({"spec": {"nodeName": "n1"}, "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        );
        let refs: Vec<&Pod> = pods.iter().collect();
        let order: Vec<&str> = pods_to_delete(&refs, 5)
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        // Unscheduled, then Pending, then not-ready Running (doubled-up node n1 before n2),
        // then the ready one last.
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "restarty",
                "ready-old"
            ]
        );
    }

    #[test]
    fn among_ready_pods_the_newest_ready_and_newest_created_go_first() {
        let a = pod("ready-long", ready("2026-01-01T00:00:00Z"));
        let b = pod("ready-short", ready("2026-01-01T01:00:00Z"));
        let mut c = pod("young", ready("2026-01-01T00:00:00Z"));
        c.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-02T00:00:00Z".parse().unwrap(),
        ));
        let refs = vec![&a, &b, &c];
        let order: Vec<&str> = pods_to_delete(&refs, 3)
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(order, ["ready-short", "young", "ready-long"]);
    }

    #[test]
    fn status_counts_labels_readiness_and_availability() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let pods = vec![
            pod(
                "full",
                json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}, "status": {"conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
            ),
            pod("fresh", ready("2026-01-01T00:00:50Z")),
            pod("starting", json!({})),
            pod("done", json!({"status": {"phase": "Succeeded"}})),
        ];
        let sel = Selector::parse("app=web").unwrap();
        let t = template();
        let owner = Owner {
            uid: OWNER,
            replicas: 3,
            selector: &sel,
            template: &t,
            min_ready_seconds: 30,
            deleting: false,
        };
        assert_eq!(
            status(&owner, &pods, now),
            Counts {
                replicas: 3,
                fully_labeled_replicas: 1,
                ready_replicas: 2,
                available_replicas: 1,
            }
        );
    }

    #[test]
    fn generated_names_use_the_apiservers_alphabet_and_length() {
        let n = generated_name("web-7d4b9c8f5-", 123_456_789);
        assert_eq!(n.len(), "web-7d4b9c8f5-".len() + 5);
        assert!(
            n["web-7d4b9c8f5-".len()..]
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
        assert_ne!(generated_name("x-", 1), generated_name("x-", 2));
        assert_eq!(generated_name(&"a".repeat(70), 0).len(), 63);
    }
}
