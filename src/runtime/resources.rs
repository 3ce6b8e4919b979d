//! Requests and limits: cgroup values, QoS class and the pod's total request.

use k8s_openapi::api::core::v1::{Container, Pod};

/// cgroup settings for one container (libcontainer maps them to v1 or v2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroup {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

use crate::kube::resources::amounts;

/// The container's cgroup values, as the kubelet computes them.
pub fn cgroup(c: &Container, pids_limit: Option<i64>) -> Result<Cgroup, String> {
    let ((req_cpu, _), (lim_cpu, lim_mem)) = amounts(c)?;
    let shares = match req_cpu {
        Some(m) => (m as u64 * 1024 / 1000).max(2),
        None => 2,
    };
    let (quota, period) = match lim_cpu {
        Some(m) => (Some((m * 100).max(1000)), Some(100_000)),
        None => (None, None),
    };
    Ok(Cgroup {
        cpu_shares: Some(shares),
        cpu_quota: quota,
        cpu_period: period,
        memory_limit: lim_mem,
        pids_limit,
    })
}

/// The pod's QoS class: Guaranteed, Burstable or BestEffort.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    // With pod-level resources, they alone decide (Guaranteed: both limits, requests equal).
    if let Some(((rc, rm), (lc, lm))) = crate::kube::pod_resources::pod_amounts(pod) {
        return if lc.is_some() && lm.is_some() && rc == lc && rm == lm {
            "Guaranteed"
        } else {
            "Burstable"
        };
    }
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let Ok(((rc, rm), (lc, lm))) = amounts(c) else {
            return "Burstable";
        };
        if rc.is_some() || rm.is_some() || lc.is_some() || lm.is_some() {
            any = true;
        }
        if !(lc.is_some() && lm.is_some() && rc == lc && rm == lm) {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// What the pod asks of the node, per resource (the scheduler's rule): the larger of the
/// app containers' sum and the biggest init container's. Sidecars run alongside both: each
/// adds to the app containers' sum and to every init container declared after it.
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else {
        return (0, 0);
    };
    let req = |c: &Container| {
        amounts(c)
            .map(|(r, _)| (r.0.unwrap_or(0), r.1.unwrap_or(0)))
            .unwrap_or((0, 0))
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let (a, b) = req(c);
        cpu += a;
        mem += b;
    }
    let (mut side_cpu, mut side_mem) = (0, 0);
    let (mut init_cpu, mut init_mem) = (0, 0);
    for c in spec.init_containers.iter().flatten() {
        let (a, b) = req(c);
        if c.restart_policy.as_deref() == Some("Always") {
            side_cpu += a;
            side_mem += b;
            init_cpu = init_cpu.max(side_cpu);
            init_mem = init_mem.max(side_mem);
        } else {
            init_cpu = init_cpu.max(a + side_cpu);
            init_mem = init_mem.max(b + side_mem);
        }
    }
    cpu = (cpu + side_cpu).max(init_cpu);
    mem = (mem + side_mem).max(init_mem);
    // Pod-level requests, where set, are what the pod asks for.
    if let Some(((pc, pm), _)) = crate::kube::pod_resources::pod_amounts(pod) {
        cpu = pc.unwrap_or(cpu);
        mem = pm.unwrap_or(mem);
    }
    (cpu, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&pod("spec: {containers: [{name: a}]}")),
            "BestEffort"
        );
        assert_eq!(
            qos_class(&pod(
                "spec: {containers: [{name: a, resources: {limits: {cpu: 1, memory: 1Gi}}}]}"
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(
                "spec: {containers: [{name: a, resources: {limits: {cpu: 1, memory: 1Gi}, requests: {cpu: 500m}}}]}"
            )),
            "Burstable"
        );
        assert_eq!(
            qos_class(&pod(
                "spec: {containers: [{name: a, resources: {limits: {cpu: 1, memory: 1Gi}}}, {name: b}]}"
            )),
            "Burstable"
        );
    }

    #[test]
    fn cgroup_values_follow_the_kubelet() {
        let p = pod(
            "spec: {containers: [{name: a, resources: {requests: {cpu: 250m}, limits: {cpu: 500m, memory: 64Mi}}}]}",
        );
        let cg = cgroup(&p.spec.unwrap().containers[0], Some(1024)).unwrap();
        assert_eq!(cg.cpu_shares, Some(256));
        assert_eq!(cg.cpu_quota, Some(50_000));
        assert_eq!(cg.cpu_period, Some(100_000));
        assert_eq!(cg.memory_limit, Some(64 << 20));
        assert_eq!(cg.pids_limit, Some(1024));
        let p = pod("spec: {containers: [{name: a}]}");
        assert_eq!(
            cgroup(&p.spec.unwrap().containers[0], None)
                .unwrap()
                .cpu_shares,
            Some(2)
        );
        let p = pod(
            "spec: {containers: [{name: a, resources: {requests: {cpu: 2}, limits: {cpu: 1}}}]}",
        );
        assert!(
            cgroup(&p.spec.unwrap().containers[0], None)
                .unwrap_err()
                .contains("less than or equal")
        );
    }

    #[test]
    fn pod_requests_take_the_larger_of_init_and_apps() {
        let p = pod(
            "spec:\n  initContainers: [{name: i, resources: {requests: {cpu: '3', memory: 1Gi}}}]\n  containers: [{name: a, resources: {requests: {cpu: '1', memory: 2Gi}}}, {name: b, resources: {limits: {cpu: '1', memory: 1Gi}}}]",
        );
        assert_eq!(pod_requests(&p), (3000, 3 << 30));
    }

    #[test]
    fn sidecars_add_to_the_apps_and_to_the_init_containers_after_them() {
        // Init i (2 CPU) runs beside sidecar s (1 CPU): 3; the apps (1) beside s: 2.
        let p = pod(
            "spec:\n  initContainers: [{name: s, restartPolicy: Always, resources: {requests: {cpu: '1', memory: 1Gi}}}, {name: i, resources: {requests: {cpu: '2', memory: 1Gi}}}]\n  containers: [{name: a, resources: {requests: {cpu: '1', memory: 4Gi}}}]",
        );
        assert_eq!(pod_requests(&p), (3000, 5 << 30));
        // An init container before the sidecar does not run beside it.
        let p = pod(
            "spec:\n  initContainers: [{name: i, resources: {requests: {cpu: '2'}}}, {name: s, restartPolicy: Always, resources: {requests: {cpu: '1'}}}]\n  containers: [{name: a, resources: {requests: {cpu: 500m}}}]",
        );
        assert_eq!(pod_requests(&p), (2000, 0));
    }
}
