//! The proxy's input: one service port and its endpoints, independent of
//! how the daemon stores Services, Endpoints and Pods.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP (stale conntrack entries are cleared when endpoints change).
    Udp,
    /// SCTP (needs the kernel's SCTP conntrack and the `sctp` match).
    Sctp,
}

impl Protocol {
    /// The lowercase name iptables and conntrack use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one port of one Service: `namespace/name:port-name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name (may be empty for single-port Services).
    pub port_name: String,
}

impl ServicePortKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str, port_name: &str) -> ServicePortKey {
        ServicePortKey {
            namespace: namespace.into(),
            name: name.into(),
            port_name: port_name.into(),
        }
    }
}

/// `ns/name:port`, or `ns/name` for an unnamed port, as kube-proxy prints it
/// in rule comments.
impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// One port of a Service as the proxy sees it. Headless and ExternalName
/// Services have no rules and are not passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Which Service port this is.
    pub key: ServicePortKey,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The virtual IP (`spec.clusterIP`).
    pub cluster_ip: Ipv4Addr,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// The node port for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` (and LoadBalancer ingress IPs).
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800).
    pub session_affinity_timeout: Option<u32>,
}

/// One backend of a service port, with the target port already resolved
/// (named target ports are resolved per pod by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The pod (or manual Endpoints) address.
    pub ip: Ipv4Addr,
    /// The target port on that address.
    pub port: u16,
    /// Only ready endpoints receive traffic.
    pub ready: bool,
    /// On this node. Recorded for `externalTrafficPolicy: Local`; all ready
    /// endpoints are used today.
    pub local: bool,
}

impl Endpoint {
    /// A ready, non-local endpoint.
    pub fn ready(ip: Ipv4Addr, port: u16) -> Endpoint {
        Endpoint {
            ip,
            port,
            ready: true,
            local: false,
        }
    }
}

/// An IPv4 network in CIDR notation, e.g. the cluster (pod) CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The network address (host bits cleared).
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("{s:?}: bad address: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..=32"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
