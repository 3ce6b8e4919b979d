//! The workload controllers' loops (issue #11): they read the store, run the pure decisions
//! of [`crate::workloads`] (kept pure as the pod worker's `plan` is) and carry them out
//! through the API's write path.

pub mod autoscale;
pub mod batch;
pub mod daemon;
pub mod run;

/// The pure decisions moved to [`crate::workloads`]; the old paths stay for existing imports.
pub use crate::workloads::{cronjob, daemonset, deployment, event, hpa, job, replicaset};
