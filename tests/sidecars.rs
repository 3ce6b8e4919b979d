//! Root tests of native sidecar containers (init containers with `restartPolicy: Always`):
//! start order, restarts, a Job-like pod that completes, termination order and a startup
//! probe gating the next container. Containers write what they do to a hostPath file, each
//! line stamped with the host's uptime, so the order is the one the containers saw.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{IMAGE, Node, require_root};
use serde_json::Value;

/// A container that appends `<uptime> <name> <what>` lines to /events/log.
fn container(name: &str, extra: &str, script: &str) -> String {
    let body = format!(
        "log() {{ read u _ < /proc/uptime; echo \"$u {name} $1\" >> /events/log; }}; log start; {script}"
    );
    format!(
        "  - name: {name}\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {body:?}]\n    volumeMounts: [{{name: events, mountPath: /events}}]\n{extra}"
    )
}

const SIDECAR: &str = "    restartPolicy: Always\n";

/// Runs until SIGTERM, then logs `term`, takes `linger` seconds and logs `exit`.
fn until_term(linger: &str) -> String {
    format!(
        "trap 'log term; sleep {linger}; log exit; exit 0' TERM; while true; do sleep 0.1; done"
    )
}

fn pod(name: &str, dir: &Path, head: &str, init: &[String], apps: &[String]) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{head}  initContainers:\n{}  containers:\n{}  volumes:\n  - name: events\n    hostPath: {{path: {}, type: DirectoryOrCreate}}\n",
        init.concat(),
        apps.concat(),
        dir.display()
    )
}

/// The events logged so far: (uptime, "name what").
fn events(dir: &Path) -> Vec<(f64, String)> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.split_once(' ')?;
            Some((t.parse().ok()?, rest.to_string()))
        })
        .collect()
}

fn names(ev: &[(f64, String)]) -> Vec<&str> {
    ev.iter().map(|(_, e)| e.as_str()).collect()
}

fn at(ev: &[(f64, String)], what: &str) -> f64 {
    ev.iter()
        .find(|(_, e)| e == what)
        .unwrap_or_else(|| panic!("no {what:?} in {ev:?}"))
        .0
}

fn events_dir(node: &Node, name: &str) -> PathBuf {
    node.dir().join("events").join(name)
}

fn init_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no init status for {name} in {pod}"))
}

fn condition(pod: &Value, type_: &str) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

/// The `skiff get pod` line of `name`.
fn table_line(node: &Node, name: &str) -> String {
    node.skiff_ok(&["get", "pod", name])
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "needs root"]
fn sidecars_start_in_their_turn_and_run_beside_the_app() {
    require_root();
    let node = Node::start();
    let dir = events_dir(&node, "order");
    let yaml = pod(
        "order",
        &dir,
        "  terminationGracePeriodSeconds: 5\n",
        &[
            container("setup", "", "sleep 0.5; log done"),
            container("proxy", SIDECAR, &until_term("0")),
            container("migrate", "", "sleep 0.5; log done"),
            container("shipper", SIDECAR, &until_term("0")),
        ],
        &[container("app", "", &until_term("0"))],
    );
    node.write_manifest("order.yaml", &yaml);
    let p = node.wait_running("order");
    let ev = node.wait_for("app to start", Duration::from_secs(10), || {
        let ev = events(&dir);
        ev.iter().any(|(_, e)| e == "app start").then_some(ev)
    });
    assert_eq!(
        names(&ev),
        vec![
            "setup start",
            "setup done",
            "proxy start",
            "migrate start",
            "migrate done",
            "shipper start",
            "app start"
        ]
    );
    for name in ["proxy", "shipper"] {
        let s = init_status(&p, name);
        assert!(s["state"]["running"].is_object(), "{s}");
        assert_eq!(s["started"], true, "{s}");
        assert_eq!(s["ready"], true, "{s}");
        assert_eq!(s["restartCount"], 0, "{s}");
    }
    let setup = init_status(&p, "setup");
    assert_eq!(setup["state"]["terminated"]["reason"], "Completed");
    assert_eq!(condition(&p, "Initialized"), "True");
    assert_eq!(condition(&p, "Ready"), "True");
    // kubectl's READY counts the sidecars.
    let line = table_line(&node, "order");
    assert!(line.contains(" 3/3 ") && line.contains("Running"), "{line}");
    let described = node.skiff_ok(&["describe", "pod", "order"]);
    assert!(described.contains("Started container proxy"), "{described}");
}

#[test]
#[ignore = "needs root"]
fn termination_stops_the_app_first_then_the_sidecars_last_declared_first() {
    require_root();
    let node = Node::start();
    let dir = events_dir(&node, "stop");
    let yaml = pod(
        "stop",
        &dir,
        "  terminationGracePeriodSeconds: 10\n",
        &[
            container("first", SIDECAR, &until_term("0")),
            container("second", SIDECAR, &until_term("0")),
        ],
        // The app takes a second to stop: the sidecars must wait for it.
        &[container("app", "", &until_term("1"))],
    );
    node.write_manifest("stop.yaml", &yaml);
    node.wait_running("stop");
    node.remove_manifest("stop.yaml");
    node.wait_gone("stop");
    let ev: Vec<_> = events(&dir)
        .into_iter()
        .filter(|(_, e)| !e.ends_with(" start"))
        .collect();
    assert_eq!(
        names(&ev),
        vec![
            "app term",
            "app exit",
            "second term",
            "second exit",
            "first term",
            "first exit"
        ]
    );
    assert!(
        at(&ev, "second term") >= at(&ev, "app term") + 1.0,
        "{ev:?}"
    );
    let events = node.skiff_ok(&["get", "events"]);
    assert!(events.contains("Stopping container second"), "{events}");
    assert!(node.leftovers().is_empty(), "{:?}", node.leftovers());
}

#[test]
#[ignore = "needs root"]
fn a_sidecar_that_exits_is_restarted_even_under_restart_policy_never() {
    require_root();
    let node = Node::start();
    let dir = events_dir(&node, "flaky");
    let yaml = pod(
        "flaky",
        &dir,
        "  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n",
        &[container("helper", SIDECAR, "sleep 1; exit 1")],
        &[container("app", "", "exec sleep 3600")],
    );
    node.write_manifest("flaky.yaml", &yaml);
    // Exits after a second, restarted at once, then backs off 10 s.
    let p = node.wait_for(
        "the sidecar in CrashLoopBackOff",
        Duration::from_secs(30),
        || {
            let p = node.pod("flaky")?;
            let s = init_status(&p, "helper");
            (s["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(p)
        },
    );
    let s = init_status(&p, "helper");
    assert!(s["restartCount"].as_i64().unwrap() >= 1, "{s}");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 1, "{s}");
    assert_eq!(p["status"]["phase"], "Running");
    let app = &p["status"]["containerStatuses"][0];
    assert!(app["state"]["running"].is_object(), "{app}");
    assert_eq!(app["restartCount"], 0);
    let ev = events(&dir);
    assert!(
        names(&ev).iter().filter(|e| **e == "helper start").count() >= 2,
        "{ev:?}"
    );
    assert_eq!(
        names(&ev).iter().filter(|e| **e == "app start").count(),
        1,
        "{ev:?}"
    );
    // After the back-off it runs again.
    let p = node.wait_for("the second restart", Duration::from_secs(30), || {
        let p = node.pod("flaky")?;
        (init_status(&p, "helper")["restartCount"].as_i64()? >= 2).then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Running");
    let line = table_line(&node, "flaky");
    assert!(line.contains("Running"), "{line}");
}

#[test]
#[ignore = "needs root"]
fn a_job_like_pod_completes_by_its_app_while_the_sidecar_ran() {
    require_root();
    let node = Node::start();
    for (name, code, phase) in [("job-ok", 0, "Succeeded"), ("job-bad", 2, "Failed")] {
        let dir = events_dir(&node, name);
        let yaml = pod(
            name,
            &dir,
            "  restartPolicy: Never\n  terminationGracePeriodSeconds: 5\n",
            // The sidecar ships what the job writes; it exits 0 on SIGTERM.
            &[container(
                "shipper",
                SIDECAR,
                "trap 'log term; exit 0' TERM; touch /events/out; tail -f /events/out & wait",
            )],
            &[container(
                "work",
                "",
                &format!(
                    "for i in 1 2 3; do echo line$i >> /events/out; done; sleep 1; log done; exit {code}"
                ),
            )],
        );
        node.write_manifest(&format!("{name}.yaml"), &yaml);
        let p = node.wait_for(&format!("{name} {phase}"), Duration::from_secs(30), || {
            let p = node.pod(name)?;
            (p["status"]["phase"] == phase).then_some(p)
        });
        let work = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(work["exitCode"], code, "{p}");
        let shipper = init_status(&p, "shipper");
        assert!(shipper["state"]["terminated"].is_object(), "{shipper}");
        assert_eq!(shipper["restartCount"], 0);
        let ev = events(&dir);
        assert_eq!(
            names(&ev),
            vec!["shipper start", "work start", "work done", "shipper term"],
            "the sidecar ran all along and was stopped after the job"
        );
        let shipped = node.skiff_ok(&["logs", name, "-c", "shipper"]);
        assert!(shipped.contains("line1\nline2\nline3"), "{shipped}");
        assert_eq!(condition(&p, "Ready"), "False");
        // A finished pod gives its sandbox back.
        let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
        node.wait_for("the sandbox removed", Duration::from_secs(5), || {
            (!node.run.join("netns").join(&uid).exists()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            node.pod(name).unwrap()["status"]["phase"],
            phase,
            "stays finished"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_sidecar_startup_probe_gates_the_next_container() {
    require_root();
    let node = Node::start();
    let dir = events_dir(&node, "gated");
    let probe = "    startupProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1, failureThreshold: 30}\n    readinessProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1}\n";
    let yaml = pod(
        "gated",
        &dir,
        "  terminationGracePeriodSeconds: 1\n",
        &[
            container(
                "slow",
                &format!("{SIDECAR}{probe}"),
                "sleep 3; touch /tmp/up; log up; exec sleep 3600",
            ),
            container("next", "", "log done"),
        ],
        &[container("app", "", "exec sleep 3600")],
    );
    node.write_manifest("gated.yaml", &yaml);
    // While the sidecar runs but has not started, the next init container waits.
    let p = node.wait_for(
        "the sidecar running, not started",
        Duration::from_secs(20),
        || {
            let p = node.pod("gated")?;
            let s = init_status(&p, "slow");
            (s["state"]["running"].is_object() && s["started"] == false).then_some(p)
        },
    );
    assert!(
        init_status(&p, "next")["state"]["waiting"].is_object(),
        "{p}"
    );
    assert_eq!(p["status"]["phase"], "Pending");
    let line = table_line(&node, "gated");
    assert!(
        line.contains("Init:0/2") && line.contains(" 0/2 "),
        "{line}"
    );
    let p = node.wait_running("gated");
    let ev = events(&dir);
    assert_eq!(
        names(&ev),
        vec![
            "slow start",
            "slow up",
            "next start",
            "next done",
            "app start"
        ]
    );
    assert!(
        at(&ev, "next start") >= at(&ev, "slow start") + 3.0,
        "{ev:?}"
    );
    let s = init_status(&p, "slow");
    assert_eq!(s["started"], true);
    node.wait_for("the sidecar ready", Duration::from_secs(10), || {
        let p = node.pod("gated")?;
        (init_status(&p, "slow")["ready"] == true && condition(&p, "Ready") == "True").then_some(())
    });
}

#[test]
#[ignore = "needs root"]
fn a_restarted_skiffd_adopts_running_sidecars_without_rerunning_anything() {
    require_root();
    let mut node = Node::start();
    let dir = events_dir(&node, "adopt");
    let yaml = pod(
        "adopt",
        &dir,
        "  terminationGracePeriodSeconds: 2\n",
        &[
            container("proxy", SIDECAR, &until_term("0")),
            container("setup", "", "log done"),
        ],
        &[container("app", "", &until_term("0"))],
    );
    node.write_manifest("adopt.yaml", &yaml);
    let before = node.wait_running("adopt");
    let id = |p: &Value, name: &str| init_status(p, name)["containerID"].clone();
    let proxy_id = id(&before, "proxy");
    node.kill_daemon();
    node.start_daemon();
    let after = node.wait_for(
        "the pod Running and Ready again",
        Duration::from_secs(30),
        || {
            let p = node.pod("adopt")?;
            (p["status"]["phase"] == "Running"
                && condition(&p, "Ready") == "True"
                && init_status(&p, "proxy")["started"] == true)
                .then_some(p)
        },
    );
    let proxy = init_status(&after, "proxy");
    assert_eq!(proxy["containerID"], proxy_id, "the sidecar was replaced");
    assert_eq!(proxy["restartCount"], 0);
    assert!(proxy["state"]["running"].is_object(), "{proxy}");
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"]
    );
    assert_eq!(
        init_status(&after, "setup")["state"]["terminated"]["exitCode"],
        0
    );
    // Nothing ran twice.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        names(&events(&dir)),
        vec!["proxy start", "setup start", "setup done", "app start"]
    );
    let line = table_line(&node, "adopt");
    assert!(line.contains(" 2/2 ") && line.contains("Running"), "{line}");
}
