//! Root lab test of the multi-host control plane (issue 11): three skiffd hosts from
//! `scripts/lab.sh` (real etcd, VXLAN overlay), one elected leader. With the real kubectl: a
//! Deployment of 6 replicas spread 2/2/2 by the cluster scheduler, each node running its
//! share, a cordoned node kept out of new placements, a DaemonSet with a pod on every node;
//! then the leader's skiffd SIGKILLed: another node takes the lease and keeps controlling
//! (a scale-up is placed), and after the pod eviction timeout the dead node's pods run on the
//! two nodes left, the DaemonSet on those two.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Lab, text};
use common::{IMAGE, bin, require_root};
use serde_json::Value;

/// lab.sh's `--etcd-prefix`.
const PREFIX: &str = "/skiff";

/// kubectl against host `h`'s TLS API, run inside its netns.
fn kubectl(lab: &Lab, h: &str, args: &[&str]) -> (bool, String) {
    let dir = lab.state(h);
    let kubeconfig: PathBuf = dir.join("kubeconfig");
    if !kubeconfig.exists() {
        let out = Command::new(bin("skiff"))
            .args(["kubeconfig", "--root-dir"])
            .arg(dir.join("root"))
            .output()
            .expect("skiff kubeconfig");
        assert!(out.status.success(), "skiff kubeconfig: {}", text(&out));
        std::fs::write(&kubeconfig, &out.stdout).unwrap();
    }
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.netns_path(h).display()))
        .arg(common::kubectl_bin().expect("kubectl installed"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .env("HOME", &dir)
        .output()
        .expect("kubectl");
    (out.status.success(), text(&out))
}

/// Keeps the hosts' skiffd logs under /tmp when the test fails (the lab's Drop removes its
/// state directory).
struct KeepLogs<'a>(&'a Lab);

impl Drop for KeepLogs<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = PathBuf::from("/tmp").join(format!("skiff-cluster-{}", self.0.name));
        let _ = std::fs::create_dir_all(&dir);
        for h in ["h1", "h2", "h3", "h4"] {
            let _ = std::fs::copy(
                self.0.state(h).join("skiffd.log"),
                dir.join(format!("{h}.log")),
            );
        }
        eprintln!("skiffd logs kept in {}", dir.display());
    }
}

/// How many processes the cgroup `dir` and those below it hold.
fn procs_in(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let below: usize = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| procs_in(&e.path()))
        .sum();
    let here = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    below + here.split_whitespace().count()
}

fn leader(lab: &Lab) -> Option<String> {
    let key = format!("{PREFIX}/leader/controllers");
    lab.etcd_range(&key)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The pods of `kubectl get pods -l SELECTOR -o json` on `h`: pod name -> (node, phase).
fn pods(lab: &Lab, h: &str, selector: &str) -> BTreeMap<String, (String, String)> {
    let (ok, out) = kubectl(lab, h, &["get", "pods", "-l", selector, "-o", "json"]);
    if !ok {
        return BTreeMap::new();
    }
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                s(&p["metadata"]["name"]),
                (s(&p["spec"]["nodeName"]), s(&p["status"]["phase"])),
            )
        })
        .collect()
}

/// The running pods of `selector` on `h`'s list: pod name -> node.
fn running(lab: &Lab, h: &str, selector: &str) -> BTreeMap<String, String> {
    pods(lab, h, selector)
        .into_iter()
        .filter(|(_, (_, phase))| phase == "Running")
        .map(|(p, (node, _))| (p, node))
        .collect()
}

fn per_node(pods: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in pods.values() {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

/// A Deployment (or DaemonSet) of the test image that exits at once on SIGTERM.
fn workload(kind: &str, name: &str, replicas: Option<u32>) -> String {
    let replicas = replicas.map_or(String::new(), |r| format!("  replicas: {r}\n"));
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{replicas}  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers:\n      - name: main\n        image: {IMAGE}\n        imagePullPolicy: Never\n        command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done\"]\n        resources: {{requests: {{cpu: 10m}}}}\n"
    )
}

fn apply(lab: &Lab, h: &str, file: &str, text: &str) {
    let manifest = lab.state(h).join(file);
    std::fs::write(&manifest, text).unwrap();
    let (ok, out) = kubectl(lab, h, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply -f {file} on {h}: {out}");
}

/// Waits for the elected leader; returns its host.
fn wait_leader<'a>(lab: &Lab, hosts: &[&'a str], not: Option<&str>, timeout: Duration) -> &'a str {
    let lead = lab.wait_for("a leader in etcd", timeout, || {
        leader(lab).filter(|l| not.is_none_or(|n| n != l.as_str()))
    });
    hosts
        .iter()
        .find(|h| lab.node_name(h) == lead)
        .copied()
        .expect("the leader is a lab node")
}

/// The whole life of a 3-node cluster: spread, cordon, DaemonSet, leader failover, eviction of
/// a dead node's pods, and the dead node coming back without running its evicted pods again.
#[test]
#[ignore = "needs root"]
fn the_elected_leader_spreads_places_and_replaces_pods_over_three_hosts() {
    require_root();
    let t0 = Instant::now();
    let lab = Lab::up(3, &["--ttl", "10", "--flags", "--pod-eviction-timeout 10s"]);
    let keep_logs = KeepLogs(&lab);
    lab.wait_meshed(&["h1", "h2", "h3"], Duration::from_secs(60));
    let hosts = ["h1", "h2", "h3"];
    let lh = wait_leader(&lab, &hosts, None, Duration::from_secs(60));
    let others: Vec<&str> = hosts.iter().copied().filter(|h| *h != lh).collect();
    // Every node sees the other two.
    for h in hosts {
        lab.wait_for(&format!("{h}: 3 nodes"), Duration::from_secs(20), || {
            let (ok, out) = kubectl(&lab, h, &["get", "nodes", "-o", "name"]);
            (ok && out.lines().count() == 3).then_some(())
        });
    }
    apply(
        &lab,
        lh,
        "web.yaml",
        &workload("Deployment", "web", Some(6)),
    );
    // Spread 2/2/2 over the three nodes, every node running its share.
    let spread = lab.wait_for("6 web pods, 2 per node", Duration::from_secs(90), || {
        let pods = running(&lab, lh, "app=web");
        let per = per_node(&pods);
        (pods.len() == 6 && per.len() == 3 && per.values().all(|n| *n == 2)).then_some(pods)
    });
    for h in hosts {
        let node = lab.node_name(h);
        for (p, _) in spread.iter().filter(|(_, n)| **n == node) {
            lab.wait_for(&format!("{h} runs {p}"), Duration::from_secs(10), || {
                lab.pod(h, p)
                    .is_some_and(|v| v["status"]["phase"] == "Running")
                    .then_some(())
            });
        }
    }
    // kubectl on a node that is not the leader lists all six, with the NODE column.
    let other = others[0];
    lab.wait_for(
        "6 pods listed on another node",
        Duration::from_secs(30),
        || (running(&lab, other, "app=web") == spread).then_some(()),
    );
    let (ok, wide) = kubectl(&lab, other, &["get", "pods", "-o", "wide"]);
    assert!(ok && wide.contains("NODE"), "{wide}");
    for (p, n) in &spread {
        assert!(
            wide.lines()
                .any(|l| l.contains(p.as_str()) && l.contains(n.as_str())),
            "{p} on {n} in:\n{wide}"
        );
    }
    // A workload write on a node that does not lead is refused, naming the leader.
    let (ok, out) = kubectl(&lab, other, &["scale", "deployment", "web", "--replicas=7"]);
    assert!(!ok, "scale on {other} (not the leader) succeeded: {out}");
    assert!(
        out.contains("Forbidden") && out.contains(&lab.node_name(lh)),
        "{out}"
    );
    // A node cordoned through its own API gets none of the new pods.
    let cordoned = others[1];
    let cnode = lab.node_name(cordoned);
    let (ok, out) = kubectl(&lab, cordoned, &["cordon", &cnode]);
    assert!(ok, "cordon {cnode}: {out}");
    lab.wait_for(
        "the leader sees the cordon",
        Duration::from_secs(20),
        || {
            let (ok, out) = kubectl(
                &lab,
                lh,
                &["get", "node", &cnode, "-o", "jsonpath={.spec.taints}"],
            );
            (ok && out.contains("node.kubernetes.io/unschedulable")).then_some(())
        },
    );
    let (ok, out) = kubectl(&lab, lh, &["scale", "deployment", "web", "--replicas=10"]);
    assert!(ok, "{out}");
    let ten = lab.wait_for("10 web pods", Duration::from_secs(60), || {
        let pods = running(&lab, lh, "app=web");
        (pods.len() == 10).then_some(pods)
    });
    assert_eq!(per_node(&ten).get(&cnode), Some(&2), "{ten:?}");
    let (ok, out) = kubectl(&lab, cordoned, &["uncordon", &cnode]);
    assert!(ok, "uncordon {cnode}: {out}");
    // A DaemonSet: one pod on every node.
    apply(
        &lab,
        lh,
        "agent.yaml",
        &workload("DaemonSet", "agent", None),
    );
    lab.wait_for("one agent pod per node", Duration::from_secs(60), || {
        let pods = running(&lab, lh, "app=agent");
        let per = per_node(&pods);
        (pods.len() == 3 && per.len() == 3).then_some(())
    });
    eprintln!("spread, cordon and DaemonSet after {:?}", t0.elapsed());

    // The leader's skiffd dies (its containers run on, as after a crash of the agent alone).
    let (ok, out) = kubectl(&lab, lh, &["get", "pods", "-o", "json"]);
    assert!(ok, "{out}");
    let listed: Value = serde_json::from_str(&out).expect("pod list JSON");
    let evicted: Vec<String> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["spec"]["nodeName"].as_str() == Some(lab.node_name(lh).as_str()))
        .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
        .collect();
    let pid_file = PathBuf::from("/run/skiff-lab")
        .join(&lab.name)
        .join(lh)
        .join("skiffd.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("the leader's skiffd pid");
    let out = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill -KILL {pid}: {}", text(&out));
    let dead = lab.node_name(lh);
    let nh = wait_leader(&lab, &hosts, Some(&dead), Duration::from_secs(60));
    assert_ne!(nh, lh);
    eprintln!("{nh} leads after {:?}", t0.elapsed());
    let live: Vec<String> = others.iter().map(|h| lab.node_name(h)).collect();
    // The new leader keeps controlling: a scale-up is placed on the live nodes.
    let (ok, out) = kubectl(&lab, nh, &["scale", "deployment", "web", "--replicas=12"]);
    assert!(ok, "scale on the new leader {nh}: {out}");
    // After the eviction timeout the dead node's pods are replaced on the two left; the
    // DaemonSet keeps one pod on each of them.
    lab.wait_for(
        "web Available with 12 replicas",
        Duration::from_secs(90),
        || {
            let (ok, out) = kubectl(
                &lab,
                nh,
                &[
                    "get",
                    "deployment",
                    "web",
                    "-o",
                    "jsonpath={.status.availableReplicas}",
                ],
            );
            (ok && out.trim() == "12").then_some(())
        },
    );
    // 12 pods on the two live nodes, each run by the node it is bound to (polled: a surplus
    // pod the ReplicaSet made while the evicted ones went may still be on its way out).
    let after = lab.wait_for(
        "12 web pods running on the two live nodes",
        Duration::from_secs(60),
        || {
            let pods = running(&lab, nh, "app=web");
            let placed = pods.len() == 12 && pods.values().all(|n| live.contains(n));
            let run_there = others.iter().all(|h| {
                let node = lab.node_name(h);
                pods.iter().filter(|(_, n)| **n == node).all(|(p, _)| {
                    lab.pod(h, p)
                        .is_some_and(|v| v["status"]["phase"] == "Running")
                })
            });
            (placed && run_there).then_some(pods)
        },
    );
    assert_eq!(per_node(&after).len(), 2, "{after:?}");
    lab.wait_for(
        "one agent pod per live node",
        Duration::from_secs(60),
        || {
            let all = pods(&lab, nh, "app=agent");
            let pods = running(&lab, nh, "app=agent");
            let per = per_node(&pods);
            (all.len() == 2
                && pods.len() == 2
                && per.len() == 2
                && per.keys().all(|n| live.contains(n)))
            .then_some(())
        },
    );
    // The dead node comes back: its skiffd removes the pods evicted while it was away (never
    // two copies of a pod), and the DaemonSet takes it again.
    lab.lab_ok(&["start", lh]);
    lab.wait_for(
        "the returned node's evicted pods stopped",
        Duration::from_secs(90),
        || {
            let left: usize = evicted
                .iter()
                .map(|uid| {
                    ["/sys/fs/cgroup/pids/skiff", "/sys/fs/cgroup/skiff"]
                        .iter()
                        .map(|base| procs_in(&PathBuf::from(base).join(format!("pod{uid}"))))
                        .sum::<usize>()
                })
                .sum();
            (left == 0).then_some(())
        },
    );
    lab.wait_for(
        "an agent pod on each of the three nodes again",
        Duration::from_secs(90),
        || {
            let pods = running(&lab, nh, "app=agent");
            (pods.len() == 3 && per_node(&pods).len() == 3).then_some(())
        },
    );
    // Polled: the returned node lists what it adopted at its start until its first pass over
    // etcd has stopped them.
    lab.wait_for(
        "12 web pods after the node came back",
        Duration::from_secs(30),
        || (running(&lab, nh, "app=web").len() == 12).then_some(()),
    );
    // `lab.sh down` deletes what was made through the API (on the leader: the workloads, their
    // pods with them) and must find nothing left behind on any host.
    drop(keep_logs);
    lab.down_checked();
    eprintln!("done after {:?}", t0.elapsed());
}
