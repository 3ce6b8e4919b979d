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
pub use hostkit::iptables;
pub mod proxier;
pub mod rules;
pub mod types;

pub use conntrack::{Conntrack, ConntrackError, ConntrackFilter, FakeConntrack, RealConntrack};
pub use iptables::{FakeIptables, Iptables, IptablesError, RealIptables};
pub use proxier::{Proxier, ProxyError, SyncStats, cleanup};
pub use rules::{RuleConfig, service_port_rules};
pub use types::{Endpoint, Ipv4Cidr, Protocol, ServicePort, ServicePortKey};

/// An empty chain in the small mangle table that skiff creates with every full sync. When it is
/// gone, someone flushed the tables (a firewall reload, `iptables -F`): resync everything at
/// once instead of waiting for the next periodic full sync (kube-proxy's canary chains).
pub const CANARY: &str = "SKIFF-PROXY-CANARY";

/// Creates (or keeps) the canary chain.
pub fn ensure_canary(ipt: &mut impl Iptables) -> Result<(), IptablesError> {
    ipt.restore(&format!("*mangle\n:{CANARY} - [0:0]\nCOMMIT\n"))
}

/// Whether the canary chain is still there.
pub fn canary_present(ipt: &mut impl Iptables) -> bool {
    ipt.has_chain("mangle", CANARY)
}

/// Removes the canary chain (cleanup); absent is fine.
pub fn remove_canary(ipt: &mut impl Iptables) -> Result<(), IptablesError> {
    if !canary_present(ipt) {
        return Ok(());
    }
    ipt.restore(&format!("*mangle\n-X {CANARY}\nCOMMIT\n"))
}

#[cfg(test)]
mod tests;
