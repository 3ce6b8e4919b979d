//! The multi-host control plane (issue 11): with `--etcd-endpoints`, one skiffd elected
//! through an etcd lease ([`leader`]) runs the workload controllers and the scheduler
//! ([`scheduler`]) for the whole cluster; the workload objects and their pods are kept in etcd
//! by the leader and mirrored into every node's store ([`objects`]), so every node's API
//! serves them and each node runs the pods bound to it.

pub mod leader;
pub mod objects;
pub mod scheduler;
