//! Pod status as the kubelet computes it: container states, phase and conditions.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A finished container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

/// The current state of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// What the worker knows about one container.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: State,
    pub last: Option<Terminated>,
    pub restart_count: i32,
    /// Readiness from the probes (true when running without a readiness probe).
    pub ready: bool,
    /// Whether the startup probe (if any) has succeeded.
    pub started: bool,
    /// A restartable init container (`restartPolicy: Always`): runs alongside the app
    /// containers and is shown, counted ready and phased like one of them.
    pub sidecar: bool,
}

impl ContainerView {
    fn ready(&self) -> bool {
        matches!(self.state, State::Running { .. }) && self.ready
    }

    fn to_status(&self, is_init: bool) -> ContainerStatus {
        let ready = if is_init && !self.sidecar {
            matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
        } else {
            self.ready()
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            ready,
            restart_count: self.restart_count,
            started: Some(matches!(self.state, State::Running { .. }) && self.started),
            state: Some(to_state(&self.state)),
            last_state: Some(
                self.last
                    .as_ref()
                    .map(|t| to_state(&State::Terminated(t.clone())))
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }
}

fn to_state(s: &State) -> ContainerState {
    match s {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: t.exit_code,
                signal: t.signal,
                reason: Some(t.reason.clone()),
                message: t.message.clone(),
                started_at: t.started_at.map(Time),
                finished_at: Some(Time(t.finished_at)),
                container_id: t.container_id.clone(),
            }),
            ..Default::default()
        },
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct PodView {
    pub restart_policy: String,
    pub init: Vec<ContainerView>,
    pub app: Vec<ContainerView>,
    pub start_time: Option<Timestamp>,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    pub sandbox_ready: bool,
    /// Set when the pod was refused as a whole (e.g. admission), with a reason.
    pub failed: Option<(String, String)>,
    pub qos_class: &'static str,
}

/// Whether an app container has run (is running or has finished): the kubelet's
/// `HasAnyRegularContainerStarted`, which keeps a pod whose sidecar restarts initialized.
fn app_started(v: &PodView) -> bool {
    v.app
        .iter()
        .any(|c| matches!(c.state, State::Running { .. } | State::Terminated(_)))
}

/// Pod phase, following the kubelet's `getPhase`.
pub fn phase(v: &PodView) -> &'static str {
    if v.failed.is_some() {
        return "Failed";
    }
    let mut pending_init = false;
    let mut running = 0;
    for c in &v.init {
        if c.sidecar {
            // A sidecar is pending until it has started; one that finished (stopped at the
            // pod's end, or waiting for its restart) does not count at all.
            match &c.state {
                State::Running { .. } => {
                    running += 1;
                    pending_init |= !c.started;
                }
                State::Terminated(_) => {}
                State::Waiting { .. } => pending_init |= c.last.is_none(),
            }
            continue;
        }
        match &c.state {
            State::Terminated(t) if t.exit_code == 0 => {}
            State::Terminated(_) if v.restart_policy == "Never" => return "Failed",
            State::Waiting { .. } if c.last.is_some() && v.restart_policy == "Never" => {
                return "Failed";
            }
            _ => pending_init = true,
        }
    }
    if pending_init && !app_started(v) {
        return "Pending";
    }
    let (mut waiting, mut stopped, mut succeeded) = (0, 0, 0);
    for c in &v.app {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => {
                if c.last.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    // Running sidecars keep a pod whose app containers all finished Running until they
    // are stopped.
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if v.restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if v.restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(type_: &str, ok: bool, now: Timestamp, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: Some(Time(now)),
        reason: if ok { None } else { reason.map(String::from) },
        ..Default::default()
    }
}

/// Builds the pod's status. `previous` keeps condition transition times stable.
pub fn build(v: &PodView, previous: Option<&PodStatus>) -> PodStatus {
    let now = Timestamp::now();
    let phase = phase(v);
    // The kubelet's: sidecars started, regular init containers succeeded, or an app
    // container already ran (a restarting sidecar does not un-initialize the pod).
    let initialized = app_started(v)
        || v.init.iter().all(|c| {
            if c.sidecar {
                matches!(c.state, State::Running { .. }) && c.started
            } else {
                matches!(&c.state, State::Terminated(t) if t.exit_code == 0)
            }
        });
    // Sidecars count towards readiness as the app containers do.
    let containers_ready = v.app.iter().all(ContainerView::ready)
        && v.init
            .iter()
            .filter(|c| c.sidecar)
            .all(ContainerView::ready);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            v.sandbox_ready && !terminal,
            now,
            None,
        ),
        condition(
            "Initialized",
            initialized,
            now,
            Some("ContainersNotInitialized"),
        ),
        condition(
            "Ready",
            containers_ready && !terminal,
            now,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        condition(
            "ContainersReady",
            containers_ready && !terminal,
            now,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        condition("PodScheduled", true, now, None),
    ];
    if let Some(prev) = previous.and_then(|p| p.conditions.as_ref()) {
        for c in &mut conditions {
            if let Some(old) = prev.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    let (reason, message) = match &v.failed {
        Some((r, m)) => (Some(r.clone()), Some(m.clone())),
        None => (None, None),
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: v.host_ip.clone(),
        host_ips: v
            .host_ip
            .clone()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
        pod_ip: v.pod_ip.clone(),
        pod_ips: v.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: v.start_time.map(Time),
        init_container_statuses: if v.init.is_empty() {
            None
        } else {
            Some(v.init.iter().map(|c| c.to_status(true)).collect())
        },
        container_statuses: Some(v.app.iter().map(|c| c.to_status(false)).collect()),
        qos_class: Some(v.qos_class.into()),
        reason,
        message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, state: State, last: Option<Terminated>) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "i".into(),
            image_id: String::new(),
            container_id: None,
            state,
            last,
            restart_count: 0,
            ready: true,
            started: true,
            sidecar: false,
        }
    }

    fn term(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: None,
        }
    }

    fn running() -> State {
        State::Running {
            started_at: Timestamp::now(),
        }
    }

    fn waiting(r: &str) -> State {
        State::Waiting {
            reason: r.into(),
            message: None,
        }
    }

    fn view(policy: &str, init: Vec<ContainerView>, app: Vec<ContainerView>) -> PodView {
        PodView {
            restart_policy: policy.into(),
            init,
            app,
            start_time: None,
            pod_ip: None,
            host_ip: None,
            sandbox_ready: true,
            failed: None,
            qos_class: "BestEffort",
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let cases = [
            (
                view(
                    "Always",
                    vec![],
                    vec![c("a", waiting("ContainerCreating"), None)],
                ),
                "Pending",
            ),
            (
                view("Always", vec![], vec![c("a", running(), None)]),
                "Running",
            ),
            (
                view(
                    "Always",
                    vec![],
                    vec![c("a", waiting("CrashLoopBackOff"), Some(term(1)))],
                ),
                "Running",
            ),
            (
                view(
                    "Never",
                    vec![],
                    vec![c("a", State::Terminated(term(0)), None)],
                ),
                "Succeeded",
            ),
            (
                view(
                    "Never",
                    vec![],
                    vec![c("a", State::Terminated(term(2)), None)],
                ),
                "Failed",
            ),
            (
                view(
                    "OnFailure",
                    vec![],
                    vec![c("a", State::Terminated(term(0)), None)],
                ),
                "Succeeded",
            ),
            (
                view(
                    "OnFailure",
                    vec![],
                    vec![c("a", waiting("CrashLoopBackOff"), Some(term(1)))],
                ),
                "Running",
            ),
            (
                view(
                    "Always",
                    vec![c("i", running(), None)],
                    vec![c("a", waiting("PodInitializing"), None)],
                ),
                "Pending",
            ),
            (
                view(
                    "Never",
                    vec![c("i", State::Terminated(term(1)), None)],
                    vec![c("a", waiting("PodInitializing"), None)],
                ),
                "Failed",
            ),
            (
                view(
                    "Always",
                    vec![c("i", State::Terminated(term(0)), None)],
                    vec![c("a", running(), None)],
                ),
                "Running",
            ),
            (
                view(
                    "Always",
                    vec![],
                    vec![
                        c("a", running(), None),
                        c("b", waiting("ErrImageNeverPull"), None),
                    ],
                ),
                "Pending",
            ),
        ];
        for (i, (v, want)) in cases.iter().enumerate() {
            assert_eq!(phase(v), *want, "case {i}");
        }
    }

    fn sidecar(
        state: State,
        last: Option<Terminated>,
        started: bool,
        ready: bool,
    ) -> ContainerView {
        ContainerView {
            sidecar: true,
            started,
            ready,
            ..c("s", state, last)
        }
    }

    #[test]
    fn sidecars_phase_like_the_kubelet() {
        let cases = [
            // Running but not started yet (startup probe): still initializing.
            (
                view(
                    "Always",
                    vec![sidecar(running(), None, false, false)],
                    vec![c("a", waiting("PodInitializing"), None)],
                ),
                "Pending",
            ),
            // Waiting for its first start.
            (
                view(
                    "Always",
                    vec![sidecar(waiting("ErrImageNeverPull"), None, false, false)],
                    vec![c("a", waiting("PodInitializing"), None)],
                ),
                "Pending",
            ),
            // Restarting after the app containers ran: the pod stays Running.
            (
                view(
                    "Never",
                    vec![sidecar(running(), Some(term(1)), false, false)],
                    vec![c("a", running(), None)],
                ),
                "Running",
            ),
            // The app containers finished, the sidecar is still being stopped.
            (
                view(
                    "Never",
                    vec![sidecar(running(), None, true, true)],
                    vec![c("a", State::Terminated(term(0)), None)],
                ),
                "Running",
            ),
            // Stopped sidecars do not count, whatever their exit code.
            (
                view(
                    "Never",
                    vec![sidecar(State::Terminated(term(137)), None, false, false)],
                    vec![c("a", State::Terminated(term(0)), None)],
                ),
                "Succeeded",
            ),
            (
                view(
                    "OnFailure",
                    vec![sidecar(State::Terminated(term(0)), None, false, false)],
                    vec![c("a", State::Terminated(term(2)), None)],
                ),
                "Running",
            ),
            (
                view(
                    "Never",
                    vec![sidecar(State::Terminated(term(0)), None, false, false)],
                    vec![c("a", State::Terminated(term(2)), None)],
                ),
                "Failed",
            ),
        ];
        for (i, (v, want)) in cases.iter().enumerate() {
            assert_eq!(phase(v), *want, "case {i}");
        }
    }

    #[test]
    fn sidecar_statuses_and_conditions() {
        let cond = |s: &PodStatus, t: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .status
                .clone()
        };
        // Started and running: initialized; its readiness decides the pod's.
        let v = view(
            "Always",
            vec![sidecar(running(), None, true, false)],
            vec![c("a", running(), None)],
        );
        let s = build(&v, None);
        assert_eq!(cond(&s, "Initialized"), "True");
        assert_eq!(cond(&s, "ContainersReady"), "False");
        assert_eq!(cond(&s, "Ready"), "False");
        let side = &s.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!((side.started, side.ready), (Some(true), false));
        let v = view(
            "Always",
            vec![sidecar(running(), None, true, true)],
            vec![c("a", running(), None)],
        );
        let s = build(&v, None);
        assert_eq!(cond(&s, "Ready"), "True");
        assert!(s.init_container_statuses.unwrap()[0].ready);
        // Not started yet: not initialized.
        let v = view(
            "Always",
            vec![sidecar(running(), None, false, false)],
            vec![c("a", waiting("PodInitializing"), None)],
        );
        assert_eq!(cond(&build(&v, None), "Initialized"), "False");
        // Restarting once the app containers ran: still initialized.
        let v = view(
            "Always",
            vec![sidecar(
                waiting("CrashLoopBackOff"),
                Some(term(1)),
                false,
                false,
            )],
            vec![c("a", running(), None)],
        );
        let s = build(&v, None);
        assert_eq!(cond(&s, "Initialized"), "True");
        assert_eq!(cond(&s, "Ready"), "False");
    }

    #[test]
    fn conditions_and_ready_flags() {
        let v = view(
            "Always",
            vec![c("i", State::Terminated(term(0)), None)],
            vec![c("a", running(), None), c("b", waiting("X"), None)],
        );
        let s = build(&v, None);
        let cond = |t: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(cond("Initialized"), "True");
        assert_eq!(cond("Ready"), "False");
        let cs = s.container_statuses.unwrap();
        assert!(cs[0].ready && !cs[1].ready);
        assert!(s.init_container_statuses.unwrap()[0].ready);
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let v = view("Always", vec![], vec![c("a", running(), None)]);
        let mut first = build(&v, None);
        let old = Time("2020-01-01T00:00:00Z".parse().unwrap());
        for c in first.conditions.as_mut().unwrap() {
            c.last_transition_time = Some(old.clone());
        }
        let second = build(&v, Some(&first));
        let t = |s: &PodStatus| {
            s.conditions.as_ref().unwrap()[2]
                .last_transition_time
                .clone()
        };
        assert_eq!(t(&second), Some(old.clone()));
        // A condition that changed gets a new transition time.
        let failed = view(
            "Never",
            vec![],
            vec![c("a", State::Terminated(term(1)), None)],
        );
        let third = build(&failed, Some(&first));
        assert_ne!(t(&third), Some(old));
    }
}
