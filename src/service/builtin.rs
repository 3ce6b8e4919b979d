//! Services skiffd keeps itself, `default/kubernetes` ([`super::master`]) and
//! `kube-system/kube-dns` ([`kube_dns`]): a ClusterIP Service without a selector
//! and its Endpoints, whose one address is on this node and listened on by skiffd, bound with
//! `IP_FREEBIND` because that address (the pod network's gateway) appears only with the first
//! pod's network.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One port of a built-in Service: `port` on the cluster IP, `target` on the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub name: &'static str,
    pub port: i32,
    pub target: i32,
    pub protocol: &'static str,
}

/// A built-in Service and where it points.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub namespace: &'static str,
    pub name: &'static str,
    pub labels: BTreeMap<String, String>,
    pub endpoints_labels: BTreeMap<String, String>,
    pub cluster_ip: Ipv4Addr,
    pub endpoint: Ipv4Addr,
    pub ports: Vec<Port>,
}

impl Builtin {
    fn meta(&self, labels: &BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.into()),
            namespace: Some(self.namespace.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        }
    }

    /// The Service object.
    pub fn service(&self) -> Service {
        Service {
            metadata: self.meta(&self.labels),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(self.cluster_ip.to_string()),
                cluster_ips: Some(vec![self.cluster_ip.to_string()]),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|p| ServicePort {
                            name: Some(p.name.into()),
                            port: p.port,
                            protocol: Some(p.protocol.into()),
                            target_port: Some(IntOrString::Int(p.target)),
                            ..Default::default()
                        })
                        .collect(),
                ),
                session_affinity: Some("None".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Its Endpoints (no selector: skiffd writes them itself).
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            metadata: self.meta(&self.endpoints_labels),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![EndpointAddress {
                    ip: self.endpoint.to_string(),
                    ..Default::default()
                }]),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|p| EndpointPort {
                            name: Some(p.name.into()),
                            port: p.target,
                            protocol: Some(p.protocol.into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                not_ready_addresses: None,
            }]),
        }
    }
}

/// A non-blocking, close-on-exec socket of `ty` bound to `addr` with `IP_FREEBIND` (and
/// `SO_REUSEADDR` for streams), so it binds before the address exists.
pub fn bind_freebind(addr: SocketAddr, ty: nix::sys::socket::SockType) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if ty == SockType::Stream {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(fd)
}
