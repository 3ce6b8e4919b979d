//! The workload controllers' decisions (issue #11), kept pure as the pod worker's `plan` is:
//! what kube-controller-manager would do given the objects it sees. The loops that read the
//! store and carry the decisions out build on these.

pub mod autoscale;
pub mod batch;
pub mod cronjob;
pub mod daemon;
pub mod daemonset;
pub mod deployment;
pub mod event;
mod field;
pub mod hpa;
pub mod job;
pub mod replicaset;
pub mod run;
