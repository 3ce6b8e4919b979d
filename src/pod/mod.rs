//! Pod workers: one reconcile loop per pod, kubelet-style.

pub mod backoff;
pub mod status;
