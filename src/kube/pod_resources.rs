//! Pod-level resources (`spec.resources`, Kubernetes' PodLevelResources) as amounts, and
//! their validation as the apiserver does it; `runtime::pod_cgroup` enforces them.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::resources::amounts;

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
