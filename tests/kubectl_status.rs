//! Root tests for the status, endpoints, events and watch writes of issue 10, driven by the
//! real kubectl (and the real Python client) against a real skiffd in the test's throwaway
//! netns: `pods/status` writes with readiness gates, the watches of Services, Endpoints and
//! Events, Endpoints of selector-less Services written through the API, and Event writes.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

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

/// A child's stdout, line by line, through a channel (so the test can wait with a timeout).
fn lines_of(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line `f` accepts; the lines seen before it.
fn wait_line(rx: &Receiver<String>, what: &str, f: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {what} within 60 s; saw {seen:#?}"));
        let done = f(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// The Python client's `Watch` on one kind (tests/support/watch_kind.py).
fn python_watch(api: &Api, kind: &str, name: &str) -> (Child, Receiver<Value>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/watch_kind.py");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", api.node.host.path().display()))
        .arg("/usr/bin/python3")
        .arg(&script)
        .arg(&api.kubeconfig)
        .args(["default", kind, name])
        .env("HOME", api.node.dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let lines = lines_of(&mut child);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in lines {
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    (child, rx)
}

fn next_event(rx: &Receiver<Value>, what: &str, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {what} within 60 s; saw {seen:#?}"));
        let done = f(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn finish(mut child: Child, what: &str) {
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{what}: {err}");
}

/// Watches of Services and Endpoints (the Python client's `Watch`) and of Events
/// (`kubectl get events -w`) see ADDED, MODIFIED and DELETED, with versions going forward;
/// a watch resumed from a version replays what came after it.
#[test]
#[ignore = "needs root"]
fn services_endpoints_and_events_are_watched() {
    require_root();
    let api = Api::start();
    let (svc_child, svc) = python_watch(&api, "services", "web");
    let (ep_child, eps) = python_watch(&api, "endpoints", "web");
    // Both watches start with what exists: the API's own Service and its Endpoints.
    next_event(&svc, "the kubernetes Service", |v| {
        v["type"] == "ADDED" && v["name"] == "kubernetes"
    });
    next_event(&eps, "the kubernetes Endpoints", |v| {
        v["type"] == "ADDED" && v["name"] == "kubernetes"
    });
    let mut events_child = api
        .command(&["get", "events", "-w", "--watch-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = lines_of(&mut events_child);
    let list: Value =
        serde_json::from_str(&api.ok(&["get", "--raw", "/api/v1/namespaces/default/services"]))
            .unwrap();
    let before = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!before.is_empty(), "{list}");

    api.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let added = next_event(&svc, "ADDED web", |v| {
        v["type"] == "ADDED" && v["name"] == "web"
    });
    let web = added.last().unwrap();
    assert!(
        web["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty()),
        "{web}"
    );
    next_event(&eps, "ADDED web endpoints", |v| {
        v["type"] == "ADDED" && v["name"] == "web"
    });
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  labels:\n    app: web\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'sleep 3600']\n"
    );
    let f = api.file("web-1.yaml", &pod);
    api.ok(&["apply", "-f", &f]);
    let running = api.node.wait_running("web-1");
    let ip = running["status"]["podIP"].as_str().unwrap().to_string();
    next_event(&eps, "MODIFIED web endpoints with the pod", |v| {
        v["type"] == "MODIFIED" && v["name"] == "web" && v["ips"] == serde_json::json!([ip])
    });
    // kubectl's event watch sees the pod's events as the kubelet records them.
    wait_line(&events, "a Started event of web-1", |l| {
        l.contains("pod/web-1") && l.contains("Started")
    });
    api.ok(&["label", "service", "web", "tier=front"]);
    next_event(&svc, "MODIFIED web", |v| {
        v["type"] == "MODIFIED" && v["name"] == "web"
    });
    api.ok(&["delete", "service", "web"]);
    let tail = next_event(&svc, "DELETED web", |v| {
        v["type"] == "DELETED" && v["name"] == "web"
    });
    next_event(&eps, "DELETED web endpoints", |v| {
        v["type"] == "DELETED" && v["name"] == "web"
    });
    finish(svc_child, "service watch");
    finish(ep_child, "endpoints watch");
    let _ = events_child.kill();
    let _ = events_child.wait();
    let rvs: Vec<u64> = tail
        .iter()
        .map(|v| v["rv"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{tail:?}");

    // Resumed from the version before the Service was made: the same story again.
    let replay = api.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/services?watch=1&resourceVersion={before}&timeoutSeconds=2"
        ),
    ]);
    let kinds: Vec<String> = replay
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["object"]["metadata"]["name"] == "web")
        .map(|v| v["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("ADDED"), "{replay}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("DELETED"),
        "{replay}"
    );
    // The Table watch kubectl asks for also works (`kubectl get svc -w` prints rows).
    let out = api.ok(&["get", "svc", "-w", "--request-timeout=3s"]);
    assert!(out.contains("kubernetes"), "{out}");
}

/// Endpoints of a Service without a selector, written through the API, feed the proxy: its
/// rules DNAT the Service's virtual IP to the addresses they name, a patch moves them, a
/// delete removes them. The Endpoints of a Service with a selector are the controller's (403 naming it).
#[test]
#[ignore = "needs root"]
fn endpoints_written_for_a_selectorless_service_feed_the_proxy() {
    require_root();
    let api = Api::start();
    let backend = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, \"mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n"
        )
    };
    let mut ips = Vec::new();
    for name in ["back-a", "back-b"] {
        let f = api.file(&format!("{name}.yaml"), &backend(name));
        api.ok(&["apply", "-f", &f]);
        let pod = api.node.wait_running(name);
        ips.push(pod["status"]["podIP"].as_str().unwrap().to_string());
    }
    let svc = api.file(
        "ext.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    api.ok(&["apply", "-f", &svc]);
    let ep = format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: ext\nsubsets:\n- addresses:\n  - ip: {}\n  ports:\n  - port: 8080\n",
        ips[0]
    );
    let f = api.file("ext-ep.yaml", &ep);
    api.ok(&["create", "-f", &f]);
    let got = api.json(&["get", "endpoints", "ext"]);
    assert_eq!(
        got["subsets"][0]["addresses"][0]["ip"],
        ips[0].as_str(),
        "{got}"
    );
    assert_eq!(
        got["metadata"]["annotations"]["skiff.dev/source"], "api",
        "{got}"
    );
    let listed = api.ok(&["get", "endpoints"]);
    assert!(listed.contains(&format!("{}:8080", ips[0])), "{listed}");
    let vip: std::net::Ipv4Addr = api.json(&["get", "service", "ext"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The proxy's rules send the Service's virtual IP to the addresses written.
    let nat = |a: &Api| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", a.node.host.path().display()))
            .args(["iptables-save", "-t", "nat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dnat_to = |ip: &str| format!("--to-destination {ip}:8080");
    api.until("the proxy's DNAT to back-a", |a| {
        let rules = nat(a);
        rules.contains(&dnat_to(&ips[0])) && rules.contains(&vip.to_string())
    });

    // A merge patch moves the Service to back-b.
    let patch = format!(
        r#"{{"subsets":[{{"addresses":[{{"ip":"{}"}}],"ports":[{{"port":8080}}]}}]}}"#,
        ips[1]
    );
    api.ok(&["patch", "endpoints", "ext", "--type=merge", "-p", &patch]);
    api.until("the proxy's DNAT to back-b only", |a| {
        let rules = nat(a);
        rules.contains(&dnat_to(&ips[1])) && !rules.contains(&dnat_to(&ips[0]))
    });
    let bad = api.fails(&[
        "patch",
        "endpoints",
        "ext",
        "--type=merge",
        "-p",
        r#"{"subsets":[{"addresses":[{"ip":"not-an-ip"}],"ports":[{"port":8080}]}]}"#,
    ]);
    assert!(bad.contains("subsets[0].addresses[0].ip"), "{bad}");

    // The Endpoints of a Service with a selector stay the controller's.
    api.ok(&["create", "service", "clusterip", "sel", "--tcp=80:8080"]);
    api.until("the controller's Endpoints of sel", |a| {
        a.exists(&["get", "endpoints", "sel"])
    });
    let refused = api.fails(&["label", "endpoints", "sel", "x=y"]);
    assert!(refused.contains("endpoints controller"), "{refused}");

    api.ok(&["delete", "endpoints", "ext"]);
    api.until("no DNAT left for ext", |a| {
        !nat(a).contains(&dnat_to(&ips[1]))
    });
    assert!(!api.exists(&["get", "endpoints", "ext"]));
}
