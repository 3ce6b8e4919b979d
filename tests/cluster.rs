//! Root lab test of the multi-host control plane (issue 11): three skiffd hosts from
//! `scripts/lab.sh` (real etcd, VXLAN overlay), one elected leader, a Deployment of 6 replicas
//! created with the real kubectl on the leader and spread by the cluster scheduler over the
//! three nodes, each node running its share, and kubectl on another node listing all 6 pods
//! with their node.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

fn leader(lab: &Lab) -> Option<String> {
    let key = format!("{PREFIX}/leader/controllers");
    lab.etcd_range(&key)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `kubectl get pods -l app=web -o json` on `h`: pod name -> node, for running pods.
fn web_pods(lab: &Lab, h: &str) -> BTreeMap<String, String> {
    let (ok, out) = kubectl(lab, h, &["get", "pods", "-l", "app=web", "-o", "json"]);
    if !ok {
        return BTreeMap::new();
    }
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn per_node(pods: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in pods.values() {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[test]
#[ignore = "needs root; does not pass yet: the 6 pods are not spread 2/2/2 within 120 s (work in progress, see the report)"]
fn a_deployment_is_spread_over_three_hosts_by_the_elected_leader() {
    require_root();
    let lab = Lab::up(3, &["--ttl", "10"]);
    lab.wait_meshed(&["h1", "h2", "h3"], Duration::from_secs(60));
    let hosts = ["h1", "h2", "h3"];
    let name_of: BTreeMap<String, &str> = hosts.iter().map(|h| (lab.node_name(h), *h)).collect();
    let lead = lab.wait_for("a leader in etcd", Duration::from_secs(60), || leader(&lab));
    let lh = *name_of.get(&lead).expect("the leader is a lab node");
    // Every node sees the other two.
    for h in hosts {
        lab.wait_for(&format!("{h}: 3 nodes"), Duration::from_secs(20), || {
            let (ok, out) = kubectl(&lab, h, &["get", "nodes", "-o", "name"]);
            if !ok {
                eprintln!("{h}: kubectl get nodes: {out}");
            }
            (ok && out.lines().count() == 3).then_some(())
        });
    }
    let manifest = lab.state(lh).join("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 6\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers:\n      - name: main\n        image: {IMAGE}\n        imagePullPolicy: Never\n        command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done\"]\n        resources: {{requests: {{cpu: 10m}}}}\n"
        ),
    )
    .unwrap();
    let (ok, out) = kubectl(&lab, lh, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "kubectl apply on the leader {lh}: {out}");
    // Spread 2/2/2 over the three nodes, every node running its share.
    let spread = lab.wait_for("6 web pods, 2 per node", Duration::from_secs(120), || {
        let pods = web_pods(&lab, lh);
        let per = per_node(&pods);
        (pods.len() == 6 && per.len() == 3 && per.values().all(|n| *n == 2)).then_some(pods)
    });
    for h in hosts {
        let node = lab.node_name(h);
        let mine: Vec<&String> = spread
            .iter()
            .filter(|(_, n)| **n == node)
            .map(|(p, _)| p)
            .collect();
        for p in mine {
            assert_eq!(
                lab.pod(h, p)
                    .and_then(|v| v["status"]["phase"].as_str().map(String::from)),
                Some("Running".to_string()),
                "{h} runs {p}"
            );
        }
    }
    // kubectl on a node that is not the leader lists all six, with the NODE column.
    let other = hosts.iter().find(|h| **h != lh).unwrap();
    lab.wait_for(
        "6 pods listed on another node",
        Duration::from_secs(30),
        || (web_pods(&lab, other) == spread).then_some(()),
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
    let (ok, deploy) = kubectl(&lab, other, &["get", "deployment", "web"]);
    assert!(ok && deploy.contains("web"), "{deploy}");
    // Scaling on the leader: 3 replicas, one per node.
    let (ok, out) = kubectl(&lab, lh, &["scale", "deployment", "web", "--replicas=3"]);
    assert!(ok, "{out}");
    lab.wait_for("3 web pods, 1 per node", Duration::from_secs(60), || {
        let pods = web_pods(&lab, lh);
        let per = per_node(&pods);
        (pods.len() == 3 && per.len() == 3).then_some(())
    });
}
