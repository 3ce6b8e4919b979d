//! Root tests for the service proxy: generated rules applied for real with
//! `iptables-restore` inside throwaway network namespaces (never the host's),
//! read back with `iptables-save`, partially resynced, cleaned up; and a
//! data-path check that a ClusterIP reaches a TCP listener in a second
//! namespace through the DNAT rules.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use skiff::proxy::{
    Endpoint, FakeConntrack, Iptables, Protocol, Proxier, RealConntrack, RealIptables, RuleConfig,
    ServicePort, ServicePortKey, cleanup,
};

use testkit::require_root;

/// The test's host: a throwaway network namespace (testkit's, deleted on drop) with its
/// loopback up, and commands run inside it.
struct Netns(testkit::Netns);

impl Netns {
    fn new() -> Netns {
        let host = Netns(testkit::Netns::new());
        host.exec(&["ip", "link", "set", "lo", "up"]);
        host
    }

    fn path(&self) -> PathBuf {
        self.0.path()
    }

    fn name(&self) -> &str {
        &self.0.name
    }

    /// Runs a command inside the namespace; panics on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn save(&self, save_cmd: &str) -> String {
        self.exec(&[save_cmd])
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn service(name: &str, cip: &str, port: u16) -> ServicePort {
    ServicePort {
        key: ServicePortKey::new("default", name, "http"),
        protocol: Protocol::Tcp,
        cluster_ip: ip(cip),
        port,
        node_port: None,
        external_ips: vec![],
        session_affinity_timeout: None,
    }
}

fn config() -> RuleConfig {
    RuleConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..RuleConfig::default()
    }
}

/// The iptables variants to test: the one on PATH, and legacy when present.
fn variants() -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("iptables-restore", "iptables-save")];
    if have("iptables-legacy-restore") && have("iptables-nft-restore") {
        let legacy = ("iptables-legacy-restore", "iptables-legacy-save");
        let nft = ("iptables-nft-restore", "iptables-nft-save");
        v = vec![nft, legacy];
    }
    v
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

#[test]
#[ignore = "needs root"]
fn rules_apply_resync_and_clean_up() {
    require_root();
    for (restore_cmd, save_cmd) in variants() {
        let ns = Netns::new();
        let ipt = RealIptables::in_netns(ns.path()).with_commands(restore_cmd, save_cmd);
        eprintln!("testing with {restore_cmd} ({})", ipt.variant());
        let mut p = Proxier::new(ipt, RealConntrack::in_netns(ns.path()), config());

        let mut web = service("web", "10.96.0.10", 80);
        web.node_port = Some(30080);
        web.external_ips = vec![ip("192.0.2.10")];
        web.session_affinity_timeout = Some(600);
        let mut dns = service("dns", "10.96.0.53", 53);
        dns.protocol = Protocol::Udp;
        let empty = service("empty", "10.96.0.99", 80);
        let eps = vec![
            Endpoint::ready(ip("10.244.1.2"), 8080),
            Endpoint::ready(ip("10.244.1.3"), 8080),
            Endpoint::ready(ip("10.244.2.4"), 8080),
        ];
        p.update(web.clone(), eps.clone());
        p.update(dns, vec![Endpoint::ready(ip("10.244.1.5"), 53)]);
        p.update(empty, vec![]);
        let stats = p.sync().expect("full sync");
        assert!(stats.full);

        let nat = ns.save(save_cmd);
        assert!(nat.contains(":SKIFF-SERVICES - "), "{nat}");
        assert_eq!(count(&nat, "-j DNAT --to-destination 10.244."), 4, "{nat}");
        assert!(nat.contains("--probability 0.33333333"), "{nat}");
        assert!(nat.contains("--rcheck --seconds 600 --reap"), "{nat}");
        assert!(nat.contains("--dport 30080 -j SKIFF-EXT-"), "{nat}");
        assert!(nat.contains("-d 192.0.2.10/32"), "{nat}");
        assert!(
            nat.contains("-j REJECT"),
            "filter REJECT for the empty service: {nat}"
        );
        assert_eq!(
            count(
                &nat,
                "-A PREROUTING -m comment --comment \"skiff service portals\""
            ),
            1
        );

        // A second full sync (periodic resync) keeps exactly one jump each.
        p.request_full_sync();
        p.sync().expect("second full sync");
        let nat2 = ns.save(save_cmd);
        assert_eq!(
            count(
                &nat2,
                "-A PREROUTING -m comment --comment \"skiff service portals\""
            ),
            1
        );
        assert_eq!(count(&nat2, "-j SKIFF-EXTERNAL-SERVICES"), 2, "{nat2}");
        assert_eq!(
            nat2.lines().filter(|l| l.starts_with("-A SKIFF-")).count(),
            nat.lines().filter(|l| l.starts_with("-A SKIFF-")).count()
        );

        // Partial sync: one endpoint replaced.
        let mut eps2 = eps.clone();
        eps2[2] = Endpoint::ready(ip("10.244.2.9"), 8080);
        p.update(web.clone(), eps2);
        let stats = p.sync().expect("partial sync");
        assert!(!stats.full, "{stats:?}");
        assert_eq!(stats.chains_deleted, 1);
        let after = ns.save(save_cmd);
        assert!(
            after.contains("--to-destination 10.244.2.9:8080"),
            "{after}"
        );
        assert!(!after.contains("10.244.2.4"), "{after}");
        assert_eq!(count(&after, "-j DNAT --to-destination 10.244."), 4);

        // Removing a service deletes its chains.
        p.remove(&web.key);
        p.sync().expect("partial sync removing a service");
        let after = ns.save(save_cmd);
        assert!(!after.contains("10.96.0.10"), "{after}");
        assert!(!after.contains("SKIFF-EXT-"), "{after}");

        // A chain left by an earlier run is removed by the next full sync.
        let mut raw = RealIptables::in_netns(ns.path()).with_commands(restore_cmd, save_cmd);
        raw.restore("*nat\n:SKIFF-SVC-STALESTALESTALE - [0:0]\n-A SKIFF-SVC-STALESTALESTALE -j RETURN\nCOMMIT\n")
            .unwrap();
        p.request_full_sync();
        p.sync().unwrap();
        assert!(!ns.save(save_cmd).contains("STALESTALE"));

        // Cleanup removes everything skiff installed, and is idempotent.
        p.cleanup().expect("cleanup");
        let all = ns.save(save_cmd);
        assert!(!all.contains("SKIFF"), "left behind:\n{all}");
        cleanup(&mut raw).expect("second cleanup is a no-op");
    }
}

/// Runs `f` on a fresh thread that has entered the namespace `path`; the
/// thread is discarded afterwards, so no other code runs in that namespace.
fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

#[test]
#[ignore = "needs root"]
fn cluster_ip_reaches_a_listener_in_another_namespace() {
    require_root();
    reach_through_cluster_ip(0);
}

/// The same with 1040 more endpoints (260 Services x 4): kube-proxy's
/// large-cluster mode, where the service and endpoint chains have no
/// comments, still balances, masquerades and rejects the same way.
#[test]
#[ignore = "needs root"]
fn cluster_ip_reaches_a_listener_in_large_cluster_mode() {
    require_root();
    reach_through_cluster_ip(260);
}

fn reach_through_cluster_ip(bulk: usize) {
    let host = Netns::new();
    let pod = Netns::new();
    let suffix = testkit::random_suffix();
    let (host_if, pod_if) = (format!("spxh{suffix}"), format!("spxp{suffix}"));
    // The veth pair is created inside the "host" namespace, never on the
    // real host, then one end is moved to the "pod".
    host.exec(&[
        "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
    ]);
    host.exec(&["ip", "link", "set", &pod_if, "netns", pod.name()]);
    host.exec(&["ip", "addr", "add", "10.244.1.1/24", "dev", &host_if]);
    host.exec(&["ip", "link", "set", &host_if, "up"]);
    // Locally generated packets are routed before OUTPUT's DNAT: the VIP
    // range needs a route.
    host.exec(&["ip", "route", "add", "10.96.0.0/12", "dev", &host_if]);
    pod.exec(&["ip", "addr", "add", "10.244.1.2/24", "dev", &pod_if]);
    pod.exec(&["ip", "link", "set", &pod_if, "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", "10.244.1.1"]);

    // The listener: accepts one connection and greets it.
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = in_netns(pod.path(), move || {
        let listener = TcpListener::bind("0.0.0.0:8080").expect("bind in pod netns");
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.write_all(b"hello from the pod\n").unwrap();
        peer
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listener ready");

    let mut p = Proxier::new(
        RealIptables::in_netns(host.path()),
        FakeConntrack::default(),
        config(),
    );
    p.update(
        service("web", "10.96.0.10", 80),
        vec![Endpoint::ready(ip("10.244.1.2"), 8080)],
    );
    p.update(service("none", "10.96.0.11", 80), vec![]);
    for i in 0..bulk {
        let eps = (0..4u8)
            .map(|e| {
                Endpoint::ready(
                    Ipv4Addr::new(10, 244, 100 + (i / 60) as u8, (i % 60) as u8 * 4 + e + 1),
                    80,
                )
            })
            .collect();
        p.update(
            service(
                &format!("bulk{i}"),
                &format!("10.97.{}.{}", i / 200, i % 200 + 1),
                80,
            ),
            eps,
        );
    }
    p.sync().expect("sync");
    let saved = host.save("iptables-save");
    let endpoint_rules: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with("-A SKIFF-SEP-"))
        .collect();
    assert_eq!(endpoint_rules.len(), 2 * (1 + 4 * bulk), "{saved}");
    let commented = endpoint_rules
        .iter()
        .filter(|l| l.contains("--comment"))
        .count();
    assert_eq!(
        commented,
        if bulk * 4 > 1000 {
            0
        } else {
            endpoint_rules.len()
        },
        "{saved}"
    );

    let client = in_netns(host.path(), || {
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
            .expect("connect to the ClusterIP");
        let mut got = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_string(&mut got).expect("read");
        // A service without endpoints is rejected at once, not blackholed.
        let none: SocketAddr = "10.96.0.11:80".parse().unwrap();
        let refused = TcpStream::connect_timeout(&none, Duration::from_secs(5)).unwrap_err();
        (got, refused.kind())
    });
    let (got, refused) = client.join().expect("client thread");
    assert_eq!(got, "hello from the pod\n");
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);
    let peer = server.join().expect("server thread");
    assert_eq!(
        peer.ip().to_string(),
        "10.244.1.1",
        "host traffic from inside the cluster CIDR keeps its source"
    );
}

/// A full sync split into several restores (as on iptables-nft at scale)
/// leaves exactly the rules a single restore does, on both variants, also
/// when it resyncs live rules and removes a stale chain.
#[test]
#[ignore = "needs root"]
fn chunked_full_sync_matches_a_single_restore() {
    require_root();
    let ports: Vec<(ServicePort, Vec<Endpoint>)> = (0..6u8)
        .map(|i| {
            let mut sp = service(&format!("s{i}"), &format!("10.96.3.{}", i + 1), 80);
            if i % 3 == 0 {
                sp.node_port = Some(30100 + u16::from(i));
            }
            let eps = (0..=i % 3)
                .map(|j| Endpoint::ready(Ipv4Addr::new(10, 244, 3, 10 * i + j + 2), 8080))
                .collect();
            (sp, eps)
        })
        .collect();
    // Only skiff's own lines, order-independent.
    let ours = |saved: String| -> Vec<String> {
        let mut v: Vec<String> = saved
            .lines()
            .filter(|l| l.contains("SKIFF-"))
            .map(|l| l.split(" [").next().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    for (restore_cmd, save_cmd) in variants() {
        let single_ns = Netns::new();
        let single = RealIptables::in_netns(single_ns.path())
            .with_commands(restore_cmd, save_cmd)
            .with_chains_per_restore(None);
        let mut p = Proxier::new(single, FakeConntrack::default(), config());
        p.replace_all(ports.clone());
        assert!(p.sync().unwrap().full);
        let want = ours(single_ns.save(save_cmd));
        assert!(want.iter().any(|l| l.contains("-j DNAT")), "{want:?}");

        let ns = Netns::new();
        let chunked = RealIptables::in_netns(ns.path())
            .with_commands(restore_cmd, save_cmd)
            .with_chains_per_restore(Some(3));
        let mut p = Proxier::new(chunked, FakeConntrack::default(), config());
        p.replace_all(ports.clone());
        assert!(p.sync().unwrap().full);
        assert_eq!(ours(ns.save(save_cmd)), want, "{restore_cmd}");

        // A resync over the live rules with a stale chain jumped to.
        let mut raw = RealIptables::in_netns(ns.path()).with_commands(restore_cmd, save_cmd);
        raw.restore(
            "*nat\n:SKIFF-SVC-STALESTALESTALE - [0:0]\n-A SKIFF-SVC-STALESTALESTALE -j RETURN\n\
             -A OUTPUT -j SKIFF-SVC-STALESTALESTALE\nCOMMIT\n",
        )
        .unwrap();
        p.request_full_sync();
        assert!(p.sync().unwrap().full);
        assert_eq!(ours(ns.save(save_cmd)), want, "{restore_cmd}");
    }
}
