//! Root tests that run manifests published in the Kubernetes documentation (under
//! `tests/examples/`, each naming its source page at the top) with only the images swapped for
//! the test image, and check that the pod does what the page says it does.

mod common;

use std::time::Duration;

use common::{IMAGE, Node, require_root};

/// The manifest with every `image:` swapped for the test image (never pulled).
fn swapped(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let body = line.trim_start().trim_start_matches("- ");
        if body.starts_with("imagePullPolicy:") {
            continue;
        }
        if let Some(rest) = body.strip_prefix("image:") {
            let indent = line.len() - body.len();
            out.push_str(&line[..line.len() - body.len()]);
            out.push_str(&format!("image: {IMAGE}\n"));
            out.push_str(&" ".repeat(indent));
            out.push_str("imagePullPolicy: Never\n");
            let _ = rest;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Starts `file` from `tests/examples/` on `node`.
fn run_example(node: &Node, file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    node.write_manifest(file, &swapped(&text));
}

/// Waits until the log of `pod` (container `c`) satisfies `ok`; returns it.
fn wait_log(node: &Node, pod: &str, c: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    node.wait_for(
        &format!("{what} in the log of {pod}/{c}"),
        Duration::from_secs(30),
        || {
            let out = node.skiff(&["logs", pod, "-c", c]);
            let l = String::from_utf8_lossy(&out.stdout).into_owned();
            ok(&l).then_some(l)
        },
    )
}

fn exec_ok(node: &Node, pod: &str, script: &str) -> String {
    node.skiff_ok(&["exec", pod, "--", "sh", "-c", script])
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

#[test]
fn swapping_images_keeps_the_indentation() {
    let text = "spec:\n  containers:\n  - name: a\n    image: nginx\n    imagePullPolicy: Always\n  - image: busybox\n    name: b\n";
    assert_eq!(
        swapped(text),
        format!(
            "spec:\n  containers:\n  - name: a\n    image: {IMAGE}\n    imagePullPolicy: Never\n  - image: {IMAGE}\n    imagePullPolicy: Never\n    name: b\n"
        )
    );
}

/// downwardAPI volume items with `resourceFieldRef` and a divisor: one file per item, each
/// with its own value, printed one per line (issue 16 saw `2501256432`).
#[test]
#[ignore = "needs root"]
fn downward_api_volume_resources() {
    require_root();
    let node = Node::start();
    run_example(&node, "dapi-volume-resources.yaml");
    let pod = "kubernetes-downwardapi-volume-example-2";
    node.wait_running(pod);
    let files = exec_ok(
        &node,
        pod,
        "for f in cpu_limit cpu_request mem_limit mem_request; do printf '%s=[%s]\\n' $f \"$(cat /etc/podinfo/$f)\"; done",
    );
    assert_eq!(
        files,
        "cpu_limit=[250]\ncpu_request=[125]\nmem_limit=[64]\nmem_request=[32]\n"
    );
    wait_log(
        &node,
        pod,
        "client-container",
        "the four values one per line",
        |l| l.contains("\n250\n125\n64\n32"),
    );
    remove_all_and_check_leftovers(&node);
}

/// The termination message a container writes to `/dev/termination-log` is reported in its
/// terminated state (it is restarted, so in `lastState` after that).
#[test]
#[ignore = "needs root"]
fn termination_message_from_the_file() {
    require_root();
    let node = Node::start();
    run_example(&node, "termination.yaml");
    let t = node.wait_for(
        "termination-demo to terminate",
        Duration::from_secs(40),
        || {
            let p = node.pod("termination-demo")?;
            let st = &p["status"]["containerStatuses"][0];
            [&st["state"]["terminated"], &st["lastState"]["terminated"]]
                .into_iter()
                .find(|t| t.is_object())
                .cloned()
        },
    );
    assert_eq!(t["message"], "Sleep expired\n", "{t}");
    assert_eq!(t["exitCode"], 0, "{t}");
    remove_all_and_check_leftovers(&node);
}

/// A pod asking for an extended resource the node does not advertise is refused at
/// admission, as a kubelet without the device plugin does.
#[test]
#[ignore = "needs root"]
fn extended_resource_the_node_lacks() {
    require_root();
    let node = Node::start();
    run_example(&node, "extended-resource-pod.yaml");
    let p = node.wait_for(
        "extended-resource-demo Failed",
        Duration::from_secs(30),
        || {
            let p = node.pod("extended-resource-demo")?;
            (p["status"]["phase"] == "Failed").then_some(p)
        },
    );
    assert_eq!(
        p["status"]["reason"], "OutOfexample.com/dongle",
        "{}",
        p["status"]
    );
    remove_all_and_check_leftovers(&node);
}

/// The sidecar page's logshipper: a restartable init container that starts first, keeps
/// running beside the app and ships (prints) what the app writes to the shared volume;
/// `skiff get` counts it in READY as kubectl does.
#[test]
#[ignore = "needs root"]
fn sidecar_logshipper() {
    require_root();
    let node = Node::start();
    run_example(&node, "sidecar-logshipper.yaml");
    let pod = node.wait_running("myapp");
    let shipper = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(shipper["name"], "logshipper");
    assert!(shipper["state"]["running"].is_object(), "{shipper}");
    assert_eq!(shipper["started"], true, "{shipper}");
    let app = &pod["status"]["containerStatuses"][0];
    assert!(
        common::ts(&shipper["state"]["running"]["startedAt"])
            <= common::ts(&app["state"]["running"]["startedAt"]),
        "the sidecar started after the app: {pod}"
    );
    wait_log(&node, "myapp", "logshipper", "lines shipped", |l| {
        l.lines().filter(|l| *l == "logging").count() >= 2
    });
    let table = node.skiff_ok(&["get", "pod", "myapp"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("myapp") && l.contains(" 2/2 ") && l.contains("Running")),
        "{table}"
    );
    remove_all_and_check_leftovers(&node);
}
