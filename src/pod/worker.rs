//! One pod's reconcile loop: sandbox, init containers in order, app
//! containers with the restart policy and CrashLoopBackOff, status, and
//! graceful termination.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::plan::{self, Action, PodState, RunState, SlotState};
use super::probe;
use super::status::{self, ContainerView, PodView, State, Terminated};
use crate::kube::name::PodKey;
use crate::kube::reasons;
use crate::kube::restart::RestartPolicy;
use crate::runtime::{
    ID_SCHEME, PendingNetwork, PodRuntime, Process, Sandbox, StartError, StartRequest,
};
use crate::store::{EventType, Involved, Store, key_of};

/// How often a container waiting for its image or config is retried.
const RETRY: Duration = Duration::from_secs(5);

/// Messages to a worker.
#[derive(Debug)]
pub enum Msg {
    /// Stop the pod's containers (grace period, then SIGKILL) and remove it.
    Terminate,
    /// Something the pod may be waiting for changed (e.g. an image was imported).
    Resync,
    /// The pod was updated through the API: its containers' images may have changed.
    Update(Box<Pod>),
}

/// Shared services of all workers.
pub struct Ctx {
    pub runtime: Arc<dyn PodRuntime>,
    pub store: Arc<Store>,
}

struct Running {
    id: String,
    started_at: Timestamp,
    since: Instant,
    shim: Box<dyn Process>,
    /// Readiness and startup as the probes report them.
    ready: bool,
    started: bool,
    /// The container's probes; stopped when the container goes.
    prober: Option<tokio::task::AbortHandle>,
    /// Set when the container is being killed (failed probe or hook): SIGKILL then.
    kill_at: Option<Instant>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = &self.prober {
            p.abort();
        }
    }
}

struct Slot {
    spec: Container,
    init: bool,
    /// A restartable init container (`restartPolicy: Always`): started in its turn among the
    /// init containers, then kept running (restarted whatever the pod's restartPolicy).
    sidecar: bool,
    /// A sidecar that has started (startup probe passed, postStart done) in this sandbox:
    /// the init containers after it may run, and it no longer holds them up when it restarts.
    up: bool,
    restart_count: u32,
    started_once: bool,
    current: Option<Running>,
    last: Option<Terminated>,
    /// The last finished instance's ID, whose records are kept on disk.
    last_id: Option<String>,
    waiting: Option<(String, Option<String>)>,
    image_id: String,
    backoff: Backoff,
    not_before: Option<Instant>,
    /// An adopted container whose prober still has to be started.
    needs_prober: bool,
    /// Killed because its definition changed: started again whatever the restart policy.
    changed: bool,
}

impl Slot {
    fn new(spec: Container, init: bool) -> Self {
        Slot {
            sidecar: init && spec.restart_policy.as_deref() == Some("Always"),
            up: false,
            spec,
            init,
            restart_count: 0,
            started_once: false,
            current: None,
            last: None,
            last_id: None,
            waiting: None,
            image_id: String::new(),
            backoff: Backoff::default(),
            not_before: None,
            needs_prober: false,
            changed: false,
        }
    }

    fn plan_state(&self) -> SlotState {
        SlotState {
            init: self.init,
            sidecar: self.sidecar,
            up: self.up,
            running: self.current.as_ref().map(|r| RunState {
                started: r.started,
                kill_at: r.kill_at,
            }),
            last_exit: self.last.as_ref().map(|t| t.exit_code),
            waiting: self.waiting.as_ref().map(|(r, _)| r.clone()),
            not_before: self.not_before,
        }
    }

    fn view(&self, default_waiting: &str) -> ContainerView {
        let state = match (&self.current, &self.waiting, &self.last) {
            (Some(r), _, _) => State::Running {
                started_at: r.started_at,
            },
            (None, Some((reason, message)), _) => State::Waiting {
                reason: reason.clone(),
                message: message.clone(),
            },
            (None, None, Some(t)) => State::Terminated(t.clone()),
            (None, None, None) => State::Waiting {
                reason: default_waiting.into(),
                message: None,
            },
        };
        let (last, state) = match state {
            // A finished container that will be restarted shows as waiting with its last state.
            State::Waiting { .. } => (self.last.clone(), state),
            s => (
                if matches!(s, State::Running { .. }) {
                    self.last.clone()
                } else {
                    None
                },
                s,
            ),
        };
        ContainerView {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: self.image_id.clone(),
            container_id: self
                .current
                .as_ref()
                .map(|r| format!("{ID_SCHEME}{}", r.id))
                .or_else(|| self.last.as_ref().and_then(|t| t.container_id.clone())),
            state,
            last,
            restart_count: self.restart_count as i32,
            ready: self.current.as_ref().is_some_and(|r| r.ready),
            started: self.current.as_ref().is_some_and(|r| r.started),
            sidecar: self.sidecar,
        }
    }
}

/// The status a pod shows before its worker has done anything.
pub fn initial_status(pod: &Pod) -> k8s_openapi::api::core::v1::PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let has_init = spec.init_containers.as_ref().is_some_and(|v| !v.is_empty());
    let view = |c: &Container, init: bool, reason: &str| Slot::new(c.clone(), init).view(reason);
    status::build(
        &PodView {
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| view(c, true, "PodInitializing"))
                .collect(),
            app: spec
                .containers
                .iter()
                .map(|c| {
                    view(
                        c,
                        false,
                        if has_init {
                            "PodInitializing"
                        } else {
                            "ContainerCreating"
                        },
                    )
                })
                .collect(),
            start_time: None,
            pod_ip: None,
            host_ip: None,
            sandbox_ready: false,
            failed: None,
            qos_class: crate::runtime::resources::qos_class(pod),
        },
        None,
    )
}

/// Starts a worker for `pod`. When `after` is given (the previous pod of the
/// same name being replaced), it first waits for that one to be gone.
pub fn spawn(
    ctx: Arc<Ctx>,
    pod: Pod,
    after: Option<JoinHandle<()>>,
) -> (mpsc::UnboundedSender<Msg>, JoinHandle<()>) {
    spawn_with(ctx, pod, after, false)
}

/// A worker that only finds what a previous skiffd left of `pod` and removes
/// it: it never syncs, so a pod whose manifest is gone is not brought back
/// to life (new sandbox, restarted containers) just to be torn down.
pub fn spawn_removal(ctx: Arc<Ctx>, pod: Pod) -> JoinHandle<()> {
    spawn_with(ctx, pod, None, true).1
}

fn spawn_with(
    ctx: Arc<Ctx>,
    pod: Pod,
    after: Option<JoinHandle<()>>,
    remove_only: bool,
) -> (mpsc::UnboundedSender<Msg>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        if let Some(prev) = after {
            let _ = prev.await;
        }
        let mut w = Worker::new(ctx, pod);
        if remove_only {
            w.adopt();
            w.terminate().await;
        } else {
            w.run(rx).await;
        }
    });
    (tx, handle)
}

struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    key: PodKey,
    uid: String,
    obj: Involved,
    slots: Vec<Slot>,
    sandbox: Option<Sandbox>,
    /// The sandbox's network while CNI ADD still runs (overlapped with the first
    /// container's create); settled before `sync` returns.
    pending_net: Option<PendingNetwork>,
    /// Cleared once the network failed on an overlapped start: retries go the
    /// sequential way, with no container created for nothing.
    overlap_net: bool,
    /// The IP the pod had, kept in its status after the sandbox is gone.
    last_ip: Option<String>,
    host_ip: Option<String>,
    volumes: Option<std::collections::BTreeMap<String, crate::runtime::volumes::Ready>>,
    /// ConfigMaps or Secrets may have changed: rewrite the volumes that show them.
    refresh_volumes: bool,
    service_env: Vec<(String, String)>,
    start_time: Option<Timestamp>,
    /// `pod.json` (with the start time) is on disk. Until it is, every sync tries again: a
    /// write that failed (disk full) must not leave a pod that a restarted skiffd cannot
    /// adopt, and nothing else would ever write it.
    pod_saved: bool,
    /// Failed writes of `pod.json` in a row (only the first is a warning).
    save_failures: u32,
    exits: JoinSet<String>,
    probes_tx: mpsc::UnboundedSender<(String, probe::Report)>,
    probes_rx: mpsc::UnboundedReceiver<(String, probe::Report)>,
    terminal: bool,
    failed: Option<(String, String)>,
    wake: Option<Instant>,
    /// When local ephemeral storage is measured next.
    next_storage_check: Option<Instant>,
}

/// How often a pod's ephemeral storage is measured (the kubelet's housekeeping period).
const STORAGE_CHECK: Duration = Duration::from_secs(10);

/// The least time a sidecar gets to stop when its turn comes (the kubelet's
/// `minimumGracePeriodInSeconds`).
const MIN_STOP_WINDOW: Duration = Duration::from_secs(2);

/// How often a running pod's sandbox is checked for lost namespaces.
const SANDBOX_CHECK: Duration = Duration::from_secs(10);

impl Worker {
    fn new(ctx: Arc<Ctx>, pod: Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots: Vec<Slot> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| Slot::new(c, true))
            .collect();
        slots.extend(spec.containers.into_iter().map(|c| Slot::new(c, false)));
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (probes_tx, probes_rx) = mpsc::unbounded_channel();
        Worker {
            probes_tx,
            probes_rx,
            key: key_of(&pod),
            obj: Involved::pod(&pod),
            uid,
            pod,
            ctx,
            slots,
            sandbox: None,
            pending_net: None,
            overlap_net: true,
            last_ip: None,
            host_ip: crate::runtime::network::node_ip().map(|i| i.to_string()),
            volumes: None,
            refresh_volumes: false,
            service_env: Vec::new(),
            start_time: None,
            pod_saved: false,
            save_failures: 0,
            exits: JoinSet::new(),
            terminal: false,
            failed: None,
            wake: None,
            next_storage_check: None,
        }
    }

    fn policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or(RestartPolicy::DEFAULT)
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        self.ctx.store.event(&self.obj, kind, reason, message);
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.adopt();
        // Checked on its own timer, which syncs (and so publishes) only when it finds a
        // change: a periodic full sync of every pod would wake the Service controller.
        let mut sandbox_check =
            tokio::time::interval_at(Instant::now() + SANDBOX_CHECK, SANDBOX_CHECK);
        sandbox_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut needs_sync = true;
        loop {
            if needs_sync {
                self.sync().await;
                self.publish();
            }
            needs_sync = true;
            let wake = self.wake.take();
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Resync) => self.refresh_volumes = true,
                    Some(Msg::Update(pod)) => self.update(&pod),
                    Some(Msg::Terminate) | None => {
                        self.terminate().await;
                        return;
                    }
                },
                Some(res) = self.exits.join_next(), if !self.exits.is_empty() => {
                    if let Ok(id) = res {
                        self.on_exit(&id);
                    }
                }
                Some((id, report)) = self.probes_rx.recv() => self.on_probe(&id, report),
                _ = sleep_until(wake), if wake.is_some() => {}
                _ = sandbox_check.tick(), if !self.terminal => {
                    needs_sync = self.sandbox_changed();
                    // The pending wake-up still stands.
                    self.wake = wake;
                }
            }
        }
    }

    /// Picks up containers and state left by a previous skiffd.
    fn adopt(&mut self) {
        let mut first = self.pod.clone();
        if let Some(saved) = self.ctx.runtime.load_pod(&self.uid) {
            self.start_time = saved
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0);
            if self.start_time.is_some() {
                first.status = saved.status.clone();
                self.pod_saved = true;
            }
        }
        let mut adopted = 0;
        for found in self.ctx.runtime.list_containers(&self.uid) {
            let Some(slot) = self
                .slots
                .iter_mut()
                .find(|s| s.spec.name == found.meta.name && s.init == found.meta.init)
            else {
                self.ctx.runtime.remove_container(&self.uid, &found.meta.id);
                continue;
            };
            slot.restart_count = found.meta.restart;
            slot.started_once = true;
            slot.image_id = found.meta.image_id.clone();
            let started_at = found.state.as_ref().and_then(|s| s.started_at.parse().ok());
            if let Some(shim) = found.shim {
                adopted += 1;
                let exited = shim.exited();
                let id = found.meta.id.clone();
                self.exits.spawn(async move {
                    exited.await;
                    id
                });
                slot.current = Some(Running {
                    id: found.meta.id.clone(),
                    started_at: started_at.unwrap_or_else(Timestamp::now),
                    since: Instant::now(),
                    shim,
                    ready: false,
                    started: false,
                    prober: None,
                    kill_at: None,
                });
                // Probers start once the sandbox is known again (first sync).
                slot.needs_prober = true;
            } else {
                if let Some(old) = slot.last_id.replace(found.meta.id.clone()) {
                    self.ctx.runtime.remove_container(&self.uid, &old);
                }
                let t = match found.exit {
                    Some(e) => Terminated {
                        message: self.ctx.runtime.termination_message(
                            &self.uid,
                            &found.meta.id,
                            &slot.spec,
                            e.exit_code,
                        ),
                        exit_code: e.exit_code,
                        signal: e.signal,
                        reason: e.reason,
                        started_at,
                        finished_at: e.finished_at.parse().unwrap_or_else(|_| Timestamp::now()),
                        container_id: Some(format!("{ID_SCHEME}{}", found.meta.id)),
                    },
                    None => Terminated {
                        exit_code: 137,
                        signal: None,
                        reason: "ContainerStatusUnknown".into(),
                        message: Some(
                            "The container could not be located when skiffd restarted".into(),
                        ),
                        started_at,
                        finished_at: Timestamp::now(),
                        container_id: Some(format!("{ID_SCHEME}{}", found.meta.id)),
                    },
                };
                self.ctx
                    .runtime
                    .release_container_fs(&self.uid, &found.meta.id);
                slot.last = Some(t);
            }
        }
        // A sidecar followed by a container that already ran had started before.
        for i in 0..self.slots.len() {
            if self.slots[i].sidecar && self.slots[i].started_once {
                self.slots[i].up = self.slots[i + 1..].iter().any(|s| s.started_once);
            }
        }
        if adopted > 0 {
            info!(pod = %self.key.1, namespace = %self.key.0, adopted, "adopted running containers");
        }
        first.status = Some(status::build(&self.view(), first.status.as_ref()));
        // A pod left by a previous run that is only being removed must not
        // hide a newer pod of the same name.
        self.ctx.store.put_pod(first, false);
    }

    fn view(&self) -> PodView {
        let initializing = self.slots.iter().filter(|s| s.init).any(|s| {
            if s.sidecar {
                !s.up
            } else {
                !matches!(&s.last, Some(t) if t.exit_code == 0) || s.current.is_some()
            }
        });
        PodView {
            restart_policy: self.policy().to_string(),
            init: self
                .slots
                .iter()
                .filter(|s| s.init)
                .map(|s| s.view("PodInitializing"))
                .collect(),
            app: self
                .slots
                .iter()
                .filter(|s| !s.init)
                .map(|s| {
                    s.view(if initializing {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    })
                })
                .collect(),
            start_time: self.start_time,
            pod_ip: self.pod_ip(),
            host_ip: self.host_ip.clone(),
            sandbox_ready: self.sandbox.is_some(),
            failed: self.failed.clone(),
            qos_class: crate::runtime::resources::qos_class(&self.pod),
        }
    }

    fn publish(&self) {
        let view = self.view();
        self.ctx.store.update_pod(&self.key, &self.uid, |p| {
            p.status = Some(status::build(&view, p.status.as_ref()));
        });
    }

    fn set_wake(&mut self, at: Instant) {
        self.wake = Some(match self.wake {
            Some(w) if w < at => w,
            _ => at,
        });
    }

    async fn sync(&mut self) {
        let started = std::time::Instant::now();
        self.sync_steps().await;
        // The network is never left pending past a sync (when no container start took
        // it, e.g. the image was missing): the pod's status and probes need the IP.
        self.settle_network().await;
        crate::metrics::get()
            .pod_sync_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Waits for a pending pod network: sets the pod IP, or turns the sandbox failure
    /// into what a failed `create_sandbox` gives (event, retry). False when it failed.
    async fn settle_network(&mut self) -> bool {
        let Some(pending) = self.pending_net.take() else {
            return true;
        };
        match pending.wait().await {
            Ok(ip) => {
                if let Some(sb) = &mut self.sandbox {
                    sb.ip = Some(ip);
                }
                self.last_ip = Some(ip.to_string());
                true
            }
            Err(e) => {
                self.sandbox = None;
                self.overlap_net = false;
                self.sandbox_failed(&e);
                false
            }
        }
    }

    fn sandbox_failed(&mut self, e: &dyn std::fmt::Display) {
        let msg = format!("Failed to create pod sandbox: {e}");
        warn!(pod = %self.key.1, namespace = %self.key.0, error = %e, "sandbox setup failed");
        self.event(EventType::Warning, "FailedCreatePodSandBox", &msg);
        self.set_wake(Instant::now() + RETRY);
    }

    /// Whether the sandbox may be created with its CNI ADD running alongside the first
    /// container's create: not when the pod reads its own IP (env, downward API), which
    /// must be known before specs and volumes are built; not after such a start failed
    /// on the network; and only for a pod none of whose containers has run yet (a restarted
    /// skiffd finding its pod again must not rewrite running containers' /etc/hosts
    /// without the pod's entry, even briefly, nor start an ADD for a pod that may turn out
    /// to be finished, whose sandbox is then removed at once).
    fn may_overlap_network(&self) -> bool {
        self.overlap_net
            && self
                .slots
                .iter()
                .all(|s| s.current.is_none() && s.last.is_none())
            && !crate::kube::env::needs_pod_ip(&self.pod)
    }

    /// Writes `pod.json`; on failure schedules another try (see [`Worker::pod_saved`]).
    fn save_pod_state(&mut self) {
        let mut saved = self.pod.clone();
        saved.status = Some(k8s_openapi::api::core::v1::PodStatus {
            start_time: self.start_time.map(Time),
            ..Default::default()
        });
        match self.ctx.runtime.save_pod(&saved) {
            Ok(()) => {
                if self.save_failures > 0 {
                    info!(pod = %self.key.1, failures = self.save_failures, "pod state saved after earlier failures");
                }
                self.pod_saved = true;
                self.save_failures = 0;
            }
            Err(e) => {
                if self.save_failures == 0 {
                    warn!(pod = %self.key.1, error = %e, "saving pod state; retrying");
                } else {
                    debug!(pod = %self.key.1, error = %e, failures = self.save_failures, "saving pod state");
                }
                self.save_failures += 1;
                self.set_wake(Instant::now() + RETRY);
            }
        }
    }

    async fn sync_steps(&mut self) {
        if self.terminal {
            return;
        }
        if let Some(msg) = self.check_ephemeral_storage() {
            self.evict(msg).await;
            return;
        }
        if self.start_time.is_none() {
            self.start_time = Some(Timestamp::now());
        }
        if !self.pod_saved {
            self.save_pod_state();
        }
        if self.sandbox_changed() {
            self.recreate_sandbox().await;
        }
        if self.sandbox.is_none() {
            let created = if self.may_overlap_network() {
                self.ctx.runtime.create_sandbox_overlapped(&self.pod)
            } else {
                self.ctx
                    .runtime
                    .create_sandbox(&self.pod)
                    .map(|sb| (sb, None))
            };
            match created {
                Ok((sb, pending)) => {
                    if pending.is_none() {
                        self.last_ip = sb.ip.map(|i| i.to_string());
                    }
                    self.sandbox = Some(sb);
                    self.pending_net = pending;
                }
                Err(e) => {
                    self.sandbox_failed(&e);
                    return;
                }
            }
        }
        if self.volumes.is_none() || self.refresh_volumes {
            self.refresh_volumes = false;
            let result = {
                let cx = self.env_context();
                self.ctx.runtime.setup_volumes(&self.pod, &cx)
            };
            match result {
                Ok(v) => self.volumes = Some(v),
                Err(e) => {
                    warn!(pod = %self.key.1, namespace = %self.key.0, error = %e, "volume setup failed");
                    self.event(EventType::Warning, "FailedMount", &e);
                    if self.volumes.is_none() {
                        self.set_wake(Instant::now() + RETRY);
                        return;
                    }
                }
            }
        }
        for i in 0..self.slots.len() {
            if self.slots[i].needs_prober {
                self.slots[i].needs_prober = false;
                self.start_prober(i);
            }
        }
        self.run_plan().await;
    }

    /// What the plan sees of the pod.
    fn plan_state(&self) -> PodState {
        PodState {
            policy: RestartPolicy::parse(self.policy()),
            slots: self.slots.iter().map(Slot::plan_state).collect(),
        }
    }

    /// Plans and runs the container actions. A start can let more happen in the same sync
    /// (a sidecar up at once lets the next init container start; an app container whose
    /// start failed may finish the pod), so the plan is made again after starts, with the
    /// same `now`; each container is started (or backs off) at most once per sync.
    async fn run_plan(&mut self) {
        let now = Instant::now();
        let mut handled = vec![false; self.slots.len()];
        loop {
            let mut started = false;
            let mut started_init = false;
            for action in plan::plan(&self.plan_state(), now) {
                match action {
                    Action::Kill(i) => {
                        if let Some(r) = &mut self.slots[i].current {
                            // The shim turns SIGUSR1 into SIGKILL.
                            r.shim.signal(libc::SIGUSR1);
                            r.kill_at = None;
                        }
                    }
                    Action::WakeAt(at) => self.set_wake(at),
                    Action::SidecarUp(i) => self.slots[i].up = true,
                    Action::BackOff {
                        slot,
                        until,
                        crash_loop,
                    } => {
                        if !std::mem::replace(&mut handled[slot], true) {
                            self.back_off(slot, until, crash_loop, now);
                        }
                    }
                    Action::Start(i) => {
                        if !std::mem::replace(&mut handled[i], true) {
                            started = true;
                            started_init |= self.slots[i].init && !self.slots[i].sidecar;
                            self.start(i).await;
                        }
                    }
                    Action::Complete => {
                        self.complete().await;
                        return;
                    }
                }
            }
            // A regular init container started: it has to finish before anything else.
            if !started || started_init {
                return;
            }
        }
    }

    /// Whether slot `i` may start now; otherwise marks it backing off and schedules a wake-up.
    fn may_start(&mut self, i: usize, now: Instant) -> bool {
        match plan::start_or_back_off(i, &self.slots[i].plan_state(), now) {
            Action::BackOff {
                slot,
                until,
                crash_loop,
            } => {
                self.back_off(slot, until, crash_loop, now);
                false
            }
            _ => true,
        }
    }

    /// Slot `i` backs off until `at`: a wake-up then, and `CrashLoopBackOff` (with its
    /// event) when `crash_loop`.
    fn back_off(&mut self, i: usize, at: Instant, crash_loop: bool, now: Instant) {
        self.set_wake(at);
        if !crash_loop {
            return;
        }
        let slot = &self.slots[i];
        let left = at.saturating_duration_since(now).as_secs().max(1);
        let msg = format!(
            "back-off {}s restarting failed container={} pod={}_{}({})",
            left.next_multiple_of(10).min(300),
            slot.spec.name,
            self.key.1,
            self.key.0,
            self.uid
        );
        let event = format!(
            "Back-off restarting failed container {} in pod {}_{}({})",
            slot.spec.name, self.key.1, self.key.0, self.uid
        );
        self.slots[i].waiting = Some((reasons::CRASH_LOOP_BACK_OFF.into(), Some(msg)));
        self.event(EventType::Warning, "BackOff", &event);
    }

    /// The app containers are done for good (or a regular init container failed under
    /// `restartPolicy: Never`): the sidecars still running are stopped, last declared
    /// first, and the pod finishes (the kubelet kills such a pod, sidecars included).
    async fn complete(&mut self) {
        if self.slots.iter().any(|s| s.current.is_some()) {
            self.stop_containers(self.grace()).await;
        }
        for slot in &mut self.slots {
            if slot.sidecar && slot.current.is_none() && slot.last.is_some() {
                // Shown terminated, not waiting for a restart that will not come.
                slot.waiting = None;
            }
        }
        self.finish_pod();
    }

    /// The pod has reached Succeeded or Failed: its sandbox goes, its records stay.
    fn finish_pod(&mut self) {
        self.terminal = true;
        if let Err(e) = self.ctx.runtime.remove_sandbox(&self.uid) {
            warn!(pod = %self.key.1, error = %e, "removing sandbox of finished pod");
        }
        self.sandbox = None;
    }

    fn pod_ip(&self) -> Option<String> {
        self.sandbox
            .as_ref()
            .and_then(|s| s.ip)
            .map(|ip| ip.to_string())
            .or_else(|| self.last_ip.clone())
    }

    fn env_context(&self) -> crate::kube::env::EnvContext<'_> {
        crate::kube::env::EnvContext {
            service_env: &self.service_env,
            pod: &self.pod,
            pod_ip: self.last_ip.as_deref(),
            host_ip: self.host_ip.as_deref(),
            allocatable: crate::node::allocatable(),
            store: &*self.ctx.store,
        }
    }

    /// HOSTNAME (as container runtimes set it) and the container's own variables.
    fn container_env(&mut self, c: &Container) -> Result<Vec<(String, String)>, String> {
        let hostname = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.key.1.clone());
        let mut env = vec![("HOSTNAME".to_string(), hostname)];
        // Service links: the Services of the namespace that exist now.
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let links = if links {
            crate::service::env::service_env(&self.ctx.store.services(Some(&self.key.0)))
        } else {
            Vec::new()
        };
        // The kubernetes Service's variables go to every pod, service links or not (the kubelet's).
        self.service_env = crate::service::env::with_master(&links, &self.ctx.store);
        env.extend(crate::kube::env::resolve(c, &self.env_context())?);
        Ok(env)
    }

    async fn start(&mut self, i: usize) {
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        let restart = if self.slots[i].started_once {
            self.slots[i].restart_count + 1
        } else {
            0
        };
        let spec = self.slots[i].spec.clone();
        let volumes = self.volumes.clone().unwrap_or_default();
        let result = match self.container_env(&spec) {
            Ok(env) => {
                let req = StartRequest {
                    pod: &self.pod,
                    sandbox: &sandbox,
                    container: &spec,
                    init: self.slots[i].init,
                    restart,
                    env,
                    volumes: &volumes,
                    network: self.pending_net.clone(),
                };
                self.ctx.runtime.start(req).await
            }
            Err(message) => Err(StartError::Config {
                reason: "CreateContainerConfigError",
                message,
            }),
        };
        // The first start of a new sandbox overlapped its CNI ADD. When the network failed,
        // the runtime removed the created container again: the pod is back to "no
        // sandbox" and this attempt does not count for the container.
        if !self.settle_network().await {
            if let Ok(handle) = result {
                // Not possible with a runtime that keeps the contract; never leave one running.
                warn!(pod = %self.key.1, container = %spec.name, "container started without its pod network; killing it");
                handle.shim.signal(libc::SIGUSR1);
            }
            return;
        }
        let name = spec.name.clone();
        match result {
            Ok(handle) => {
                // The runtime reports the image (`Pulled`: present or pulled) itself.
                self.event(
                    EventType::Normal,
                    "Created",
                    &format!("Created container {name}"),
                );
                self.event(
                    EventType::Normal,
                    "Started",
                    &format!("Started container {name}"),
                );
                let slot = &mut self.slots[i];
                slot.restart_count = restart;
                slot.started_once = true;
                slot.waiting = None;
                slot.not_before = None;
                slot.image_id = handle.meta.image_id.clone();
                let exited = handle.shim.exited();
                let id = handle.meta.id.clone();
                self.exits.spawn(async move {
                    exited.await;
                    id
                });
                slot.current = Some(Running {
                    id: handle.meta.id,
                    started_at: handle.started_at,
                    since: Instant::now(),
                    shim: handle.shim,
                    ready: false,
                    started: false,
                    prober: None,
                    kill_at: None,
                });
                self.start_prober(i);
                self.post_start(i).await;
            }
            Err(StartError::ImageMissing { reason, message }) => {
                if reason == crate::runtime::pull::PULLING {
                    // A pull runs in the background; its end resyncs the workers.
                    self.slots[i].waiting = Some((reason.into(), None));
                } else {
                    // The kubelet's events: `Error: ErrImagePull`, `Error: ImagePullBackOff`.
                    self.event(EventType::Warning, "Failed", &format!("Error: {reason}"));
                    self.slots[i].waiting = Some((reason.into(), Some(message)));
                }
                self.set_wake(Instant::now() + RETRY);
            }
            Err(StartError::Config { reason, message }) => {
                self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
                let slot = &mut self.slots[i];
                slot.waiting = Some((reason.into(), Some(message)));
                let delay = slot.backoff.delay_after_exit(Duration::ZERO).max(RETRY);
                slot.not_before = Some(Instant::now() + delay);
                self.set_wake(Instant::now() + delay);
            }
            Err(StartError::Start(message)) => {
                warn!(pod = %self.key.1, container = %name, error = %message, "container failed to start");
                self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
                let now = Timestamp::now();
                let slot = &mut self.slots[i];
                slot.restart_count = restart;
                slot.started_once = true;
                slot.waiting = None;
                slot.last = Some(Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(message),
                    started_at: Some(now),
                    finished_at: now,
                    container_id: None,
                });
                let delay = slot.backoff.delay_after_exit(Duration::ZERO);
                slot.not_before = Some(Instant::now() + delay);
                // Shows CrashLoopBackOff (and schedules the retry) when a back-off applies.
                if self.may_start(i, Instant::now()) {
                    self.set_wake(Instant::now());
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    /// Starts the probes of the container in slot `i` (or marks it ready at
    /// once when it has none).
    fn start_prober(&mut self, i: usize) {
        let slot = &self.slots[i];
        let has_probes = (!slot.init || slot.sidecar)
            && (slot.spec.liveness_probe.is_some()
                || slot.spec.readiness_probe.is_some()
                || slot.spec.startup_probe.is_some());
        let target = if has_probes {
            self.probe_target(i)
        } else {
            None
        };
        let Some(run) = self.slots[i].current.as_mut() else {
            return;
        };
        match target {
            Some(t) => {
                let task = tokio::spawn(probe::prober(t, self.probes_tx.clone()));
                run.prober = Some(task.abort_handle());
            }
            None => {
                run.ready = true;
                run.started = true;
            }
        }
    }

    fn on_probe(&mut self, id: &str, report: probe::Report) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.current.as_ref().is_some_and(|r| r.id == id))
        else {
            return;
        };
        let name = self.slots[i].spec.name.clone();
        match report {
            probe::Report::Ready(ready) => {
                if let Some(r) = self.slots[i].current.as_mut() {
                    r.ready = ready;
                }
            }
            probe::Report::Started => {
                if let Some(r) = self.slots[i].current.as_mut() {
                    r.started = true;
                }
            }
            probe::Report::Unhealthy(kind, msg) => {
                self.event(
                    EventType::Warning,
                    "Unhealthy",
                    &format!("{} probe failed: {msg}", kind.name()),
                );
            }
            probe::Report::Restart(kind, _msg) => {
                let why = format!(
                    "Container {name} failed {} probe, will be restarted",
                    kind.name().to_lowercase()
                );
                info!(pod = %self.key.1, container = %name, "{why}");
                self.kill_container(i, &why);
            }
        }
    }

    /// Takes the images of a pod updated through the API (the only container field the
    /// apiserver lets change): a running container whose image changed is killed and started
    /// again with the new one, whatever the restart policy, as the kubelet does when a
    /// container's definition changes. Init containers that already ran stay as they were.
    fn update(&mut self, pod: &Pod) {
        let Some(new_spec) = pod.spec.as_ref() else {
            return;
        };
        let image_of = |name: &str, init: bool| -> Option<String> {
            let list = if init {
                new_spec.init_containers.as_deref().unwrap_or_default()
            } else {
                &new_spec.containers[..]
            };
            list.iter()
                .find(|c| c.name == name)
                .and_then(|c| c.image.clone())
        };
        if let Some(spec) = self.pod.spec.as_mut() {
            spec.containers = new_spec.containers.clone();
            spec.init_containers = new_spec.init_containers.clone();
        }
        for i in 0..self.slots.len() {
            let (name, init, sidecar) = {
                let s = &self.slots[i];
                (s.spec.name.clone(), s.init, s.sidecar)
            };
            let Some(image) = image_of(&name, init) else {
                continue;
            };
            if self.slots[i].spec.image.as_deref() == Some(image.as_str()) {
                continue;
            }
            info!(pod = %self.key.1, container = %name, image = %image, "container image changed");
            self.slots[i].spec.image = Some(image);
            if init && !sidecar {
                continue;
            }
            if self.slots[i].current.is_some() {
                self.slots[i].changed = true;
                self.kill_container(
                    i,
                    &format!("Container {name} definition changed, will be restarted"),
                );
            } else if self.slots[i].last.is_some() {
                // Finished or backing off: start it again with the new image.
                self.slots[i].waiting = Some((reasons::CONTAINER_CREATING.into(), None));
                self.slots[i].not_before = None;
            }
        }
    }

    /// Stops one container (preStop, SIGTERM, SIGKILL after the grace period);
    /// its exit then goes through the restart policy like any other.
    fn kill_container(&mut self, i: usize, why: &str) {
        self.event(EventType::Normal, "Killing", why);
        let grace = self.grace();
        let pre_stop = self.slots[i]
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(probe::Handler::of_lifecycle);
        let target = self.probe_target(i);
        let Some(r) = self.slots[i].current.as_mut() else {
            return;
        };
        if r.kill_at.is_some() {
            return;
        }
        r.ready = false;
        if let Some(p) = r.prober.take() {
            p.abort();
        }
        let deadline = Instant::now() + grace;
        r.kill_at = Some(deadline);
        match (pre_stop, target) {
            (Some(h), Some(t)) => {
                let term = r.shim.signal_handle();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(grace, probe::run(&h, &t, grace)).await;
                    term(libc::SIGTERM);
                });
            }
            _ => r.shim.signal(libc::SIGTERM),
        }
        self.set_wake(deadline);
    }

    fn probe_target(&self, i: usize) -> Option<probe::Target> {
        let r = self.slots[i].current.as_ref()?;
        Some(probe::Target {
            container_id: r.id.clone(),
            container: self.slots[i].spec.clone(),
            netns: self.sandbox.as_ref().and_then(|s| s.net.clone()),
            pod_ip: self.sandbox.as_ref().and_then(|s| s.ip),
            runtime: self.ctx.runtime.clone(),
        })
    }

    /// Runs the postStart hook; a failure kills the container (FailedPostStartHook).
    async fn post_start(&mut self, i: usize) {
        let Some(h) = self.slots[i]
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .and_then(probe::Handler::of_lifecycle)
        else {
            return;
        };
        let Some(t) = self.probe_target(i) else {
            return;
        };
        let grace = self.grace().max(Duration::from_secs(1));
        let result = match tokio::time::timeout(grace, probe::run(&h, &t, grace)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {grace:?}")),
        };
        if let Err(msg) = result {
            let name = self.slots[i].spec.name.clone();
            self.event(
                EventType::Warning,
                "FailedPostStartHook",
                &format!("PostStartHook failed: {msg}"),
            );
            self.kill_container(
                i,
                &format!("FailedPostStartHook: stopping container {name}"),
            );
        }
    }

    fn on_exit(&mut self, id: &str) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.current.as_ref().is_some_and(|r| r.id == id))
        else {
            return;
        };
        let record = self.ctx.runtime.exit_record(&self.uid, id);
        let slot = &mut self.slots[i];
        let Some(run) = slot.current.take() else {
            return;
        };
        let t = match record {
            Some(e) => Terminated {
                message: self.ctx.runtime.termination_message(
                    &self.uid,
                    id,
                    &slot.spec,
                    e.exit_code,
                ),
                exit_code: e.exit_code,
                signal: e.signal,
                reason: e.reason,
                started_at: Some(run.started_at),
                finished_at: e.finished_at.parse().unwrap_or_else(|_| Timestamp::now()),
                container_id: Some(format!("{ID_SCHEME}{id}")),
            },
            None => Terminated {
                exit_code: 137,
                signal: None,
                reason: "ContainerStatusUnknown".into(),
                message: Some(
                    "The container's supervisor exited without recording a status".into(),
                ),
                started_at: Some(run.started_at),
                finished_at: Timestamp::now(),
                container_id: Some(format!("{ID_SCHEME}{id}")),
            },
        };
        info!(pod = %self.key.1, namespace = %self.key.0, container = %slot.spec.name, exit_code = t.exit_code, reason = %t.reason, "container exited");
        let delay = slot.backoff.delay_after_exit(run.since.elapsed());
        slot.not_before = Some(Instant::now() + delay);
        slot.last = Some(t);
        if std::mem::take(&mut slot.changed) {
            // Started again at once with its new definition.
            slot.not_before = None;
            slot.waiting = Some((reasons::CONTAINER_CREATING.into(), None));
        }
        if let Some(old) = slot.last_id.replace(id.to_string()) {
            self.ctx.runtime.remove_container(&self.uid, &old);
        }
        self.ctx.runtime.release_container_fs(&self.uid, id);
    }

    async fn terminate(&mut self) {
        // A delete through the API may have asked for its own grace period (kubectl delete
        // --grace-period=N): it is on the stored pod.
        let requested = self
            .ctx
            .store
            .get_pod(&self.key.0, &self.key.1)
            .filter(|p| p.metadata.uid.as_deref() == Some(self.uid.as_str()))
            .and_then(|p| p.metadata.deletion_grace_period_seconds);
        let grace = requested
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        let now = Time(Timestamp::now());
        self.ctx.store.update_pod(&self.key, &self.uid, |p| {
            p.metadata.deletion_timestamp = Some(now);
            p.metadata.deletion_grace_period_seconds = Some(grace as i64);
        });
        self.stop_containers(Duration::from_secs(grace)).await;
        if let Err(e) = self.ctx.runtime.remove_sandbox(&self.uid) {
            warn!(pod = %self.key.1, error = %e, "removing sandbox");
        }
        if let Err(e) = self.ctx.runtime.remove_pod_state(&self.uid) {
            warn!(pod = %self.key.1, error = %e, "removing pod state");
        }
        self.ctx.store.remove_pod(&self.key, &self.uid);
        info!(pod = %self.key.1, namespace = %self.key.0, "pod removed");
    }

    /// Stops every running container as the kubelet does: the app (and a running regular
    /// init) containers first, then the sidecars one at a time in reverse order of their
    /// declaration, each once the containers after it are gone. A container still running
    /// when its time is up is killed.
    async fn stop_containers(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let first: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.slots[i].sidecar)
            .collect();
        for &i in &first {
            self.stop_signal(i, grace);
        }
        self.wait_exits_of(&first, deadline).await;
        self.kill_remaining(&first).await;
        for i in (0..self.slots.len()).rev() {
            if !self.slots[i].sidecar || self.slots[i].current.is_none() {
                continue;
            }
            // As the kubelet, a sidecar whose turn comes late still gets a short window.
            let window = if grace.is_zero() {
                Duration::ZERO
            } else {
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(MIN_STOP_WINDOW)
            };
            self.stop_signal(i, window);
            self.wait_exits_of(&[i], Instant::now() + window).await;
            self.kill_remaining(&[i]).await;
        }
    }

    /// Asks the container in slot `i` to stop: its preStop hook (within `grace`), then SIGTERM.
    fn stop_signal(&self, i: usize, grace: Duration) {
        let Some(r) = &self.slots[i].current else {
            return;
        };
        self.event(
            EventType::Normal,
            "Killing",
            &format!("Stopping container {}", self.slots[i].spec.name),
        );
        if let Some(p) = &r.prober {
            p.abort();
        }
        let pre_stop = self.slots[i]
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(probe::Handler::of_lifecycle);
        match (pre_stop, self.probe_target(i)) {
            // preStop runs first, within the grace period; SIGTERM follows it.
            (Some(h), Some(t)) => {
                let term = r.shim.signal_handle();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(grace, probe::run(&h, &t, grace)).await;
                    term(libc::SIGTERM);
                });
            }
            _ => r.shim.signal(libc::SIGTERM),
        }
    }

    /// SIGKILL for those of `which` still running; their supervisors too if that fails.
    async fn kill_remaining(&mut self, which: &[usize]) {
        let running = |w: &Worker| {
            which
                .iter()
                .filter(|&&i| w.slots[i].current.is_some())
                .count()
        };
        if running(self) == 0 {
            return;
        }
        for &i in which {
            if let Some(r) = &self.slots[i].current {
                // The shim turns SIGUSR1 into SIGKILL for the container.
                r.shim.signal(libc::SIGUSR1);
            }
        }
        self.wait_exits_of(which, Instant::now() + Duration::from_secs(10))
            .await;
        for &i in which {
            if let Some(r) = &self.slots[i].current {
                warn!(pod = %self.key.1, container = %self.slots[i].spec.name, "container did not stop; killing its supervisor");
                r.shim.signal(libc::SIGKILL);
            }
        }
    }

    /// The kubelet's local-storage eviction, checked every [`STORAGE_CHECK`] when the pod has
    /// an ephemeral-storage limit or a disk emptyDir with a sizeLimit: the reason to evict, if
    /// any (emptyDir first, then the pod's total, then each container, as the kubelet does).
    fn check_ephemeral_storage(&mut self) -> Option<String> {
        let bytes = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| {
            crate::quantity::bytes(&q.0)
                .ok()
                .and_then(|b| u64::try_from(b).ok())
        };
        let limit_of = |c: &k8s_openapi::api::core::v1::Container| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("ephemeral-storage")
                .and_then(bytes)
        };
        let spec = self.pod.spec.as_ref()?;
        let empty_dirs: Vec<(String, Option<(u64, String)>)> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let e = v.empty_dir.as_ref()?;
                if e.medium.as_deref() == Some("Memory") {
                    return None;
                }
                let limit = e
                    .size_limit
                    .as_ref()
                    .and_then(|q| Some((bytes(q)?, q.0.clone())));
                Some((v.name.clone(), limit))
            })
            .collect();
        let limits: Vec<(String, u64, String)> = self
            .slots
            .iter()
            .filter_map(|s| {
                let q = s
                    .spec
                    .resources
                    .as_ref()?
                    .limits
                    .as_ref()?
                    .get("ephemeral-storage")?;
                Some((s.spec.name.clone(), limit_of(&s.spec)?, q.0.clone()))
            })
            .collect();
        if limits.is_empty() && empty_dirs.iter().all(|(_, l)| l.is_none()) {
            return None;
        }
        let now = Instant::now();
        if self.next_storage_check.is_some_and(|at| now < at) {
            return None;
        }
        self.next_storage_check = Some(now + STORAGE_CHECK);
        self.set_wake(now + STORAGE_CHECK);
        let running: Vec<(String, String)> = self
            .slots
            .iter()
            .filter_map(|s| Some((s.spec.name.clone(), s.current.as_ref()?.id.clone())))
            .collect();
        let names: Vec<String> = empty_dirs.iter().map(|(n, _)| n.clone()).collect();
        let usage = self
            .ctx
            .runtime
            .ephemeral_usage(&self.uid, &running, &names);
        for (name, limit) in &empty_dirs {
            if let (Some((max, text)), Some(used)) = (limit, usage.empty_dirs.get(name))
                && used > max
            {
                return Some(format!(
                    "Usage of EmptyDir volume {name:?} exceeds the limit {text:?}. "
                ));
            }
        }
        if !limits.is_empty() {
            let total_limit: u64 = limits.iter().map(|(_, l, _)| l).sum();
            let used: u64 = usage.containers.values().sum::<u64>()
                + usage.empty_dirs.values().sum::<u64>()
                + usage.pod_files;
            if used > total_limit {
                return Some(format!(
                    "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                    crate::quantity::format_bytes(total_limit)
                ));
            }
        }
        for (name, max, text) in &limits {
            if usage.containers.get(name).is_some_and(|u| u > max) {
                return Some(format!(
                    "Container {name} exceeded its local ephemeral storage limit {text:?}. "
                ));
            }
        }
        None
    }

    /// Evict the pod (the kubelet's local-storage eviction): containers killed at once, the pod
    /// Failed with reason `Evicted`, its sandbox removed; nothing restarts it.
    async fn evict(&mut self, msg: String) {
        warn!(pod = %self.key.1, namespace = %self.key.0, reason = %msg.trim(), "evicting pod");
        self.event(EventType::Warning, "Evicted", msg.trim());
        for slot in &self.slots {
            if let Some(r) = &slot.current {
                if let Some(p) = &r.prober {
                    p.abort();
                }
                // The shim turns SIGUSR1 into SIGKILL for the container.
                r.shim.signal(libc::SIGUSR1);
            }
        }
        self.failed = Some(("Evicted".into(), msg.trim().to_string()));
        self.wait_exits(Instant::now() + Duration::from_secs(10))
            .await;
        self.finish_pod();
    }

    /// Whether the pod's sandbox lost a namespace (its pin unmounted or removed, say by
    /// hand): nothing started from it can work any more. Checked on every sync and every
    /// [`SANDBOX_CHECK`] while the sandbox exists.
    fn sandbox_changed(&self) -> bool {
        match &self.sandbox {
            Some(sb) => self.pending_net.is_none() && !self.ctx.runtime.sandbox_intact(sb),
            // Containers adopted after a restart, whose sandbox went while skiffd was down:
            // creating the sandbox now would give new namespaces they are not in.
            None => {
                self.slots.iter().any(|s| s.current.is_some())
                    && !self.ctx.runtime.sandbox_pinned(&self.pod)
            }
        }
    }

    /// The kubelet's `SandboxChanged`: every container is killed, the sandbox removed
    /// (CNI DEL frees its IP) and the next sync creates a new one and starts the
    /// containers again in it, init containers first, each with one restart more.
    async fn recreate_sandbox(&mut self) {
        warn!(pod = %self.key.1, namespace = %self.key.0, uid = %self.uid, "pod sandbox lost a namespace; re-creating it");
        self.event(
            EventType::Normal,
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.",
        );
        for slot in &self.slots {
            if let Some(r) = &slot.current {
                // The shim turns SIGUSR1 into SIGKILL for the container.
                r.shim.signal(libc::SIGUSR1);
            }
        }
        self.wait_exits(Instant::now() + Duration::from_secs(10))
            .await;
        for slot in &self.slots {
            if let Some(r) = &slot.current {
                warn!(pod = %self.key.1, container = %slot.spec.name, "container did not stop; killing its supervisor");
                r.shim.signal(libc::SIGKILL);
            }
        }
        self.wait_exits(Instant::now() + Duration::from_secs(5))
            .await;
        // Also kills what the pod's cgroups still hold, whatever the shims did.
        if let Err(e) = self.ctx.runtime.remove_sandbox(&self.uid) {
            warn!(pod = %self.key.1, error = %e, "removing the changed sandbox");
        }
        self.sandbox = None;
        self.pending_net = None;
        for slot in &mut self.slots {
            // Killed for the sandbox, not by their own doing: no back-off.
            slot.not_before = None;
            // Sidecars start again in their turn, too.
            slot.up = false;
            if slot.init && !slot.sidecar && slot.current.is_none() {
                // A new sandbox runs the init containers again, as on a kubelet.
                slot.last = None;
            }
        }
    }

    async fn wait_exits(&mut self, deadline: Instant) {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.wait_exits_of(&all, deadline).await;
    }

    /// Handles exits until the containers of `which` are all gone or `deadline` passes.
    async fn wait_exits_of(&mut self, which: &[usize], deadline: Instant) {
        while which.iter().any(|&i| self.slots[i].current.is_some()) {
            tokio::select! {
                Some(res) = self.exits.join_next(), if !self.exits.is_empty() => {
                    if let Ok(id) = res {
                        self.on_exit(&id);
                        self.publish();
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pod::fake::{FakeRuntime, Script};

    fn pod(yaml: &str) -> Pod {
        let mut p: Pod = serde_yaml_ng::from_str(yaml).unwrap();
        p.metadata.uid = Some("uid-1".into());
        crate::manifest::validate::validate_pod(p).unwrap()
    }

    fn setup(
        p: &Pod,
    ) -> (
        FakeRuntime,
        Arc<Store>,
        mpsc::UnboundedSender<Msg>,
        JoinHandle<()>,
    ) {
        let fake = FakeRuntime::default();
        let store = Arc::new(Store::new("n"));
        store.put_pod(p.clone(), true);
        let ctx = Arc::new(Ctx {
            runtime: Arc::new(fake.clone()),
            store: store.clone(),
        });
        let (tx, h) = spawn(ctx, p.clone(), None);
        (fake, store, tx, h)
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..20_000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never happened: {what}");
    }

    fn phase(store: &Store) -> String {
        store
            .get_pod("default", "p")
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn init_containers_run_in_order_before_app_containers() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  initContainers: [{name: i1, image: x}, {name: i2, image: x}]\n  containers: [{name: a, image: x}, {name: b, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "i1",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        );
        fake.script(
            "i2",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        );
        wait_until("both app containers started", || fake.started().len() == 4).await;
        let names: Vec<String> = fake.started().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, vec!["i1", "i2", "a", "b"]);
        let s = fake.started();
        assert!(s[1].at >= s[0].at + Duration::from_secs(1));
        wait_until("Running", || phase(&store) == "Running").await;
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_backs_off_zero_then_ten_then_twenty_seconds() {
        let p = pod("metadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]");
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "a",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                code: 1,
                ..Default::default()
            },
        );
        wait_until("four starts", || fake.started().len() >= 4).await;
        let s = fake.started();
        let gaps: Vec<u64> = s
            .windows(2)
            .map(|w| {
                w[1].at
                    .duration_since(fake.exit_time(&w[0].id).unwrap())
                    .as_secs()
            })
            .collect();
        assert_eq!(gaps, vec![0, 10, 20]);
        assert_eq!(
            s.iter().map(|x| x.restart).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let pod = store.get_pod("default", "p").unwrap();
        assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Running"));
    }

    #[tokio::test(start_paused = true)]
    async fn pod_state_is_saved_again_once_the_disk_has_room() {
        let p = pod("metadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]");
        let fake = FakeRuntime::default();
        // ENOSPC from the first write on: the pod runs all the same.
        fake.set_save_fails(true);
        let store = Arc::new(Store::new("n"));
        store.put_pod(p.clone(), true);
        let ctx = Arc::new(Ctx {
            runtime: Arc::new(fake.clone()),
            store: store.clone(),
        });
        let (_tx, _h) = spawn(ctx, p.clone(), None);
        wait_until("Running", || phase(&store) == "Running").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fake.saves(), 0);
        fake.set_save_fails(false);
        wait_until("pod.json written", || fake.saves() == 1).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.saves(), 1, "written once it worked, not at every sync");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_to_the_pod_files_count_against_the_pod_limit() {
        use crate::runtime::EphemeralUsage;
        // CVE-2020-8557: /etc/hosts is outside every writable layer, and still the pod's.
        let p = pod(
            "metadata: {name: p}\nspec:\n  containers: [{name: a, image: x, resources: {limits: {ephemeral-storage: 20Mi}}}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("Running", || phase(&store) == "Running").await;
        fake.set_usage(EphemeralUsage {
            containers: [("a".to_string(), 1 << 20)].into(),
            pod_files: 30 << 20,
            ..Default::default()
        });
        wait_until("Evicted", || phase(&store) == "Failed").await;
        let st = store
            .get_pod("default", "p")
            .and_then(|p| p.status)
            .unwrap_or_default();
        assert_eq!(st.reason.as_deref(), Some("Evicted"));
        assert_eq!(
            st.message.as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 20Mi.")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn local_storage_over_its_limits_evicts_the_pod() {
        use crate::runtime::EphemeralUsage;
        let status = |store: &Arc<crate::store::Store>| {
            store
                .get_pod("default", "p")
                .and_then(|p| p.status)
                .unwrap_or_default()
        };
        // A container over its own limit.
        let p = pod(
            "metadata: {name: p}\nspec:\n  containers: [{name: a, image: x, resources: {limits: {ephemeral-storage: 10Mi}}}, {name: b, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("Running", || phase(&store) == "Running").await;
        fake.set_usage(EphemeralUsage {
            containers: [("a".to_string(), 5 << 20)].into(),
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(phase(&store), "Running", "under its limit");
        fake.set_usage(EphemeralUsage {
            containers: [("a".to_string(), 11 << 20)].into(),
            ..Default::default()
        });
        wait_until("Evicted", || phase(&store) == "Failed").await;
        let st = status(&store);
        assert_eq!(st.reason.as_deref(), Some("Evicted"));
        assert_eq!(
            st.message.as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 10Mi.")
        );
        assert!(
            fake.signals()
                .iter()
                .filter(|(_, s)| *s == libc::SIGUSR1)
                .count()
                >= 2,
            "both containers killed"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.started().len(), 2, "an evicted pod does not restart");

        // An emptyDir over its sizeLimit.
        let p = pod(
            "metadata: {name: p}\nspec:\n  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("Running", || phase(&store) == "Running").await;
        fake.set_usage(EphemeralUsage {
            empty_dirs: [("scratch".to_string(), 2 << 20)].into(),
            ..Default::default()
        });
        wait_until("Evicted", || phase(&store) == "Failed").await;
        assert_eq!(
            status(&store).message.as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\".")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restart_policy_never_fails_and_on_failure_succeeds() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  restartPolicy: Never\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "a",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                code: 2,
                ..Default::default()
            },
        );
        wait_until("Failed", || phase(&store) == "Failed").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.started().len(), 1, "a Never pod restarted");
        assert_eq!(
            fake.sandboxes_removed(),
            1,
            "a finished pod keeps its sandbox"
        );

        let p = pod(
            "metadata: {name: p}\nspec:\n  restartPolicy: OnFailure\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "a",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                code: 0,
                ..Default::default()
            },
        );
        wait_until("Succeeded", || phase(&store) == "Succeeded").await;
        assert_eq!(fake.started().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_init_container_with_never_fails_the_pod_without_starting_apps() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  restartPolicy: Never\n  initContainers: [{name: i, image: x}]\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "i",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                code: 1,
                ..Default::default()
            },
        );
        wait_until("Failed", || phase(&store) == "Failed").await;
        assert_eq!(fake.started().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn start_error_counts_as_a_failed_run_with_exit_code_128() {
        let p = pod("metadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]");
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "a",
            Script {
                start_error: Some("exec: nope".into()),
                ..Default::default()
            },
        );
        wait_until("a back-off", || fake.started().len() >= 2).await;
        wait_until("CrashLoopBackOff", || {
            let st = store
                .get_pod("default", "p")
                .and_then(|p| p.status)
                .unwrap_or_default();
            let cs = st.container_statuses.unwrap_or_default();
            let Some(c) = cs.first() else { return false };
            let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
                && last.is_some_and(|t| {
                    t.exit_code == 128 && t.reason.as_deref() == Some("StartError")
                })
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn missing_image_waits_and_starts_on_resync() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  containers: [{name: a, image: x, imagePullPolicy: Never}]",
        );
        let (fake, store, tx, _h) = setup(&p);
        fake.script(
            "a",
            Script {
                no_image: true,
                ..Default::default()
            },
        );
        wait_until("ErrImageNeverPull", || {
            let st = store
                .get_pod("default", "p")
                .and_then(|p| p.status)
                .unwrap_or_default();
            let cs = st.container_statuses.unwrap_or_default();
            let Some(c) = cs.first() else { return false };
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("ErrImageNeverPull")
        })
        .await;
        assert_eq!(phase(&store), "Pending");
        fake.script("a", Script::default());
        tx.send(Msg::Resync).unwrap();
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(
            fake.started()[0].restart,
            0,
            "a start after a missing image is not a restart"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn terminate_sends_sigterm_then_sigkill_after_the_grace_period() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers: [{name: polite, image: x}, {name: stubborn, image: x}]",
        );
        let (fake, store, tx, h) = setup(&p);
        fake.script(
            "polite",
            Script {
                exits_on_term: true,
                ..Default::default()
            },
        );
        wait_until("Running", || phase(&store) == "Running").await;
        let t0 = Instant::now();
        tx.send(Msg::Terminate).unwrap();
        h.await.unwrap();
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        let sigs: Vec<i32> = fake.signals().iter().map(|s| s.1).collect();
        assert_eq!(sigs, vec![libc::SIGTERM, libc::SIGTERM, libc::SIGUSR1]);
        assert!(store.get_pod("default", "p").is_none());
        assert_eq!(fake.sandboxes_removed(), 1);
    }

    fn container_ready(store: &Store) -> Option<bool> {
        let st = store.get_pod("default", "p")?.status?;
        Some(st.container_statuses?.first()?.ready)
    }

    #[tokio::test(start_paused = true)]
    async fn failing_liveness_probe_restarts_the_container() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: a\n    image: x\n    livenessProbe: {exec: {command: [false]}, periodSeconds: 1, failureThreshold: 2}",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("a restart", || fake.started().len() >= 2).await;
        let sigs: Vec<i32> = fake.signals().iter().map(|s| s.1).collect();
        assert_eq!(&sigs[..2], &[libc::SIGTERM, libc::SIGUSR1], "{sigs:?}");
        let events = store.list_events(Some("default"), Some("p"));
        assert!(
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("Unhealthy"))
        );
        assert!(events.iter().any(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("failed liveness probe, will be restarted"))
        }));
        assert_eq!(fake.started()[1].restart, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_probe_gates_ready_and_startup_gates_the_others() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: x\n    readinessProbe: {exec: {command: [false]}, periodSeconds: 1, failureThreshold: 1}",
        );
        let (_fake, store, _tx, _h) = setup(&p);
        wait_until("Running", || phase(&store) == "Running").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(container_ready(&store), Some(false));
        let ready_cond = store
            .get_pod("default", "p")
            .unwrap()
            .status
            .unwrap()
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready_cond.status, "False");

        let p = pod(
            "metadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: x\n    startupProbe: {exec: {command: [true, startup]}, periodSeconds: 1}\n    readinessProbe: {exec: {command: [true, ready]}, periodSeconds: 1}",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("ready", || container_ready(&store) == Some(true)).await;
        let execs = fake.execs();
        assert_eq!(
            execs[0],
            vec!["true", "startup"],
            "startup runs first: {execs:?}"
        );
        let st = store.get_pod("default", "p").unwrap().status.unwrap();
        assert_eq!(st.container_statuses.unwrap()[0].started, Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn pre_stop_hook_runs_before_sigterm() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 3\n  containers:\n  - name: a\n    image: x\n    lifecycle: {preStop: {exec: {command: [true, bye]}}, postStart: {exec: {command: [true, hello]}}}",
        );
        let (fake, store, tx, h) = setup(&p);
        fake.script(
            "a",
            Script {
                exits_on_term: true,
                ..Default::default()
            },
        );
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(
            fake.execs(),
            vec![vec!["true".to_string(), "hello".to_string()]]
        );
        tx.send(Msg::Terminate).unwrap();
        h.await.unwrap();
        assert_eq!(
            fake.execs().last().unwrap(),
            &vec!["true".to_string(), "bye".to_string()]
        );
        assert_eq!(
            fake.signals().iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![libc::SIGTERM]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_post_start_hook_kills_the_container() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  containers:\n  - name: a\n    image: x\n    lifecycle: {postStart: {exec: {command: [false]}}}",
        );
        let (_fake, store, _tx, _h) = setup(&p);
        wait_until("Failed", || phase(&store) == "Failed").await;
        let events = store.list_events(Some("default"), Some("p"));
        assert!(
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedPostStartHook"))
        );
    }

    fn pod_ip_of(store: &Store) -> Option<String> {
        store
            .get_pod("default", "p")
            .and_then(|p| p.status)
            .and_then(|s| s.pod_ip)
    }

    #[tokio::test(start_paused = true)]
    async fn first_container_is_created_alongside_the_network_and_runs_after_it() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  initContainers:\n  - {name: i, image: x}\n  containers:\n  - {name: a, image: x}",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "i",
            Script {
                exit_after: Some(Duration::from_millis(10)),
                ..Default::default()
            },
        );
        fake.network(crate::pod::fake::NetScript {
            delay: Duration::from_secs(2),
            error: None,
        });
        let t0 = Instant::now();
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(
            fake.sandboxes_created(),
            (0, 1),
            "one sandbox, network attached in the background"
        );
        let started = fake.started();
        assert_eq!(
            started.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["i", "a"]
        );
        assert!(
            started[0].at >= t0 + Duration::from_secs(2),
            "the init container ran before its network was ready"
        );
        assert_eq!(pod_ip_of(&store).as_deref(), Some("10.244.0.9"));
    }

    #[tokio::test(start_paused = true)]
    async fn network_failure_of_an_overlapped_start_is_a_sandbox_failure() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: a, image: x}",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.network(crate::pod::fake::NetScript {
            delay: Duration::from_millis(500),
            error: Some("no IP addresses available in range set".into()),
        });
        wait_until("FailedCreatePodSandBox", || {
            store
                .list_events(Some("default"), Some("p"))
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
        })
        .await;
        let events = store.list_events(Some("default"), Some("p"));
        let failed: Vec<_> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
            .collect();
        assert_eq!(
            failed[0].message.as_deref(),
            Some("Failed to create pod sandbox: no IP addresses available in range set")
        );
        assert!(
            !events.iter().any(|e| e.reason.as_deref() == Some("Failed")),
            "not a container failure: {events:?}"
        );
        assert_eq!(
            fake.aborted(),
            vec!["a".to_string()],
            "the created container was removed"
        );
        assert!(fake.started().is_empty());
        // The container shows as never started (not Failed/StartError), and the pod is Pending.
        let st = store.get_pod("default", "p").unwrap().status.unwrap();
        let cs = &st.container_statuses.unwrap()[0];
        assert_eq!(cs.restart_count, 0);
        assert!(
            cs.last_state
                .as_ref()
                .is_none_or(|l| l.terminated.is_none()),
            "{cs:?}"
        );
        assert_eq!(
            cs.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref()),
            Some("ContainerCreating")
        );
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        assert!(st.pod_ip.is_none());
        // The retry (after the usual 5 s) goes the sequential way and fails the same; once
        // the network heals, the container starts for the first time.
        wait_until("a sequential retry", || fake.sandboxes_created().0 >= 1).await;
        assert_eq!(
            fake.sandboxes_created().1,
            1,
            "no second overlapped attempt"
        );
        fake.network(crate::pod::fake::NetScript::default());
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(fake.started().len(), 1);
        assert_eq!(fake.started()[0].restart, 0);
        assert_eq!(pod_ip_of(&store).as_deref(), Some("10.244.0.9"));
    }

    #[tokio::test(start_paused = true)]
    async fn pods_that_read_their_own_ip_attach_the_network_first() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: x\n    env: [{name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(fake.sandboxes_created(), (1, 0));
    }

    fn init_status(
        store: &Store,
        name: &str,
    ) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
        store
            .get_pod("default", "p")?
            .status?
            .init_container_statuses?
            .into_iter()
            .find(|c| c.name == name)
    }

    fn condition(store: &Store, type_: &str) -> Option<String> {
        store
            .get_pod("default", "p")?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status)
    }

    fn names(fake: &FakeRuntime) -> Vec<String> {
        fake.started().iter().map(|s| s.name.clone()).collect()
    }

    /// The signals sent, by container name.
    fn signals_by_name(fake: &FakeRuntime) -> Vec<(String, i32)> {
        let started = fake.started();
        fake.signals()
            .into_iter()
            .map(|(id, sig)| {
                let name = started
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| s.name.clone())
                    .unwrap_or(id);
                (name, sig)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn sidecar_starts_in_its_turn_and_runs_alongside_the_app_containers() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  initContainers:\n  - {name: i1, image: x}\n  - {name: s, image: x, restartPolicy: Always}\n  - {name: i2, image: x}\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        for name in ["i1", "i2"] {
            fake.script(
                name,
                Script {
                    exit_after: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
            );
        }
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(names(&fake), vec!["i1", "s", "i2", "a"]);
        let s = fake.started();
        assert!(
            s[1].at >= s[0].at + Duration::from_secs(1),
            "s before i1 ended"
        );
        assert!(
            s[3].at >= s[2].at + Duration::from_secs(1),
            "a before i2 ended"
        );
        let side = init_status(&store, "s").unwrap();
        assert!(
            side.state.unwrap().running.is_some(),
            "the sidecar still runs"
        );
        assert_eq!(side.started, Some(true));
        assert!(side.ready);
        assert_eq!(condition(&store, "Initialized").as_deref(), Some("True"));
        assert_eq!(condition(&store, "Ready").as_deref(), Some("True"));
        // Regular init containers stay done: nothing else ran.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.started().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn sidecar_startup_probe_gates_the_next_container_and_readiness_the_pod() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  initContainers:\n  - name: s\n    image: x\n    restartPolicy: Always\n    startupProbe: {exec: {command: [true, startup]}, initialDelaySeconds: 5, periodSeconds: 1}\n    readinessProbe: {exec: {command: [false]}, periodSeconds: 1, failureThreshold: 1}\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("a started", || fake.started().len() == 2).await;
        let s = fake.started();
        assert_eq!(names(&fake), vec!["s", "a"]);
        assert!(
            s[1].at >= s[0].at + Duration::from_secs(5),
            "a started before the sidecar's startup probe passed"
        );
        assert_eq!(fake.execs()[0], vec!["true", "startup"]);
        wait_until("Running", || phase(&store) == "Running").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let side = init_status(&store, "s").unwrap();
        assert_eq!(side.started, Some(true));
        assert!(!side.ready, "its readiness probe fails");
        assert_eq!(container_ready(&store), Some(true));
        // The sidecar's readiness counts in the pod's.
        assert_eq!(
            condition(&store, "ContainersReady").as_deref(),
            Some("False")
        );
        assert_eq!(condition(&store, "Ready").as_deref(), Some("False"));
        assert_eq!(condition(&store, "Initialized").as_deref(), Some("True"));
    }

    #[tokio::test(start_paused = true)]
    async fn sidecar_that_never_starts_keeps_the_pod_pending() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  initContainers:\n  - name: s\n    image: x\n    restartPolicy: Always\n    startupProbe: {exec: {command: [false]}, periodSeconds: 1, failureThreshold: 3}\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        // Killed after its startup probe failed, and started again.
        wait_until("a restart of s", || fake.started().len() >= 2).await;
        assert!(names(&fake).iter().all(|n| n == "s"), "{:?}", names(&fake));
        assert_eq!(phase(&store), "Pending");
        assert_eq!(condition(&store, "Initialized").as_deref(), Some("False"));
        assert_eq!(fake.started()[1].restart, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sidecar_whose_post_start_hook_fails_does_not_let_the_next_one_start() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 1\n  initContainers:\n  - name: s\n    image: x\n    restartPolicy: Always\n    lifecycle: {postStart: {exec: {command: [false]}}}\n  - {name: i, image: x}\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        wait_until("s started twice", || fake.started().len() >= 2).await;
        assert_eq!(
            names(&fake),
            vec!["s", "s"],
            "i started beside a failed sidecar"
        );
        assert_eq!(phase(&store), "Pending");
        assert!(
            store
                .list_events(Some("default"), Some("p"))
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedPostStartHook"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exited_sidecar_is_restarted_with_back_off_under_restart_policy_never() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  restartPolicy: Never\n  initContainers: [{name: s, image: x, restartPolicy: Always}]\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "s",
            Script {
                exit_after: Some(Duration::from_secs(2)),
                code: 0,
                ..Default::default()
            },
        );
        wait_until("s started three times", || {
            names(&fake).iter().filter(|n| *n == "s").count() >= 3
        })
        .await;
        let runs: Vec<crate::pod::fake::Started> = fake
            .started()
            .into_iter()
            .filter(|s| s.name == "s")
            .collect();
        assert_eq!(
            runs.iter().map(|r| r.restart).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let gaps: Vec<u64> = runs
            .windows(2)
            .map(|w| {
                w[1].at
                    .duration_since(fake.exit_time(&w[0].id).unwrap())
                    .as_secs()
            })
            .collect();
        assert_eq!(gaps, vec![0, 10], "the usual crash back-off");
        assert_eq!(
            names(&fake).iter().filter(|n| *n == "a").count(),
            1,
            "the app container is not restarted"
        );
        assert_eq!(phase(&store), "Running");
        let side = init_status(&store, "s").unwrap();
        assert!(side.restart_count >= 2, "{side:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn termination_stops_app_containers_first_then_sidecars_in_reverse_order() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 5\n  initContainers:\n  - {name: s1, image: x, restartPolicy: Always}\n  - {name: s2, image: x, restartPolicy: Always}\n  containers: [{name: a, image: x}, {name: b, image: x}]",
        );
        let (fake, store, tx, h) = setup(&p);
        for name in ["s1", "s2", "b"] {
            fake.script(
                name,
                Script {
                    exits_on_term: true,
                    ..Default::default()
                },
            );
        }
        wait_until("Running", || phase(&store) == "Running").await;
        assert_eq!(names(&fake), vec!["s1", "s2", "a", "b"]);
        let t0 = Instant::now();
        tx.send(Msg::Terminate).unwrap();
        h.await.unwrap();
        let sigs = signals_by_name(&fake);
        let expect: Vec<(String, i32)> = [
            ("a", libc::SIGTERM),
            ("b", libc::SIGTERM),
            // `a` ignores SIGTERM: the sidecars wait for it to be killed.
            ("a", libc::SIGUSR1),
            ("s2", libc::SIGTERM),
            ("s1", libc::SIGTERM),
        ]
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
        assert_eq!(sigs, expect);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        assert!(store.get_pod("default", "p").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_that_ignores_sigterm_is_killed_after_its_window() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  terminationGracePeriodSeconds: 5\n  initContainers:\n  - {name: s, image: x, restartPolicy: Always}\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, tx, h) = setup(&p);
        wait_until("Running", || phase(&store) == "Running").await;
        let t0 = Instant::now();
        tx.send(Msg::Terminate).unwrap();
        h.await.unwrap();
        let waited = t0.elapsed();
        // The app container takes the whole grace period; the sidecar still gets 2 s.
        assert!(
            waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
            "{waited:?}"
        );
        let sigs: Vec<(String, i32)> = signals_by_name(&fake);
        assert_eq!(
            sigs,
            vec![
                ("a".to_string(), libc::SIGTERM),
                ("a".to_string(), libc::SIGUSR1),
                ("s".to_string(), libc::SIGTERM),
                ("s".to_string(), libc::SIGUSR1),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_pod_completes_by_its_app_containers_while_the_sidecar_runs() {
        for (code, want) in [(0, "Succeeded"), (3, "Failed")] {
            let p = pod(
                "metadata: {name: p}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 5\n  initContainers:\n  - {name: s1, image: x, restartPolicy: Always}\n  - {name: s2, image: x, restartPolicy: Always}\n  containers: [{name: job, image: x}]",
            );
            let (fake, store, _tx, _h) = setup(&p);
            // s1 exits on SIGTERM with 0; s2 only dies by SIGKILL (137): neither counts.
            fake.script(
                "s1",
                Script {
                    exits_on_term: true,
                    ..Default::default()
                },
            );
            fake.script(
                "job",
                Script {
                    exit_after: Some(Duration::from_secs(3)),
                    code,
                    ..Default::default()
                },
            );
            wait_until("Running", || phase(&store) == "Running").await;
            wait_until(want, || phase(&store) == want).await;
            let job = fake
                .started()
                .into_iter()
                .find(|s| s.name == "job")
                .unwrap();
            let done = fake.exit_time(&job.id).unwrap();
            assert_eq!(
                signals_by_name(&fake),
                vec![
                    ("s2".to_string(), libc::SIGTERM),
                    ("s2".to_string(), libc::SIGUSR1),
                    ("s1".to_string(), libc::SIGTERM),
                ],
                "sidecars stopped last first"
            );
            assert!(Instant::now() >= done + Duration::from_secs(5));
            assert_eq!(fake.started().len(), 3, "nothing restarted");
            assert_eq!(fake.sandboxes_removed(), 1);
            let st = store.get_pod("default", "p").unwrap().status.unwrap();
            for s in st.init_container_statuses.unwrap() {
                assert!(
                    s.state.as_ref().unwrap().terminated.is_some(),
                    "sidecar {} shown terminated: {s:?}",
                    s.name
                );
                assert!(!s.ready);
            }
            let ready = st
                .conditions
                .unwrap()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .unwrap();
            assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(
                fake.started().len(),
                3,
                "a finished pod's sidecar is not restarted"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_init_container_after_a_sidecar_fails_a_never_pod_and_stops_the_sidecar() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  restartPolicy: Never\n  initContainers:\n  - {name: s, image: x, restartPolicy: Always}\n  - {name: i, image: x}\n  containers: [{name: a, image: x}]",
        );
        let (fake, store, _tx, _h) = setup(&p);
        fake.script(
            "s",
            Script {
                exits_on_term: true,
                ..Default::default()
            },
        );
        fake.script(
            "i",
            Script {
                exit_after: Some(Duration::from_secs(1)),
                code: 1,
                ..Default::default()
            },
        );
        wait_until("Failed", || phase(&store) == "Failed").await;
        assert_eq!(names(&fake), vec!["s", "i"]);
        assert_eq!(
            signals_by_name(&fake),
            vec![("s".to_string(), libc::SIGTERM)]
        );
    }
}
