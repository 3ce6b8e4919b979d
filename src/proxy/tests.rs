//! Rule text against golden files (`src/proxy/testdata/*.golden`; rewrite
//! them with `SKIFF_UPDATE_GOLDEN=1 cargo test --lib proxy` and review the
//! diff), and the proxier's sync logic against the recording fakes.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ep(addr: &str, port: u16) -> Endpoint {
    Endpoint::ready(ip(addr), port)
}

fn svc(
    ns: &str,
    name: &str,
    port_name: &str,
    proto: Protocol,
    cip: &str,
    port: u16,
) -> ServicePort {
    ServicePort {
        key: ServicePortKey::new(ns, name, port_name),
        protocol: proto,
        cluster_ip: ip(cip),
        port,
        node_port: None,
        external_ips: vec![],
        session_affinity_timeout: None,
    }
}

fn cfg() -> RuleConfig {
    RuleConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RuleConfig::default()
    }
}

fn proxier() -> Proxier<FakeIptables, FakeConntrack> {
    Proxier::new(FakeIptables::default(), FakeConntrack::default(), cfg())
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/proxy/testdata")
        .join(format!("{name}.golden"));
    if std::env::var_os("SKIFF_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with SKIFF_UPDATE_GOLDEN=1)", path.display()));
    if expected != actual {
        panic!(
            "{name}: generated rules differ from {}\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// The full-sync text for a set of service ports on an empty host.
fn full_text(ports: Vec<(ServicePort, Vec<Endpoint>)>) -> String {
    let mut p = proxier();
    p.replace_all(ports);
    let stats = p.sync().unwrap();
    assert!(stats.full);
    let restores = &p.iptables().restores;
    assert_eq!(restores.len(), 1, "one iptables-restore per sync");
    restores[0].clone()
}

#[test]
fn golden_three_endpoints() {
    let sp = svc("default", "web", "http", Protocol::Tcp, "10.96.0.10", 80);
    let mut not_ready = ep("10.244.1.9", 8080);
    not_ready.ready = false;
    let eps = vec![
        ep("10.244.1.3", 8080),
        ep("10.244.1.2", 8080),
        ep("10.244.2.5", 8080),
        not_ready,
    ];
    let text = full_text(vec![(sp, eps)]);
    assert!(
        !text.contains("10.244.1.9"),
        "a not-ready endpoint gets no traffic"
    );
    golden("three_endpoints", &text);
}

#[test]
fn golden_session_affinity() {
    let mut sp = svc("default", "sticky", "", Protocol::Tcp, "10.96.0.11", 80);
    sp.session_affinity_timeout = Some(10800);
    golden(
        "session_affinity",
        &full_text(vec![(sp, vec![ep("10.244.1.2", 80), ep("10.244.1.3", 80)])]),
    );
}

#[test]
fn golden_node_port() {
    let mut sp = svc("default", "np", "http", Protocol::Tcp, "10.96.0.12", 80);
    sp.node_port = Some(30080);
    golden(
        "node_port",
        &full_text(vec![(
            sp,
            vec![ep("10.244.1.2", 8080), ep("10.244.2.2", 8080)],
        )]),
    );
}

#[test]
fn golden_external_ip() {
    let mut sp = svc("default", "ext", "", Protocol::Tcp, "10.96.0.13", 443);
    sp.external_ips = vec![ip("192.0.2.10"), ip("192.0.2.11")];
    golden(
        "external_ip",
        &full_text(vec![(sp, vec![ep("10.244.1.2", 8443)])]),
    );
}

#[test]
fn golden_no_endpoints_rejects() {
    let mut sp = svc("default", "empty", "http", Protocol::Tcp, "10.96.0.14", 80);
    sp.node_port = Some(30081);
    sp.external_ips = vec![ip("192.0.2.20")];
    let mut not_ready = ep("10.244.1.2", 80);
    not_ready.ready = false;
    let text = full_text(vec![(sp, vec![not_ready])]);
    assert!(
        !text.contains("SKIFF-SVC-"),
        "no service chain without endpoints"
    );
    golden("no_endpoints", &text);
}

#[test]
fn golden_udp() {
    let sp = svc("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53);
    golden(
        "udp",
        &full_text(vec![(sp, vec![ep("10.244.1.7", 53), ep("10.244.2.7", 53)])]),
    );
}

#[test]
fn golden_multi_port() {
    let http = svc("shop", "front", "http", Protocol::Tcp, "10.96.0.20", 80);
    let https = svc("shop", "front", "https", Protocol::Tcp, "10.96.0.20", 443);
    let eps = |port| vec![ep("10.244.1.2", port), ep("10.244.1.3", port)];
    golden(
        "multi_port",
        &full_text(vec![(http, eps(8080)), (https, eps(8443))]),
    );
}

#[test]
fn golden_partial_sync_after_one_endpoint_change() {
    let mut p = proxier();
    let a = svc("default", "a", "http", Protocol::Tcp, "10.96.1.1", 80);
    let b = svc("default", "b", "http", Protocol::Tcp, "10.96.1.2", 80);
    p.update(a.clone(), vec![ep("10.244.1.2", 80), ep("10.244.1.3", 80)]);
    p.update(b, vec![ep("10.244.1.4", 80)]);
    p.sync().unwrap();
    // 10.244.1.3 replaced by 10.244.1.5: only a's service chain and the two
    // endpoint chains change.
    p.update(a, vec![ep("10.244.1.2", 80), ep("10.244.1.5", 80)]);
    let stats = p.sync().unwrap();
    assert!(!stats.full);
    assert_eq!((stats.chains_written, stats.chains_deleted), (2, 1));
    let text = p.iptables().restores[1].clone();
    assert!(!text.contains("*filter"), "filter unchanged: {text}");
    assert!(
        !text.contains(":SKIFF-SERVICES"),
        "entry chain unchanged: {text}"
    );
    assert!(!text.contains("10.244.1.4"), "service b untouched: {text}");
    golden("partial_endpoint_change", &text);
}

#[test]
fn chain_names_are_stable_and_prefixed() {
    let sp = svc("default", "web", "http", Protocol::Tcp, "10.96.0.10", 80);
    let f = service_port_rules(&cfg(), &sp, &[ep("10.244.1.2", 80)], false);
    let g = service_port_rules(&cfg(), &sp, &[ep("10.244.1.2", 80)], false);
    assert_eq!(f, g);
    for (name, _) in &f.chains {
        assert!(name.starts_with("SKIFF-") && name.len() <= 28, "{name}");
    }
    let udp = svc("default", "web", "http", Protocol::Udp, "10.96.0.10", 80);
    let h = service_port_rules(&cfg(), &udp, &[ep("10.244.1.2", 80)], false);
    assert_ne!(f.chains[0].0, h.chains[0].0, "protocol is part of the hash");
}

#[test]
fn unchanged_input_does_not_restore() {
    let mut p = proxier();
    let a = svc("default", "a", "", Protocol::Tcp, "10.96.1.1", 80);
    p.update(a.clone(), vec![ep("10.244.1.2", 80)]);
    p.sync().unwrap();
    // Same endpoints in another order, plus a not-ready one.
    let mut nr = ep("10.244.1.9", 80);
    nr.ready = false;
    p.update(a, vec![nr, ep("10.244.1.2", 80)]);
    let stats = p.sync().unwrap();
    assert_eq!(stats.bytes, 0);
    assert_eq!(p.iptables().restores.len(), 1);
}

#[test]
fn removing_a_service_deletes_its_chains() {
    let mut p = proxier();
    let a = svc("default", "a", "", Protocol::Tcp, "10.96.1.1", 80);
    let b = svc("default", "b", "", Protocol::Tcp, "10.96.1.2", 80);
    p.update(a.clone(), vec![ep("10.244.1.2", 80)]);
    p.update(b, vec![ep("10.244.1.3", 80)]);
    p.sync().unwrap();
    p.remove(&a.key);
    let stats = p.sync().unwrap();
    assert_eq!((stats.chains_written, stats.chains_deleted), (1, 2));
    let text = p.iptables().restores[1].clone();
    let svc_chain = chains::service_chain(&a.key, Protocol::Tcp);
    assert!(text.contains(&format!(":{svc_chain} - [0:0]\n")));
    assert!(text.contains(&format!("-X {svc_chain}\n")));
    assert!(text.contains(":SKIFF-SERVICES - [0:0]\n"));
    assert!(
        !text.contains("10.96.1.1"),
        "a's entry rule is gone: {text}"
    );
    assert!(
        text.contains("10.96.1.2"),
        "SKIFF-SERVICES rewritten with b: {text}"
    );
}

#[test]
fn losing_all_endpoints_switches_to_reject() {
    let mut p = proxier();
    let a = svc("default", "a", "", Protocol::Tcp, "10.96.1.1", 80);
    p.update(a.clone(), vec![ep("10.244.1.2", 80)]);
    p.sync().unwrap();
    p.update(a, vec![]);
    p.sync().unwrap();
    let text = p.iptables().restores[1].clone();
    assert!(text.contains("*filter\n:SKIFF-SERVICES - [0:0]\n"));
    assert!(text.contains("\"default/a has no endpoints\""));
    assert!(text.contains("-X SKIFF-SVC-"));
    assert!(text.contains("-X SKIFF-SEP-"));
}

#[test]
fn failed_partial_sync_falls_back_to_full() {
    let mut p = proxier();
    let a = svc("default", "a", "", Protocol::Tcp, "10.96.1.1", 80);
    p.update(a.clone(), vec![ep("10.244.1.2", 80)]);
    p.sync().unwrap();
    p.update(a.clone(), vec![ep("10.244.1.3", 80)]);
    p.iptables().fail_restores = 1;
    let stats = p.sync().unwrap();
    assert!(stats.full, "retried as a full sync");
    assert_eq!(p.iptables().restores.len(), 3);
    // Both attempts failing: error, and the next sync is full.
    p.update(a.clone(), vec![ep("10.244.1.4", 80)]);
    p.iptables().fail_restores = 2;
    assert!(p.sync().is_err());
    p.update(a, vec![ep("10.244.1.5", 80)]);
    assert!(p.sync().unwrap().full);
}

#[test]
fn full_sync_removes_stale_chains_and_keeps_existing_jumps() {
    let mut ipt = FakeIptables::default();
    ipt.saved.insert(
        "nat".into(),
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:SKIFF-SERVICES - [0:0]\n:SKIFF-SVC-OLDOLDOLDOLDOLD - [0:0]\n\
         :SKIFF-EXT-OLDOLDOLDOLDOLD - [0:0]\n\
         -A PREROUTING -m comment --comment \"skiff service portals\" -j SKIFF-SERVICES\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"leftover\" -j SKIFF-SVC-OLDOLDOLDOLDOLD\n\
         -A SKIFF-EXT-OLDOLDOLDOLDOLD -j SKIFF-SVC-OLDOLDOLDOLDOLD\nCOMMIT\n"
            .into(),
    );
    let mut p = Proxier::new(ipt, FakeConntrack::default(), cfg());
    p.sync().unwrap();
    let text = p.iptables().restores[0].clone();
    assert!(text.contains(":SKIFF-SVC-OLDOLDOLDOLDOLD - [0:0]\n"));
    assert!(text.contains("-X SKIFF-SVC-OLDOLDOLDOLDOLD\n"));
    assert!(text.contains("-X SKIFF-EXT-OLDOLDOLDOLDOLD\n"));
    assert!(
        text.contains("-D OUTPUT -m comment --comment \"leftover\" -j SKIFF-SVC-OLDOLDOLDOLDOLD\n")
    );
    assert!(
        !text.contains("-I PREROUTING"),
        "jump already present: {text}"
    );
    assert!(text.contains(
        "-I OUTPUT 1 -m comment --comment \"skiff service portals\" -j SKIFF-SERVICES\n"
    ));
    assert!(
        !text.contains("KUBE-"),
        "kube-proxy's chains are not touched"
    );
    assert_eq!(p.iptables().saves, ["filter", "nat"]);
}

#[test]
fn cleanup_removes_jumps_and_chains() {
    let mut ipt = FakeIptables::default();
    ipt.saved.insert(
        "filter".into(),
        "*filter\n:INPUT ACCEPT [0:0]\n:SKIFF-SERVICES - [0:0]\n:SKIFF-EXTERNAL-SERVICES - [0:0]\n:FLANNEL-FWD - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"skiff externally-visible service portals\" -j SKIFF-EXTERNAL-SERVICES\n\
         -A FORWARD -j FLANNEL-FWD\nCOMMIT\n"
            .into(),
    );
    cleanup(&mut ipt).unwrap();
    golden("cleanup", &ipt.restores[0]);
    // Nothing installed: no restore at all.
    let mut empty = FakeIptables::default();
    cleanup(&mut empty).unwrap();
    assert!(empty.restores.is_empty());
}

#[test]
fn udp_conntrack_cleared_for_removed_endpoints_and_first_endpoint() {
    let mut p = proxier();
    let mut dns = svc("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53);
    dns.node_port = Some(30053);
    p.update(dns.clone(), vec![]);
    p.sync().unwrap();
    assert!(p.conntrack().deleted.is_empty());

    // 0 -> 2 endpoints: flows created while nothing DNATed are cleared.
    p.update(
        dns.clone(),
        vec![ep("10.244.1.7", 53), ep("10.244.2.7", 53)],
    );
    p.sync().unwrap();
    let mut args: Vec<String> = p
        .conntrack()
        .deleted
        .iter()
        .map(|f| f.args().join(" "))
        .collect();
    args.sort();
    assert_eq!(
        args,
        [
            "-D -p udp --orig-dst 10.96.0.53",
            "-D -p udp --orig-port-dst 30053"
        ]
    );

    // One endpoint goes away: its flows, and only its flows, are cleared.
    p.conntrack().deleted.clear();
    p.update(dns, vec![ep("10.244.1.7", 53)]);
    p.sync().unwrap();
    let mut args: Vec<String> = p
        .conntrack()
        .deleted
        .iter()
        .map(|f| f.args().join(" "))
        .collect();
    args.sort();
    assert_eq!(
        args,
        [
            "-D -p udp --orig-dst 10.96.0.53 --dst-nat 10.244.2.7",
            "-D -p udp --orig-port-dst 30053 --dst-nat 10.244.2.7",
        ]
    );

    // TCP services never touch conntrack.
    p.conntrack().deleted.clear();
    let web = svc("default", "web", "", Protocol::Tcp, "10.96.0.10", 80);
    p.update(web.clone(), vec![ep("10.244.1.2", 80)]);
    p.sync().unwrap();
    p.remove(&web.key);
    p.sync().unwrap();
    assert!(p.conntrack().deleted.is_empty());
}

#[test]
fn cidr_parsing() {
    let c: Ipv4Cidr = "10.244.3.4/16".parse().unwrap();
    assert_eq!(c.to_string(), "10.244.0.0/16");
    assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
    assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
    assert_eq!(
        "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().to_string(),
        "0.0.0.0/0"
    );
}

#[test]
fn chunked_full_sync_writes_the_same_chains_service_by_service() {
    let ports: Vec<(ServicePort, Vec<Endpoint>)> = (0..5u8)
        .map(|i| {
            let mut sp = svc(
                "default",
                &format!("s{i}"),
                "",
                Protocol::Tcp,
                "10.96.1.1",
                80,
            );
            sp.cluster_ip = Ipv4Addr::new(10, 96, 1, i + 1);
            if i == 2 {
                sp.node_port = Some(30000);
            }
            let eps = (0..=i)
                .map(|j| Endpoint::ready(Ipv4Addr::new(10, 244, i, j + 2), 80))
                .collect();
            (sp, eps)
        })
        .collect();
    let single = full_text(ports.clone());

    let mut ipt = FakeIptables {
        chains_per_restore: Some(4),
        ..FakeIptables::default()
    };
    ipt.saved.insert(
        "nat".into(),
        "*nat\n:SKIFF-SVC-OLDOLDOLDOLDOLD - [0:0]\nCOMMIT\n".into(),
    );
    let mut p = Proxier::new(ipt, FakeConntrack::default(), cfg());
    p.replace_all(ports);
    let stats = p.sync().unwrap();
    assert!(stats.full);
    let restores = p.iptables().restores.clone();
    assert!(restores.len() > 2, "split: {restores:#?}");

    let chains_of = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let (pieces, last) = restores.split_at(restores.len() - 1);
    let last = &last[0];
    let mut seen = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        assert!(
            piece.starts_with("*nat\n") && piece.ends_with("COMMIT\n"),
            "{piece}"
        );
        let chains = chains_of(piece);
        // A service port's chains are never split, so a piece may exceed
        // the limit only when one service port alone does.
        let svcs = chains
            .iter()
            .filter(|c| c.starts_with("SKIFF-SVC-"))
            .count();
        assert!(chains.len() <= 4 || svcs == 1, "{piece}");
        assert!(!piece.contains("-X ") && !piece.contains("-I ") && !piece.contains("-D "));
        assert!(
            !chains
                .iter()
                .any(|c| c == "SKIFF-SERVICES" || c == "SKIFF-NODEPORTS")
        );
        if i == 0 {
            assert!(chains.iter().any(|c| c == "SKIFF-MARK-MASQ"), "{piece}");
        }
        // Every jump target in a piece exists by then.
        for target in piece.lines().filter_map(|l| l.rsplit(" -j ").next()) {
            if let Some(t) = target.strip_prefix("SKIFF-") {
                let t = format!("SKIFF-{t}");
                assert!(
                    chains.contains(&t) || seen.contains(&t),
                    "{t} used before it exists in {piece}"
                );
            }
        }
        for rule in piece.lines().filter(|l| l.starts_with("-A ")) {
            assert!(single.contains(&format!("{rule}\n")), "{rule}");
        }
        seen.extend(chains);
    }
    // The last restore: both tables' dispatch chains, jumps and deletions.
    assert!(last.contains("*filter\n") && last.contains("-I OUTPUT 1 "));
    assert!(last.contains(":SKIFF-SERVICES - [0:0]\n"));
    assert!(last.contains("-X SKIFF-SVC-OLDOLDOLDOLDOLD\n"));
    assert!(!last.contains(":SKIFF-SEP-"), "{last}");
    // Together they write exactly what the single restore does.
    let mut all: Vec<String> = restores.iter().flat_map(|t| chains_of(t)).collect();
    let mut expected = chains_of(&single);
    expected.push("SKIFF-SVC-OLDOLDOLDOLDOLD".into());
    all.sort();
    expected.sort();
    assert_eq!(all, expected);
    let rules = |texts: &[String]| -> Vec<String> {
        let mut r: Vec<String> = texts
            .iter()
            .flat_map(|t| {
                t.lines()
                    .filter(|l| l.starts_with("-A "))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        r.sort();
        r
    };
    assert_eq!(rules(&restores), rules(&[single]));
    assert_eq!(stats.chains_deleted, 1);

    // Small enough for one restore: unchanged behaviour.
    p.request_full_sync();
    p.iptables().chains_per_restore = Some(1000);
    p.iptables().restores.clear();
    p.sync().unwrap();
    assert_eq!(p.iptables().restores.len(), 1);
}

/// kube-proxy's large-cluster mode: above 1000 ready endpoints the service
/// ports' own chains lose their comments (each one is an xtables match the
/// kernel revisits on every commit); the dispatch chain keeps them. Crossing
/// the threshold either way rewrites everything in one full sync.
#[test]
fn large_cluster_mode_drops_comments_in_service_chains() {
    let ports = |n| bulk_ports(n, 4);
    // Per service port: the masquerade rule and 4 jumps in SKIFF-SVC-*,
    // 2 rules in each of 4 SKIFF-SEP-*.
    let own_chain_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A SKIFF-SVC-") || l.starts_with("-A SKIFF-SEP-"))
            .map(String::from)
            .collect()
    };
    let mut p = proxier();
    // 250 x 4 = 1000 endpoints: not above the threshold, comments everywhere.
    p.replace_all(ports(250));
    assert!(p.sync().unwrap().full);
    let text = p.iptables().restores.concat();
    let own = own_chain_lines(&text);
    assert_eq!(own.len(), 250 * (5 + 4 * 2));
    assert!(
        own.iter().all(|l| l.contains("-m comment")),
        "small cluster keeps comments"
    );

    // One more Service crosses it: a full sync without comments in the
    // service and endpoint chains.
    p.iptables().restores.clear();
    p.replace_all(ports(251));
    let stats = p.sync().unwrap();
    assert!(stats.full, "crossing the threshold rewrites everything");
    let text = p.iptables().restores.concat();
    let own = own_chain_lines(&text);
    assert_eq!(own.len(), 251 * (5 + 4 * 2));
    assert!(own.iter().all(|l| !l.contains("-m comment")), "{}", own[0]);
    assert!(
        text.lines()
            .filter(|l| l.starts_with("-A SKIFF-SERVICES -m comment --comment \"bulk/s"))
            .count()
            == 251,
        "the dispatch chain keeps its comments"
    );

    // A change inside large mode is a partial sync, still without comments.
    p.iptables().restores.clear();
    let mut more = ports(251);
    more[7].1.pop();
    p.replace_all(more);
    let stats = p.sync().unwrap();
    assert!(!stats.full);
    let text = p.iptables().restores.concat();
    assert!(!own_chain_lines(&text).is_empty());
    assert!(!text.contains("-m comment"), "{text}");

    // Back under the threshold: comments return, everywhere, at once.
    p.iptables().restores.clear();
    p.replace_all(ports(200));
    assert!(p.sync().unwrap().full);
    let own = own_chain_lines(&p.iptables().restores.concat());
    assert_eq!(own.len(), 200 * (5 + 4 * 2));
    assert!(own.iter().all(|l| l.contains("-m comment")));
}

/// Between syncs the proxier keeps only digests of its chains' text; a
/// later full resync generates the same text again, and a partial sync
/// still writes exactly the chains that changed.
#[test]
fn resync_after_compaction_writes_the_same_rules() {
    let mut p = proxier();
    let web = svc("default", "web", "http", Protocol::Tcp, "10.96.0.10", 80);
    let db = svc("default", "db", "", Protocol::Tcp, "10.96.0.11", 5432);
    p.update(
        web.clone(),
        vec![ep("10.244.1.2", 8080), ep("10.244.1.3", 8080)],
    );
    p.update(db.clone(), vec![ep("10.244.2.2", 5432)]);
    assert!(p.sync().unwrap().full);
    let first = p.iptables().restores.pop().unwrap();
    p.request_full_sync();
    assert!(p.sync().unwrap().full);
    assert_eq!(p.iptables().restores.pop().unwrap(), first);

    p.update(db, vec![ep("10.244.2.3", 5432)]);
    let stats = p.sync().unwrap();
    assert!(!stats.full);
    let partial = p.iptables().restores.pop().unwrap();
    assert!(
        partial.contains("10.244.2.3") && !partial.contains("10.244.1.2"),
        "{partial}"
    );
    // Unchanged input: nothing to write even though no text was kept.
    p.update(web, vec![ep("10.244.1.3", 8080), ep("10.244.1.2", 8080)]);
    assert_eq!(p.sync().unwrap().bytes, 0);
}

/// Above 5000 changed service ports a chunked full sync drops the text it
/// generated for the digests and generates it again per chunk: the rules
/// written are the same as when it keeps the text (fewer ports).
#[test]
fn large_chunked_full_sync_generates_the_same_text_again() {
    let ports = |n| bulk_ports(n, 1);
    let own_lines = |restores: &[String]| -> Vec<String> {
        let mut v: Vec<String> = restores
            .iter()
            .flat_map(|r| r.lines())
            .filter(|l| l.starts_with("-A SKIFF-SVC-") || l.starts_with("-A SKIFF-SEP-"))
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let chunked = || {
        let ipt = FakeIptables {
            chains_per_restore: Some(1000),
            ..FakeIptables::default()
        };
        Proxier::new(ipt, FakeConntrack::default(), cfg())
    };
    // 5001 ports: text dropped after the digests, generated again.
    let mut big = chunked();
    big.replace_all(ports(5001));
    assert!(big.sync().unwrap().full);
    let written = own_lines(&big.iptables().restores);
    assert_eq!(
        written.len(),
        5001 * 4,
        "masquerade + jump + 2 endpoint rules each"
    );
    // The same ports synced in two steps (each small enough to keep its
    // text) end with exactly these rules.
    let mut small = chunked();
    small.replace_all(ports(2500));
    assert!(small.sync().unwrap().full);
    small.request_full_sync();
    let all = ports(5001);
    for (sp, eps) in all.into_iter().skip(2500) {
        small.update(sp, eps);
    }
    assert!(small.sync().unwrap().full);
    // The second full sync (every restore after the first one's last,
    // which writes the dispatch chain) writes exactly the big one's rules.
    let restores = small.iptables().restores.clone();
    let first_done = restores
        .iter()
        .position(|r| r.contains("-A SKIFF-SERVICES"))
        .unwrap();
    assert_eq!(own_lines(&restores[first_done + 1..]), written);
}

/// `n` service ports "bulk/s<i>" (up to 15k), each with `per` (at most 4)
/// ready endpoints of its own.
fn bulk_ports(n: usize, per: u8) -> Vec<(ServicePort, Vec<Endpoint>)> {
    (0..n)
        .map(|i| {
            let sp = svc(
                "bulk",
                &format!("s{i}"),
                "",
                Protocol::Tcp,
                &format!("10.96.{}.{}", i / 250, i % 250 + 1),
                80,
            );
            let eps = (0..per)
                .map(|e| {
                    Endpoint::ready(
                        Ipv4Addr::new(10, 244, (i / 60) as u8, (i % 60) as u8 * 4 + e + 1),
                        8080,
                    )
                })
                .collect();
            (sp, eps)
        })
        .collect()
}
