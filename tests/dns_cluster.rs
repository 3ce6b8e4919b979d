//! Root test for the cluster DNS across hosts (issue 12): a two-host lab from `scripts/lab.sh`
//! (a real etcd on the lab's underlay, two skiffds joined by the VXLAN overlay; see
//! tests/common/lab.rs), Services and pods written on host A (h1), the names asked on host B
//! (h2) with `dig` from its host netns through the kube-dns ClusterIP and with busybox
//! `nslookup` inside a pod on h2. Every node answers from its own store, which holds what the
//! other nodes published in etcd; when that changes, h2's answer follows within a second of the
//! change being visible in etcd.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Lab, text};
use common::{IMAGE, require_root};
use serde_json::Value;

/// The cluster DNS address (the default: the 10th of 10.96.0.0/12), the same on every node.
const DNS: &str = "10.96.0.10";
/// lab.sh's `--etcd-prefix`.
const PREFIX: &str = "/skiff/registry";
/// How soon a node's answer must follow a change visible in etcd (issue 12).
const FOLLOW: Duration = Duration::from_secs(1);

/// `dig @DNS +short ARGS` from host `h`'s network namespace: the answer's data lines, sorted.
fn dig_short(lab: &Lab, h: &str, args: &str) -> Vec<String> {
    let out = dig(lab, h, &format!("+short {args}"));
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    v.sort();
    v
}

/// `dig @DNS ARGS` from host `h`'s network namespace: its whole output.
fn dig(lab: &Lab, h: &str, args: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.netns_path(h).display()))
        .args(["sh", "-c", &format!("dig @{DNS} +time=2 +tries=1 {args}")])
        .output()
        .expect("nsenter dig");
    text(&out)
}

/// A pod labelled `app: APP` with `hostname`/`subdomain`, ready while /tmp/ready exists
/// (created at start; an exec removes or recreates it to flip readiness).
fn db_pod(name: &str, app: &str, subdomain: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  terminationGracePeriodSeconds: 0
  hostname: {name}
  subdomain: {subdomain}
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/ready; trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
    ports: [{{name: pg, containerPort: 5432}}, {{name: http, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: [test, -f, /tmp/ready]}}
      periodSeconds: 1
      failureThreshold: 1
"#
    )
}

/// A pod that only sleeps (a place to run nslookup from).
fn idle_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done\"]\n"
    )
}

/// The etcd value of pod `name` of host `h` (as that node published it), if any.
fn published_pod(lab: &Lab, h: &str, name: &str) -> Option<Value> {
    let key = format!("{PREFIX}/pods/{}/default/{name}", lab.node_name(h));
    lab.etcd_range(&key)
        .into_iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| serde_json::from_str(&v).ok())
}

fn published_ready(pod: &Value) -> Option<bool> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True")
}

/// Waits (up to `timeout`) until `seen` holds in etcd, then returns the instant just before the
/// poll that first saw it: the change was not visible before then.
fn visible_in_etcd(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    mut seen: impl FnMut() -> bool,
) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let before = Instant::now();
        if seen() {
            return before;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what} in etcd\n{}",
            lab.logs(25)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls h2's answer for `args` until it is `want`; asserts it came within [`FOLLOW`] of
/// `since` (polling goes on to 10 s so that a slow answer is reported with its time).
fn follows(lab: &Lab, what: &str, since: Instant, args: &str, want: &[String]) -> Duration {
    let deadline = since + Duration::from_secs(10);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = dig_short(lab, "h2", args);
        if last == want {
            let took = since.elapsed();
            assert!(
                took <= FOLLOW,
                "{what}: h2 answered {want:?} {took:?} after the change was visible in etcd"
            );
            eprintln!("{what}: h2's answer followed etcd in {took:?}");
            return took;
        }
    }
    panic!(
        "{what}: h2 still answers {last:?} 10 s after the change was in etcd, not {want:?}\n{}",
        lab.logs(25)
    );
}

/// A ClusterIP Service and a headless one written on h1, with backends on h1 and h2, are
/// resolved on h2: `dig` (A, SRV, the remote pod's hostname.subdomain, pod and PTR records)
/// and busybox `nslookup` by short name in a pod. Readiness flips, a deleted pod and a deleted
/// Service on h1 change h2's answers within a second of being visible in etcd.
#[test]
#[ignore = "needs root"]
fn names_from_one_host_resolve_on_another_and_follow_changes() {
    require_root();
    let lab = Lab::up(2, &[]);
    lab.wait_meshed(&["h1", "h2"], Duration::from_secs(30));
    lab.write_manifest(
        "h1",
        "web.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n",
            db_pod("web-a", "web", "web")
        ),
    );
    lab.write_manifest(
        "h1",
        "db.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: db}}\nspec:\n  clusterIP: None\n  selector: {{app: db}}\n  ports: [{{name: pg, port: 5432}}]\n",
            db_pod("db-a", "db", "db")
        ),
    );
    lab.write_manifest("h2", "db.yaml", &db_pod("db-b", "db", "db"));
    lab.write_manifest("h2", "client.yaml", &idle_pod("client"));
    let web_a = lab.wait_running("h1", "web-a").to_string();
    let db_a = lab.wait_running("h1", "db-a").to_string();
    let db_b = lab.wait_running("h2", "db-b").to_string();
    lab.wait_running("h2", "client");
    let vip = lab.cluster_ip("h1", "web");
    assert_eq!(
        lab.cluster_ip("h2", "web"),
        vip,
        "one cluster IP everywhere"
    );

    let wait = |what: &str, h: &str, args: &str, want: Vec<String>| {
        lab.wait_for(&format!("{h}: {what}"), Duration::from_secs(30), || {
            (dig_short(&lab, h, args) == want).then_some(())
        })
    };
    // Each node's own kube-dns Service, at the same address.
    for h in ["h1", "h2"] {
        wait(
            "A of kube-dns",
            h,
            "kube-dns.kube-system.svc.cluster.local",
            vec![DNS.to_string()],
        );
    }
    // The ClusterIP Service of h1, asked on h2.
    wait(
        "A of h1's ClusterIP Service",
        "h2",
        "web.default.svc.cluster.local",
        vec![vip.clone()],
    );
    assert_eq!(
        dig_short(&lab, "h2", "SRV _http._tcp.web.default.svc.cluster.local"),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    // The headless Service: its ready endpoints on both hosts, on both hosts.
    let both: Vec<String> = {
        let mut v = vec![db_a.clone(), db_b.clone()];
        v.sort();
        v
    };
    for h in ["h2", "h1"] {
        wait(
            "A of the headless Service: endpoints on h1 and h2",
            h,
            "db.default.svc.cluster.local",
            both.clone(),
        );
    }
    // The remote pod's hostname.subdomain (carried in etcd), and the local one's.
    wait(
        "A of h1's pod db-a by hostname.subdomain",
        "h2",
        "db-a.db.default.svc.cluster.local",
        vec![db_a.clone()],
    );
    assert_eq!(
        dig_short(&lab, "h2", "db-b.db.default.svc.cluster.local"),
        [db_b.as_str()]
    );
    let srv = dig_short(&lab, "h2", "SRV _pg._tcp.db.default.svc.cluster.local");
    assert_eq!(
        srv,
        [
            "0 100 5432 db-a.db.default.svc.cluster.local.",
            "0 100 5432 db-b.db.default.svc.cluster.local."
        ]
    );
    // Pod and reverse records of h1's pods.
    let dashed = web_a.replace('.', "-");
    assert_eq!(
        dig_short(&lab, "h2", &format!("{dashed}.default.pod.cluster.local")),
        [web_a.as_str()]
    );
    assert_eq!(
        dig_short(&lab, "h2", &format!("-x {web_a}")),
        [format!("{dashed}.default.pod.cluster.local.")]
    );
    assert_eq!(
        dig_short(&lab, "h2", &format!("-x {db_a}")),
        ["db-a.db.default.svc.cluster.local."]
    );
    assert_eq!(
        dig_short(&lab, "h2", &format!("-x {vip}")),
        ["web.default.svc.cluster.local."]
    );

    // A pod on h2 resolves h1's Services by short name through its resolv.conf.
    let (code, out) = lab.exec_sh("h2", "client", "cat /etc/resolv.conf");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("nameserver {DNS}\n")), "{out}");
    let (_, out) = lab.exec_sh("h2", "client", "nslookup web");
    assert!(
        out.contains(&format!(
            "Name:\tweb.default.svc.cluster.local\nAddress: {vip}\n"
        )),
        "nslookup web on h2: {out}"
    );
    let (_, out) = lab.exec_sh("h2", "client", "nslookup db");
    assert!(
        out.contains("Name:\tdb.default.svc.cluster.local")
            && out.contains(&format!("Address: {db_a}\n"))
            && out.contains(&format!("Address: {db_b}\n")),
        "nslookup db on h2: {out}"
    );
    // busybox applies the search path to dotless names only: h1's pod by its full name.
    let (_, out) = lab.exec_sh("h2", "client", "nslookup db-a.db.default.svc.cluster.local");
    assert!(
        out.contains(&format!("Address: {db_a}\n")),
        "nslookup db-a.db.default.svc.cluster.local on h2: {out}"
    );

    // Readiness flips on h1: h2's headless answer drops db-a, then takes it back.
    let (code, out) = lab.exec_sh("h1", "db-a", "rm /tmp/ready");
    assert_eq!(code, 0, "{out}");
    let since = visible_in_etcd(&lab, "db-a not ready", Duration::from_secs(20), || {
        published_pod(&lab, "h1", "db-a")
            .as_ref()
            .and_then(published_ready)
            == Some(false)
    });
    follows(
        &lab,
        "db-a not ready",
        since,
        "db.default.svc.cluster.local",
        std::slice::from_ref(&db_b),
    );
    let (code, out) = lab.exec_sh("h1", "db-a", "touch /tmp/ready");
    assert_eq!(code, 0, "{out}");
    let since = visible_in_etcd(&lab, "db-a ready again", Duration::from_secs(20), || {
        published_pod(&lab, "h1", "db-a")
            .as_ref()
            .and_then(published_ready)
            == Some(true)
    });
    follows(
        &lab,
        "db-a ready again",
        since,
        "db.default.svc.cluster.local",
        &both,
    );

    // h1's pod is deleted: etcd shows it terminating (then its key goes), and h2 answers with
    // db-b alone (and no longer knows db-a's hostname).
    lab.write_manifest(
        "h1",
        "db.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  selector: {app: db}\n  ports: [{name: pg, port: 5432}]\n",
    );
    let since = visible_in_etcd(&lab, "db-a deleted", Duration::from_secs(30), || {
        published_pod(&lab, "h1", "db-a")
            .is_none_or(|p| p["metadata"]["deletionTimestamp"].is_string())
    });
    follows(
        &lab,
        "db-a deleted",
        since,
        "db.default.svc.cluster.local",
        std::slice::from_ref(&db_b),
    );
    let nx = dig(&lab, "h2", "db-a.db.default.svc.cluster.local");
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");

    // h1's Service is deleted: h2's name for it goes.
    lab.write_manifest("h1", "web.yaml", &db_pod("web-a", "web", "web"));
    let svc_key = format!("{PREFIX}/services/default/web");
    let since = visible_in_etcd(&lab, "Service web deleted", Duration::from_secs(30), || {
        !lab.etcd_range(&svc_key).iter().any(|(k, _)| *k == svc_key)
    });
    let deadline = since + Duration::from_secs(10);
    loop {
        let out = dig(&lab, "h2", "web.default.svc.cluster.local");
        if out.contains("status: NXDOMAIN") {
            let took = since.elapsed();
            assert!(took <= FOLLOW, "web NXDOMAIN on h2 {took:?} after etcd");
            eprintln!("Service web deleted: h2's answer followed etcd in {took:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web still resolves on h2 10 s after its Service left etcd: {out}"
        );
    }
    let names: BTreeSet<String> = dig_short(&lab, "h2", "db.default.svc.cluster.local")
        .into_iter()
        .collect();
    assert_eq!(names, BTreeSet::from([db_b]));
    lab.down_checked();
}
