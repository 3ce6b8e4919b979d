//! Root integration tests for the rest of the pod spec (issue #3): volumes,
//! ConfigMaps and Secrets, env sources, resources and OOM, security contexts,
//! /etc files, admission, and the manifests under `examples/`.

mod common;

use std::time::Duration;

use common::{IMAGE, Node, pod_yaml, require_root};
use serde_json::Value;

const EXAMPLES: &[(&str, &str)] = &[
    ("configmap.yaml", include_str!("../examples/configmap.yaml")),
    ("secret.yaml", include_str!("../examples/secret.yaml")),
    ("volumes.yaml", include_str!("../examples/volumes.yaml")),
    ("env.yaml", include_str!("../examples/env.yaml")),
    ("security.yaml", include_str!("../examples/security.yaml")),
    ("resources.yaml", include_str!("../examples/resources.yaml")),
    ("oom.yaml", include_str!("../examples/oom.yaml")),
    ("dns.yaml", include_str!("../examples/dns.yaml")),
];

fn example(name: &str) -> &'static str {
    EXAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .expect("example exists")
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no status for container {name} in {pod}"))
}

/// Waits until the pod runs with every container ready; on timeout says why.
fn running(node: &Node, name: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = node.pod(name) {
            let ready = p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|a| a.iter().all(|c| c["ready"] == true));
            if p["status"]["phase"] == "Running" && ready {
                return p;
            }
        }
        if std::time::Instant::now() > deadline {
            let d = node.skiff(&["describe", "pod", name]);
            panic!(
                "pod {name} not Running and ready after 30s:\n{}{}\n{}",
                String::from_utf8_lossy(&d.stdout),
                String::from_utf8_lossy(&d.stderr),
                node.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `skiff exec POD [-c C] -- sh -c SCRIPT`: (exit code, stdout, stderr).
fn exec(node: &Node, pod: &str, c: Option<&str>, script: &str) -> (i32, String, String) {
    let mut args = vec!["exec", pod];
    if let Some(c) = c {
        args.extend(["-c", c]);
    }
    args.extend(["--", "sh", "-c", script]);
    let out = node.skiff(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`exec`], and the command must succeed; returns stdout.
fn exec_ok(node: &Node, pod: &str, c: Option<&str>, script: &str) -> String {
    let (code, out, err) = exec(node, pod, c, script);
    assert_eq!(code, 0, "exec {script:?} in {pod} failed: {out}{err}");
    out
}

/// Waits until container `c` of `pod` waits with `reason`; returns its waiting state.
fn wait_waiting(node: &Node, pod: &str, c: &str, reason: &str) -> Value {
    node.wait_for(
        &format!("{pod}/{c} waiting with {reason}"),
        Duration::from_secs(30),
        || {
            let p = node.pod(pod)?;
            let w = &container(&p, c)["state"]["waiting"];
            (w["reason"] == reason).then(|| w.clone())
        },
    )
}

/// Waits until container `c` of `pod` has terminated; returns its terminated state.
fn wait_terminated(node: &Node, pod: &str, c: &str, timeout: Duration) -> Value {
    node.wait_for(&format!("{pod}/{c} terminated"), timeout, || {
        let p = node.pod(pod)?;
        let st = container(&p, c);
        let t = if st["state"]["terminated"].is_object() {
            &st["state"]["terminated"]
        } else {
            &st["lastState"]["terminated"]
        };
        t.is_object().then(|| t.clone())
    })
}

/// Waits until the log of `pod` (container `c`) contains `want`; returns it.
fn wait_log(node: &Node, pod: &str, c: &str, want: &str) -> String {
    node.wait_for(
        &format!("{want:?} in the log of {pod}/{c}"),
        Duration::from_secs(30),
        || {
            let out = node.skiff(&["logs", pod, "-c", c]);
            let l = String::from_utf8_lossy(&out.stdout).into_owned();
            l.contains(want).then_some(l)
        },
    )
}

/// Waits until an event contains every one of `want`; returns the events table.
fn wait_event(node: &Node, want: &[&str]) -> String {
    node.wait_for(
        &format!("an event with {want:?}"),
        Duration::from_secs(30),
        || {
            let ev = node.skiff_ok(&["get", "events", "-A"]);
            ev.lines()
                .any(|l| want.iter().all(|w| l.contains(w)))
                .then_some(ev)
        },
    )
}

/// Removes every manifest and checks that skiff left nothing behind.
fn remove_all_and_check_leftovers(node: &Node) {
    for e in std::fs::read_dir(&node.manifests).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    node.wait_for("every pod to be removed", Duration::from_secs(60), || {
        node.pods().is_empty().then_some(())
    });
    let mut last = Vec::new();
    let clean = (0..100).any(|_| {
        last = node.leftovers();
        if last.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(clean, "left behind: {last:?}\n{}", node.log_tail(40));
}

fn container_id(pod: &Value, c: &str) -> String {
    container(pod, c)["containerID"]
        .as_str()
        .and_then(|s| s.strip_prefix("skiff://"))
        .expect("containerID skiff://<id>")
        .to_string()
}

/// A pod whose single container `main` runs `script`, with extra YAML under
/// the container (`cextra`, indented 4) and the spec (`sextra`, indented 2).
fn pod_with(name: &str, script: &str, cextra: &str, sextra: &str) -> String {
    let mut y = pod_yaml(name, script);
    for l in cextra.lines() {
        y.push_str(&format!("    {l}\n"));
    }
    for l in sextra.lines() {
        y.push_str(&format!("  {l}\n"));
    }
    y
}

#[test]
#[ignore = "needs root"]
fn empty_dir_host_path_pvc_read_only_and_sub_paths() {
    require_root();
    let node = Node::start();
    let host_dir = node.dir().join("hostpath/made/by/skiff");
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vols
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'echo shared-data > /shared/msg; mkdir -p /shared/sub/deep; echo in-sub > /shared/sub/f; mkdir -p /shared/pods/vols; echo mine > /shared/pods/vols/who; echo run >> /pvc/runs; exec sleep 100000']
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: pvc, mountPath: /pvc}}
  - name: reader
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'exec sleep 100000']
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    volumeMounts:
    - {{name: shared, mountPath: /ro, readOnly: true}}
    - {{name: shared, mountPath: /sub, subPath: sub}}
    - {{name: shared, mountPath: /mine, subPathExpr: "pods/$(POD_NAME)"}}
    - {{name: mem, mountPath: /mem}}
    - {{name: host, mountPath: /host}}
    - {{name: pvc, mountPath: /pvc-ro, readOnly: true}}
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 16Mi}}
  - name: host
    hostPath: {{path: {host}, type: DirectoryOrCreate}}
  - name: pvc
    persistentVolumeClaim: {{claimName: my-claim}}
"#,
        host = host_dir.display()
    );
    node.write_manifest("vols.yaml", &yaml);
    running(&node, "vols");
    // emptyDir shared between the two containers, and read-only where asked.
    node.wait_for("the writer's file", Duration::from_secs(10), || {
        exec(&node, "vols", Some("reader"), "cat /ro/msg")
            .1
            .contains("shared-data")
            .then_some(())
    });
    let (code, _, err) = exec(&node, "vols", Some("reader"), "touch /ro/nope");
    assert_ne!(code, 0, "a readOnly mount took a write");
    assert!(err.contains("Read-only file system"), "{err}");
    // subPath and subPathExpr (with $(POD_NAME) from a fieldRef env).
    assert_eq!(
        exec_ok(&node, "vols", Some("reader"), "cat /sub/f; ls /sub"),
        "in-sub\ndeep\nf\n"
    );
    assert_eq!(
        exec_ok(&node, "vols", Some("reader"), "cat /mine/who"),
        "mine\n"
    );
    // emptyDir medium Memory: tmpfs with the size limit.
    let mounts = exec_ok(&node, "vols", Some("reader"), "grep ' /mem ' /proc/mounts");
    assert!(
        mounts.starts_with("tmpfs /mem tmpfs") && mounts.contains("size=16384k"),
        "{mounts}"
    );
    // hostPath DirectoryOrCreate made the directory, and writes reach the host.
    assert!(host_dir.is_dir());
    exec_ok(&node, "vols", Some("reader"), "echo from-pod > /host/f");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("f")).unwrap(),
        "from-pod\n"
    );
    // persistentVolumeClaim: a directory per claim, read-only where asked.
    let claim = node.root.join("volumes/pvc/default/my-claim");
    node.wait_for("the pvc write", Duration::from_secs(10), || {
        std::fs::read_to_string(claim.join("runs"))
            .ok()
            .filter(|s| s == "run\n")
    });
    let (code, _, _) = exec(&node, "vols", Some("reader"), "echo x > /pvc-ro/x");
    assert_ne!(code, 0, "a readOnly pvc mount took a write");
    // Replacing the pod (an edit of its manifest) keeps the claim's data.
    node.write_manifest(
        "vols.yaml",
        &yaml.replace(
            "terminationGracePeriodSeconds: 1",
            "terminationGracePeriodSeconds: 2",
        ),
    );
    node.wait_for(
        "the replaced pod's second pvc write",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(claim.join("runs"))
                .ok()
                .filter(|s| s == "run\nrun\n")
        },
    );
    running(&node, "vols");
    assert_eq!(
        exec_ok(&node, "vols", Some("reader"), "cat /pvc-ro/runs"),
        "run\nrun\n"
    );
    remove_all_and_check_leftovers(&node);
    assert!(claim.join("runs").exists(), "a pvc outlives its pods");
}

#[test]
#[ignore = "needs root"]
fn host_path_type_mismatch_fails_with_a_clear_event() {
    require_root();
    let node = Node::start();
    let missing = node.dir().join("no-such-file");
    node.write_manifest(
        "hp.yaml",
        &pod_with(
            "hp",
            "exec sleep 100000",
            "volumeMounts: [{name: f, mountPath: /f}]",
            &format!(
                "volumes: [{{name: f, hostPath: {{path: {}, type: File}}}}]",
                missing.display()
            ),
        ),
    );
    let ev = wait_event(
        &node,
        &["FailedMount", "hostPath type check failed", "is not a file"],
    );
    assert!(ev.contains("volume \"f\""), "{ev}");
    let p = node.pod("hp").unwrap();
    assert_eq!(p["status"]["phase"], "Pending", "{p}");
    assert!(!missing.exists(), "type File must not create the file");
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn config_map_secret_downward_api_and_projected_volumes() {
    require_root();
    let node = Node::start();
    node.write_manifest("configmap.yaml", example("configmap.yaml"));
    node.write_manifest("secret.yaml", example("secret.yaml"));
    node.write_manifest("volumes.yaml", example("volumes.yaml"));
    running(&node, "configmap-demo");
    running(&node, "secret-demo");
    let pod = running(&node, "volumes-demo");

    // configMap: items (a nested path), per-item mode, defaultMode.
    let cm = |s: &str| exec_ok(&node, "configmap-demo", None, s);
    assert_eq!(cm("cat /etc/config/color"), "blue");
    assert_eq!(cm("cat /etc/config/conf/ui.ini"), "[ui]\ntheme=dark\n");
    assert_eq!(
        cm("stat -L -c '%a' /etc/config/color /etc/config/game.properties /etc/config/conf/ui.ini"),
        "640\n640\n600\n"
    );
    assert_eq!(
        cm("ls /etc/config"),
        "color\nconf\ngame.properties\n",
        "only the listed items"
    );
    assert!(
        cm("ls -a /etc/config").contains("..data"),
        "atomic writer layout"
    );
    assert_eq!(cm("echo $COLOR $CFG_size"), "blue large\n");

    // secret: tmpfs, 0644 by default, defaultMode honoured, optional env missing is fine.
    let sec = |s: &str| exec_ok(&node, "secret-demo", None, s);
    assert!(
        sec("grep ' /etc/secret ' /proc/mounts").starts_with("tmpfs "),
        "secret not on tmpfs"
    );
    assert_eq!(
        sec("stat -L -c '%a' /etc/secret/username /etc/secret/password"),
        "644\n644\n"
    );
    assert_eq!(sec("cat /etc/secret/password"), "s3cr3t");
    assert_eq!(
        sec("stat -L -c '%a' /etc/tls/tls.key; cat /etc/tls/tls.crt"),
        "400\nCERT"
    );
    assert_eq!(
        sec("echo \"$DB_USER [${NOT_THERE-unset}]\""),
        "admin [unset]\n"
    );
    let on_host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        on_host
            .lines()
            .any(|l| l.contains("/volumes/secret/creds") && l.contains(" - tmpfs ")),
        "host side is tmpfs"
    );

    // downwardAPI: labels, annotations, name, namespace, uid, limits.
    let v = |s: &str| exec_ok(&node, "volumes-demo", Some("reader"), s);
    assert_eq!(
        v("cat /etc/podinfo/labels"),
        "app=\"volumes-demo\"\ntier=\"example\""
    );
    // Static pods also carry the kubelet's config annotations.
    let annotations = v("cat /etc/podinfo/annotations");
    assert!(
        annotations.lines().any(|l| l == "owner=\"skiff\""),
        "{annotations}"
    );
    assert!(
        annotations.contains("kubernetes.io/config.source=\"file\""),
        "{annotations}"
    );
    assert_eq!(
        v("cat /etc/podinfo/name /etc/podinfo/namespace"),
        "volumes-demodefault"
    );
    assert_eq!(
        v("cat /etc/podinfo/uid"),
        pod["metadata"]["uid"].as_str().unwrap()
    );
    // No memory limit: the node's allocatable memory, in Mi.
    let mem: i64 = v("cat /etc/podinfo/mem_limit").parse().unwrap();
    assert!(mem > 64, "{mem}");
    // projected: secret + configMap + downwardAPI in one directory.
    assert_eq!(v("cat /projected/secret/token"), "not-a-real-token");
    assert_eq!(
        v("cat /projected/config/greeting"),
        "hello from a configMap"
    );
    assert_eq!(v("cat /projected/podinfo/name"), "volumes-demo");
    assert_eq!(v("cat /logs/app.log"), "log-line\n");
    assert_eq!(v("ls /per-pod"), "", "subPathExpr dir made for this pod");
    wait_log(
        &node,
        "volumes-demo",
        "reader",
        "written by volumes-demo's writer",
    );
    remove_all_and_check_leftovers(&node);
    let _ = std::fs::remove_dir_all("/tmp/skiff-examples");
}

#[test]
#[ignore = "needs root"]
fn config_map_update_reaches_mounted_files_in_place_but_not_env() {
    require_root();
    let node = Node::start();
    let text = example("configmap.yaml");
    node.write_manifest("configmap.yaml", text);
    let before = running(&node, "configmap-demo");
    let id = container_id(&before, "main");
    assert_eq!(
        exec_ok(&node, "configmap-demo", None, "cat /etc/config/color"),
        "blue"
    );
    // Edit only the ConfigMap (its own file, so the pod's manifest is untouched).
    let (cm, pod) = text.split_once("\n---\n").unwrap();
    node.write_manifest("configmap.yaml", pod);
    node.write_manifest("cm.yaml", &cm.replace("color: blue", "color: green"));
    node.wait_for(
        "the mounted file to change",
        Duration::from_secs(15),
        || {
            exec(&node, "configmap-demo", None, "cat /etc/config/color")
                .1
                .eq("green")
                .then_some(())
        },
    );
    let after = node.pod("configmap-demo").unwrap();
    assert_eq!(container(&after, "main")["restartCount"], 0, "{after}");
    assert_eq!(container_id(&after, "main"), id, "same container");
    assert_eq!(
        after["metadata"]["uid"], before["metadata"]["uid"],
        "same pod"
    );
    assert_eq!(
        exec_ok(&node, "configmap-demo", None, "echo $COLOR"),
        "blue\n",
        "env keeps its value"
    );
    // A replaced pod sees the new value in its env too.
    node.write_manifest(
        "configmap.yaml",
        &pod.replace(
            "terminationGracePeriodSeconds: 2",
            "terminationGracePeriodSeconds: 1",
        ),
    );
    node.wait_for("the replaced pod", Duration::from_secs(30), || {
        let p = node.pod("configmap-demo")?;
        (p["metadata"]["uid"] != before["metadata"]["uid"] && p["status"]["phase"] == "Running")
            .then_some(())
    });
    running(&node, "configmap-demo");
    assert_eq!(
        exec_ok(&node, "configmap-demo", None, "echo $COLOR"),
        "green\n"
    );
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn sub_path_symlinks_out_of_the_volume_are_refused() {
    require_root();
    let node = Node::start();
    for (name, target) in [
        ("abs", "/"),
        ("rel", "../../../../../../.."),
        ("via", "ok/../../.."),
    ] {
        let yaml = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: evil-{name}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: plant
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /vol/ok && ln -s {target} /vol/evil']
    volumeMounts: [{{name: v, mountPath: /vol}}]
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'ls /escaped; exec sleep 100000']
    volumeMounts: [{{name: v, mountPath: /escaped, subPath: evil}}]
  volumes: [{{name: v, emptyDir: {{}}}}]
"#
        );
        node.write_manifest(&format!("evil-{name}.yaml"), &yaml);
    }
    for name in ["abs", "rel", "via"] {
        let w = wait_waiting(
            &node,
            &format!("evil-{name}"),
            "main",
            "CreateContainerConfigError",
        );
        let msg = w["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("points outside the volume") && msg.contains("subPath \"evil\""),
            "{name}: {msg}"
        );
    }
    // Nothing of the host leaked in: no bind of / below the pod dirs.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = node.dir().to_string_lossy().into_owned();
    assert!(
        !mountinfo
            .lines()
            .any(|l| l.contains("volume-subpaths") && l.contains(&dir)),
        "{mountinfo}"
    );
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn config_map_keys_cannot_write_outside_the_volume() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: pwned}\n",
    );
    let escape = node.dir().join("escaped");
    for (name, path) in [
        ("dotdot", "../../../../../escaped".to_string()),
        ("abs", escape.display().to_string()),
    ] {
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_with(
                &format!("keys-{name}"),
                "exec sleep 100000",
                "volumeMounts: [{name: c, mountPath: /c}]",
                &format!("volumes: [{{name: c, configMap: {{name: c, items: [{{key: k, path: {path:?}}}]}}}}]"),
            ),
        );
    }
    // The API server's validation refuses both; skiff reports them like that.
    for (name, want) in [
        ("dotdot", "must not contain '..'"),
        ("abs", "must be a relative path"),
    ] {
        node.wait_for(
            &format!("keys-{name} refused"),
            Duration::from_secs(20),
            || {
                let out = node.skiff(&["get", "pod", &format!("keys-{name}")]);
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                (text.contains(want) && text.contains("items[0].path")).then_some(())
            },
        );
    }
    let ev = node.skiff_ok(&["get", "events", "-A"]);
    assert!(ev.contains("FailedManifest"), "{ev}");
    assert!(!escape.exists());
    let found = std::process::Command::new("find")
        .args([node.dir().to_str().unwrap(), "-name", "escaped"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn env_sources_and_expansion() {
    require_root();
    let node = Node::start();
    node.write_manifest("env.yaml", example("env.yaml"));
    let pod = running(&node, "env-demo");
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log = wait_log(&node, "env-demo", "main", "escaped=");
    let want = [
        "greeting=hello env-demo from default".to_string(),
        format!("pod=env-demo ns=default app=env-demo node=test-node ip={ip}"),
        format!(
            "cpu_limit_m=500 cpu_request_m=110 mem_limit_mi=64 mem_request={}",
            32 << 20
        ),
        "log_level=debug api_key=abc123 cfg_mode=fast sec=abc123".to_string(),
        "missing=[unset] escaped=$(POD_NAME)".to_string(),
    ];
    assert_eq!(log, want.join("\n") + "\n");
    let uid = exec_ok(&node, "env-demo", None, "echo $POD_UID");
    assert_eq!(uid.trim(), pod["metadata"]["uid"].as_str().unwrap());
    // A missing non-optional reference: CreateContainerConfigError naming it.
    node.write_manifest(
        "bad.yaml",
        &pod_with(
            "env-bad",
            "exec sleep 100000",
            "env: [{name: X, valueFrom: {secretKeyRef: {name: nope, key: k}}}]",
            "",
        ),
    );
    let w = wait_waiting(&node, "env-bad", "main", "CreateContainerConfigError");
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("secret \"nope\" not found"),
        "{w}"
    );
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn out_of_memory_is_oom_killed_with_exit_code_137() {
    require_root();
    let node = Node::start();
    node.write_manifest("oom.yaml", example("oom.yaml"));
    let t = wait_terminated(&node, "oom-demo", "main", Duration::from_secs(60));
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137, "{t}");
    node.wait_for("pod Failed", Duration::from_secs(10), || {
        (node.pod("oom-demo")?["status"]["phase"] == "Failed").then_some(())
    });
    let table = node.skiff_ok(&["get", "pods"]);
    assert!(table.contains("OOMKilled"), "{table}");
    remove_all_and_check_leftovers(&node);
}

/// Local ephemeral storage over its limits evicts the pod, as the kubelet does: an emptyDir
/// over its sizeLimit, and a container's writable layer over its ephemeral-storage limit.
/// Pods under their limits keep running.
#[test]
#[ignore = "needs root"]
fn ephemeral_storage_over_the_limit_evicts_the_pod() {
    require_root();
    let node = Node::start();
    let fill = |path: &str, mib: u32| {
        format!(
            "dd if=/dev/zero of={path} bs=1048576 count={mib} 2>/dev/null; sync; exec sleep 3600"
        )
    };
    node.write_manifest(
        "scratch.yaml",
        &pod_with(
            "scratch",
            &fill("/scratch/f", 3),
            "volumeMounts: [{name: s, mountPath: /scratch}]",
            "volumes: [{name: s, emptyDir: {sizeLimit: 1Mi}}]",
        ),
    );
    node.write_manifest(
        "layer.yaml",
        &pod_with(
            "layer",
            &fill("/big", 3),
            "resources: {limits: {ephemeral-storage: 2Mi}}",
            "",
        ),
    );
    node.write_manifest(
        "fits.yaml",
        &pod_with(
            "fits",
            &fill("/small", 1),
            "resources: {limits: {ephemeral-storage: 8Mi}}",
            "",
        ),
    );
    for (pod, want) in [
        (
            "scratch",
            "Usage of EmptyDir volume \"s\" exceeds the limit \"1Mi\".",
        ),
        (
            "layer",
            "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi.",
        ),
    ] {
        let status = node.wait_for(&format!("{pod} evicted"), Duration::from_secs(40), || {
            let p = node.pod(pod)?;
            (p["status"]["phase"] == "Failed").then(|| p["status"].clone())
        });
        assert_eq!(status["reason"], "Evicted", "{status}");
        assert_eq!(status["message"], want, "{status}");
    }
    wait_event(&node, &["Evicted", "pod/scratch"]);
    let described = node.skiff_ok(&["describe", "pod", "scratch"]);
    assert!(
        described.contains("Evicted") && described.contains("exceeds the limit"),
        "{described}"
    );
    assert_eq!(node.pod("fits").unwrap()["status"]["phase"], "Running");
    remove_all_and_check_leftovers(&node);
}

/// A host directory made a shared mount of its own; unmounted (with whatever propagated
/// into it) on drop.
struct SharedDir {
    _tmp: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl SharedDir {
    fn new() -> SharedDir {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("shared");
        std::fs::create_dir(&path).unwrap();
        let p = path.to_str().unwrap();
        for args in [vec!["--bind", p, p], vec!["--make-rshared", p]] {
            let st = std::process::Command::new("mount")
                .args(&args)
                .status()
                .unwrap();
            assert!(st.success(), "mount {args:?}");
        }
        SharedDir { _tmp: tmp, path }
    }

    fn mount_tmpfs(&self, sub: &str) {
        let target = self.path.join(sub);
        std::fs::create_dir_all(&target).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&target)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// mountPropagation: HostToContainer sees mounts the host makes later, the default (None)
/// does not, and a privileged Bidirectional container's mounts show up on the host; a
/// non-privileged Bidirectional mount is refused.
#[test]
#[ignore = "needs root"]
fn mount_propagation_host_to_container_none_and_bidirectional() {
    require_root();
    let node = Node::start();
    let shared = SharedDir::new();
    let host = shared.path.display().to_string();
    let vol = format!("volumes: [{{name: h, hostPath: {{path: {host}}}}}]");
    let mount = |prop: &str| format!("volumeMounts: [{{name: h, mountPath: /mnt{prop}}}]");
    node.write_manifest(
        "h2c.yaml",
        &pod_with(
            "h2c",
            "exec sleep 3600",
            &mount(", mountPropagation: HostToContainer"),
            &vol,
        ),
    );
    node.write_manifest(
        "none.yaml",
        &pod_with("none", "exec sleep 3600", &mount(""), &vol),
    );
    node.write_manifest(
        "bidi.yaml",
        &pod_with(
            "bidi",
            "mkdir -p /mnt/fromc && mount -t tmpfs tmpfs /mnt/fromc && echo hi > /mnt/fromc/f && exec sleep 3600",
            &format!("{}\nsecurityContext: {{privileged: true}}", mount(", mountPropagation: Bidirectional")),
            &vol,
        ),
    );
    node.write_manifest(
        "bidi-unpriv.yaml",
        &pod_with(
            "bidi-unpriv",
            "exec sleep 3600",
            &mount(", mountPropagation: Bidirectional"),
            &vol,
        ),
    );
    for p in ["h2c", "none", "bidi"] {
        running(&node, p);
    }
    wait_event(
        &node,
        &[
            "bidi-unpriv",
            "Bidirectional mount propagation is available only to privileged containers",
        ],
    );

    shared.mount_tmpfs("fromh");
    std::fs::write(shared.path.join("fromh/f"), "x").unwrap();
    node.wait_for(
        "the host's mount inside h2c",
        Duration::from_secs(10),
        || {
            let (code, out, _) = exec(&node, "h2c", None, "cat /mnt/fromh/f");
            (code == 0 && out.trim() == "x").then_some(())
        },
    );
    let (code, _, _) = exec(&node, "none", None, "cat /mnt/fromh/f");
    assert_ne!(code, 0, "a private mount saw the host's new mount");
    node.wait_for("bidi's mount on the host", Duration::from_secs(10), || {
        std::fs::read_to_string(shared.path.join("fromc/f"))
            .ok()
            .filter(|s| s.trim() == "hi")
    });
    remove_all_and_check_leftovers(&node);
}

/// The effective capability mask of the container's first process.
fn cap_eff(node: &Node, pod: &str) -> u64 {
    let line = exec_ok(node, pod, None, "grep CapEff /proc/1/status");
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
#[ignore = "needs root"]
fn security_context_users_capabilities_rootfs_and_privileged() {
    require_root();
    let node = Node::start();
    node.write_manifest("security.yaml", example("security.yaml"));
    node.write_manifest(
        "caps.yaml",
        &pod_with(
            "caps",
            "exec sleep 100000",
            "securityContext: {capabilities: {drop: [NET_RAW, CHOWN], add: [NET_ADMIN, SYS_TIME]}}",
            "",
        ),
    );
    node.write_manifest(
        "plain.yaml",
        &pod_with("plain", "exec sleep 100000", "", ""),
    );
    node.write_manifest(
        "host.yaml",
        &pod_with(
            "host-ns",
            "exec sleep 100000",
            "",
            "hostPID: true\nhostIPC: true",
        ),
    );
    for p in [
        "security-restricted",
        "security-sysctls",
        "security-privileged",
        "security-nonroot",
        "caps",
        "plain",
        "host-ns",
    ] {
        running(&node, p);
    }
    const CHOWN: u64 = 1 << 0;
    const NET_BIND_SERVICE: u64 = 1 << 10;
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    const SYS_ADMIN: u64 = 1 << 21;
    const SYS_TIME: u64 = 1 << 25;
    let plain = cap_eff(&node, "plain");
    assert_eq!(plain.count_ones(), 14, "{plain:x}");
    let caps = cap_eff(&node, "caps");
    assert_eq!(
        caps,
        (plain & !NET_RAW & !CHOWN) | NET_ADMIN | SYS_TIME,
        "{caps:x}"
    );
    // privileged: every capability skiff has itself (the host's bounding set), writable /sys.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    let all = u64::from_str_radix(bnd, 16).unwrap();
    assert_eq!(cap_eff(&node, "security-privileged"), all);
    assert!(
        exec_ok(
            &node,
            "security-privileged",
            None,
            "grep ' /sys ' /proc/mounts"
        )
        .contains(" rw,")
    );
    assert!(exec_ok(&node, "plain", None, "grep ' /sys ' /proc/mounts").contains(" ro,"));
    // Users and groups; fsGroup owns the emptyDir and what is written to it.
    let r = |s: &str| exec_ok(&node, "security-restricted", None, s);
    assert_eq!(r("id"), "uid=1000 gid=3000 groups=2000,3000,4000\n");
    assert_eq!(r("stat -c '%g %a' /data"), "2000 2777\n");
    assert_eq!(r("stat -c '%u %g' /data/file"), "1000 2000\n");
    let (code, _, err) = exec(&node, "security-restricted", None, "touch /x");
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(r("grep NoNewPrivs /proc/1/status"), "NoNewPrivs:\t1\n");
    let log = wait_log(&node, "security-restricted", "main", "unshare refused");
    // A non-root user keeps no effective capabilities (Kubernetes has no
    // ambient ones); the bounding set is what was asked for.
    assert!(
        log.starts_with("uid=1000 gid=3000 groups=2000,3000,4000\nCapEff:\t0000000000000000\n"),
        "{log}"
    );
    assert!(
        log.contains("Read-only file system\nroot filesystem is read-only"),
        "{log}"
    );
    assert_eq!(
        r("grep CapBnd /proc/1/status"),
        format!("CapBnd:\t{NET_BIND_SERVICE:016x}\n")
    );
    assert_eq!(exec_ok(&node, "security-nonroot", None, "id -u"), "65534\n");
    assert_eq!(
        exec_ok(
            &node,
            "security-sysctls",
            None,
            "cat /proc/sys/net/core/somaxconn"
        ),
        "1024\n"
    );
    assert_eq!(
        exec_ok(
            &node,
            "security-sysctls",
            None,
            "cat /proc/sys/kernel/shm_rmid_forced"
        ),
        "1\n"
    );
    assert_ne!(plain & SYS_ADMIN, SYS_ADMIN);
    // hostPID and hostIPC: the node's PID and IPC namespaces.
    let ns = |p: &str| {
        std::fs::read_link(format!("/proc/self/ns/{p}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(
        exec_ok(&node, "host-ns", None, "readlink /proc/self/ns/ipc").trim(),
        ns("ipc")
    );
    assert_eq!(
        exec_ok(&node, "host-ns", None, "readlink /proc/self/ns/pid").trim(),
        ns("pid")
    );
    assert_ne!(
        exec_ok(&node, "plain", None, "readlink /proc/self/ns/pid").trim(),
        ns("pid")
    );
    assert_ne!(
        exec_ok(&node, "plain", None, "readlink /proc/self/ns/ipc").trim(),
        ns("ipc")
    );
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn seccomp_runtime_default_refuses_unshare_and_unconfined_allows_it() {
    require_root();
    let node = Node::start();
    // A user namespace needs no capability, so only the profile can refuse it (with
    // CAP_SYS_ADMIN Docker's profile allows unshare, as it does on Docker and containerd).
    let script = "unshare -U true && echo UNSHARE-OK || echo UNSHARE-FAILED; exec sleep 100000";
    for (name, profile) in [
        ("sc-default", "RuntimeDefault"),
        ("sc-unconfined", "Unconfined"),
    ] {
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_with(
                name,
                script,
                &format!("securityContext: {{seccompProfile: {{type: {profile}}}}}"),
                "",
            ),
        );
    }
    // Localhost: a profile file under <root-dir>/seccomp/ that only denies mkdir.
    std::fs::create_dir_all(node.root.join("seccomp/profiles")).unwrap();
    std::fs::write(
        node.root.join("seccomp/profiles/no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    node.write_manifest(
        "local.yaml",
        &pod_with(
            "sc-local",
            "mkdir /x 2>&1; exec sleep 100000",
            "securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/no-mkdir.json}}",
            "",
        ),
    );
    let log = wait_log(&node, "sc-default", "main", "UNSHARE-");
    assert!(
        log.contains("Operation not permitted") && log.contains("UNSHARE-FAILED"),
        "{log}"
    );
    let log = wait_log(&node, "sc-unconfined", "main", "UNSHARE-");
    assert!(log.contains("UNSHARE-OK"), "{log}");
    let log = wait_log(&node, "sc-local", "main", "mkdir");
    assert!(log.contains("Operation not permitted"), "{log}");
    let (_, out, _) = exec(&node, "sc-default", None, "grep Seccomp: /proc/1/status");
    assert_eq!(out, "Seccomp:\t2\n");

    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn run_as_non_root_refuses_a_root_image_user() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "nonroot.yaml",
        &pod_with(
            "nonroot",
            "exec sleep 100000",
            "securityContext: {runAsNonRoot: true}",
            "",
        ),
    );
    let w = wait_waiting(&node, "nonroot", "main", "CreateContainerConfigError");
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("container has runAsNonRoot and image will run as root"),
        "{w}"
    );
    wait_event(
        &node,
        &["Failed", "runAsNonRoot and image will run as root"],
    );
    node.write_manifest(
        "nonroot.yaml",
        &pod_with(
            "nonroot",
            "exec sleep 100000",
            "securityContext: {runAsNonRoot: true, runAsUser: 65534}",
            "",
        ),
    );
    running(&node, "nonroot");
    assert_eq!(exec_ok(&node, "nonroot", None, "id -u"), "65534\n");
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn admission_rejects_pods_that_do_not_fit_and_others_keep_running() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "ok.yaml",
        &pod_with(
            "fits",
            "exec sleep 100000",
            "resources: {requests: {cpu: 100m}}",
            "",
        ),
    );
    running(&node, "fits");
    node.write_manifest(
        "big.yaml",
        &pod_with(
            "too-big",
            "exec sleep 100000",
            "resources: {requests: {cpu: '1000'}}",
            "",
        ),
    );
    let p = node.wait_for("too-big rejected", Duration::from_secs(20), || {
        let p = node.pod("too-big")?;
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(p["status"]["reason"], "OutOfcpu", "{p}");
    let msg = p["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Node didn't have enough resource: cpu"),
        "{msg}"
    );
    node.write_manifest(
        "mem.yaml",
        &pod_with(
            "too-much-mem",
            "exec sleep 100000",
            "resources: {requests: {memory: 100Ti}}",
            "",
        ),
    );
    let p = node.wait_for("too-much-mem rejected", Duration::from_secs(20), || {
        let p = node.pod("too-much-mem")?;
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(p["status"]["reason"], "OutOfmemory", "{p}");
    wait_event(&node, &["OutOfcpu", "cpu"]);
    let fits = running(&node, "fits");
    assert_eq!(container(&fits, "main")["restartCount"], 0);
    remove_all_and_check_leftovers(&node);
}

/// The container's cgroup directory for `controller` (v1) or the unified one (v2).
fn cgroup_dir(pod: &Value, c: &str, controller: &str) -> std::path::PathBuf {
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let id = container_id(pod, c);
    let rel = format!("skiff/pod{uid}/{id}");
    let base = std::path::Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        base.join(rel)
    } else {
        base.join(controller).join(rel)
    }
}

fn read_cg(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root"]
fn resources_become_cgroup_settings_and_qos_classes() {
    require_root();
    let node = Node::start();
    node.write_manifest("resources.yaml", example("resources.yaml"));
    let g = running(&node, "resources-guaranteed");
    let b = running(&node, "resources-burstable");
    let e = running(&node, "resources-besteffort");
    assert_eq!(g["status"]["qosClass"], "Guaranteed");
    assert_eq!(b["status"]["qosClass"], "Burstable");
    assert_eq!(e["status"]["qosClass"], "BestEffort");
    for (pod, class) in [
        ("resources-guaranteed", "Guaranteed"),
        ("resources-burstable", "Burstable"),
        ("resources-besteffort", "BestEffort"),
    ] {
        let d = node.skiff_ok(&["describe", "pod", pod]);
        assert!(
            d.lines()
                .any(|l| l.starts_with("QoS Class:") && l.trim_end().ends_with(class)),
            "{pod}: {d}"
        );
    }
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        assert_eq!(
            read_cg(cgroup_dir(&g, "main", "").join("memory.max")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read_cg(cgroup_dir(&g, "main", "").join("cpu.max")),
            "25000 100000"
        );
        assert_eq!(
            read_cg(cgroup_dir(&b, "main", "").join("cpu.max")),
            "max 100000"
        );
    } else {
        assert_eq!(
            read_cg(cgroup_dir(&g, "main", "memory").join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read_cg(cgroup_dir(&g, "main", "cpu").join("cpu.cfs_quota_us")),
            "25000"
        );
        assert_eq!(
            read_cg(cgroup_dir(&g, "main", "cpu").join("cpu.cfs_period_us")),
            "100000"
        );
        assert_eq!(
            read_cg(cgroup_dir(&g, "main", "cpu").join("cpu.shares")),
            "256"
        );
        assert_eq!(
            read_cg(cgroup_dir(&b, "main", "cpu").join("cpu.shares")),
            "102"
        );
        assert_eq!(
            read_cg(cgroup_dir(&b, "main", "cpu").join("cpu.cfs_quota_us")),
            "-1"
        );
        assert_eq!(
            read_cg(cgroup_dir(&b, "main", "memory").join("memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
        assert_eq!(
            read_cg(cgroup_dir(&e, "main", "cpu").join("cpu.shares")),
            "2"
        );
    }
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn hostname_subdomain_host_aliases_and_dns_config() {
    require_root();
    let node = Node::start();
    node.write_manifest("dns.yaml", example("dns.yaml"));
    running(&node, "dns-demo");
    assert_eq!(
        exec_ok(&node, "dns-demo", None, "hostname; cat /etc/hostname"),
        "db-0\ndb-0\n"
    );
    let hosts = exec_ok(&node, "dns-demo", None, "cat /etc/hosts");
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(
        hosts.contains("\tdb-0.db.default.svc.cluster.local\tdb-0\n"),
        "{hosts}"
    );
    assert!(
        hosts.contains("10.1.2.3\tfoo.example\tbar.example\n"),
        "{hosts}"
    );
    let resolv = exec_ok(&node, "dns-demo", None, "cat /etc/resolv.conf");
    assert_eq!(
        resolv,
        "search example.internal\nnameserver 192.0.2.53\noptions ndots:2 edns0\n"
    );
    remove_all_and_check_leftovers(&node);
}

#[test]
#[ignore = "needs root"]
fn every_example_runs() {
    require_root();
    let node = Node::start();
    let mut pods = Vec::new();
    for (name, text) in EXAMPLES {
        node.write_manifest(name, text);
        for doc in text.split("\n---\n") {
            if doc.contains("\nkind: Pod\n") || doc.starts_with("kind: Pod\n") {
                let name = doc
                    .split("\n  name: ")
                    .nth(1)
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                pods.push(name);
            }
        }
    }
    assert!(pods.len() >= 12, "{pods:?}");
    for p in &pods {
        node.wait_for(
            &format!("example pod {p} Running or done"),
            Duration::from_secs(90),
            || {
                let pod = node.pod(p)?;
                let phase = pod["status"]["phase"].as_str()?.to_string();
                match (p.as_str(), phase.as_str()) {
                    ("oom-demo", "Failed") => Some(()),
                    (_, "Running" | "Succeeded") => {
                        let ready = pod["status"]["containerStatuses"]
                            .as_array()?
                            .iter()
                            .all(|c| c["ready"] == true);
                        (phase == "Succeeded" || ready).then_some(())
                    }
                    _ => None,
                }
            },
        );
    }
    let events = node.skiff_ok(&["get", "events", "-A"]);
    for bad in [
        "FailedManifest",
        "FailedMount",
        "CreateContainerConfigError",
    ] {
        assert!(!events.contains(bad), "{bad} in:\n{events}");
    }
    remove_all_and_check_leftovers(&node);
    let _ = std::fs::remove_dir_all("/tmp/skiff-examples");
}

/// An exec'd process runs under the container's seccomp profile (libcontainer 0.7's tenant
/// builder drops `linux.seccomp`; skiff's supervisor loads it itself), and a container
/// without one gives its exec'd processes none.
#[test]
#[ignore = "needs root"]
fn exec_processes_get_the_containers_seccomp_profile() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "sc.yaml",
        &pod_with(
            "sc",
            "exec sleep 100000",
            "securityContext: {seccompProfile: {type: RuntimeDefault}}",
            "",
        ),
    );
    running(&node, "sc");
    assert_eq!(
        exec_ok(&node, "sc", None, "grep Seccomp: /proc/self/status"),
        "Seccomp:\t2\n"
    );
    let (code, _, err) = exec(&node, "sc", None, "unshare -U true");
    assert_ne!(code, 0, "unshare allowed in an exec");
    assert!(err.contains("Operation not permitted"), "{err}");
    // Without a profile: no filter, and with SYS_ADMIN unshare works.
    node.write_manifest(
        "free.yaml",
        &pod_with("free", "exec sleep 100000", "securityContext: {capabilities: {add: [SYS_ADMIN]}, seccompProfile: {type: Unconfined}}", ""),
    );
    running(&node, "free");
    assert_eq!(
        exec_ok(&node, "free", None, "grep Seccomp: /proc/self/status"),
        "Seccomp:\t0\n"
    );
    let (code, _, err) = exec(&node, "free", None, "unshare -n true");
    assert_eq!(code, 0, "{err}");
    remove_all_and_check_leftovers(&node);
}
