//! Clearing stale UDP conntrack entries. UDP has no connection end, so a
//! flow DNATed to an endpoint that went away keeps being sent there until
//! its entry is deleted; likewise flows that hit a service before it had
//! endpoints stay un-NATed.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use hostkit::cmd::Runner;

use super::types::Protocol;

/// A failed `conntrack` run.
pub type ConntrackError = hostkit::cmd::CmdError;

/// Which entries to delete; every set field must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConntrackFilter {
    /// The protocol (skiff only clears UDP today).
    pub protocol: Protocol,
    /// Original destination address (a cluster or external IP).
    pub orig_dst: Option<Ipv4Addr>,
    /// Original destination port (a node port).
    pub orig_port_dst: Option<u16>,
    /// The address the flow was DNATed to (the endpoint).
    pub dst_nat: Option<Ipv4Addr>,
}

impl ConntrackFilter {
    /// `conntrack -D` arguments for this filter.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["-D".to_string(), "-p".into(), self.protocol.as_str().into()];
        if let Some(ip) = self.orig_dst {
            a.extend(["--orig-dst".into(), ip.to_string()]);
        }
        if let Some(port) = self.orig_port_dst {
            a.extend(["--orig-port-dst".into(), port.to_string()]);
        }
        if let Some(ip) = self.dst_nat {
            a.extend(["--dst-nat".into(), ip.to_string()]);
        }
        a
    }
}

/// Deletes conntrack entries.
pub trait Conntrack {
    /// Deletes the entries matching `filter`; none matching is success.
    fn delete(&mut self, filter: &ConntrackFilter) -> Result<(), ConntrackError>;
}

impl<T: Conntrack + ?Sized> Conntrack for &mut T {
    fn delete(&mut self, filter: &ConntrackFilter) -> Result<(), ConntrackError> {
        (**self).delete(filter)
    }
}

/// Runs the `conntrack` binary, optionally inside a network namespace.
#[derive(Debug, Clone, Default)]
pub struct RealConntrack {
    runner: Runner,
}

impl RealConntrack {
    /// Uses the current network namespace.
    pub fn new() -> RealConntrack {
        RealConntrack::default()
    }

    /// Runs inside the network namespace at `path` via `nsenter`.
    pub fn in_netns(path: impl Into<PathBuf>) -> RealConntrack {
        RealConntrack {
            runner: Runner::in_netns(path),
        }
    }
}

impl Conntrack for RealConntrack {
    fn delete(&mut self, filter: &ConntrackFilter) -> Result<(), ConntrackError> {
        let args = filter.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.runner.output("conntrack", &args, None)?;
        // conntrack exits 1 with "0 flow entries have been deleted" when
        // nothing matched: that is the idempotent success case.
        if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("0 flow entries") {
            return Ok(());
        }
        Err(hostkit::cmd::failed("conntrack", &args, &out))
    }
}

/// Records deletions for unit tests.
#[derive(Debug, Default, Clone)]
pub struct FakeConntrack {
    /// Every filter passed to `delete`, in order.
    pub deleted: Vec<ConntrackFilter>,
}

impl Conntrack for FakeConntrack {
    fn delete(&mut self, filter: &ConntrackFilter) -> Result<(), ConntrackError> {
        self.deleted.push(*filter);
        Ok(())
    }
}
