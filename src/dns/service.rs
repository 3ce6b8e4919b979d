//! The `kube-system/kube-dns` Service as a cluster's DNS add-on creates it (the name CoreDNS
//! keeps for compatibility): the `--cluster-dns` address, ports 53/UDP `dns` and 53/TCP
//! `dns-tcp`, label `k8s-app=kube-dns`. Its one endpoint is skiffd's own resolver on the pod
//! network's gateway, like the `default/kubernetes` Service's (see
//! [`crate::service::master`]). Every node keeps its own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Namespace and name of the DNS Service.
pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";
/// The DNS port.
pub const PORT: u16 = 53;

/// Where the `kube-dns` Service points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeDns {
    /// `--cluster-dns`.
    pub cluster_ip: Ipv4Addr,
    /// skiffd's resolver (the pod network's gateway).
    pub endpoint: Ipv4Addr,
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("k8s-app".into(), "kube-dns".into()),
        ("kubernetes.io/name".into(), "CoreDNS".into()),
        ("kubernetes.io/cluster-service".into(), "true".into()),
    ])
}

fn ports() -> [(&'static str, &'static str); 2] {
    [("dns", "UDP"), ("dns-tcp", "TCP")]
}

impl KubeDns {
    /// The Service object.
    pub fn service(&self) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(NAMESPACE.into()),
                labels: Some(labels()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(self.cluster_ip.to_string()),
                cluster_ips: Some(vec![self.cluster_ip.to_string()]),
                ports: Some(
                    ports()
                        .into_iter()
                        .map(|(name, proto)| ServicePort {
                            name: Some(name.into()),
                            port: i32::from(PORT),
                            protocol: Some(proto.into()),
                            target_port: Some(IntOrString::Int(i32::from(PORT))),
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

    /// Its Endpoints: skiffd's resolver (no selector: skiffd writes them itself).
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(NAMESPACE.into()),
                labels: Some(labels()),
                ..Default::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![EndpointAddress {
                    ip: self.endpoint.to_string(),
                    ..Default::default()
                }]),
                ports: Some(
                    ports()
                        .into_iter()
                        .map(|(name, proto)| EndpointPort {
                            name: Some(name.into()),
                            port: i32::from(PORT),
                            protocol: Some(proto.into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                not_ready_addresses: None,
            }]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_and_endpoints_as_kubeadm_makes_them() {
        let d = KubeDns {
            cluster_ip: "10.96.0.10".parse().unwrap(),
            endpoint: "10.244.0.1".parse().unwrap(),
        };
        let svc = serde_json::to_value(d.service()).unwrap();
        assert_eq!(svc["metadata"]["namespace"], "kube-system");
        assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns");
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc["spec"]["ports"][0]["name"], "dns");
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(svc["spec"]["ports"][1]["name"], "dns-tcp");
        assert_eq!(svc["spec"]["ports"][1]["protocol"], "TCP");
        let ep = serde_json::to_value(d.endpoints()).unwrap();
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.244.0.1");
        assert_eq!(ep["subsets"][0]["ports"][1]["port"], 53);
    }
}
