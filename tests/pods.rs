//! Root integration tests: pods run by a real skiffd in a throwaway netns.

mod common;

use std::time::Duration;

use common::{IMAGE, Node, pod_yaml, require_root, ts};
use serde_json::Value;

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no status for container {name} in {pod}"))
}

#[test]
#[ignore = "needs root"]
fn pod_runs_and_reports_kubernetes_status_and_logs() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "hello.yaml",
        &pod_yaml("hello", "echo hello; echo oops >&2; exec sleep 3600"),
    );
    let pod = node.wait_running("hello");
    let st = &pod["status"];
    let c = container(&pod, "main");
    assert!(
        c["containerID"].as_str().unwrap().starts_with("skiff://"),
        "{c}"
    );
    assert!(c["imageID"].as_str().unwrap().contains("@sha256:"), "{c}");
    assert_eq!(c["restartCount"], 0);
    assert!(c["state"]["running"]["startedAt"].is_string());
    assert!(st["startTime"].is_string());
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(pod["spec"]["nodeName"], "test-node");

    let logs = node.wait_for("both log lines", Duration::from_secs(10), || {
        let l = node.skiff_ok(&["logs", "hello"]);
        (l.contains("hello") && l.contains("oops")).then_some(l)
    });
    assert_eq!(logs, "hello\noops\n");
    let table = node.skiff_ok(&["get", "pods"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hello") && l.contains("1/1") && l.contains("Running")),
        "{table}"
    );
    let wide = node.skiff_ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.contains("NODE") && wide.contains("test-node"),
        "{wide}"
    );
    let list: Value = serde_json::from_str(&node.skiff_ok(&["get", "pods", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["kind"], "Pod");
    let yaml = node.skiff_ok(&["get", "pods", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: List") && yaml.contains("phase: Running"),
        "{yaml}"
    );
    let described = node.skiff_ok(&["describe", "pod", "hello"]);
    for want in [
        "Name:",
        "hello",
        "Started container main",
        "Restart Count:  0",
        "Ready",
    ] {
        assert!(
            described.contains(want),
            "describe lacks {want:?}:\n{described}"
        );
    }
    let tail = node.skiff_ok(&["logs", "hello", "--tail", "1"]);
    assert_eq!(tail, "oops\n");
}

#[test]
#[ignore = "needs root"]
fn containers_of_a_pod_share_localhost_and_exec_propagates_exit_codes() {
    require_root();
    let node = Node::start();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: {IMAGE}
    imagePullPolicy: Never
    command: [httpd, -f, -p, "8080", -h, /var/www]
  - name: client
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'while true; do wget -q -O- http://127.0.0.1:8080/ && echo; sleep 0.2; done']
"#
    );
    node.write_manifest("web.yaml", &yaml);
    node.wait_running("web");
    node.wait_for(
        "client to fetch the page over localhost",
        Duration::from_secs(15),
        || {
            let l = node.skiff_ok(&["logs", "web", "-c", "client"]);
            (!l.trim().is_empty()).then_some(())
        },
    );
    let out = node.skiff(&[
        "exec",
        "web",
        "-c",
        "server",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = node.skiff(&["exec", "web", "-c", "client", "--", "hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web");
    let out = node.skiff(&["exec", "web", "-c", "client", "--", "no-such-binary"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // Several containers: logs need -c, and the error says which exist.
    let out = node.skiff(&["logs", "web"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("choose one of: [server client]"),
        "{out:?}"
    );
    // Both containers see the same network namespace, not the host's.
    let a = node.skiff_ok(&[
        "exec",
        "web",
        "-c",
        "server",
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    let b = node.skiff_ok(&[
        "exec",
        "web",
        "-c",
        "client",
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    assert_eq!(a, b);
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(a.trim(), host.to_string_lossy());
}

#[test]
#[ignore = "needs root"]
fn init_containers_run_in_order_to_completion_first() {
    require_root();
    let node = Node::start();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: inits
spec:
  initContainers:
  - {{name: first, image: {IMAGE}, imagePullPolicy: Never, command: [sh, -c, 'sleep 0.5; echo first']}}
  - {{name: second, image: {IMAGE}, imagePullPolicy: Never, command: [sh, -c, 'sleep 0.5; echo second']}}
  containers:
  - {{name: app, image: {IMAGE}, imagePullPolicy: Never, command: [sleep, "3600"]}}
"#
    );
    node.write_manifest("inits.yaml", &yaml);
    let pod = node.wait_running("inits");
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    let first = &inits[0]["state"]["terminated"];
    let second = &inits[1]["state"]["terminated"];
    assert_eq!(first["exitCode"], 0);
    assert_eq!(second["reason"], "Completed");
    assert!(
        ts(&first["finishedAt"]) <= ts(&second["startedAt"]),
        "second init started before first finished: {pod}"
    );
    let app_started = ts(&container(&pod, "app")["state"]["running"]["startedAt"]);
    assert!(ts(&second["finishedAt"]) <= app_started);
    assert_eq!(
        node.skiff_ok(&["logs", "inits", "-c", "second"]),
        "second\n"
    );

    // A failing init container with restartPolicy Never fails the pod; the app never starts.
    let bad = yaml
        .replace("name: inits", "name: badinit")
        .replace("sleep 0.5; echo first", "exit 3")
        .replace("spec:\n", "spec:\n  restartPolicy: Never\n");
    node.write_manifest("badinit.yaml", &bad);
    let pod = node.wait_for("badinit to fail", Duration::from_secs(20), || {
        let p = node.pod("badinit")?;
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    assert!(
        container(&pod, "app")["state"]["waiting"].is_object(),
        "{pod}"
    );
    let table = node.skiff_ok(&["get", "pod", "badinit"]);
    assert!(table.contains("Init:Error"), "{table}");
}

#[test]
#[ignore = "needs root"]
fn crashing_container_restarts_with_crash_loop_backoff() {
    require_root();
    let node = Node::start();
    node.write_manifest("crash.yaml", &pod_yaml("crash", "echo attempt; exit 1"));
    // First restart is immediate, the second waits 10 s (kubelet semantics).
    let pod = node.wait_for(
        "CrashLoopBackOff after the first restart",
        Duration::from_secs(20),
        || {
            let p = node.pod("crash")?;
            let c = container(&p, "main").clone();
            (c["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(p)
        },
    );
    assert!(container(&pod, "main")["restartCount"].as_i64().unwrap() >= 1);
    assert_eq!(pod["status"]["phase"], "Running");
    let table = node.skiff_ok(&["get", "pods"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let pod = node.wait_for("the second restart", Duration::from_secs(25), || {
        let p = node.pod("crash")?;
        (container(&p, "main")["restartCount"].as_i64()? >= 2).then_some(p)
    });
    let c = container(&pod, "main");
    let last_finished = ts(&c["lastState"]["terminated"]["finishedAt"]);
    let state = &c["state"];
    let started = state["running"]["startedAt"]
        .as_str()
        .or(state["terminated"]["startedAt"].as_str())
        .map(|s| s.parse::<jiff::Timestamp>().unwrap());
    if let Some(started) = started {
        let gap = started.duration_since(last_finished);
        assert!(
            gap >= jiff::SignedDuration::from_millis(9500),
            "restart after {gap:?}, want >= 10 s back-off"
        );
    }
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    let prev = node.skiff_ok(&["logs", "crash", "--previous"]);
    assert_eq!(prev, "attempt\n");
    let events = node.skiff_ok(&["get", "events"]);
    assert!(events.contains("BackOff"), "{events}");
}

#[test]
#[ignore = "needs root"]
fn restart_policies_never_and_on_failure_end_the_pod() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "never.yaml",
        &pod_yaml("never", "exit 3").replace("spec:\n", "spec:\n  restartPolicy: Never\n"),
    );
    node.write_manifest(
        "onfail.yaml",
        &pod_yaml("onfail", "echo done").replace("spec:\n", "spec:\n  restartPolicy: OnFailure\n"),
    );
    let never = node.wait_for("never to fail", Duration::from_secs(20), || {
        node.pod("never")
            .filter(|p| p["status"]["phase"] == "Failed")
    });
    let t = &container(&never, "main")["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert_eq!(container(&never, "main")["restartCount"], 0);
    let ok = node.wait_for("onfail to succeed", Duration::from_secs(20), || {
        node.pod("onfail")
            .filter(|p| p["status"]["phase"] == "Succeeded")
    });
    assert_eq!(
        container(&ok, "main")["state"]["terminated"]["reason"],
        "Completed"
    );
    let table = node.skiff_ok(&["get", "pods"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("onfail") && l.contains("Completed")),
        "{table}"
    );
    // A finished pod gives its sandbox back.
    let uid = ok["metadata"]["uid"].as_str().unwrap();
    node.wait_for(
        "sandbox of finished pod removed",
        Duration::from_secs(5),
        || (!node.run.join("netns").join(uid).exists()).then_some(()),
    );
}

#[test]
#[ignore = "needs root"]
fn removal_stops_gracefully_then_kills_after_the_grace_period() {
    require_root();
    let node = Node::start();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: graceful
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: polite
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 0.1; done']
  - name: stubborn
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
"#
    );
    node.write_manifest("graceful.yaml", &yaml);
    node.wait_running("graceful");
    let t0 = std::time::Instant::now();
    node.remove_manifest("graceful.yaml");
    // While terminating: the polite one exits 0 on SIGTERM, the stubborn one (PID 1 ignoring TERM) waits.
    let pod = node.wait_for(
        "polite container to exit on SIGTERM",
        Duration::from_secs(10),
        || {
            let p = node.pod("graceful")?;
            let polite = container(&p, "polite");
            (polite["state"]["terminated"]["exitCode"] == 0).then_some(p)
        },
    );
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    node.wait_gone("graceful");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "removal took {took:?}");
    let events = node.skiff_ok(&["get", "events"]);
    assert!(events.contains("Killing"), "{events}");
}

#[test]
#[ignore = "needs root"]
fn manifest_edit_replaces_the_pod_and_removal_leaves_nothing_behind() {
    require_root();
    let node = Node::start();
    node.write_manifest("app.yaml", &pod_yaml("app", "echo v1; exec sleep 3600"));
    let v1 = node.wait_running("app");
    let uid1 = v1["metadata"]["uid"].as_str().unwrap().to_string();
    node.write_manifest("app.yaml", &pod_yaml("app", "echo v2; exec sleep 3600"));
    let v2 = node.wait_for("the edited pod", Duration::from_secs(30), || {
        let p = node.pod("app")?;
        let ready = container(&p, "main")["ready"] == true;
        (p["metadata"]["uid"] != uid1.as_str() && ready).then_some(p)
    });
    assert_eq!(node.skiff_ok(&["logs", "app"]), "v2\n");
    assert_ne!(v2["metadata"]["uid"], v1["metadata"]["uid"]);
    // The old pod's state is gone.
    node.wait_for("old pod cleaned up", Duration::from_secs(10), || {
        (!node.root.join("pods").join(&uid1).exists()).then_some(())
    });
    // Editor files are ignored.
    node.write_manifest("app.yaml~", &pod_yaml("backup", "sleep 1"));
    node.write_manifest(".hidden.yaml", &pod_yaml("hidden", "sleep 1"));
    std::fs::create_dir(node.manifests.join("sub")).unwrap();
    std::fs::write(
        node.manifests.join("sub/p.yaml"),
        pod_yaml("nested", "sleep 1"),
    )
    .unwrap();
    node.remove_manifest("app.yaml");
    node.wait_gone("app");
    assert_eq!(node.pods().len(), 0, "ignored files made pods");
    let left = node.leftovers();
    assert!(left.is_empty(), "leftovers after delete: {left:#?}");
}

#[test]
#[ignore = "needs root"]
fn bad_manifests_are_reported_and_running_pods_keep_running() {
    require_root();
    let node = Node::start();
    node.write_manifest("good.yaml", &pod_yaml("good", "exec sleep 3600"));
    let good = node.wait_running("good");
    let uid = good["metadata"]["uid"].clone();
    node.write_manifest("broken.yaml", "apiVersion: v1\nkind: Pod\n  metadata: [");
    node.write_manifest("badname.yaml", &pod_yaml("Bad_Name", "sleep 1"));
    node.write_manifest(
        "gizmo.yaml",
        "apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n",
    );
    node.write_manifest(
        "typo.yaml",
        &pod_yaml("typo", "sleep 1").replace("imagePullPolicy", "imagePullPolcy"),
    );
    node.write_manifest("dup.yaml", &pod_yaml("good", "sleep 1"));
    let events = node.wait_for("events for every bad file", Duration::from_secs(10), || {
        let e = node.skiff_ok(&["get", "events", "-A"]);
        let all = [
            "broken.yaml",
            "Bad_Name",
            "Gizmo",
            "imagePullPolcy",
            "duplicate pod name",
        ]
        .iter()
        .all(|w| e.contains(w));
        all.then_some(e)
    });
    assert!(events.contains("invalid YAML"), "{events}");
    // The API explains a refused pod.
    let out = node.skiff(&["get", "pod", "typo"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown field \"spec.containers[0].imagePullPolcy\""),
        "{out:?}"
    );
    // The good pod's own file turns invalid: it keeps running, unchanged.
    node.write_manifest("good.yaml", "kind: Pod\nspec: [");
    node.wait_for("the error on good.yaml", Duration::from_secs(10), || {
        node.skiff_ok(&["get", "events", "-A"])
            .contains("good.yaml")
            .then_some(())
    });
    let still = node.pod("good").unwrap();
    assert_eq!(still["metadata"]["uid"], uid);
    assert_eq!(container(&still, "main")["restartCount"], 0);
    assert_eq!(still["status"]["phase"], "Running");
    // A missing image waits with a clear reason; nothing else is disturbed.
    node.write_manifest(
        "noimg.yaml",
        &pod_yaml("noimg", "sleep 1").replace(IMAGE, "example.com/nope:1"),
    );
    let p = node.wait_for("ErrImageNeverPull", Duration::from_secs(10), || {
        let p = node.pod("noimg")?;
        (container(&p, "main")["state"]["waiting"]["reason"] == "ErrImageNeverPull").then_some(p)
    });
    let msg = container(&p, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("example.com/nope:1") && msg.contains("not present"),
        "{msg}"
    );
    assert_eq!(p["status"]["phase"], "Pending");
}

#[test]
#[ignore = "needs root"]
fn pod_waits_for_a_missing_image_and_starts_once_it_is_imported() {
    require_root();
    let mut node = Node::new();
    node.start_daemon();
    node.write_manifest("later.yaml", &pod_yaml("later", "exec sleep 3600"));
    node.wait_for("ErrImageNeverPull", Duration::from_secs(10), || {
        let p = node.pod("later")?;
        (container(&p, "main")["state"]["waiting"]["reason"] == "ErrImageNeverPull").then_some(())
    });
    node.import_image();
    let images = node.skiff_ok(&["images"]);
    assert!(
        images.contains("skiff.test/busybox") && images.contains("latest"),
        "{images}"
    );
    node.wait_running("later");
}

#[test]
#[ignore = "needs root"]
fn crash_of_skiffd_keeps_containers_and_records_exits_that_happened_meanwhile() {
    require_root();
    let mut node = Node::start();
    node.write_manifest("steady.yaml", &pod_yaml("steady", "exec sleep 3600"));
    node.write_manifest(
        "ender.yaml",
        &pod_yaml("ender", "sleep 4; exit 5").replace("spec:\n", "spec:\n  restartPolicy: Never\n"),
    );
    let steady = node.wait_running("steady");
    let ender = node.wait_running("ender");
    let steady_id = container(&steady, "main")["containerID"].clone();
    let ender_uid = ender["metadata"]["uid"].as_str().unwrap().to_string();
    node.kill_daemon();
    // While skiffd is down, the ender's container exits and its shim records it.
    let dir = node.root.join("pods").join(&ender_uid).join("containers");
    node.wait_for(
        "the exit record written by the shim",
        Duration::from_secs(15),
        || {
            std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .any(|e| e.path().join("exit.json").exists())
                .then_some(())
        },
    );
    node.start_daemon();
    let again = node.wait_running("steady");
    let c = container(&again, "main");
    assert_eq!(
        c["containerID"], steady_id,
        "the running container was replaced"
    );
    assert_eq!(c["restartCount"], 0);
    assert_eq!(again["metadata"]["uid"], steady["metadata"]["uid"]);
    let ended = node.wait_for(
        "ender Failed with its exit code",
        Duration::from_secs(10),
        || {
            node.pod("ender")
                .filter(|p| p["status"]["phase"] == "Failed")
        },
    );
    assert_eq!(
        container(&ended, "main")["state"]["terminated"]["exitCode"],
        5
    );
    assert_eq!(container(&ended, "main")["restartCount"], 0);
    // And a pod removed while skiffd was down is cleaned up when it comes back.
    node.kill_daemon();
    node.remove_manifest("steady.yaml");
    node.start_daemon();
    node.wait_gone("steady");
    node.wait_for("steady's state removed", Duration::from_secs(10), || {
        let uid = steady["metadata"]["uid"].as_str().unwrap();
        (!node.root.join("pods").join(uid).exists()).then_some(())
    });
}

#[test]
#[ignore = "needs root"]
fn containers_get_safe_defaults_and_no_leaked_descriptors() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "safe.yaml",
        &pod_yaml(
            "safe",
            "echo fds $(ls /proc/self/fd | tr '\\n' ' '); grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
             cat /proc/kcore >/dev/null 2>&1 && echo kcore-readable; \
             (echo 1 > /proc/sys/kernel/panic) 2>/dev/null && echo proc-sys-writable; \
             ulimit -n; exec sleep 3600",
        ),
    );
    node.wait_running("safe");
    let logs = node.wait_for("the checks to print", Duration::from_secs(10), || {
        let l = node.skiff_ok(&["logs", "safe"]);
        l.contains("NoNewPrivs").then_some(l)
    });
    // 0-2 plus the directory `ls` itself opened: nothing of skiffd or the shim.
    assert!(logs.contains("fds 0 1 2 3\n"), "{logs}");
    // Docker's default capability set (CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP).
    assert!(logs.contains("CapEff:\t00000000a80425fb"), "{logs}");
    assert!(logs.contains("NoNewPrivs:\t1"), "{logs}");
    assert!(!logs.contains("kcore-readable"), "{logs}");
    assert!(!logs.contains("proc-sys-writable"), "{logs}");
    let nofile: u64 = logs
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("ulimit -n output");
    let host_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1;
    assert!(
        nofile <= host_hard,
        "container nofile {nofile} above host hard limit {host_hard}"
    );
    // An exec'd process is just as clean.
    let fds = node.skiff_ok(&["exec", "safe", "--", "ls", "/proc/self/fd"]);
    assert_eq!(
        fds.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "1", "2", "3"],
        "{fds}"
    );
}

#[test]
#[ignore = "needs root"]
fn logs_follow_streams_until_the_container_ends() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "ticker.yaml",
        &pod_yaml(
            "ticker",
            "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done",
        )
        .replace("spec:\n", "spec:\n  restartPolicy: Never\n"),
    );
    node.wait_for("ticker to start", Duration::from_secs(20), || {
        let p = node.pod("ticker")?;
        container(&p, "main")["state"]["running"]
            .is_object()
            .then_some(())
    });
    let out = node.skiff_ok(&["logs", "-f", "ticker"]);
    let ticks: Vec<&str> = out.lines().collect();
    assert_eq!(
        ticks,
        vec!["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"],
        "{out}"
    );
    let ts_out = node.skiff_ok(&["logs", "ticker", "--timestamps", "--tail", "1"]);
    let (stamp, rest) = ts_out.trim().split_once(' ').unwrap();
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{ts_out}");
    assert_eq!(rest, "tick 6");
}
