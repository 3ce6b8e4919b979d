//! The workload kinds' logic, pure: what kube-controller-manager would decide for Deployments,
//! ReplicaSets, Jobs, CronJobs, DaemonSets and HorizontalPodAutoscalers given the objects it
//! sees, and the apiserver's defaults, validation and conversions for those kinds (which
//! manifest validation and the API use). `controller` runs these against the store and
//! carries the decisions out; it re-exports them at their old paths (`controller::job`...).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod event;
mod field;
pub mod hpa;
pub mod job;
pub mod replicaset;
