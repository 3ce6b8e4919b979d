//! Pod workers: one reconcile loop per pod, kubelet-style, and the manager
//! that starts, replaces and stops them as the manifests change.

pub mod admission;
pub mod backoff;
/// Moved into [`crate::kube::env`] (pure); the old path stays for existing imports.
pub use crate::kube::env;
#[cfg(test)]
pub mod fake;
pub mod grpc_health;
pub mod manager;
pub mod plan;
pub mod probe;
pub mod status;
pub mod worker;
