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
#[ignore = "needs root"]
fn termination_messages_from_a_custom_path_and_from_the_log() {
    require_root();
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

/// `--node-labels` reach the Node object next to the well-known labels; pods whose
/// nodeSelector or required node affinity match run, the others are `Failed` with the
/// kubelet's reason and message; so are pods asking for an extended resource the node lacks.
#[test]
#[ignore = "needs root"]
fn node_selection_and_extended_resources_at_admission() {
    require_root();
    let mut node = Node::new();
    node.extra_flags(&["--node-labels", "disktype=ssd,example.com/rack=r7"]);
    node.start_daemon();
    node.import_image();
    let n = node.skiff_ok(&["get", "node", "test-node", "-o", "json"]);
    let n: Value = serde_json::from_str(&n).unwrap();
    let labels = &n["metadata"]["labels"];
    assert_eq!(labels["disktype"], "ssd", "{labels}");
    assert_eq!(labels["example.com/rack"], "r7");
    assert_eq!(labels["kubernetes.io/hostname"], "test-node");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels["kubernetes.io/arch"].is_string());

    let sleeper = || vec![container_yaml("main", "exec sleep 100000", "")];
    let affinity = |expr: &str| {
        format!(
            "affinity:\n  nodeAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n      nodeSelectorTerms:\n      - matchExpressions: [{expr}]\n"
        )
    };
    node.write_manifest(
        "fits.yaml",
        &pod("fits", "nodeSelector: {disktype: ssd}", &sleeper()),
    );
    node.write_manifest(
        "aff.yaml",
        &pod(
            "aff",
            &affinity("{key: example.com/rack, operator: In, values: [r1, r7]}, {key: gpu, operator: DoesNotExist}"),
            &sleeper(),
        ),
    );
    node.write_manifest(
        "nofit.yaml",
        &pod("nofit", "nodeSelector: {disktype: hdd}", &sleeper()),
    );
    node.write_manifest(
        "noaff.yaml",
        &pod(
            "noaff",
            &affinity("{key: kubernetes.io/hostname, operator: NotIn, values: [test-node]}"),
            &sleeper(),
        ),
    );
    node.write_manifest(
        "dongle.yaml",
        &pod(
            "dongle",
            "",
            &[container_yaml(
                "main",
                "exec sleep 100000",
                "resources: {limits: {example.com/dongle: 3}}",
            )],
        ),
    );
    node.wait_running("fits");
    node.wait_running("aff");
    for name in ["nofit", "noaff"] {
        let p = wait_phase(&node, name, "Failed");
        assert_eq!(p["status"]["reason"], "NodeAffinity", "{p}");
        assert_eq!(
            p["status"]["message"],
            "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
        );
    }
    let p = wait_phase(&node, "dongle", "Failed");
    assert_eq!(p["status"]["reason"], "OutOfexample.com/dongle", "{p}");
    assert_eq!(
        p["status"]["message"],
        "Pod was rejected: Node didn't have enough resource: example.com/dongle, requested: 3, used: 0, capacity: 0"
    );
    // The refusal is an event too, and the pods that fit are untouched.
    let ev = node.skiff_ok(&["get", "events"]);
    assert!(
        ev.contains("NodeAffinity") && ev.contains("OutOfexample.com/dongle"),
        "{ev}"
    );
    assert_eq!(node.pod("fits").unwrap()["status"]["phase"], "Running");
    remove_all_and_check_leftovers(&node);
}

/// A bad `--node-labels` stops skiffd at start with the kubelet's complaint.
#[test]
fn node_labels_in_the_kubernetes_namespace_are_refused() {
    let out = std::process::Command::new(common::bin("skiffd"))
        .args([
            "--node-labels",
            "node-role.kubernetes.io/master=",
            "--root-dir",
            "/nonexistent/skiff-test",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown 'kubernetes.io' or 'k8s.io' labels"),
        "{err}"
    );
}

/// AppArmor asked for (annotation or securityContext, RuntimeDefault too) on a host without
/// it: refused with the kubelet's reason and message. `Unconfined` runs.
#[test]
#[ignore = "needs root"]
fn apparmor_without_host_support_is_refused() {
    require_root();
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.starts_with('Y'));
    if enabled {
        eprintln!("SKIPPED: this host has AppArmor; the refusal is for hosts without it");
        return;
    }
    let node = Node::start();
    let sleeper = |extra: &str| vec![container_yaml("main", "exec sleep 100000", extra)];
    node.write_manifest(
        "annot.yaml",
        &pod("annot", "", &sleeper("")).replace(
            "  name: annot\n",
            "  name: annot\n  annotations:\n    container.apparmor.security.beta.kubernetes.io/main: runtime/default\n",
        ),
    );
    node.write_manifest(
        "field.yaml",
        &pod("field", "", &sleeper("securityContext: {appArmorProfile: {type: Localhost, localhostProfile: k8s-deny-write}}")),
    );
    node.write_manifest(
        "free.yaml",
        &pod(
            "free",
            "securityContext: {appArmorProfile: {type: Unconfined}}",
            &sleeper(""),
        ),
    );
    for name in ["annot", "field"] {
        let p = wait_phase(&node, name, "Failed");
        assert_eq!(p["status"]["reason"], "AppArmor", "{p}");
        assert_eq!(
            p["status"]["message"],
            "Pod was rejected: Cannot enforce AppArmor: AppArmor is not enabled on the host"
        );
    }
    node.wait_running("free");
    remove_all_and_check_leftovers(&node);
}

/// A privileged container gets the host's device nodes in its `/dev` (as runc/containerd
/// give it); an unprivileged one only the default few.
#[test]
#[ignore = "needs root"]
fn privileged_containers_see_the_host_devices() {
    require_root();
    // A character device every host has that is not among a container's defaults.
    let dev = [
        "/dev/loop-control",
        "/dev/kmsg",
        "/dev/tty0",
        "/dev/mem",
        "/dev/cpu_dma_latency",
    ]
    .into_iter()
    .find(|p| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
    })
    .expect("a host character device");
    let node = Node::start();
    let sleeper = |extra: &str| vec![container_yaml("main", "exec sleep 100000", extra)];
    node.write_manifest(
        "priv.yaml",
        &pod("priv", "", &sleeper("securityContext: {privileged: true}")),
    );
    node.write_manifest("plain.yaml", &pod("plain", "", &sleeper("")));
    node.wait_running("priv");
    node.wait_running("plain");
    let check = format!("test -c {dev} && echo yes || echo no");
    let priv_out = node.skiff_ok(&["exec", "priv", "--", "sh", "-c", &check]);
    assert_eq!(
        priv_out, "yes\n",
        "{dev} missing in the privileged container"
    );
    let plain = node.skiff_ok(&["exec", "plain", "--", "sh", "-c", &check]);
    assert_eq!(plain, "no\n", "{dev} present in an unprivileged container");
    // The host's major:minor, and still the container's own /dev/pts and /dev/null.
    let host = std::fs::metadata(dev)
        .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
        .unwrap();
    let want = format!("{:x}:{:x}\n", libc::major(host), libc::minor(host));
    assert_eq!(
        node.skiff_ok(&["exec", "priv", "--", "stat", "-c", "%t:%T", dev]),
        want
    );
    assert_eq!(
        node.skiff_ok(&[
            "exec",
            "priv",
            "--",
            "sh",
            "-c",
            "echo x > /dev/null && test -d /dev/pts && echo ok"
        ]),
        "ok\n"
    );
    remove_all_and_check_leftovers(&node);
}

/// A gRPC health server (`grpc.health.v1.Health/Check`) listening in a pod's network
/// namespace: `service` "app" answers with the status in `state` (1 SERVING, 2 NOT_SERVING),
/// any other service NOT_FOUND. Runs on a thread of its own until the test ends.
fn grpc_health_server(
    ns: &std::path::Path,
    port: u16,
    state: std::sync::Arc<std::sync::atomic::AtomicI32>,
) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Bytes, Frame};
    use prost::Message;
    use skiff::pod::grpc_health::{HealthCheckRequest, HealthCheckResponse, frame, unframe};

    let listener = common::in_netns(ns, move || {
        std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind in the pod's netns")
    });
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                                assert_eq!(req.headers()["content-type"], "application/grpc");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let asked =
                                    HealthCheckRequest::decode(unframe(&body).unwrap()).unwrap();
                                let mut trailers = hyper::HeaderMap::new();
                                let mut frames = Vec::new();
                                if asked.service == "app" {
                                    let status = state.load(std::sync::atomic::Ordering::SeqCst);
                                    frames.push(Frame::data(Bytes::from(frame(
                                        &HealthCheckResponse { status },
                                    ))));
                                    trailers.insert("grpc-status", "0".parse().unwrap());
                                } else {
                                    trailers.insert("grpc-status", "5".parse().unwrap());
                                    trailers
                                        .insert("grpc-message", "unknown service".parse().unwrap());
                                }
                                frames.push(Frame::trailers(trailers));
                                let body = StreamBody::new(tokio_stream::iter(
                                    frames.into_iter().map(Ok::<_, std::convert::Infallible>),
                                ));
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/grpc")
                                        .body(body)
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
    });
}

/// `grpc` probes speak the gRPC health checking protocol to the pod: ready while the
/// server says SERVING for the probe's service, not ready on NOT_SERVING, and a liveness
/// probe for a service the server does not know fails and restarts the container.
#[test]
#[ignore = "needs root"]
fn grpc_probes_use_the_health_checking_protocol() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "grpc.yaml",
        &pod(
            "grpc",
            "",
            &[container_yaml(
                "main",
                "exec sleep 100000",
                "readinessProbe: {grpc: {port: 9555, service: app}, periodSeconds: 1, failureThreshold: 1}",
            )],
        ),
    );
    let p = node.wait_for(
        "grpc pod running (not ready)",
        Duration::from_secs(30),
        || {
            let p = node.pod("grpc")?;
            (container(&p, "main")["state"]["running"].is_object()).then_some(p)
        },
    );
    assert_eq!(
        container(&p, "main")["ready"],
        false,
        "ready without a server: {p}"
    );
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let state = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(1));
    grpc_health_server(&node.run.join("netns").join(&uid), 9555, state.clone());
    node.wait_running("grpc");
    state.store(2, std::sync::atomic::Ordering::SeqCst);
    node.wait_for(
        "grpc pod not ready on NOT_SERVING",
        Duration::from_secs(20),
        || {
            let p = node.pod("grpc")?;
            (container(&p, "main")["ready"] == false).then_some(())
        },
    );
    let ev = node.skiff_ok(&["get", "events"]);
    assert!(
        ev.contains("service unhealthy (responded with \"NOT_SERVING\")"),
        "{ev}"
    );
    state.store(1, std::sync::atomic::Ordering::SeqCst);
    node.wait_running("grpc");
    // The same server, asked about a service it does not know, by a liveness probe.
    node.write_manifest(
        "grpc.yaml",
        &pod(
            "grpc2",
            "",
            &[container_yaml(
                "main",
                "exec sleep 100000",
                "livenessProbe: {grpc: {port: 9555, service: nope}, periodSeconds: 1, failureThreshold: 1}",
            )],
        ),
    );
    let p = node.wait_for("grpc2 running", Duration::from_secs(30), || {
        let p = node.pod("grpc2")?;
        (container(&p, "main")["state"]["running"].is_object()).then_some(p)
    });
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    grpc_health_server(&node.run.join("netns").join(&uid), 9555, state.clone());
    // The probe may already have failed (and restarted the container) on a refused connection
    // before the server listened; what counts is a failure the server itself answered.
    node.wait_for(
        "grpc2's liveness probe failing with the server's NOT_FOUND (code = 5)",
        Duration::from_secs(40),
        || {
            let ev = node.skiff_ok(&["get", "events"]);
            ev.lines()
                .any(|l| l.contains("Liveness probe failed") && l.contains("code = 5"))
                .then_some(())
        },
    );
    node.wait_for(
        "grpc2 restarted by its liveness probe",
        Duration::from_secs(40),
        || {
            let p = node.pod("grpc2")?;
            (container(&p, "main")["restartCount"].as_i64() >= Some(1)).then_some(())
        },
    );
    remove_all_and_check_leftovers(&node);
}

/// Pod-level `spec.resources` land on the pod's cgroup (v1 or v2, whichever the host uses),
/// the parent of its containers' cgroups, and decide the QoS class.
#[test]
#[ignore = "needs root"]
fn pod_level_resources_limit_the_pod_cgroup() {
    require_root();
    let node = Node::start();
    node.write_manifest(
        "plr.yaml",
        &pod(
            "plr",
            "resources: {requests: {cpu: 250m, memory: 32Mi}, limits: {cpu: 500m, memory: 32Mi}}",
            &[
                container_yaml("main", "exec sleep 100000", ""),
                container_yaml("side", "exec sleep 100000", ""),
            ],
        ),
    );
    let p = node.wait_running("plr");
    assert_eq!(p["status"]["qosClass"], "Burstable", "{}", p["status"]);
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let base = std::path::Path::new("/sys/fs/cgroup");
    let read = |rel: String| {
        std::fs::read_to_string(base.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    if base.join("cgroup.controllers").exists() {
        assert_eq!(
            read(format!("skiff/pod{uid}/memory.max")).trim(),
            (32 << 20).to_string()
        );
        assert_eq!(
            read(format!("skiff/pod{uid}/cpu.max")).trim(),
            "50000 100000"
        );
    } else {
        assert_eq!(
            read(format!("memory/skiff/pod{uid}/memory.limit_in_bytes")).trim(),
            (32 << 20).to_string()
        );
        assert_eq!(
            read(format!("cpu/skiff/pod{uid}/cpu.cfs_quota_us")).trim(),
            "50000"
        );
    }
    remove_all_and_check_leftovers(&node);
}
