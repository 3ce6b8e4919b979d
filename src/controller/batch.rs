//! The Job, TTL-after-finished and CronJob controllers' loop (issue 11), run by
//! [`super::run::sync_all`] on every pass over the store. Each carries out the pure decisions
//! of [`super::job`] and [`super::cronjob`] in the order their module documentation gives,
//! through the API's own write path (`api::write::internal`), so a Job's pod or a CronJob's
//! Job is checked exactly as a client's.
//!
//! The store enforces no finalizers, so the Job controller's counting through the
//! `batch.kubernetes.io/job-tracking` finalizer works thus: a finished pod keeps the finalizer
//! until the Job's status has recorded it as uncounted (the plan's interim status), then the
//! finalizer is dropped from the pod (API object and served pod), then the status counts it. A
//! pod the controller deletes loses its finalizer first, as the real controller does.
//!
//! A pass runs on every change of the store, and recording an event is a change: an event the
//! same object already got in the last minute is not recorded again, so a decision that
//! repeats every pass (a CronJob's `UnexpectedJob`, a pod that cannot be created) does not keep
//! the loop busy.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::event::Event;
use super::{cronjob, job};
use crate::api::write::{Kind, Propagation, Writer, internal};
use crate::manifest::workload::WorkloadKind;
use crate::store::{EventType, Involved, ObjKey, SOURCE_ANNOTATION, Store};

const JOB: Kind = Kind::Workload(WorkloadKind::Job);

/// An event the same object got this recently is not recorded again.
const EVENT_QUIET: SignedDuration = SignedDuration::from_secs(60);

/// One pass of the CronJob, Job and TTL-after-finished controllers.
pub fn sync_all(w: &Writer, now: Timestamp) {
    let local = TimeZone::system();
    for cj in w.store.list_workloads("cronjobs", None) {
        sync_cron_job(w, &cj, &local, now);
    }
    for j in w.store.list_workloads("jobs", None) {
        sync_job(w, &j, now);
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

fn from_manifest(v: &Value) -> bool {
    v["metadata"]["annotations"][SOURCE_ANNOTATION]
        .as_str()
        .is_some_and(|s| s.starts_with("manifest:"))
}

/// The pods a Job may own: those made through the API in its namespace.
fn api_pods(store: &Store, ns: &str) -> Vec<Pod> {
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

/// Records `e` on the object, unless it got the same event within [`EVENT_QUIET`].
fn record(w: &Writer, kind: WorkloadKind, v: &Value, e: &Event, now: Timestamp) {
    let involved = Involved {
        kind: kind.name().into(),
        namespace: meta_str(v, "namespace").into(),
        name: meta_str(v, "name").into(),
        uid: Some(meta_str(v, "uid").into()),
    };
    let recent = w
        .store
        .list_events(Some(&involved.namespace), Some(&involved.name))
        .iter()
        .any(|x| {
            x.involved_object.uid == involved.uid
                && x.reason.as_deref() == Some(e.reason)
                && x.message.as_deref() == Some(e.message.as_str())
                && x.last_timestamp
                    .as_ref()
                    .is_some_and(|t| now.duration_since(t.0) < EVENT_QUIET)
        });
    if recent {
        return;
    }
    let ty = if e.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    w.store.event(&involved, ty, e.reason, &e.message);
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

/// A Job's status as the apiserver serves it: `uncountedTerminatedPods` without its empty
/// lists (Go's `omitempty`), so it reads `{}` once everything is counted.
fn job_status(status: &k8s_openapi::api::batch::v1::JobStatus) -> Option<Value> {
    let mut v = serde_json::to_value(status).ok()?;
    if let Some(u) = v["uncountedTerminatedPods"].as_object_mut() {
        u.retain(|_, list| list.as_array().is_none_or(|l| !l.is_empty()));
    }
    Some(v)
}

/// Writes a workload's status if it still has `uid` and the status changed.
fn write_status(w: &Writer, key: &ObjKey, uid: &str, status: Value) {
    if let Err(e) = w.store.update_workload(key, uid, |v| v["status"] = status) {
        warn!(kind = %key.0, namespace = %key.1, name = %key.2, error = %e, "writing a status");
    }
}

/// One Job: the TTL after it finished, else its plan carried out.
fn sync_job(w: &Writer, v: &Value, now: Timestamp) {
    let Ok(j) = serde_json::from_value::<Job>(v.clone()) else {
        return;
    };
    let ns = meta_str(v, "namespace");
    let name = meta_str(v, "name");
    let uid = meta_str(v, "uid");
    let key = obj_key(WorkloadKind::Job, v);
    let deleting = !v["metadata"]["deletionTimestamp"].is_null();
    match job::ttl_after_finished(&j, now) {
        // A manifest Job is its file's to remove.
        Ok(Some(job::Ttl::Expired)) if !deleting && !from_manifest(v) => {
            debug!(job = %name, namespace = %ns, "ttlSecondsAfterFinished expired");
            if let Err(e) = internal::delete_with(w, JOB, ns, name, Propagation::Foreground) {
                warn!(job = %name, namespace = %ns, error = %e.message(), "deleting an expired Job");
            }
            return;
        }
        Err(e) => debug!(job = %name, namespace = %ns, error = %e, "ttlSecondsAfterFinished"),
        _ => {}
    }
    let pods = api_pods(w.store, ns);
    let plan = job::plan(&j, &pods, now);
    if let Some(interim) = &plan.interim_status {
        match job_status(interim) {
            Some(s) => write_status(w, &key, uid, s),
            None => return,
        }
    }
    let mut finalizers_gone = true;
    for p in plan.remove_finalizers.iter().chain(&plan.delete) {
        if let Err(e) = internal::remove_pod_finalizer(w, ns, p, job::TRACKING_FINALIZER) {
            debug!(pod = %p, error = %e.message(), "removing the job-tracking finalizer");
            finalizers_gone = false;
        }
    }
    let mut events: Vec<Event> = Vec::new();
    for p in &plan.delete {
        match internal::delete(w, Kind::Pod, ns, p) {
            Ok(()) => events.push(Event::normal(
                "SuccessfulDelete",
                format!("Deleted pod: {p}"),
            )),
            Err(e) if e.reason() == "NotFound" => {}
            Err(e) => events.push(Event::warning(
                "FailedDelete",
                format!("Error deleting: {}", e.message()),
            )),
        }
    }
    let me = owner_ref(WorkloadKind::Job, v);
    for new in &plan.create {
        let mut meta = serde_json::to_value(new.template.metadata.clone().unwrap_or_default())
            .unwrap_or_else(|_| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.remove("name");
        }
        meta["generateName"] = new.generate_name.clone().into();
        meta["namespace"] = ns.into();
        meta["ownerReferences"] = json!([me.clone()]);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": meta,
            "spec": serde_json::to_value(&new.template.spec).unwrap_or(Value::Null),
        });
        match internal::create(w, Kind::Pod, ns, pod) {
            Ok(p) => events.push(Event::normal(
                "SuccessfulCreate",
                format!("Created pod: {}", meta_str(&p, "name")),
            )),
            Err(e) => {
                events.push(Event::warning(
                    "FailedCreate",
                    format!("Error creating: {}", e.message()),
                ));
                break;
            }
        }
    }
    // With a finalizer left, the next pass counts again from the interim status.
    if finalizers_gone && let Some(s) = job_status(&plan.status) {
        write_status(w, &key, uid, s);
    }
    for e in events.iter().chain(&plan.events) {
        record(w, WorkloadKind::Job, v, e, now);
    }
}

/// One CronJob: its plan carried out, the created Job recorded in its status.
fn sync_cron_job(w: &Writer, v: &Value, local: &TimeZone, now: Timestamp) {
    let Ok(cj) = serde_json::from_value::<CronJob>(v.clone()) else {
        return;
    };
    let ns = meta_str(v, "namespace");
    let uid = meta_str(v, "uid");
    let jobs: Vec<Job> = w
        .store
        .list_workloads("jobs", Some(ns))
        .into_iter()
        .filter_map(|j| serde_json::from_value(j).ok())
        .collect();
    let plan = cronjob::plan(&cj, &jobs, local, now);
    let mut status = plan.status.clone();
    let mut events = plan.events.clone();
    for name in &plan.delete {
        match internal::delete(w, JOB, ns, name) {
            Ok(()) => {}
            Err(e) if e.reason() == "NotFound" => {}
            Err(e) => events.push(Event::warning(
                "FailedDelete",
                format!("Error deleting job: {}", e.message()),
            )),
        }
    }
    if let (Some(j), Some(at)) = (&plan.create, plan.scheduled) {
        let job_name = j.metadata.name.clone().unwrap_or_default();
        let created = serde_json::to_value(j)
            .map_err(|e| e.to_string())
            .and_then(|body| internal::create(w, JOB, ns, body).map_err(|e| e.message().into()));
        let failure = match created {
            Ok(c) => match serde_json::from_value::<Job>(c) {
                Ok(c) => {
                    cronjob::record_created(&mut status, &c, at);
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            Err(msg) => {
                // Made by an earlier pass whose status write was lost: the same Job.
                let existing = w
                    .store
                    .workload(&(JOB.plural().into(), ns.into(), job_name.clone()))
                    .and_then(|e| serde_json::from_value::<Job>(e).ok())
                    .filter(|e| {
                        e.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|r| r.controller == Some(true) && r.uid == uid)
                    });
                match existing {
                    Some(e) => {
                        cronjob::record_created(&mut status, &e, at);
                        None
                    }
                    None => Some(msg),
                }
            }
        };
        if let Some(msg) = failure {
            let created_event = format!("Created job {job_name}");
            events.retain(|e| !(e.reason == "SuccessfulCreate" && e.message == created_event));
            events.push(Event::warning(
                "FailedCreate",
                format!("Error creating job: {msg}"),
            ));
        }
    }
    if status.active.as_ref().is_some_and(Vec::is_empty) {
        status.active = None;
    }
    if let Ok(s) = serde_json::to_value(&status) {
        write_status(w, &obj_key(WorkloadKind::CronJob, v), uid, s);
    }
    for e in &events {
        record(w, WorkloadKind::CronJob, v, e, now);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;

    use super::*;

    fn with_writer(f: impl FnOnce(&Writer)) {
        let store = Store::new("n");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        f(&Writer {
            store: &store,
            resync: &tx,
        });
    }

    fn job_pods(w: &Writer, job: &str) -> Vec<Pod> {
        api_pods(w.store, "default")
            .into_iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(job))
            })
            .collect()
    }

    fn finish(w: &Writer, p: &Pod, phase: &str) {
        let key = ("default".to_string(), p.metadata.name.clone().unwrap());
        w.store
            .update_pod(&key, p.metadata.uid.as_deref().unwrap(), |p| {
                p.status = Some(PodStatus {
                    phase: Some(phase.into()),
                    ..Default::default()
                });
            });
    }

    fn job_value(w: &Writer, name: &str) -> Value {
        w.store
            .workload(&("jobs".into(), "default".into(), name.into()))
            .unwrap()
    }

    #[test]
    fn a_job_counts_its_pods_through_the_finalizer_and_completes() {
        with_writer(|w| {
            let job = json!({
                "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi"},
                "spec": {"completions": 2, "parallelism": 1, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}],
                }}},
            });
            internal::create(w, JOB, "default", job).unwrap();
            let now = Timestamp::now();
            sync_all(w, now);
            let pods = job_pods(w, "pi-");
            assert_eq!(pods.len(), 1);
            let p = &pods[0];
            assert_eq!(
                p.metadata.finalizers.as_deref(),
                Some(&[job::TRACKING_FINALIZER.to_string()][..])
            );
            assert_eq!(
                p.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-name"],
                "pi"
            );
            assert_eq!(job_value(w, "pi")["status"]["active"], 1);

            finish(w, p, "Succeeded");
            sync_all(w, now);
            // Counted, its finalizer gone (served pod and API object), the next pod made.
            let j = job_value(w, "pi");
            assert_eq!(j["status"]["succeeded"], 1, "{j}");
            assert_eq!(j["status"]["uncountedTerminatedPods"], json!({}), "{j}");
            let first = w
                .store
                .get_pod("default", p.metadata.name.as_deref().unwrap());
            assert!(first.unwrap().metadata.finalizers.is_none());
            let key = (
                "pods".into(),
                "default".into(),
                p.metadata.name.clone().unwrap(),
            );
            assert!(w.store.api_object(&key).unwrap()["metadata"]["finalizers"].is_null());
            let pods = job_pods(w, "pi-");
            assert_eq!(pods.len(), 2);
            let second = pods
                .iter()
                .find(|x| x.metadata.uid != p.metadata.uid)
                .unwrap();
            finish(w, second, "Succeeded");
            sync_all(w, now);
            sync_all(w, now);
            let j = job_value(w, "pi");
            assert_eq!(j["status"]["succeeded"], 2, "{j}");
            let types: Vec<&str> = j["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["type"].as_str().unwrap())
                .collect();
            assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
            assert_eq!(job_pods(w, "pi-").len(), 2);
            // Nothing more to do: another pass changes nothing.
            let rv = j["metadata"]["resourceVersion"].clone();
            sync_all(w, now);
            assert_eq!(job_value(w, "pi")["metadata"]["resourceVersion"], rv);
        });
    }

    #[test]
    fn a_cron_job_creates_its_job_once_and_records_it() {
        with_writer(|w| {
            let cj = json!({
                "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{"name": "c", "image": "busybox"}],
                }}}}},
            });
            let made =
                internal::create(w, Kind::Workload(WorkloadKind::CronJob), "default", cj).unwrap();
            let created: Timestamp = meta_str(&made, "creationTimestamp").parse().unwrap();
            // Two minutes on: the latest missed time is started, once.
            let later = created + SignedDuration::from_secs(120);
            sync_all(w, later);
            sync_all(w, later);
            let jobs = w.store.list_workloads("jobs", Some("default"));
            assert_eq!(jobs.len(), 1, "{jobs:?}");
            let name = meta_str(&jobs[0], "name");
            let minutes = later.as_second() / 60;
            assert_eq!(name, format!("tick-{minutes}"));
            assert_eq!(jobs[0]["metadata"]["ownerReferences"][0]["kind"], "CronJob");
            let cj = w
                .store
                .workload(&("cronjobs".into(), "default".into(), "tick".into()))
                .unwrap();
            assert_eq!(cj["status"]["active"][0]["name"], name);
            assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
            // The Job's pod was made in the same pass.
            assert_eq!(job_pods(w, &format!("{name}-")).len(), 1);
        });
    }
}
