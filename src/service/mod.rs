//! The service controller: allocates cluster IPs and node ports, computes
//! Endpoints from Ready pods that match each Service's selector (or takes a
//! selector-less Service's Endpoints from the manifests), and programs the
//! proxy (kube-proxy's iptables mode, see [`crate::proxy`]).

pub mod alloc;
pub mod builtin;
pub mod env;
pub mod master;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tracing::{info, warn};

use self::alloc::Allocator;
use crate::manifest::source::PodKey;
use crate::proxy::{
    self, Conntrack, Endpoint, Iptables, Protocol, Proxier, ServicePort, ServicePortKey,
};
use crate::selector::Selector;
use crate::store::{EventType, Involved, Store};
use crate::util::blocking;

// moved to store/views.rs; re-exported for callers not yet updated
pub use crate::store::Views;

/// The controller.
pub struct Controller<I: Iptables, C: Conntrack> {
    store: Arc<Store>,
    alloc: Allocator,
    proxier: Proxier<I, C>,
    reported: HashMap<PodKey, String>,
    /// When each Service was first seen (its creationTimestamp).
    first_seen: HashMap<PodKey, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    synced_once: bool,
    /// Publish Services and Endpoints but leave the kernel's rules alone
    /// (the warm-up after a start, see [`run`]).
    hold_rules: bool,
    /// When the rules were last written in full.
    last_full_sync: std::time::Instant,
    /// The API's own `default/kubernetes` Service, when the TLS API is on.
    master: Option<master::Master>,
    /// A manifest's `default/kubernetes` was reported as not used.
    master_shadow_reported: bool,
    /// The cluster DNS's `kube-system/kube-dns` Service, when skiffd serves DNS.
    kube_dns: Option<crate::dns::service::KubeDns>,
    /// Bumped after every publication of the views (the DNS follows it).
    published: tokio::sync::watch::Sender<u64>,
}

/// How often everything is rewritten even when nothing seems to have changed (kube-proxy's
/// full-sync period); a flush someone else did is caught sooner by the canary chain.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

fn protocol(p: &str) -> Protocol {
    match p {
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port a pod serves a Service port on: a number, or a container port by name.
fn target_port(tp: &IntOrString, proto: &str, pod: &Pod) -> Option<u16> {
    match tp {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == proto
            })
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

impl<I: Iptables, C: Conntrack> Controller<I, C> {
    pub fn new(store: Arc<Store>, alloc: Allocator, proxier: Proxier<I, C>) -> Self {
        Controller {
            store,
            alloc,
            proxier,
            reported: HashMap::new(),
            first_seen: HashMap::new(),
            synced_once: false,
            hold_rules: false,
            last_full_sync: std::time::Instant::now(),
            master: None,
            master_shadow_reported: false,
            kube_dns: None,
            published: tokio::sync::watch::channel(0).0,
        }
    }

    /// Keeps the `kube-system/kube-dns` Service pointing at skiffd's resolver.
    pub fn with_kube_dns(mut self, dns: crate::dns::service::KubeDns) -> Self {
        self.kube_dns = Some(dns);
        self
    }

    /// Sees a new value each time Services and Endpoints are published to the store.
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Adds the built-in `kube-dns` Service (it replaces a manifest's of the same name, and
    /// its address is taken from any Service that had it).
    fn add_kube_dns(
        &mut self,
        desired: &mut Vec<(PodKey, Arc<Service>)>,
        manual: &mut BTreeMap<PodKey, Arc<Endpoints>>,
    ) {
        let Some(d) = self.kube_dns else { return };
        let key: PodKey = (
            crate::dns::service::NAMESPACE.into(),
            crate::dns::service::NAME.into(),
        );
        desired.retain(|(k, _)| *k != key);
        desired.insert(0, (key.clone(), Arc::new(d.service())));
        manual.insert(key.clone(), Arc::new(d.endpoints()));
        for other in self
            .alloc
            .evict(&format!("{}/{}", key.0, key.1), Some(d.cluster_ip), &[])
        {
            info!(service = %other, "the cluster DNS address belongs to kube-system/kube-dns; allocating again");
        }
    }

    /// Keeps the `default/kubernetes` Service pointing at the TLS API.
    pub fn with_master(mut self, master: master::Master) -> Self {
        self.master = Some(master);
        self
    }

    /// Puts the `kubernetes` Service first (its address is the range's first, which no other
    /// Service may take) and its Endpoints with the manual ones. A manifest's Service of the
    /// same name is not used: the name belongs to the API, as on a cluster.
    fn add_master(
        &mut self,
        desired: &mut Vec<(PodKey, Arc<Service>)>,
        manual: &mut BTreeMap<PodKey, Arc<Endpoints>>,
        manifest_has_it: bool,
    ) {
        let Some(m) = self.master else { return };
        let key: PodKey = (master::NAMESPACE.into(), master::NAME.into());
        desired.retain(|(k, _)| *k != key);
        desired.insert(0, (key.clone(), Arc::new(m.service())));
        manual.insert(key.clone(), Arc::new(m.endpoints()));
        for other in self
            .alloc
            .evict(&format!("{}/{}", key.0, key.1), Some(m.cluster_ip), &[])
        {
            info!(service = %other, "the first service address belongs to default/kubernetes; allocating again");
        }
        if manifest_has_it && !self.master_shadow_reported {
            let msg = "services \"kubernetes\" already exists: default/kubernetes is the API's own Service, kept by skiffd";
            {
                warn!(error = %msg, "service from the manifests not used");
                let obj = Involved {
                    kind: "Service".into(),
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    uid: None,
                };
                self.store
                    .event(&obj, EventType::Warning, "FailedCreate", msg);
                self.master_shadow_reported = true;
            }
        }
        self.master_shadow_reported &= manifest_has_it;
    }

    pub fn request_full_sync(&mut self) {
        self.proxier.request_full_sync();
    }

    /// The periodic check: a full sync when the canary chain is gone (the tables were flushed)
    /// or [`FULL_SYNC_PERIOD`] has passed; otherwise the next reconcile writes only changes.
    pub fn periodic(&mut self) {
        if !proxy::canary_present(self.proxier.iptables()) {
            warn!(
                "the proxy's canary chain is gone (tables flushed?); rewriting every service rule"
            );
            self.proxier.request_full_sync();
        } else if self.last_full_sync.elapsed() >= FULL_SYNC_PERIOD {
            self.proxier.request_full_sync();
        }
    }

    /// Recomputes everything from the store and programs the proxy.
    pub fn reconcile(&mut self) {
        let (local, mut manual) = self.store.desired_services();
        let manifest_has_master =
            local.contains_key(&(master::NAMESPACE.to_string(), master::NAME.to_string()));
        let remote = self.store.remote();
        let mut pods = self.store.list_pods(None);
        pods.extend(remote.pods);
        // Services of other nodes hold their addresses cluster-wide (claimed in etcd): they go
        // first and take their addresses from any local Service that picked the same on its
        // own. A local Service of the same name wins on this node.
        let mut desired: Vec<(PodKey, Arc<Service>)> = remote
            .services
            .into_iter()
            .filter(|(k, _)| !local.contains_key(k))
            .map(|(k, s)| (k, Arc::new(s)))
            .collect();
        for (key, svc) in &desired {
            let spec = svc.spec.as_ref();
            let ip = spec
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            let ports: Vec<u16> = spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| p.node_port.and_then(|n| u16::try_from(n).ok()))
                .collect();
            for other in self
                .alloc
                .evict(&format!("{}/{}", key.0, key.1), ip, &ports)
            {
                info!(service = %other, claimed_by = %format!("{}/{}", key.0, key.1), "address taken cluster-wide by another node's Service; allocating again");
            }
        }
        desired.extend(local);
        self.add_kube_dns(&mut desired, &mut manual);
        self.add_master(&mut desired, &mut manual, manifest_has_master);
        let mut views = Views::default();
        let mut rules: Vec<(ServicePort, Vec<Endpoint>)> = Vec::new();
        let live: HashSet<String> = desired
            .iter()
            .map(|((ns, n), _)| format!("{ns}/{n}"))
            .collect();
        // Until the manifests are surely read (the warm-up), an absent
        // Service may just not be loaded yet: keep its addresses.
        if !self.hold_rules {
            self.alloc.retain(&live);
        }
        for (key, svc) in &desired {
            let id = format!("{}/{}", key.0, key.1);
            let before = self.alloc.by_service.get(&id).cloned();
            let result = self.one(key, svc, &pods, &manual);
            if result.is_err() {
                // A refused Service must not keep what it got before the
                // failing step (a cluster IP when its node port clashes).
                match before {
                    Some(a) => {
                        self.alloc.by_service.insert(id, a);
                    }
                    None => {
                        self.alloc.by_service.remove(&id);
                    }
                }
            }
            match result {
                Ok((view, eps, sps)) => {
                    views.services.insert(key.clone(), view);
                    if let Some(e) = eps {
                        views.endpoints.insert(key.clone(), e);
                    }
                    rules.extend(sps);
                    self.reported.remove(key);
                }
                Err(msg) => {
                    if self.reported.get(key) != Some(&msg) {
                        warn!(service = %format!("{}/{}", key.0, key.1), error = %msg, "service rejected");
                        let obj = Involved {
                            kind: "Service".into(),
                            namespace: key.0.clone(),
                            name: key.1.clone(),
                            uid: None,
                        };
                        self.store
                            .event(&obj, EventType::Warning, "FailedAllocation", &msg);
                        self.reported.insert(key.clone(), msg.clone());
                    }
                    views.rejected.insert(key.clone(), msg);
                }
            }
        }
        if let Err(e) = self.alloc.save() {
            warn!(error = %e, "saving service allocations");
        }
        if self.hold_rules {
            self.store.set_service_views(views);
            self.published.send_modify(|v| *v += 1);
            return;
        }
        self.proxier.replace_all(rules);
        match self.proxier.sync() {
            Ok(stats) => {
                if !self.synced_once {
                    self.synced_once = true;
                    info!(?stats, "service rules programmed");
                }
                if stats.full {
                    self.last_full_sync = std::time::Instant::now();
                    if let Err(e) = proxy::ensure_canary(self.proxier.iptables()) {
                        warn!(error = %e, "creating the proxy's canary chain");
                    }
                }
            }
            Err(e) => warn!(error = %e, "programming service rules"),
        }
        // Published only now: a client that sees an endpoint and connects
        // at once must meet its rules, or its conntrack entry pins the
        // un-translated path for the whole connection.
        self.store.set_service_views(views);
        self.published.send_modify(|v| *v += 1);
    }

    #[allow(clippy::type_complexity)]
    fn one(
        &mut self,
        key: &PodKey,
        svc: &Service,
        pods: &[Pod],
        manual: &BTreeMap<PodKey, Arc<Endpoints>>,
    ) -> Result<
        (
            Service,
            Option<Endpoints>,
            Vec<(ServicePort, Vec<Endpoint>)>,
        ),
        String,
    > {
        let id = format!("{}/{}", key.0, key.1);
        let mut view = svc.clone();
        let created = self
            .first_seen
            .entry(key.clone())
            .or_insert_with(|| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
            })
            .clone();
        view.metadata.creation_timestamp.get_or_insert(created);
        let spec = view.spec.get_or_insert_with(Default::default);
        let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        if type_ == "ExternalName" {
            return Ok((view, None, Vec::new()));
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let cluster_ip = if headless {
            None
        } else {
            let wanted = spec
                .cluster_ip
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<Ipv4Addr>().map_err(|_| {
                        format!("spec.clusterIP: Invalid value {s:?}: only IPv4 is supported")
                    })
                })
                .transpose()?;
            let ip = self.alloc.cluster_ip(&id, wanted)?;
            spec.cluster_ip = Some(ip.to_string());
            spec.cluster_ips = Some(vec![ip.to_string()]);
            Some(ip)
        };
        spec.ip_families = Some(vec!["IPv4".into()]);
        spec.ip_family_policy
            .get_or_insert_with(|| "SingleStack".into());
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        let node_ports = type_ == "NodePort" || type_ == "LoadBalancer";
        if node_ports {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        let mut keep = HashSet::new();
        for p in spec.ports.iter_mut().flatten() {
            if node_ports {
                let pk = format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP"));
                let np = self
                    .alloc
                    .node_port(&id, &pk, p.node_port.map(|n| n as u16))?;
                p.node_port = Some(np.into());
                keep.insert(pk);
            }
        }
        self.alloc.retain_ports(&id, &keep);
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800) as u32
        });
        let ports = spec.ports.clone().unwrap_or_default();
        // Endpoints: from matching pods, or the manual object of a selector-less Service.
        let (endpoints_obj, per_port) = match &spec.selector {
            Some(sel) if !sel.is_empty() => {
                let selector =
                    Selector::from_map(sel).map_err(|e| format!("spec.selector: {e}"))?;
                let matching: Vec<&Pod> = pods
                    .iter()
                    .filter(|p| p.metadata.namespace.as_deref() == Some(key.0.as_str()))
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| selector.matches(&p.metadata.labels.clone().unwrap_or_default()))
                    .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                    .filter(|p| {
                        !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded") | Some("Failed")
                        )
                    })
                    .collect();
                let mut per_port: Vec<Vec<Endpoint>> = Vec::new();
                let mut subsets: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> =
                    BTreeMap::new();
                for sp in &ports {
                    let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                    let tp = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                    let mut eps = Vec::new();
                    for pod in &matching {
                        let Some(ip) = pod
                            .status
                            .as_ref()
                            .and_then(|s| s.pod_ip.as_deref())
                            .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        else {
                            continue;
                        };
                        let Some(port) = target_port(&tp, &proto, pod) else {
                            continue;
                        };
                        eps.push(Endpoint {
                            ip,
                            port,
                            ready: pod_ready(pod),
                            local: pod
                                .spec
                                .as_ref()
                                .and_then(|s| s.node_name.as_deref())
                                .is_none_or(|n| n == self.store.node_name()),
                        });
                    }
                    eps.sort();
                    per_port.push(eps);
                }
                // Endpoints object: group pods by the ports they serve.
                for pod in &matching {
                    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                        continue;
                    };
                    let pod_ports: Vec<(String, i32, String)> = ports
                        .iter()
                        .filter_map(|sp| {
                            let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                            let tp = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                            target_port(&tp, &proto, pod)
                                .map(|p| (sp.name.clone().unwrap_or_default(), p as i32, proto))
                        })
                        .collect();
                    if pod_ports.is_empty() {
                        continue;
                    }
                    let subset =
                        subsets
                            .entry(pod_ports.clone())
                            .or_insert_with(|| EndpointSubset {
                                ports: Some(
                                    pod_ports
                                        .iter()
                                        .map(|(n, p, proto)| EndpointPort {
                                            name: (!n.is_empty()).then(|| n.clone()),
                                            port: *p,
                                            protocol: Some(proto.clone()),
                                            ..Default::default()
                                        })
                                        .collect(),
                                ),
                                ..Default::default()
                            });
                    let addr = EndpointAddress {
                        ip,
                        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            name: pod.metadata.name.clone(),
                            namespace: pod.metadata.namespace.clone(),
                            uid: pod.metadata.uid.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    if pod_ready(pod) {
                        subset.addresses.get_or_insert_with(Vec::new).push(addr);
                    } else {
                        subset
                            .not_ready_addresses
                            .get_or_insert_with(Vec::new)
                            .push(addr);
                    }
                }
                let ep = Endpoints {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some(key.1.clone()),
                        namespace: Some(key.0.clone()),
                        labels: view.metadata.labels.clone(),
                        creation_timestamp: view.metadata.creation_timestamp.clone(),
                        ..Default::default()
                    },
                    subsets: (!subsets.is_empty()).then(|| subsets.into_values().collect()),
                };
                (Some(ep), per_port)
            }
            _ => {
                let ep = manual.get(key).map(|e| Endpoints::clone(e));
                let mut per_port = Vec::new();
                for sp in &ports {
                    let name = sp.name.clone().unwrap_or_default();
                    let mut eps = Vec::new();
                    for s in ep.iter().flat_map(|e| e.subsets.iter().flatten()) {
                        let port = s
                            .ports
                            .iter()
                            .flatten()
                            .find(|p| p.name.clone().unwrap_or_default() == name)
                            .map(|p| p.port as u16);
                        let Some(port) = port else { continue };
                        for (addrs, ready) in
                            [(&s.addresses, true), (&s.not_ready_addresses, false)]
                        {
                            for a in addrs.iter().flatten() {
                                if let Ok(ip) = a.ip.parse() {
                                    eps.push(Endpoint {
                                        ip,
                                        port,
                                        ready,
                                        local: false,
                                    });
                                }
                            }
                        }
                    }
                    eps.sort();
                    per_port.push(eps);
                }
                (ep, per_port)
            }
        };
        let mut rules = Vec::new();
        if let Some(ip) = cluster_ip {
            for (sp, eps) in ports.iter().zip(per_port) {
                rules.push((
                    ServicePort {
                        key: ServicePortKey::new(&key.0, &key.1, sp.name.as_deref().unwrap_or("")),
                        protocol: protocol(sp.protocol.as_deref().unwrap_or("TCP")),
                        cluster_ip: ip,
                        port: sp.port as u16,
                        node_port: if node_ports {
                            sp.node_port.map(|n| n as u16)
                        } else {
                            None
                        },
                        external_ips: external_ips.clone(),
                        session_affinity_timeout: affinity,
                    },
                    eps,
                ));
            }
        }
        Ok((view, endpoints_obj, rules))
    }

    /// Removes every rule skiff installed (`--cleanup-iptables`, orderly shutdown).
    pub fn cleanup(&mut self) -> Result<(), proxy::ProxyError> {
        self.proxier.cleanup()?;
        if let Err(e) = proxy::remove_canary(self.proxier.iptables()) {
            warn!(error = %e, "removing the proxy's canary chain");
        }
        Ok(())
    }
}

/// Runs the controller until `shutdown`: after every change in the store
/// (debounced) and a full resync every `resync`.
pub async fn run<I: Iptables + Send + 'static, C: Conntrack + Send + 'static>(
    mut ctl: Controller<I, C>,
    resync: Duration,
    cleanup_on_exit: bool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut changes = ctl.store.subscribe();
    let mut ticker = tokio::time::interval(resync);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Rules of the previous skiffd are still in the kernel and keep traffic
    // flowing; syncing before the manifests are read and the running pods
    // adopted would remove them or point them at nothing (kube-proxy
    // likewise waits for its informers to sync before the first sync).
    // With nothing installed there is nothing to keep: sync at once, or
    // clients would see cluster IPs before their rules.
    let installed = blocking(|| ctl.proxier.rules_installed());
    let warm_up = tokio::time::Instant::now() + if installed { WARM_UP } else { Duration::ZERO };
    let mut seen_services = None;
    ctl.hold_rules = true;
    loop {
        blocking(|| ctl.reconcile());
        let now = tokio::time::Instant::now();
        if now >= warm_up {
            break;
        }
        if !ctl.store.desired_services().0.is_empty() {
            // The manager puts the pods of a snapshot right after its Services.
            let since = *seen_services.get_or_insert(now);
            if now >= since + Duration::from_millis(200)
                && ctl.store.list_pods(None).iter().all(pod_settled)
            {
                break;
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut shutdown => {
                if cleanup_on_exit {
                    let _ = blocking(|| ctl.cleanup());
                }
                return;
            }
        }
    }
    ctl.hold_rules = false;
    loop {
        blocking(|| ctl.reconcile());
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    break;
                }
                // Let a burst of status updates settle into one sync.
                tokio::time::sleep(Duration::from_millis(20)).await;
                changes.borrow_and_update();
            }
            _ = ticker.tick() => blocking(|| ctl.periodic()),
            _ = &mut shutdown => break,
        }
    }
    if cleanup_on_exit {
        match blocking(|| ctl.cleanup()) {
            Ok(()) => info!("removed skiff's service rules"),
            Err(e) => warn!(error = %e, "removing skiff's service rules"),
        }
    }
}

/// The longest the first sync waits for manifests and adopted pods.
const WARM_UP: Duration = Duration::from_secs(5);

/// Whether the pod's worker has reported it Ready or finished: the manager
/// first shows a pod with a placeholder status (no IP) and an adopted pod
/// is not Ready until its worker's first sync.
fn pod_settled(p: &Pod) -> bool {
    pod_ready(p)
        || matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        PodCondition, PodSpec, PodStatus, ServicePort as KPort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::proxy::{FakeConntrack, FakeIptables, RuleConfig};
    use crate::store::Remote;

    fn service(name: &str, ip: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: ip.map(String::from),
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: Some(vec![KPort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn remote_pod(name: &str, ip: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn cluster_ip_of(store: &Store, name: &str) -> String {
        store
            .services(None)
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.spec?.cluster_ip)
            .unwrap_or_else(|| panic!("no view of {name}"))
    }

    /// Another node's Service keeps the address it claimed cluster-wide; a local Service that
    /// had picked the same one on its own moves; endpoints come from every node's pods.
    #[test]
    fn remote_services_keep_their_claims_and_local_ones_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::new("a"));
        let alloc = Allocator::load(
            &dir.path().join("a.json"),
            "10.96.0.0/24".parse().unwrap(),
            (30000, 30010),
        );
        let proxier = Proxier::new(
            FakeIptables::default(),
            FakeConntrack::default(),
            RuleConfig::default(),
        );
        let mut ctl = Controller::new(store.clone(), alloc, proxier);
        let key = |n: &str| ("default".to_string(), n.to_string());
        store.set_desired_services(
            BTreeMap::from([(key("mine"), Arc::new(service("mine", None)))]),
            BTreeMap::new(),
        );
        ctl.reconcile();
        let picked = cluster_ip_of(&store, "mine");

        store.set_remote(Remote {
            services: BTreeMap::from([(key("theirs"), service("theirs", Some(&picked)))]),
            pods: vec![remote_pod("web-b", "10.244.2.5", "b")],
            nodes: Vec::new(),
        });
        ctl.reconcile();
        assert_eq!(cluster_ip_of(&store, "theirs"), picked);
        let moved = cluster_ip_of(&store, "mine");
        assert_ne!(
            moved, picked,
            "the local Service must give up the claimed address"
        );
        let eps = store.endpoints(None);
        let theirs = eps
            .iter()
            .find(|e| e.metadata.name.as_deref() == Some("theirs"))
            .unwrap();
        let addrs: Vec<&str> = theirs
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(addrs, ["10.244.2.5"]);
        assert_eq!(
            theirs.subsets.as_ref().unwrap()[0]
                .addresses
                .as_ref()
                .unwrap()[0]
                .node_name
                .as_deref(),
            Some("b")
        );

        // A local Service of the same name as a remote one wins on this node.
        store.set_desired_services(
            BTreeMap::from([
                (key("mine"), Arc::new(service("mine", None))),
                (
                    key("theirs"),
                    Arc::new(service("theirs", Some("10.96.0.77"))),
                ),
            ]),
            BTreeMap::new(),
        );
        ctl.reconcile();
        assert_eq!(cluster_ip_of(&store, "theirs"), "10.96.0.77");
    }
}
