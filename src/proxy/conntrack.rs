//! Clearing stale UDP conntrack entries. UDP has no connection end, so a
//! flow DNATed to an endpoint that went away keeps being sent there until
//! its entry is deleted; likewise flows that hit a service before it had
//! endpoints stay un-NATed.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use super::types::Protocol;

/// A failed `conntrack` run.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The binary could not be started.
    #[error("running conntrack {args}: {source}")]
    Spawn {
        /// The arguments.
        args: String,
        /// The cause.
        source: std::io::Error,
    },
    /// conntrack failed for another reason than "nothing matched".
    #[error("conntrack {args} failed ({status}): {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

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
    netns: Option<PathBuf>,
}

impl RealConntrack {
    /// Uses the current network namespace.
    pub fn new() -> RealConntrack {
        RealConntrack::default()
    }

    /// Runs inside the network namespace at `path` via `nsenter`.
    pub fn in_netns(path: impl Into<PathBuf>) -> RealConntrack {
        RealConntrack {
            netns: Some(path.into()),
        }
    }
}

impl Conntrack for RealConntrack {
    fn delete(&mut self, filter: &ConntrackFilter) -> Result<(), ConntrackError> {
        let args = filter.args();
        let joined = args.join(" ");
        let mut cmd = match &self.netns {
            None => Command::new("conntrack"),
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg("conntrack");
                c
            }
        };
        let out = cmd
            .args(&args)
            .output()
            .map_err(|source| ConntrackError::Spawn {
                args: joined.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // conntrack exits 1 with "0 flow entries have been deleted" when
        // nothing matched: that is the idempotent success case.
        if out.status.success() || stderr.contains("0 flow entries") {
            return Ok(());
        }
        Err(ConntrackError::Failed {
            args: joined,
            status: out.status,
            stderr: stderr.trim().to_string(),
        })
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
