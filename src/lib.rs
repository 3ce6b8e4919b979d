//! skiff: a node agent that runs Kubernetes manifests.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dns;
pub(crate) mod http1;
pub mod kube;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod overlay;
pub mod pki;
pub mod pod;
pub mod proxy;
/// Moved into [`kube::quantity`]; the old path stays for existing imports.
pub use kube::quantity;
pub mod runtime;
pub mod selector;
pub mod service;
pub mod serviceaccount;
pub mod store;
pub mod util;
pub mod workloads;
