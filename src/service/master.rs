//! The `default/kubernetes` Service, kept as the apiserver keeps it: the first address of the
//! service range, port `https` 443/TCP, one endpoint where pods reach the TLS API (the
//! apiserver's `--advertise-address`).
//!
//! The API listens on loopback by default, which pods cannot reach (a DNAT to 127.0.0.1 from
//! the bridge is dropped as martian, and allowing it with `route_localnet` would open every
//! loopback-only service of the node to its pods, CVE-2020-8558). So the advertised address is
//! the pod network's gateway on the node (`cni0`'s `.1`), and skiffd adds a listener there.
//! Every node keeps its own: the Service is not shared through etcd.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::{Endpoints, Service};

use super::builtin::{Builtin, Port};

use crate::proxy::Ipv4Cidr;

/// Namespace and name of the API's Service.
pub const NAMESPACE: &str = "default";
pub const NAME: &str = "kubernetes";
/// The Service's port.
pub const PORT: i32 = 443;

/// Where the `kubernetes` Service points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Master {
    /// The first address of `--service-cluster-ip-range`.
    pub cluster_ip: Ipv4Addr,
    /// The advertised address of the API.
    pub endpoint: Ipv4Addr,
    /// The API's port.
    pub port: u16,
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("component".into(), "apiserver".into()),
        ("provider".into(), "kubernetes".into()),
    ])
}

impl Master {
    fn builtin(&self) -> Builtin {
        Builtin {
            namespace: NAMESPACE,
            name: NAME,
            labels: labels(),
            // The apiserver's own marker: the EndpointSlice mirroring controller leaves it alone.
            endpoints_labels: BTreeMap::from([(
                "endpointslice.kubernetes.io/skip-mirror".into(),
                "true".into(),
            )]),
            cluster_ip: self.cluster_ip,
            endpoint: self.endpoint,
            ports: vec![Port {
                name: "https",
                port: PORT,
                target: i32::from(self.port),
                protocol: "TCP",
            }],
        }
    }

    /// The Service object.
    pub fn service(&self) -> Service {
        self.builtin().service()
    }

    /// Its Endpoints (no selector: the apiserver writes them itself).
    pub fn endpoints(&self) -> Endpoints {
        self.builtin().endpoints()
    }

    /// Names and addresses the serving certificate must hold for in-cluster clients.
    pub fn sans(&self) -> Vec<String> {
        vec![
            self.cluster_ip.to_string(),
            self.endpoint.to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ]
    }
}

/// The first usable address of the service range (`10.96.0.1` of `10.96.0.0/12`).
pub fn first_address(range: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.addr) + 1)
}

/// The advertised address and, when the API does not listen there already, the extra address
/// to listen on. `flag` is `--api-advertise-address`; without it: the listen address when it is
/// a specific non-loopback IPv4 address, else the first address of `pod_cidr` (the bridge
/// gateway of skiff's default network). `None` when there is none (an IPv6-only listener).
pub fn advertise(
    listen: SocketAddr,
    flag: Option<Ipv4Addr>,
    pod_cidr: &str,
) -> Option<(Ipv4Addr, Option<SocketAddr>)> {
    let gateway = || {
        let (addr, _) = pod_cidr.split_once('/')?;
        let net: Ipv4Addr = addr.parse().ok()?;
        Some(Ipv4Addr::from(u32::from(net) + 1))
    };
    let ip = match (flag, listen.ip()) {
        (Some(ip), _) => ip,
        (None, IpAddr::V4(v4)) if !v4.is_loopback() && !v4.is_unspecified() => v4,
        (None, IpAddr::V4(_)) => gateway()?,
        (None, IpAddr::V6(v6)) if v6.is_loopback() || v6.is_unspecified() => gateway()?,
        (None, IpAddr::V6(_)) => return None,
    };
    let covered = listen.ip().is_unspecified() || listen.ip() == IpAddr::V4(ip);
    let extra = (!covered).then(|| SocketAddr::new(IpAddr::V4(ip), listen.port()));
    Some((ip, extra))
}

/// Binds `addr` with `IP_FREEBIND`: the gateway address appears only when the first pod's
/// network is set up, and the listener must be ready when it does.
pub fn bind_advertised(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let fd = super::builtin::bind_freebind(addr, nix::sys::socket::SockType::Stream)?;
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(1024)?)?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_defaults() {
        let cidr = "10.244.0.0/24";
        let gw: Ipv4Addr = "10.244.0.1".parse().unwrap();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Loopback: the gateway, with a listener there.
        assert_eq!(
            advertise(at("127.0.0.1:6443"), None, cidr),
            Some((gw, Some(at("10.244.0.1:6443"))))
        );
        // Every address: the gateway, already listened on.
        assert_eq!(advertise(at("0.0.0.0:6443"), None, cidr), Some((gw, None)));
        // A node address: that one.
        assert_eq!(
            advertise(at("192.168.1.5:6443"), None, cidr),
            Some(("192.168.1.5".parse().unwrap(), None))
        );
        // The flag wins.
        assert_eq!(
            advertise(
                at("127.0.0.1:7443"),
                Some("192.168.1.5".parse().unwrap()),
                cidr
            ),
            Some(("192.168.1.5".parse().unwrap(), Some(at("192.168.1.5:7443"))))
        );
        assert_eq!(advertise(at("[2001:db8::1]:6443"), None, cidr), None);
    }

    #[test]
    fn service_and_endpoints_as_the_apiserver_writes_them() {
        let m = Master {
            cluster_ip: first_address(Ipv4Cidr {
                addr: "10.96.0.0".parse().unwrap(),
                prefix: 12,
            }),
            endpoint: "10.244.0.1".parse().unwrap(),
            port: 6443,
        };
        let svc = serde_json::to_value(m.service()).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0]["name"], "https");
        assert_eq!(svc["spec"]["ports"][0]["port"], 443);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
        assert_eq!(svc["metadata"]["labels"]["component"], "apiserver");
        assert_eq!(svc["metadata"]["labels"]["provider"], "kubernetes");
        let ep = serde_json::to_value(m.endpoints()).unwrap();
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.244.0.1");
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 6443);
    }
}
