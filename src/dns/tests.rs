//! The name -> answer logic over a snapshot, and the message handling around it.

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};

use super::records::{Lookup, Snapshot};
use super::*;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).unwrap()
}

fn snapshot() -> Snapshot {
    let services: Vec<Service> = vec![
        yaml(
            "metadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 80, protocol: TCP}, {port: 81}]}",
        ),
        yaml(
            "metadata: {name: db, namespace: shop}\nspec: {clusterIP: None, ports: [{name: pg, port: 5432}]}",
        ),
        yaml(
            "metadata: {name: empty, namespace: shop}\nspec: {clusterIP: None, ports: [{name: pg, port: 5432}]}",
        ),
        yaml(
            "metadata: {name: ext, namespace: shop}\nspec: {type: ExternalName, externalName: example.org}",
        ),
    ];
    let endpoints: Vec<Endpoints> = vec![yaml(
        "metadata: {name: db, namespace: shop}\nsubsets:\n- addresses:\n  - {ip: 10.244.0.7, targetRef: {kind: Pod, name: db-0, namespace: shop}}\n  - {ip: 10.244.0.8}\n  notReadyAddresses: [{ip: 10.244.0.9}]\n  ports: [{name: pg, port: 5433, protocol: TCP}]",
    )];
    let pods: Vec<Pod> = vec![
        yaml(
            "metadata: {name: db-0, namespace: shop}\nspec: {hostname: db-0, subdomain: db, containers: []}\nstatus: {podIP: 10.244.0.7}",
        ),
        yaml(
            "metadata: {name: other, namespace: shop}\nspec: {containers: []}\nstatus: {podIP: 10.244.0.8}",
        ),
    ];
    Snapshot::build("cluster.local", &services, &endpoints, &pods, 7)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn rdata(l: Lookup) -> Vec<String> {
    match l {
        Lookup::Answer(r) => r
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => a.0.to_string(),
                RData::CNAME(c) => format!("CNAME {}", c.0),
                RData::PTR(p) => format!("PTR {}", p.0),
                RData::SRV(s) => format!("SRV {} {}", s.port(), s.target()),
                other => format!("{other:?}"),
            })
            .collect(),
        other => vec![format!("{other:?}")],
    }
}

#[test]
fn cluster_ip_service_and_its_srv() {
    let s = snapshot();
    let q = |n: &str, t| rdata(s.lookup(&name(n), t));
    assert_eq!(
        q("web.shop.svc.cluster.local.", RecordType::A),
        ["10.96.0.50"]
    );
    // Case does not matter; relative names are taken as absolute.
    assert_eq!(
        q("WEB.Shop.SVC.cluster.LOCAL", RecordType::A),
        ["10.96.0.50"]
    );
    assert_eq!(
        q("web.shop.svc.cluster.local.", RecordType::AAAA),
        ["NoData"]
    );
    assert_eq!(
        q("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV),
        ["SRV 80 web.shop.svc.cluster.local."]
    );
    assert_eq!(
        q("web.shop.svc.cluster.local.", RecordType::SRV),
        ["SRV 80 web.shop.svc.cluster.local."]
    );
    assert_eq!(
        q("_http._udp.web.shop.svc.cluster.local.", RecordType::SRV),
        ["NxDomain"]
    );
    assert_eq!(
        q("_http._tcp.web.shop.svc.cluster.local.", RecordType::A),
        ["NoData"]
    );
}

#[test]
fn headless_service_endpoints_and_hostnames() {
    let s = snapshot();
    let q = |n: &str, t| rdata(s.lookup(&name(n), t));
    // Ready endpoints only.
    assert_eq!(
        q("db.shop.svc.cluster.local.", RecordType::A),
        ["10.244.0.7", "10.244.0.8"]
    );
    assert_eq!(
        q("db-0.db.shop.svc.cluster.local.", RecordType::A),
        ["10.244.0.7"]
    );
    assert_eq!(
        q("10-244-0-8.db.shop.svc.cluster.local.", RecordType::A),
        ["10.244.0.8"]
    );
    assert_eq!(
        q("db-1.db.shop.svc.cluster.local.", RecordType::A),
        ["NxDomain"]
    );
    assert_eq!(
        q("_pg._tcp.db.shop.svc.cluster.local.", RecordType::SRV),
        [
            "SRV 5433 db-0.db.shop.svc.cluster.local.",
            "SRV 5433 10-244-0-8.db.shop.svc.cluster.local."
        ]
    );
    // A headless Service without endpoints exists: NODATA; its named port too.
    assert_eq!(
        q("empty.shop.svc.cluster.local.", RecordType::A),
        ["NoData"]
    );
    assert_eq!(
        q("_pg._tcp.empty.shop.svc.cluster.local.", RecordType::SRV),
        ["NoData"]
    );
    // A ClusterIP Service has no per-endpoint names.
    assert_eq!(
        q("x.web.shop.svc.cluster.local.", RecordType::A),
        ["NxDomain"]
    );
}

#[test]
fn external_name_pods_and_reverse() {
    let s = snapshot();
    let q = |n: &str, t| rdata(s.lookup(&name(n), t));
    assert_eq!(
        q("ext.shop.svc.cluster.local.", RecordType::A),
        ["CNAME example.org."]
    );
    assert_eq!(
        q("ext.shop.svc.cluster.local.", RecordType::AAAA),
        ["CNAME example.org."]
    );
    assert_eq!(
        q("10-244-0-8.shop.pod.cluster.local.", RecordType::A),
        ["10.244.0.8"]
    );
    // Verified: the pod must exist in that namespace.
    assert_eq!(
        q("10-244-0-8.other.pod.cluster.local.", RecordType::A),
        ["NxDomain"]
    );
    assert_eq!(
        q("10-244-0-99.shop.pod.cluster.local.", RecordType::A),
        ["NxDomain"]
    );
    assert_eq!(
        q("50.0.96.10.in-addr.arpa.", RecordType::PTR),
        ["PTR web.shop.svc.cluster.local."]
    );
    assert_eq!(
        q("7.0.244.10.in-addr.arpa.", RecordType::PTR),
        ["PTR db-0.db.shop.svc.cluster.local."]
    );
    assert_eq!(q("1.2.3.4.in-addr.arpa.", RecordType::PTR), ["NotOurs"]);
}

#[test]
fn nxdomain_nodata_and_names_outside() {
    let s = snapshot();
    let q = |n: &str, t| rdata(s.lookup(&name(n), t));
    assert_eq!(
        q("nope.shop.svc.cluster.local.", RecordType::A),
        ["NxDomain"]
    );
    assert_eq!(
        q("web.nope.svc.cluster.local.", RecordType::A),
        ["NxDomain"]
    );
    assert_eq!(q("shop.svc.cluster.local.", RecordType::A), ["NoData"]);
    assert_eq!(q("nope.svc.cluster.local.", RecordType::A), ["NxDomain"]);
    assert_eq!(q("svc.cluster.local.", RecordType::A), ["NoData"]);
    assert_eq!(q("cluster.local.", RecordType::A), ["NoData"]);
    assert_eq!(q("foo.cluster.local.", RecordType::A), ["NxDomain"]);
    assert_eq!(q("example.com.", RecordType::A), ["NotOurs"]);
    assert_eq!(
        q("web.shop.svc.cluster.local.example.com.", RecordType::A),
        ["NotOurs"]
    );
}

#[test]
fn other_cluster_domain() {
    let svc: Service = yaml("metadata: {name: web, namespace: a}\nspec: {clusterIP: 10.96.0.5}");
    let s = Snapshot::build("k8s.example.", &[svc], &[], &[], 1);
    assert_eq!(
        rdata(s.lookup(&name("web.a.svc.k8s.example."), RecordType::A)),
        ["10.96.0.5"]
    );
    assert_eq!(
        rdata(s.lookup(&name("web.a.svc.cluster.local."), RecordType::A)),
        ["NotOurs"]
    );
}

fn ask(r: &Resolver, n: &str, t: RecordType, edns: Option<u16>, tr: Transport) -> Message {
    let mut m = Message::new();
    m.set_id(4242)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(n), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    match r.handle(&m.to_vec().unwrap(), "10.244.0.5".parse().unwrap(), tr) {
        Handled::Reply(Some(b)) => Message::from_vec(&b).unwrap(),
        Handled::Reply(None) => panic!("no reply"),
        Handled::Forward(..) => panic!("forwarded"),
    }
}

#[test]
fn responses_carry_soa_on_negative_answers_and_truncate_over_udp() {
    let r = Resolver::new(snapshot(), Vec::new());
    let m = ask(
        &r,
        "nope.shop.svc.cluster.local.",
        RecordType::A,
        None,
        Transport::Udp,
    );
    assert_eq!(m.id(), 4242);
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.authoritative());
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
    let m = ask(
        &r,
        "web.shop.svc.cluster.local.",
        RecordType::AAAA,
        None,
        Transport::Udp,
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
    // Names outside the cluster with no upstream: SERVFAIL, at once.
    let m = ask(&r, "example.com.", RecordType::A, None, Transport::Udp);
    assert_eq!(m.response_code(), ResponseCode::ServFail);

    // 60 endpoints: ~1000 bytes of A records.
    let svc: Service = yaml("metadata: {name: big, namespace: a}\nspec: {clusterIP: None}");
    let addrs: Vec<String> = (1..=60).map(|i| format!("{{ip: 10.244.1.{i}}}")).collect();
    let eps: Endpoints = yaml(&format!(
        "metadata: {{name: big, namespace: a}}\nsubsets: [{{addresses: [{}]}}]",
        addrs.join(", ")
    ));
    let r = Resolver::new(
        Snapshot::build("cluster.local", &[svc], &[eps], &[], 1),
        vec![],
    );
    let m = ask(
        &r,
        "big.a.svc.cluster.local.",
        RecordType::A,
        None,
        Transport::Udp,
    );
    assert!(m.truncated());
    assert!(m.answers().is_empty());
    let m = ask(
        &r,
        "big.a.svc.cluster.local.",
        RecordType::A,
        None,
        Transport::Tcp,
    );
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
    // An EDNS client with room for it gets it all over UDP.
    let m = ask(
        &r,
        "big.a.svc.cluster.local.",
        RecordType::A,
        Some(4096),
        Transport::Udp,
    );
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 60);
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    let r = Resolver::new(snapshot(), Vec::new());
    let from = "10.244.0.5".parse().unwrap();
    // Too short for a header: dropped.
    assert!(matches!(
        r.handle(&[1, 2, 3], from, Transport::Udp),
        Handled::Reply(None)
    ));
    // A header claiming a question that is not there: FORMERR with the id.
    let bytes = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
    let Handled::Reply(Some(b)) = r.handle(&bytes, from, Transport::Udp) else {
        panic!("no FORMERR");
    };
    let m = Message::from_vec(&b).unwrap();
    assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
    // A response (QR set) is never answered.
    let mut resp = Message::new();
    resp.set_message_type(MessageType::Response);
    assert!(matches!(
        r.handle(&resp.to_vec().unwrap(), from, Transport::Udp),
        Handled::Reply(None)
    ));
    // Two questions: FORMERR.
    let mut two = Message::new();
    two.add_query(Query::query(name("a.b."), RecordType::A))
        .add_query(Query::query(name("c.d."), RecordType::A));
    let Handled::Reply(Some(b)) = r.handle(&two.to_vec().unwrap(), from, Transport::Udp) else {
        panic!("no FORMERR");
    };
    assert_eq!(
        Message::from_vec(&b).unwrap().response_code(),
        ResponseCode::FormErr
    );
}

#[test]
fn a_flooding_client_is_limited_and_others_are_not() {
    let mut l = RateLimiter::default();
    let now = Instant::now();
    let a: IpAddr = "10.244.0.5".parse().unwrap();
    let b: IpAddr = "10.244.0.6".parse().unwrap();
    let allowed = (0..5000).filter(|_| l.allow(a, now)).count();
    assert_eq!(allowed, RATE_PER_CLIENT as usize);
    assert!(l.allow(b, now));
    // Refilled after a second.
    assert!(l.allow(a, now + Duration::from_secs(1)));
    // Another rate; 0 is no limit at all.
    let mut l = RateLimiter::new(10);
    assert_eq!((0..50).filter(|_| l.allow(a, now)).count(), 10);
    let mut l = RateLimiter::new(0);
    assert!((0..100_000).all(|_| l.allow(a, now)));
    assert!(l.clients.is_empty());
}

#[test]
fn default_address_gateway_and_range() {
    let range: crate::proxy::Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
    assert_eq!(
        default_address(range),
        "10.96.0.10".parse::<Ipv4Addr>().unwrap()
    );
    assert!(in_range("10.96.0.10".parse().unwrap(), range));
    assert!(in_range("10.111.255.255".parse().unwrap(), range));
    assert!(!in_range("10.112.0.1".parse().unwrap(), range));
    assert_eq!(
        gateway_of("10.244.3.0/24"),
        Some("10.244.3.1".parse().unwrap())
    );
}

/// Multi-host: two nodes each run a pod `db` (the store holds this node's and the others' from
/// etcd); an endpoint names its pod by uid, so each address gets its own pod's hostname.
#[test]
fn endpoints_find_their_pod_by_uid_across_nodes() {
    let services: Vec<Service> = vec![yaml(
        "metadata: {name: db, namespace: shop}\nspec: {clusterIP: None, ports: [{name: pg, port: 5432}]}",
    )];
    let endpoints: Vec<Endpoints> = vec![yaml(
        "metadata: {name: db, namespace: shop}\nsubsets:\n- addresses:\n  - {ip: 10.244.1.7, nodeName: a, targetRef: {kind: Pod, name: db, namespace: shop, uid: u-a}}\n  - {ip: 10.244.2.7, nodeName: b, targetRef: {kind: Pod, name: db, namespace: shop, uid: u-b}}\n  ports: [{name: pg, port: 5432}]",
    )];
    let pods: Vec<Pod> = vec![
        yaml(
            "metadata: {name: db, namespace: shop, uid: u-a}\nspec: {hostname: db-a, subdomain: db, nodeName: a, containers: []}\nstatus: {podIP: 10.244.1.7}",
        ),
        yaml(
            "metadata: {name: db, namespace: shop, uid: u-b}\nspec: {hostname: db-b, subdomain: db, nodeName: b, containers: []}\nstatus: {podIP: 10.244.2.7}",
        ),
    ];
    let s = Snapshot::build("cluster.local", &services, &endpoints, &pods, 1);
    let q = |n: &str| rdata(s.lookup(&name(n), RecordType::A));
    assert_eq!(q("db-a.db.shop.svc.cluster.local."), ["10.244.1.7"]);
    assert_eq!(q("db-b.db.shop.svc.cluster.local."), ["10.244.2.7"]);
    assert_eq!(
        q("db.shop.svc.cluster.local."),
        ["10.244.1.7", "10.244.2.7"]
    );
}
