//! Pod-level resources (`spec.resources`, Kubernetes' PodLevelResources): validated as the
//! apiserver does, counted at admission and for the QoS class instead of the containers'
//! sum, and enforced on the pod's cgroup (`/skiff/pod<uid>`), the parent of its
//! containers' cgroups, so the containers together stay within them.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use super::resources::Cgroup;
use crate::kube::pod_resources::pod_amounts;

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
    use crate::kube::pod_resources::validate;

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
