//! The `kube-system/kube-dns` Service as a cluster's DNS add-on creates it (the name CoreDNS
//! keeps for compatibility): the `--cluster-dns` address, ports 53/UDP `dns` and 53/TCP
//! `dns-tcp`, label `k8s-app=kube-dns`. Its one endpoint is skiffd's own resolver on the pod
//! network's gateway, like the `default/kubernetes` Service's (see
//! [`crate::service::master`]). Every node keeps its own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Endpoints, Service};

use super::builtin::{Builtin, Port};

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

impl KubeDns {
    fn builtin(&self) -> Builtin {
        let port = |name, protocol| Port {
            name,
            port: i32::from(PORT),
            target: i32::from(PORT),
            protocol,
        };
        Builtin {
            namespace: NAMESPACE,
            name: NAME,
            labels: labels(),
            endpoints_labels: labels(),
            cluster_ip: self.cluster_ip,
            endpoint: self.endpoint,
            ports: vec![port("dns", "UDP"), port("dns-tcp", "TCP")],
        }
    }

    /// The Service object.
    pub fn service(&self) -> Service {
        self.builtin().service()
    }

    /// Its Endpoints: skiffd's resolver (no selector: skiffd writes them itself).
    pub fn endpoints(&self) -> Endpoints {
        self.builtin().endpoints()
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
