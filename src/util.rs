//! Small helpers with no Kubernetes meaning, usable from every layer (the bottom of the
//! import graph: nothing here imports the rest of the crate).

/// Runs blocking filesystem and namespace work without stalling the other
/// tasks of a worker thread (the pod start path does mounts, unshares and
/// writes).
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
