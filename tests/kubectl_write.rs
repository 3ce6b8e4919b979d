//! Root tests for writes through the API (issue 10), driven by the real kubectl against a
//! real skiffd in the test's throwaway netns: objects made with kubectl run, feed pods and
//! the proxy, survive a crash of skiffd, and leave the manifest directory's objects alone.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{IMAGE, require_root};
use serde_json::Value;

use common::kubectl::Kubectl as Api;

/// What these tests ask of kubectl beyond the common calls.
impl Api {
    fn object_file(&self, rel: &str) -> PathBuf {
        self.node.root.join("objects").join(rel)
    }
}

fn pod(name: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {script:?}]\n"
    )
}

fn labels(api: &Api, what: &str) -> Value {
    api.json(&["get", what])["metadata"]["labels"].clone()
}

/// A pod made with `kubectl apply` runs, is changed by label, annotate, the three patch
/// types, edit, replace and server-side apply (conflicts and immutable fields refused as by
/// the apiserver), and `kubectl delete` removes it; `kubectl run` makes a running pod too.
#[test]
#[ignore = "needs root"]
fn kubectl_writes_a_pod_that_runs_and_is_removed() {
    require_root();
    let api = Api::start();
    let f = api.file("w1.yaml", &pod("w1", "sleep 3600"));
    assert!(api.ok(&["apply", "-f", &f]).contains("pod/w1 created"));
    let running = api.node.wait_running("w1");
    assert_eq!(
        running["metadata"]["annotations"]["skiff.dev/source"],
        "api"
    );
    let uid = running["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(api.object_file("pods/default/w1.json").exists());
    assert!(api.ok(&["apply", "-f", &f]).contains("unchanged"));

    api.ok(&["label", "pod", "w1", "tier=web"]);
    api.ok(&["annotate", "pod", "w1", "note=hi"]);
    api.ok(&[
        "patch",
        "pod",
        "w1",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merge":"1"}}}"#,
    ]);
    api.ok(&[
        "patch",
        "pod",
        "w1",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/json","value":"2"}]"#,
    ]);
    api.ok(&[
        "patch",
        "pod",
        "w1",
        "--type=strategic",
        "-p",
        r#"{"metadata":{"labels":{"strategic":"3"}}}"#,
    ]);
    let l = labels(&api, "pod/w1");
    for (k, v) in [
        ("app", "w1"),
        ("tier", "web"),
        ("merge", "1"),
        ("json", "2"),
        ("strategic", "3"),
    ] {
        assert_eq!(l[k], v, "{l}");
    }
    let p = api.json(&["get", "pod", "w1"]);
    assert_eq!(p["metadata"]["annotations"]["note"], "hi");

    // Only images and a few fields of a running pod may change.
    let err = api.fails(&[
        "patch",
        "pod",
        "w1",
        "-p",
        r#"{"spec":{"containers":[{"name":"main","command":["sh"]}]}}"#,
    ]);
    assert!(
        err.contains("is invalid") && err.contains("pod updates may not change fields"),
        "{err}"
    );

    // kubectl edit with a sed script as the editor.
    let editor = api.file(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/^    tier: web$/    tier: edited/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    api.ok_env(&["edit", "pod", "w1"], &[("EDITOR", &editor)]);
    assert_eq!(labels(&api, "pod/w1")["tier"], "edited");

    // replace: with the current version it goes through; with an old one it conflicts.
    let mut obj = api.json(&["get", "pod", "w1"]);
    obj["metadata"]["labels"]["replaced"] = "yes".into();
    let stale = api.file("stale.json", &obj.to_string());
    let mut fresh = obj.clone();
    api.ok(&["label", "pod", "w1", "moved=on"]);
    let err = api.fails(&["replace", "-f", &stale]);
    assert!(err.contains("the object has been modified"), "{err}");
    fresh["metadata"]["resourceVersion"] =
        api.json(&["get", "pod", "w1"])["metadata"]["resourceVersion"].clone();
    let fresh = api.file("fresh.json", &fresh.to_string());
    api.ok(&["replace", "-f", &fresh]);
    assert_eq!(labels(&api, "pod/w1")["replaced"], "yes");

    // Server-side apply records its field manager.
    let ssa = api.file(
        "ssa.yaml",
        &pod("w1", "sleep 3600").replace("app: w1", "app: w1\n    ssa: applied"),
    );
    api.ok(&["apply", "--server-side", "--force-conflicts", "-f", &ssa]);
    // kubectl hides managedFields unless asked.
    let p = api.json(&["get", "pod", "w1", "--show-managed-fields"]);
    assert_eq!(p["metadata"]["labels"]["ssa"], "applied");
    let managers: Vec<&str> = p["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["operation"] == "Apply")
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");
    // Still the same pod, never restarted by the metadata changes.
    let p = api.node.wait_running("w1");
    assert_eq!(p["metadata"]["uid"], uid.as_str());
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);

    // kubectl run sends JSON; the pod runs.
    api.ok(&[
        "run",
        "web",
        &format!("--image={IMAGE}"),
        "--image-pull-policy=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    api.node.wait_running("web");

    assert!(api.ok(&["delete", "pod", "w1", "web"]).contains("deleted"));
    api.node.wait_gone("w1");
    api.node.wait_gone("web");
    assert!(!api.exists(&["get", "pod", "w1"]));
    assert!(!api.object_file("pods/default/w1.json").exists());
}

/// `kubectl create configmap` / `create secret` (protobuf bodies) make objects a pod then
/// consumes as environment and volume, exactly like manifest ones.
#[test]
#[ignore = "needs root"]
fn configmap_and_secret_made_with_kubectl_feed_a_pod() {
    require_root();
    let api = Api::start();
    let consumer = format!(
        "{}    env:\n    - name: GREETING\n      valueFrom:\n        configMapKeyRef: {{name: cfg, key: greeting}}\n    volumeMounts:\n    - {{name: s, mountPath: /sec}}\n  volumes:\n  - name: s\n    secret: {{secretName: sec}}\n",
        pod(
            "consumer",
            "echo \"$GREETING $(cat /sec/pass)\"; sleep 3600"
        )
    );
    let f = api.file("consumer.yaml", &consumer);
    // The pod comes first and waits for what it consumes.
    api.ok(&["create", "-f", &f]);
    api.node.wait_for(
        "the pod to wait for its config",
        Duration::from_secs(20),
        || {
            let p = api.json(&["get", "pod", "consumer"]);
            p["status"]["containerStatuses"][0]["state"]["waiting"]
                .is_object()
                .then_some(())
        },
    );
    api.ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
    ]);
    api.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=pass=s3cret",
    ]);
    let cm = api.json(&["get", "configmap", "cfg"]);
    assert_eq!(cm["data"]["greeting"], "hello");
    assert_eq!(cm["metadata"]["annotations"]["skiff.dev/source"], "api");
    assert!(api.object_file("configmaps/default/cfg.json").exists());
    api.node.wait_running("consumer");
    api.node
        .wait_for("the pod's output", Duration::from_secs(20), || {
            let out = api.run(&["logs", "consumer"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("hello s3cret")
                .then_some(())
        });
    // ConfigMaps are watched from a version, as pods are.
    let rv = api.json(&["get", "configmap", "cfg"])["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(&["label", "configmap", "cfg", "watched=yes"]);
    let out = api.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ]);
    assert!(
        out.contains(r#""type":"MODIFIED""#) && out.contains(r#""watched":"yes""#),
        "{out}"
    );
    api.ok(&["delete", "configmap", "cfg"]);
    assert!(!api.exists(&["get", "configmap", "cfg"]));
    assert!(!api.object_file("configmaps/default/cfg.json").exists());
}

/// A Service made through the API gets a cluster IP and its proxy rules; the IP is
/// immutable; `kubectl create service` works too.
#[test]
#[ignore = "needs root"]
fn service_made_with_kubectl_gets_a_cluster_ip_and_rules() {
    require_root();
    let api = Api::start();
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  selector:\n    app: front\n  ports:\n  - port: 80\n    targetPort: 8080\n";
    let f = api.file("svc.yaml", svc);
    api.ok(&["apply", "-f", &f]);
    let ip = api
        .node
        .wait_for("a cluster IP", Duration::from_secs(20), || {
            let v = api.json(&["get", "service", "front"]);
            v["spec"]["clusterIP"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from)
        });
    api.node
        .wait_for("the service's rules", Duration::from_secs(30), || {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", api.node.host.path().display()))
                .arg("iptables-save")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("{ip}/32"))
                .then_some(())
        });
    let err = api.fails(&[
        "patch",
        "service",
        "front",
        "--type=merge",
        "-p",
        r#"{"spec":{"clusterIP":"10.96.99.99","clusterIPs":["10.96.99.99"]}}"#,
    ]);
    assert!(err.contains("field is immutable"), "{err}");
    // A label change keeps the IP.
    api.ok(&["label", "service", "front", "team=a"]);
    assert_eq!(
        api.json(&["get", "service", "front"])["spec"]["clusterIP"],
        ip.as_str()
    );
    api.ok(&["create", "service", "clusterip", "back", "--tcp=80:8080"]);
    api.node
        .wait_for("back's cluster IP", Duration::from_secs(20), || {
            let v = api.json(&["get", "service", "back"]);
            v["spec"]["clusterIP"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|_| ())
        });
    api.ok(&["delete", "service", "front"]);
    assert!(!api.exists(&["get", "service", "front"]));
}

/// SIGKILL of skiffd: after the restart the API-made objects are there with the same UIDs
/// and versions, the pod keeps running, new versions are ahead of every old one, and a
/// corrupt object file is skipped with a Warning event.
#[test]
#[ignore = "needs root"]
fn api_objects_survive_a_crash_of_skiffd() {
    require_root();
    let mut api = Api::start();
    api.ok(&["create", "namespace", "team"]);
    api.ok(&[
        "create",
        "configmap",
        "keep",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    let f = api.file("p.yaml", &pod("survivor", "sleep 3600"));
    api.ok(&["apply", "-f", &f]);
    let before = api.node.wait_running("survivor");
    let cm_before = api.json(&["get", "configmap", "keep", "-n", "team"]);
    let ns_before = api.json(&["get", "namespace", "team"]);
    let rv_of = |v: &Value| -> u64 {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let list_rv = rv_of(&before).max(rv_of(&cm_before)).max(rv_of(&ns_before));
    std::fs::create_dir_all(api.object_file("configmaps/default")).unwrap();
    std::fs::write(
        api.object_file("configmaps/default/junk.json"),
        "{\"metadata\": {\"name\": ",
    )
    .unwrap();

    api.node.kill_daemon();
    api.node.start_daemon();

    let cm = api.json(&["get", "configmap", "keep", "-n", "team"]);
    assert_eq!(cm["metadata"]["uid"], cm_before["metadata"]["uid"]);
    assert_eq!(
        cm["metadata"]["resourceVersion"],
        cm_before["metadata"]["resourceVersion"]
    );
    assert_eq!(
        api.json(&["get", "namespace", "team"])["metadata"]["uid"],
        ns_before["metadata"]["uid"]
    );
    let after = api.node.wait_running("survivor");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"],
        "the pod's container was adopted, not restarted"
    );
    api.ok(&["label", "configmap", "keep", "-n", "team", "after=crash"]);
    let rv = rv_of(&api.json(&["get", "configmap", "keep", "-n", "team"]));
    assert!(rv > list_rv, "new version {rv} not ahead of {list_rv}");
    let events = api.json(&["get", "events", "-A"]);
    let corrupt = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "CorruptObject")
        .unwrap_or_else(|| panic!("no CorruptObject event: {events}"));
    assert_eq!(corrupt["type"], "Warning");
    assert!(
        corrupt["message"].as_str().unwrap().contains("junk.json"),
        "{corrupt}"
    );
    assert!(api.node.log_tail(400).contains("junk.json"));
}

/// An object from the manifest directory carries its source and refuses API writes with a
/// 403 naming its file.
#[test]
#[ignore = "needs root"]
fn writes_to_manifest_objects_are_refused_naming_the_file() {
    require_root();
    let api = Api::start();
    let text = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fromfile\ndata:\n  a: b\n",
        pod("static", "sleep 3600")
    );
    api.node.write_manifest("static.yaml", &text);
    let p = api.node.wait_running("static");
    let file = api.node.manifests.join("static.yaml").display().to_string();
    assert_eq!(
        p["metadata"]["annotations"]["skiff.dev/source"],
        format!("manifest:{file}")
    );
    for args in [
        vec!["label", "pod", "static", "x=1"],
        vec!["delete", "pod", "static"],
        vec!["label", "configmap", "fromfile", "x=1"],
        vec!["delete", "configmap", "fromfile"],
    ] {
        let err = api.fails(&args);
        assert!(
            err.contains("Forbidden") && err.contains(&file),
            "{args:?}: {err}"
        );
    }
    // A create of the same name is refused as well.
    let f = api.file("dup.yaml", &pod("static", "sleep 1"));
    assert!(api.fails(&["create", "-f", &f]).contains("already exists"));
    assert_eq!(
        api.node.wait_running("static")["metadata"]["uid"],
        p["metadata"]["uid"]
    );
}

/// `--dry-run=server` goes through validation but stores and runs nothing; invalid objects
/// get the apiserver's 422 and unknown fields its strict-decoding 400.
#[test]
#[ignore = "needs root"]
fn dry_run_creates_nothing_and_validation_answers_as_the_apiserver() {
    require_root();
    let api = Api::start();
    let f = api.file("dry.yaml", &pod("dry", "sleep 3600"));
    assert!(
        api.ok(&["create", "--dry-run=server", "-f", &f])
            .contains("server dry run")
    );
    api.ok(&["apply", "--server-side", "--dry-run=server", "-f", &f]);
    api.ok(&[
        "create",
        "configmap",
        "dry",
        "--from-literal=a=b",
        "--dry-run=server",
    ]);
    assert!(!api.exists(&["get", "pod", "dry"]));
    assert!(!api.exists(&["get", "configmap", "dry"]));
    assert!(!api.object_file("pods/default/dry.json").exists());
    assert!(!api.object_file("configmaps/default/dry.json").exists());

    let bad = api.file(
        "bad.yaml",
        &pod("bad", "true").replace("  containers:", "  restartPolicy: Sometimes\n  containers:"),
    );
    let err = api.fails(&["create", "-f", &bad]);
    assert!(
        err.contains("The Pod \"bad\" is invalid: spec.restartPolicy: Unsupported value"),
        "{err}"
    );
    let unknown = api.file(
        "unknown.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: u\nbogus: 1\n",
    );
    let err = api.fails(&["create", "-f", &unknown]);
    assert!(err.contains("unknown field \"bogus\""), "{err}");
    let warned = api.ok(&["create", "--validate=warn", "-f", &unknown]);
    assert!(warned.contains("Warning: unknown field"), "{warned}");
}

/// Deleting a namespace deletes what was made in it through the API; manifest objects in it
/// stay and are reported.
#[test]
#[ignore = "needs root"]
fn deleting_a_namespace_deletes_its_objects() {
    require_root();
    let api = Api::start();
    api.ok(&["create", "namespace", "team"]);
    api.ok(&[
        "create",
        "configmap",
        "c",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    let f = api.file(
        "t.yaml",
        &pod("tp", "sleep 3600").replace("  name: tp\n", "  name: tp\n  namespace: team\n"),
    );
    api.ok(&["apply", "-f", &f]);
    api.node
        .wait_for("pod team/tp running", Duration::from_secs(30), || {
            let p = api.json(&["get", "pod", "tp", "-n", "team"]);
            (p["status"]["phase"] == "Running").then_some(())
        });
    api.node.write_manifest(
        "team.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: static\n  namespace: team\ndata:\n  a: b\n",
    );
    api.node
        .wait_for("the manifest configmap", Duration::from_secs(20), || {
            api.exists(&["get", "configmap", "static", "-n", "team"])
                .then_some(())
        });
    // A namespace that does not exist takes no objects.
    assert!(
        api.fails(&["create", "configmap", "x", "-n", "nowhere"])
            .contains("namespaces \"nowhere\" not found")
    );
    assert!(
        api.fails(&["delete", "namespace", "default"])
            .contains("may not be deleted")
    );
    let out = api.ok(&["delete", "namespace", "team", "--wait=false"]);
    assert!(
        out.contains("ConfigMap team/static stays"),
        "manifest object not reported: {out}"
    );
    assert!(!api.exists(&["get", "namespace", "team"]));
    assert!(!api.exists(&["get", "configmap", "c", "-n", "team"]));
    api.node
        .wait_for("pod team/tp removed", Duration::from_secs(40), || {
            (!api.exists(&["get", "pod", "tp", "-n", "team"])).then_some(())
        });
    assert!(api.exists(&["get", "configmap", "static", "-n", "team"]));
    assert!(!api.object_file("configmaps/team/c.json").exists());
    assert!(!api.object_file("namespaces/team.json").exists());
}

/// `kubectl delete --grace-period=N` shortens the pod's own grace period, as on a kubelet:
/// a container that ignores SIGTERM under a 300 s grace period is killed after 2 s.
#[test]
#[ignore = "needs root"]
fn delete_with_a_grace_period_overrides_the_pods_own() {
    require_root();
    let api = Api::start();
    let text = pod("stubborn", "trap '' TERM; while :; do sleep 1; done").replace(
        "terminationGracePeriodSeconds: 1",
        "terminationGracePeriodSeconds: 300",
    );
    let f = api.file("stubborn.yaml", &text);
    api.ok(&["apply", "-f", &f]);
    api.node.wait_running("stubborn");
    let deleted = std::time::Instant::now();
    api.ok(&[
        "delete",
        "pod",
        "stubborn",
        "--grace-period=2",
        "--wait=false",
    ]);
    // Terminating with the requested grace period recorded on the pod.
    // It ignores SIGTERM, so it is still there, terminating, for about 2 s.
    let p = api
        .node
        .pod("stubborn")
        .expect("the pod is still terminating");
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 2, "{p}");
    api.node.wait_gone("stubborn");
    let took = deleted.elapsed();
    assert!(
        took < std::time::Duration::from_secs(120),
        "the pod's own 300 s were used: gone after {took:?}"
    );
}

/// `kubectl set image` on a running pod made through the API: its container is killed and
/// started again with the new image (even with restartPolicy Never), as on a kubelet.
#[test]
#[ignore = "needs root"]
fn an_image_change_restarts_the_container_with_the_new_image() {
    require_root();
    let api = Api::start();
    let f = api.file(
        "never.yaml",
        &pod("changing", "sleep 3600")
            .replace("  containers:", "  restartPolicy: Never\n  containers:"),
    );
    api.ok(&["apply", "-f", &f]);
    api.node.wait_running("changing");
    api.ok(&["set", "image", "pod/changing", "main=skiff.test/busybox"]);
    let p = api.node.wait_for(
        "the container restarted with its new image",
        Duration::from_secs(40),
        || {
            let p = api.node.pod("changing")?;
            let c = &p["status"]["containerStatuses"][0];
            (c["restartCount"] == 1 && c["state"]["running"].is_object()).then_some(p)
        },
    );
    assert_eq!(
        p["status"]["containerStatuses"][0]["image"], "skiff.test/busybox",
        "{p}"
    );
    assert_eq!(p["status"]["phase"], "Running", "{p}");
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=changing",
    ]);
    assert!(events.contains("definition changed"), "{events}");
}

/// An object with a finalizer is only marked when deleted (`deletionTimestamp`, still
/// served), takes no new finalizer, and goes once a client removes the last one, as on the
/// apiserver: for a ConfigMap, a Service, a Deployment and a Pod.
#[test]
#[ignore = "needs root"]
fn finalizers_hold_a_deleted_object_until_removed() {
    require_root();
    let api = Api::start();
    let f = api.file(
        "held.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\ndata:\n  a: b\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\nspec:\n  selector: {app: held}\n  ports: [{port: 80}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: held}}\n  template:\n    metadata: {labels: {app: held}}\n    spec: {containers: [{name: c, image: x}]}\n",
    );
    api.ok(&["apply", "-f", &f]);
    let p = api.file(
        "heldpod.yaml",
        &pod("heldpod", "sleep 3600").replace(
            "  name: heldpod\n",
            "  name: heldpod\n  finalizers: [example.com/hold]\n",
        ),
    );
    api.ok(&["apply", "-f", &p]);
    api.node.wait_running("heldpod");
    for what in [
        "configmap/held",
        "service/held",
        "deployment/held",
        "pod/heldpod",
    ] {
        api.ok(&["delete", what, "--wait=false"]);
        let v = api.json(&["get", what]);
        assert!(
            v["metadata"]["deletionTimestamp"].is_string(),
            "{what} not marked: {v}"
        );
        let err = api.fails(&[
            "patch",
            what,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["example.com/hold","example.com/new"]}}"#,
        ]);
        assert!(
            err.contains("no new finalizers can be added if the object is being deleted"),
            "{what}: {err}"
        );
    }
    // A pod being deleted is stopped although its API object stays.
    api.node
        .wait_for("heldpod stopped", Duration::from_secs(40), || {
            let v = api.json(&["get", "pod", "heldpod"]);
            matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(())
        });
    for what in [
        "configmap/held",
        "service/held",
        "deployment/held",
        "pod/heldpod",
    ] {
        api.ok(&[
            "patch",
            what,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ]);
        api.node
            .wait_for(&format!("{what} gone"), Duration::from_secs(20), || {
                (!api.exists(&["get", what])).then_some(())
            });
    }
}
