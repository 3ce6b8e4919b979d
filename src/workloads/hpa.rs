//! The HorizontalPodAutoscaler's decisions (kube-controller-manager's `pkg/controller/
//! podautoscaler`, autoscaling/v2 as of 1.33), without I/O: the replica calculation
//! (`ceil(current * usage / target)` over ready pods, the 10 % tolerance, utilization as a
//! percentage of requests, missing and unready pods assumed at 0 % on a scale-up and 100 % on
//! a scale-down, CPU samples of starting pods ignored), several metrics (the largest proposal
//! wins), `minReplicas`/`maxReplicas`, the 300 s scale-down stabilization over a
//! recommendation history, `behavior` (stabilization windows, `Pods`/`Percent` policies per
//! period, `selectPolicy`), the conditions `AbleToScale`/`ScalingActive`/`ScalingLimited` with
//! their reasons, autoscaling/v1 conversion, and the `TARGETS` column `kubectl get hpa` shows.
//!
//! The loop keeps one [`History`] per HPA, reads the target's scale and the pods its selector
//! picks, samples their usage, calls [`plan`] every sync period, writes `rescale` to the
//! target's scale (on failure: [`Plan::rescale_failed`]) and the status.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::{v1, v2};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::event::Event;
use super::field;
use crate::quantity;

/// How far usage may stray from the target, as a fraction, before the HPA acts.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// How often the controller syncs each HPA.
pub const SYNC_PERIOD: SignedDuration = SignedDuration::from_secs(15);
/// The target utilization of an HPA with no metrics.
pub const DEFAULT_CPU_UTILIZATION: i32 = 80;
/// `behavior.*.policies[].periodSeconds` may not pass this.
pub const MAX_PERIOD_SECONDS: i32 = 1800;
/// `behavior.*.stabilizationWindowSeconds` may not pass this.
pub const MAX_STABILIZATION_WINDOW_SECONDS: i32 = 3600;

/// The controller's flags (`--horizontal-pod-autoscaler-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub downscale_stabilization: SignedDuration,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`: CPU samples of a pod this young
    /// count only once it is ready and a full sample window has passed since.
    pub cpu_initialization_period: SignedDuration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub initial_readiness_delay: SignedDuration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tolerance: DEFAULT_TOLERANCE,
            downscale_stabilization: SignedDuration::from_secs(300),
            cpu_initialization_period: SignedDuration::from_secs(300),
            initial_readiness_delay: SignedDuration::from_secs(30),
        }
    }
}

/// One pod's usage sample, as metrics.k8s.io reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodUsage {
    /// When the sample was taken (the end of its window).
    pub timestamp: Timestamp,
    /// The window the sample averages over.
    pub window: SignedDuration,
    /// Per container, per resource (`cpu`, `memory`): usage in thousandths of the unit
    /// (millicores, millibytes).
    pub containers: BTreeMap<String, BTreeMap<String, i64>>,
}

/// Usage samples by pod name.
pub type Usage = BTreeMap<String, PodUsage>;

/// One pod's value of the metric in question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PodMetric {
    value: i64,
    timestamp: Timestamp,
    window: SignedDuration,
}

/// The resource metric of each pod: the sum over its containers, or one container's; a pod
/// with a container lacking the resource has no value (`GetResourceMetric`).
fn resource_metric(
    usage: &Usage,
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, PodMetric>, String> {
    if usage.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    let mut out = BTreeMap::new();
    for (pod, u) in usage {
        let value = match container {
            Some(c) => u.containers.get(c).and_then(|r| r.get(resource)).copied(),
            None if u.containers.is_empty() => None,
            None => u
                .containers
                .values()
                .map(|r| r.get(resource).copied())
                .sum::<Option<i64>>(),
        };
        if let Some(value) = value {
            out.insert(
                pod.clone(),
                PodMetric {
                    value,
                    timestamp: u.timestamp,
                    window: u.window,
                },
            );
        }
    }
    Ok(out)
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Pods sorted as the controller sorts them before a calculation (`groupPods`).
#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn group_pods(
    pods: &[Pod],
    metrics: &BTreeMap<String, PodMetric>,
    resource: &str,
    cfg: &Config,
    now: Timestamp,
) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        let name = pod_name(pod);
        if pod.metadata.deletion_timestamp.is_some() || phase(pod) == Some("Failed") {
            g.ignored.insert(name);
            continue;
        }
        if phase(pod) == Some("Pending") {
            g.unready.insert(name);
            continue;
        }
        let Some(metric) = metrics.get(&name) else {
            g.missing.insert(name);
            continue;
        };
        if resource == "cpu" {
            let status = pod.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            let started = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            let unready = match (ready, started) {
                (Some(c), Some(start)) => {
                    let changed = c
                        .last_transition_time
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    if start + cfg.cpu_initialization_period > now {
                        // Still starting: a sample must be ready and a whole window after it.
                        c.status == "False" || metric.timestamp < changed + metric.window
                    } else {
                        // Never ready since it started.
                        c.status == "False" && start + cfg.initial_readiness_delay > changed
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// Each pod's request for the resource, in thousandths (`calculateRequests`): the one
/// container's, the pod-level request, or the sum over its containers and sidecars; every
/// container counted must request it.
fn requests(
    pods: &[Pod],
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for pod in pods {
        let name = pod_name(pod);
        let default_spec = Default::default();
        let spec = pod.spec.as_ref().unwrap_or(&default_spec);
        let pod_level = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource));
        let milli = |q: &Quantity| {
            quantity::millicores(&q.0)
                .map_err(|e| format!("invalid request for {resource} of Pod {name}: {e}"))
        };
        if container.is_none()
            && let Some(q) = pod_level
        {
            out.insert(name.clone(), milli(q)?);
            continue;
        }
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut total = 0;
        let mut found = false;
        for c in spec.containers.iter().chain(sidecars) {
            if container.is_some_and(|want| want != c.name) {
                continue;
            }
            let request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .ok_or_else(|| {
                    format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    )
                })?;
            total += milli(request)?;
            found = true;
            if container.is_some() {
                break;
            }
        }
        if let Some(want) = container
            && !found
        {
            return Err(format!("container {want} not found in Pod {name}"));
        }
        out.insert(name, total);
    }
    Ok(out)
}

/// `GetResourceUtilizationRatio`: usage over requests of the pods with both, as a whole
/// percentage (truncated, as the controller does), its ratio to the target, and the average
/// raw usage.
fn utilization_ratio(
    metrics: &BTreeMap<String, PodMetric>,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, m) in metrics {
        if let Some(r) = requests.get(pod) {
            used += m.value;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (used * 100 / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        used / n,
    ))
}

/// A replica proposal from one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    pub replicas: i32,
    /// The current utilization in percent, for utilization targets.
    pub utilization: Option<i32>,
    /// The current average usage per pod, in thousandths.
    pub average: i64,
}

fn within(tolerance: f64, ratio: f64) -> bool {
    (1.0 - tolerance) <= ratio && ratio <= (1.0 + tolerance)
}

fn ceil_replicas(ratio: f64, pods: usize) -> i32 {
    (ratio * pods as f64).ceil().min(f64::from(i32::MAX)) as i32
}

/// `GetResourceReplicas`: the replicas a utilization target asks for.
#[allow(clippy::too_many_arguments)]
pub fn utilization_replicas(
    current: i32,
    target: i32,
    resource: &str,
    container: Option<&str>,
    pods: &[Pod],
    usage: &Usage,
    cfg: &Config,
    now: Timestamp,
) -> Result<Proposal, String> {
    let mut metrics = resource_metric(usage, resource, container)?;
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, &metrics, resource, cfg, now);
    metrics.retain(|pod, _| !g.ignored.contains(pod) && !g.unready.contains(pod));
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let requests = requests(pods, resource, container)?;
    let (ratio, utilization, average) = utilization_ratio(&metrics, &requests, target)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization: Some(utilization),
        average,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if within(cfg.tolerance, ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_replicas(ratio, g.ready)));
    }
    let zero = PodMetric {
        value: 0,
        timestamp: now,
        window: SignedDuration::ZERO,
    };
    for pod in &g.missing {
        // A pod without a sample uses its whole request (or the target, above 100 %) when
        // scaling down and nothing when scaling up: the change is never overstated.
        if ratio < 1.0 {
            let full = requests.get(pod).copied().unwrap_or(0) * i64::from(target.max(100)) / 100;
            metrics.insert(
                pod.clone(),
                PodMetric {
                    value: full,
                    ..zero
                },
            );
        } else if ratio > 1.0 {
            metrics.insert(pod.clone(), zero);
        }
    }
    if scale_up_with_unready {
        for pod in &g.unready {
            metrics.insert(pod.clone(), zero);
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
    if within(cfg.tolerance, new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = ceil_replicas(new_ratio, metrics.len());
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// `GetRawResourceReplicas`: the replicas an average-value target (in thousandths) asks for.
#[allow(clippy::too_many_arguments)]
pub fn average_value_replicas(
    current: i32,
    target: i64,
    resource: &str,
    container: Option<&str>,
    pods: &[Pod],
    usage: &Usage,
    cfg: &Config,
    now: Timestamp,
) -> Result<Proposal, String> {
    let mut metrics = resource_metric(usage, resource, container)?;
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, &metrics, resource, cfg, now);
    metrics.retain(|pod, _| !g.ignored.contains(pod) && !g.unready.contains(pod));
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ratio_of = |m: &BTreeMap<String, PodMetric>| {
        let average = m.values().map(|x| x.value).sum::<i64>() / m.len() as i64;
        (average as f64 / target as f64, average)
    };
    let (ratio, average) = ratio_of(&metrics);
    let proposal = |replicas| Proposal {
        replicas,
        utilization: None,
        average,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if within(cfg.tolerance, ratio) {
            return Ok(proposal(current));
        }
        return Ok(proposal(ceil_replicas(ratio, g.ready)));
    }
    let at = |value| PodMetric {
        value,
        timestamp: now,
        window: SignedDuration::ZERO,
    };
    for pod in &g.missing {
        if ratio < 1.0 {
            metrics.insert(pod.clone(), at(target));
        } else if ratio > 1.0 {
            metrics.insert(pod.clone(), at(0));
        }
    }
    if scale_up_with_unready {
        for pod in &g.unready {
            metrics.insert(pod.clone(), at(0));
        }
    }
    let (new_ratio, _) = ratio_of(&metrics);
    if within(cfg.tolerance, new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = ceil_replicas(new_ratio, metrics.len());
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// A scale change the behavior policies remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: i32,
    at: Timestamp,
    outdated: bool,
}

/// What the controller remembers of one HPA between syncs: its recent recommendations and
/// (with `behavior`) its recent scale changes. Kept in memory, as kube-controller-manager does;
/// a restart starts afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    recommendations: Vec<(Timestamp, i32)>,
    scale_up: Vec<ScaleEvent>,
    scale_down: Vec<ScaleEvent>,
}

impl History {
    /// The recorded recommendations, oldest slot first.
    pub fn recommendations(&self) -> Vec<i32> {
        self.recommendations.iter().map(|(_, r)| *r).collect()
    }

    /// `stabilizeRecommendation`: the highest recommendation within the window, recording this
    /// one in the place of an expired one.
    fn stabilize(&mut self, desired: i32, window: SignedDuration, now: Timestamp) -> i32 {
        let cutoff = now - window;
        let mut highest = desired;
        let mut old = None;
        for (i, (at, rec)) in self.recommendations.iter().enumerate() {
            if *at < cutoff {
                old = Some(i);
            } else if *rec > highest {
                highest = *rec;
            }
        }
        match old {
            Some(i) => self.recommendations[i] = (now, desired),
            None => self.recommendations.push((now, desired)),
        }
        highest
    }

    /// `stabilizeRecommendationWithBehaviors`: keep the current count between the lowest
    /// recommendation of the scale-up window and the highest of the scale-down window.
    fn stabilize_with_behavior(
        &mut self,
        current: i32,
        desired: i32,
        up_window: i32,
        down_window: i32,
        now: Timestamp,
    ) -> (i32, &'static str, &'static str) {
        let up_cutoff = now - SignedDuration::from_secs(i64::from(up_window));
        let down_cutoff = now - SignedDuration::from_secs(i64::from(down_window));
        let (mut up, mut down) = (desired, desired);
        let mut old = None;
        for (i, (at, rec)) in self.recommendations.iter().enumerate() {
            if *at > up_cutoff {
                up = up.min(*rec);
            }
            if *at > down_cutoff {
                down = down.max(*rec);
            }
            if *at < up_cutoff && *at < down_cutoff {
                old = Some(i);
            }
        }
        let recommendation = current.max(up).min(down);
        match old {
            Some(i) => self.recommendations[i] = (now, desired),
            None => self.recommendations.push((now, desired)),
        }
        if desired >= current {
            (
                recommendation,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                recommendation,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        }
    }

    /// `storeScaleEvent`: remember a rescale (only with `behavior`), reusing an expired slot.
    fn store(
        &mut self,
        behavior: &v2::HorizontalPodAutoscalerBehavior,
        from: i32,
        to: i32,
        now: Timestamp,
    ) {
        let (events, rules, change) = if to > from {
            (&mut self.scale_up, behavior.scale_up.as_ref(), to - from)
        } else {
            (
                &mut self.scale_down,
                behavior.scale_down.as_ref(),
                from - to,
            )
        };
        let longest = rules
            .and_then(|r| r.policies.as_ref())
            .and_then(|p| p.iter().map(|p| p.period_seconds).max())
            .unwrap_or(0);
        let cutoff = now - SignedDuration::from_secs(i64::from(longest));
        for e in events.iter_mut() {
            if e.at < cutoff {
                e.outdated = true;
            }
        }
        let event = ScaleEvent {
            change,
            at: now,
            outdated: false,
        };
        match events.iter().rposition(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }

    fn forget(&mut self, from: i32, to: i32, now: Timestamp) {
        let events = if to > from {
            &mut self.scale_up
        } else {
            &mut self.scale_down
        };
        if let Some(i) = events.iter().rposition(|e| e.at == now && !e.outdated) {
            events.remove(i);
        }
    }
}

fn change_in_period(period: i32, events: &[ScaleEvent], now: Timestamp) -> i32 {
    let cutoff = now - SignedDuration::from_secs(i64::from(period));
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.change)
        .sum()
}

/// `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(current: i32, h: &History, rules: &v2::HPAScalingRules, now: Timestamp) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MAX } else { i32::MIN };
    for policy in rules.policies.iter().flatten() {
        let added = change_in_period(policy.period_seconds, &h.scale_up, now);
        let deleted = change_in_period(policy.period_seconds, &h.scale_down, now);
        let start = current - added + deleted;
        let proposed = match policy.type_.as_str() {
            "Pods" => start + policy.value,
            // Rounded up, or a small target could never grow.
            "Percent" => (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i32,
            _ => continue,
        };
        result = if select == "Min" {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`.
fn scale_down_limit(current: i32, h: &History, rules: &v2::HPAScalingRules, now: Timestamp) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MIN } else { i32::MAX };
    for policy in rules.policies.iter().flatten() {
        let added = change_in_period(policy.period_seconds, &h.scale_up, now);
        let deleted = change_in_period(policy.period_seconds, &h.scale_down, now);
        let start = current - added + deleted;
        let proposed = match policy.type_.as_str() {
            "Pods" => start - policy.value,
            "Percent" => (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32,
            _ => continue,
        };
        result = if select == "Min" {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
}

/// `convertDesiredReplicasWithRules`: the limits without `behavior` (at most double, or four,
/// per sync).
fn limit_with_rules(
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
) -> (i32, &'static str, &'static str) {
    let up_limit = (2.0 * f64::from(current)).max(4.0) as i32;
    let (upper, reason, message) = if max > up_limit {
        (
            up_limit,
            "ScaleUpLimit",
            "the desired replica count is increasing faster than the maximum scale rate",
        )
    } else {
        (
            max,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        )
    };
    if desired < min {
        return (
            min,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        );
    }
    if desired > upper {
        return (upper, reason, message);
    }
    (
        desired,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    )
}

/// `convertDesiredReplicasWithBehaviorRate`.
fn limit_with_behavior(
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    h: &History,
    b: &v2::HorizontalPodAutoscalerBehavior,
    now: Timestamp,
) -> (i32, &'static str, &'static str) {
    let default_rules = v2::HPAScalingRules::default();
    if desired > current {
        let limit = scale_up_limit(
            current,
            h,
            b.scale_up.as_ref().unwrap_or(&default_rules),
            now,
        )
        .max(current);
        let (upper, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if desired > upper {
            return (upper, reason, message);
        }
    } else if desired < current {
        let limit = scale_down_limit(
            current,
            h,
            b.scale_down.as_ref().unwrap_or(&default_rules),
            now,
        )
        .min(current);
        let (lower, reason, message) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if desired < lower {
            return (lower, reason, message);
        }
    }
    (
        desired,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    )
}

fn policy(type_: &str, value: i32, period_seconds: i32) -> v2::HPAScalingPolicy {
    v2::HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    }
}

/// `copyHPAScalingRules` over the defaults: what the rules leave unset, the defaults give.
fn fill_rules(
    from: Option<&v2::HPAScalingRules>,
    mut to: v2::HPAScalingRules,
) -> v2::HPAScalingRules {
    if let Some(from) = from {
        if from.select_policy.is_some() {
            to.select_policy = from.select_policy.clone();
        }
        if from.stabilization_window_seconds.is_some() {
            to.stabilization_window_seconds = from.stabilization_window_seconds;
        }
        if from.policies.is_some() {
            to.policies = from.policies.clone();
        }
        if from.tolerance.is_some() {
            to.tolerance = from.tolerance.clone();
        }
    }
    to
}

/// The apiserver's defaults for an autoscaling/v2 HPA: `minReplicas` 1, a CPU target of 80 %
/// when there are no metrics, and the default rules for what a given `behavior` leaves out
/// (scale up: no stabilization, 4 pods or 100 % per 15 s, the larger; scale down: 100 % per
/// 15 s, the stabilization window left to the controller's flag).
pub fn defaults(hpa: &mut v2::HorizontalPodAutoscaler) {
    let spec = &mut hpa.spec;
    spec.min_replicas.get_or_insert(1);
    if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
        spec.metrics = Some(vec![cpu_utilization(DEFAULT_CPU_UTILIZATION)]);
    }
    if let Some(b) = spec.behavior.as_mut() {
        b.scale_up = Some(fill_rules(
            b.scale_up.as_ref(),
            v2::HPAScalingRules {
                stabilization_window_seconds: Some(0),
                select_policy: Some("Max".into()),
                policies: Some(vec![policy("Pods", 4, 15), policy("Percent", 100, 15)]),
                tolerance: None,
            },
        ));
        b.scale_down = Some(fill_rules(
            b.scale_down.as_ref(),
            v2::HPAScalingRules {
                stabilization_window_seconds: None,
                select_policy: Some("Max".into()),
                policies: Some(vec![policy("Percent", 100, 15)]),
                tolerance: None,
            },
        ));
    }
}

fn cpu_utilization(percent: i32) -> v2::MetricSpec {
    v2::MetricSpec {
        type_: "Resource".into(),
        resource: Some(v2::ResourceMetricSource {
            name: "cpu".into(),
            target: v2::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

/// Sets a condition as `setCondition` does: added if missing, its transition time moved only
/// when its status changes.
fn set_condition(
    status: &mut v2::HorizontalPodAutoscalerStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let list = status.conditions.get_or_insert_with(Vec::new);
    let index = match list.iter().position(|c| c.type_ == type_) {
        Some(i) => i,
        None => {
            list.push(v2::HorizontalPodAutoscalerCondition {
                type_: type_.into(),
                ..Default::default()
            });
            list.len() - 1
        }
    };
    let c = &mut list[index];
    if c.status != value {
        c.last_transition_time = Some(Time(now));
    }
    c.status = value.into();
    c.reason = Some(reason.into());
    c.message = Some(message.into());
}

/// A quantity of thousandths as the apiserver prints a `DecimalSI` milli-quantity
/// (`4m`, `1500m`, `2`, `2k`, `104857600`).
pub fn milli_quantity(milli: i64) -> String {
    if milli == 0 {
        return "0".into();
    }
    let (mut v, mut exp) = (milli, -3);
    while v % 1000 == 0 && exp < 18 {
        v /= 1000;
        exp += 3;
    }
    let suffix = match exp {
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    format!("{v}{suffix}")
}

/// What one metric gave: a proposal and its status, or the condition and error it failed with.
enum MetricResult {
    Ok(i32, String, Box<v2::MetricStatus>),
    Err {
        reason: &'static str,
        inner: String,
        outer: String,
    },
}

fn compute_metric(
    spec: &v2::MetricSpec,
    current: i32,
    pods: &[Pod],
    usage: &Usage,
    cfg: &Config,
    now: Timestamp,
) -> MetricResult {
    let (source, container, reason, outer_kind) = match spec.type_.as_str() {
        "Resource" => match &spec.resource {
            Some(r) => (
                (&r.name, &r.target),
                None,
                "FailedGetResourceMetric",
                "resource",
            ),
            None => {
                return MetricResult::Err {
                    reason: "FailedGetResourceMetric",
                    inner: "resource metric source is missing".into(),
                    outer: "failed to get resource metric value: resource metric source is missing"
                        .into(),
                };
            }
        },
        "ContainerResource" => match &spec.container_resource {
            Some(r) => (
                (&r.name, &r.target),
                Some(r.container.as_str()),
                "FailedGetContainerResourceMetric",
                "container resource",
            ),
            None => {
                return MetricResult::Err {
                    reason: "FailedGetContainerResourceMetric",
                    inner: "container resource metric source is missing".into(),
                    outer: "failed to get container resource metric value: container resource metric source is missing".into(),
                };
            }
        },
        kind @ ("Pods" | "Object" | "External") => {
            let (reason, what) = match kind {
                "Pods" => ("FailedGetPodsMetric", "pods"),
                "Object" => ("FailedGetObjectMetric", "object"),
                _ => ("FailedGetExternalMetric", "external"),
            };
            let inner = format!(
                "unable to get {what} metric: skiff serves no custom or external metrics API"
            );
            return MetricResult::Err {
                reason,
                outer: format!("failed to get {what} metric value: {inner}"),
                inner,
            };
        }
        other => {
            let inner = format!("unknown metric source type {other:?}");
            return MetricResult::Err {
                reason: "InvalidMetricSourceType",
                outer: inner.clone(),
                inner,
            };
        }
    };
    let ((name, target), resource) = (source, source.0.as_str());
    let status_of = |current: v2::MetricValueStatus| {
        let mut s = Box::new(v2::MetricStatus {
            type_: spec.type_.clone(),
            ..Default::default()
        });
        match container {
            None => {
                s.resource = Some(v2::ResourceMetricStatus {
                    name: name.clone(),
                    current,
                })
            }
            Some(c) => {
                s.container_resource = Some(v2::ContainerResourceMetricStatus {
                    name: name.clone(),
                    container: c.into(),
                    current,
                })
            }
        }
        s
    };
    let fail = |inner: String| MetricResult::Err {
        reason,
        outer: format!("failed to get {resource} {outer_kind} metric value: {inner}"),
        inner,
    };
    if let Some(avg) = &target.average_value {
        let target_milli = match quantity::millicores(&avg.0) {
            Ok(v) if v > 0 => v,
            _ => return fail(format!("invalid averageValue {:?}", avg.0)),
        };
        return match average_value_replicas(
            current,
            target_milli,
            resource,
            container,
            pods,
            usage,
            cfg,
            now,
        ) {
            Ok(p) => MetricResult::Ok(
                p.replicas,
                format!("{resource} resource"),
                status_of(v2::MetricValueStatus {
                    average_value: Some(Quantity(milli_quantity(p.average))),
                    ..Default::default()
                }),
            ),
            Err(e) => fail(format!("failed to get {resource} usage: {e}")),
        };
    }
    let Some(percent) = target.average_utilization else {
        return fail(
            "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into(),
        );
    };
    match utilization_replicas(current, percent, resource, container, pods, usage, cfg, now) {
        Ok(p) => MetricResult::Ok(
            p.replicas,
            if container.is_some() {
                format!("{resource} container resource utilization (percentage of request)")
            } else {
                format!("{resource} resource utilization (percentage of request)")
            },
            status_of(v2::MetricValueStatus {
                average_utilization: p.utilization,
                average_value: Some(Quantity(milli_quantity(p.average))),
                value: None,
            }),
        ),
        Err(e) => fail(format!("failed to get {resource} utilization: {e}")),
    }
}

/// One sync's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The replica count to write to the target's scale subresource.
    pub rescale: Option<i32>,
    /// The status to write.
    pub status: v2::HorizontalPodAutoscalerStatus,
    pub events: Vec<Event>,
    /// Why it rescales (the `SuccessfulRescale` event's reason).
    pub reason: String,
    current: i32,
    previous_desired: i32,
    previous_scale_time: Option<Time>,
    now: Option<Timestamp>,
}

impl Plan {
    /// The scale update failed: report it as the controller does and forget the rescale.
    pub fn rescale_failed(&mut self, history: &mut History, error: &str) {
        let Some(desired) = self.rescale.take() else {
            return;
        };
        let now = self.now.unwrap_or(Timestamp::UNIX_EPOCH);
        self.events.retain(|e| e.reason != "SuccessfulRescale");
        self.events.push(Event::warning(
            "FailedRescale",
            format!(
                "New size: {desired}; reason: {}; error: {error}",
                self.reason
            ),
        ));
        set_condition(
            &mut self.status,
            "AbleToScale",
            "False",
            "FailedUpdateScale",
            &format!("the HPA controller was unable to update the target scale: {error}"),
            now,
        );
        self.status.desired_replicas = self.previous_desired;
        self.status.last_scale_time = self.previous_scale_time.clone();
        history.forget(self.current, desired, now);
    }
}

/// The decision when the target's scale could not be read (no such Deployment, no scale
/// subresource): `AbleToScale` false with the error, nothing else changes.
pub fn plan_without_scale(hpa: &v2::HorizontalPodAutoscaler, error: &str, now: Timestamp) -> Plan {
    let mut status = hpa.status.clone().unwrap_or_default();
    set_condition(
        &mut status,
        "AbleToScale",
        "False",
        "FailedGetScale",
        &format!("the HPA controller was unable to get the target's current scale: {error}"),
        now,
    );
    Plan {
        status,
        events: vec![Event::warning("FailedGetScale", error)],
        ..Plan::default()
    }
}

/// One sync of an HPA (`reconcileAutoscaler`). `current` is the target's `spec.replicas`,
/// `pods` the pods its selector picks, `usage` their samples; `history` is this HPA's memory.
pub fn plan(
    hpa: &v2::HorizontalPodAutoscaler,
    current: i32,
    pods: &[Pod],
    usage: &Usage,
    history: &mut History,
    cfg: &Config,
    now: Timestamp,
) -> Plan {
    let mut hpa = hpa.clone();
    defaults(&mut hpa);
    let spec = &hpa.spec;
    let previous = hpa.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let mut p = Plan {
        current,
        previous_desired: previous.desired_replicas,
        previous_scale_time: previous.last_scale_time.clone(),
        now: Some(now),
        ..Plan::default()
    };
    set_condition(
        &mut status,
        "AbleToScale",
        "True",
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
        now,
    );
    if history.recommendations.is_empty() {
        history.recommendations.push((now, current));
    }
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let mut metric_statuses = None;
    let desired;
    let mut rescale = true;
    if current == 0 && min != 0 {
        desired = 0;
        rescale = false;
        set_condition(
            &mut status,
            "ScalingActive",
            "False",
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
            now,
        );
    } else if current > max {
        p.reason = "Current number of replicas above Spec.MaxReplicas".into();
        desired = max;
    } else if current < min {
        p.reason = "Current number of replicas below Spec.MinReplicas".into();
        desired = min;
    } else {
        let metrics = spec.metrics.clone().unwrap_or_default();
        let mut statuses = vec![v2::MetricStatus::default(); metrics.len()];
        let (mut proposal, mut metric_name) = (0, String::new());
        let mut first_error: Option<(&'static str, String, String)> = None;
        let mut invalid = 0;
        for (i, m) in metrics.iter().enumerate() {
            match compute_metric(m, current, pods, usage, cfg, now) {
                MetricResult::Ok(replicas, name, s) => {
                    statuses[i] = *s;
                    if proposal == 0 || replicas > proposal {
                        proposal = replicas;
                        metric_name = name;
                    }
                }
                MetricResult::Err {
                    reason,
                    inner,
                    outer,
                } => {
                    p.events.push(Event::warning(reason, inner.clone()));
                    first_error.get_or_insert((reason, inner, outer));
                    invalid += 1;
                }
            }
        }
        if let Some((reason, inner, outer)) = &first_error
            && (invalid >= metrics.len() || proposal < current)
        {
            set_condition(
                &mut status,
                "ScalingActive",
                "False",
                reason,
                &format!("the HPA was unable to compute the replica count: {inner}"),
                now,
            );
            p.events.push(Event::warning(
                "FailedComputeMetricsReplicas",
                format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {outer}",
                    metrics.len()
                ),
            ));
            status.current_replicas = Some(current);
            status.current_metrics = Some(statuses);
            p.status = status;
            return p;
        }
        set_condition(
            &mut status,
            "ScalingActive",
            "True",
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {metric_name}"
            ),
            now,
        );
        metric_statuses = Some(statuses);
        let wanted = proposal.max(0);
        if wanted > current {
            p.reason = format!("{metric_name} above target");
        } else if wanted < current {
            p.reason = "All metrics below target".into();
        }
        desired = match &spec.behavior {
            None => {
                let stabilized = history.stabilize(wanted, cfg.downscale_stabilization, now);
                if stabilized != wanted {
                    set_condition(
                        &mut status,
                        "AbleToScale",
                        "True",
                        "ScaleDownStabilized",
                        "recent recommendations were higher than current one, applying the highest recent recommendation",
                        now,
                    );
                } else {
                    set_condition(
                        &mut status,
                        "AbleToScale",
                        "True",
                        "ReadyForNewScale",
                        "recommended size matches current size",
                        now,
                    );
                }
                let (limited, reason, message) = limit_with_rules(current, stabilized, min, max);
                let value = if limited == stabilized {
                    "False"
                } else {
                    "True"
                };
                set_condition(&mut status, "ScalingLimited", value, reason, message, now);
                limited
            }
            Some(b) => {
                let up = b
                    .scale_up
                    .as_ref()
                    .and_then(|r| r.stabilization_window_seconds)
                    .unwrap_or(0);
                let down = b
                    .scale_down
                    .as_ref()
                    .and_then(|r| r.stabilization_window_seconds)
                    .unwrap_or(cfg.downscale_stabilization.as_secs() as i32);
                let (stabilized, reason, message) =
                    history.stabilize_with_behavior(current, wanted, up, down, now);
                if stabilized != wanted {
                    set_condition(&mut status, "AbleToScale", "True", reason, message, now);
                } else {
                    set_condition(
                        &mut status,
                        "AbleToScale",
                        "True",
                        "ReadyForNewScale",
                        "recommended size matches current size",
                        now,
                    );
                }
                let (limited, reason, message) =
                    limit_with_behavior(current, stabilized, min, max, history, b, now);
                let value = if limited == stabilized {
                    "False"
                } else {
                    "True"
                };
                set_condition(&mut status, "ScalingLimited", value, reason, message, now);
                limited
            }
        };
        rescale = desired != current;
    }
    let desired = if rescale {
        set_condition(
            &mut status,
            "AbleToScale",
            "True",
            "SucceededRescale",
            &format!("the HPA controller was able to update the target scale to {desired}"),
            now,
        );
        p.events.push(Event::normal(
            "SuccessfulRescale",
            format!("New size: {desired}; reason: {}", p.reason),
        ));
        if let Some(b) = &spec.behavior {
            history.store(b, current, desired, now);
        }
        status.last_scale_time = Some(Time(now));
        p.rescale = Some(desired);
        desired
    } else {
        current
    };
    status.current_replicas = Some(current);
    status.desired_replicas = desired;
    status.current_metrics = metric_statuses;
    p.status = status;
    p
}

/// The `TARGETS` column of `kubectl get hpa` (the apiserver's table printer since 1.30):
/// `cpu: 34%/80%`, `cpu: <unknown>/80%`, `memory: 100Mi/500Mi`, at most two entries then
/// `+ N more...`.
pub fn targets_column(
    spec: &v2::HorizontalPodAutoscalerSpec,
    status: Option<&v2::HorizontalPodAutoscalerStatus>,
) -> String {
    let metrics = spec.metrics.as_deref().unwrap_or(&[]);
    if metrics.is_empty() {
        return "<none>".into();
    }
    let statuses = status
        .and_then(|s| s.current_metrics.as_deref())
        .unwrap_or(&[]);
    let unknown = || "<unknown>".to_string();
    let q = |v: &Option<Quantity>| v.as_ref().map(|q| q.0.clone());
    let mut list = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let st = statuses.get(i);
        let entry = match m.type_.as_str() {
            "External" | "Object" => {
                let (target, current) = match m.type_.as_str() {
                    "External" => (
                        m.external.as_ref().map(|e| &e.target),
                        st.and_then(|s| s.external.as_ref()).map(|e| &e.current),
                    ),
                    _ => (
                        m.object.as_ref().map(|o| &o.target),
                        st.and_then(|s| s.object.as_ref()).map(|o| &o.current),
                    ),
                };
                match target {
                    Some(t) if t.average_value.is_some() => format!(
                        "{}/{} (avg)",
                        current
                            .and_then(|c| q(&c.average_value))
                            .unwrap_or_else(unknown),
                        q(&t.average_value).unwrap_or_default()
                    ),
                    t => format!(
                        "{}/{}",
                        current.and_then(|c| q(&c.value)).unwrap_or_else(unknown),
                        t.and_then(|t| q(&t.value)).unwrap_or_default()
                    ),
                }
            }
            "Pods" => format!(
                "{}/{}",
                st.and_then(|s| s.pods.as_ref())
                    .and_then(|p| q(&p.current.average_value))
                    .unwrap_or_else(unknown),
                m.pods
                    .as_ref()
                    .and_then(|p| q(&p.target.average_value))
                    .unwrap_or_default()
            ),
            "Resource" | "ContainerResource" => {
                let (name, target, current) = if m.type_ == "Resource" {
                    (
                        m.resource.as_ref().map(|r| r.name.clone()),
                        m.resource.as_ref().map(|r| &r.target),
                        st.and_then(|s| s.resource.as_ref()).map(|r| &r.current),
                    )
                } else {
                    (
                        m.container_resource.as_ref().map(|r| r.name.clone()),
                        m.container_resource.as_ref().map(|r| &r.target),
                        st.and_then(|s| s.container_resource.as_ref())
                            .map(|r| &r.current),
                    )
                };
                let name = name.unwrap_or_default();
                match target {
                    Some(t) if t.average_value.is_some() => format!(
                        "{name}: {}/{}",
                        current
                            .and_then(|c| q(&c.average_value))
                            .unwrap_or_else(unknown),
                        q(&t.average_value).unwrap_or_default()
                    ),
                    t => format!(
                        "{name}: {}/{}",
                        current
                            .and_then(|c| c.average_utilization)
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(unknown),
                        t.and_then(|t| t.average_utilization)
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(|| "<auto>".into())
                    ),
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(entry);
    }
    if list.len() > 2 {
        let more = list.len() - 2;
        list.truncate(2);
        return format!("{} + {more} more...", list.join(", "));
    }
    list.join(", ")
}

/// autoscaling/v1 to v2: `targetCPUUtilizationPercentage` becomes a CPU `Resource` metric
/// (none when unset: the v2 defaults then give 80 %), the current CPU utilization a metric
/// status.
pub fn v1_to_v2(h: &v1::HorizontalPodAutoscaler) -> v2::HorizontalPodAutoscaler {
    let s = &h.spec;
    v2::HorizontalPodAutoscaler {
        metadata: h.metadata.clone(),
        spec: v2::HorizontalPodAutoscalerSpec {
            scale_target_ref: v2::CrossVersionObjectReference {
                api_version: s.scale_target_ref.api_version.clone(),
                kind: s.scale_target_ref.kind.clone(),
                name: s.scale_target_ref.name.clone(),
            },
            min_replicas: s.min_replicas,
            max_replicas: s.max_replicas,
            metrics: s
                .target_cpu_utilization_percentage
                .map(|t| vec![cpu_utilization(t)]),
            behavior: None,
        },
        status: h
            .status
            .as_ref()
            .map(|st| v2::HorizontalPodAutoscalerStatus {
                current_replicas: Some(st.current_replicas),
                desired_replicas: st.desired_replicas,
                last_scale_time: st.last_scale_time.clone(),
                observed_generation: st.observed_generation,
                current_metrics: st.current_cpu_utilization_percentage.map(|u| {
                    vec![v2::MetricStatus {
                        type_: "Resource".into(),
                        resource: Some(v2::ResourceMetricStatus {
                            name: "cpu".into(),
                            current: v2::MetricValueStatus {
                                average_utilization: Some(u),
                                ..Default::default()
                            },
                        }),
                        ..Default::default()
                    }]
                }),
                conditions: None,
            }),
    }
}

/// autoscaling/v2 to v1: the first CPU utilization target and its current value; other
/// metrics, `behavior` and conditions have no v1 field.
pub fn v2_to_v1(h: &v2::HorizontalPodAutoscaler) -> v1::HorizontalPodAutoscaler {
    let s = &h.spec;
    let target = s.metrics.iter().flatten().find_map(|m| {
        m.resource
            .as_ref()
            .filter(|r| m.type_ == "Resource" && r.name == "cpu")
            .and_then(|r| r.target.average_utilization)
    });
    v1::HorizontalPodAutoscaler {
        metadata: h.metadata.clone(),
        spec: v1::HorizontalPodAutoscalerSpec {
            scale_target_ref: v1::CrossVersionObjectReference {
                api_version: s.scale_target_ref.api_version.clone(),
                kind: s.scale_target_ref.kind.clone(),
                name: s.scale_target_ref.name.clone(),
            },
            min_replicas: s.min_replicas,
            max_replicas: s.max_replicas,
            target_cpu_utilization_percentage: target,
        },
        status: h
            .status
            .as_ref()
            .map(|st| v1::HorizontalPodAutoscalerStatus {
                current_replicas: st.current_replicas.unwrap_or(0),
                desired_replicas: st.desired_replicas,
                last_scale_time: st.last_scale_time.clone(),
                observed_generation: st.observed_generation,
                current_cpu_utilization_percentage: st.current_metrics.iter().flatten().find_map(
                    |m| {
                        m.resource
                            .as_ref()
                            .filter(|r| m.type_ == "Resource" && r.name == "cpu")
                            .and_then(|r| r.current.average_utilization)
                    },
                ),
            }),
    }
}

/// The annotation an autoscaling/v1 object carries its v2 conditions in (as the apiserver
/// does: v1 has no field for them).
pub const V1_CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";

fn is_cpu_utilization(m: &v2::MetricSpec) -> bool {
    m.type_ == "Resource"
        && m.resource
            .as_ref()
            .is_some_and(|r| r.name == "cpu" && r.target.average_utilization.is_some())
}

/// A v1 object written over the stored v2 one: the v1 fields replace theirs (the CPU
/// utilization target among the metrics), what v1 cannot say (other metrics, `behavior`,
/// the status) stays as stored, so a v1 client's update loses nothing.
pub fn v1_over_v2(
    current: Option<&v2::HorizontalPodAutoscaler>,
    h: &v1::HorizontalPodAutoscaler,
) -> v2::HorizontalPodAutoscaler {
    let mut new = v1_to_v2(h);
    if let Some(a) = new.metadata.annotations.as_mut() {
        a.remove(V1_CONDITIONS_ANNOTATION);
        if a.is_empty() {
            new.metadata.annotations = None;
        }
    }
    let Some(cur) = current else {
        return new;
    };
    let mut metrics = new.spec.metrics.take().unwrap_or_default();
    metrics.extend(
        cur.spec
            .metrics
            .iter()
            .flatten()
            .filter(|m| !is_cpu_utilization(m))
            .cloned(),
    );
    new.spec.metrics = (!metrics.is_empty()).then_some(metrics);
    new.spec.behavior = cur.spec.behavior.clone();
    new.status = cur.status.clone();
    new
}

/// A stored v2 object as an autoscaling/v1 client reads it: [`v2_to_v1`], with the
/// conditions in [`V1_CONDITIONS_ANNOTATION`].
pub fn v1_view(h: &v2::HorizontalPodAutoscaler) -> v1::HorizontalPodAutoscaler {
    let mut out = v2_to_v1(h);
    if let Some(c) = h
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .filter(|c| !c.is_empty())
        && let Ok(text) = serde_json::to_string(c)
    {
        out.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(V1_CONDITIONS_ANNOTATION.into(), text);
    }
    out
}

fn validate_target(errs: &mut Vec<String>, path: &str, t: &v2::MetricTarget) {
    if t.type_.is_empty() {
        errs.push(field::required(
            &format!("{path}.type"),
            "must specify a metric target type",
        ));
    }
    if !matches!(t.type_.as_str(), "Utilization" | "Value" | "AverageValue") {
        errs.push(field::invalid(
            &format!("{path}.type"),
            field::quoted(&t.type_),
            "must be either Utilization, Value, or AverageValue",
        ));
    }
    for (name, v) in [("value", &t.value), ("averageValue", &t.average_value)] {
        if let Some(q) = v
            && quantity::parse(&q.0).map_or(true, |x| x <= 0.0)
        {
            errs.push(field::invalid(
                &format!("{path}.{name}"),
                field::quoted(&q.0),
                "must be positive",
            ));
        }
    }
    if let Some(u) = t.average_utilization.filter(|u| *u < 1) {
        errs.push(field::invalid(
            &format!("{path}.averageUtilization"),
            u,
            "must be greater than 0",
        ));
    }
}

fn validate_rules(errs: &mut Vec<String>, path: &str, rules: Option<&v2::HPAScalingRules>) {
    let Some(r) = rules else {
        return;
    };
    if let Some(w) = r.stabilization_window_seconds {
        let p = format!("{path}.stabilizationWindowSeconds");
        if w < 0 {
            errs.push(field::invalid(
                &p,
                w,
                "must be greater than or equal to zero",
            ));
        }
        if w > MAX_STABILIZATION_WINDOW_SECONDS {
            errs.push(field::invalid(&p, w, "must be less than or equal to 3600"));
        }
    }
    if let Some(s) = r.select_policy.as_deref()
        && !matches!(s, "Max" | "Min" | "Disabled")
    {
        errs.push(field::not_supported(
            &format!("{path}.selectPolicy"),
            s,
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = r.policies.as_deref().unwrap_or(&[]);
    if policies.is_empty() {
        errs.push(field::required(
            &format!("{path}.policies"),
            "must specify at least one Policy",
        ));
    }
    for (i, pol) in policies.iter().enumerate() {
        let p = format!("{path}.policies[{i}]");
        if pol.type_ != "Pods" && pol.type_ != "Percent" {
            errs.push(field::not_supported(
                &format!("{p}.type"),
                &pol.type_,
                &["Percent", "Pods"],
            ));
        }
        if pol.value <= 0 {
            errs.push(field::invalid(
                &format!("{p}.value"),
                pol.value,
                "must be greater than zero",
            ));
        }
        if pol.period_seconds <= 0 {
            errs.push(field::invalid(
                &format!("{p}.periodSeconds"),
                pol.period_seconds,
                "must be greater than zero",
            ));
        }
        if pol.period_seconds > MAX_PERIOD_SECONDS {
            errs.push(field::invalid(
                &format!("{p}.periodSeconds"),
                pol.period_seconds,
                "must be less than or equal to 1800",
            ));
        }
    }
}

/// The apiserver's checks of an autoscaling/v2 HPA's spec (`validateHorizontalPodAutoscalerSpec`)
/// for the metric kinds skiff serves (resource and container resource), in its words; empty
/// when valid.
pub fn validate(hpa: &v2::HorizontalPodAutoscaler) -> Vec<String> {
    let mut errs = Vec::new();
    let s = &hpa.spec;
    if let Some(min) = s.min_replicas.filter(|m| *m < 1) {
        errs.push(field::invalid(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
    if s.max_replicas < 1 {
        errs.push(field::invalid(
            "spec.maxReplicas",
            s.max_replicas,
            "must be greater than 0",
        ));
    }
    if s.min_replicas.is_some_and(|min| s.max_replicas < min) {
        errs.push(field::invalid(
            "spec.maxReplicas",
            s.max_replicas,
            "must be greater than or equal to `minReplicas`",
        ));
    }
    if s.scale_target_ref.kind.is_empty() {
        errs.push(field::required("spec.scaleTargetRef.kind", ""));
    }
    if s.scale_target_ref.name.is_empty() {
        errs.push(field::required("spec.scaleTargetRef.name", ""));
    }
    for (i, m) in s.metrics.iter().flatten().enumerate() {
        let path = format!("spec.metrics[{i}]");
        let (source, key) = match m.type_.as_str() {
            "Resource" => (
                m.resource.as_ref().map(|r| (&r.name, &r.target)),
                "resource",
            ),
            "ContainerResource" => (
                m.container_resource.as_ref().map(|r| (&r.name, &r.target)),
                "containerResource",
            ),
            "Pods" | "Object" | "External" => continue,
            "" => {
                errs.push(field::required(
                    &format!("{path}.type"),
                    "must specify a metric source type",
                ));
                continue;
            }
            other => {
                errs.push(field::not_supported(
                    &format!("{path}.type"),
                    other,
                    &[
                        "ContainerResource",
                        "External",
                        "Object",
                        "Pods",
                        "Resource",
                    ],
                ));
                continue;
            }
        };
        let Some((name, target)) = source else {
            errs.push(field::required(
                &format!("{path}.{key}"),
                "must populate information for the given metric source",
            ));
            continue;
        };
        let p = format!("{path}.{key}");
        if name.is_empty() {
            errs.push(field::required(
                &format!("{p}.name"),
                "must specify a resource name",
            ));
        }
        validate_target(&mut errs, &format!("{p}.target"), target);
        match (target.average_utilization, &target.average_value) {
            (None, None) => errs.push(field::required(
                &format!("{p}.target.averageUtilization"),
                "must set either a target raw value or a target utilization",
            )),
            (Some(_), Some(_)) => errs.push(field::forbidden(
                &format!("{p}.target.averageValue"),
                "may not set both a target raw value and a target utilization",
            )),
            _ => {}
        }
    }
    if let Some(b) = &s.behavior {
        validate_rules(&mut errs, "spec.behavior.scaleUp", b.scale_up.as_ref());
        validate_rules(&mut errs, "spec.behavior.scaleDown", b.scale_down.as_ref());
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const NOW: &str = "2026-01-01T01:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn ago(secs: i64) -> Timestamp {
        now() - SignedDuration::from_secs(secs)
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

    /// A running pod, ready and started long ago, whose container `app` requests 500m CPU
    /// and 100Mi memory.
    fn pod(name: &str, extra: Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "web",
                "resources": {"requests": {"cpu": "500m", "memory": "100Mi"}}}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:10Z"}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn pods(n: usize) -> Vec<Pod> {
        (0..n).map(|i| pod(&format!("p{i}"), json!({}))).collect()
    }

    /// CPU usage in millicores per pod, sampled 10 s ago over 30 s.
    fn cpu(samples: &[(&str, i64)]) -> Usage {
        samples
            .iter()
            .map(|(name, milli)| {
                (
                    name.to_string(),
                    PodUsage {
                        timestamp: ago(10),
                        window: SignedDuration::from_secs(30),
                        containers: BTreeMap::from([(
                            "app".to_string(),
                            BTreeMap::from([("cpu".to_string(), *milli)]),
                        )]),
                    },
                )
            })
            .collect()
    }

    fn all_cpu(n: usize, milli: i64) -> Usage {
        let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        cpu(&names
            .iter()
            .map(|n| (n.as_str(), milli))
            .collect::<Vec<_>>())
    }

    fn hpa(extra: Value) -> v2::HorizontalPodAutoscaler {
        let mut v = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 10,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn cond<'a>(s: &'a v2::HorizontalPodAutoscalerStatus, type_: &str) -> (&'a str, &'a str) {
        let c = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.as_str(), c.reason.as_deref().unwrap_or(""))
    }

    fn message<'a>(s: &'a v2::HorizontalPodAutoscalerStatus, type_: &str) -> &'a str {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .and_then(|c| c.message.as_deref())
            .unwrap_or("")
    }

    #[test]
    fn utilization_proposals_follow_the_replica_calculator() {
        let cfg = Config::default();
        let pending = |name: &str| pod(name, json!({"status": {"phase": "Pending"}}));
        let no_request = pod(
            "p2",
            json!({"spec": {"containers": [{"name": "app", "image": "web"}]}}),
        );
        let young = pod(
            "young",
            json!({"status": {"startTime": ago(60).to_string(),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ago(50).to_string()}]}}),
        );
        let mut young_usage = cpu(&[("young", 500), ("p0", 500)]);
        young_usage.get_mut("young").unwrap().timestamp = ago(40);
        let sidecar = pod(
            "p0",
            json!({"spec": {"initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                "resources": {"requests": {"cpu": "500m"}}}]}}),
        );
        let mut sidecar_usage = all_cpu(1, 500);
        sidecar_usage
            .get_mut("p0")
            .unwrap()
            .containers
            .insert("proxy".into(), BTreeMap::from([("cpu".to_string(), 500)]));
        /// (what, current replicas, target %, pods, usage, proposal)
        type Case = (
            &'static str,
            i32,
            i32,
            Vec<Pod>,
            Usage,
            Result<i32, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "80 % of a 50 % target on 3 pods",
                3,
                50,
                pods(3),
                all_cpu(3, 400),
                Ok(5),
            ),
            (
                "52 % is within the tolerance",
                3,
                50,
                pods(3),
                all_cpu(3, 260),
                Ok(3),
            ),
            ("20 % scales down", 3, 50, pods(3), all_cpu(3, 100), Ok(2)),
            (
                "a pod without a sample counts as idle on a scale-up",
                3,
                50,
                pods(3),
                cpu(&[("p0", 500), ("p1", 500)]),
                Ok(4),
            ),
            (
                "...and as fully busy on a scale-down",
                3,
                80,
                pods(3),
                cpu(&[("p0", 50), ("p1", 50)]),
                Ok(2),
            ),
            (
                "a pending pod counts as idle on a scale-up",
                3,
                50,
                vec![pod("p0", json!({})), pod("p1", json!({})), pending("p2")],
                cpu(&[("p0", 500), ("p1", 500)]),
                Ok(4),
            ),
            (
                "...and not at all on a scale-down",
                3,
                80,
                vec![pod("p0", json!({})), pod("p1", json!({})), pending("p2")],
                cpu(&[("p0", 50), ("p1", 50)]),
                Ok(1),
            ),
            (
                "no change when the assumed usage would reverse the direction",
                2,
                100,
                pods(2),
                cpu(&[("p0", 550)]),
                Ok(2),
            ),
            (
                "a young pod's sample from before it was ready is not used",
                2,
                50,
                vec![young, pod("p0", json!({}))],
                young_usage,
                Ok(2),
            ),
            (
                "sidecars' requests and usage count",
                1,
                50,
                vec![sidecar],
                sidecar_usage,
                Ok(2),
            ),
            (
                "every container must request the resource",
                3,
                50,
                vec![pod("p0", json!({})), pod("p1", json!({})), no_request],
                all_cpu(3, 400),
                Err("missing request for cpu in container app of Pod p2"),
            ),
            (
                "no pods",
                1,
                50,
                vec![],
                all_cpu(1, 400),
                Err("no pods returned by selector while calculating replica count"),
            ),
            (
                "only pending pods",
                1,
                50,
                vec![pending("p0")],
                all_cpu(1, 400),
                Err("did not receive metrics for targeted pods (pods might be unready)"),
            ),
            (
                "no samples at all",
                1,
                50,
                pods(1),
                Usage::new(),
                Err(
                    "unable to get metrics for resource cpu: no metrics returned from resource metrics API",
                ),
            ),
        ];
        for (name, current, target, pods, usage, want) in cases {
            let got =
                utilization_replicas(current, target, "cpu", None, &pods, &usage, &cfg, now())
                    .map(|p| p.replicas);
            assert_eq!(got, want.map_err(String::from), "{name}");
        }
        let p = utilization_replicas(3, 50, "cpu", None, &pods(3), &all_cpu(3, 400), &cfg, now())
            .unwrap();
        assert_eq!((p.utilization, p.average), (Some(80), 400));
    }

    #[test]
    fn average_value_targets_divide_usage_by_the_target() {
        let cfg = Config::default();
        let mib = 1024 * 1024 * 1000;
        let usage: Usage = ["p0", "p1"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    PodUsage {
                        timestamp: ago(10),
                        window: SignedDuration::from_secs(30),
                        containers: BTreeMap::from([(
                            "app".to_string(),
                            BTreeMap::from([("memory".to_string(), 200 * mib)]),
                        )]),
                    },
                )
            })
            .collect();
        let p = average_value_replicas(2, 100 * mib, "memory", None, &pods(2), &usage, &cfg, now())
            .unwrap();
        assert_eq!((p.replicas, p.average, p.utilization), (4, 200 * mib, None));
        assert_eq!(milli_quantity(p.average), "209715200");
        let p = average_value_replicas(2, 195 * mib, "memory", None, &pods(2), &usage, &cfg, now())
            .unwrap();
        assert_eq!(p.replicas, 2, "within the tolerance");
    }

    #[test]
    fn a_scale_up_rescales_and_reports_as_the_controller() {
        let mut h = History::default();
        let p = plan(
            &hpa(json!({})),
            1,
            &pods(1),
            &all_cpu(1, 1000),
            &mut h,
            &Config::default(),
            now(),
        );
        assert_eq!(p.rescale, Some(4));
        assert_eq!(
            p.events,
            [Event::normal(
                "SuccessfulRescale",
                "New size: 4; reason: cpu resource utilization (percentage of request) above target"
            )]
        );
        let s = &p.status;
        assert_eq!((s.current_replicas, s.desired_replicas), (Some(1), 4));
        assert_eq!(s.last_scale_time, Some(Time(now())));
        assert_eq!(cond(s, "AbleToScale"), ("True", "SucceededRescale"));
        assert_eq!(
            message(s, "AbleToScale"),
            "the HPA controller was able to update the target scale to 4"
        );
        assert_eq!(cond(s, "ScalingActive"), ("True", "ValidMetricFound"));
        assert_eq!(
            message(s, "ScalingActive"),
            "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
        );
        assert_eq!(cond(s, "ScalingLimited"), ("False", "DesiredWithinRange"));
        let current = &s.current_metrics.as_ref().unwrap()[0]
            .resource
            .as_ref()
            .unwrap()
            .current;
        assert_eq!(current.average_utilization, Some(200));
        assert_eq!(current.average_value, Some(Quantity("1".into())));
        assert_eq!(
            targets_column(&hpa(json!({})).spec, Some(s)),
            "cpu: 200%/50%"
        );

        // The update failed: the controller says so and forgets the rescale.
        let mut failed = p.clone();
        failed.rescale_failed(&mut h, "conflict");
        assert_eq!(failed.rescale, None);
        assert_eq!(failed.status.desired_replicas, 0);
        assert_eq!(failed.status.last_scale_time, None);
        assert_eq!(
            cond(&failed.status, "AbleToScale"),
            ("False", "FailedUpdateScale")
        );
        assert_eq!(
            failed.events,
            [Event::warning(
                "FailedRescale",
                "New size: 4; reason: cpu resource utilization (percentage of request) above target; error: conflict"
            )]
        );
    }

    #[test]
    fn limits_cap_the_desired_count_with_their_reasons() {
        let cfg = Config::default();
        let cases = [
            // (name, hpa, current, usage per pod, rescale, ScalingLimited)
            (
                "at most double, or 4",
                hpa(json!({})),
                2,
                2500,
                Some(4),
                ("True", "ScaleUpLimit"),
            ),
            (
                "maxReplicas",
                hpa(json!({"spec": {"maxReplicas": 3}})),
                2,
                2500,
                Some(3),
                ("True", "TooManyReplicas"),
            ),
            (
                "within range",
                hpa(json!({})),
                3,
                400,
                Some(5),
                ("False", "DesiredWithinRange"),
            ),
        ];
        for (name, h, current, usage, rescale, limited) in cases {
            let p = plan(
                &h,
                current,
                &pods(current as usize),
                &all_cpu(current as usize, usage),
                &mut History::default(),
                &cfg,
                now(),
            );
            assert_eq!(p.rescale, rescale, "{name}");
            assert_eq!(cond(&p.status, "ScalingLimited"), limited, "{name}");
        }
        // Out of range replicas are brought back without looking at metrics.
        let p = plan(
            &hpa(json!({})),
            12,
            &[],
            &Usage::new(),
            &mut History::default(),
            &cfg,
            now(),
        );
        assert_eq!(p.rescale, Some(10));
        assert_eq!(
            p.reason,
            "Current number of replicas above Spec.MaxReplicas"
        );
        let p = plan(
            &hpa(json!({"spec": {"minReplicas": 3}})),
            1,
            &[],
            &Usage::new(),
            &mut History::default(),
            &cfg,
            now(),
        );
        assert_eq!(p.rescale, Some(3));
        assert_eq!(
            p.reason,
            "Current number of replicas below Spec.MinReplicas"
        );
        // A target scaled to zero is left alone.
        let p = plan(
            &hpa(json!({})),
            0,
            &[],
            &Usage::new(),
            &mut History::default(),
            &cfg,
            now(),
        );
        assert_eq!(p.rescale, None);
        assert_eq!(
            cond(&p.status, "ScalingActive"),
            ("False", "ScalingDisabled")
        );
    }

    #[test]
    fn scale_down_waits_out_the_stabilization_window() {
        let cfg = Config::default();
        let h = hpa(json!({"spec": {"minReplicas": 2}}));
        let mut history = History::default();
        let t0 = now();
        let at = |secs: i64| t0 + SignedDuration::from_secs(secs);
        let idle = all_cpu(4, 50);
        let steps = [
            (0, None, ("True", "ScaleDownStabilized")),
            (200, None, ("True", "ScaleDownStabilized")),
            (301, Some(2), ("True", "SucceededRescale")),
        ];
        let mut last = None;
        for (secs, rescale, able) in steps {
            let p = plan(&h, 4, &pods(4), &idle, &mut history, &cfg, at(secs));
            assert_eq!(p.rescale, rescale, "after {secs} s");
            assert_eq!(cond(&p.status, "AbleToScale"), able, "after {secs} s");
            last = Some(p);
        }
        let p = last.unwrap();
        assert_eq!(p.reason, "All metrics below target");
        assert_eq!(
            cond(&p.status, "ScalingLimited"),
            ("True", "TooFewReplicas")
        );
        assert_eq!(
            message(&p.status, "ScalingLimited"),
            "the desired replica count is less than the minimum replica count"
        );
    }

    #[test]
    fn behavior_policies_limit_each_period() {
        let cfg = Config::default();
        let t0 = now();
        let at = |secs: i64| t0 + SignedDuration::from_secs(secs);
        // Default behavior: 4 pods or 100 % per 15 s, the larger.
        let h = hpa(json!({"spec": {"maxReplicas": 20, "behavior": {}}}));
        let mut history = History::default();
        let p = plan(
            &h,
            2,
            &pods(2),
            &all_cpu(2, 5000),
            &mut history,
            &cfg,
            at(0),
        );
        assert_eq!(p.rescale, Some(6));
        assert_eq!(cond(&p.status, "ScalingLimited"), ("True", "ScaleUpLimit"));
        let p = plan(
            &h,
            6,
            &pods(6),
            &all_cpu(6, 5000),
            &mut history,
            &cfg,
            at(5),
        );
        assert_eq!(p.rescale, None, "this period already added 4");
        assert_eq!(cond(&p.status, "ScalingLimited"), ("True", "ScaleUpLimit"));
        let p = plan(
            &h,
            6,
            &pods(6),
            &all_cpu(6, 5000),
            &mut history,
            &cfg,
            at(16),
        );
        assert_eq!(p.rescale, Some(12), "a new period: 100 % beats 4 pods");

        let cases = [
            (
                "scale-up disabled",
                json!({"scaleUp": {"selectPolicy": "Disabled"}}),
                2,
                5000,
                None,
                ("True", "ScaleUpLimit"),
            ),
            (
                "one pod per minute down",
                json!({"scaleDown": {"stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}),
                5,
                10,
                Some(4),
                ("True", "ScaleDownLimit"),
            ),
            (
                "Min picks the smaller change",
                json!({"scaleUp": {"selectPolicy": "Min", "policies": [
                    {"type": "Pods", "value": 1, "periodSeconds": 60},
                    {"type": "Percent", "value": 100, "periodSeconds": 60}]}}),
                2,
                5000,
                Some(3),
                ("True", "ScaleUpLimit"),
            ),
        ];
        for (name, behavior, current, usage, rescale, limited) in cases {
            let h = hpa(json!({"spec": {"maxReplicas": 20, "behavior": behavior}}));
            let p = plan(
                &h,
                current,
                &pods(current as usize),
                &all_cpu(current as usize, usage),
                &mut History::default(),
                &cfg,
                at(0),
            );
            assert_eq!(p.rescale, rescale, "{name}");
            assert_eq!(cond(&p.status, "ScalingLimited"), limited, "{name}");
        }
        // A scale-up window keeps the lowest recent recommendation.
        let h = hpa(json!({"spec": {"behavior": {"scaleUp": {"stabilizationWindowSeconds": 60}}}}));
        let mut history = History::default();
        let p = plan(&h, 2, &pods(2), &all_cpu(2, 250), &mut history, &cfg, at(0));
        assert_eq!(p.rescale, None);
        let p = plan(
            &h,
            2,
            &pods(2),
            &all_cpu(2, 1000),
            &mut history,
            &cfg,
            at(30),
        );
        assert_eq!(p.rescale, None);
        assert_eq!(
            cond(&p.status, "AbleToScale"),
            ("True", "ScaleUpStabilized")
        );
        let p = plan(
            &h,
            2,
            &pods(2),
            &all_cpu(2, 1000),
            &mut history,
            &cfg,
            at(91),
        );
        // Out of the window: 8 wanted, the default scale-up policy allows 2 + 4.
        assert_eq!(p.rescale, Some(6));
    }

    #[test]
    fn metrics_that_cannot_be_computed_stop_scaling_with_the_controllers_words() {
        let cfg = Config::default();
        let bare = pod(
            "p0",
            json!({"spec": {"containers": [{"name": "app", "image": "web"}]}}),
        );
        let mut h = hpa(json!({}));
        h.status = Some(v2::HorizontalPodAutoscalerStatus {
            desired_replicas: 3,
            ..Default::default()
        });
        let p = plan(
            &h,
            3,
            &[bare],
            &all_cpu(1, 100),
            &mut History::default(),
            &cfg,
            now(),
        );
        assert_eq!(p.rescale, None);
        assert_eq!(p.status.desired_replicas, 3);
        assert_eq!(
            cond(&p.status, "ScalingActive"),
            ("False", "FailedGetResourceMetric")
        );
        assert_eq!(
            message(&p.status, "ScalingActive"),
            "the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container app of Pod p0"
        );
        assert_eq!(
            p.events,
            [
                Event::warning(
                    "FailedGetResourceMetric",
                    "failed to get cpu utilization: missing request for cpu in container app of Pod p0"
                ),
                Event::warning(
                    "FailedComputeMetricsReplicas",
                    "invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value: failed to get cpu utilization: missing request for cpu in container app of Pod p0"
                ),
            ]
        );
        assert_eq!(
            targets_column(&h.spec, Some(&p.status)),
            "cpu: <unknown>/50%"
        );
        // A custom metric skiff cannot serve.
        let pods_metric = hpa(json!({"spec": {"metrics": [{"type": "Pods", "pods": {
            "metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}]}}));
        let p = plan(
            &pods_metric,
            2,
            &pods(2),
            &all_cpu(2, 100),
            &mut History::default(),
            &cfg,
            now(),
        );
        assert_eq!(
            cond(&p.status, "ScalingActive"),
            ("False", "FailedGetPodsMetric")
        );
        // The target is missing.
        let p = plan_without_scale(&h, "deployments.apps \"web\" not found", now());
        assert_eq!(cond(&p.status, "AbleToScale"), ("False", "FailedGetScale"));
        assert_eq!(
            message(&p.status, "AbleToScale"),
            "the HPA controller was unable to get the target's current scale: deployments.apps \"web\" not found"
        );
    }

    #[test]
    fn the_largest_proposal_of_several_metrics_wins() {
        let cfg = Config::default();
        let h = hpa(json!({"spec": {"metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 50}}}]}}));
        let mut usage = all_cpu(2, 250);
        for u in usage.values_mut() {
            u.containers
                .get_mut("app")
                .unwrap()
                .insert("memory".into(), 100 * 1024 * 1024 * 1000);
        }
        let p = plan(
            &h,
            2,
            &pods(2),
            &usage,
            &mut History::default(),
            &cfg,
            now(),
        );
        assert_eq!(p.rescale, Some(4));
        assert_eq!(
            p.reason,
            "memory resource utilization (percentage of request) above target"
        );
        assert_eq!(
            targets_column(&h.spec, Some(&p.status)),
            "cpu: 50%/50%, memory: 100%/50%"
        );
    }

    #[test]
    fn condition_times_move_only_when_the_status_changes() {
        let cfg = Config::default();
        let mut history = History::default();
        let t0 = now();
        let p = plan(
            &hpa(json!({})),
            3,
            &pods(3),
            &all_cpu(3, 260),
            &mut history,
            &cfg,
            t0,
        );
        let mut h = hpa(json!({}));
        h.status = Some(p.status.clone());
        let later = t0 + SignedDuration::from_secs(15);
        let p2 = plan(&h, 3, &pods(3), &all_cpu(3, 260), &mut history, &cfg, later);
        let time = |s: &v2::HorizontalPodAutoscalerStatus, t: &str| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&p2.status, "ScalingActive"), Some(Time(t0)));
        assert_eq!(time(&p2.status, "AbleToScale"), Some(Time(t0)));
    }

    #[test]
    fn the_targets_column_prints_as_kubectl_get_hpa() {
        let resource = |name: &str, target: Value| json!({"type": "Resource", "resource": {"name": name, "target": target}});
        let util = |n: i32| json!({"type": "Utilization", "averageUtilization": n});
        let spec = |metrics: Vec<Value>| hpa(json!({"spec": {"metrics": metrics}})).spec;
        let status = |metrics: Value| -> v2::HorizontalPodAutoscalerStatus {
            serde_json::from_value(json!({"desiredReplicas": 1, "currentMetrics": metrics}))
                .unwrap()
        };
        let cpu34 = json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 34}}}]);
        let cases = [
            (
                spec(vec![resource("cpu", util(80))]),
                Some(status(cpu34.clone())),
                "cpu: 34%/80%",
            ),
            (
                spec(vec![resource("cpu", util(80))]),
                None,
                "cpu: <unknown>/80%",
            ),
            (
                spec(vec![resource(
                    "memory",
                    json!({"type": "AverageValue", "averageValue": "500Mi"}),
                )]),
                Some(status(
                    json!([{"type": "Resource", "resource": {"name": "memory",
                    "current": {"averageValue": "104857600"}}}]),
                )),
                "memory: 104857600/500Mi",
            ),
            (
                spec(vec![
                    resource("cpu", util(80)),
                    resource("memory", util(70)),
                    resource("cpu", util(60)),
                ]),
                Some(status(cpu34)),
                "cpu: 34%/80%, memory: <unknown>/70% + 1 more...",
            ),
            (
                spec(vec![
                    json!({"type": "Pods", "pods": {"metric": {"name": "qps"},
                    "target": {"type": "AverageValue", "averageValue": "10"}}}),
                ]),
                None,
                "<unknown>/10",
            ),
            (
                spec(vec![
                    json!({"type": "External", "external": {"metric": {"name": "queue"},
                    "target": {"type": "AverageValue", "averageValue": "30"}}}),
                ]),
                None,
                "<unknown>/30 (avg)",
            ),
        ];
        for (s, st, want) in cases {
            assert_eq!(targets_column(&s, st.as_ref()), want);
        }
        let mut empty = spec(vec![]);
        empty.metrics = None;
        assert_eq!(targets_column(&empty, None), "<none>");
    }

    #[test]
    fn milli_quantities_print_canonically() {
        let cases = [
            (0, "0"),
            (4, "4m"),
            (1500, "1500m"),
            (1000, "1"),
            (2_000_000, "2k"),
            (104_857_600_000, "104857600"),
            (3_000_000_000, "3M"),
        ];
        for (milli, want) in cases {
            assert_eq!(milli_quantity(milli), want);
        }
    }

    #[test]
    fn v1_and_v2_convert_the_cpu_target_both_ways() {
        let v1: v1::HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"name": "php-apache"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "php-apache"},
                     "minReplicas": 1, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50},
            "status": {"currentReplicas": 2, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 75}
        }))
        .unwrap();
        let v2 = v1_to_v2(&v1);
        assert_eq!(targets_column(&v2.spec, v2.status.as_ref()), "cpu: 75%/50%");
        assert_eq!(v2.status.as_ref().unwrap().current_replicas, Some(2));
        let back = v2_to_v1(&v2);
        assert_eq!(back, v1);
        // No target: none in v2 either, and the v2 defaults give 80 %.
        let mut bare = v1.clone();
        bare.spec.target_cpu_utilization_percentage = None;
        let mut v2 = v1_to_v2(&bare);
        assert_eq!(v2.spec.metrics, None);
        defaults(&mut v2);
        assert_eq!(targets_column(&v2.spec, None), "cpu: <unknown>/80%");
    }

    #[test]
    fn a_v1_update_keeps_what_v1_cannot_say() {
        let mut stored = hpa(json!({"spec": {"behavior": {"scaleDown": {"selectPolicy": "Min"}}}}));
        stored.spec.metrics = Some(vec![
            cpu_utilization(50),
            v2::MetricSpec {
                type_: "Resource".into(),
                resource: Some(v2::ResourceMetricSource {
                    name: "memory".into(),
                    target: v2::MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(60),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            },
        ]);
        stored.status = Some(v2::HorizontalPodAutoscalerStatus {
            desired_replicas: 2,
            conditions: Some(vec![v2::HorizontalPodAutoscalerCondition {
                type_: "AbleToScale".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mut read = v1_view(&stored);
        assert_eq!(read.spec.target_cpu_utilization_percentage, Some(50));
        assert!(
            read.metadata.annotations.as_ref().unwrap()[V1_CONDITIONS_ANNOTATION]
                .contains("AbleToScale")
        );
        read.spec.target_cpu_utilization_percentage = Some(70);
        read.spec.max_replicas = 7;
        let written = v1_over_v2(Some(&stored), &read);
        assert_eq!(written.spec.max_replicas, 7);
        let metrics = written.spec.metrics.as_ref().unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0], cpu_utilization(70));
        assert_eq!(metrics[1].resource.as_ref().unwrap().name, "memory");
        assert_eq!(written.spec.behavior, stored.spec.behavior);
        assert_eq!(written.status, stored.status);
        assert!(written.metadata.annotations.is_none());
    }

    #[test]
    fn defaults_fill_what_a_behavior_leaves_out() {
        let mut h = hpa(
            json!({"spec": {"minReplicas": null, "behavior": {"scaleDown": {"selectPolicy": "Min"}}}}),
        );
        defaults(&mut h);
        assert_eq!(h.spec.min_replicas, Some(1));
        let b = h.spec.behavior.unwrap();
        let up = b.scale_up.unwrap();
        assert_eq!(up.stabilization_window_seconds, Some(0));
        assert_eq!(
            up.policies.unwrap(),
            [policy("Pods", 4, 15), policy("Percent", 100, 15)]
        );
        let down = b.scale_down.unwrap();
        assert_eq!(down.select_policy.as_deref(), Some("Min"));
        assert_eq!(
            down.stabilization_window_seconds, None,
            "the controller's flag decides"
        );
        assert_eq!(down.policies.unwrap(), [policy("Percent", 100, 15)]);
    }

    #[test]
    fn validation_refuses_with_the_apiservers_messages() {
        let cases = [
            (json!({}), vec![]),
            (
                json!({"minReplicas": 0}),
                vec!["spec.minReplicas: Invalid value: 0: must be greater than or equal to 1"],
            ),
            (
                json!({"minReplicas": 7, "maxReplicas": 5}),
                vec![
                    "spec.maxReplicas: Invalid value: 5: must be greater than or equal to `minReplicas`",
                ],
            ),
            (
                json!({"minReplicas": 1, "maxReplicas": 0}),
                vec![
                    "spec.maxReplicas: Invalid value: 0: must be greater than 0",
                    "spec.maxReplicas: Invalid value: 0: must be greater than or equal to `minReplicas`",
                ],
            ),
            (
                json!({"scaleTargetRef": {"kind": "", "name": ""}}),
                vec![
                    "spec.scaleTargetRef.kind: Required value",
                    "spec.scaleTargetRef.name: Required value",
                ],
            ),
            (
                json!({"metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 0}}}]}),
                vec![
                    "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0",
                ],
            ),
            (
                json!({"metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50, "averageValue": "100m"}}}]}),
                vec![
                    "spec.metrics[0].resource.target.averageValue: Forbidden: may not set both a target raw value and a target utilization",
                ],
            ),
            (
                json!({"behavior": {"scaleUp": {"stabilizationWindowSeconds": -1, "selectPolicy": "Most",
                    "policies": [{"type": "Pods", "value": 0, "periodSeconds": 1801}]}}}),
                vec![
                    "spec.behavior.scaleUp.stabilizationWindowSeconds: Invalid value: -1: must be greater than or equal to zero",
                    "spec.behavior.scaleUp.selectPolicy: Unsupported value: \"Most\": supported values: \"Disabled\", \"Max\", \"Min\"",
                    "spec.behavior.scaleUp.policies[0].value: Invalid value: 0: must be greater than zero",
                    "spec.behavior.scaleUp.policies[0].periodSeconds: Invalid value: 1801: must be less than or equal to 1800",
                ],
            ),
            (
                json!({"behavior": {"scaleDown": {"policies": []}}}),
                vec![
                    "spec.behavior.scaleDown.policies: Required value: must specify at least one Policy",
                ],
            ),
        ];
        for (spec, want) in cases {
            let h = hpa(json!({"spec": spec.clone()}));
            assert_eq!(validate(&h), want, "{spec}");
        }
    }
}
