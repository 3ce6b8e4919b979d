//! The overlay's data path behind a seam: the VTEP, and per peer a neighbour, an fdb entry and
//! a route (or a plain route with `DirectRouting`), plus the masquerade rules. The real one is
//! [`super::vxlan::NetlinkDataPath`]; [`FakeDataPath`] models the kernel's tables in memory
//! and records every call, so the agent's logic is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::lease::Ipv4Net;
use super::vxlan::{Peer, VXLAN_OVERHEAD, Vtep, VtepConfig, VxlanError, device_name};

/// What the kernel holds on a VTEP: route destinations, permanent neighbours and fdb entries
/// with a remote destination. A restarted node compares them with the leases and removes the
/// rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Destinations of routes through the device.
    pub routes: Vec<Ipv4Net>,
    /// Addresses of permanent neighbour entries.
    pub neighbours: Vec<Ipv4Addr>,
    /// `(mac, dst)` of fdb entries with a remote destination; MACs lower case.
    pub fdb: Vec<(String, Ipv4Addr)>,
}

/// One entry found by [`DataPath::installed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A route to this destination.
    Route(Ipv4Net),
    /// A neighbour entry for this address.
    Neighbour(Ipv4Addr),
    /// An fdb entry `(mac, dst)`.
    Fdb(String, Ipv4Addr),
}

/// The node's side of the overlay: what the agent changes in the kernel.
pub trait DataPath: Send + Sync + 'static {
    /// Create (or adopt) the VTEP and bring it up (see [`super::vxlan::ensure_vtep`]).
    fn ensure_vtep(&self, cfg: &VtepConfig) -> Result<Vtep, VxlanError>;
    /// Put `subnet`'s `.0` on the VTEP as a `/32`, removing other IPv4 addresses.
    fn set_vtep_address(&self, dev: &str, subnet: Ipv4Net) -> Result<(), VxlanError>;
    /// Neighbour, fdb entry and onlink route for `peer` through the VTEP `dev`. Idempotent.
    fn add_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError>;
    /// Undo [`DataPath::add_peer`]; anything already gone is success.
    fn remove_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError>;
    /// A plain route to `peer`'s subnet via its public IP out of `uplink` (`DirectRouting`).
    fn add_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError>;
    /// Undo [`DataPath::add_direct_route`]; already gone is success.
    fn remove_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError>;
    /// What is installed on the VTEP `dev`.
    fn installed(&self, dev: &str) -> Result<Installed, VxlanError>;
    /// Remove one entry found by [`DataPath::installed`]; already gone is success.
    fn remove_entry(&self, dev: &str, entry: &Entry) -> Result<(), VxlanError>;
    /// Install the masquerade and forward rules for `network` with the local `subnet`.
    fn masquerade(&self, network: &Ipv4Net, subnet: &Ipv4Net) -> Result<(), String>;
}

/// The kernel state a [`FakeDataPath`] models.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeNet {
    /// The VTEP, once created.
    pub vtep: Option<Vtep>,
    /// The VTEP's address (a `/32` of the subnet's `.0`).
    pub vtep_addr: Option<Ipv4Addr>,
    /// Permanent neighbours on the VTEP: address -> MAC.
    pub neighbours: BTreeMap<Ipv4Addr, String>,
    /// fdb entries on the VTEP: (MAC, remote IP).
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
    /// Routes: destination -> (gateway, device).
    pub routes: BTreeMap<Ipv4Net, (Ipv4Addr, String)>,
    /// Masquerade rules installed for (network, subnet).
    pub masquerade: Option<(Ipv4Net, Ipv4Net)>,
}

/// A data path that keeps the kernel's tables in memory and records every call.
#[derive(Debug)]
pub struct FakeDataPath {
    net: Mutex<FakeNet>,
    calls: Mutex<Vec<String>>,
    /// The MAC the VTEP gets.
    pub mac: String,
    /// The uplink's MTU.
    pub uplink_mtu: u32,
}

impl Default for FakeDataPath {
    fn default() -> Self {
        FakeDataPath {
            net: Mutex::default(),
            calls: Mutex::default(),
            mac: "0e:00:00:00:00:01".into(),
            uplink_mtu: 1500,
        }
    }
}

impl FakeDataPath {
    /// A fake whose VTEP gets `mac`.
    pub fn with_mac(mac: &str) -> Self {
        FakeDataPath {
            mac: mac.into(),
            ..Default::default()
        }
    }

    /// The modelled kernel state.
    pub fn net(&self) -> FakeNet {
        self.net.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Change the modelled kernel state (e.g. leftovers of an earlier run).
    pub fn edit(&self, f: impl FnOnce(&mut FakeNet)) {
        f(&mut self.net.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The calls made so far, as `name args`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forget the calls recorded so far.
    pub fn clear_calls(&self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn record(&self, call: String) -> std::sync::MutexGuard<'_, FakeNet> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
        self.net.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DataPath for FakeDataPath {
    fn ensure_vtep(&self, cfg: &VtepConfig) -> Result<Vtep, VxlanError> {
        let mut net = self.record(format!("ensure_vtep {}", cfg.vni));
        let vtep = net.vtep.clone().unwrap_or_else(|| Vtep {
            name: device_name(cfg.vni),
            mac: self.mac.clone(),
            mtu: self.uplink_mtu - VXLAN_OVERHEAD,
            tx_checksum_off: cfg.tx_checksum_off,
        });
        net.vtep = Some(vtep.clone());
        if let Some(s) = cfg.subnet {
            net.vtep_addr = Some(s.addr());
        }
        Ok(vtep)
    }

    fn set_vtep_address(&self, dev: &str, subnet: Ipv4Net) -> Result<(), VxlanError> {
        let mut net = self.record(format!("set_vtep_address {dev} {subnet}"));
        net.vtep_addr = Some(subnet.addr());
        Ok(())
    }

    fn add_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
        let mut net = self.record(format!(
            "add_peer {dev} {} {} {}",
            peer.subnet, peer.public_ip, peer.vtep_mac
        ));
        let mac = peer.vtep_mac.to_lowercase();
        net.neighbours.insert(peer.subnet.addr(), mac.clone());
        net.fdb.insert((mac, peer.public_ip));
        net.routes
            .insert(peer.subnet, (peer.subnet.addr(), dev.to_string()));
        Ok(())
    }

    fn remove_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
        let mut net = self.record(format!(
            "remove_peer {dev} {} {} {}",
            peer.subnet, peer.public_ip, peer.vtep_mac
        ));
        net.routes.remove(&peer.subnet);
        net.neighbours.remove(&peer.subnet.addr());
        net.fdb
            .remove(&(peer.vtep_mac.to_lowercase(), peer.public_ip));
        Ok(())
    }

    fn add_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
        let mut net = self.record(format!(
            "add_direct_route {uplink} {} {}",
            peer.subnet, peer.public_ip
        ));
        net.routes
            .insert(peer.subnet, (peer.public_ip, uplink.to_string()));
        Ok(())
    }

    fn remove_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
        let mut net = self.record(format!("remove_direct_route {uplink} {}", peer.subnet));
        net.routes.remove(&peer.subnet);
        Ok(())
    }

    fn installed(&self, dev: &str) -> Result<Installed, VxlanError> {
        let net = self.record(format!("installed {dev}"));
        Ok(Installed {
            routes: net
                .routes
                .iter()
                .filter(|(_, (_, d))| d == dev)
                .map(|(s, _)| *s)
                .collect(),
            neighbours: net.neighbours.keys().copied().collect(),
            fdb: net.fdb.iter().cloned().collect(),
        })
    }

    fn remove_entry(&self, dev: &str, entry: &Entry) -> Result<(), VxlanError> {
        let mut net = self.record(format!("remove_entry {dev} {entry:?}"));
        match entry {
            Entry::Route(s) => {
                net.routes.remove(s);
            }
            Entry::Neighbour(ip) => {
                net.neighbours.remove(ip);
            }
            Entry::Fdb(mac, ip) => {
                net.fdb.remove(&(mac.clone(), *ip));
            }
        }
        Ok(())
    }

    fn masquerade(&self, network: &Ipv4Net, subnet: &Ipv4Net) -> Result<(), String> {
        let mut net = self.record(format!("masquerade {network} {subnet}"));
        net.masquerade = Some((*network, *subnet));
        Ok(())
    }
}
