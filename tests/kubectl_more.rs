//! Root tests for the rest of issue 10's API, driven by the real kubectl against a real
//! skiffd in the test's throwaway netns: `deletecollection` with selectors and dryRun, writes
//! to the Node (label, annotate, taint, cordon) that persist across a restart, and
//! `kubectl drain` through `pods/eviction`, which leaves the manifest directory's (mirror) pods.

mod common;

use common::{IMAGE, require_root};
use serde_json::Value;

use common::kubectl::Kubectl as Api;

fn pod(name: &str, tier: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    tier: {tier}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'sleep 3600']\n"
    )
}

fn names(items: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = items
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    n.sort();
    n
}

fn node_name(api: &Api) -> String {
    api.ok(&["get", "nodes", "-o", "name"])
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("node/")
        .to_string()
}

/// DELETE on a collection (what client libraries and `kubectl delete --raw` send): a dry run
/// deletes nothing, a label selector deletes only what it selects, a bad field selector is a
/// 400 naming the field, and the answer lists what was deleted.
#[test]
#[ignore = "needs root"]
fn deletecollection_deletes_what_the_selectors_select() {
    require_root();
    let api = Api::start();
    for (name, tier) in [("dc-a", "web"), ("dc-b", "web"), ("dc-c", "db")] {
        let f = api.file(&format!("{name}.yaml"), &pod(name, tier));
        api.ok(&["apply", "-f", &f]);
    }
    api.ok(&["create", "configmap", "cm-1", "--from-literal=a=1"]);
    api.ok(&["create", "configmap", "cm-2", "--from-literal=a=2"]);
    api.node.wait_running("dc-a");

    let dry = api.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/pods?labelSelector=tier%3Dweb&dryRun=All",
    ]);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["kind"], "PodList");
    assert_eq!(
        names(dry["items"].as_array().unwrap()),
        ["dc-a", "dc-b"],
        "{dry}"
    );
    assert_eq!(api.items(&["get", "pods", "-l", "tier=web"]).len(), 2);

    let bad = api.fails(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/pods?fieldSelector=spec.containers%3Dx",
    ]);
    assert!(bad.contains("spec.containers"), "{bad}");

    api.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/pods?labelSelector=tier%3Dweb",
    ]);
    api.until("the web pods to go", |a| {
        a.items(&["get", "pods", "-l", "tier=web"]).is_empty()
    });
    assert_eq!(names(&api.items(&["get", "pods"])), ["dc-c"]);

    api.ok(&["delete", "--raw", "/api/v1/namespaces/default/configmaps"]);
    assert!(
        !names(&api.items(&["get", "configmaps"]))
            .iter()
            .any(|n| n.starts_with("cm-"))
    );
}

/// `kubectl label/annotate/taint/cordon node` change the Node as `kubectl get nodes` shows
/// it (STATUS `Ready,SchedulingDisabled`, the unschedulable taint), bad taints are refused
/// as by the apiserver, and what was set is stored under objects/nodes and comes back after
/// a restart of skiffd.
#[test]
#[ignore = "needs root"]
fn node_labels_taints_and_cordon_persist() {
    require_root();
    let mut api = Api::start();
    let node = node_name(&api);
    let n = format!("node/{node}");
    api.ok(&["label", "node", &node, "disk=ssd"]);
    api.ok(&["annotate", "node", &node, "note=rack-3"]);
    api.ok(&["taint", "nodes", &node, "dedicated=gpu:NoSchedule"]);
    let bad = api.fails(&["taint", "nodes", &node, "x=y:Sometimes"]);
    assert!(bad.contains("Sometimes"), "{bad}");
    api.ok(&["cordon", &node]);

    let got = api.json(&["get", &n]);
    assert_eq!(got["metadata"]["labels"]["disk"], "ssd");
    assert_eq!(
        got["metadata"]["labels"]["kubernetes.io/hostname"],
        node.as_str()
    );
    assert_eq!(got["metadata"]["annotations"]["note"], "rack-3");
    assert_eq!(got["spec"]["unschedulable"], true);
    let taints: Vec<String> = got["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        taints,
        [
            "dedicated:NoSchedule",
            "node.kubernetes.io/unschedulable:NoSchedule"
        ]
    );
    let table = api.ok(&["get", "nodes", "--no-headers"]);
    assert!(table.contains("Ready,SchedulingDisabled"), "{table}");
    assert!(
        api.node
            .root
            .join("objects/nodes")
            .join(format!("{node}.json"))
            .exists()
    );

    api.node.stop_daemon();
    api.node.start_daemon();
    api.until("the node to come back cordoned", |a| {
        a.exists(&["get", &n]) && a.json(&["get", &n])["spec"]["unschedulable"] == true
    });
    let got = api.json(&["get", &n]);
    assert_eq!(got["metadata"]["labels"]["disk"], "ssd");

    api.ok(&["uncordon", &node]);
    api.ok(&["taint", "nodes", &node, "dedicated:NoSchedule-"]);
    api.ok(&["label", "node", &node, "disk-"]);
    let got = api.json(&["get", &n]);
    assert!(got["spec"]["taints"].is_null(), "{got}");
    assert!(got["metadata"]["labels"]["disk"].is_null());
    let table = api.ok(&["get", "nodes", "--no-headers"]);
    assert!(!table.contains("SchedulingDisabled"), "{table}");
}

/// `kubectl drain` cordons the node and evicts its API-made pods through `pods/eviction`;
/// the manifest directory's pod is a mirror pod, which drain leaves running.
#[test]
#[ignore = "needs root"]
fn drain_evicts_api_pods_and_leaves_mirror_pods() {
    require_root();
    let api = Api::start();
    api.node
        .write_manifest("static.yaml", &pod("static-web", "static"));
    let f = api.file("bare.yaml", &pod("bare", "web"));
    api.ok(&["apply", "-f", &f]);
    api.node.wait_running("bare");
    let mirror = api.node.wait_running("static-web");
    assert!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(),
        "{mirror}"
    );
    let node = node_name(&api);
    let out = api.ok(&[
        "drain",
        &node,
        "--ignore-daemonsets",
        "--force",
        "--timeout=90s",
    ]);
    assert!(out.contains("evicting pod default/bare"), "{out}");
    assert!(out.contains("drained"), "{out}");
    assert!(!api.exists(&["get", "pod", "bare"]));
    assert!(api.exists(&["get", "pod", "static-web"]));
    let table = api.ok(&["get", "nodes", "--no-headers"]);
    assert!(table.contains("SchedulingDisabled"), "{table}");

    // An eviction of the mirror pod is refused naming its file, as a delete is.
    let body = api.file(
        "evict.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"static-web","namespace":"default"}}"#,
    );
    let refused = api.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/static-web/eviction",
        "-f",
        &body,
    ]);
    assert!(refused.contains("static.yaml"), "{refused}");
    api.ok(&["uncordon", &node]);
}
