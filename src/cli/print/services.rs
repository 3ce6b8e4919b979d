//! The `skiff get services` and `skiff get endpoints` tables, with kubectl's columns.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Endpoints, Service};

/// PORT(S): `80/TCP`, `80:30080/TCP`, joined by commas.
pub fn ports(svc: &Service) -> String {
    let ports: Vec<String> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            match p.node_port {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

/// Renders `skiff get services`.
pub fn services_table(
    svcs: &[Service],
    all_namespaces: bool,
    wide: bool,
    now: Timestamp,
) -> String {
    super::super::table::render(
        &super::super::table::services(svcs, now),
        all_namespaces,
        wide,
    )
}

/// ENDPOINTS: `ip:port,...` of ready addresses, `<none>` when empty, kubectl's
/// `+ N more...` past three.
pub fn endpoints_column(ep: &Endpoints) -> String {
    let mut all = Vec::new();
    for s in ep.subsets.iter().flatten() {
        for a in s.addresses.iter().flatten() {
            for p in s.ports.iter().flatten() {
                all.push(format!("{}:{}", a.ip, p.port));
            }
        }
    }
    if all.is_empty() {
        return "<none>".into();
    }
    if all.len() > 3 {
        let more = all.len() - 3;
        all.truncate(3);
        return format!("{} + {more} more...", all.join(","));
    }
    all.join(",")
}

/// Renders `skiff get endpoints`.
pub fn endpoints_table(eps: &[Endpoints], all_namespaces: bool, now: Timestamp) -> String {
    super::super::table::render(
        &super::super::table::endpoints(eps, now),
        all_namespaces,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_and_endpoint_columns() {
        let s: Service = serde_yaml_ng::from_str("metadata: {name: web}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30080, protocol: TCP}, {port: 53, protocol: UDP}]}").unwrap();
        assert_eq!(ports(&s), "80:30080/TCP,53/UDP");
        let table = services_table(&[s], false, false, Timestamp::now());
        assert!(
            table.starts_with("NAME   TYPE       CLUSTER-IP   EXTERNAL-IP   PORT(S)"),
            "{table}"
        );
        assert!(
            table.contains("web    NodePort   10.96.0.10   <none>        80:30080/TCP,53/UDP"),
            "{table}"
        );
        let e: Endpoints = serde_yaml_ng::from_str("metadata: {name: web}\nsubsets: [{addresses: [{ip: 10.244.0.2}, {ip: 10.244.0.3}], ports: [{port: 8080}]}]").unwrap();
        assert_eq!(endpoints_column(&e), "10.244.0.2:8080,10.244.0.3:8080");
        let none: Endpoints = serde_yaml_ng::from_str("metadata: {name: web}").unwrap();
        assert_eq!(endpoints_column(&none), "<none>");
    }
}
