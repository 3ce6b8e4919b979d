//! The Job controller's decisions (kube-controller-manager's `pkg/controller/job`, batch/v1 as of
//! 1.33), without I/O: how many pods to create or delete for `completions`/`parallelism` in
//! `NonIndexed` and `Indexed` mode (which indexes are missing), counting succeeded and failed
//! pods through the `batch.kubernetes.io/job-tracking` finalizer and
//! `status.uncountedTerminatedPods`, `backoffLimit` (and `backoffLimitPerIndex`),
//! `activeDeadlineSeconds`, `suspend`, the pod recreation backoff, the conditions
//! (`SuccessCriteriaMet`/`FailureTarget` first, then `Complete`/`Failed`), the status fields,
//! `ttlSecondsAfterFinished`, the apiserver's defaults, generated selector and validation.
//!
//! The executor of a [`Plan`], in order: write `interim_status` (if any); remove the tracking
//! finalizer from `remove_finalizers` and from every pod in `delete`; delete `delete`; create
//! `create` (owner reference to the Job, `generateName`); write `status` (skip it if a
//! finalizer could not be removed: the next sync recounts from the interim status); record
//! `events` (plus, as the real pod control does, `SuccessfulCreate` "Created pod: <name>" and
//! `SuccessfulDelete` "Deleted pod: <name>" for each pod); sync again after `requeue_after`, and
//! whenever a pod of the Job changes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

use super::event::Event;
use super::field;
use super::replicaset::{controller_of, is_active, pods_to_delete, ready_since};
/// Moved into [`crate::kube::workload`] (the store applies them to manifest Jobs); the old
/// paths stay for existing imports.
pub use crate::kube::workload::{
    CONTROLLER_UID, JOB_NAME, LEGACY_CONTROLLER_UID, LEGACY_JOB_NAME, generate_selector,
};
use crate::selector::Selector;

/// The finalizer that keeps a Job's finished pods until the controller has counted them.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation and label with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Annotation with how many pods of an index failed before this one (`backoffLimitPerIndex`).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Annotation with failures of an index that a pod failure policy ignored.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// The variable an Indexed Job's containers find their index in.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// `backoffLimit` when unset.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 6;
/// The first delay before a failed pod is replaced; it doubles with each further failure.
pub const POD_BACKOFF_BASE: SignedDuration = SignedDuration::from_secs(10);
/// The longest delay. The documentation says six minutes; the controller's code
/// (`MaxJobPodFailureBackOff`) has said ten since 1.28, and skiff does what the code does.
pub const POD_BACKOFF_MAX: SignedDuration = SignedDuration::from_secs(600);
/// At most this many pods created or deleted in one sync (`MaxPodCreateDeletePerSync`).
pub const MAX_PODS_PER_SYNC: usize = 500;
/// At most this many pods counted per sync, keeping the status small (`MaxUncountedPods`).
pub const MAX_UNCOUNTED: usize = 500;
const MAX_PARALLELISM_INDEXED: i32 = 100_000;
const MAX_FAILED_INDEXES: i32 = 100_000;
const COMPLETIONS_SOFT_LIMIT: i32 = 100_000;
const MAX_GENERATED_NAME: usize = 58;

/// A set of completion indexes as ordered intervals, printed as the status prints it
/// (`"1,3-5"`; two adjacent indexes print as `"1,2"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexes(Vec<(i32, i32)>);

impl Indexes {
    /// Parses `status.completedIndexes`/`failedIndexes`, dropping what is at or past
    /// `completions` and skipping corrupt intervals, as the controller does.
    pub fn parse(s: &str, completions: i32) -> Indexes {
        let mut out: Vec<(i32, i32)> = Vec::new();
        if s.is_empty() {
            return Indexes(out);
        }
        for part in s.split(',') {
            let limits: Vec<&str> = part.split('-').collect();
            let Ok(first) = limits[0].parse::<i32>() else {
                continue;
            };
            if first >= completions {
                break;
            }
            let last = match limits.get(1) {
                Some(l) => match l.parse::<i32>() {
                    Ok(l) => l.min(completions - 1),
                    Err(_) => continue,
                },
                None => first,
            };
            match out.last_mut() {
                Some(prev) if prev.1 == first - 1 => prev.1 = last,
                _ => out.push((first, last)),
            }
        }
        Indexes(out)
    }

    /// These indexes and `more`.
    pub fn with(&self, more: impl IntoIterator<Item = i32>) -> Indexes {
        self.merge(&Indexes(more.into_iter().map(|i| (i, i)).collect()))
    }

    /// The union, intervals that touch or overlap joined.
    pub fn merge(&self, other: &Indexes) -> Indexes {
        let mut all: Vec<(i32, i32)> = self.0.iter().chain(&other.0).copied().collect();
        all.sort();
        let mut out: Vec<(i32, i32)> = Vec::new();
        for (first, last) in all {
            match out.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => out.push((first, last)),
            }
        }
        Indexes(out)
    }

    /// How many indexes.
    pub fn total(&self) -> i32 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// Whether `ix` is in the set.
    pub fn has(&self, ix: i32) -> bool {
        self.0.iter().any(|(a, b)| *a <= ix && ix <= *b)
    }
}

impl fmt::Display for Indexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (first, last)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{first}")?;
            if last > first {
                let sep = if *last == first + 1 { "," } else { "-" };
                write!(f, "{sep}{last}")?;
            }
        }
        Ok(())
    }
}

/// The delay before replacing a pod after `failures` consecutive failures: 10 s doubling,
/// capped at [`POD_BACKOFF_MAX`]; none before the first failure.
pub fn pod_backoff(failures: u32) -> SignedDuration {
    if failures == 0 {
        return SignedDuration::ZERO;
    }
    let mut d = POD_BACKOFF_BASE;
    for _ in 1..failures {
        d = d.saturating_mul(2);
        if d >= POD_BACKOFF_MAX {
            return POD_BACKOFF_MAX;
        }
    }
    d
}

fn backoff_remaining(
    failures: u32,
    last_failure: Option<Timestamp>,
    now: Timestamp,
) -> SignedDuration {
    let Some(last) = last_failure.filter(|_| failures > 0) else {
        return SignedDuration::ZERO;
    };
    let delay = pod_backoff(failures);
    let elapsed = now.duration_since(last);
    if delay < elapsed {
        SignedDuration::ZERO
    } else {
        delay - elapsed
    }
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn uid(p: &Pod) -> &str {
    p.metadata.uid.as_deref().unwrap_or("")
}

fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

/// An Indexed Job pod's completion index, from its annotation (absent, not a number or
/// negative: none).
pub fn completion_index(p: &Pod) -> Option<i32> {
    let v = p.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?;
    v.parse::<i32>().ok().filter(|i| *i >= 0)
}

fn annotation_count(p: &Pod, key: &str) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|v| *v >= 0)
        .unwrap_or(0)
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), Some("Succeeded" | "Failed"))
}

/// When a finished pod finished: its last container's end, else its Ready=False time, else
/// its deletion time less the grace period, else its creation (`getFinishedTime`).
pub fn finish_time(p: &Pod) -> Timestamp {
    let status = p.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_ref());
    if let Some(cs) = containers.filter(|cs| !cs.is_empty()) {
        let ends: Option<Vec<Timestamp>> = cs
            .iter()
            .map(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.finished_at.as_ref())
                    .map(|t| t.0)
            })
            .collect();
        if let Some(end) = ends.and_then(|e| e.into_iter().max()) {
            return end;
        }
    }
    let not_ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref());
    if let Some(t) = not_ready {
        return t.0;
    }
    if let Some(d) = &p.metadata.deletion_timestamp {
        let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
        return d.0 - SignedDuration::from_secs(grace);
    }
    p.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn condition<'a>(list: &'a [JobCondition], type_: &str) -> Option<&'a JobCondition> {
    list.iter().find(|c| c.type_ == type_)
}

fn condition_true(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| condition(cs, type_))
        .is_some_and(|c| c.status == "True")
}

/// `Complete` or `Failed` when the Job has finished (that condition is true).
pub fn finished(job: &Job) -> Option<&'static str> {
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| condition_true(job, t))
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `ensureJobConditionStatus`: set the condition, appending it unless it would be `False`;
/// true when the list changed.
fn ensure_condition(
    list: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status
            || c.reason.as_deref() != Some(reason)
            || c.message.as_deref() != Some(message)
        {
            *c = new_condition(type_, status, reason, message, now);
            return true;
        }
        return false;
    }
    if status != "False" {
        list.push(new_condition(type_, status, reason, message, now));
        return true;
    }
    false
}

/// The Job's settings with the apiserver's defaults filled in.
struct View<'a> {
    name: &'a str,
    uid: &'a str,
    spec: JobSpec,
    indexed: bool,
    completions: Option<i32>,
    parallelism: i32,
    backoff_limit: i32,
    per_index: Option<i32>,
    only_replace_failed: bool,
    suspended: bool,
}

impl<'a> View<'a> {
    fn new(job: &'a Job) -> View<'a> {
        let mut copy = job.clone();
        defaults(&mut copy);
        let spec = copy.spec.unwrap_or_default();
        View {
            name: job.metadata.name.as_deref().unwrap_or(""),
            uid: job.metadata.uid.as_deref().unwrap_or(""),
            indexed: spec.completion_mode.as_deref() == Some("Indexed"),
            completions: spec.completions,
            parallelism: spec.parallelism.unwrap_or(1),
            backoff_limit: spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT),
            per_index: spec
                .backoff_limit_per_index
                .filter(|_| spec.completion_mode.as_deref() == Some("Indexed")),
            only_replace_failed: spec.pod_replacement_policy.as_deref() == Some("Failed")
                || spec.pod_failure_policy.is_some(),
            suspended: spec.suspend == Some(true),
            spec,
        }
    }

    /// `isPodFailed`: failed, or (unless only failed pods are replaced) deleted before
    /// succeeding.
    fn pod_failed(&self, p: &Pod) -> bool {
        phase(p) == Some("Failed")
            || (!self.only_replace_failed
                && p.metadata.deletion_timestamp.is_some()
                && phase(p) != Some("Succeeded"))
    }

    /// A pod counts in an Indexed Job only with an index below `completions`.
    fn valid_index(&self, p: &Pod) -> bool {
        !self.indexed || completion_index(p).is_some_and(|i| i < self.completions.unwrap_or(0))
    }
}

/// A pod the plan asks to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPod {
    /// `metadata.generateName` (`<job>-`, or `<job>-<index>-` for an Indexed Job).
    pub generate_name: String,
    /// The template with the tracking finalizer and, for an index, its annotation, label,
    /// hostname, failure count and `JOB_COMPLETION_INDEX`.
    pub template: PodTemplateSpec,
    pub index: Option<i32>,
}

/// One sync's decisions; see the module documentation for the order to carry them out in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<NewPod>,
    /// Pods to delete (tracking finalizer removed first), by name.
    pub delete: Vec<String>,
    /// Pods whose tracking finalizer goes once `interim_status` is written, by name.
    pub remove_finalizers: Vec<String>,
    /// The status that records the pods about to be counted, written before any finalizer
    /// is removed so that a crash in between counts nothing twice or never.
    pub interim_status: Option<JobStatus>,
    /// The status once the finalizers are gone.
    pub status: JobStatus,
    pub events: Vec<Event>,
    /// Sync again after this long (pod backoff, `activeDeadlineSeconds`).
    pub requeue_after: Option<SignedDuration>,
}

impl Plan {
    fn requeue(&mut self, after: SignedDuration) {
        let after = after.max(SignedDuration::from_secs(1));
        self.requeue_after = Some(self.requeue_after.map_or(after, |r| r.min(after)));
    }
}

/// The failures since the last success among the Job's finished pods, and when the last of
/// them happened (the controller's backoff record, rebuilt from the pods it keeps).
fn backoff_record(v: &View, pods: &[&Pod]) -> (u32, Option<Timestamp>) {
    let last_success = pods
        .iter()
        .filter(|p| phase(p) == Some("Succeeded"))
        .map(|p| finish_time(p))
        .max();
    // A pod the controller deleted itself (suspend, lower parallelism) lost the finalizer
    // first: it is no failure, though it terminates like one.
    let failures: Vec<Timestamp> = pods
        .iter()
        .filter(|p| phase(p) == Some("Failed") || (has_finalizer(p) && v.pod_failed(p)))
        .map(|p| finish_time(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    (failures.len() as u32, failures.into_iter().max())
}

/// `pastBackoffLimitOnFailure`: with `restartPolicy: OnFailure` pods do not fail, their
/// containers restart; the restarts of running and pending pods count instead.
fn past_backoff_limit_on_failure(v: &View, pods: &[&Pod]) -> bool {
    let policy = v
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref());
    if policy != Some("OnFailure") {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), Some("Running" | "Pending")))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if v.backoff_limit == 0 {
        restarts > 0
    } else {
        restarts >= v.backoff_limit
    }
}

/// `activePodsForRemoval`: for an Indexed Job first the pods without a valid index and all
/// but the best pod of a repeated index, then the controller's ranking.
fn pods_for_removal<'p>(v: &View, active: &[&'p Pod], at_least: usize) -> Vec<&'p Pod> {
    let mut rm: Vec<&'p Pod> = Vec::new();
    let mut left: Vec<&'p Pod> = Vec::new();
    if v.indexed {
        let completions = v.completions.unwrap_or(0);
        let mut by_index: BTreeMap<i32, Vec<&'p Pod>> = BTreeMap::new();
        for p in active {
            match completion_index(p).filter(|i| *i < completions) {
                Some(i) => by_index.entry(i).or_default().push(p),
                None => rm.push(p),
            }
        }
        for group in by_index.into_values() {
            let mut ordered = pods_to_delete(&group, group.len());
            let keep = ordered.pop();
            rm.extend(ordered);
            left.extend(keep);
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < at_least {
        rm.extend(pods_to_delete(&left, at_least - rm.len()));
    }
    rm
}

/// For `backoffLimitPerIndex`: per failed index not yet succeeded, failed or running again,
/// its latest failed pod (kept until its replacement exists, which inherits its count).
fn last_failed_per_index<'p>(
    v: &View,
    pods: &[&'p Pod],
    active: &[&'p Pod],
    succeeded: &Indexes,
    failed: &Indexes,
) -> BTreeMap<i32, &'p Pod> {
    let running: HashSet<i32> = active.iter().filter_map(|p| completion_index(p)).collect();
    let mut out: BTreeMap<i32, &'p Pod> = BTreeMap::new();
    for p in pods {
        if !has_finalizer(p) || !v.valid_index(p) || !v.pod_failed(p) {
            continue;
        }
        let Some(ix) = completion_index(p) else {
            continue;
        };
        if succeeded.has(ix) || failed.has(ix) || running.contains(&ix) {
            continue;
        }
        let count = |p: &Pod| {
            annotation_count(p, INDEX_FAILURE_COUNT)
                + annotation_count(p, INDEX_IGNORED_FAILURE_COUNT)
        };
        match out.get(&ix) {
            Some(prev) if count(prev) > count(p) || finish_time(p) < finish_time(prev) => {}
            _ => {
                out.insert(ix, p);
            }
        }
    }
    out
}

/// The pod for one index (or none, NonIndexed), as `manageJob` creates it.
pub fn new_pod(job: &Job, index: Option<i32>, replaces: Option<&Pod>) -> NewPod {
    pod_from(&View::new(job), index, replaces)
}

fn pod_from(v: &View, index: Option<i32>, replaces: Option<&Pod>) -> NewPod {
    let mut template = v.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let mut generate_name = format!("{}-", v.name);
    if let Some(ix) = index {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), ix.to_string());
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), ix.to_string());
        if v.per_index.is_some() {
            let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
            let (count, ignored) = match replaces {
                Some(p) => (
                    annotation_count(p, INDEX_FAILURE_COUNT) + 1,
                    annotation_count(p, INDEX_IGNORED_FAILURE_COUNT),
                ),
                None => (0, 0),
            };
            annotations.insert(INDEX_FAILURE_COUNT.into(), count.to_string());
            if ignored > 0 {
                annotations.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
            }
        }
        let suffix = format!("-{ix}-");
        generate_name = format!("{}{suffix}", v.name);
        if generate_name.len() > MAX_GENERATED_NAME {
            let keep = MAX_GENERATED_NAME - suffix.len();
            generate_name = format!("{}{suffix}", &v.name[..keep.min(v.name.len())]);
        }
        if let Some(spec) = template.spec.as_mut() {
            spec.hostname = Some(format!("{}-{ix}", v.name));
            let env = EnvVar {
                name: COMPLETION_INDEX_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                    }),
                    ..EnvVarSource::default()
                }),
            };
            let containers = spec
                .init_containers
                .iter_mut()
                .flatten()
                .chain(spec.containers.iter_mut());
            for c in containers {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                    vars.push(env.clone());
                }
            }
        }
    }
    NewPod {
        generate_name,
        template,
        index,
    }
}

/// What one sync decided about pods, before the status is tracked.
struct Managed {
    active: i32,
    ready: i32,
    terminating: i32,
}

/// `manageJob`: delete the surplus (or everything when suspended), else create what is
/// missing once the backoff allows.
#[allow(clippy::too_many_arguments)]
fn manage<'p>(
    v: &View,
    mine: &[&'p Pod],
    active: &[&'p Pod],
    succeeded: i32,
    succeeded_idx: &Indexes,
    failed_idx: Option<&Indexes>,
    last_failed: &BTreeMap<i32, &'p Pod>,
    mut m: Managed,
    now: Timestamp,
    p: &mut Plan,
) -> Managed {
    let delete = |rm: Vec<&Pod>, m: &mut Managed, p: &mut Plan| {
        for pod in rm {
            if ready_since(pod).is_some() {
                m.ready -= 1;
            }
            m.active -= 1;
            m.terminating += 1;
            p.delete.push(name(pod));
        }
    };
    if v.suspended {
        let rm = pods_for_removal(v, active, active.len());
        delete(rm, &mut m, p);
        return m;
    }
    let want = match v.completions {
        None if succeeded > 0 => m.active,
        None => v.parallelism,
        Some(c) => (c - succeeded).min(v.parallelism).max(0),
    };
    let surplus = (m.active - want).max(0) as usize;
    let mut rm = pods_for_removal(v, active, surplus);
    rm.truncate(MAX_PODS_PER_SYNC);
    if !rm.is_empty() {
        // Deleting and creating in one sync is possible (repeated indexes); deleting wins.
        delete(rm, &mut m, p);
        return m;
    }
    let terminating = if v.only_replace_failed {
        m.terminating
    } else {
        0
    };
    let missing = want - terminating - m.active;
    if missing <= 0 {
        return m;
    }
    if v.per_index.is_none() {
        let (failures, last) = backoff_record(v, mine);
        let wait = backoff_remaining(failures, last, now);
        if wait > SignedDuration::ZERO {
            p.requeue(wait);
            return m;
        }
    }
    let missing = (missing as usize).min(MAX_PODS_PER_SYNC);
    let indexes: Vec<Option<i32>> = if v.indexed {
        let mut ixs = first_pending(v, mine, active, succeeded_idx, failed_idx, missing);
        if v.per_index.is_some() {
            let mut now_ready = Vec::new();
            let mut soonest: Option<SignedDuration> = None;
            for ix in ixs {
                let wait = match last_failed.get(&ix) {
                    Some(prev) => backoff_remaining(
                        (annotation_count(prev, INDEX_FAILURE_COUNT)
                            + annotation_count(prev, INDEX_IGNORED_FAILURE_COUNT)
                            + 1) as u32,
                        Some(finish_time(prev)),
                        now,
                    ),
                    None => SignedDuration::ZERO,
                };
                if wait.is_zero() {
                    now_ready.push(ix);
                } else {
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
            }
            if now_ready.is_empty() {
                if let Some(wait) = soonest {
                    p.requeue(wait);
                }
                return m;
            }
            ixs = now_ready;
        }
        ixs.into_iter().map(Some).collect()
    } else {
        vec![None; missing]
    };
    for ix in indexes {
        let replaces = ix.and_then(|i| last_failed.get(&i).copied());
        p.create.push(pod_from(v, ix, replaces));
        m.active += 1;
    }
    m
}

/// `firstPendingIndexes`: the lowest indexes below `completions` not succeeded, failed,
/// running (or still terminating, when only failed pods are replaced).
fn first_pending(
    v: &View,
    mine: &[&Pod],
    active: &[&Pod],
    succeeded: &Indexes,
    failed: Option<&Indexes>,
    count: usize,
) -> Vec<i32> {
    let mut taken = succeeded.with(active.iter().filter_map(|p| completion_index(p)));
    if v.only_replace_failed {
        taken = taken.with(
            mine.iter()
                .filter(|p| is_terminating(p))
                .filter_map(|p| completion_index(p)),
        );
    }
    if let Some(f) = failed {
        taken = taken.merge(f);
    }
    (0..v.completions.unwrap_or(0))
        .filter(|i| !taken.has(*i))
        .take(count)
        .collect()
}

/// Moves `uncountedTerminatedPods` entries whose pods no longer carry the finalizer (or are
/// gone) into the counters (`cleanUncountedPodsWithoutFinalizers`).
fn count_uncounted(
    status: &mut JobStatus,
    unc: &mut UncountedTerminatedPods,
    with_finalizer: &HashSet<&str>,
) {
    for (list, counter) in [
        (&mut unc.succeeded, &mut status.succeeded),
        (&mut unc.failed, &mut status.failed),
    ] {
        let uids = list.get_or_insert_with(Vec::new);
        let before = uids.len();
        uids.retain(|u| with_finalizer.contains(u.as_str()));
        let gone = (before - uids.len()) as i32;
        if gone > 0 {
            *counter = Some(counter.unwrap_or(0) + gone);
        }
    }
}

/// One sync of a Job (`syncJob`). `pods` are the Job's pods (those whose controller
/// reference is the Job count; others are ignored). See [`Plan`].
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp) -> Plan {
    let v = View::new(job);
    let mut p = Plan::default();
    let mut status = job.status.clone().unwrap_or_default();
    let mine: Vec<&Pod> = pods
        .iter()
        .filter(|pod| controller_of(pod).is_some_and(|r| r.uid == v.uid))
        .collect();
    if finished(job).is_some() {
        // Nothing more to do but let the pods go (`cleanupPodFinalizers`).
        p.remove_finalizers = mine
            .iter()
            .filter(|x| has_finalizer(x))
            .map(|x| name(x))
            .collect();
        p.status = status;
        return p;
    }
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let unc_succeeded: HashSet<String> = uncounted.succeeded.iter().flatten().cloned().collect();
    let unc_failed: HashSet<String> = uncounted.failed.iter().flatten().cloned().collect();
    let active: Vec<&Pod> = mine.iter().copied().filter(|x| is_active(x)).collect();
    let mut m = Managed {
        active: active.len() as i32,
        ready: active.iter().filter(|x| ready_since(x).is_some()).count() as i32,
        terminating: mine.iter().filter(|x| is_terminating(x)).count() as i32,
    };
    let counts = |f: &dyn Fn(&Pod) -> bool, seen: &HashSet<String>| {
        mine.iter()
            .filter(|x| has_finalizer(x) && !seen.contains(uid(x)) && v.valid_index(x) && f(x))
            .count() as i32
    };
    let mut succeeded = status.succeeded.unwrap_or(0)
        + counts(&|x| phase(x) == Some("Succeeded"), &unc_succeeded)
        + unc_succeeded.len() as i32;
    let failed = status.failed.unwrap_or(0)
        + counts(&|x| v.pod_failed(x), &unc_failed)
        + unc_failed.len() as i32;
    if status.start_time.is_none() && !v.suspended {
        status.start_time = Some(Time(now));
    }

    // The condition the Job is heading for, if any.
    let conditions = status.conditions.clone().unwrap_or_default();
    let mut finishing: Option<JobCondition> = None;
    if let Some(c) = condition(&conditions, "SuccessCriteriaMet").filter(|c| c.status == "True") {
        finishing = Some(c.clone());
    } else if let Some(c) = condition(&conditions, "FailureTarget").filter(|c| c.status == "True") {
        let (reason, message) = (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        );
        finishing = Some(new_condition("Failed", "True", &reason, &message, now));
    }
    let start = status.start_time.as_ref().map(|t| t.0).unwrap_or(now);
    if finishing.is_none() {
        let deadline = v.spec.active_deadline_seconds.filter(|_| !v.suspended);
        if failed > v.backoff_limit || past_backoff_limit_on_failure(&v, &mine) {
            finishing = Some(new_condition(
                "FailureTarget",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
        } else if let Some(ads) = deadline
            && now.duration_since(start) >= SignedDuration::from_secs(ads)
        {
            finishing = Some(new_condition(
                "FailureTarget",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                now,
            ));
        } else if let Some(ads) = deadline {
            p.requeue(SignedDuration::from_secs(ads) - now.duration_since(start));
        }
    }

    let completions = v.completions.unwrap_or(0);
    let mut prev_succeeded_idx = Indexes::default();
    let mut succeeded_idx = Indexes::default();
    let mut failed_idx: Option<Indexes> = None;
    let mut last_failed: BTreeMap<i32, &Pod> = BTreeMap::new();
    if v.indexed {
        prev_succeeded_idx = Indexes::parse(
            status.completed_indexes.as_deref().unwrap_or(""),
            completions,
        );
        succeeded_idx = prev_succeeded_idx.with(
            mine.iter()
                .filter(|x| phase(x) == Some("Succeeded") && has_finalizer(x) && v.valid_index(x))
                .filter_map(|x| completion_index(x)),
        );
        succeeded = succeeded_idx.total();
        if let Some(limit) = v.per_index {
            let prev = Indexes::parse(status.failed_indexes.as_deref().unwrap_or(""), completions);
            let fi = prev.with(
                mine.iter()
                    .filter(|x| has_finalizer(x) && v.valid_index(x) && v.pod_failed(x))
                    .filter(|x| annotation_count(x, INDEX_FAILURE_COUNT) >= limit)
                    .filter_map(|x| completion_index(x)),
            );
            if finishing.is_none() {
                if v.spec
                    .max_failed_indexes
                    .is_some_and(|max| fi.total() > max)
                {
                    finishing = Some(new_condition(
                        "FailureTarget",
                        "True",
                        "MaxFailedIndexesExceeded",
                        "Job has exceeded the specified maximal number of failed indexes",
                        now,
                    ));
                } else if fi.total() > 0 && fi.total() + succeeded_idx.total() >= completions {
                    finishing = Some(new_condition(
                        "FailureTarget",
                        "True",
                        "FailedIndexes",
                        "Job has failed indexes",
                        now,
                    ));
                }
            }
            last_failed = last_failed_per_index(&v, &mine, &active, &succeeded_idx, &fi);
            failed_idx = Some(fi);
        }
    }

    if finishing.is_some() {
        // A failing Job's running pods go; they are counted as failed below.
        for pod in &active {
            if ready_since(pod).is_some() {
                m.ready -= 1;
            }
            p.delete.push(name(pod));
        }
        m.terminating += m.active;
        m.active = 0;
    } else {
        let manage_called = job.metadata.deletion_timestamp.is_none();
        if manage_called {
            m = manage(
                &v,
                &mine,
                &active,
                succeeded,
                &succeeded_idx,
                failed_idx.as_ref(),
                &last_failed,
                m,
                now,
                &mut p,
            );
        }
        let complete = match v.completions {
            None => succeeded > 0 && m.active == 0,
            Some(c) => succeeded >= c && m.active == 0,
        };
        let mut conds = status.conditions.take().unwrap_or_default();
        if complete {
            finishing = Some(new_condition(
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else if manage_called && v.suspended {
            if ensure_condition(
                &mut conds,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            ) {
                p.events.push(Event::normal("Suspended", "Job suspended"));
            }
        } else if manage_called
            && ensure_condition(
                &mut conds,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            )
        {
            p.events.push(Event::normal("Resumed", "Job resumed"));
            // activeDeadlineSeconds counts time continuously active: it restarts on resume.
            status.start_time = Some(Time(now));
        }
        status.conditions = (!conds.is_empty()).then_some(conds);
    }
    status.active = Some(m.active);
    status.ready = Some(m.ready);
    status.terminating = Some(m.terminating);

    // Count finished pods through the uncounted list, then let their finalizers go.
    let with_finalizer: HashSet<&str> = mine
        .iter()
        .filter(|x| has_finalizer(x))
        .map(|x| uid(x))
        .collect();
    let mut unc = status.uncounted_terminated_pods.take().unwrap_or_default();
    count_uncounted(&mut status, &mut unc, &with_finalizer);
    let mut ordered = mine.clone();
    if v.indexed {
        ordered.sort_by_key(|x| completion_index(x).unwrap_or(-1));
    }
    let job_failing = finishing
        .as_ref()
        .is_some_and(|f| f.type_ != "SuccessCriteriaMet");
    let mut new_succeeded_idx: Vec<i32> = Vec::new();
    let mut reached_max = false;
    let mut removed: HashSet<&str> = HashSet::new();
    for pod in ordered {
        if !has_finalizer(pod) {
            continue;
        }
        let failed_pod = v.pod_failed(pod);
        let removable = job.metadata.deletion_timestamp.is_some()
            || finishing.is_some()
            || phase(pod) == Some("Succeeded")
            || (failed_pod
                && completion_index(pod)
                    .and_then(|ix| last_failed.get(&ix))
                    .is_none_or(|kept| uid(kept) != uid(pod)));
        if !removable {
            continue;
        }
        p.remove_finalizers.push(name(pod));
        removed.insert(uid(pod));
        let u = uid(pod).to_string();
        if phase(pod) == Some("Succeeded") && !unc_failed.contains(&u) {
            if v.indexed {
                if let Some(ix) = completion_index(pod).filter(|i| *i < completions)
                    && !prev_succeeded_idx.has(ix)
                {
                    new_succeeded_idx.push(ix);
                }
            } else if !unc_succeeded.contains(&u) {
                unc.succeeded.get_or_insert_with(Vec::new).push(u);
            }
        } else if (failed_pod || job_failing) && !unc_failed.contains(&u) && v.valid_index(pod) {
            unc.failed.get_or_insert_with(Vec::new).push(u);
        }
        let pending = new_succeeded_idx.len()
            + unc.succeeded.as_ref().map_or(0, Vec::len)
            + unc.failed.as_ref().map_or(0, Vec::len);
        if pending >= MAX_UNCOUNTED {
            reached_max = true;
            break;
        }
    }
    if v.indexed {
        let all = succeeded_idx.with(new_succeeded_idx);
        status.completed_indexes = Some(all.to_string());
        status.succeeded = Some(all.total());
        if let Some(fi) = &failed_idx {
            status.failed_indexes = Some(fi.to_string());
        }
    }
    let mut conds = status.conditions.take().unwrap_or_default();
    if let Some(f) = finishing.take() {
        let (reason, message) = (
            f.reason.clone().unwrap_or_default(),
            f.message.clone().unwrap_or_default(),
        );
        finishing = Some(match f.type_.as_str() {
            "FailureTarget" => {
                conds.push(f);
                new_condition("Failed", "True", &reason, &message, now)
            }
            "SuccessCriteriaMet" => {
                if condition(&conds, "SuccessCriteriaMet").is_none() {
                    conds.push(f);
                }
                new_condition("Complete", "True", &reason, &message, now)
            }
            _ => f,
        });
    }
    status.conditions = (!conds.is_empty()).then_some(conds);
    status.uncounted_terminated_pods = Some(unc.clone());
    if !p.remove_finalizers.is_empty() {
        p.interim_status = Some(status.clone());
    }
    // Once the finalizers are gone, what was uncounted is counted.
    let still: HashSet<&str> = with_finalizer.difference(&removed).copied().collect();
    count_uncounted(&mut status, &mut unc, &still);
    let empty = unc.succeeded.as_ref().is_none_or(Vec::is_empty)
        && unc.failed.as_ref().is_none_or(Vec::is_empty);
    status.uncounted_terminated_pods = Some(unc);
    if let Some(f) = finishing.filter(|_| !reached_max && empty && m.terminating == 0) {
        let reason = f.reason.clone().unwrap_or_default();
        let message = f.message.clone().unwrap_or_default();
        let mut conds = status.conditions.take().unwrap_or_default();
        ensure_condition(&mut conds, &f.type_, "True", &reason, &message, now);
        status.conditions = Some(conds);
        if f.type_ == "Complete" {
            status.completion_time = Some(Time(now));
            if v.completions
                .is_some_and(|c| status.succeeded.unwrap_or(0) > c)
            {
                p.events.push(Event::warning(
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached",
                ));
            }
            p.events.push(Event::normal("Completed", "Job completed"));
        } else {
            p.events.push(Event {
                warning: true,
                reason: failure_reason(&reason),
                message,
            });
        }
    }
    p.status = status;
    p
}

/// The failure reasons as static strings (events carry `&'static str` reasons).
fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "BackoffLimitExceeded" => "BackoffLimitExceeded",
        "DeadlineExceeded" => "DeadlineExceeded",
        "MaxFailedIndexesExceeded" => "MaxFailedIndexesExceeded",
        "FailedIndexes" => "FailedIndexes",
        "PodFailurePolicy" => "PodFailurePolicy",
        _ => "JobFailed",
    }
}

/// What `ttlSecondsAfterFinished` asks of a Job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Delete it now (the TTL controller deletes with foreground propagation).
    Expired,
    /// Look again after this long.
    In(SignedDuration),
}

/// The TTL-after-finished controller's decision: `None` without a TTL or before the Job
/// finished; an error when the finished condition has no time.
pub fn ttl_after_finished(job: &Job, now: Timestamp) -> Result<Option<Ttl>, String> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(None);
    };
    let Some(kind) = finished(job) else {
        return Ok(None);
    };
    let at = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| condition(cs, kind))
        .and_then(|c| c.last_transition_time.as_ref())
        .ok_or_else(|| {
            format!(
                "unable to find the time when the Job {}/{} finished",
                job.metadata.namespace.as_deref().unwrap_or(""),
                job.metadata.name.as_deref().unwrap_or("")
            )
        })?;
    let expires = at.0 + SignedDuration::from_secs(i64::from(ttl));
    Ok(Some(if now >= expires {
        Ttl::Expired
    } else {
        Ttl::In(expires.duration_since(now))
    }))
}

/// The apiserver's defaults for a Job (`SetDefaults_Job`).
pub fn defaults(job: &mut Job) {
    let spec = job.spec.get_or_insert_with(Default::default);
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
        spec.parallelism = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    if spec.backoff_limit.is_none() {
        spec.backoff_limit = Some(if spec.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            DEFAULT_BACKOFF_LIMIT
        });
    }
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    if spec.pod_replacement_policy.is_none() {
        let policy = if spec.pod_failure_policy.is_some() {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        spec.pod_replacement_policy = Some(policy.into());
    }
    spec.manual_selector.get_or_insert(false);
}

/// A label selector as Go's `%#v` prints a `metav1.LabelSelector`, for error messages.
pub fn selector_text(selector: Option<&LabelSelector>) -> String {
    let Some(s) = selector else {
        return "null".into();
    };
    let exprs = match &s.match_expressions {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(list) => {
            let items: Vec<String> = list
                .iter()
                .map(|r| {
                    let values: Vec<String> =
                        r.values.iter().flatten().map(|v| field::quoted(v)).collect();
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:[]string{{{}}}}}",
                        r.key,
                        r.operator,
                        values.join(", ")
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        field::go_map(s.match_labels.as_ref())
    )
}

/// `validateJobSpec`, shared with a CronJob's job template: the checks that do not need the
/// Job's identity. The pod template is left to the pod validation.
pub fn validate_spec(spec: &JobSpec, path: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let f = |name: &str| format!("{path}.{name}");
    field::nonnegative(
        &mut errs,
        &f("parallelism"),
        spec.parallelism.map(i64::from),
    );
    field::nonnegative(
        &mut errs,
        &f("completions"),
        spec.completions.map(i64::from),
    );
    field::nonnegative(
        &mut errs,
        &f("activeDeadlineSeconds"),
        spec.active_deadline_seconds,
    );
    field::nonnegative(
        &mut errs,
        &f("backoffLimit"),
        spec.backoff_limit.map(i64::from),
    );
    field::nonnegative(
        &mut errs,
        &f("ttlSecondsAfterFinished"),
        spec.ttl_seconds_after_finished.map(i64::from),
    );
    field::nonnegative(
        &mut errs,
        &f("backoffLimitPerIndex"),
        spec.backoff_limit_per_index.map(i64::from),
    );
    if let Some(max) = spec.max_failed_indexes {
        field::nonnegative(&mut errs, &f("maxFailedIndexes"), Some(i64::from(max)));
        if spec.backoff_limit_per_index.is_none() {
            errs.push(field::required(
                &f("backoffLimitPerIndex"),
                "when maxFailedIndexes is specified",
            ));
        }
    }
    let mode = spec.completion_mode.as_deref();
    if let Some(m) = mode
        && m != "NonIndexed"
        && m != "Indexed"
    {
        errs.push(field::not_supported(
            &f("completionMode"),
            m,
            &["NonIndexed", "Indexed"],
        ));
    }
    if mode == Some("Indexed") {
        if spec.completions.is_none() {
            errs.push(field::required(
                &f("completions"),
                "when completion mode is Indexed",
            ));
        }
        if let Some(par) = spec.parallelism.filter(|p| *p > MAX_PARALLELISM_INDEXED) {
            errs.push(field::invalid(
                &f("parallelism"),
                par,
                "must be less than or equal to 100000 when completion mode is Indexed",
            ));
        }
        if let (Some(c), Some(max)) = (spec.completions, spec.max_failed_indexes)
            && max > c
        {
            errs.push(field::invalid(
                &f("maxFailedIndexes"),
                max,
                "must be less than or equal to completions",
            ));
        }
        if let Some(max) = spec.max_failed_indexes.filter(|m| *m > MAX_FAILED_INDEXES) {
            errs.push(field::invalid(
                &f("maxFailedIndexes"),
                max,
                "must be less than or equal to 100000",
            ));
        }
        if spec.completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT)
            && spec.backoff_limit_per_index.is_some()
            && spec.max_failed_indexes.is_none()
        {
            errs.push(field::required(
                &f("maxFailedIndexes"),
                "must be specified when completions is above 100000",
            ));
        }
    } else {
        if let Some(b) = spec.backoff_limit_per_index {
            errs.push(field::invalid(
                &f("backoffLimitPerIndex"),
                b,
                "requires indexed completion mode",
            ));
        }
        if let Some(m) = spec.max_failed_indexes {
            errs.push(field::invalid(
                &f("maxFailedIndexes"),
                m,
                "requires indexed completion mode",
            ));
        }
    }
    if let Some(policy) = spec.pod_replacement_policy.as_deref()
        && policy != "Failed"
        && policy != "TerminatingOrFailed"
    {
        errs.push(field::not_supported(
            &f("podReplacementPolicy"),
            policy,
            &["Failed", "TerminatingOrFailed"],
        ));
    }
    let restart = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("");
    let restart_path = f("template.spec.restartPolicy");
    match restart {
        "" | "Always" => errs.push(field::required(
            &restart_path,
            "valid values: \"OnFailure\", \"Never\"",
        )),
        "OnFailure" | "Never" => {
            if spec.pod_failure_policy.is_some() && restart != "Never" {
                errs.push(field::invalid(
                    &restart_path,
                    field::quoted(restart),
                    "only \"Never\" is supported when podFailurePolicy is specified",
                ));
            }
        }
        other => errs.push(field::not_supported(
            &restart_path,
            other,
            &["OnFailure", "Never"],
        )),
    }
    errs
}

fn has_label(
    errs: &mut Vec<String>,
    labels: Option<&BTreeMap<String, String>>,
    key: &str,
    want: &str,
) {
    let path = format!("spec.template.metadata.labels[{key}]");
    match labels.and_then(|l| l.get(key)) {
        None => errs.push(field::required(&path, want)),
        Some(v) if v != want => errs.push(field::invalid(
            &path,
            field::go_map(labels),
            &format!("must be '{want}'"),
        )),
        Some(_) => {}
    }
}

/// The apiserver's checks of a Job (`ValidateJob`) after defaulting and selector generation,
/// in its order and words; empty when valid.
pub fn validate(job: &Job) -> Vec<String> {
    let mut errs = Vec::new();
    let default_spec = JobSpec::default();
    let spec = job.spec.as_ref().unwrap_or(&default_spec);
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    if spec.manual_selector != Some(true) && spec.selector.is_some() {
        if uid.is_empty() {
            errs.push(field::required("metadata.uid", ""));
        }
        has_label(&mut errs, labels, LEGACY_CONTROLLER_UID, &uid);
        has_label(&mut errs, labels, LEGACY_JOB_NAME, &name);
        has_label(&mut errs, labels, CONTROLLER_UID, &uid);
        has_label(&mut errs, labels, JOB_NAME, &name);
        let expected = BTreeMap::from([
            (CONTROLLER_UID.to_string(), uid.clone()),
            (JOB_NAME.to_string(), name.clone()),
            (LEGACY_CONTROLLER_UID.to_string(), uid.clone()),
            (LEGACY_JOB_NAME.to_string(), name.clone()),
        ]);
        if let Some(sel) = spec
            .selector
            .as_ref()
            .and_then(|s| Selector::from_label_selector(s).ok())
            && !sel.matches(&expected)
        {
            errs.push(format!(
                "spec.selector: Invalid value: {}: `selector` not auto-generated",
                selector_text(spec.selector.as_ref())
            ));
        }
    }
    errs.extend(validate_spec(spec, "spec"));
    let selector = match &spec.selector {
        None => {
            errs.push(field::required("spec.selector", ""));
            None
        }
        Some(s) => match Selector::from_label_selector(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                errs.push(format!(
                    "spec.selector: Invalid value: {}: {e}",
                    selector_text(Some(s))
                ));
                None
            }
        },
    };
    let template_labels = labels.cloned().unwrap_or_default();
    // A missing selector selects nothing, so it does not match the template either.
    if spec.selector.is_none() || selector.is_some_and(|s| !s.matches(&template_labels)) {
        errs.push(field::invalid(
            "spec.template.metadata.labels",
            field::go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    if spec.completion_mode.as_deref() == Some("Indexed")
        && let Some(c) = spec.completions.filter(|c| *c > 0)
    {
        let host = format!("{name}-{}", c - 1);
        if crate::kube::validation::check_dns1123_label(&host).is_err() {
            errs.push(field::invalid(
                "metadata.name",
                field::quoted(&name),
                &format!("will not able to create pod with invalid DNS label: {host}"),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const NOW: &str = "2026-01-01T01:00:00Z";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn now() -> Timestamp {
        ts(NOW)
    }

    /// `NOW` less `secs`, as RFC 3339.
    fn ago(secs: i64) -> String {
        (now() - SignedDuration::from_secs(secs)).to_string()
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn job(extra: Value) -> Job {
        let mut v = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "perl"}]}}}
        });
        merge(&mut v, extra);
        let mut j: Job = serde_json::from_value(v).unwrap();
        defaults(&mut j);
        generate_selector(&mut j);
        j
    }

    fn pod(name: &str, extra: Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": [TRACKING_FINALIZER],
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                                     "uid": "job-uid", "controller": true}]},
            "spec": {"containers": [{"name": "pi", "image": "perl"}]},
            "status": {"phase": "Running"}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn finished_pod(name: &str, phase: &str, secs_ago: i64, extra: Value) -> Pod {
        let mut p = json!({"status": {"phase": phase, "containerStatuses": [{"name": "pi", "image": "perl",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "finishedAt": ago(secs_ago)}}}]}});
        merge(&mut p, extra);
        pod(name, p)
    }

    fn ready(name: &str) -> Pod {
        pod(
            name,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        )
    }

    fn indexed(name: &str, ix: i32, extra: Value) -> Pod {
        let mut p = pod(name, extra);
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), ix.to_string());
        p
    }

    fn cond<'a>(s: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
        s.conditions.as_deref().and_then(|c| condition(c, type_))
    }

    fn reasons(p: &Plan) -> Vec<&str> {
        p.events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn pods_are_created_and_deleted_towards_completions_and_parallelism() {
        struct Case {
            name: &'static str,
            spec: Value,
            status: Value,
            pods: Vec<Pod>,
            create: usize,
            delete: Vec<&'static str>,
            active: i32,
        }
        let cases = vec![
            Case {
                name: "a fresh job starts `parallelism` pods",
                spec: json!({"completions": 3, "parallelism": 2}),
                status: json!({}),
                pods: vec![],
                create: 2,
                delete: vec![],
                active: 2,
            },
            Case {
                name: "never more than the completions left",
                spec: json!({"completions": 2, "parallelism": 5}),
                status: json!({}),
                pods: vec![],
                create: 2,
                delete: vec![],
                active: 2,
            },
            Case {
                name: "a success leaves two to run, and two run",
                spec: json!({"completions": 3, "parallelism": 2}),
                status: json!({}),
                pods: vec![
                    finished_pod("done", "Succeeded", 5, json!({})),
                    pod("a", json!({})),
                    pod("b", json!({})),
                ],
                create: 0,
                delete: vec![],
                active: 2,
            },
            Case {
                name: "counted successes shrink what is wanted",
                spec: json!({"completions": 3, "parallelism": 2}),
                status: json!({"succeeded": 2}),
                pods: vec![],
                create: 1,
                delete: vec![],
                active: 1,
            },
            Case {
                name: "a work queue keeps running after the first success",
                spec: json!({"parallelism": 3}),
                status: json!({}),
                pods: vec![
                    finished_pod("done", "Succeeded", 5, json!({})),
                    pod("a", json!({})),
                    pod("b", json!({})),
                ],
                create: 0,
                delete: vec![],
                active: 2,
            },
            Case {
                name: "a work queue fills up to parallelism before any success",
                spec: json!({"parallelism": 3}),
                status: json!({}),
                pods: vec![pod("a", json!({}))],
                create: 2,
                delete: vec![],
                active: 3,
            },
            Case {
                name: "lowering parallelism deletes not-ready pods first",
                spec: json!({"completions": 10, "parallelism": 2}),
                status: json!({}),
                pods: vec![
                    ready("r1"),
                    pod("n1", json!({})),
                    ready("r2"),
                    pod("n2", json!({})),
                ],
                create: 0,
                delete: vec!["n1", "n2"],
                active: 2,
            },
            Case {
                name: "parallelism 0 runs nothing",
                spec: json!({"completions": 4, "parallelism": 0}),
                status: json!({}),
                pods: vec![],
                create: 0,
                delete: vec![],
                active: 0,
            },
        ];
        for c in cases {
            let mut j = job(json!({"spec": c.spec, "status": c.status}));
            j.status.get_or_insert_with(Default::default);
            let p = plan(&j, &c.pods, now());
            assert_eq!(p.create.len(), c.create, "{}", c.name);
            assert_eq!(p.delete, c.delete, "{}", c.name);
            assert_eq!(p.status.active, Some(c.active), "{}", c.name);
            for new in &p.create {
                assert_eq!(new.generate_name, "pi-", "{}", c.name);
                let meta = new.template.metadata.as_ref().unwrap();
                assert!(
                    meta.finalizers
                        .iter()
                        .flatten()
                        .any(|f| f == TRACKING_FINALIZER)
                );
                assert_eq!(meta.labels.as_ref().unwrap()[CONTROLLER_UID], "job-uid");
            }
        }
        // Pods of another Job do not count.
        let stranger = pod(
            "other",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                "name": "x", "uid": "someone-else", "controller": true}]}}),
        );
        let p = plan(&job(json!({})), &[stranger], now());
        assert_eq!(p.create.len(), 1);
        assert!(p.remove_finalizers.is_empty());
    }

    #[test]
    fn a_success_is_counted_then_the_job_completes() {
        let j = job(json!({}));
        let pods = vec![finished_pod("done", "Succeeded", 5, json!({}))];
        let p = plan(&j, &pods, now());
        let interim = p
            .interim_status
            .clone()
            .expect("the count is recorded first");
        assert_eq!(
            interim.uncounted_terminated_pods.clone().unwrap().succeeded,
            Some(vec!["done-uid".to_string()])
        );
        assert_eq!(
            interim.succeeded, None,
            "not counted before the finalizer goes"
        );
        let met = cond(&interim, "SuccessCriteriaMet").unwrap();
        assert_eq!(met.reason.as_deref(), Some("CompletionsReached"));
        assert_eq!(p.remove_finalizers, ["done"]);
        let s = &p.status;
        assert_eq!(s.succeeded, Some(1));
        assert_eq!(
            s.uncounted_terminated_pods.as_ref().unwrap().succeeded,
            Some(vec![])
        );
        let complete = cond(s, "Complete").unwrap();
        assert_eq!(complete.status, "True");
        assert_eq!(
            complete.message.as_deref(),
            Some("Reached expected number of succeeded pods")
        );
        assert_eq!(s.completion_time, Some(Time(now())));
        assert_eq!(s.start_time, Some(Time(now())));
        assert_eq!(reasons(&p), ["Completed"]);
        assert_eq!(p.events[0].message, "Job completed");
        // Once complete, a sync only lets leftover finalizers go.
        let mut done = j.clone();
        done.status = Some(p.status.clone());
        let again = plan(&done, &[pod("late", json!({}))], now());
        assert!(again.create.is_empty() && again.delete.is_empty() && again.events.is_empty());
        assert_eq!(again.remove_finalizers, ["late"]);
        assert_eq!(finished(&done), Some("Complete"));
    }

    #[test]
    fn a_crash_between_the_interim_status_and_the_finalizers_counts_once() {
        let j = job(json!({"spec": {"completions": 2, "parallelism": 1}}));
        let pods = vec![finished_pod("one", "Succeeded", 5, json!({}))];
        let first = plan(&j, &pods, now());
        // The interim status was written, the finalizer was not removed.
        let mut after_crash = j.clone();
        after_crash.status = first.interim_status.clone();
        let second = plan(&after_crash, &pods, now());
        assert_eq!(second.status.succeeded, Some(1));
        assert_eq!(second.remove_finalizers, ["one"]);
        assert_eq!(second.create.len(), 1, "one completion is left");
    }

    #[test]
    fn failures_past_the_backoff_limit_fail_the_job_in_two_steps() {
        let j = job(json!({"spec": {"completions": 3, "parallelism": 1, "backoffLimit": 1}}));
        // As many failures as the limit allows: still retried.
        let p = plan(&j, &[finished_pod("f1", "Failed", 30, json!({}))], now());
        assert!(cond(p.interim_status.as_ref().unwrap(), "FailureTarget").is_none());
        assert_eq!(p.create.len(), 1);
        let pods = vec![
            finished_pod("f1", "Failed", 30, json!({})),
            finished_pod("f2", "Failed", 20, json!({})),
            ready("run"),
        ];
        let p = plan(&j, &pods, now());
        let target = cond(p.interim_status.as_ref().unwrap(), "FailureTarget").unwrap();
        assert_eq!(target.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(p.delete, ["run"]);
        assert_eq!(p.remove_finalizers, ["f1", "f2", "run"]);
        assert_eq!(
            p.status.failed,
            Some(3),
            "the deleted running pod counts as failed"
        );
        assert_eq!(
            (p.status.active, p.status.ready, p.status.terminating),
            (Some(0), Some(0), Some(1))
        );
        assert!(
            cond(&p.status, "Failed").is_none(),
            "a pod is still terminating"
        );
        assert!(p.events.is_empty());

        // The pod is still going: still no Failed.
        let mut j2 = j.clone();
        j2.status = Some(p.status.clone());
        let going = pod(
            "run",
            json!({"metadata": {"finalizers": null, "deletionTimestamp": ago(1)}}),
        );
        let strip = |p: Pod| {
            let mut p = p;
            p.metadata.finalizers = None;
            p
        };
        let counted: Vec<Pod> = pods[..2].iter().cloned().map(strip).collect();
        let mut with_going = counted.clone();
        with_going.push(going);
        let p2 = plan(&j2, &with_going, now());
        assert!(cond(&p2.status, "Failed").is_none());
        assert!(p2.create.is_empty());

        // It is gone: Failed, with the reason of the target.
        let p3 = plan(&j2, &counted, now());
        let failed = cond(&p3.status, "Failed").expect("failed now");
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(p3.status.completion_time, None);
        assert_eq!(reasons(&p3), ["BackoffLimitExceeded"]);
        assert!(p3.events[0].warning);
        assert_eq!(
            p3.events[0].message,
            "Job has reached the specified backoff limit"
        );
        assert_eq!(p3.status.failed, Some(3));
    }

    #[test]
    fn container_restarts_count_against_the_limit_with_on_failure() {
        let j = job(json!({"spec": {"backoffLimit": 2,
            "template": {"spec": {"restartPolicy": "OnFailure"}}}}));
        let restarted = |n: i32| {
            pod(
                "p",
                json!({"status": {"containerStatuses": [{"name": "pi", "image": "perl",
                "imageID": "", "ready": true, "restartCount": n}]}}),
            )
        };
        let p = plan(&j, &[restarted(1)], now());
        assert!(p.interim_status.is_none() && cond(&p.status, "FailureTarget").is_none());
        let p = plan(&j, &[restarted(2)], now());
        let t = cond(p.interim_status.as_ref().unwrap(), "FailureTarget").unwrap();
        assert_eq!(t.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(p.delete, ["p"]);
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_schedules_a_check() {
        let j =
            job(json!({"spec": {"activeDeadlineSeconds": 60}, "status": {"startTime": ago(61)}}));
        let p = plan(&j, &[pod("slow", json!({}))], now());
        let t = cond(p.interim_status.as_ref().unwrap(), "FailureTarget").unwrap();
        assert_eq!(
            (t.reason.as_deref(), t.message.as_deref()),
            (
                Some("DeadlineExceeded"),
                Some("Job was active longer than specified deadline")
            )
        );
        assert_eq!(p.delete, ["slow"]);
        // With nothing left running it fails in the same sync.
        let p = plan(&j, &[], now());
        assert_eq!(
            cond(&p.status, "Failed").unwrap().reason.as_deref(),
            Some("DeadlineExceeded")
        );
        assert_eq!(reasons(&p), ["DeadlineExceeded"]);
        // Before the deadline: a sync is due when it passes.
        let j =
            job(json!({"spec": {"activeDeadlineSeconds": 60}, "status": {"startTime": ago(20)}}));
        let p = plan(&j, &[], now());
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(40)));
        assert_eq!(p.create.len(), 1);
        // A new Job starts its clock now.
        let p = plan(
            &job(json!({"spec": {"activeDeadlineSeconds": 60}})),
            &[],
            now(),
        );
        assert_eq!(p.status.start_time, Some(Time(now())));
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(60)));
    }

    #[test]
    fn failed_pods_are_replaced_after_a_doubling_delay() {
        let cases = [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 320),
            (7, 600),
            (30, 600),
        ];
        for (failures, secs) in cases {
            assert_eq!(
                pod_backoff(failures),
                SignedDuration::from_secs(secs),
                "{failures}"
            );
        }
        let j = job(json!({"spec": {"completions": 2, "parallelism": 1}}));
        let table: Vec<(&str, Vec<Pod>, usize, Option<i64>)> = vec![
            (
                "one failure 5 s ago waits 5 s more",
                vec![finished_pod("f", "Failed", 5, json!({}))],
                0,
                Some(5),
            ),
            (
                "one failure 11 s ago is replaced",
                vec![finished_pod("f", "Failed", 11, json!({}))],
                1,
                None,
            ),
            (
                "two failures wait 20 s after the last",
                vec![
                    finished_pod("f1", "Failed", 30, json!({})),
                    finished_pod("f2", "Failed", 15, json!({})),
                ],
                0,
                Some(5),
            ),
            (
                "a success resets the count",
                vec![
                    finished_pod("f1", "Failed", 100, json!({})),
                    finished_pod("f2", "Failed", 90, json!({})),
                    finished_pod("ok", "Succeeded", 80, json!({})),
                    finished_pod("f3", "Failed", 4, json!({})),
                ],
                0,
                Some(6),
            ),
        ];
        for (name, pods, create, wait) in table {
            let p = plan(&j, &pods, now());
            assert_eq!(p.create.len(), create, "{name}");
            assert_eq!(
                p.requeue_after,
                wait.map(SignedDuration::from_secs),
                "{name}"
            );
        }
    }

    #[test]
    fn suspending_stops_the_pods_and_resuming_restarts_the_clock() {
        let j = job(json!({"spec": {"suspend": true, "parallelism": 2, "completions": 4}}));
        let p = plan(&j, &[ready("a"), pod("b", json!({}))], now());
        assert_eq!(p.delete, ["b", "a"]);
        assert!(p.create.is_empty());
        let s = cond(&p.status, "Suspended").unwrap();
        assert_eq!(
            (s.status.as_str(), s.reason.as_deref()),
            ("True", Some("JobSuspended"))
        );
        assert_eq!(reasons(&p), ["Suspended"]);
        assert_eq!(p.status.start_time, None, "a suspended Job has not started");
        assert_eq!(
            (p.status.active, p.status.ready, p.status.terminating),
            (Some(0), Some(0), Some(2))
        );
        // Already suspended: no second event.
        let mut again = j.clone();
        again.status = Some(p.status.clone());
        assert!(plan(&again, &[], now()).events.is_empty());
        // Resumed.
        let mut resumed = again.clone();
        resumed.spec.as_mut().unwrap().suspend = Some(false);
        resumed.status.as_mut().unwrap().start_time = Some(Time(ts("2026-01-01T00:00:00Z")));
        let p = plan(&resumed, &[], now());
        let s = cond(&p.status, "Suspended").unwrap();
        assert_eq!(
            (s.status.as_str(), s.reason.as_deref(), s.message.as_deref()),
            ("False", Some("JobResumed"), Some("Job resumed"))
        );
        assert_eq!(reasons(&p), ["Resumed"]);
        assert_eq!(p.status.start_time, Some(Time(now())));
        assert_eq!(p.create.len(), 2);
        // The pods deleted on suspend, still terminating without their finalizer, are no
        // failures: no backoff delays the new ones.
        let stopped = pod(
            "a",
            json!({"metadata": {"finalizers": null, "deletionTimestamp": ago(2)}}),
        );
        let p = plan(&resumed, &[stopped], now());
        assert_eq!(p.create.len(), 2);
        assert_eq!(p.status.failed, None);
    }

    #[test]
    fn completed_indexes_print_as_compressed_intervals() {
        let cases = [
            ("", 10, "", 0),
            ("1,3-5", 10, "1,3-5", 4),
            ("0-2,3", 10, "0-3", 4),
            ("1-9", 5, "1-4", 4),
            ("x,2", 5, "2", 1),
            ("1,2", 5, "1,2", 2),
            ("7", 5, "", 0),
        ];
        for (input, completions, printed, total) in cases {
            let ix = Indexes::parse(input, completions);
            assert_eq!(ix.to_string(), printed, "{input:?}");
            assert_eq!(ix.total(), total, "{input:?}");
        }
        let ix = Indexes::parse("1,3-5", 10).with([7, 0, 2, 9]);
        assert_eq!(ix.to_string(), "0-5,7,9");
        assert!(ix.has(4) && ix.has(9) && !ix.has(6) && !ix.has(8));
    }

    #[test]
    fn indexed_jobs_create_the_missing_indexes() {
        let spec = json!({"completionMode": "Indexed", "completions": 5, "parallelism": 2});
        let j = job(json!({"spec": spec, "status": {"completedIndexes": "0"}}));
        let p = plan(&j, &[indexed("one", 1, json!({}))], now());
        assert_eq!(p.create.len(), 1);
        let new = &p.create[0];
        assert_eq!(new.index, Some(2));
        assert_eq!(new.generate_name, "pi-2-");
        let meta = new.template.metadata.as_ref().unwrap();
        assert_eq!(meta.annotations.as_ref().unwrap()[COMPLETION_INDEX], "2");
        assert_eq!(meta.labels.as_ref().unwrap()[COMPLETION_INDEX], "2");
        let spec = new.template.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, COMPLETION_INDEX_ENV);
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        );
        // Successes become completedIndexes; the pods are counted by index.
        let spec = json!({"completionMode": "Indexed", "completions": 6, "parallelism": 6});
        let j = job(json!({"spec": spec, "status": {"completedIndexes": "0"}}));
        let pods: Vec<Pod> = [1, 3, 4, 5]
            .iter()
            .map(|ix| {
                let mut p = finished_pod(&format!("p{ix}"), "Succeeded", 5, json!({}));
                p.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(COMPLETION_INDEX.into(), ix.to_string());
                p
            })
            .collect();
        let p = plan(&j, &pods, now());
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0,1,3-5"));
        assert_eq!(p.status.succeeded, Some(5));
        assert_eq!(
            p.create.iter().map(|c| c.index).collect::<Vec<_>>(),
            [Some(2)]
        );
        // A repeated index loses its worse pod, an index out of range goes; nothing is
        // created in that sync.
        let spec = json!({"completionMode": "Indexed", "completions": 5, "parallelism": 3});
        let j = job(json!({"spec": spec}));
        let mut best = ready("best");
        best.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), "1".into());
        let pods = vec![
            best,
            indexed("dup", 1, json!({})),
            indexed("far", 7, json!({})),
        ];
        let p = plan(&j, &pods, now());
        assert_eq!(p.delete, ["far", "dup"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_backoff_limit_per_index_retries_and_then_fails_the_index() {
        let spec = json!({"completionMode": "Indexed", "completions": 2, "parallelism": 2,
                          "backoffLimitPerIndex": 1});
        let j = job(json!({"spec": spec.clone()}));
        assert_eq!(j.spec.as_ref().unwrap().backoff_limit, Some(i32::MAX));
        let failed = |secs: i64, count: &str| {
            let mut p = finished_pod(
                "f0",
                "Failed",
                secs,
                json!({"metadata": {"annotations": {INDEX_FAILURE_COUNT: count}}}),
            );
            p.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(COMPLETION_INDEX.into(), "0".into());
            p
        };
        // First failure of index 0, 20 s ago: replaced with the count carried on.
        let p = plan(&j, &[failed(20, "0"), indexed("r1", 1, json!({}))], now());
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].index, Some(0));
        let ann = p.create[0]
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
        assert_eq!(ann[INDEX_FAILURE_COUNT], "1");
        assert!(
            !p.remove_finalizers.contains(&"f0".to_string()),
            "kept until its replacement exists"
        );
        assert_eq!(p.status.failed_indexes.as_deref(), Some(""));
        // Only 5 s ago: wait for the 10 s backoff.
        let p = plan(&j, &[failed(5, "0"), indexed("r1", 1, json!({}))], now());
        assert!(p.create.is_empty());
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(5)));
        // The retry failed too: the index failed, and with the other index done so did the Job.
        let mut one = finished_pod("s1", "Succeeded", 5, json!({}));
        one.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETION_INDEX.into(), "1".into());
        let p = plan(&j, &[failed(5, "1"), one], now());
        assert_eq!(p.status.failed_indexes.as_deref(), Some("0"));
        assert_eq!(
            cond(p.interim_status.as_ref().unwrap(), "FailureTarget")
                .unwrap()
                .reason
                .as_deref(),
            Some("FailedIndexes")
        );
        assert_eq!(
            cond(&p.status, "Failed").unwrap().message.as_deref(),
            Some("Job has failed indexes")
        );
        // maxFailedIndexes 0: the first failed index fails the Job.
        let mut strict = spec.clone();
        merge(&mut strict, json!({"maxFailedIndexes": 0}));
        let p = plan(&job(json!({"spec": strict})), &[failed(5, "1")], now());
        assert_eq!(
            cond(p.interim_status.as_ref().unwrap(), "FailureTarget")
                .unwrap()
                .reason
                .as_deref(),
            Some("MaxFailedIndexesExceeded")
        );
    }

    #[test]
    fn terminating_pods_are_replaced_unless_only_failed_ones_are() {
        let going = pod(
            "going",
            json!({"metadata": {"deletionTimestamp": ago(20), "deletionGracePeriodSeconds": 0}}),
        );
        let j = job(json!({}));
        let p = plan(&j, std::slice::from_ref(&going), now());
        assert_eq!(p.create.len(), 1, "TerminatingOrFailed: replaced at once");
        assert_eq!(p.status.failed, Some(1), "and counted as a failure");
        assert_eq!(p.status.terminating, Some(1));
        let j = job(json!({"spec": {"podReplacementPolicy": "Failed"}}));
        let p = plan(&j, &[going], now());
        assert!(p.create.is_empty(), "Failed: wait until it has failed");
        assert_eq!(p.status.failed, None);
    }

    #[test]
    fn counting_stops_at_the_uncounted_limit() {
        let j = job(json!({"spec": {"completions": 1000, "parallelism": 0}}));
        let pods: Vec<Pod> = (0..600)
            .map(|i| finished_pod(&format!("p{i}"), "Succeeded", 5, json!({})))
            .collect();
        let p = plan(&j, &pods, now());
        assert_eq!(p.remove_finalizers.len(), MAX_UNCOUNTED);
        assert_eq!(p.status.succeeded, Some(500));
        assert!(cond(&p.status, "Complete").is_none());
    }

    #[test]
    fn finished_jobs_expire_after_their_ttl() {
        let finished_at = |kind: &str, ttl: Option<i32>| {
            job(json!({"spec": {"ttlSecondsAfterFinished": ttl},
                "status": {"conditions": [{"type": kind, "status": "True",
                    "lastTransitionTime": ago(100)}]}}))
        };
        let cases = [
            (finished_at("Complete", Some(60)), Ok(Some(Ttl::Expired))),
            (finished_at("Failed", Some(100)), Ok(Some(Ttl::Expired))),
            (
                finished_at("Complete", Some(300)),
                Ok(Some(Ttl::In(SignedDuration::from_secs(200)))),
            ),
            (finished_at("Complete", None), Ok(None)),
            (finished_at("Suspended", Some(0)), Ok(None)),
        ];
        for (j, want) in cases {
            assert_eq!(ttl_after_finished(&j, now()), want);
        }
        let mut no_time = finished_at("Complete", Some(1));
        no_time
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_transition_time = None;
        assert_eq!(
            ttl_after_finished(&no_time, now()).unwrap_err(),
            "unable to find the time when the Job default/pi finished"
        );
    }

    #[test]
    fn defaults_and_the_generated_selector_are_the_apiservers() {
        let j = job(json!({}));
        let spec = j.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.parallelism), (Some(1), Some(1)));
        assert_eq!(spec.backoff_limit, Some(6));
        assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
        assert_eq!(
            spec.pod_replacement_policy.as_deref(),
            Some("TerminatingOrFailed")
        );
        assert_eq!(
            spec.selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[CONTROLLER_UID],
            "job-uid"
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (k, v) in [
            (CONTROLLER_UID, "job-uid"),
            (JOB_NAME, "pi"),
            ("controller-uid", "job-uid"),
            ("job-name", "pi"),
        ] {
            assert_eq!(labels[k], v);
        }
        assert!(validate(&j).is_empty(), "{:?}", validate(&j));
        let queue = job(json!({"spec": {"parallelism": 3}}));
        assert_eq!(queue.spec.as_ref().unwrap().completions, None);
    }

    #[test]
    fn validation_refuses_with_the_apiservers_messages() {
        let manual = |spec: Value| {
            let mut v = json!({"manualSelector": true, "selector": {"matchLabels": {"app": "pi"}},
                "template": {"metadata": {"labels": {"app": "pi"}}}});
            merge(&mut v, spec);
            job(json!({"spec": v}))
        };
        let cases = [
            (manual(json!({})), vec![]),
            (
                manual(json!({"template": {"metadata": {"labels": {"app": "other"}}}})),
                vec![
                    "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`",
                ],
            ),
            (
                manual(json!({"completions": -1, "parallelism": -2})),
                vec![
                    "spec.parallelism: Invalid value: -2: must be greater than or equal to 0",
                    "spec.completions: Invalid value: -1: must be greater than or equal to 0",
                ],
            ),
            (
                manual(json!({"template": {"spec": {"restartPolicy": "Always"}}})),
                vec![
                    "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
                ],
            ),
            (
                manual(json!({"template": {"spec": {"restartPolicy": "Sometimes"}}})),
                vec![
                    "spec.template.spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"OnFailure\", \"Never\"",
                ],
            ),
            (
                manual(json!({"completionMode": "Indexed", "completions": null, "parallelism": 2})),
                vec!["spec.completions: Required value: when completion mode is Indexed"],
            ),
            (
                manual(json!({"completionMode": "Sometimes"})),
                vec![
                    "spec.completionMode: Unsupported value: \"Sometimes\": supported values: \"NonIndexed\", \"Indexed\"",
                ],
            ),
            (
                manual(json!({"backoffLimitPerIndex": 1})),
                vec![
                    "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
                ],
            ),
            (
                manual(
                    json!({"completionMode": "Indexed", "completions": 2, "maxFailedIndexes": 1}),
                ),
                vec![
                    "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
                ],
            ),
        ];
        for (j, want) in cases {
            assert_eq!(validate(&j), want, "{:?}", j.spec);
        }
        // A missing selector is required and matches nothing.
        let mut none = manual(json!({}));
        none.spec.as_mut().unwrap().selector = None;
        assert_eq!(
            validate(&none),
            [
                "spec.selector: Required value",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"pi\"}: `selector` does not match template `labels`"
            ]
        );
        // An Indexed Job's last hostname must be a DNS label.
        let long = job(json!({"metadata": {"name": "a".repeat(62)},
            "spec": {"completionMode": "Indexed", "completions": 10, "parallelism": 1}}));
        let errs = validate(&long);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].ends_with(&format!(
            "will not able to create pod with invalid DNS label: {}-9",
            "a".repeat(62)
        )));
        // A generated selector with a conflicting label is refused.
        let clash =
            job(json!({"spec": {"template": {"metadata": {"labels": {"job-name": "other"}}}}}));
        assert_eq!(
            validate(&clash)[0],
            "spec.template.metadata.labels[job-name]: Invalid value: map[string]string{\"batch.kubernetes.io/controller-uid\":\"job-uid\", \"batch.kubernetes.io/job-name\":\"pi\", \"controller-uid\":\"job-uid\", \"job-name\":\"other\"}: must be 'pi'"
        );
    }
}
