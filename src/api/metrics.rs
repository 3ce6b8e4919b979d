//! The resource metrics API (`metrics.k8s.io/v1beta1`) as metrics-server serves it, so that
//! `kubectl top pods|nodes` read a skiff node. Every `resolution` a [`Sampler`] reads the
//! cumulative CPU time and memory working set of each running container's cgroup and of the
//! node (`runtime::usage`); CPU is a rate over the window between two readings, so an object
//! has metrics from its second reading on (metrics-server answers "not found" before that,
//! and so does skiffd).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::{ApiError, Shared};
use crate::runtime::{ID_SCHEME, cgkill, usage};
use crate::store::Store;

pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

/// One cumulative reading and when it was taken.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    usage: usage::Usage,
}

/// Usage over a window: CPU in nanocores, memory working set in bytes at its end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub nanocores: u64,
    pub memory: u64,
    pub window: Duration,
}

impl Rate {
    /// The rate between two readings, `None` when the counter went back (a new cgroup under
    /// the same name) or no time passed.
    fn between(old: &Reading, new: &Reading) -> Option<Rate> {
        let window = new.at.checked_duration_since(old.at)?;
        let cpu = new.usage.cpu_ns.checked_sub(old.usage.cpu_ns)?;
        if window.is_zero() {
            return None;
        }
        Some(Rate {
            nanocores: (cpu as f64 / window.as_secs_f64()) as u64,
            memory: new.usage.memory_working_set,
            window,
        })
    }

    fn usage_json(&self) -> Value {
        json!({
            "cpu": format!("{}n", self.nanocores),
            "memory": format!("{}Ki", self.memory / 1024),
        })
    }
}

/// A pod's metrics: every running container's rate, taken at one time.
#[derive(Debug, Clone)]
struct PodSample {
    labels: BTreeMap<String, String>,
    containers: Vec<(String, Rate)>,
    timestamp: jiff::Timestamp,
}

#[derive(Default)]
struct Inner {
    /// The last reading of each container cgroup, by its relative path.
    last: HashMap<String, Reading>,
    last_node: Option<Reading>,
    pods: BTreeMap<(String, String), PodSample>,
    node: Option<(Rate, jiff::Timestamp)>,
}

/// Reads usage every `resolution` and keeps the latest rates.
pub struct Sampler {
    resolution: Duration,
    inner: Mutex<Inner>,
}

/// The running containers of a pod with their cgroups (app containers and running sidecars).
fn running_containers_of(pod: &Pod) -> Vec<(String, String)> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    all.filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .filter_map(|c| {
            let id = c.container_id.as_deref()?.strip_prefix(ID_SCHEME)?;
            Some((c.name.clone(), cgkill::container_cgroup(uid, id)))
        })
        .collect()
}

impl Sampler {
    pub fn new(resolution: Duration) -> Arc<Sampler> {
        Arc::new(Sampler {
            resolution,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Samples until the process ends, on a blocking thread (cgroup files are read).
    pub async fn run(self: Arc<Self>, store: Arc<Store>) {
        let mut tick = tokio::time::interval(self.resolution);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (me, store) = (self.clone(), store.clone());
            let _ = tokio::task::spawn_blocking(move || me.sample(&store)).await;
        }
    }

    /// One round: every running pod of the store, and the node.
    pub fn sample(&self, store: &Store) {
        let pods = store.list_pods(None);
        let node = usage::node().map(|usage| Reading {
            at: Instant::now(),
            usage,
        });
        let mut readings = Vec::new();
        for pod in &pods {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if !running {
                continue;
            }
            let containers: Vec<(String, String, Reading)> = running_containers_of(pod)
                .into_iter()
                .filter_map(|(name, rel)| {
                    let usage = usage::cgroup(&rel)?;
                    Some((
                        name,
                        rel,
                        Reading {
                            at: Instant::now(),
                            usage,
                        },
                    ))
                })
                .collect();
            readings.push((pod, containers));
        }
        let timestamp = jiff::Timestamp::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = HashMap::new();
        let mut samples = BTreeMap::new();
        for (pod, containers) in readings {
            let mut rates = Vec::new();
            let mut complete = !containers.is_empty();
            for (name, rel, reading) in containers {
                match inner
                    .last
                    .get(&rel)
                    .and_then(|old| Rate::between(old, &reading))
                {
                    Some(rate) => rates.push((name, rate)),
                    None => complete = false,
                }
                last.insert(rel, reading);
            }
            // Like metrics-server, a pod with a container not measured yet has no metrics.
            if complete {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                samples.insert(
                    key,
                    PodSample {
                        labels: pod.metadata.labels.clone().unwrap_or_default(),
                        containers: rates,
                        timestamp,
                    },
                );
            }
        }
        inner.last = last;
        inner.pods = samples;
        if let Some(now) = node {
            inner.node = inner
                .last_node
                .as_ref()
                .and_then(|old| Rate::between(old, &now))
                .map(|r| (r, timestamp));
            inner.last_node = Some(now);
        }
    }

    fn pod_json(&self, ns: &str, name: &str, s: &PodSample) -> Value {
        let window = s
            .containers
            .first()
            .map(|(_, r)| r.window)
            .unwrap_or_default();
        json!({
            "kind": "PodMetrics",
            "apiVersion": GROUP_VERSION,
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": s.labels,
                "creationTimestamp": jiff::Timestamp::now().to_string(),
            },
            "timestamp": s.timestamp.to_string(),
            "window": go_duration(window),
            "containers": s.containers.iter().map(|(n, r)| json!({"name": n, "usage": r.usage_json()})).collect::<Vec<_>>(),
        })
    }

    /// PodMetrics of one namespace or of all.
    pub fn pods(&self, namespace: Option<&str>) -> Vec<Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .pods
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|((ns, name), s)| self.pod_json(ns, name, s))
            .collect()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        inner
            .pods
            .get(&key)
            .map(|s| self.pod_json(namespace, name, s))
    }

    /// This node's NodeMetrics, once two readings exist.
    pub fn node(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (rate, timestamp) = inner.node?;
        Some(json!({
            "kind": "NodeMetrics",
            "apiVersion": GROUP_VERSION,
            "metadata": {
                "name": name,
                "labels": labels,
                "creationTimestamp": jiff::Timestamp::now().to_string(),
            },
            "timestamp": timestamp.to_string(),
            "window": go_duration(rate.window),
            "usage": rate.usage_json(),
        }))
    }
}

/// A duration as Go's `time.Duration.String` prints it for metav1.Duration (`10s`, `10.004s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0'))
    }
}

fn list(kind: &str, items: Vec<Value>) -> Json<Value> {
    Json(json!({
        "kind": kind,
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    }))
}

pub async fn nodes(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let labels = s.store.node_labels();
    let items = s
        .metrics
        .node(s.store.node_name(), &labels)
        .into_iter()
        .collect();
    Ok(list("NodeMetricsList", items))
}

pub async fn node(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let labels = s.store.node_labels();
    let found = (name == s.store.node_name())
        .then(|| s.metrics.node(&name, &labels))
        .flatten();
    found.map(Json).ok_or_else(|| {
        ApiError::not_found(format!("nodemetrics.metrics.k8s.io \"{name}\" not found"))
    })
}

pub async fn pods_all(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    Ok(list("PodMetricsList", s.metrics.pods(None)))
}

pub async fn pods_ns(
    State(s): State<Shared>,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(list("PodMetricsList", s.metrics.pods(Some(&ns))))
}

pub async fn pod(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    s.metrics.pod(&ns, &name).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("podmetrics.metrics.k8s.io \"{name}\" not found"))
    })
}

/// `/metrics`: skiffd's own Prometheus metrics ([`crate::metrics`]), with the pod gauges read
/// from the store now.
pub async fn prometheus(State(s): State<Shared>) -> impl IntoResponse {
    let m = crate::metrics::get();
    let pods = s.store.list_pods(None);
    let mut phases: BTreeMap<String, i64> =
        ["Pending", "Running", "Succeeded", "Failed", "Unknown"]
            .into_iter()
            .map(|p| (p.to_string(), 0))
            .collect();
    let (mut running_pods, mut running_containers) = (0, 0);
    for pod in &pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        *phases
            .entry(phase.unwrap_or_else(|| "Pending".into()))
            .or_default() += 1;
        let running = running_containers_of(pod);
        running_containers += running.len() as i64;
        running_pods += i64::from(!running.is_empty());
    }
    for (phase, n) in phases {
        m.pods
            .get_or_create(&crate::metrics::PhaseLabel { phase })
            .set(n);
    }
    m.running_pods.set(running_pods);
    m.running_containers.set(running_containers);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, cpu_ns: u64, mem: u64) -> Reading {
        Reading {
            at,
            usage: usage::Usage {
                cpu_ns,
                memory_working_set: mem,
            },
        }
    }

    #[test]
    fn cpu_is_a_rate_over_the_window_and_memory_the_last_value() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let r = Rate::between(&reading(t0, 1_000, 5), &reading(t1, 5_000_001_000, 4096)).unwrap();
        assert_eq!(
            r.nanocores, 500_000_000,
            "5 s of CPU in 10 s is half a core"
        );
        assert_eq!(r.memory, 4096);
        assert_eq!(r.window, Duration::from_secs(10));
        assert_eq!(
            r.usage_json(),
            json!({"cpu": "500000000n", "memory": "4Ki"})
        );
    }

    #[test]
    fn a_counter_that_went_back_or_no_time_gives_no_rate() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            Rate::between(&reading(t0, 50, 0), &reading(t1, 10, 0)),
            None
        );
        assert_eq!(
            Rate::between(&reading(t0, 10, 0), &reading(t0, 50, 0)),
            None
        );
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(10_040)), "10.04s");
        assert_eq!(go_duration(Duration::from_millis(1_001)), "1.001s");
    }

    #[test]
    fn only_running_containers_with_an_id_are_measured() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "status": {
                "phase": "Running",
                "initContainerStatuses": [
                    {"name": "side", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                     "containerID": "skiff://s1", "state": {"running": {}}},
                    {"name": "init", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                     "containerID": "skiff://i1", "state": {"terminated": {"exitCode": 0}}}
                ],
                "containerStatuses": [
                    {"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                     "containerID": "skiff://a1", "state": {"running": {}}},
                    {"name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "ContainerCreating"}}}
                ]
            }
        }))
        .unwrap();
        assert_eq!(
            running_containers_of(&pod),
            vec![
                ("side".to_string(), "skiff/podu1/s1".to_string()),
                ("app".to_string(), "skiff/podu1/a1".to_string()),
            ]
        );
    }
}
