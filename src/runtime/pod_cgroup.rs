//! Pod-level resources (`spec.resources`, Kubernetes' PodLevelResources): validated as the
//! apiserver does, counted at admission and for the QoS class instead of the containers'
//! sum, and enforced on the pod's cgroup (`/skiff/pod<uid>`), the parent of its
//! containers' cgroups, so the containers together stay within them.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::resources::{Cgroup, amounts};

/// ((cpu, memory) requests, (cpu, memory) limits), as [`amounts`] gives them.
pub type Amounts = ((Option<i64>, Option<i64>), (Option<i64>, Option<i64>));

/// The pod-level resources as a container's, to reuse the container arithmetic.
fn as_container(pod: &Pod) -> Option<Container> {
    let r = pod.spec.as_ref()?.resources.clone()?;
    Some(Container {
        name: "pod".into(),
        resources: Some(r),
        ..Default::default()
    })
}

/// ((cpu, memory) requests, (cpu, memory) limits) of the pod level, when it has any.
pub fn pod_amounts(pod: &Pod) -> Option<Amounts> {
    let c = as_container(pod)?;
    let a = amounts(&c).ok()?;
    (a.0.0.is_some() || a.0.1.is_some() || a.1.0.is_some() || a.1.1.is_some()).then_some(a)
}

/// Validates `spec.resources` as the apiserver does.
pub fn validate(pod: &Pod) -> Result<(), String> {
    let Some(c) = as_container(pod) else {
        return Ok(());
    };
    let r = c.resources.clone().unwrap_or_default();
    for (which, m) in [("requests", &r.requests), ("limits", &r.limits)] {
        for k in m.iter().flatten().map(|(k, _)| k) {
            if k != "cpu" && k != "memory" {
                return Err(format!(
                    "spec.resources.{which}[{k}]: Unsupported value: {k:?}: supported values: \"cpu\", \"memory\""
                ));
            }
        }
    }
    let ((req_cpu, req_mem), (lim_cpu, lim_mem)) = amounts(&c)
        .map_err(|e| format!("spec.{}", e.strip_prefix("container pod: ").unwrap_or(&e)))?;
    let spec = pod.spec.as_ref().expect("as_container checked the spec");
    // Pod-level requests cover the containers' together; its limits each container's.
    let containers: Vec<_> = spec
        .containers
        .iter()
        .filter_map(|c| amounts(c).ok())
        .collect();
    let sum = |f: fn(&Amounts) -> Option<i64>| containers.iter().filter_map(f).sum::<i64>();
    for (name, want, agg) in [
        ("cpu", req_cpu, sum(|a| a.0.0)),
        ("memory", req_mem, sum(|a| a.0.1)),
    ] {
        if let Some(v) = want
            && v < agg
        {
            return Err(format!(
                "spec.resources.requests[{name}]: Invalid value: {}: must be greater than or equal to aggregate container requests of {}",
                show(name, v),
                show(name, agg)
            ));
        }
    }
    for (name, limit, pick) in [
        (
            "cpu",
            lim_cpu,
            (|a: &Amounts| a.1.0) as fn(&_) -> Option<i64>,
        ),
        ("memory", lim_mem, |a| a.1.1),
    ] {
        let Some(limit) = limit else { continue };
        if let Some(max) = containers
            .iter()
            .filter_map(pick)
            .max()
            .filter(|m| *m > limit)
        {
            return Err(format!(
                "spec.resources.limits[{name}]: Invalid value: {}: must be greater than or equal to the limit of every container ({} set on a container)",
                show(name, limit),
                show(name, max)
            ));
        }
    }
    Ok(())
}

fn show(resource: &str, v: i64) -> String {
    if resource == "cpu" {
        format!("{v}m")
    } else {
        v.to_string()
    }
}

/// The pod cgroup's values: shares from the requests, quota and memory limit from the limits.
pub fn values(pod: &Pod) -> Option<Cgroup> {
    let ((req_cpu, _), (lim_cpu, lim_mem)) = pod_amounts(pod)?;
    Some(Cgroup {
        cpu_shares: req_cpu.map(|m| (m as u64 * 1024 / 1000).max(2)),
        cpu_quota: lim_cpu.map(|m| (m * 100).max(1000)),
        cpu_period: lim_cpu.map(|_| 100_000),
        memory_limit: lim_mem,
        pids_limit: None,
    })
}

/// Writes the pod-level resources on `/skiff/pod<uid>` under `base` (`/sys/fs/cgroup`), in
/// the cgroup v2 hierarchy or the v1 `cpu` and `memory` ones, whichever the host uses (the
/// same choice the container runtime makes). Idempotent: called before each container start.
pub fn apply(base: &Path, uid: &str, pod: &Pod) -> Result<(), String> {
    let Some(v) = values(pod) else { return Ok(()) };
    let rel = PathBuf::from("skiff").join(format!("pod{uid}"));
    let write = |dir: &Path, file: &str, value: String| -> Result<(), String> {
        fs::create_dir_all(dir)
            .map_err(|e| format!("creating the pod cgroup {}: {e}", dir.display()))?;
        fs::write(dir.join(file), &value).map_err(|e| {
            format!(
                "setting {file}={value} on the pod cgroup {}: {e}",
                dir.display()
            )
        })
    };
    if base.join("cgroup.controllers").exists() {
        // v2: the controllers must be handed down to skiff's subtree first.
        let _ = fs::create_dir_all(base.join("skiff"));
        for d in [base.to_path_buf(), base.join("skiff")] {
            let _ = fs::write(d.join("cgroup.subtree_control"), "+cpu +memory");
        }
        let dir = base.join(&rel);
        if let Some(m) = v.memory_limit {
            write(&dir, "memory.max", m.to_string())?;
        }
        if let (Some(q), Some(p)) = (v.cpu_quota, v.cpu_period) {
            write(&dir, "cpu.max", format!("{q} {p}"))?;
        }
        if let Some(s) = v.cpu_shares {
            // runc's conversion of cgroup v1 shares to a v2 weight.
            write(
                &dir,
                "cpu.weight",
                (1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142).to_string(),
            )?;
        }
    } else {
        if let Some(m) = v.memory_limit {
            write(
                &base.join("memory").join(&rel),
                "memory.limit_in_bytes",
                m.to_string(),
            )?;
        }
        let cpu = base.join("cpu").join(&rel);
        if let (Some(q), Some(p)) = (v.cpu_quota, v.cpu_period) {
            write(&cpu, "cpu.cfs_period_us", p.to_string())?;
            write(&cpu, "cpu.cfs_quota_us", q.to_string())?;
        }
        if let Some(s) = v.cpu_shares {
            write(&cpu, "cpu.shares", s.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn validation_follows_the_apiserver() {
        let ok = pod(
            "spec:\n  resources: {requests: {cpu: 500m, memory: 128Mi}, limits: {cpu: 2, memory: 128Mi}}\n  containers: [{name: a, resources: {requests: {cpu: 200m}, limits: {memory: 100Mi, cpu: 2}}}, {name: b, resources: {requests: {cpu: 300m}}}]\n",
        );
        assert_eq!(validate(&ok), Ok(()));
        let cases = [
            (
                "resources: {limits: {example.com/dongle: 1}}",
                "Unsupported value: \"example.com/dongle\"",
            ),
            (
                "resources: {requests: {cpu: 2}, limits: {cpu: 1}}",
                "must be less than or equal to cpu limit",
            ),
            (
                "resources: {requests: {cpu: 100m}}",
                "must be greater than or equal to aggregate container requests of 500m",
            ),
            (
                "resources: {limits: {cpu: 1}}",
                "must be greater than or equal to the limit of every container",
            ),
            (
                "resources: {limits: {memory: lots}}",
                "spec.resources.limits.memory: Invalid value",
            ),
        ];
        for (res, want) in cases {
            let p = pod(&format!(
                "spec:\n  {res}\n  containers: [{{name: a, resources: {{requests: {{cpu: 200m}}, limits: {{memory: 100Mi, cpu: 2}}}}}}, {{name: b, resources: {{requests: {{cpu: 300m}}}}}}]\n"
            ));
            let e = validate(&p).unwrap_err();
            assert!(e.contains(want), "{res}: {e}");
        }
    }

    #[test]
    fn pod_cgroup_values_and_files_for_v1_and_v2() {
        let p = pod(
            "metadata: {uid: u1}\nspec:\n  resources: {requests: {cpu: 500m}, limits: {cpu: 1, memory: 64Mi}}\n  containers: [{name: a}]\n",
        );
        let v = values(&p).unwrap();
        assert_eq!(
            (v.cpu_shares, v.cpu_quota, v.cpu_period, v.memory_limit),
            (Some(512), Some(100_000), Some(100_000), Some(64 << 20))
        );
        assert!(values(&pod("spec: {containers: [{name: a}]}")).is_none());
        // v1: the cpu and memory hierarchies.
        let d = tempfile::tempdir().unwrap();
        apply(d.path(), "u1", &p).unwrap();
        let read = |rel: &str| fs::read_to_string(d.path().join(rel)).unwrap();
        assert_eq!(
            read("memory/skiff/podu1/memory.limit_in_bytes"),
            (64 << 20).to_string()
        );
        assert_eq!(read("cpu/skiff/podu1/cpu.cfs_quota_us"), "100000");
        assert_eq!(read("cpu/skiff/podu1/cpu.shares"), "512");
        // v2: one hierarchy.
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "cpu memory").unwrap();
        apply(d.path(), "u1", &p).unwrap();
        let read = |rel: &str| fs::read_to_string(d.path().join(rel)).unwrap();
        assert_eq!(read("skiff/podu1/memory.max"), (64 << 20).to_string());
        assert_eq!(read("skiff/podu1/cpu.max"), "100000 100000");
        assert_eq!(read("skiff/cgroup.subtree_control"), "+cpu +memory");
    }
}
