//! Root tests for the workload controllers (issue 11), driven by the real kubectl against a
//! real skiffd in the test's throwaway netns: the concepts guide's Deployment walkthrough
//! (create, rollout status, get with labels, set image, history, undo to a revision, scale,
//! pause and resume, delete), ReplicaSets and ReplicationControllers keeping their pods, and
//! the same kinds from the manifest directory.

mod common;

use std::collections::BTreeSet;

use common::{IMAGE, require_root};
use serde_json::Value;

use common::kubectl::Kubectl as Api;

/// What these tests ask of kubectl beyond the common calls.
impl Api {
    /// `kubectl rollout status` until it reports success.
    fn rolled_out(&self, what: &str) {
        let out = self.ok(&["rollout", "status", what, "--timeout=120s"]);
        assert!(out.contains("successfully rolled out"), "{out}");
    }

    /// The names of the running pods that match `selector`.
    fn running(&self, selector: &str) -> BTreeSet<String> {
        self.items(&["get", "pods", "-l", selector])
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn replica_sets(&self, selector: &str) -> Vec<Value> {
        self.items(&["get", "rs", "-l", selector])
    }

    /// Waits until no ReplicaSet and no pod matches `selector` (an owner's delete went
    /// through to its dependents).
    fn until_gone(&self, selector: &str) {
        self.until(&format!("no ReplicaSets and pods with {selector}"), |a| {
            a.replica_sets(selector).is_empty()
                && a.items(&["get", "pods", "-l", selector]).is_empty()
        });
    }
}

fn deployment(name: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
  annotations:
    kubernetes.io/change-cause: first version
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        imagePullPolicy: Never
        command: [sleep, '3600']
"
    )
}

fn revision(rs: &Value) -> String {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn hash(rs: &Value) -> String {
    rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The guide's Deployment walkthrough with the real kubectl.
#[test]
#[ignore = "needs root"]
fn deployment_walkthrough_with_kubectl() {
    require_root();
    let api = Api::start();
    let f = api.file("web.yaml", &deployment("web", 3, IMAGE));
    api.ok(&["apply", "-f", &f]);
    api.rolled_out("deployment/web");

    // get deployments / rs / pods --show-labels as in the guide.
    let table = api.ok(&["get", "deployments"]);
    let line = table.lines().find(|l| l.starts_with("web ")).expect(&table);
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[1..4], ["3/3", "3", "3"], "{table}");
    let sets = api.replica_sets("app=web");
    assert_eq!(sets.len(), 1, "{sets:?}");
    let first = &sets[0];
    let h1 = hash(first);
    assert_eq!(first["metadata"]["name"], format!("web-{h1}"));
    assert_eq!(revision(first), "1");
    assert_eq!(
        first["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    assert_eq!(first["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        first["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "first version"
    );
    let rs_table = api.ok(&["get", "rs"]);
    assert!(
        rs_table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..4]
                == [format!("web-{h1}").as_str(), "3", "3", "3"]),
        "{rs_table}"
    );
    let labels = api.ok(&["get", "pods", "--show-labels"]);
    let pods: Vec<&str> = labels
        .lines()
        .filter(|l| l.starts_with(&format!("web-{h1}-")))
        .collect();
    assert_eq!(pods.len(), 3, "{labels}");
    for p in &pods {
        assert!(
            p.contains(&format!("app=web,pod-template-hash={h1}")),
            "{labels}"
        );
        // <rs>-<5 characters of the apiserver's alphabet>
        let name = p.split_whitespace().next().unwrap();
        let suffix = name.rsplit('-').next().unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
    }
    let pod = &api.items(&["get", "pods", "-l", "app=web"])[0];
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["name"],
        format!("web-{h1}")
    );

    // A deleted pod is replaced.
    let victim = pods[0].split_whitespace().next().unwrap().to_string();
    api.ok(&["delete", "pod", &victim, "--wait=false"]);
    api.until("a replacement pod", |a| {
        let r = a.running("app=web");
        r.len() == 3 && !r.contains(&victim)
    });

    // set image: a new ReplicaSet, revision 2, the old one scaled to 0.
    api.ok(&["set", "image", "deployment/web", "main=skiff.test/busybox"]);
    api.ok(&[
        "annotate",
        "deployment/web",
        "kubernetes.io/change-cause=second version",
        "--overwrite",
    ]);
    api.rolled_out("deployment/web");
    let sets = api.replica_sets("app=web");
    assert_eq!(sets.len(), 2, "{sets:?}");
    let new = sets.iter().find(|s| hash(s) != h1).unwrap();
    let old = sets.iter().find(|s| hash(s) == h1).unwrap();
    let h2 = hash(new);
    assert_eq!(revision(new), "2");
    assert_eq!(new["spec"]["replicas"], 3);
    assert_eq!(old["spec"]["replicas"], 0);
    api.until("only new pods", |a| {
        let r = a.running("app=web");
        r.len() == 3 && r.iter().all(|n| n.starts_with(&format!("web-{h2}-")))
    });
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains(&format!("Scaled up replica set web-{h2} from 0 to")),
        "{events}"
    );
    assert!(
        events.contains(&format!("Scaled down replica set web-{h1} from")),
        "{events}"
    );

    // History and undo to revision 1: the first ReplicaSet comes back as revision 3.
    let history = api.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("1         first version"), "{history}");
    api.ok(&["rollout", "undo", "deployment/web", "--to-revision=1"]);
    api.rolled_out("deployment/web");
    let sets = api.replica_sets("app=web");
    let back = sets.iter().find(|s| hash(s) == h1).unwrap();
    assert_eq!(revision(back), "3", "{sets:?}");
    assert_eq!(back["spec"]["replicas"], 3);
    let history = api.ok(&["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revs, ["2", "3"], "{history}");
    let d = api.json(&["get", "deployment", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );

    // scale
    api.ok(&["scale", "deployment/web", "--replicas=5"]);
    api.rolled_out("deployment/web");
    api.until("5 pods", |a| a.running("app=web").len() == 5);
    let d = api.json(&["get", "deployment", "web"]);
    assert_eq!(d["status"]["availableReplicas"], 5, "{d}");
    let conds = d["status"]["conditions"].as_array().unwrap();
    let progressing = conds.iter().find(|c| c["type"] == "Progressing").unwrap();
    assert_eq!(progressing["reason"], "NewReplicaSetAvailable", "{d}");
    let available = conds.iter().find(|c| c["type"] == "Available").unwrap();
    assert_eq!(available["status"], "True", "{d}");

    // pause: a template change makes no new ReplicaSet until resume.
    api.ok(&["rollout", "pause", "deployment/web"]);
    api.ok(&["set", "env", "deployment/web", "GREETING=hello"]);
    let d = api.json(&["get", "deployment", "web"]);
    let generation = d["metadata"]["generation"].as_i64().unwrap();
    api.until("the paused deployment observed", |a| {
        let d = a.json(&["get", "deployment", "web"]);
        d["status"]["observedGeneration"].as_i64() == Some(generation)
    });
    assert_eq!(api.replica_sets("app=web").len(), 2);
    api.ok(&["rollout", "resume", "deployment/web"]);
    api.rolled_out("deployment/web");
    let sets = api.replica_sets("app=web");
    assert_eq!(sets.len(), 3, "{sets:?}");
    api.until("pods with the new environment", |a| {
        let running = a.running("app=web");
        running.len() == 5
            && running.iter().all(|n| {
                a.json(&["get", "pod", n])["spec"]["containers"][0]["env"][0]["name"] == "GREETING"
            })
    });

    // expose, describe and rollout restart.
    // The answer to the create carries the cluster IP, as the apiserver allocates it before
    // it answers, and the Service is there for the next request.
    let exposed = api.json(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    let ip = exposed["spec"]["clusterIP"].as_str().unwrap_or_default();
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "no cluster IP in the answer to expose: {exposed}"
    );
    let svc = api.json(&["get", "service", "web"]);
    assert_eq!(svc["spec"]["clusterIP"], ip, "{svc}");
    assert_eq!(
        svc["spec"]["selector"],
        serde_json::json!({"app": "web"}),
        "{svc}"
    );
    api.until("the Service's 5 endpoints", |a| {
        let ep = a.json(&["get", "endpoints", "web"]);
        ep["subsets"][0]["addresses"]
            .as_array()
            .is_some_and(|x| x.len() == 5)
    });
    let described = api.ok(&["describe", "deployment", "web"]);
    assert!(described.contains("ScalingReplicaSet"), "{described}");
    assert!(described.contains("NewReplicaSetAvailable"), "{described}");
    api.ok(&["rollout", "restart", "deployment/web"]);
    api.rolled_out("deployment/web");
    assert_eq!(api.replica_sets("app=web").len(), 4);

    // `kubectl create deployment` (a protobuf body): its ReplicaSet and pods are made.
    api.ok(&[
        "create",
        "deployment",
        "hello",
        &format!("--image={IMAGE}"),
        "--replicas=2",
        "--port=8080",
        "--",
        "sleep",
        "3600",
    ]);
    api.until("hello's ReplicaSet with 2 pods", |a| {
        let sets = a.replica_sets("app=hello");
        sets.len() == 1
            && sets[0]["spec"]["replicas"] == 2
            && a.items(&["get", "pods", "-l", "app=hello"]).len() == 2
    });
    let d = api.json(&["get", "deployment", "hello"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], serde_json::json!(["sleep", "3600"]), "{d}");
    assert_eq!(c["ports"][0]["containerPort"], 8080, "{d}");
    api.ok(&["delete", "deployment", "hello"]);

    // Bad input gets the apiserver's messages and changes nothing.
    let bad = api.file(
        "bad.yaml",
        &deployment("bad", 1, IMAGE)
            .replace("      app: bad\n  template", "      app: other\n  template"),
    );
    let err = api.fails(&["apply", "-f", &bad]);
    assert!(
        err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let err = api.fails(&["scale", "deployment/web", "--replicas=-1"]);
    assert!(err.contains("replicas"), "{err}");

    // delete: the ReplicaSets and pods go with it.
    api.ok(&["delete", "deployment", "web"]);
    api.until_gone("app=web");
}

/// A ReplicaSet adopts a matching orphan pod and keeps its count; an orphaning delete leaves
/// the pods running without an owner; a ReplicationController does the same job.
#[test]
#[ignore = "needs root"]
fn replica_sets_and_replication_controllers_keep_their_pods() {
    require_root();
    let api = Api::start();
    let orphan = api.file(
        "orphan.yaml",
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: orphan
  labels:
    tier: cache
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, '3600']
"
        ),
    );
    api.ok(&["apply", "-f", &orphan]);
    let rs = api.file(
        "rs.yaml",
        &format!(
            "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: cache
spec:
  replicas: 2
  selector:
    matchExpressions:
    - {{key: tier, operator: In, values: [cache]}}
  template:
    metadata:
      labels:
        tier: cache
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sleep, '3600']
"
        ),
    );
    api.ok(&["apply", "-f", &rs]);
    api.until("two cache pods", |a| a.running("tier=cache").len() == 2);
    let o = api.json(&["get", "pod", "orphan"]);
    assert_eq!(o["metadata"]["ownerReferences"][0]["name"], "cache", "{o}");
    api.until("the ReplicaSet's status", |a| {
        let r = a.json(&["get", "rs", "cache"]);
        r["status"]["readyReplicas"] == 2 && r["status"]["fullyLabeledReplicas"] == 2
    });
    api.ok(&["scale", "rs/cache", "--replicas=1"]);
    api.until("one cache pod", |a| a.running("tier=cache").len() == 1);
    api.ok(&["delete", "rs", "cache", "--cascade=orphan"]);
    let left = api.running("tier=cache");
    assert_eq!(left.len(), 1);
    let p = api.json(&["get", "pod", left.iter().next().unwrap()]);
    assert!(p["metadata"]["ownerReferences"].is_null(), "{p}");

    let rc = api.file(
        "rc.yaml",
        &format!(
            "apiVersion: v1
kind: ReplicationController
metadata:
  name: frontend
spec:
  replicas: 2
  template:
    metadata:
      labels:
        app: frontend
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sleep, '3600']
"
        ),
    );
    api.ok(&["apply", "-f", &rc]);
    api.until("two frontend pods", |a| {
        a.running("app=frontend").len() == 2
    });
    let table = api.ok(&["get", "rc", "frontend"]);
    assert!(table.contains("frontend   2         2"), "{table}");
    api.ok(&["delete", "rc", "frontend"]);
    api.until("frontend pods gone", |a| {
        a.items(&["get", "pods", "-l", "app=frontend"]).is_empty()
    });
}

/// A Deployment in the manifest directory runs without kubectl, rolls out when its file is
/// edited, refuses API writes naming its file, and takes its pods with it when removed.
#[test]
#[ignore = "needs root"]
fn a_deployment_from_the_manifest_directory() {
    require_root();
    let api = Api::start();
    api.node
        .write_manifest("web.yaml", &deployment("site", 2, IMAGE));
    api.rolled_out("deployment/site");
    assert_eq!(api.running("app=site").len(), 2);
    let err = api.fails(&["scale", "deployment/site", "--replicas=4"]);
    assert!(err.contains("web.yaml"), "{err}");
    api.node.write_manifest(
        "web.yaml",
        &deployment("site", 3, IMAGE).replace("[sleep, '3600']", "[sleep, '3601']"),
    );
    api.until("the edit rolled out", |a| {
        let d = a.json(&["get", "deployment", "site"]);
        d["metadata"]["generation"] == 2 && d["status"]["observedGeneration"] == 2
    });
    api.rolled_out("deployment/site");
    let sets = api.replica_sets("app=site");
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert_eq!(api.running("app=site").len(), 3);
    api.node.remove_manifest("web.yaml");
    api.until_gone("app=site");
}

/// `kubectl autoscale`: a CPU-burning Deployment is scaled up to the HPA's maximum from the
/// cgroup usage skiffd measures, `kubectl get hpa` shows the targets, and once the pods go
/// idle (and the scale-down window is set to 0) it comes back down to the minimum.
#[test]
#[ignore = "needs root"]
fn autoscale_follows_cpu_usage() {
    require_root();
    let api = Api::start_with(&["--metric-resolution", "2s"]);
    let burn = deployment("burn", 1, IMAGE)
        .replace(
            "[sleep, '3600']",
            "[sh, -c, 'while :; do :; done']\n        resources:\n          requests: {cpu: 100m}\n          limits: {cpu: 200m}",
        );
    let f = api.file("burn.yaml", &burn);
    api.ok(&["apply", "-f", &f]);
    api.rolled_out("deployment/burn");
    api.ok(&[
        "autoscale",
        "deployment",
        "burn",
        "--min=1",
        "--max=3",
        "--cpu-percent=50",
    ]);
    api.until("the HPA scaled the deployment to 3", |a| {
        a.json(&["get", "deployment", "burn"])["spec"]["replicas"] == 3
    });
    let table = api.ok(&["get", "hpa", "burn"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("burn "))
        .expect(&table);
    assert!(line.contains("Deployment/burn"), "{table}");
    assert!(line.contains("/50%"), "{table}");
    let h = api.json(&["get", "hpa", "burn"]);
    let conds = h["status"]["conditions"].as_array().unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "ScalingActive" && c["status"] == "True"),
        "{h}"
    );
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=burn",
    ]);
    assert!(events.contains("SuccessfulRescale"), "{events}");

    // Idle pods, no scale-down window: back to the minimum.
    api.ok(&[
        "patch",
        "hpa",
        "burn",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ]);
    api.ok(&[
        "patch",
        "deployment",
        "burn",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command","value":["sleep","3600"]}]"#,
    ]);
    api.until("the HPA scaled back to 1", |a| {
        a.json(&["get", "deployment", "burn"])["spec"]["replicas"] == 1
    });
    // A missing target is reported, not fatal.
    let missing = api.file(
        "missing.yaml",
        "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: nothing
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: nothing}
  maxReplicas: 2
",
    );
    api.ok(&["apply", "-f", &missing]);
    api.until("the missing target reported", |a| {
        let h = a.json(&["get", "hpa", "nothing"]);
        h["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["reason"] == "FailedGetScale"))
    });
}

/// skiffd SIGKILLed in the middle of a rollout: after the restart the rollout finishes, the
/// pods never pass `replicas + maxSurge`, and no revision is lost.
#[test]
#[ignore = "needs root"]
fn a_crash_mid_rollout_neither_duplicates_pods_nor_loses_history() {
    require_root();
    let mut api = Api::start();
    let f = api.file("web.yaml", &deployment("web", 4, IMAGE));
    api.ok(&["apply", "-f", &f]);
    api.rolled_out("deployment/web");
    // Slow the new pods down (a readiness delay) so the crash lands mid-rollout.
    api.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/template/spec/containers/0/readinessProbe","value":{"exec":{"command":["true"]},"initialDelaySeconds":2,"periodSeconds":1}}]"#,
    ]);
    api.until("a second ReplicaSet", |a| {
        a.replica_sets("app=web").len() == 2
    });
    api.node.kill_daemon();
    api.node.start_daemon();
    // maxSurge 25 % of 4 = 1: never more than 5 pods that are not terminating.
    let active = |a: &Api| {
        a.items(&["get", "pods", "-l", "app=web"])
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count()
    };
    let mut most = 0;
    api.until("the rollout finished after the restart", |a| {
        most = most.max(active(a));
        let d = a.json(&["get", "deployment", "web"]);
        d["status"]["updatedReplicas"] == 4
            && d["status"]["availableReplicas"] == 4
            && d["status"]["replicas"] == 4
    });
    assert!(most <= 5, "{most} pods at once");
    let history = api.ok(&["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revs, ["1", "2"], "{history}");
    assert_eq!(api.running("app=web").len(), 4);
}
