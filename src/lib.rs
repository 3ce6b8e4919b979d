//! skiff: a node agent that runs Kubernetes manifests.

pub mod cli;
pub mod config;
pub mod manifest;
pub mod pod;
pub mod runtime;
pub mod store;
