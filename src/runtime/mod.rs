//! The container runtime: OCI bundles for libcontainer, run under `skiff-shim`.

pub mod crilog;
pub mod shim;
pub mod spec;
