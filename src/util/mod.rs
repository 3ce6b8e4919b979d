//! Small helpers with no Kubernetes meaning, used across the crate.

pub mod atomic;
