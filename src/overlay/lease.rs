//! flannel's etcd layout and JSON, and a pure subnet allocator.
//!
//! Keys (same as flannel's etcd v3 subnet manager, so the two can share a store):
//! - `<prefix>/network/config`: [`NetworkConfig`]
//! - `<prefix>/network/subnets/<ip>-<len>`: [`LeaseAttrs`], on an etcd lease

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// flannel's default VXLAN UDP port (the Linux kernel's, not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;

/// Errors of the network config and the allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid subnet {0:?}: expected a.b.c.d/len")]
    BadSubnet(String),
    #[error("invalid subnet key {0:?}: expected a.b.c.d-len")]
    BadKey(String),
    #[error("invalid network config: {0}")]
    BadConfig(String),
    #[error("no free subnet left in {0}")]
    Exhausted(Ipv4Net),
}

/// An IPv4 network: address and prefix length. The address is kept with host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// A network; host bits of `addr` are cleared. `len` must be at most 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, LeaseError> {
        if len > 32 {
            return Err(LeaseError::BadSubnet(format!("{addr}/{len}")));
        }
        Ok(Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.len)
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    /// The `n`-th address of the network (`.0` is 0, the gateway `.1` is 1).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    /// The etcd key form flannel uses: `10.244.3.0-24`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.addr, self.len)
    }

    /// Parse the etcd key form `10.244.3.0-24`.
    pub fn from_key(key: &str) -> Result<Self, LeaseError> {
        let bad = || LeaseError::BadKey(key.to_string());
        let (ip, len) = key.rsplit_once('-').ok_or_else(bad)?;
        let net = Ipv4Net::new(
            ip.parse().map_err(|_| bad())?,
            len.parse().map_err(|_| bad())?,
        )
        .map_err(|_| bad())?;
        // A key with host bits set is not one flannel wrote.
        if net.addr.to_string() != ip {
            return Err(bad());
        }
        Ok(net)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = LeaseError;
    fn from_str(s: &str) -> Result<Self, LeaseError> {
        let bad = || LeaseError::BadSubnet(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        Ipv4Net::new(
            ip.parse().map_err(|_| bad())?,
            len.parse().map_err(|_| bad())?,
        )
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `<prefix>/network/config`, field names as flannel's `pkg/subnet/config.go`.
/// Unknown fields are kept out of the way rather than refused: flannel writes more than we read
/// (`EnableIPv6`, `IPv6Network`, ...) and both must be able to share one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The cluster's pod network, e.g. `10.244.0.0/16`.
    #[serde(rename = "Network")]
    pub network: Ipv4Net,
    /// Prefix length of each node's subnet; 0 means flannel's default (24).
    #[serde(rename = "SubnetLen", default, skip_serializing_if = "is_zero_u8")]
    pub subnet_len: u8,
    /// Lowest subnet address handed out; default: the network's second subnet.
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<Ipv4Addr>,
    /// Highest subnet address handed out; default: the network's next-to-last subnet.
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<Ipv4Addr>,
    /// The backend; only `vxlan` is implemented.
    #[serde(rename = "Backend")]
    pub backend: BackendConfig,
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

/// `Backend` of the network config (flannel's vxlan backend options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendConfig {
    /// Backend type; `vxlan`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// VXLAN network identifier; 0 means the default 1.
    #[serde(rename = "VNI", default)]
    pub vni: u32,
    /// UDP port; 0 means the default 8472.
    #[serde(rename = "Port", default)]
    pub port: u16,
    /// Plain routes (no encapsulation) to peers on the same L2 subnet.
    #[serde(
        rename = "DirectRouting",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub direct_routing: bool,
}

impl NetworkConfig {
    /// A vxlan config with flannel's defaults for `network`.
    pub fn vxlan(network: Ipv4Net) -> Self {
        NetworkConfig {
            network,
            subnet_len: 0,
            subnet_min: None,
            subnet_max: None,
            backend: BackendConfig {
                kind: "vxlan".into(),
                vni: DEFAULT_VNI,
                port: DEFAULT_VXLAN_PORT,
                direct_routing: false,
            },
        }
    }

    /// The config with defaults filled in and checked, as flannel's `ParseConfig` + `CheckNetworkConfig`.
    pub fn resolved(&self) -> Result<Resolved, LeaseError> {
        let bad = |m: String| Err(LeaseError::BadConfig(m));
        if self.backend.kind != "vxlan" {
            return bad(format!(
                "backend type {:?} is not supported (only vxlan)",
                self.backend.kind
            ));
        }
        let subnet_len = match self.subnet_len {
            0 if self.network.len < 24 => 24,
            0 => {
                return bad(format!(
                    "network {} is too small for a default SubnetLen",
                    self.network
                ));
            }
            n => n,
        };
        if subnet_len < self.network.len || subnet_len > 30 {
            return bad(format!(
                "SubnetLen {subnet_len} must be between {} and 30",
                self.network.len
            ));
        }
        let step = 1u32 << (32 - subnet_len);
        let net = u32::from(self.network.addr);
        let last = net.wrapping_add((self.network.size() - u64::from(step)) as u32);
        // flannel skips the first and last subnet by default.
        let min = self
            .subnet_min
            .map(u32::from)
            .unwrap_or(net.wrapping_add(step));
        let max = self
            .subnet_max
            .map(u32::from)
            .unwrap_or(last.wrapping_sub(step));
        for (name, v) in [("SubnetMin", min), ("SubnetMax", max)] {
            if !self.network.contains(Ipv4Addr::from(v)) || v & (step - 1) != 0 {
                return bad(format!(
                    "{name} {} is not a subnet start inside {}",
                    Ipv4Addr::from(v),
                    self.network
                ));
            }
        }
        if min > max {
            return bad(format!(
                "SubnetMin {} is above SubnetMax {}",
                Ipv4Addr::from(min),
                Ipv4Addr::from(max)
            ));
        }
        Ok(Resolved {
            network: self.network,
            subnet_len,
            min,
            max,
            vni: if self.backend.vni == 0 {
                DEFAULT_VNI
            } else {
                self.backend.vni
            },
            port: if self.backend.port == 0 {
                DEFAULT_VXLAN_PORT
            } else {
                self.backend.port
            },
            direct_routing: self.backend.direct_routing,
        })
    }
}

/// A checked network config with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The cluster's pod network.
    pub network: Ipv4Net,
    /// Prefix length of node subnets.
    pub subnet_len: u8,
    min: u32,
    max: u32,
    /// VXLAN VNI.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
    /// Plain routes to same-L2 peers.
    pub direct_routing: bool,
}

impl Resolved {
    /// Whether `subnet` may be handed out under this config.
    pub fn allows(&self, subnet: Ipv4Net) -> bool {
        let a = u32::from(subnet.addr);
        subnet.len == self.subnet_len && a >= self.min && a <= self.max
    }

    /// Every subnet that may be handed out, lowest first.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = 1u64 << (32 - self.subnet_len);
        (u64::from(self.min)..=u64::from(self.max))
            .step_by(step as usize)
            .map(|a| Ipv4Net {
                addr: Ipv4Addr::from(a as u32),
                len: self.subnet_len,
            })
    }
}

/// The value of `<prefix>/network/subnets/<ip>-<len>` (flannel's `LeaseAttrs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// The node's underlay address: VXLAN packets for its subnet go there.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// Always `vxlan`.
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    /// The node's VTEP.
    #[serde(rename = "BackendData")]
    pub backend_data: VxlanData,
}

/// `BackendData` of a vxlan lease (flannel's `vxlanLeaseAttrs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    /// The VNI the node's VTEP uses.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// The VTEP's MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl LeaseAttrs {
    /// Attributes of a vxlan node.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: impl Into<String>) -> Self {
        LeaseAttrs {
            public_ip,
            backend_type: "vxlan".into(),
            backend_data: VxlanData {
                vni,
                vtep_mac: vtep_mac.into(),
            },
        }
    }
}

/// The etcd key of the network config.
pub fn config_key(prefix: &str) -> String {
    format!("{}/network/config", prefix.trim_end_matches('/'))
}

/// The etcd prefix under which subnet leases live (with a trailing slash).
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/network/subnets/", prefix.trim_end_matches('/'))
}

/// The etcd key of one subnet lease.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!("{}{}", subnets_prefix(prefix), subnet.key())
}

/// The subnet named by a lease key, if it is one.
pub fn subnet_of_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    key.strip_prefix(&subnets_prefix(prefix))
        .and_then(|k| Ipv4Net::from_key(k).ok())
}

/// What the allocator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The subnet this PublicIP already holds: renew it in place.
    Existing(Ipv4Net),
    /// A free subnet: create it (only if nobody else did meanwhile).
    Free(Ipv4Net),
}

/// Choose a subnet for `public_ip`, given the leases currently taken.
///
/// A subnet already held by the same PublicIP wins (a restarted node keeps its subnet), then the
/// `previous` one (e.g. from `subnet.env`) if it is free and still allowed, then the lowest free one.
/// Lowest rather than flannel's random pick: collisions are settled by the etcd transaction anyway.
pub fn pick(
    cfg: &Resolved,
    taken: &[(Ipv4Net, LeaseAttrs)],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
) -> Result<Pick, LeaseError> {
    if let Some((s, _)) = taken
        .iter()
        .find(|(s, a)| a.public_ip == public_ip && cfg.allows(*s))
    {
        return Ok(Pick::Existing(*s));
    }
    let is_free = |s: Ipv4Net| !taken.iter().any(|(t, _)| *t == s);
    if let Some(p) = previous.filter(|p| cfg.allows(*p) && is_free(*p)) {
        return Ok(Pick::Free(p));
    }
    cfg.subnets()
        .find(|s| is_free(*s))
        .map(Pick::Free)
        .ok_or(LeaseError::Exhausted(cfg.network))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn attrs(ip: [u8; 4]) -> LeaseAttrs {
        LeaseAttrs::vxlan(Ipv4Addr::from(ip), 1, "aa:bb:cc:dd:ee:ff")
    }

    #[test]
    fn config_json_matches_flannel() {
        let j = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.10.0","Backend":{"Type":"vxlan","VNI":1,"Port":8472},"EnableIPv6":false}"#;
        let c: NetworkConfig = serde_json::from_str(j).unwrap();
        assert_eq!(c.network, net("10.244.0.0/16"));
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Some(Ipv4Addr::new(10, 244, 10, 0)));
        assert_eq!(c.backend.port, 8472);
        let out = serde_json::to_value(NetworkConfig::vxlan(net("10.244.0.0/16"))).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472}})
        );
    }

    #[test]
    fn lease_json_matches_flannel() {
        let j = r#"{"PublicIP":"192.168.77.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:0b:1f:aa:bb:cc"}}"#;
        let a: LeaseAttrs = serde_json::from_str(j).unwrap();
        assert_eq!(
            a,
            LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 77, 2), 1, "6e:0b:1f:aa:bb:cc")
        );
        let back: serde_json::Value = serde_json::to_value(&a).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(j).unwrap());
    }

    #[test]
    fn keys() {
        let s = net("10.244.3.0/24");
        assert_eq!(
            subnet_key("/skiff/", s),
            "/skiff/network/subnets/10.244.3.0-24"
        );
        assert_eq!(config_key("/coreos.com"), "/coreos.com/network/config");
        assert_eq!(
            subnet_of_key("/skiff", "/skiff/network/subnets/10.244.3.0-24"),
            Some(s)
        );
        assert_eq!(
            subnet_of_key("/skiff", "/skiff/network/subnets/10.244.3.1-24"),
            None
        );
        assert_eq!(
            subnet_of_key("/skiff", "/other/network/subnets/10.244.3.0-24"),
            None
        );
        assert!(Ipv4Net::from_key("10.244.3.0/24").is_err());
        assert_eq!(net("10.244.3.7/24"), s);
    }

    #[test]
    fn defaults_skip_first_and_last_subnet() {
        let r = NetworkConfig::vxlan(net("10.244.0.0/22"))
            .resolved()
            .unwrap();
        let all: Vec<_> = r.subnets().map(|s| s.to_string()).collect();
        assert_eq!(all, ["10.244.1.0/24", "10.244.2.0/24"]);
        assert_eq!((r.vni, r.port), (1, 8472));
    }

    #[test]
    fn bad_configs() {
        let mut c = NetworkConfig::vxlan(net("10.244.0.0/16"));
        c.subnet_len = 8;
        assert!(c.resolved().is_err());
        let mut c = NetworkConfig::vxlan(net("10.244.0.0/16"));
        c.subnet_min = Some(Ipv4Addr::new(10, 245, 0, 0));
        assert!(c.resolved().is_err());
        let mut c = NetworkConfig::vxlan(net("10.244.0.0/16"));
        c.subnet_min = Some(Ipv4Addr::new(10, 244, 1, 5));
        assert!(c.resolved().is_err());
        let mut c = NetworkConfig::vxlan(net("10.244.0.0/16"));
        c.backend.kind = "host-gw".into();
        assert!(c.resolved().is_err());
        assert!(
            NetworkConfig::vxlan(net("10.244.0.0/24"))
                .resolved()
                .is_err()
        );
    }

    #[test]
    fn pick_prefers_own_then_previous_then_lowest_free() {
        let r = NetworkConfig::vxlan(net("10.244.0.0/16"))
            .resolved()
            .unwrap();
        let taken = vec![
            (net("10.244.1.0/24"), attrs([1, 1, 1, 1])),
            (net("10.244.3.0/24"), attrs([2, 2, 2, 2])),
        ];
        let me = Ipv4Addr::new(2, 2, 2, 2);
        assert_eq!(
            pick(&r, &taken, me, None),
            Ok(Pick::Existing(net("10.244.3.0/24")))
        );
        let new = Ipv4Addr::new(3, 3, 3, 3);
        assert_eq!(
            pick(&r, &taken, new, None),
            Ok(Pick::Free(net("10.244.2.0/24")))
        );
        assert_eq!(
            pick(&r, &taken, new, Some(net("10.244.9.0/24"))),
            Ok(Pick::Free(net("10.244.9.0/24")))
        );
        // A previous subnet someone else holds now, or outside the range, is not reused.
        assert_eq!(
            pick(&r, &taken, new, Some(net("10.244.1.0/24"))),
            Ok(Pick::Free(net("10.244.2.0/24")))
        );
        assert_eq!(
            pick(&r, &taken, new, Some(net("10.244.0.0/24"))),
            Ok(Pick::Free(net("10.244.2.0/24")))
        );
    }

    #[test]
    fn pick_exhausted() {
        let r = NetworkConfig::vxlan(net("10.244.0.0/22"))
            .resolved()
            .unwrap();
        let taken = vec![
            (net("10.244.1.0/24"), attrs([1, 1, 1, 1])),
            (net("10.244.2.0/24"), attrs([2, 2, 2, 2])),
        ];
        assert_eq!(
            pick(&r, &taken, Ipv4Addr::new(3, 3, 3, 3), None),
            Err(LeaseError::Exhausted(net("10.244.0.0/22")))
        );
    }
}
