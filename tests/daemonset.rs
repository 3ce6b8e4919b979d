//! Root tests for DaemonSets (issue 11), driven by the real kubectl against a real skiffd in
//! the test's throwaway netns: one daemon pod per node with its labels and owner, the
//! apiserver's table and messages, a rollout of a new image with `rollout status`,
//! `history`, `undo [--to-revision]` and `restart`, node labels (`--node-labels`) and the
//! node selector deciding where the pod runs, a DaemonSet from the manifest directory, and the
//! autoscaling/v1 HorizontalPodAutoscaler round trip.

mod common;

use common::{IMAGE, require_root};
use serde_json::Value;

use common::kubectl::Kubectl as Api;

/// What these tests ask of kubectl beyond the common calls.
impl Api {
    /// A node with skiffd's `flags` and the test image also under the tag [`TAGGED`].
    fn start_daemons(flags: &[&str]) -> Api {
        let api = Api::start_with(flags);
        api.import_tagged("daemon");
        api
    }

    /// The daemon pods of `ds` not being deleted.
    fn daemon_pods(&self, ds: &str) -> Vec<Value> {
        self.items(&["get", "pods", "-l", &format!("app={ds}")])
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    }

    /// The one running, ready daemon pod of `ds` with `image`, once there is exactly one.
    fn running_with(&self, ds: &str, image: &str) -> Value {
        let mut found = None;
        self.until(&format!("one running {ds} pod with {image}"), |a| {
            let all = a.items(&["get", "pods", "-l", &format!("app={ds}")]);
            let ok = all.len() == 1
                && all[0]["status"]["phase"] == "Running"
                && all[0]["spec"]["containers"][0]["image"] == image;
            if ok {
                found = Some(all[0].clone());
            }
            ok
        });
        found.unwrap()
    }

    /// The row of `name` in `kubectl get <what>`, split into columns.
    fn row(&self, what: &[&str], name: &str) -> Vec<String> {
        let table = self.ok(&[&["get"], what].concat());
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in {table}"));
        line.split_whitespace().map(String::from).collect()
    }
}

/// The test image under a second tag, so a rollout has another image to go to.
const TAGGED: &str = "skiff.test/busybox:daemon";

/// A DaemonSet named `name` (pods labelled `app: name`) with `extra` under its pod spec.
fn daemon_set(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
spec:
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 1
{extra}      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, 'sleep 3600']
"
    )
}

fn label<'a>(p: &'a Value, key: &str) -> &'a str {
    p["metadata"]["labels"][key].as_str().unwrap_or_default()
}

/// One pod per node (here, the test node) with the controller's labels, owner and binding;
/// the apiserver's table; a new image rolled out, its history, undo to the previous and to a
/// given revision, a restart; deleting the DaemonSet takes its pods and revisions.
#[test]
#[ignore = "needs root"]
fn a_daemonset_runs_a_pod_per_node_and_rolls_out_with_history() {
    require_root();
    let api = Api::start_daemons(&[]);
    let f = api.file("ds.yaml", &daemon_set("agent", ""));
    api.ok(&["apply", "-f", &f]);
    let pod = api.running_with("agent", IMAGE);
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("agent-") && name.len() == "agent-".len() + 5,
        "{name}"
    );
    assert_eq!(pod["spec"]["nodeName"], "test-node");
    assert_eq!(label(&pod, "pod-template-generation"), "1");
    let hash1 = label(&pod, "controller-revision-hash").to_string();
    assert!(!hash1.is_empty(), "{pod}");
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "DaemonSet");
    assert_eq!(owner["controller"], true);
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchFields"][0]["values"][0], "test-node",
        "{pod}"
    );
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unschedulable"),
        "{tolerations}"
    );

    let out = api.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(
        out.contains("daemon set \"agent\" successfully rolled out"),
        "{out}"
    );
    let head = api.ok(&["get", "ds"]);
    assert!(
        head.starts_with(
            "NAME    DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR   AGE"
        ),
        "{head}"
    );
    assert_eq!(
        api.row(&["ds"], "agent")[..7],
        ["agent", "1", "1", "1", "1", "1", "<none>"]
    );
    let wide = api.row(&["ds", "-o", "wide"], "agent");
    assert_eq!(wide[8..], ["main", IMAGE, "app=agent"], "{wide:?}");
    let crs = api.items(&["get", "controllerrevisions"]);
    assert_eq!(crs.len(), 1, "{crs:?}");
    assert_eq!(crs[0]["revision"], 1);
    assert_eq!(
        api.row(
            &["controllerrevisions"],
            crs[0]["metadata"]["name"].as_str().unwrap()
        )[1..3],
        ["daemonset.apps/agent", "1"]
    );
    let described = api.ok(&["describe", "ds", "agent"]);
    assert!(
        described.contains("Desired Number of Nodes Scheduled: 1"),
        "{described}"
    );
    assert!(described.contains("SuccessfulCreate"), "{described}");

    // A new image: the pod is replaced with the new revision's hash.
    api.ok(&["set", "image", "ds/agent", &format!("main={TAGGED}")]);
    api.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let pod = api.running_with("agent", TAGGED);
    let hash2 = label(&pod, "controller-revision-hash").to_string();
    assert_ne!(hash1, hash2);
    assert_eq!(label(&pod, "pod-template-generation"), "2");
    let d = api.json(&["get", "ds", "agent"]);
    assert_eq!(
        d["metadata"]["annotations"]["deprecated.daemonset.template.generation"], "2",
        "{d}"
    );
    let history = api.ok(&["rollout", "history", "ds/agent"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let rev1 = api.ok(&["rollout", "history", "ds/agent", "--revision=1"]);
    assert!(rev1.contains(IMAGE), "{rev1}");

    // Undo: the first template comes back as revision 3, with its old hash.
    let out = api.ok(&["rollout", "undo", "ds/agent"]);
    assert!(out.contains("rolled back"), "{out}");
    let pod = api.running_with("agent", IMAGE);
    assert_eq!(label(&pod, "controller-revision-hash"), hash1);
    assert_eq!(label(&pod, "pod-template-generation"), "3");
    let history = api.ok(&["rollout", "history", "ds/agent"]);
    assert!(
        history.contains("\n2 ") && history.contains("\n3 ") && !history.contains("\n1 "),
        "{history}"
    );
    api.ok(&["rollout", "undo", "ds/agent", "--to-revision=2"]);
    let pod = api.running_with("agent", TAGGED);
    assert_eq!(label(&pod, "controller-revision-hash"), hash2);
    let err = api.fails(&["rollout", "undo", "ds/agent", "--to-revision=9"]);
    assert!(err.contains("unable to find specified revision 9"), "{err}");

    // A restart: a new revision, a new pod.
    let before = pod["metadata"]["uid"].clone();
    api.ok(&["rollout", "restart", "ds/agent"]);
    api.until("the restarted pod", |a| {
        let pods = a.daemon_pods("agent");
        pods.len() == 1 && pods[0]["metadata"]["uid"] != before
    });
    api.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let s = api.json(&["get", "ds", "agent"])["status"].clone();
    assert_eq!(s["desiredNumberScheduled"], 1, "{s}");
    assert_eq!(s["numberAvailable"], 1, "{s}");
    assert_eq!(s["updatedNumberScheduled"], 1, "{s}");

    api.ok(&["delete", "ds", "agent"]);
    api.until("the daemon pods and revisions gone", |a| {
        a.items(&["get", "pods", "-l", "app=agent"]).is_empty()
            && a.items(&["get", "controllerrevisions"]).is_empty()
    });
}

/// The node selector against the node's labels decides: no pod until `--node-labels` gives
/// the label (skiffd restarted with it), and the pod goes when the selector changes.
#[test]
#[ignore = "needs root"]
fn node_labels_decide_where_a_daemon_runs() {
    require_root();
    let mut api = Api::start_daemons(&[]);
    let f = api.file(
        "edge.yaml",
        &daemon_set("edge", "      nodeSelector:\n        role: edge\n"),
    );
    api.ok(&["apply", "-f", &f]);
    api.until("the DaemonSet observed", |a| {
        a.json(&["get", "ds", "edge"])["status"]["observedGeneration"] == 1
    });
    assert_eq!(
        api.row(&["ds"], "edge")[1..7],
        ["0", "0", "0", "0", "0", "role=edge"]
    );
    assert!(api.daemon_pods("edge").is_empty());

    api.node.stop_daemon();
    api.node.extra_flags(&["--node-labels", "role=edge"]);
    api.node.start_daemon();
    api.running_with("edge", IMAGE);
    assert_eq!(api.row(&["ds"], "edge")[1..3], ["1", "1"]);

    api.ok(&[
        "patch",
        "ds",
        "edge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"role":"core"}}}}}"#,
    ]);
    api.until("the pod gone from the node", |a| {
        a.items(&["get", "pods", "-l", "app=edge"]).is_empty()
    });
    let s = api.json(&["get", "ds", "edge"])["status"].clone();
    assert_eq!(s["desiredNumberScheduled"], 0, "{s}");
    assert_eq!(s["currentNumberScheduled"], 0, "{s}");
}

/// A daemon pod the node keeps failing (here: admission, `OutOfexample.com/dongle`) is
/// deleted and replaced with the controller's backoff (1 s, 2 s, 4 s, ...), each time with a
/// `FailedDaemonPod` warning, never in a tight loop and never two at once.
#[test]
#[ignore = "needs root"]
fn a_failing_daemon_pod_is_replaced_with_backoff() {
    require_root();
    let api = Api::start_daemons(&[]);
    let f = api.file(
        "dongle.yaml",
        &daemon_set("dongle", "").replace(
            "command: [sh, -c, 'sleep 3600']",
            "command: [sh, -c, 'sleep 3600']\n        resources:\n          limits:\n            example.com/dongle: 1",
        ),
    );
    api.ok(&["apply", "-f", &f]);
    let mut most = 0;
    let mut times: Vec<jiff::Timestamp> = Vec::new();
    api.until_within(60, "four FailedDaemonPod events", |a| {
        most = most.max(a.daemon_pods("dongle").len());
        times = a
            .items(&[
                "get",
                "events",
                "--field-selector",
                "reason=FailedDaemonPod",
            ])
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Found failed daemon pod default/dongle-"))
            })
            .filter_map(|e| e["lastTimestamp"].as_str()?.parse().ok())
            .collect();
        times.len() >= 4
    });
    times.sort();
    // 1 s + 2 s + 4 s between the first and the fourth, less a second of rounding each way.
    let spread = times[3].duration_since(times[0]).as_secs();
    assert!(
        spread >= 5,
        "failed pods replaced without backoff: {times:?}"
    );
    assert!(most <= 1, "{most} daemon pods at once on one node");
    let p = &api.daemon_pods("dongle");
    assert!(p.len() <= 1, "{p:?}");
}

/// Bad DaemonSets get the apiserver's own messages and nothing is made of them.
#[test]
#[ignore = "needs root"]
fn bad_daemonsets_are_refused_with_the_apiservers_messages() {
    require_root();
    let api = Api::start_daemons(&[]);
    let cases: &[(&str, String, &str)] = &[
        (
            "selector",
            daemon_set("sel", "").replace("      app: sel\n    spec", "      app: other\n    spec"),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`",
        ),
        (
            "restart",
            daemon_set("restart", "      restartPolicy: Never\n"),
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        ),
        (
            "zeros",
            daemon_set("zeros", "").replace(
                "spec:\n  selector",
                "spec:\n  updateStrategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 0}\n  selector",
            ),
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
        ),
    ];
    for (file, text, want) in cases {
        let f = api.file(&format!("{file}.yaml"), text);
        let err = api.fails(&["apply", "-f", &f]);
        assert!(err.contains("is invalid"), "{err}");
        assert!(err.contains(want), "{file}: {err}");
    }
    assert!(api.items(&["get", "ds"]).is_empty());
    // The selector is immutable.
    let f = api.file("good.yaml", &daemon_set("good", ""));
    api.ok(&["apply", "-f", &f]);
    let err = api.fails(&[
        "patch",
        "ds",
        "good",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"good","x":"y"}},"template":{"metadata":{"labels":{"x":"y"}}}}}"#,
    ]);
    assert!(err.contains("spec.selector: Invalid value"), "{err}");
    assert!(err.contains("field is immutable"), "{err}");
    api.running_with("good", IMAGE);
}

/// A DaemonSet in the manifest directory runs without kubectl, refuses API deletes naming
/// its file, and takes its pods with it when its file goes.
#[test]
#[ignore = "needs root"]
fn a_daemonset_from_the_manifest_directory() {
    require_root();
    let api = Api::start_daemons(&[]);
    api.node
        .write_manifest("daemon.yaml", &daemon_set("from-file", ""));
    let pod = api.running_with("from-file", IMAGE);
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    api.ok(&["rollout", "status", "ds/from-file", "--timeout=60s"]);
    let err = api.fails(&["delete", "ds", "from-file"]);
    assert!(err.contains("daemon.yaml"), "{err}");
    api.node.remove_manifest("daemon.yaml");
    api.until("the manifest DaemonSet and its pods gone", |a| {
        a.items(&["get", "ds"]).is_empty()
            && a.items(&["get", "pods", "-l", "app=from-file"]).is_empty()
    });
}

/// The HPA resource at autoscaling/v1. (kubectl 1.33 resolves the short name with a version,
/// `hpa.v1.autoscaling`, to the preferred version: the full name keeps v1.)
const V1_HPA: &str = "horizontalpodautoscalers.v1.autoscaling";

/// An autoscaling/v1 HorizontalPodAutoscaler: created at v1 (`targetCPUUtilizationPercentage`),
/// read at v1 and v2 (still the preferred version), patched and re-applied at v1 without
/// losing the v2-only `behavior`, watched at v1, its conditions in the v1 annotation, deleted.
#[test]
#[ignore = "needs root"]
fn an_autoscaling_v1_hpa_round_trips() {
    require_root();
    let api = Api::start_daemons(&[]);
    let v1 = |max: u32| {
        format!(
            "apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
  minReplicas: 1
  maxReplicas: {max}
  targetCPUUtilizationPercentage: 50
"
        )
    };
    let f = api.file("hpa.yaml", &v1(3));
    api.ok(&["create", "-f", &f]);
    let one = api.json(&["get", V1_HPA, "web"]);
    assert_eq!(one["apiVersion"], "autoscaling/v1", "{one}");
    assert_eq!(one["spec"]["targetCPUUtilizationPercentage"], 50, "{one}");
    assert!(one["spec"]["metrics"].is_null(), "{one}");
    let two = api.json(&["get", "hpa", "web"]);
    assert_eq!(two["apiVersion"], "autoscaling/v2", "{two}");
    let metric = &two["spec"]["metrics"][0]["resource"];
    assert_eq!(metric["name"], "cpu");
    assert_eq!(metric["target"]["averageUtilization"], 50, "{two}");
    let row = api.row(&[V1_HPA], "web");
    assert_eq!(row[1], "Deployment/web", "{row:?}");

    // A v2-only field survives v1 writes.
    api.ok(&[
        "patch",
        "hpa",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":60}}}}"#,
    ]);
    api.ok(&[
        "patch",
        V1_HPA,
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#,
    ]);
    let f = api.file("hpa.yaml", &v1(5));
    api.ok(&["apply", "-f", &f]);
    let two = api.json(&["get", "hpa", "web"]);
    assert_eq!(two["spec"]["maxReplicas"], 5, "{two}");
    assert_eq!(
        two["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50,
        "{two}"
    );
    assert_eq!(
        two["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 60,
        "{two}"
    );

    // The controller's conditions (the target is missing) show in the v1 annotation.
    api.until("the conditions in the v1 annotation", |a| {
        let one = a.json(&["get", V1_HPA, "web"]);
        one["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/conditions"]
            .as_str()
            .is_some_and(|c| c.contains("AbleToScale"))
    });

    // A watch at v1 gets v1 objects.
    let out = api.run(&[
        "get",
        V1_HPA,
        "web",
        "--watch",
        "-o",
        "json",
        "--request-timeout=3s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"targetCPUUtilizationPercentage\": 50"),
        "{text}"
    );
    assert!(!text.contains("\"metrics\""), "{text}");

    api.ok(&["delete", V1_HPA, "web"]);
    api.until("the HPA gone", |a| a.items(&["get", "hpa"]).is_empty());
}
