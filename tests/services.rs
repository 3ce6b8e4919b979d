//! Root tests for Services (issue #5): skiffd in a throwaway "host" netns
//! with an uplink address and a default route, backends serving their own
//! name with busybox httpd, clients in pods (`skiff exec`) and in the host
//! netns (a thread that `setns`'d). Every iptables command runs inside the
//! test's netns, never on the real host.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{IMAGE, Node, bin, require_root};
use serde_json::Value;

/// The host's "uplink" address (TEST-NET-1) and its default route.
const UPLINK: &str = "192.0.2.10";

/// Runs `f` on a fresh OS thread inside the network namespace at `netns`;
/// the thread is discarded afterwards, so no namespace leaks anywhere.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// An HTTP GET from the host netns; the body, or why it failed.
fn host_get(netns: &Path, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: svc\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .map_err(|e| format!("read {addr}: {e}"))?;
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
            .ok_or(resp)
    })
}

fn sh(netns: &Path, cmd: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["sh", "-c", cmd])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `iptables-save` of both tables inside the node's host netns.
fn iptables_save(node: &Node) -> String {
    sh(
        &node.host.path(),
        "iptables-save -t nat; iptables-save -t filter",
    )
}

/// The rules that match on `vip`.
fn vip_rules(save: &str, vip: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains(&format!("-d {vip}/32 ")))
        .map(String::from)
        .collect()
}

/// A node whose host netns has `lo` up and an uplink (one end of a veth pair) with [`UPLINK`] and a
/// default route, like a real machine (a host without a route to the
/// service range cannot even pick a source address for a cluster IP).
fn node_with_uplink(flags: &[&str]) -> Node {
    let mut node = Node::new();
    sh(
        &node.host.path(),
        &format!(
            "ip link set lo up && ip link add uplink0 type veth peer name uplink1 && ip link set uplink1 up \
             && ip addr add {UPLINK}/24 dev uplink0 \
             && ip link set uplink0 up && ip route add default via 192.0.2.1 dev uplink0"
        ),
    );
    node.extra_flags(flags);
    node.start_daemon();
    node.import_image();
    node
}

/// A backend: httpd on 8080 (container port named `http`) answering its own name.
fn backend(name: &str, labels: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
{extra}"#
    )
}

fn client(name: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, {script:?}]
"#
    )
}

fn service(name: &str, body: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{body}")
}

fn svc_json(node: &Node, name: &str) -> Option<Value> {
    let out = node.skiff(&["get", "svc", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits for the Service and returns its cluster IP.
fn cluster_ip(node: &Node, name: &str) -> String {
    node.wait_for(&format!("service {name}"), Duration::from_secs(20), || {
        svc_json(node, name)?["spec"]["clusterIP"]
            .as_str()
            .map(String::from)
    })
}

fn node_port(node: &Node, name: &str) -> u16 {
    let v = svc_json(node, name).expect("service");
    v["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort") as u16
}

/// Waits until the Endpoints of `name` list exactly `want` ready addresses.
fn wait_endpoints(node: &Node, name: &str, want: usize) -> Value {
    node.wait_for(
        &format!("{want} ready endpoints of {name}"),
        Duration::from_secs(30),
        || {
            let out = node.skiff(&["get", "ep", name, "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let n: usize = v["subsets"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|s| s["addresses"].as_array().map_or(0, Vec::len))
                        .sum()
                })
                .unwrap_or(0);
            (n == want).then_some(v)
        },
    )
}

/// `n` HTTP GETs of `url` from inside pod `from`, one line per answer
/// (`FAIL` when one fails), in a single exec.
fn pod_gets(node: &Node, from: &str, url: &str, n: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do timeout 3 wget -q -O- {url} 2>/tmp/err || echo FAIL $(cat /tmp/err); done"
    );
    let out = node.skiff_ok(&["exec", from, "--", "sh", "-c", &script]);
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn count(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

/// ClusterIP from a pod and from the host, spread over 3 backends, a
/// not-ready backend out of rotation, ClientIP affinity, named targetPort,
/// hairpin, NodePort on the host's address, `get svc/ep` columns and service
/// env vars in a pod started after the Services.
#[test]
#[ignore = "needs root"]
fn cluster_ip_node_port_affinity_hairpin_readiness() {
    require_root();
    let node = node_with_uplink(&[]);
    for b in ["web-a", "web-b", "web-c"] {
        node.write_manifest(
            &format!("{b}.yaml"),
            &backend(b, &format!("app: web, who: {b}"), ""),
        );
    }
    // Matches the selector but never passes its readiness probe.
    let probe = "    readinessProbe:\n      exec: {command: [\"false\"]}\n      periodSeconds: 1\n";
    node.write_manifest(
        "web-x.yaml",
        &backend("web-x", "app: web, who: web-x", probe),
    );
    node.write_manifest(
        "svc.yaml",
        &[
            service("web", "  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n"),
            service(
                "sticky",
                "  selector: {app: web}\n  sessionAffinity: ClientIP\n  ports: [{port: 8000, targetPort: 8080}]\n",
            ),
            service("web-np", "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n"),
            service("solo", "  selector: {who: web-a}\n  ports: [{port: 80, targetPort: http}]\n"),
        ]
        .join("---\n"),
    );
    let vip = cluster_ip(&node, "web");
    let sticky = cluster_ip(&node, "sticky");
    let solo = cluster_ip(&node, "solo");
    for b in ["web-a", "web-b", "web-c"] {
        node.wait_running(b);
    }
    // The not-ready backend is listed, but as not ready (it may start after
    // the others are already in rotation, so poll for both).
    let not_ready = |ep: &Value| -> Vec<String> {
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["notReadyAddresses"].as_array().into_iter().flatten())
            .filter_map(|a| a["targetRef"]["name"].as_str().map(String::from))
            .collect()
    };
    let ep = node.wait_for("web-x listed as not ready", Duration::from_secs(30), || {
        let ep = wait_endpoints(&node, "web", 3);
        (not_ready(&ep) == ["web-x"]).then_some(ep)
    });
    assert_eq!(
        ep["subsets"][0]["ports"][0]["port"], 8080,
        "named targetPort resolved: {ep:#}"
    );

    // A client started after the Services sees their env vars.
    node.write_manifest("client.yaml", &client("client", "exec sleep 3600"));
    node.wait_running("client");
    let env = node.skiff_ok(&["exec", "client", "--", "env"]);
    for want in [
        format!("WEB_SERVICE_HOST={vip}"),
        "WEB_SERVICE_PORT=80".into(),
        "WEB_SERVICE_PORT_HTTP=80".into(),
        format!("WEB_PORT=tcp://{vip}:80"),
        format!("WEB_PORT_80_TCP_ADDR={vip}"),
        "WEB_PORT_80_TCP_PROTO=tcp".into(),
        format!("STICKY_SERVICE_HOST={sticky}"),
        "WEB_NP_SERVICE_PORT=80".into(),
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
    }

    // Spread: every ready backend answers within 40 requests, web-x never.
    let answers = pod_gets(&node, "client", &format!("http://{vip}/"), 40);
    let seen = count(&answers);
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["web-a".to_string(), "web-b".into(), "web-c".into()]),
        "answers: {seen:?}"
    );

    // ClientIP affinity: 10 requests, one backend.
    let answers = pod_gets(&node, "client", &format!("http://{sticky}:8000/"), 10);
    assert_eq!(answers.len(), 10, "{answers:?}");
    assert_eq!(
        count(&answers).len(),
        1,
        "affinity did not stick: {answers:?}"
    );
    assert_ne!(answers[0], "FAIL");

    // Hairpin: web-a reaches itself through a VIP whose only backend it is.
    let answers = pod_gets(&node, "web-a", &format!("http://{solo}/"), 3);
    assert_eq!(answers, ["web-a", "web-a", "web-a"], "hairpin");

    // From the host netns: the cluster IP and the node port on the uplink
    // address and on the bridge's (both local).
    let host = node.host.path();
    let mut from_host = BTreeSet::new();
    for _ in 0..30 {
        from_host.insert(host_get(&host, &format!("{vip}:80")).expect("cluster IP from the host"));
    }
    assert_eq!(from_host.len(), 3, "from the host: {from_host:?}");
    assert!(!from_host.contains("web-x"));
    let np = node_port(&node, "web-np");
    assert!((30000..=32767).contains(&np), "{np}");
    let body = host_get(&host, &format!("{UPLINK}:{np}")).expect("node port from the host");
    assert!(body.starts_with("web-"), "{body}");
    let gw = sh(
        &host,
        "ip -4 -o addr show dev cni0 | awk '{print $4}' | cut -d/ -f1",
    );
    let body =
        host_get(&host, &format!("{}:{np}", gw.trim())).expect("node port on the bridge address");
    assert!(body.starts_with("web-"), "{body}");
    // And the node port from a pod, through the host's address.
    let answers = pod_gets(&node, "client", &format!("http://{UPLINK}:{np}/"), 3);
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("web-") && a != "web-x"),
        "{answers:?}"
    );

    // A selector-matched pod going away leaves rotation.
    node.remove_manifest("web-c.yaml");
    wait_endpoints(&node, "web", 2);
    let answers = pod_gets(&node, "client", &format!("http://{vip}/"), 20);
    assert!(
        answers.iter().all(|a| a == "web-a" || a == "web-b"),
        "{answers:?}"
    );
    node.wait_gone("web-c");

    // kubectl's columns.
    let table = node.skiff_ok(&["get", "svc"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{table}"
    );
    let row = |t: &str, name: &str| -> Vec<String> {
        t.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{t}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        row(&table, "web")[..5],
        ["web", "ClusterIP", &vip, "<none>", "80/TCP"],
        "{table}"
    );
    assert_eq!(row(&table, "web-np")[4], format!("80:{np}/TCP"), "{table}");
    let wide = node.skiff_ok(&["get", "svc", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().ends_with("SELECTOR"), "{wide}");
    assert_eq!(row(&wide, "web").last().unwrap(), "app=web", "{wide}");
    let eps = node.skiff_ok(&["get", "ep"]);
    let header: Vec<&str> = eps.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ENDPOINTS", "AGE"], "{eps}");
    let web_eps = &row(&eps, "web")[1];
    assert_eq!(web_eps.split(',').count(), 2, "{eps}");
    assert!(web_eps.split(',').all(|e| e.ends_with(":8080")), "{eps}");
    let pods = node.skiff_ok(&["get", "pods", "-l", "app=web,who!=web-x"]);
    let names: BTreeSet<&str> = pods
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, BTreeSet::from(["web-a", "web-b"]), "{pods}");
}

/// A UDP responder in the host netns (answers any DNS query with NXDOMAIN),
/// behind a selector-less Service with manual Endpoints.
struct UdpResponder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<SocketAddr>>>,
}

impl UdpResponder {
    fn start(netns: &Path, port: u16) -> UdpResponder {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let netns: PathBuf = netns.to_path_buf();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&netns).expect("open netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // Bound to the endpoint address: a 0.0.0.0 socket would answer from
            // the route's source address, which conntrack cannot un-DNAT.
            let sock = UdpSocket::bind((UPLINK, port)).expect("bind udp");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            tx.send(()).unwrap();
            let mut peers = Vec::new();
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                peers.push(peer);
                if n >= 12 {
                    buf[2] |= 0x80; // QR: a response
                    buf[3] = 0x80 | 3; // RA, NXDOMAIN
                }
                let _ = sock.send_to(&buf[..n], peer);
            }
            peers
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("udp responder up");
        UdpResponder {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<SocketAddr> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP Service (selector-less, manual Endpoints), reached from a pod
/// with busybox nslookup and from the host netns.
#[test]
#[ignore = "needs root"]
fn udp_service_with_manual_endpoints() {
    require_root();
    let node = node_with_uplink(&[]);
    let host = node.host.path();
    let responder = UdpResponder::start(&host, 5353);
    node.write_manifest(
        "dns.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: dns\nsubsets:\n- addresses: [{{ip: {UPLINK}}}]\n  ports: [{{name: dns, port: 5353, protocol: UDP}}]\n",
            service("dns", "  ports: [{name: dns, port: 53, protocol: UDP}]\n")
        ),
    );
    let vip = cluster_ip(&node, "dns");
    wait_endpoints(&node, "dns", 1);
    node.write_manifest("client.yaml", &client("client", "exec sleep 3600"));
    node.wait_running("client");
    let out = node.skiff(&["exec", "client", "--", "nslookup", "skiff.test", &vip]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NXDOMAIN"),
        "no answer through the UDP service: {text}\n{}\n{}",
        iptables_save(&node),
        sh(&host, "conntrack -L -p udp 2>&1; ip -4 addr; ip route")
    );

    // From the host netns too.
    let reply = in_netns(&host, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(&[0u8; 12], format!("{vip}:53")).unwrap();
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf)
            .map(|(n, from)| (buf[..n].to_vec(), from))
    });
    let (data, from) = reply.expect("UDP reply from the cluster IP in the host netns");
    assert_eq!(data[2] & 0x80, 0x80);
    assert_eq!(
        from.port(),
        53,
        "reply un-NATed to the service port: {from}"
    );
    let peers = responder.finish();
    assert!(!peers.is_empty());
}

/// A Service whose port changes and which is then removed while a client
/// keeps requesting; a restart of skiffd keeps cluster IP, node port and
/// rules (no failed request); `--cleanup-iptables` removes everything.
#[test]
#[ignore = "needs root"]
fn update_remove_restart_and_cleanup() {
    require_root();
    // No TLS API and no cluster DNS, so no kubernetes or kube-dns Service: "no service chain
    // left" below means none at all.
    let mut node = node_with_uplink(&["--api-listen", "none", "--cluster-dns", "none"]);
    node.write_manifest("web-a.yaml", &backend("web-a", "app: web", ""));
    node.write_manifest("web-b.yaml", &backend("web-b", "app: web", ""));
    let svc = |port: u16| {
        service(
            "web",
            &format!(
                "  type: NodePort\n  selector: {{app: web}}\n  ports: [{{port: {port}, targetPort: 8080}}]\n"
            ),
        )
    };
    node.write_manifest("svc.yaml", &svc(80));
    let vip = cluster_ip(&node, "web");
    let np = node_port(&node, "web");
    node.wait_running("web-a");
    node.wait_running("web-b");
    wait_endpoints(&node, "web", 2);
    // A later Service whose name sorts first and hashes to the same node
    // port start: it must not take web's node port after a restart.
    node.write_manifest(
        "abc.yaml",
        &service(
            "abc",
            "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
        ),
    );
    let abc_ip = cluster_ip(&node, "abc");
    let abc_np = node_port(&node, "abc");
    // A client that requests twice a second for the whole test; each line is
    // the answer or FAIL.
    node.write_manifest(
        "client.yaml",
        &client(
            "client",
            "while true; do timeout 2 wget -q -O- http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT/ 2>/dev/null || echo FAIL; sleep 0.2; done",
        ),
    );
    node.wait_running("client");
    let log_lines = |node: &Node| -> Vec<String> {
        node.skiff_ok(&["logs", "client"])
            .lines()
            .map(String::from)
            .collect()
    };
    node.wait_for("client requests answered", Duration::from_secs(10), || {
        (log_lines(&node)
            .iter()
            .filter(|l| l.starts_with("web-"))
            .count()
            >= 3)
            .then_some(())
    });

    // Restart: same cluster IP and node port, and no request fails meanwhile.
    let before = log_lines(&node).len();
    let rules_before = iptables_save(&node);
    node.stop_daemon();
    assert!(
        iptables_save(&node).contains(&format!("-d {vip}/32")),
        "rules stay while skiffd is down"
    );
    std::thread::sleep(Duration::from_secs(1));
    node.start_daemon();
    assert_eq!(
        cluster_ip(&node, "web"),
        vip,
        "cluster IP changed across a restart"
    );
    assert_eq!(
        node_port(&node, "web"),
        np,
        "node port changed across a restart"
    );
    assert_eq!(
        cluster_ip(&node, "abc"),
        abc_ip,
        "cluster IP changed across a restart"
    );
    assert_eq!(
        node_port(&node, "abc"),
        abc_np,
        "node port changed across a restart"
    );
    std::thread::sleep(Duration::from_secs(3));
    let lines = log_lines(&node);
    let during: Vec<&String> = lines[before..].iter().collect();
    assert!(
        during.len() >= 8,
        "the client stalled during the restart: {during:?}"
    );
    assert!(
        during.iter().all(|l| l.starts_with("web-")),
        "requests failed during the restart: {during:?}"
    );
    let svc_chains = |t: &str| -> BTreeSet<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| c.starts_with("SKIFF-"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        svc_chains(&iptables_save(&node)),
        svc_chains(&rules_before),
        "chains changed across a restart"
    );
    node.remove_manifest("abc.yaml");

    // Port changed while the client runs (its env still says 80): the new
    // port answers, the old one is refused.
    node.write_manifest("svc.yaml", &svc(8081));
    node.wait_for("port 8081 in rules", Duration::from_secs(20), || {
        vip_rules(&iptables_save(&node), &vip)
            .iter()
            .any(|l| l.contains("--dport 8081 "))
            .then_some(())
    });
    assert_eq!(
        cluster_ip(&node, "web"),
        vip,
        "cluster IP kept when the port changes"
    );
    let answers = pod_gets(&node, "web-a", &format!("http://{vip}:8081/"), 4);
    assert!(answers.iter().all(|a| a.starts_with("web-")), "{answers:?}");
    assert!(pod_gets(&node, "web-a", &format!("http://{vip}:80/"), 1)[0].starts_with("FAIL"));
    let left: Vec<String> = vip_rules(&iptables_save(&node), &vip)
        .into_iter()
        .filter(|l| l.contains("--dport 80 "))
        .collect();
    assert!(left.is_empty(), "old port's rules left: {left:#?}");

    // Removed: no rule mentions it, no SVC/SEP chain is left, the VIP is refused or unrouted.
    node.remove_manifest("svc.yaml");
    node.wait_for("service chains removed", Duration::from_secs(20), || {
        let t = iptables_save(&node);
        (!t.contains("SKIFF-SVC-")
            && !t.contains("SKIFF-SEP-")
            && !t.contains("SKIFF-EXT-")
            && !t.contains(&vip))
        .then_some(())
    });
    assert!(svc_json(&node, "web").is_none());
    assert!(pod_gets(&node, "web-a", &format!("http://{vip}:8081/"), 1)[0].starts_with("FAIL"));

    // Back, then cleaned up by `skiffd --cleanup-iptables` with skiffd stopped.
    node.write_manifest("svc.yaml", &svc(80));
    cluster_ip(&node, "web");
    node.wait_for("rules back", Duration::from_secs(20), || {
        iptables_save(&node).contains("SKIFF-SVC-").then_some(())
    });
    node.stop_daemon();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.host.path().display()))
        .arg(bin("skiffd"))
        .arg("--cleanup-iptables")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "--cleanup-iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = iptables_save(&node)
        .lines()
        .filter(|l| l.contains("SKIFF"))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "left after --cleanup-iptables: {left:#?}");
    // Idempotent.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.host.path().display()))
        .arg(bin("skiffd"))
        .arg("--cleanup-iptables")
        .output()
        .unwrap();
    assert!(out.status.success());
    node.start_daemon();
}

/// Invalid Services are refused with clear errors (events, `get svc NAME`)
/// while the valid ones keep working.
#[test]
#[ignore = "needs root"]
fn invalid_services_are_rejected_clearly() {
    require_root();
    let node = node_with_uplink(&[
        "--service-cluster-ip-range",
        "10.100.0.0/24",
        "--service-node-port-range",
        "31000-31999",
    ]);
    node.write_manifest("web-a.yaml", &backend("web-a", "app: web", ""));
    node.write_manifest(
        "good.yaml",
        &service("good", "  type: NodePort\n  clusterIP: 10.100.0.50\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080, nodePort: 31080}]\n"),
    );
    assert_eq!(cluster_ip(&node, "good"), "10.100.0.50");
    let cases = [
        (
            "port-range",
            "  selector: {app: web}\n  ports: [{port: 70000}]\n",
            "spec.ports[0].port: Invalid value: 70000",
        ),
        (
            "ip-range",
            "  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80}]\n",
            "not in the valid range",
        ),
        (
            "ip-taken",
            "  clusterIP: 10.100.0.50\n  selector: {app: web}\n  ports: [{port: 80}]\n",
            "already allocated (to Service default/good)",
        ),
        (
            "np-clash",
            "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, nodePort: 31080}]\n",
            "provided port is already allocated (to Service default/good)",
        ),
        (
            "np-range",
            "  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, nodePort: 30080}]\n",
            "31000-31999",
        ),
        (
            "bad-sel",
            "  selector: {'app/x/y': web}\n  ports: [{port: 80}]\n",
            "spec.selector",
        ),
        (
            "bad-sel-value",
            "  selector: {app: 'not ok!'}\n  ports: [{port: 80}]\n",
            "spec.selector",
        ),
    ];
    for (name, body, _) in &cases {
        node.write_manifest(&format!("{name}.yaml"), &service(name, body));
    }
    for (name, _, want) in &cases {
        let msg = node.wait_for(&format!("{name} rejected"), Duration::from_secs(20), || {
            let out = node.skiff(&["get", "svc", name]);
            (!out.status.success())
                .then(|| String::from_utf8_lossy(&out.stderr).into_owned())
                .filter(|m| m.contains(want))
        });
        assert!(msg.contains(&format!("\"{name}\"")), "{msg}");
    }
    let events = node.skiff_ok(&["get", "events"]);
    for (name, _, _) in &cases {
        assert!(
            events
                .lines()
                .any(|l| l.contains("Warning") && l.contains(&format!("service/{name}"))),
            "no warning event for {name}:\n{events}"
        );
    }
    // None of them made rules; the good one still works and kept its address.
    let rules = iptables_save(&node);
    for (name, _, _) in &cases {
        assert!(
            !rules.contains(&format!("default/{name} ")),
            "rules for {name}:\n{rules}"
        );
    }
    node.wait_running("web-a");
    wait_endpoints(&node, "good", 1);
    let host = node.host.path();
    assert_eq!(host_get(&host, "10.100.0.50:80").unwrap(), "web-a");
    assert_eq!(
        host_get(&host, &format!("{UPLINK}:31080")).unwrap(),
        "web-a"
    );
    let table = node.skiff_ok(&["get", "svc"]);
    assert_eq!(
        table
            .lines()
            .filter(|l| !l.starts_with("kubernetes "))
            .count(),
        2,
        "only the good Service (and the API's own) is listed:\n{table}"
    );

    // Fixing one brings it up.
    node.write_manifest("ip-taken.yaml", &service("ip-taken", "  clusterIP: 10.100.0.51\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n"));
    assert_eq!(cluster_ip(&node, "ip-taken"), "10.100.0.51");
    let deadline = Instant::now() + Duration::from_secs(10);
    while host_get(&host, "10.100.0.51:80").as_deref() != Ok("web-a") {
        assert!(Instant::now() < deadline, "fixed service never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Someone flushes the tables (a firewall reload): the canary chain is gone, so the next
/// periodic check (`--iptables-sync-period`, 1 s here) rewrites every rule at once.
#[test]
#[ignore = "needs root"]
fn flushed_rules_come_back_through_the_canary() {
    require_root();
    let node = node_with_uplink(&["--iptables-sync-period", "1s"]);
    node.write_manifest("web-a.yaml", &backend("web-a", "app: web", ""));
    node.write_manifest(
        "svc.yaml",
        &service(
            "web",
            "  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
        ),
    );
    let vip = cluster_ip(&node, "web");
    node.wait_running("web-a");
    wait_endpoints(&node, "web", 1);
    let host = node.host.path();
    let addr = format!("{vip}:80");
    node.wait_for("the service answers", Duration::from_secs(10), || {
        host_get(&host, &addr).ok()
    });
    assert!(sh(&host, "iptables -t mangle -S").contains("SKIFF-PROXY-CANARY"));
    sh(
        &host,
        "iptables -t nat -F && iptables -t nat -X && iptables -t mangle -F && iptables -t mangle -X",
    );
    assert!(
        host_get(&host, &addr).is_err(),
        "the flush did not break the service"
    );
    let body = node.wait_for("the rules to come back", Duration::from_secs(15), || {
        host_get(&host, &addr).ok()
    });
    assert_eq!(body, "web-a");
    assert!(
        node.log_tail(200).contains("canary chain is gone"),
        "{}",
        node.log_tail(40)
    );
}
