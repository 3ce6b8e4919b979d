//! The DaemonSet controller's decisions, as kube-controller-manager makes them
//! (`pkg/controller/daemon`), without I/O: which nodes should run the daemon pod (node
//! selector, required node affinity, taints against the pod's tolerations plus the default
//! DaemonSet tolerations), what a daemon pod looks like (bound to its node by a
//! `metadata.name` node affinity, as the modern controller binds it), the revision a template
//! is (`controller-revision-hash`, the ControllerRevision's data), which pods to create and
//! delete (one per eligible node, the `RollingUpdate` step with `maxUnavailable`/`maxSurge`,
//! nothing for `OnDelete`) and the status. The loop in [`super::daemon`] reads the store and
//! carries these out.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::deployment::scaled;

/// The label naming the revision (template hash) a daemon pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";
/// The label with the DaemonSet's template generation a pod was made from.
pub const GENERATION_LABEL: &str = "pod-template-generation";

/// A node as the DaemonSet controller sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// The tolerations every daemon pod gets (`AddOrUpdateDaemonPodTolerations`): it keeps
/// running on a node that is not ready, unreachable, under pressure or cordoned.
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        // `AddOrUpdateTolerationInPod`: an equal toleration already there is kept.
        if !list.iter().any(|x| {
            x.key == t.key && x.effect == t.effect && x.operator.as_deref() == Some("Exists")
        }) {
            list.push(t);
        }
    }
}

/// Whether `t` tolerates `taint` (`Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// `(shouldRun, shouldContinueRunning)` of the controller's `NodeShouldRunDaemonPod`: the
/// pod's node selector and required affinity match the node, and no `NoSchedule` (for a new
/// pod) or `NoExecute` (for any pod) taint goes untolerated. `spec` carries the default
/// tolerations already.
pub fn should_run(node: &NodeInfo, spec: &PodSpec) -> (bool, bool) {
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node.name)
    {
        return (false, false);
    }
    let pod = k8s_openapi::api::core::v1::Pod {
        spec: Some(spec.clone()),
        ..Default::default()
    };
    if crate::pod::admission::node_affinity(&pod, &node.name, &node.labels).is_err() {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effect: &str| {
        node.taints
            .iter()
            .any(|taint| taint.effect == effect && !tolerations.iter().any(|t| tolerates(t, taint)))
    };
    if untolerated("NoExecute") {
        return (false, false);
    }
    (!untolerated("NoSchedule"), true)
}

/// The pod spec a daemon pod for `node` runs: the template's, with the default tolerations and
/// the required node affinity replaced by one term on the node's name
/// (`ReplaceDaemonSetPodNodeNameNodeAffinity`).
pub fn pod_spec_for(template: &PodSpec, node: &str) -> PodSpec {
    let mut spec = template.clone();
    add_default_tolerations(&mut spec);
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        ..Default::default()
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    spec
}

/// The revision hash of a template (`controller.ComputeHash`, as for a Deployment's
/// `pod-template-hash`).
pub fn revision_hash(template: &Value, collision_count: Option<u32>) -> String {
    super::deployment::pod_template_hash(&normalized(template), collision_count)
}

/// A ControllerRevision's `data` for a template (the controller's `getPatch`): the strategic
/// merge patch that puts the template back, which `kubectl rollout undo` sends.
pub fn revision_data(template: &Value) -> Value {
    let mut t = normalized(template);
    if !t.is_object() {
        t = json!({});
    }
    t["$patch"] = "replace".into();
    json!({"spec": {"template": t}})
}

/// Drops nulls and empty maps and lists: a template sent back by a client is the same one.
pub fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), normalized(x)))
                .filter(|(_, x)| match x {
                    Value::Null => false,
                    Value::Object(o) => !o.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// How a DaemonSet replaces its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// A pod is replaced only once it has been deleted.
    OnDelete,
    RollingUpdate {
        max_surge: IntOrString,
        max_unavailable: IntOrString,
    },
}

impl Strategy {
    /// From a DaemonSet's `spec.updateStrategy` (defaulted).
    pub fn of(update_strategy: &Value) -> Strategy {
        if update_strategy["type"] == "OnDelete" {
            return Strategy::OnDelete;
        }
        let ru = &update_strategy["rollingUpdate"];
        let io =
            |v: &Value, d: i32| serde_json::from_value(v.clone()).unwrap_or(IntOrString::Int(d));
        Strategy::RollingUpdate {
            max_surge: io(&ru["maxSurge"], 0),
            max_unavailable: io(&ru["maxUnavailable"], 1),
        }
    }

    /// `(maxSurge, maxUnavailable)` as pod counts over `desired` nodes
    /// (`updatedDesiredNodeCounts`): both round up, and when both are 0, one may be
    /// unavailable.
    pub fn counts(&self, desired: i32) -> (i32, i32) {
        match self {
            Strategy::OnDelete => (0, 0),
            Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            } => {
                let surge = scaled(max_surge, desired, true).unwrap_or(0);
                let unavailable = scaled(max_unavailable, desired, true).unwrap_or(1);
                if surge == 0 && unavailable == 0 {
                    (0, 1)
                } else {
                    (surge, unavailable)
                }
            }
        }
    }
}

/// A daemon pod as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    /// Its `controller-revision-hash` label.
    pub hash: String,
    /// Ready, and since when.
    pub ready_since: Option<Timestamp>,
    pub failed: bool,
    pub deleting: bool,
    pub created: Timestamp,
}

impl PodInfo {
    fn available(&self, min_ready_seconds: i64, now: Timestamp) -> bool {
        self.ready_since.is_some_and(|since| {
            min_ready_seconds == 0 || now.as_second() - since.as_second() >= min_ready_seconds
        })
    }
}

/// What one sync decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes that get a new daemon pod.
    pub create: Vec<String>,
    /// Daemon pods to delete, by name.
    pub delete: Vec<String>,
    /// The failed pods among them, with their nodes (for the backoff and the
    /// `FailedDaemonPod` event).
    pub failed: Vec<(String, String)>,
}

/// What the plan needs of a DaemonSet.
#[derive(Debug, Clone)]
pub struct Daemon<'a> {
    /// The current revision's hash.
    pub hash: &'a str,
    pub strategy: &'a Strategy,
    pub min_ready_seconds: i64,
    /// Nodes whose failed daemon pod is not to be deleted yet ([`FailedPodsBackoff`]).
    pub backoff: &'a BTreeSet<String>,
}

/// The controller's `failedPodsBackoff`: a failed daemon pod is deleted (and so replaced) at
/// once the first time, then only after a delay that doubles from 1 s up to 15 min per
/// DaemonSet and node, so a pod the node keeps failing (admission, eviction) is not recreated
/// in a tight loop. An entry untouched for twice the maximum starts over.
#[derive(Debug, Default)]
pub struct FailedPodsBackoff {
    /// Key -> (current delay, when it was last raised).
    entries: BTreeMap<String, (SignedDuration, Timestamp)>,
}

impl FailedPodsBackoff {
    pub const fn new() -> Self {
        FailedPodsBackoff {
            entries: BTreeMap::new(),
        }
    }

    pub const INITIAL: SignedDuration = SignedDuration::from_secs(1);
    pub const MAX: SignedDuration = SignedDuration::from_secs(15 * 60);

    /// The key of a DaemonSet's node (`failedPodsBackoffKey`).
    pub fn key(ds_uid: &str, node: &str) -> String {
        format!("{ds_uid}/{node}")
    }

    /// Whether `key` is still waiting since its last raise (`IsInBackOffSinceUpdate`).
    pub fn in_backoff(&self, key: &str, now: Timestamp) -> bool {
        self.entries
            .get(key)
            .is_some_and(|(delay, at)| now.duration_since(*at) < *delay)
    }

    /// Records a deletion: the delay starts at [`Self::INITIAL`] and doubles up to [`Self::MAX`].
    pub fn next(&mut self, key: &str, now: Timestamp) {
        let delay = match self.entries.get(key) {
            Some((d, at)) if now.duration_since(*at) <= Self::MAX * 2 => (*d * 2).min(Self::MAX),
            _ => Self::INITIAL,
        };
        self.entries.insert(key.to_string(), (delay, now));
    }

    /// Drops the entries that have expired (`GC`).
    pub fn gc(&mut self, now: Timestamp) {
        self.entries
            .retain(|_, (_, at)| now.duration_since(*at) <= Self::MAX * 2);
    }
}

/// A node with its `(shouldRun, shouldContinueRunning)`.
pub type Eligible<'a> = (&'a str, bool, bool);

fn by_node(pods: &[PodInfo]) -> BTreeMap<&str, Vec<&PodInfo>> {
    let mut m: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
    for p in pods {
        m.entry(p.node.as_str()).or_default().push(p);
    }
    for list in m.values_mut() {
        list.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    }
    m
}

/// One sync: the controller's `manage` (a pod on every node that should run one, none where
/// it should not, failed and duplicate pods removed) then, for `RollingUpdate`, its
/// `rollingUpdate` step over the same view.
pub fn plan(ds: &Daemon<'_>, nodes: &[Eligible<'_>], pods: &[PodInfo], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let on = by_node(pods);
    let (surge, max_unavailable) = {
        let desired = nodes.iter().filter(|n| n.1).count() as i32;
        ds.strategy.counts(desired)
    };
    let surging = surge > 0;
    for &(node, run, keep) in nodes {
        let here = on.get(node).cloned().unwrap_or_default();
        if run && here.is_empty() {
            out.create.push(node.to_string());
        } else if keep {
            let mut running = Vec::new();
            let waiting = ds.backoff.contains(node);
            for p in here.iter().filter(|p| !p.deleting) {
                if p.failed {
                    if !waiting {
                        out.delete.push(p.name.clone());
                        out.failed.push((node.to_string(), p.name.clone()));
                    }
                } else {
                    running.push(*p);
                }
            }
            // A failed pod is replaced in the same pass it is deleted; one kept for its
            // backoff still holds the node.
            if run && !waiting && running.is_empty() && here.iter().all(|p| p.failed && !p.deleting)
            {
                out.create.push(node.to_string());
            }
            if running.len() > 1 {
                if !surging {
                    out.delete
                        .extend(running[1..].iter().map(|p| p.name.clone()));
                } else {
                    let (mut new, mut old): (Option<&PodInfo>, Option<&PodInfo>) = (None, None);
                    for p in &running {
                        let slot = if p.hash == ds.hash {
                            &mut new
                        } else {
                            &mut old
                        };
                        if slot.is_none() {
                            *slot = Some(p);
                        } else {
                            out.delete.push(p.name.clone());
                        }
                    }
                    if let (Some(n), Some(o)) = (new, old)
                        && (o.ready_since.is_none() || n.available(ds.min_ready_seconds, now))
                    {
                        out.delete.push(o.name.clone());
                    }
                }
            }
        } else {
            out.delete
                .extend(here.iter().filter(|p| !p.deleting).map(|p| p.name.clone()));
        }
    }
    if matches!(ds.strategy, Strategy::RollingUpdate { .. }) {
        if surge == 0 {
            replace_within_unavailable(ds, &on, max_unavailable, now, &mut out);
        } else {
            surge_replacements(ds, nodes, &on, surge, now, &mut out);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.delete.retain(|n| seen.insert(n.clone()));
    let mut seen = std::collections::BTreeSet::new();
    out.create.retain(|n| seen.insert(n.clone()));
    out
}

/// The new and old pod on a node (`findUpdatedPodsOnNode`); `None` when there are several of
/// either (the manage step cleans up first).
#[allow(clippy::type_complexity)]
fn updated_on<'p>(
    pods: &[&'p PodInfo],
    hash: &str,
) -> Option<(Option<&'p PodInfo>, Option<&'p PodInfo>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().filter(|p| !p.deleting) {
        let slot = if p.hash == hash { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*p);
    }
    Some((new, old))
}

/// The rolling update without surge: old available pods deleted while the nodes without an
/// available pod stay within `maxUnavailable`; an unavailable old pod goes at once.
fn replace_within_unavailable(
    ds: &Daemon<'_>,
    on: &BTreeMap<&str, Vec<&PodInfo>>,
    max_unavailable: i32,
    now: Timestamp,
    out: &mut Plan,
) {
    let available = |p: &PodInfo| p.available(ds.min_ready_seconds, now);
    let mut unavailable = 0;
    let mut replace_now = Vec::new();
    let mut candidates = Vec::new();
    for (_, pods) in on.iter() {
        match updated_on(pods, ds.hash) {
            None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
            Some((Some(n), None)) => {
                if !available(n) {
                    unavailable += 1;
                }
            }
            Some((None, Some(o))) => {
                if !available(o) {
                    replace_now.push(o.name.clone());
                } else if unavailable < max_unavailable {
                    candidates.push(o.name.clone());
                }
            }
        }
    }
    let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
    out.delete.extend(replace_now);
    out.delete.extend(candidates.into_iter().take(room));
}

/// The rolling update with surge: a new pod next to the old one (at most `maxSurge` waiting
/// at once, at once for an unavailable old pod), the old one deleted once the new one is
/// available.
fn surge_replacements(
    ds: &Daemon<'_>,
    nodes: &[Eligible<'_>],
    on: &BTreeMap<&str, Vec<&PodInfo>>,
    surge: i32,
    now: Timestamp,
    out: &mut Plan,
) {
    let available = |p: &PodInfo| p.available(ds.min_ready_seconds, now);
    let mut surged = 0;
    for &(node, run, _) in nodes {
        let pods = on.get(node).cloned().unwrap_or_default();
        let Some((new, old)) = updated_on(&pods, ds.hash) else {
            continue;
        };
        let Some(old) = old else { continue };
        if !run {
            out.delete.push(old.name.clone());
            continue;
        }
        match new {
            None if !available(old) => out.create.push(node.to_string()),
            None if surged < surge => {
                surged += 1;
                out.create.push(node.to_string());
            }
            None => {}
            Some(n) if available(n) => out.delete.push(old.name.clone()),
            Some(_) => surged += 1,
        }
    }
}

/// A DaemonSet's status counts (`updateDaemonSetStatus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
}

impl Counts {
    pub fn unavailable(&self) -> i32 {
        (self.desired - self.available).max(0)
    }
}

/// The status counts over the nodes and the daemon pods (the oldest pod of a node counts).
pub fn status(ds: &Daemon<'_>, nodes: &[Eligible<'_>], pods: &[PodInfo], now: Timestamp) -> Counts {
    let on = by_node(pods);
    let mut c = Counts::default();
    for &(node, run, _) in nodes {
        let here = on.get(node);
        let scheduled = here.is_some_and(|p| !p.is_empty());
        if !run {
            if scheduled {
                c.misscheduled += 1;
            }
            continue;
        }
        c.desired += 1;
        let Some(first) = here.and_then(|p| p.first()) else {
            continue;
        };
        c.current += 1;
        if first.ready_since.is_some() {
            c.ready += 1;
            if first.available(ds.min_ready_seconds, now) {
                c.available += 1;
            }
        }
        if first.hash == ds.hash {
            c.updated += 1;
        }
    }
    // Pods on nodes that are gone are misscheduled too.
    for (node, _) in on.iter() {
        if !nodes.iter().any(|n| n.0 == *node) {
            c.misscheduled += 1;
        }
    }
    c
}

/// Pods bound to nodes that are not in `nodes` (gone from the cluster): to delete.
pub fn orphaned_by_node<'p>(nodes: &[Eligible<'_>], pods: &'p [PodInfo]) -> Vec<&'p str> {
    pods.iter()
        .filter(|p| !p.deleting && !nodes.iter().any(|n| n.0 == p.node))
        .map(|p| p.name.as_str())
        .collect()
}

/// The apiserver's checks of a DaemonSet's update strategy; `Err` in its words.
pub fn validate_strategy(update_strategy: &Value) -> Result<(), String> {
    let t = update_strategy["type"].as_str().unwrap_or("RollingUpdate");
    if !["RollingUpdate", "OnDelete"].contains(&t) {
        return Err(format!(
            "spec.updateStrategy: Unsupported value: {t:?}: supported values: \"OnDelete\", \"RollingUpdate\""
        ));
    }
    if t == "OnDelete" {
        return Ok(());
    }
    let ru = &update_strategy["rollingUpdate"];
    let io = |v: &Value| serde_json::from_value::<IntOrString>(v.clone()).ok();
    let (surge, unavailable) = (io(&ru["maxSurge"]), io(&ru["maxUnavailable"]));
    super::deployment::validate_rolling_update(surge.as_ref(), unavailable.as_ref())
        .map_err(|e| e.replace("spec.strategy.", "spec.updateStrategy."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn pod(name: &str, node: &str, hash: &str, ready: Option<i64>) -> PodInfo {
        PodInfo {
            name: name.into(),
            node: node.into(),
            hash: hash.into(),
            ready_since: ready.map(t),
            failed: false,
            deleting: false,
            created: t(0),
        }
    }

    fn rolling(surge: i32, unavailable: i32) -> Strategy {
        Strategy::RollingUpdate {
            max_surge: IntOrString::Int(surge),
            max_unavailable: IntOrString::Int(unavailable),
        }
    }

    #[test]
    fn taints_tolerations_and_selectors_decide_where_a_daemon_runs() {
        let node = |labels: &[(&str, &str)], taints: &[(&str, &str)]| NodeInfo {
            name: "n1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints: taints
                .iter()
                .map(|(k, e)| Taint {
                    key: k.to_string(),
                    effect: e.to_string(),
                    ..Default::default()
                })
                .collect(),
        };
        let spec = |yaml: &str| -> PodSpec {
            let mut s: PodSpec = serde_yaml_ng::from_str(yaml).unwrap();
            add_default_tolerations(&mut s);
            s
        };
        let plain = spec("containers: []");
        let ssd = spec("containers: []\nnodeSelector: {disk: ssd}");
        let tolerant = spec(
            "containers: []\ntolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]",
        );
        let gpu_taint = NodeInfo {
            taints: vec![Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }],
            ..node(&[], &[])
        };
        let cases: Vec<(&str, NodeInfo, &PodSpec, (bool, bool))> = vec![
            ("a bare node", node(&[], &[]), &plain, (true, true)),
            (
                "selector matches",
                node(&[("disk", "ssd")], &[]),
                &ssd,
                (true, true),
            ),
            (
                "selector does not",
                node(&[("disk", "hdd")], &[]),
                &ssd,
                (false, false),
            ),
            (
                "NoSchedule untolerated",
                gpu_taint.clone(),
                &plain,
                (false, true),
            ),
            ("NoSchedule tolerated", gpu_taint, &tolerant, (true, true)),
            (
                "NoExecute untolerated",
                node(&[], &[("evict", "NoExecute")]),
                &plain,
                (false, false),
            ),
            (
                "PreferNoSchedule",
                node(&[], &[("soft", "PreferNoSchedule")]),
                &plain,
                (true, true),
            ),
            // The default tolerations: a cordoned or unready node keeps its daemons.
            (
                "cordoned",
                node(&[], &[("node.kubernetes.io/unschedulable", "NoSchedule")]),
                &plain,
                (true, true),
            ),
            (
                "not ready",
                node(&[], &[("node.kubernetes.io/not-ready", "NoExecute")]),
                &plain,
                (true, true),
            ),
        ];
        for (what, n, s, want) in cases {
            assert_eq!(should_run(&n, s), want, "{what}");
        }
    }

    #[test]
    fn a_daemon_pod_is_bound_to_its_node_by_name_affinity() {
        let template: PodSpec = serde_yaml_ng::from_str(
            "containers: []\naffinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: a, operator: Exists}]}]}}}",
        )
        .unwrap();
        let spec = pod_spec_for(&template, "n7");
        let terms = &spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let f = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (f.key.as_str(), f.operator.as_str()),
            ("metadata.name", "In")
        );
        assert_eq!(f.values.as_deref(), Some(&["n7".to_string()][..]));
        let keys: Vec<_> = spec
            .tolerations
            .unwrap()
            .iter()
            .map(|t| t.key.clone().unwrap())
            .collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert!(keys.contains(&"node.kubernetes.io/unschedulable".to_string()));
    }

    #[test]
    fn revisions_hash_the_template_and_their_data_puts_it_back() {
        let a = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut sent = a.clone();
        sent["metadata"]["creationTimestamp"] = Value::Null;
        sent["spec"]["containers"][0]["resources"] = json!({});
        assert_eq!(revision_hash(&a, None), revision_hash(&sent, None));
        let mut b = a.clone();
        b["spec"]["containers"][0]["image"] = "b".into();
        assert_ne!(revision_hash(&a, None), revision_hash(&b, None));
        assert_ne!(revision_hash(&a, None), revision_hash(&a, Some(1)));
        let data = revision_data(&a);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let mut ds = json!({"spec": {"template": b}});
        crate::api::write::strategic_merge(&mut ds, &data);
        assert_eq!(ds["spec"]["template"], a);
    }

    #[test]
    fn plans_as_the_daemon_controller() {
        let nodes3: &[Eligible] = &[("n1", true, true), ("n2", true, true), ("n3", true, true)];
        let rolling1 = rolling(0, 1);
        let rolling2 = rolling(0, 2);
        let surge1 = rolling(1, 0);
        let on_delete = Strategy::OnDelete;
        struct Case<'a> {
            what: &'a str,
            strategy: &'a Strategy,
            nodes: &'a [Eligible<'a>],
            pods: Vec<PodInfo>,
            create: &'a [&'a str],
            delete: &'a [&'a str],
        }
        let failed = PodInfo {
            failed: true,
            ..pod("f", "n2", "h2", None)
        };
        let cases = [
            Case {
                what: "one pod per node",
                strategy: &rolling1,
                nodes: nodes3,
                pods: vec![pod("a", "n1", "h2", Some(0))],
                create: &["n2", "n3"],
                delete: &[],
            },
            Case {
                what: "a node that should not run it loses its pod",
                strategy: &rolling1,
                nodes: &[("n1", false, false), ("n2", true, true)],
                pods: vec![pod("a", "n1", "h2", Some(0)), pod("b", "n2", "h2", Some(0))],
                create: &[],
                delete: &["a"],
            },
            Case {
                what: "NoSchedule only: the running pod stays, none is made",
                strategy: &rolling1,
                nodes: &[("n1", false, true), ("n2", false, true)],
                pods: vec![pod("a", "n1", "h2", Some(0))],
                create: &[],
                delete: &[],
            },
            Case {
                what: "a duplicate goes, the oldest stays",
                strategy: &rolling1,
                nodes: &[("n1", true, true)],
                pods: vec![
                    pod("a", "n1", "h2", Some(0)),
                    PodInfo {
                        created: t(5),
                        ..pod("b", "n1", "h2", Some(0))
                    },
                ],
                create: &[],
                delete: &["b"],
            },
            Case {
                what: "a failed pod is replaced",
                strategy: &rolling1,
                nodes: &[("n2", true, true)],
                pods: vec![failed],
                create: &["n2"],
                delete: &["f"],
            },
            Case {
                what: "a failed pod in its backoff stays, and holds the node",
                strategy: &rolling1,
                nodes: &[("n2", true, true), ("backoff", true, true)],
                pods: vec![PodInfo {
                    failed: true,
                    ..pod("g", "backoff", "h2", None)
                }],
                create: &["n2"],
                delete: &[],
            },
            Case {
                what: "rolling update: one old available pod at a time",
                strategy: &rolling1,
                nodes: nodes3,
                pods: vec![
                    pod("a", "n1", "h1", Some(0)),
                    pod("b", "n2", "h1", Some(0)),
                    pod("c", "n3", "h1", Some(0)),
                ],
                create: &[],
                delete: &["a"],
            },
            Case {
                what: "rolling update: an unavailable new pod holds the budget",
                strategy: &rolling1,
                nodes: nodes3,
                pods: vec![
                    pod("a", "n1", "h2", None),
                    pod("b", "n2", "h1", Some(0)),
                    pod("c", "n3", "h1", Some(0)),
                ],
                create: &[],
                delete: &[],
            },
            Case {
                what: "rolling update: an unavailable old pod is replaced anyway",
                strategy: &rolling1,
                nodes: nodes3,
                pods: vec![
                    pod("a", "n1", "h2", None),
                    pod("b", "n2", "h1", None),
                    pod("c", "n3", "h1", Some(0)),
                ],
                create: &[],
                delete: &["b"],
            },
            Case {
                what: "maxUnavailable 2",
                strategy: &rolling2,
                nodes: nodes3,
                pods: vec![
                    pod("a", "n1", "h1", Some(0)),
                    pod("b", "n2", "h1", Some(0)),
                    pod("c", "n3", "h1", Some(0)),
                ],
                create: &[],
                delete: &["a", "b"],
            },
            Case {
                what: "maxSurge 1: a new pod next to the old one",
                strategy: &surge1,
                nodes: nodes3,
                pods: vec![
                    pod("a", "n1", "h1", Some(0)),
                    pod("b", "n2", "h1", Some(0)),
                    pod("c", "n3", "h1", Some(0)),
                ],
                create: &["n1"],
                delete: &[],
            },
            Case {
                what: "maxSurge 1: the old pod goes once the new one is available",
                strategy: &surge1,
                nodes: nodes3,
                pods: vec![
                    pod("a", "n1", "h1", Some(0)),
                    PodInfo {
                        created: t(1),
                        ..pod("a2", "n1", "h2", Some(1))
                    },
                    pod("b", "n2", "h1", Some(0)),
                    pod("c", "n3", "h1", Some(0)),
                ],
                create: &["n2"],
                delete: &["a"],
            },
            Case {
                what: "OnDelete: old pods stay, a deleted one comes back new",
                strategy: &on_delete,
                nodes: nodes3,
                pods: vec![pod("a", "n1", "h1", Some(0)), pod("b", "n2", "h1", Some(0))],
                create: &["n3"],
                delete: &[],
            },
        ];
        for c in cases {
            let backoff = BTreeSet::from(["backoff".to_string()]);
            let ds = Daemon {
                hash: "h2",
                strategy: c.strategy,
                min_ready_seconds: 0,
                backoff: &backoff,
            };
            let p = plan(&ds, c.nodes, &c.pods, t(100));
            assert_eq!(p.create, c.create, "{}: create", c.what);
            assert_eq!(p.delete, c.delete, "{}: delete", c.what);
        }
    }

    #[test]
    fn min_ready_seconds_delays_availability_with_a_fake_clock() {
        let strategy = rolling(0, 1);
        let ds = Daemon {
            hash: "h2",
            strategy: &strategy,
            min_ready_seconds: 30,
            backoff: &BTreeSet::new(),
        };
        let nodes: &[Eligible] = &[("n1", true, true), ("n2", true, true)];
        let pods = vec![
            pod("a", "n1", "h2", Some(100)),
            pod("b", "n2", "h1", Some(0)),
        ];
        // At 110 the new pod is ready but not yet available: the old one waits.
        assert!(plan(&ds, nodes, &pods, t(110)).delete.is_empty());
        let c = status(&ds, nodes, &pods, t(110));
        assert_eq!((c.ready, c.available, c.updated), (2, 1, 1));
        // At 130 it is available: the next old pod goes.
        assert_eq!(plan(&ds, nodes, &pods, t(130)).delete, ["b"]);
        assert_eq!(status(&ds, nodes, &pods, t(130)).available, 2);
    }

    #[test]
    fn status_counts_as_the_controller() {
        let strategy = rolling(0, 1);
        let ds = Daemon {
            hash: "h2",
            strategy: &strategy,
            min_ready_seconds: 0,
            backoff: &BTreeSet::new(),
        };
        let nodes: &[Eligible] = &[("n1", true, true), ("n2", true, true), ("n3", false, false)];
        let pods = vec![
            pod("a", "n1", "h2", Some(0)),
            pod("c", "n3", "h2", Some(0)),
            pod("d", "gone", "h2", Some(0)),
        ];
        let c = status(&ds, nodes, &pods, t(10));
        assert_eq!(
            c,
            Counts {
                desired: 2,
                current: 1,
                misscheduled: 2,
                ready: 1,
                available: 1,
                updated: 1,
            }
        );
        assert_eq!(c.unavailable(), 1);
        assert_eq!(orphaned_by_node(nodes, &pods), ["d"]);
    }

    #[test]
    fn strategy_counts_and_validation() {
        let pct = |s: &str| IntOrString::String(s.into());
        let s = Strategy::RollingUpdate {
            max_surge: pct("0%"),
            max_unavailable: pct("10%"),
        };
        // Both round up over the desired count.
        assert_eq!(s.counts(3), (0, 1));
        assert_eq!(s.counts(0), (0, 1));
        assert_eq!(rolling(2, 0).counts(3), (2, 0));
        assert_eq!(
            Strategy::of(
                &json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
            ),
            rolling(0, 1)
        );
        assert_eq!(
            Strategy::of(&json!({"type": "OnDelete"})),
            Strategy::OnDelete
        );
        assert_eq!(
            validate_strategy(&json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}))
                .unwrap_err(),
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
        );
        assert_eq!(
            validate_strategy(&json!({"type": "Sometimes"})).unwrap_err(),
            "spec.updateStrategy: Unsupported value: \"Sometimes\": supported values: \"OnDelete\", \"RollingUpdate\""
        );
    }

    #[test]
    fn failed_pod_backoff_doubles_to_its_maximum_and_starts_over_when_idle() {
        let mut b = FailedPodsBackoff::new();
        let k = FailedPodsBackoff::key("uid", "n1");
        assert!(
            !b.in_backoff(&k, t(0)),
            "the first failure is handled at once"
        );
        b.next(&k, t(0));
        assert!(b.in_backoff(&k, t(0)));
        assert!(!b.in_backoff(&k, t(1)), "1 s first");
        b.next(&k, t(1));
        assert!(b.in_backoff(&k, t(2)));
        assert!(!b.in_backoff(&k, t(3)), "then 2 s");
        let mut at = 3;
        for _ in 0..20 {
            b.next(&k, t(at));
            at += 15 * 60;
        }
        assert!(b.in_backoff(&k, t(at - 1)), "capped at 15 min");
        assert!(!b.in_backoff(&k, t(at)));
        b.next(&k, t(at + 31 * 60));
        assert!(
            !b.in_backoff(&k, t(at + 31 * 60 + 1)),
            "idle for 30 min: 1 s again"
        );
        b.gc(t(at + 120 * 60));
        assert!(b.entries.is_empty());
    }
}
