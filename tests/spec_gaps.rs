//! Root tests for pod spec fields that published manifests use (issue 16): termination
//! messages, node selection and admission, privileged devices, AppArmor.

mod common;

use std::time::Duration;

use common::{IMAGE, Node, require_root};
use serde_json::Value;

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no status for container {name} in {pod}"))
}

/// A container named `name` running `script` under sh, with extra YAML lines (indented 4).
fn container_yaml(name: &str, script: &str, extra: &str) -> String {
    let mut y = format!(
        "  - name: {name}\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {script:?}]\n"
    );
    for l in extra.lines() {
        y.push_str(&format!("    {l}\n"));
    }
    y
}

/// A pod with `containers` (from [`container_yaml`]) and extra spec lines (indented 2).
fn pod(name: &str, spec_extra: &str, containers: &[String]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n"
    );
    for l in spec_extra.lines() {
        y.push_str(&format!("  {l}\n"));
    }
    y.push_str("  containers:\n");
    for c in containers {
        y.push_str(c);
    }
    y
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

/// Waits until the pod's phase is `phase`; returns the pod.
fn wait_phase(node: &Node, name: &str, phase: &str) -> Value {
    node.wait_for(
        &format!("pod {name} {phase}"),
        Duration::from_secs(40),
        || {
            let p = node.pod(name)?;
            (p["status"]["phase"] == phase).then_some(p)
        },
    )
}

#[test]
fn termination_messages_from_a_custom_path_and_from_the_log() {
    if !require_root() {
        return;
    }
    let node = Node::start();
    let many = "i=1; while [ $i -le 100 ]; do echo line $i; i=$((i+1)); done";
    node.write_manifest(
        "tm.yaml",
        &pod(
            "tm",
            "restartPolicy: Never",
            &[
                // Another path, written by a non-root user, and a failure.
                container_yaml(
                    "custom",
                    "echo -n bye > /tmp/msg; exit 3",
                    "terminationMessagePath: /tmp/msg\nsecurityContext: {runAsUser: 1000}",
                ),
                // Nothing in the file and failed: the end of the log.
                container_yaml(
                    "fallback",
                    &format!("{many}; exit 1"),
                    "terminationMessagePolicy: FallbackToLogsOnError",
                ),
                // Nothing in the file but succeeded: no message.
                container_yaml(
                    "fine",
                    "echo x",
                    "terminationMessagePolicy: FallbackToLogsOnError",
                ),
                // The default policy never reads the log.
                container_yaml("quiet", "echo x; exit 1", ""),
            ],
        ),
    );
    let p = wait_phase(&node, "tm", "Failed");
    let t = |c: &str| container(&p, c)["state"]["terminated"].clone();
    assert_eq!(t("custom")["message"], "bye", "{p}");
    assert_eq!(t("custom")["exitCode"], 3);
    let want: String = (21..=100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(t("fallback")["message"], want.as_str());
    assert!(t("fine")["message"].is_null(), "{}", t("fine"));
    assert!(t("quiet")["message"].is_null(), "{}", t("quiet"));
    // describe shows it as kubectl does.
    let d = node.skiff_ok(&["describe", "pod", "tm"]);
    assert!(d.contains("Message:") && d.contains("bye"), "{d}");
    remove_all_and_check_leftovers(&node);
}
