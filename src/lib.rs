//! skiff: a node agent that runs Kubernetes manifests.

pub mod runtime;
