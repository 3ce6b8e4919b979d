//! A container's cpu and memory amounts from its `resources` (pure: used by validation and
//! by the runtime's cgroup limits).

use k8s_openapi::api::core::v1::Container;

use crate::quantity;

/// (cpu millicores, memory bytes), each if set.
pub type CpuMemory = (Option<i64>, Option<i64>);

/// (cpu millicores, memory bytes) of `requests` or `limits`; requests default to limits.
pub fn amounts(c: &Container) -> Result<(CpuMemory, CpuMemory), String> {
    let r = c.resources.clone().unwrap_or_default();
    let get = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               which: &str,
               k: &str,
               cpu: bool|
     -> Result<Option<i64>, String> {
        m.as_ref()
            .and_then(|m| m.get(k))
            .map(|q| {
                if cpu {
                    quantity::millicores(&q.0)
                } else {
                    quantity::bytes(&q.0)
                }
            })
            .transpose()
            .map_err(|e| {
                format!(
                    "container {}: resources.{which}.{k}: Invalid value: {e}",
                    c.name
                )
            })
    };
    let lim = (
        get(&r.limits, "limits", "cpu", true)?,
        get(&r.limits, "limits", "memory", false)?,
    );
    let req = (
        get(&r.requests, "requests", "cpu", true)?.or(lim.0),
        get(&r.requests, "requests", "memory", false)?.or(lim.1),
    );
    for (what, rq, lm) in [("cpu", req.0, lim.0), ("memory", req.1, lim.1)] {
        if let (Some(rq), Some(lm)) = (rq, lm)
            && rq > lm
        {
            return Err(format!(
                "container {}: resources.requests.{what}: Invalid value: must be less than or equal to {what} limit",
                c.name
            ));
        }
    }
    Ok((req, lim))
}
