//! Root tests for the status, endpoints, events and watch writes of issue 10, driven by the
//! real kubectl (and the real Python client) against a real skiffd in the test's throwaway
//! netns: `pods/status` writes with readiness gates, the watches of Services, Endpoints and
//! Events, Endpoints of selector-less Services written through the API, and Event writes.

mod common;

use common::{IMAGE, require_root};
use serde_json::Value;

use common::kubectl::Kubectl as Api;

const GATE: &str = "example.com/lb";

/// A pod with a readiness gate and an exec readiness probe on `/tmp/ready`, so a test can
/// flip the container's readiness (and make the worker publish again) with `kubectl exec`.
fn gated_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  readinessGates:\n  - conditionType: {GATE}\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'touch /tmp/ready; sleep 3600']\n    readinessProbe:\n      exec:\n        command: [test, -f, /tmp/ready]\n      periodSeconds: 1\n"
    )
}

fn condition(pod: &Value, type_: &str) -> Option<Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn ready(api: &Api, name: &str) -> Value {
    condition(&api.json(&["get", "pod", name]), "Ready").unwrap_or_default()
}

fn set_gate(api: &Api, name: &str, status: &str) -> String {
    let patch =
        format!(r#"{{"status":{{"conditions":[{{"type":"{GATE}","status":"{status}"}}]}}}}"#);
    api.ok(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=strategic",
        "-p",
        &patch,
    ])
}

/// The ready and not-ready addresses of a Service's Endpoints.
fn endpoint_ips(api: &Api, name: &str) -> (Vec<String>, Vec<String>) {
    let ep = api.json(&["get", "endpoints", name]);
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for s in ep["subsets"].as_array().into_iter().flatten() {
        for (field, out) in [
            ("addresses", &mut ready),
            ("notReadyAddresses", &mut not_ready),
        ] {
            for a in s[field].as_array().into_iter().flatten() {
                out.push(a["ip"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    (ready, not_ready)
}

/// A readiness gate holds Ready (and the Service's endpoint) False until a client sets its
/// condition True through `pods/status`; the condition survives the worker's own updates (the
/// container going unready and ready again), the kubelet's conditions cannot be written, and a
/// manifest pod takes status writes though not spec writes.
#[test]
#[ignore = "needs root"]
fn readiness_gates_follow_conditions_written_through_pods_status() {
    require_root();
    let api = Api::start();
    let f = api.file("gated.yaml", &gated_pod("gated"));
    api.ok(&["apply", "-f", &f]);
    api.ok(&["expose", "pod", "gated", "--port=80", "--name=gated"]);
    api.node.wait_running("gated");
    api.until("ContainersReady", |a| {
        condition(&a.json(&["get", "pod", "gated"]), "ContainersReady")
            .is_some_and(|c| c["status"] == "True")
    });
    let r = ready(&api, "gated");
    assert_eq!(r["status"], "False", "{r}");
    assert_eq!(r["reason"], "ReadinessGatesNotReady", "{r}");
    assert_eq!(
        r["message"],
        format!("corresponding condition of pod readiness gate \"{GATE}\" does not exist."),
        "{r}"
    );
    let ip = api.json(&["get", "pod", "gated"])["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    api.until("the gated pod as a not-ready endpoint", |a| {
        endpoint_ips(a, "gated") == (vec![], vec![ip.clone()])
    });
    // kubectl's readiness-gate column.
    let wide = api.ok(&["get", "pod", "gated", "-o", "wide"]);
    assert!(wide.contains("0/1"), "{wide}");

    set_gate(&api, "gated", "False");
    let r = ready(&api, "gated");
    assert_eq!(
        r["message"],
        format!("the status of pod readiness gate \"{GATE}\" is not \"True\", but False"),
        "{r}"
    );
    set_gate(&api, "gated", "True");
    api.until("Ready once the gate is True", |a| {
        ready(a, "gated")["status"] == "True"
    });
    api.until("the pod as a ready endpoint", |a| {
        endpoint_ips(a, "gated") == (vec![ip.clone()], vec![])
    });

    // The worker publishes again (the probe fails, then passes): the gate's condition stays.
    api.ok(&["exec", "gated", "--", "rm", "/tmp/ready"]);
    api.until("Ready False from the probe", |a| {
        ready(a, "gated")["reason"] == "ContainersNotReady"
    });
    let pod = api.json(&["get", "pod", "gated"]);
    assert_eq!(condition(&pod, GATE).unwrap()["status"], "True", "{pod}");
    api.ok(&["exec", "gated", "--", "touch", "/tmp/ready"]);
    api.until("Ready again", |a| ready(a, "gated")["status"] == "True");

    // The kubelet's own conditions stay skiffd's: a client's Ready False is dropped.
    api.ok(&[
        "patch",
        "pod",
        "gated",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed","conditions":[{"type":"Ready","status":"False"},{"type":"example.com/lb","status":"True"}]}}"#,
    ]);
    let pod = api.json(&["get", "pod", "gated"]);
    assert_eq!(condition(&pod, "Ready").unwrap()["status"], "True", "{pod}");
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");

    // A JSON patch removing the gate's condition, and a bad status value (422 naming it).
    let pod = api.json(&["get", "pod", "gated"]);
    let i = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["type"] == GATE)
        .unwrap();
    api.ok(&[
        "patch",
        "pod",
        "gated",
        "--subresource=status",
        "--type=json",
        "-p",
        &format!(r#"[{{"op":"remove","path":"/status/conditions/{i}"}}]"#),
    ]);
    api.until("Ready False without the gate's condition", |a| {
        ready(a, "gated")["reason"] == "ReadinessGatesNotReady"
    });
    let bad = api.fails(&[
        "patch",
        "pod",
        "gated",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"x","status":"maybe"}]}}"#,
    ]);
    assert!(
        bad.contains("status.conditions[") && bad.contains("Unsupported value"),
        "{bad}"
    );

    // A manifest pod: status writes are allowed, spec writes stay the file's.
    api.node.write_manifest("static.yaml", &gated_pod("static"));
    api.node.wait_running("static");
    set_gate(&api, "static", "True");
    api.until("the manifest pod Ready through its gate", |a| {
        ready(a, "static")["status"] == "True"
    });
    let refused = api.fails(&["label", "pod", "static", "x=y"]);
    assert!(refused.contains("static.yaml"), "{refused}");
}
