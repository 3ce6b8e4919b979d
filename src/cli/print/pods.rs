//! The `skiff get pods` table, with READY / STATUS / RESTARTS computed like kubectl's
//! printer (`printPod` in kubernetes/pkg/printers/internalversion/printers.go).

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ContainerState, ContainerStatus, Pod};

use super::ts;
use crate::cli::humanize::age;

/// What the READY, STATUS and RESTARTS columns show for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    /// Ready containers (plus started, ready sidecars).
    pub ready: usize,
    /// Containers plus restartable init containers (sidecars).
    pub total: usize,
    /// The STATUS column, e.g. `Running`, `CrashLoopBackOff`, `Init:1/2`, `Terminating`.
    pub status: String,
    /// The RESTARTS count.
    pub restarts: i32,
    /// When the most recent restart's previous instance finished, for "(5s ago)".
    pub last_restart: Option<Timestamp>,
}

impl PodSummary {
    /// The READY column: `1/2`.
    pub fn ready_column(&self) -> String {
        format!("{}/{}", self.ready, self.total)
    }

    /// The RESTARTS column: `0`, or `3 (45s ago)` when the last restart time is known.
    pub fn restarts_column(&self, now: Timestamp) -> String {
        match self.last_restart {
            Some(t) if self.restarts != 0 => {
                format!("{} ({} ago)", self.restarts, age(Some(t), now))
            }
            _ => self.restarts.to_string(),
        }
    }
}

fn is_sidecar(c: Option<&&Container>) -> bool {
    c.and_then(|c| c.restart_policy.as_deref()) == Some("Always")
}

fn condition_true(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn nonempty(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

fn last_finished(status: &ContainerStatus) -> Option<Timestamp> {
    ts(status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.finished_at.as_ref()))
}

fn newest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    a.max(b)
}

/// Computes READY, STATUS and RESTARTS the way kubectl does.
pub fn summarize(pod: &Pod) -> PodSummary {
    let empty_spec = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty_spec);
    let empty_status = Default::default();
    let status = pod.status.as_ref().unwrap_or(&empty_status);
    let init_specs = spec.init_containers.as_deref().unwrap_or_default();
    let init_statuses = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let statuses = status.container_statuses.as_deref().unwrap_or_default();

    let mut reason = nonempty(status.reason.as_ref())
        .or(status.phase.as_deref())
        .unwrap_or_default()
        .to_owned();
    if status.conditions.as_ref().is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    }) {
        reason = "SchedulingGated".to_owned();
    }

    let init_by_name: HashMap<&str, &Container> =
        init_specs.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut total = spec.containers.len();
    total += init_specs
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart = None;
    let mut sidecar_restarts = 0;
    let mut sidecar_last_restart = None;

    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += c.restart_count;
        last_restart = newest(last_restart, last_finished(c));
        let sidecar = is_sidecar(init_by_name.get(c.name.as_str()));
        if sidecar {
            sidecar_restarts += c.restart_count;
            sidecar_last_restart = newest(sidecar_last_restart, last_finished(c));
        }
        let state = c.state.as_ref();
        let terminated = state.and_then(|s| s.terminated.as_ref());
        let waiting = state.and_then(|s| s.waiting.as_ref());
        if terminated.is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if sidecar && c.started == Some(true) {
            if c.ready {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = match nonempty(t.reason.as_ref()) {
                Some(r) => format!("Init:{r}"),
                None => match t.signal {
                    Some(sig) if sig != 0 => format!("Init:Signal:{sig}"),
                    _ => format!("Init:ExitCode:{}", t.exit_code),
                },
            };
        } else if let Some(r) = waiting
            .and_then(|w| nonempty(w.reason.as_ref()))
            .filter(|r| *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(pod, "Initialized") {
        // Once initialized, only sidecar restarts count besides the regular containers'.
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in statuses.iter().rev() {
            restarts += c.restart_count;
            last_restart = newest(last_restart, last_finished(c));
            let state: Option<&ContainerState> = c.state.as_ref();
            let waiting = state.and_then(|s| s.waiting.as_ref());
            let terminated = state.and_then(|s| s.terminated.as_ref());
            if let Some(r) = waiting.and_then(|w| nonempty(w.reason.as_ref())) {
                reason = r.to_owned();
            } else if let Some(t) = terminated {
                reason = match nonempty(t.reason.as_ref()) {
                    Some(r) => r.to_owned(),
                    None => match t.signal {
                        Some(sig) if sig != 0 => format!("Signal:{sig}"),
                        _ => format!("ExitCode:{}", t.exit_code),
                    },
                };
            } else if c.ready && state.is_some_and(|s| s.running.is_some()) {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(pod, "Ready") {
                "Running".to_owned()
            } else {
                "NotReady".to_owned()
            };
        }
    }

    if pod.metadata.deletion_timestamp.is_some() {
        let phase = status.phase.as_deref().unwrap_or_default();
        if status.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".to_owned();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_owned();
        }
    }
    if reason.is_empty() {
        reason = "Unknown".to_owned();
    }

    PodSummary {
        ready,
        total,
        status: reason,
        restarts,
        last_restart,
    }
}

/// Column choices for the pods table.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodTableOptions {
    /// Prepend NAMESPACE (`-A`).
    pub all_namespaces: bool,
    /// Append IP and NODE (`-o wide`).
    pub wide: bool,
}

/// Renders the `skiff get pods` table, header included.
pub fn pods_table(pods: &[Pod], opts: PodTableOptions, now: Timestamp) -> String {
    // The API's Table columns: `skiff get` and `kubectl get` print the same.
    super::super::table::render(
        &super::super::table::pods(pods, now),
        opts.all_namespaces,
        opts.wide,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, PodCondition,
        PodIP, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    pub(crate) fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().expect("ts")
    }

    pub(crate) fn ago(secs: i64) -> Time {
        Time(now() - jiff::SignedDuration::from_secs(secs))
    }

    pub(crate) fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("busybox".into()),
            ..Default::default()
        }
    }

    pub(crate) fn running(name: &str, ready: bool, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: "docker.io/library/busybox:latest".into(),
            ready,
            restart_count: restarts,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(ago(60)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn waiting(name: &str, reason: &str, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn terminated(name: &str, code: i32, reason: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: reason.map(Into::into),
                    started_at: Some(ago(120)),
                    finished_at: Some(ago(30)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn pod(
        name: &str,
        containers: &[&str],
        init: &[&str],
        phase: &str,
        statuses: Vec<ContainerStatus>,
        init_statuses: Vec<ContainerStatus>,
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(ago(192)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers.iter().map(|n| container(n)).collect(),
                init_containers: (!init.is_empty())
                    .then(|| init.iter().map(|n| container(n)).collect()),
                node_name: Some("node1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(statuses),
                init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
                pod_ip: Some("10.88.0.5".into()),
                pod_ips: Some(vec![PodIP {
                    ip: "10.88.0.5".into(),
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn running_pod() {
        let p = pod(
            "web",
            &["app"],
            &[],
            "Running",
            vec![running("app", true, 0)],
            vec![],
        );
        let s = summarize(&p);
        assert_eq!(
            (s.ready_column().as_str(), s.status.as_str(), s.restarts),
            ("1/1", "Running", 0)
        );
    }

    #[test]
    fn crash_loop_back_off_with_restarts() {
        let mut c = waiting("app", "CrashLoopBackOff", 5);
        c.last_state = terminated("app", 1, Some("Error")).state;
        let p = pod("web", &["app"], &[], "Running", vec![c], vec![]);
        let s = summarize(&p);
        assert_eq!(s.status, "CrashLoopBackOff");
        assert_eq!(s.ready_column(), "0/1");
        assert_eq!(s.restarts_column(now()), "5 (30s ago)");
    }

    #[test]
    fn multi_container_partly_ready() {
        let p = pod(
            "web",
            &["app", "sidecar"],
            &[],
            "Running",
            vec![running("app", true, 1), running("sidecar", false, 2)],
            vec![],
        );
        let s = summarize(&p);
        assert_eq!(s.ready_column(), "1/2");
        assert_eq!(s.status, "Running");
        assert_eq!(s.restarts, 3);
        assert_eq!(s.restarts_column(now()), "3");
    }

    #[test]
    fn init_progress() {
        let p = pod(
            "web",
            &["app"],
            &["one", "two"],
            "Pending",
            vec![waiting("app", "PodInitializing", 0)],
            vec![
                terminated("one", 0, Some("Completed")),
                running("two", false, 0),
            ],
        );
        assert_eq!(summarize(&p).status, "Init:1/2");
        assert_eq!(summarize(&p).ready_column(), "0/1");
    }

    #[test]
    fn init_failures() {
        let p = pod(
            "web",
            &["app"],
            &["one"],
            "Pending",
            vec![],
            vec![terminated("one", 1, Some("Error"))],
        );
        assert_eq!(summarize(&p).status, "Init:Error");
        let p = pod(
            "web",
            &["app"],
            &["one"],
            "Pending",
            vec![],
            vec![waiting("one", "CrashLoopBackOff", 3)],
        );
        let s = summarize(&p);
        assert_eq!(s.status, "Init:CrashLoopBackOff");
        assert_eq!(s.restarts, 3);
        let p = pod(
            "web",
            &["app"],
            &["one"],
            "Pending",
            vec![],
            vec![terminated("one", 2, None)],
        );
        assert_eq!(summarize(&p).status, "Init:ExitCode:2");
    }

    #[test]
    fn terminated_reasons() {
        let p = pod(
            "job",
            &["app"],
            &[],
            "Succeeded",
            vec![terminated("app", 0, Some("Completed"))],
            vec![],
        );
        assert_eq!(summarize(&p).status, "Completed");
        let p = pod(
            "job",
            &["app"],
            &[],
            "Failed",
            vec![terminated("app", 137, Some("OOMKilled"))],
            vec![],
        );
        assert_eq!(summarize(&p).status, "OOMKilled");
        let mut c = terminated("app", 143, None);
        if let Some(t) = c.state.as_mut().and_then(|s| s.terminated.as_mut()) {
            t.signal = Some(15);
        }
        let p = pod("job", &["app"], &[], "Failed", vec![c], vec![]);
        assert_eq!(summarize(&p).status, "Signal:15");
        let p = pod(
            "job",
            &["app"],
            &[],
            "Failed",
            vec![terminated("app", 3, None)],
            vec![],
        );
        assert_eq!(summarize(&p).status, "ExitCode:3");
    }

    #[test]
    fn waiting_reasons() {
        for r in ["ErrImageNeverPull", "ContainerCreating"] {
            let p = pod(
                "web",
                &["app"],
                &[],
                "Pending",
                vec![waiting("app", r, 0)],
                vec![],
            );
            assert_eq!(summarize(&p).status, r);
        }
    }

    #[test]
    fn completed_with_a_running_container_is_running_or_not_ready() {
        let mut p = pod(
            "web",
            &["app", "helper"],
            &[],
            "Running",
            vec![
                running("app", true, 0),
                terminated("helper", 0, Some("Completed")),
            ],
            vec![],
        );
        assert_eq!(summarize(&p).status, "NotReady");
        if let Some(s) = p.status.as_mut() {
            s.conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]);
        }
        assert_eq!(summarize(&p).status, "Running");
    }

    #[test]
    fn terminating_and_pod_reason() {
        let mut p = pod(
            "web",
            &["app"],
            &[],
            "Running",
            vec![running("app", true, 0)],
            vec![],
        );
        p.metadata.deletion_timestamp = Some(ago(1));
        assert_eq!(summarize(&p).status, "Terminating");

        let mut p = pod("web", &["app"], &[], "Failed", vec![], vec![]);
        if let Some(s) = p.status.as_mut() {
            s.reason = Some("Evicted".into());
        }
        assert_eq!(summarize(&p).status, "Evicted");
    }

    #[test]
    fn sidecar_counts_in_ready() {
        let mut p = pod(
            "web",
            &["app"],
            &["proxy"],
            "Running",
            vec![running("app", true, 0)],
            vec![ContainerStatus {
                started: Some(true),
                ..running("proxy", true, 1)
            }],
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.init_containers.as_mut().expect("init")[0].restart_policy = Some("Always".into());
        }
        let s = summarize(&p);
        assert_eq!(s.ready_column(), "2/2");
        assert_eq!(s.status, "Running");
        assert_eq!(s.restarts, 1);
    }

    #[test]
    fn table_layouts() {
        let mut p1 = pod(
            "web",
            &["app"],
            &[],
            "Running",
            vec![running("app", true, 0)],
            vec![],
        );
        p1.metadata.namespace = Some("kube-system".into());
        let mut p2 = pod(
            "crashy-one",
            &["app"],
            &[],
            "Running",
            vec![waiting("app", "CrashLoopBackOff", 12)],
            vec![],
        );
        p2.metadata.creation_timestamp = Some(ago(5 * 3600));
        p2.spec.as_mut().expect("spec").node_name = None;
        let pods = [p1, p2];

        assert_eq!(
            pods_table(&pods, PodTableOptions::default(), now()),
            "NAME         READY   STATUS             RESTARTS   AGE\n\
             web          1/1     Running            0          3m12s\n\
             crashy-one   0/1     CrashLoopBackOff   12         5h\n"
        );
        assert_eq!(
            pods_table(
                &pods,
                PodTableOptions {
                    all_namespaces: true,
                    wide: true
                },
                now()
            ),
            "NAMESPACE     NAME         READY   STATUS             RESTARTS   AGE     IP          NODE     NOMINATED NODE   READINESS GATES\n\
             kube-system   web          1/1     Running            0          3m12s   10.88.0.5   node1    <none>           <none>\n\
             default       crashy-one   0/1     CrashLoopBackOff   12         5h      10.88.0.5   <none>   <none>           <none>\n"
        );
    }
}
