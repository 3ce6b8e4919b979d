//! Pod workers: one reconcile loop per pod, kubelet-style, and the manager
//! that starts, replaces and stops them as the manifests change.

pub mod admission;
pub mod backoff;
#[cfg(test)]
pub mod fake;
pub mod grpc_health;
pub mod manager;
pub mod plan;
pub mod probe;
pub mod status;
pub mod worker;
