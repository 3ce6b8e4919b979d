//! The kubelet's service environment variables (`enableServiceLinks`):
//! `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`, `{SVC}_PORT_...` (Docker links style).

use k8s_openapi::api::core::v1::Service;

use crate::store::Store;

/// Variables for the Services of a namespace that exist when a container starts.
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" || spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let name = svc
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let prefix = format!("{name}_PORT_{}_{}", p.port, pr);
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// `links` (the namespace's variables, empty with `enableServiceLinks: false`) plus the
/// `default/kubernetes` Service's variables, which the kubelet gives every pod in every
/// namespace; a Service of the pod's own namespace named `kubernetes` wins over it.
pub fn with_master(links: &[(String, String)], store: &Store) -> Vec<(String, String)> {
    let master: Vec<Service> = store
        .services(Some(super::master::NAMESPACE))
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() == Some(super::master::NAME))
        .collect();
    let mut out = links.to_vec();
    if links.iter().any(|(k, _)| k == "KUBERNETES_SERVICE_HOST") {
        return out;
    }
    out.extend(service_env(&master));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_style_variables() {
        let svc: Service = serde_yaml_ng::from_str(
            "metadata: {name: redis-primary}\nspec: {clusterIP: 10.96.0.11, ports: [{name: redis, port: 6379, protocol: TCP}, {name: metrics, port: 9121}]}",
        )
        .unwrap();
        let env = service_env(&[svc]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_PRIMARY_SERVICE_HOST"), Some("10.96.0.11"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT_METRICS"), Some("9121"));
        assert_eq!(get("REDIS_PRIMARY_PORT"), Some("tcp://10.96.0.11:6379"));
        assert_eq!(
            get("REDIS_PRIMARY_PORT_6379_TCP"),
            Some("tcp://10.96.0.11:6379")
        );
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_PORT"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_ADDR"), Some("10.96.0.11"));
        let headless: Service = serde_yaml_ng::from_str(
            "metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 1}]}",
        )
        .unwrap();
        assert!(service_env(&[headless]).is_empty());
    }

    #[test]
    fn the_kubernetes_service_variables_reach_every_namespace() {
        let store = Store::new("n");
        let m = crate::service::master::Master {
            cluster_ip: "10.96.0.1".parse().unwrap(),
            endpoint: "10.244.0.1".parse().unwrap(),
            port: 6443,
        };
        let mut views = crate::store::Views::default();
        views
            .services
            .insert(("default".into(), "kubernetes".into()), m.service());
        store.set_service_views(views);
        let env = with_master(&[], &store);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.96.0.1"));
        // The namespace's own `kubernetes` Service wins.
        let own = vec![(
            "KUBERNETES_SERVICE_HOST".to_string(),
            "10.96.5.5".to_string(),
        )];
        assert_eq!(with_master(&own, &store), own);
    }
}
