//! How namespaced objects are keyed.

/// `(namespace, name)` of a pod (or of any namespaced object).
pub type PodKey = (String, String);
