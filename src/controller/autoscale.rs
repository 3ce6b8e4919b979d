//! The HorizontalPodAutoscaler loop (issue 11): every sync period each HPA reads its target's
//! scale and the pods its selector picks, the usage skiffd's metrics sampler measured from
//! their cgroups (what `kubectl top` shows), asks [`super::hpa::plan`], writes the new size
//! through the target's scale subresource (the API's own write path) and its status.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serde_json::Value;

use super::hpa;
use crate::api::write::{Kind, Writer, internal};
use crate::manifest::workload::WorkloadKind;
use crate::store::{EventType, Involved};

/// What the loop remembers of each HPA (by UID) between passes, as kube-controller-manager
/// does in memory: its recommendations and when it last synced.
#[derive(Default)]
pub struct Memory {
    hpas: BTreeMap<String, (hpa::History, Option<Timestamp>, Option<i64>)>,
}

/// The usage samples of one namespace's pods, as `hpa::plan` takes them.
pub fn usage_of(pod_metrics: &[Value]) -> hpa::Usage {
    let mut out = hpa::Usage::new();
    for m in pod_metrics {
        let name = m["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let timestamp = m["timestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let window = m["window"]
            .as_str()
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse::<f64>().ok())
            .map(|s| SignedDuration::from_millis((s * 1000.0) as i64))
            .unwrap_or(SignedDuration::from_secs(10));
        let mut containers = BTreeMap::new();
        for c in m["containers"].as_array().into_iter().flatten() {
            let mut r = BTreeMap::new();
            if let Some(cpu) = c["usage"]["cpu"]
                .as_str()
                .and_then(|q| crate::quantity::millicores(q).ok())
            {
                r.insert("cpu".to_string(), cpu);
            }
            if let Some(mem) = c["usage"]["memory"]
                .as_str()
                .and_then(|q| crate::quantity::bytes(q).ok())
            {
                r.insert("memory".to_string(), mem.saturating_mul(1000));
            }
            containers.insert(c["name"].as_str().unwrap_or_default().to_string(), r);
        }
        out.insert(
            name,
            hpa::PodUsage {
                timestamp,
                window,
                containers,
            },
        );
    }
    out
}

/// One pass over every HPA that is due (never synced, changed, or a sync period ago).
pub fn sync_all(
    w: &Writer,
    pod_metrics: &dyn Fn(&str) -> Vec<Value>,
    memory: &mut Memory,
    now: Timestamp,
) {
    let hpas = w
        .store
        .list_workloads(WorkloadKind::HorizontalPodAutoscaler.plural(), None);
    let live: Vec<String> = hpas
        .iter()
        .filter_map(|h| h["metadata"]["uid"].as_str().map(String::from))
        .collect();
    memory.hpas.retain(|uid, _| live.contains(uid));
    for v in hpas {
        let uid = v["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let generation = v["metadata"]["generation"].as_i64();
        let entry = memory.hpas.entry(uid.clone()).or_default();
        let due = match entry.1 {
            None => true,
            Some(last) => now.duration_since(last) >= hpa::SYNC_PERIOD || entry.2 != generation,
        };
        if !due {
            continue;
        }
        entry.1 = Some(now);
        entry.2 = generation;
        sync_one(w, &v, pod_metrics, &mut entry.0, now);
    }
}

fn sync_one(
    w: &Writer,
    v: &Value,
    pod_metrics: &dyn Fn(&str) -> Vec<Value>,
    history: &mut hpa::History,
    now: Timestamp,
) {
    let Ok(h) = serde_json::from_value::<HorizontalPodAutoscaler>(v.clone()) else {
        return;
    };
    let ns = h.metadata.namespace.clone().unwrap_or_default();
    let name = h.metadata.name.clone().unwrap_or_default();
    let uid = h.metadata.uid.clone().unwrap_or_default();
    let target = &h.spec.scale_target_ref;
    let kind = WorkloadKind::from_name(&target.kind).filter(|k| {
        k.has_scale()
            && target
                .api_version
                .as_deref()
                .is_none_or(|a| a == k.api_version())
    });
    let scaled = kind.and_then(|k| {
        w.store
            .workload(&(k.plural().to_string(), ns.clone(), target.name.clone()))
            .map(|t| (k, t))
    });
    let mut plan = match scaled {
        None => {
            let what = kind.map_or(target.kind.to_lowercase() + "s", |k| k.plural().to_string());
            hpa::plan_without_scale(
                &h,
                &format!(
                    "{what}.{} \"{}\" not found",
                    group_of(&target.kind),
                    target.name
                ),
                now,
            )
        }
        Some((k, t)) => {
            let current = t["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
            let selector = super::run::selector_for(k, &t);
            let pods: Vec<_> = super::run::api_pods(w.store, &ns)
                .into_iter()
                .filter(|p| {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    selector.as_ref().is_some_and(|s| s.matches(&labels))
                })
                .collect();
            let usage = usage_of(&pod_metrics(&ns));
            let mut plan = hpa::plan(
                &h,
                current,
                &pods,
                &usage,
                history,
                &hpa::Config::default(),
                now,
            );
            if let Some(n) = plan.rescale
                && let Err(e) = internal::scale(w, Kind::Workload(k), &ns, &target.name, n)
            {
                plan.rescale_failed(history, e.message());
            }
            plan
        }
    };
    let involved = Involved {
        kind: "HorizontalPodAutoscaler".into(),
        namespace: ns.clone(),
        name: name.clone(),
        uid: Some(uid.clone()),
    };
    for e in std::mem::take(&mut plan.events) {
        let ty = if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        w.store.event(&involved, ty, e.reason, &e.message);
    }
    let Ok(status) = serde_json::to_value(&plan.status) else {
        return;
    };
    let key = (
        WorkloadKind::HorizontalPodAutoscaler.plural().to_string(),
        ns,
        name,
    );
    if v["status"] != status {
        let _ = w
            .store
            .update_workload(&key, &uid, |v| v["status"] = status);
    }
}

fn group_of(kind: &str) -> &'static str {
    match kind {
        "ReplicationController" => "",
        _ => "apps",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_metrics_become_usage_in_thousandths() {
        let m = json!([{
            "metadata": {"name": "web-1", "namespace": "default"},
            "timestamp": "2026-12-05T10:00:00Z",
            "window": "10.5s",
            "containers": [{"name": "c", "usage": {"cpu": "250m", "memory": "2Ki"}}],
        }]);
        let u = usage_of(m.as_array().unwrap());
        let p = &u["web-1"];
        assert_eq!(p.window, SignedDuration::from_millis(10500));
        assert_eq!(p.containers["c"]["cpu"], 250);
        assert_eq!(p.containers["c"]["memory"], 2048 * 1000);
        assert_eq!(p.timestamp.to_string(), "2026-12-05T10:00:00Z");
    }
}
