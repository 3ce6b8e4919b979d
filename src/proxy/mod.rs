//! The service proxy: kube-proxy's iptables mode with skiff's own chain
//! prefix (`SKIFF-`). Pure logic plus two small command backends:
//! [`Iptables`] (`iptables-restore`/`iptables-save`, nf_tables or legacy,
//! whichever is on `PATH`) and [`Conntrack`] (the `conntrack` binary), each
//! with a recording fake for unit tests.
//!
//! The daemon builds a [`ServicePort`] per Service port with its
//! [`Endpoint`]s, feeds them to a [`Proxier`] and calls [`Proxier::sync`];
//! [`cleanup`] removes everything skiff installed.

pub mod chains;
pub mod conntrack;
pub mod iptables;
pub mod proxier;
pub mod rules;
pub mod types;

pub use conntrack::{Conntrack, ConntrackError, ConntrackFilter, FakeConntrack, RealConntrack};
pub use iptables::{FakeIptables, Iptables, IptablesError, RealIptables};
pub use proxier::{Proxier, ProxyError, SyncStats, cleanup};
pub use rules::{RuleConfig, service_port_rules};
pub use types::{Endpoint, Ipv4Cidr, Protocol, ServicePort, ServicePortKey};

#[cfg(test)]
mod tests;
