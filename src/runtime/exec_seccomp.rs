//! The container's seccomp filter for processes started by `skiff exec`.
//!
//! libcontainer 0.7's tenant builder (its `exec`) rebuilds `linux` from the namespaces and
//! cgroup path only, so an exec'd process would run without the container's seccomp profile.
//! The supervisor gives the tenant this executor instead of the default one: it loads the
//! container's filter as the very last step before `execve`, after the process has joined the
//! container's namespaces, cgroup, user and capabilities, as runc does.

use std::path::Path;

use libcontainer::container::Container;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError, default};
use oci_spec::runtime::{LinuxSeccomp, Spec};

/// The default executor with the container's seccomp filter loaded first.
#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: Option<LinuxSeccomp>,
}

impl SeccompExecutor {
    pub fn new(seccomp: Option<LinuxSeccomp>) -> Self {
        SeccompExecutor { seccomp }
    }

    /// Whether a filter will be loaded (then the process needs `no_new_privs`: without
    /// CAP_SYS_ADMIN the kernel refuses a filter otherwise).
    pub fn has_filter(&self) -> bool {
        self.seccomp.is_some()
    }
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(s) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(s).map_err(|e| {
                ExecutorError::Other(format!("loading the container's seccomp filter: {e}"))
            })?;
        }
        default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        default::get_executor().validate(spec)
    }
}

/// The seccomp profile of the container `id` (from its bundle's config.json), if it has one.
pub fn of_container(runtime_root: &Path, id: &str) -> Option<LinuxSeccomp> {
    let c = Container::load(runtime_root.join(id)).ok()?;
    let spec: Spec =
        serde_json::from_slice(&std::fs::read(c.bundle().join("config.json")).ok()?).ok()?;
    spec.linux().as_ref()?.seccomp().clone()
}
