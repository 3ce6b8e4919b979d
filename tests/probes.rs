//! Root tests of probes and lifecycle hooks against real containers.

mod common;

use std::time::Duration;

use common::{IMAGE, Node, require_root};
use serde_json::Value;

fn main_status(pod: &Value) -> Value {
    pod["status"]["containerStatuses"][0].clone()
}

#[test]
#[ignore = "needs root"]
fn readiness_flips_with_the_probe_and_http_and_tcp_probes_work() {
    require_root();
    let node = Node::start();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {IMAGE}
    imagePullPolicy: Never
    command: [httpd, -f, -p, "8080", -h, /var/www]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /index.html, port: http, httpHeaders: [{{name: X-Test, value: "1"}}]}}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
  - name: flag
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
      failureThreshold: 1
"#
    );
    node.write_manifest("probed.yaml", &yaml);
    let status = |name: &str| -> Option<Value> {
        let p = node.pod("probed")?;
        p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    };
    node.wait_for(
        "web ready through its httpGet probe",
        Duration::from_secs(20),
        || (status("web")?["ready"] == true).then_some(()),
    );
    assert_eq!(
        status("flag").unwrap()["ready"],
        false,
        "flag has no /tmp/ready yet"
    );
    let pod = node.pod("probed").unwrap();
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    node.skiff_ok(&["exec", "probed", "-c", "flag", "--", "touch", "/tmp/ready"]);
    node.wait_for("flag ready", Duration::from_secs(10), || {
        (status("flag")?["ready"] == true).then_some(())
    });
    node.wait_for("pod Ready", Duration::from_secs(5), || {
        let p = node.pod("probed")?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (c["status"] == "True").then_some(())
    });
    node.skiff_ok(&["exec", "probed", "-c", "flag", "--", "rm", "/tmp/ready"]);
    node.wait_for("flag not ready again", Duration::from_secs(10), || {
        (status("flag")?["ready"] == false).then_some(())
    });
    assert_eq!(
        status("web").unwrap()["restartCount"],
        0,
        "the tcp liveness probe must pass"
    );
    let events = node.skiff_ok(&["describe", "pod", "probed"]);
    assert!(events.contains("Readiness probe failed"), "{events}");
}

#[test]
#[ignore = "needs root"]
fn failing_liveness_probe_restarts_the_container_and_hooks_run() {
    require_root();
    let node = Node::start();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sick
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'touch /tmp/healthy; exec sleep 3600']
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, 'echo started > /tmp/poststart']}}
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      periodSeconds: 1
      failureThreshold: 2
"#
    );
    node.write_manifest("sick.yaml", &yaml);
    let pod = node.wait_running("sick");
    let first_id = main_status(&pod)["containerID"].clone();
    let hook = node.skiff_ok(&["exec", "sick", "--", "cat", "/tmp/poststart"]);
    assert_eq!(hook, "started\n");
    node.skiff_ok(&["exec", "sick", "--", "rm", "/tmp/healthy"]);
    let pod = node.wait_for(
        "a restart by the liveness probe",
        Duration::from_secs(30),
        || {
            let p = node.pod("sick")?;
            (main_status(&p)["restartCount"].as_i64()? >= 1).then_some(p)
        },
    );
    assert_ne!(main_status(&pod)["containerID"], first_id);
    let events = node.skiff_ok(&["get", "events"]);
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
    assert!(events.contains("Liveness probe failed"), "{events}");
}

#[test]
#[ignore = "needs root"]
fn pre_stop_hook_runs_before_the_container_is_stopped() {
    require_root();
    let node = Node::start();
    // The preStop hook leaves a file in a hostPath the test can read afterwards.
    let mark = node.dir().join("prestop-mark");
    std::fs::create_dir_all(&mark).unwrap();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hooked
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: mark, hostPath: {{path: {mark}, type: Directory}}}}]
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'trap "echo term >> /mark/log; exit 0" TERM; while true; do sleep 0.1; done']
    volumeMounts: [{{name: mark, mountPath: /mark}}]
    lifecycle:
      preStop:
        exec: {{command: [sh, -c, 'echo prestop >> /mark/log']}}
"#,
        mark = mark.display()
    );
    node.write_manifest("hooked.yaml", &yaml);
    node.wait_running("hooked");
    node.remove_manifest("hooked.yaml");
    node.wait_gone("hooked");
    let log = std::fs::read_to_string(mark.join("log")).unwrap_or_default();
    assert_eq!(log, "prestop\nterm\n", "preStop must run before SIGTERM");
}
