//! Pure formatting of API objects into the text `skiff` prints: no I/O, the current time is
//! a parameter, so every function is tested with hand-built objects.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub mod describe_node;
pub mod describe_pod;
pub mod events;
pub mod images;
pub mod nodes;
pub mod pods;
pub mod services;

/// Unwraps an optional API time.
pub(crate) fn ts(t: Option<&Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

/// The string, or `<none>` when it is missing or empty.
pub(crate) fn or_none(s: Option<&str>) -> &str {
    match s {
        Some(s) if !s.is_empty() => s,
        _ => "<none>",
    }
}
