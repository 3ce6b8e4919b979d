//! Service and Endpoints validation and defaulting, as the API server does it
//! (the allocation of cluster IPs and node ports is the service controller's).

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::validate::{check_dns1123_label, check_dns1123_subdomain};
use crate::selector::Selector;

/// A DNS-1035 label (Service names): a DNS-1123 label that starts with a letter.
pub fn check_dns1035_label(v: &str) -> Result<(), String> {
    check_dns1123_label(v).map_err(|_| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character".to_string()
    })?;
    if !v.as_bytes()[0].is_ascii_lowercase() {
        return Err("a DNS-1035 label must start with an alphabetic character".into());
    }
    Ok(())
}

/// Validates a Service and fills in defaults (type, protocol, targetPort,
/// sessionAffinity and its timeout).
pub fn validate_service(mut svc: Service) -> Result<Service, String> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name: Required value".into());
    }
    check_dns1035_label(&name)
        .map_err(|e| format!("metadata.name: Invalid value {name:?}: {e}"))?;
    let ns = svc
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into())
        .clone();
    check_dns1123_label(&ns)
        .map_err(|e| format!("metadata.namespace: Invalid value {ns:?}: {e}"))?;
    let spec = svc.spec.get_or_insert_with(Default::default);
    let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&type_.as_str()) {
        return Err(format!(
            "spec.type: Unsupported value: {type_:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        ));
    }
    if type_ == "ExternalName" {
        let ext = spec.external_name.clone().unwrap_or_default();
        check_dns1123_subdomain(ext.trim_end_matches('.'))
            .map_err(|e| format!("spec.externalName: Invalid value {ext:?}: {e}"))?;
        return Ok(svc);
    }
    if let Some(sel) = &spec.selector {
        Selector::from_map(sel).map_err(|e| format!("spec.selector: Invalid value: {e}"))?;
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        ip.parse::<IpAddr>()
            .map_err(|_| format!("spec.clusterIP: Invalid value: {ip:?}: must be empty, 'None', or a valid IP address"))?;
    }
    if headless && type_ != "ClusterIP" {
        return Err(format!(
            "spec.clusterIP: Invalid value: \"None\": may only be set to 'None' for ClusterIP services (type {type_})"
        ));
    }
    let ports = spec.ports.get_or_insert_with(Vec::new);
    if ports.is_empty() && !headless {
        return Err("spec.ports: Required value".into());
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    let multi = ports.len() > 1;
    for (i, p) in ports.iter_mut().enumerate() {
        let field = format!("spec.ports[{i}]");
        let pname = p.name.clone().unwrap_or_default();
        if multi && pname.is_empty() {
            return Err(format!(
                "{field}.name: Required value: when there are multiple ports each must be named"
            ));
        }
        if !pname.is_empty() {
            check_dns1123_label(&pname)
                .map_err(|e| format!("{field}.name: Invalid value {pname:?}: {e}"))?;
            if !names.insert(pname.clone()) {
                return Err(format!("{field}.name: Duplicate value: {pname:?}"));
            }
        }
        if !(1..=65535).contains(&p.port) {
            return Err(format!(
                "{field}.port: Invalid value: {}: must be between 1 and 65535, inclusive",
                p.port
            ));
        }
        let proto = p.protocol.get_or_insert_with(|| "TCP".into()).clone();
        if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
            return Err(format!(
                "{field}.protocol: Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
            ));
        }
        if !seen.insert((p.port, proto.clone())) {
            return Err(format!("{field}: Duplicate value: port {} {proto}", p.port));
        }
        match p.target_port.get_or_insert(IntOrString::Int(p.port)) {
            IntOrString::Int(t) if !(1..=65535).contains(t) => {
                return Err(format!(
                    "{field}.targetPort: Invalid value: {t}: must be between 1 and 65535, inclusive"
                ));
            }
            IntOrString::String(s) if check_dns1123_label(s).is_err() || s.len() > 15 => {
                return Err(format!(
                    "{field}.targetPort: Invalid value: {s:?}: must be a valid port name (at most 15 lowercase alphanumeric characters or '-')"
                ));
            }
            _ => {}
        }
        if let Some(np) = p.node_port {
            if type_ == "ClusterIP" {
                return Err(format!(
                    "{field}.nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
                ));
            }
            if !(1..=65535).contains(&np) {
                return Err(format!("{field}.nodePort: Invalid value: {np}"));
            }
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        ip.parse::<IpAddr>().map_err(|_| {
            format!("spec.externalIPs[{i}]: Invalid value: {ip:?}: must be a valid IP address")
        })?;
    }
    let affinity = spec
        .session_affinity
        .get_or_insert_with(|| "None".into())
        .clone();
    match affinity.as_str() {
        "None" => {}
        "ClientIP" => {
            let cfg = spec
                .session_affinity_config
                .get_or_insert_with(Default::default);
            let cip = cfg.client_ip.get_or_insert_with(Default::default);
            let t = *cip.timeout_seconds.get_or_insert(10800);
            if !(1..=86400).contains(&t) {
                return Err(format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}: must be greater than 0 and less than 86400"
                ));
            }
        }
        other => {
            return Err(format!(
                "spec.sessionAffinity: Unsupported value: {other:?}: supported values: \"ClientIP\", \"None\""
            ));
        }
    }
    Ok(svc)
}

/// Validates a manual Endpoints object (for a Service without a selector).
pub fn validate_endpoints(mut ep: Endpoints) -> Result<Endpoints, String> {
    let name = ep.metadata.name.clone().unwrap_or_default();
    check_dns1123_subdomain(&name)
        .map_err(|e| format!("metadata.name: Invalid value {name:?}: {e}"))?;
    ep.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    for (i, s) in ep.subsets.iter().flatten().enumerate() {
        for (j, a) in s.addresses.iter().flatten().enumerate() {
            a.ip.parse::<IpAddr>().map_err(|_| {
                format!("subsets[{i}].addresses[{j}].ip: Invalid value: {:?}", a.ip)
            })?;
        }
        for (j, p) in s.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&p.port) {
                return Err(format!(
                    "subsets[{i}].ports[{j}].port: Invalid value: {}",
                    p.port
                ));
            }
        }
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Result<Service, String> {
        validate_service(serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn defaults() {
        let s = svc("metadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}], sessionAffinity: ClientIP}").unwrap();
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let p = &spec.ports.unwrap()[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        assert_eq!(p.target_port, Some(IntOrString::Int(80)));
        assert_eq!(
            spec.session_affinity_config
                .unwrap()
                .client_ip
                .unwrap()
                .timeout_seconds,
            Some(10800)
        );
    }

    #[test]
    fn invalid_services_name_the_field() {
        for (yaml, want) in [
            (
                "metadata: {name: 1web}\nspec: {ports: [{port: 80}]}",
                "metadata.name",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 70000}]}",
                "spec.ports[0].port",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80}, {port: 81}]}",
                "each must be named",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80}], clusterIP: 10.96.300.1}",
                "spec.clusterIP",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80}], selector: {'bad key!': x}}",
                "spec.selector",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80, nodePort: 30001}]}",
                "nodePort: Forbidden",
            ),
            (
                "metadata: {name: web}\nspec: {type: Fancy, ports: [{port: 80}]}",
                "spec.type",
            ),
            (
                "metadata: {name: web}\nspec: {ports: [{port: 80, targetPort: Not_A_Name}]}",
                "targetPort",
            ),
            (
                "metadata: {name: web}\nspec: {ports: []}",
                "spec.ports: Required",
            ),
        ] {
            let err = svc(yaml).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
        assert!(svc("metadata: {name: db}\nspec: {clusterIP: None, selector: {app: db}}").is_ok());
        assert!(
            svc("metadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com}")
                .is_ok()
        );
    }
}
