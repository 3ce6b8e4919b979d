//! The cluster's names, as the Kubernetes DNS specification and CoreDNS's `kubernetes` plugin
//! give them: a pure function from a [`Snapshot`] of Services, Endpoints and pods and one
//! question to an answer. No I/O here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};

/// TTL of every cluster record (CoreDNS's `ttl` option; the spec's minimum is 0, CoreDNS's
/// default 30; 5 keeps clients close to endpoint changes).
pub const TTL: u32 = 5;

/// A port as DNS publishes it: name, protocol (`tcp`/`udp`/`sctp`), number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    name: String,
    proto: String,
    port: u16,
}

/// One ready endpoint of a headless Service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    ip: Ipv4Addr,
    /// The endpoint's DNS label: the pod's hostname (when its subdomain is the Service's name),
    /// else the dashed IP.
    label: String,
    ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    ClusterIp(Ipv4Addr),
    Headless(Vec<Endpoint>),
    ExternalName(Name),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    kind: Kind,
    ports: Vec<Port>,
}

/// What the resolver knows of the cluster at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The cluster domain as a name (`cluster.local.`).
    domain: Name,
    /// Services by (namespace, name), lowercase.
    services: HashMap<(String, String), Svc>,
    /// Namespaces that hold a Service or a pod: `ns.svc.<domain>` exists for them.
    namespaces: BTreeSet<String>,
    /// Pod IPs by namespace (`1-2-3-4.ns.pod.<domain>`, verified as CoreDNS's `pods verified`).
    pod_ips: BTreeSet<(String, Ipv4Addr)>,
    /// Reverse names: Service ClusterIPs, headless endpoints, pods.
    ptr: BTreeMap<Ipv4Addr, Name>,
    /// Bumped with every new snapshot: the SOA's serial.
    pub serial: u32,
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not a name of the cluster: forward it upstream.
    NotOurs,
    /// The name does not exist (NXDOMAIN, SOA in authority).
    NxDomain,
    /// The name exists but has no record of that type (NOERROR, empty, SOA in authority).
    NoData,
    /// Records for the answer section.
    Answer(Vec<Record>),
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// `10-244-0-5` for 10.244.0.5.
pub fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// A valid DNS label (RFC 1123), as the apiserver checks hostname and subdomain.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Snapshot {
    /// Builds the snapshot. `domain` is `--cluster-domain` (`cluster.local`).
    pub fn build(
        domain: &str,
        services: &[Service],
        endpoints: &[Endpoints],
        pods: &[Pod],
        serial: u32,
    ) -> Snapshot {
        let domain = Name::from_ascii(format!("{}.", domain.trim_end_matches('.')))
            .unwrap_or_else(|_| Name::from_ascii("cluster.local.").expect("valid"))
            .to_lowercase();
        let mut snap = Snapshot {
            domain,
            services: HashMap::new(),
            namespaces: BTreeSet::new(),
            pod_ips: BTreeSet::new(),
            ptr: BTreeMap::new(),
            serial,
        };
        let eps: HashMap<(String, String), &Endpoints> = endpoints
            .iter()
            .map(|e| {
                let m = &e.metadata;
                (
                    (
                        m.namespace.clone().unwrap_or_default(),
                        m.name.clone().unwrap_or_default(),
                    ),
                    e,
                )
            })
            .collect();
        // Pods by uid and by (namespace, name) for the endpoints' hostnames: in multi-host mode
        // two nodes may each run a pod of the same name, and the uid tells them apart.
        let by_uid: HashMap<&str, &Pod> = pods
            .iter()
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
            .collect();
        let by_name: HashMap<(String, String), &Pod> = pods
            .iter()
            .map(|p| {
                (
                    (
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                    ),
                    p,
                )
            })
            .collect();
        for p in pods {
            let ns = lower(p.metadata.namespace.as_deref().unwrap_or("default"));
            snap.namespaces.insert(ns.clone());
            if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                continue;
            }
            if let Some(ip) = pod_ip(p) {
                snap.pod_ips.insert((ns.clone(), ip));
                if let Ok(n) = snap.name(&[&dashed(ip), &ns, "pod"]) {
                    snap.ptr.entry(ip).or_insert(n);
                }
            }
        }
        for s in services {
            let ns = lower(s.metadata.namespace.as_deref().unwrap_or("default"));
            let name = lower(s.metadata.name.as_deref().unwrap_or_default());
            if !is_label(&name) {
                continue;
            }
            snap.namespaces.insert(ns.clone());
            let Some(spec) = s.spec.as_ref() else {
                continue;
            };
            let ports: Vec<Port> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: lower(p.name.as_deref().unwrap_or_default()),
                        proto: lower(p.protocol.as_deref().unwrap_or("TCP")),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                let Some(target) = spec
                    .external_name
                    .as_deref()
                    .and_then(|n| Name::from_ascii(format!("{}.", n.trim_end_matches('.'))).ok())
                else {
                    continue;
                };
                Kind::ExternalName(target)
            } else if spec.cluster_ip.as_deref() == Some("None") {
                let mut list = Vec::new();
                let subsets = eps
                    .get(&(ns.clone(), name.clone()))
                    .and_then(|e| e.subsets.as_ref());
                for sub in subsets.into_iter().flatten() {
                    let ports: Vec<Port> = sub
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|p| {
                            Some(Port {
                                name: lower(p.name.as_deref().unwrap_or_default()),
                                proto: lower(p.protocol.as_deref().unwrap_or("TCP")),
                                port: u16::try_from(p.port).ok()?,
                            })
                        })
                        .collect();
                    for a in sub.addresses.iter().flatten() {
                        let Ok(ip) = a.ip.parse::<Ipv4Addr>() else {
                            continue;
                        };
                        // The endpoints controller's rule: the pod's hostname names the
                        // endpoint when its subdomain is this Service.
                        let from_pod = a
                            .target_ref
                            .as_ref()
                            .filter(|r| r.kind.as_deref() == Some("Pod"))
                            .and_then(|r| match r.uid.as_deref() {
                                Some(uid) => by_uid.get(uid),
                                None => by_name.get(&(
                                    r.namespace.clone().unwrap_or_default(),
                                    r.name.clone().unwrap_or_default(),
                                )),
                            })
                            .and_then(|p| p.spec.as_ref())
                            .filter(|sp| sp.subdomain.as_deref().map(lower) == Some(name.clone()))
                            .and_then(|sp| sp.hostname.clone());
                        let label = a
                            .hostname
                            .clone()
                            .or(from_pod)
                            .map(|h| lower(&h))
                            .filter(|h| is_label(h))
                            .unwrap_or_else(|| dashed(ip));
                        if let Ok(n) = snap.name(&[&label, &name, &ns, "svc"]) {
                            snap.ptr.insert(ip, n);
                        }
                        list.push(Endpoint {
                            ip,
                            label,
                            ports: ports.clone(),
                        });
                    }
                }
                list.sort_by_key(|e| e.ip);
                list.dedup_by_key(|e| e.ip);
                Kind::Headless(list)
            } else {
                let Some(ip) = spec
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                if let Ok(n) = snap.name(&[&name, &ns, "svc"]) {
                    snap.ptr.insert(ip, n);
                }
                Kind::ClusterIp(ip)
            };
            snap.services.insert((ns, name), Svc { kind, ports });
        }
        snap
    }

    /// `labels` + `.svc.<domain>`-style absolute name.
    fn name(&self, labels: &[&str]) -> Result<Name, hickory_proto::ProtoError> {
        Name::from_ascii(labels.join("."))?.append_domain(&self.domain)
    }

    /// The cluster domain (`cluster.local.`).
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> Record {
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        Record::from_rdata(
            self.domain.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, self.serial, 7200, 1800, 86400, TTL)),
        )
    }

    /// Answers one question.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let qname = qname.to_lowercase();
        let mut fqdn = qname.clone();
        fqdn.set_fqdn(true);
        if let Some(ip) = reverse_ipv4(&fqdn) {
            return match self.ptr.get(&ip) {
                Some(target) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                    Lookup::Answer(vec![Record::from_rdata(
                        fqdn,
                        TTL,
                        RData::PTR(PTR(target.clone())),
                    )])
                }
                Some(_) => Lookup::NoData,
                None => Lookup::NotOurs,
            };
        }
        if !self.domain.zone_of(&fqdn) {
            return Lookup::NotOurs;
        }
        // The labels below the domain, innermost last: `web.shop.svc` -> [svc, shop, web].
        let extra = usize::from(fqdn.num_labels() - self.domain.num_labels());
        let labels: Vec<String> = fqdn
            .iter()
            .take(extra)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let rev: Vec<&str> = labels.iter().rev().map(String::as_str).collect();
        let rec = |rdata: RData| Record::from_rdata(fqdn.clone(), TTL, rdata);
        let only = |want: RecordType, records: Vec<Record>| -> Lookup {
            if qtype == want || qtype == RecordType::ANY {
                if records.is_empty() {
                    Lookup::NoData
                } else {
                    Lookup::Answer(records)
                }
            } else {
                Lookup::NoData
            }
        };
        match rev.as_slice() {
            [] => match qtype {
                RecordType::SOA | RecordType::ANY => Lookup::Answer(vec![self.soa()]),
                _ => Lookup::NoData,
            },
            ["svc"] | ["pod"] => Lookup::NoData,
            ["svc", ns] | ["pod", ns] => {
                if self.namespaces.contains(*ns) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            ["pod", ns, ip] => {
                let parsed = ip.replace('-', ".").parse::<Ipv4Addr>().ok();
                match parsed {
                    Some(ip) if self.pod_ips.contains(&((*ns).to_string(), ip)) => {
                        only(RecordType::A, vec![rec(RData::A(A(ip)))])
                    }
                    _ => Lookup::NxDomain,
                }
            }
            ["svc", ns, name] => {
                let Some(svc) = self.services.get(&((*ns).to_string(), (*name).to_string())) else {
                    return Lookup::NxDomain;
                };
                match &svc.kind {
                    // A CNAME answers every type; the client follows it.
                    Kind::ExternalName(target) => {
                        Lookup::Answer(vec![rec(RData::CNAME(CNAME(target.clone())))])
                    }
                    Kind::ClusterIp(_) if qtype == RecordType::SRV => only(
                        RecordType::SRV,
                        svc.ports
                            .iter()
                            .filter(|p| !p.name.is_empty())
                            .map(|p| rec(RData::SRV(SRV::new(0, 100, p.port, fqdn.clone()))))
                            .collect(),
                    ),
                    Kind::ClusterIp(ip) => only(RecordType::A, vec![rec(RData::A(A(*ip)))]),
                    Kind::Headless(eps) if qtype == RecordType::SRV => {
                        let mut out = Vec::new();
                        for e in eps {
                            let Ok(target) = self.name(&[&e.label, name, ns, "svc"]) else {
                                continue;
                            };
                            for p in e.ports.iter().filter(|p| !p.name.is_empty()) {
                                out.push(rec(RData::SRV(SRV::new(0, 100, p.port, target.clone()))));
                            }
                        }
                        only(RecordType::SRV, out)
                    }
                    Kind::Headless(eps) => only(
                        RecordType::A,
                        eps.iter().map(|e| rec(RData::A(A(e.ip)))).collect(),
                    ),
                }
            }
            ["svc", ns, name, host] => {
                let Some(svc) = self.services.get(&((*ns).to_string(), (*name).to_string())) else {
                    return Lookup::NxDomain;
                };
                let Kind::Headless(eps) = &svc.kind else {
                    return Lookup::NxDomain;
                };
                let hits: Vec<Record> = eps
                    .iter()
                    .filter(|e| e.label == *host)
                    .map(|e| rec(RData::A(A(e.ip))))
                    .collect();
                if hits.is_empty() {
                    Lookup::NxDomain
                } else {
                    only(RecordType::A, hits)
                }
            }
            ["svc", ns, name, proto, port] => {
                let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_'))
                else {
                    return Lookup::NxDomain;
                };
                let Some(svc) = self.services.get(&((*ns).to_string(), (*name).to_string())) else {
                    return Lookup::NxDomain;
                };
                let matches = |p: &Port| p.name == port && p.proto == proto;
                let mut out = Vec::new();
                match &svc.kind {
                    Kind::ClusterIp(_) => {
                        let Ok(target) = self.name(&[name, ns, "svc"]) else {
                            return Lookup::NxDomain;
                        };
                        for p in svc.ports.iter().filter(|p| matches(p)) {
                            out.push(rec(RData::SRV(SRV::new(0, 100, p.port, target.clone()))));
                        }
                    }
                    Kind::Headless(eps) => {
                        for e in eps {
                            let Ok(target) = self.name(&[&e.label, name, ns, "svc"]) else {
                                continue;
                            };
                            for p in e.ports.iter().filter(|p| matches(p)) {
                                out.push(rec(RData::SRV(SRV::new(0, 100, p.port, target.clone()))));
                            }
                        }
                    }
                    Kind::ExternalName(_) => return Lookup::NxDomain,
                }
                // The port name exists on the Service: NODATA when no endpoint serves it yet.
                if out.is_empty() && !svc.ports.iter().any(matches) {
                    return Lookup::NxDomain;
                }
                only(RecordType::SRV, out)
            }
            _ => Lookup::NxDomain,
        }
    }
}

/// The IPv4 address of a `d.c.b.a.in-addr.arpa.` name.
fn reverse_ipv4(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let [d, c, b, a, arpa1, arpa2] = labels.as_slice() else {
        return None;
    };
    if arpa1 != "in-addr" || arpa2 != "arpa" {
        return None;
    }
    format!("{a}.{b}.{c}.{d}").parse().ok()
}
