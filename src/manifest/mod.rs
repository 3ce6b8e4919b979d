//! The manifest source: the directory of Kubernetes manifests skiffd runs.

pub mod batch;
pub mod daemonset;
pub mod parse;
pub mod service;
pub mod source;
pub mod validate;
pub mod workload;
