//! Root tests for the `kubernetes` Service and service accounts (issue 16): the Service and its
//! variables in every pod, the API reached through its cluster IP from inside a pod, the
//! automounted token volume, the token accepted by the TLS API while its pod exists, and token
//! refresh at 80 % of its lifetime. Every request stays inside the test's throwaway netns.
//!
//! busybox's `wget` cannot finish a TLS handshake with skiffd (its TLS 1.2 client sends no
//! signature_algorithms extension, which rustls requires), so full HTTPS requests from a pod's
//! network are made with the host's curl run in the pod's network namespace; busybox `wget`
//! inside the pod shows that the API's TLS server answers on the cluster IP.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{IMAGE, Node, require_root};
use serde_json::Value;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A running node whose loopback is up (the TLS API listens there).
fn node_with(flags: &[&str]) -> Node {
    let mut node = Node::new();
    node.host_ip_cmd(&["link", "set", "lo", "up"]);
    node.extra_flags(flags);
    node.start_daemon();
    node.import_image();
    node
}

/// A long-running busybox pod; `extra` is appended to its spec (indented two spaces).
fn pod(name: &str, namespace: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'env | grep ^KUBERNETES_ | sort; sleep 3600']\n"
    )
}

/// The HTTP status of a GET on the node's TLS API (from inside its netns) with `token`.
fn api_status(node: &Node, token: &str, path: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.host.path().display()))
        .args([
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://127.0.0.1:6443{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `curl -sk` in the pod's network namespace (what a client in the pod sends): status and body.
fn curl_in_pod(node: &Node, pod: &Value, token: Option<&str>, url: &str) -> (String, String) {
    let uid = pod["metadata"]["uid"].as_str().expect("pod uid");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!(
        "--net={}",
        node.run.join("netns").join(uid).display()
    ))
    .args(["curl", "-sk", "-m", "5", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().to_string(), body.to_string())
}

/// `exec` that must succeed; its output.
fn exec_ok(node: &Node, pod: &str, script: &str) -> String {
    let (code, out) = node.exec_sh(pod, script);
    assert_eq!(code, 0, "{script}: {out}\n{}", node.log_tail(30));
    out
}

/// The claims of a JWT, without checking it.
fn claims(token: &str) -> Value {
    let body = token.trim().split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[test]
#[ignore = "needs root"]
fn kubernetes_service_env_and_api_through_the_cluster_ip() {
    require_root();
    let node = node_with(&[]);
    let svcs: Value =
        serde_json::from_str(&node.skiff_ok(&["get", "svc", "-A", "-o", "json"])).unwrap();
    let svc = svcs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "kubernetes")
        .cloned()
        .unwrap_or_else(|| panic!("no kubernetes Service: {svcs}"));
    assert_eq!(svc["metadata"]["namespace"], "default");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["name"], "https");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
    assert_eq!(svc["metadata"]["labels"]["component"], "apiserver");
    assert_eq!(svc["metadata"]["labels"]["provider"], "kubernetes");
    let eps: Value =
        serde_json::from_str(&node.skiff_ok(&["get", "endpoints", "kubernetes", "-o", "json"]))
            .unwrap();
    assert_eq!(eps["subsets"][0]["addresses"][0]["ip"], "10.244.0.1");
    assert_eq!(eps["subsets"][0]["ports"][0]["port"], 6443);

    // Another namespace, service links off: the kubernetes variables are there all the same.
    node.write_manifest(
        "other.yaml",
        &pod("other", "other", "  enableServiceLinks: false\n"),
    );
    node.write_manifest("web.yaml", &pod("web", "default", ""));
    let web = node.wait_running("web");
    let logs = node.wait_for("other's variables", Duration::from_secs(30), || {
        let out = node.skiff(&["logs", "-n", "other", "other"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("KUBERNETES_SERVICE_HOST").then_some(text)
    });
    for want in [
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "KUBERNETES_SERVICE_PORT=443",
        "KUBERNETES_SERVICE_PORT_HTTPS=443",
        "KUBERNETES_PORT=tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP_PROTO=tcp",
        "KUBERNETES_PORT_443_TCP_PORT=443",
        "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
    ] {
        assert!(logs.lines().any(|l| l == want), "{want} missing:\n{logs}");
    }

    // The API through the cluster IP, from the pod's network.
    let (code, version) = curl_in_pod(&node, &web, None, "https://10.96.0.1:443/version");
    assert_eq!(code, "200", "{version}");
    assert!(version.contains("gitVersion"), "{version}");
    // From inside the pod: busybox's TLS client reaches the API's TLS server (which refuses its
    // handshake, see the module docs): an answer, not a refused or timed-out connection.
    let (_, out) = node.exec_sh(
        "web",
        "timeout 10 wget -q -O - --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version 2>&1",
    );
    assert!(
        out.contains("gitVersion") || out.contains("TLS error from peer"),
        "no answer from the API on the cluster IP: {out}"
    );
}

#[test]
#[ignore = "needs root"]
fn no_kubernetes_service_without_the_tls_api() {
    require_root();
    let node = node_with(&["--api-listen", "none"]);
    let svcs = node.skiff_ok(&["get", "svc", "-A", "-o", "json"]);
    assert!(!svcs.contains("\"kubernetes\""), "{svcs}");
}

#[test]
#[ignore = "needs root"]
fn token_volume_is_mounted_and_accepted_until_the_pod_is_gone() {
    require_root();
    let node = node_with(&[]);
    node.write_manifest("sa.yaml", &pod("sa", "default", ""));
    let p = node.wait_running("sa");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let vol = p["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
        })
        .unwrap_or_else(|| panic!("no kube-api-access volume: {p}"));
    assert_eq!(vol["name"].as_str().unwrap().len(), 21);
    let mount = &p["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], SA_DIR);
    assert_eq!(mount["readOnly"], true);

    let modes = exec_ok(
        &node,
        "sa",
        &format!("cd {SA_DIR} && stat -L -c '%a %n' token ca.crt namespace && cat namespace"),
    );
    assert_eq!(
        modes.trim(),
        "644 token\n644 ca.crt\n644 namespace\ndefault",
        "{modes}"
    );
    let ca = exec_ok(&node, "sa", &format!("cat {SA_DIR}/ca.crt"));
    assert_eq!(
        ca,
        std::fs::read_to_string(node.root.join("pki/ca.crt")).unwrap()
    );
    let (code, out) = node.exec_sh("sa", &format!("touch {SA_DIR}/x"));
    assert_ne!(code, 0, "the token volume must be read-only: {out}");

    let token = exec_ok(&node, "sa", &format!("cat {SA_DIR}/token"));
    let c = claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:default:default");
    assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "sa");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], p["metadata"]["uid"]);
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3607
    );

    // From the pod's network, through the kubernetes Service, with the ca.crt of the volume.
    let ca_file = node.dir().join("sa-ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let out = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            node.run.join("netns").join(uid).display()
        ))
        .args(["curl", "-s", "-m", "5", "--cacert"])
        .arg(&ca_file)
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg("https://10.96.0.1:443/api/v1/namespaces/default/pods")
        .output()
        .expect("curl");
    let pods = String::from_utf8_lossy(&out.stdout);
    assert!(
        pods.contains("\"PodList\""),
        "verified TLS to the cluster IP with the token: {pods}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _) = curl_in_pod(
        &node,
        &p,
        Some("not-a-token"),
        "https://10.96.0.1/api/v1/pods",
    );
    assert_eq!(code, "401");
    // Read-only: no exec with a service account token.
    assert_eq!(
        api_status(
            &node,
            token.trim(),
            "/api/v1/namespaces/default/pods/sa/exec?command=true"
        ),
        "403"
    );
    assert_eq!(api_status(&node, token.trim(), "/api/v1/pods"), "200");
    // No Secret through a pod's token (the API serves Secrets now).
    assert_eq!(
        api_status(&node, token.trim(), "/api/v1/namespaces/default/secrets"),
        "403"
    );
    assert_eq!(api_status(&node, token.trim(), "/api/v1/secrets"), "403");
    // A token with its claims changed is refused.
    let parts: Vec<&str> = token.trim().split('.').collect();
    let mut forged = claims(&token);
    forged["kubernetes.io"]["namespace"] = "kube-system".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    assert_eq!(api_status(&node, &forged, "/api/v1/pods"), "401");

    node.remove_manifest("sa.yaml");
    node.wait_gone("sa");
    assert_eq!(
        api_status(&node, token.trim(), "/api/v1/pods"),
        "401",
        "a deleted pod's token must be refused"
    );
}

#[test]
#[ignore = "needs root"]
fn automount_off_and_unknown_service_accounts() {
    require_root();
    let node = node_with(&[]);
    node.write_manifest(
        "off.yaml",
        &pod("off", "default", "  automountServiceAccountToken: false\n"),
    );
    node.write_manifest(
        "robot.yaml",
        &pod("robot", "default", "  serviceAccountName: robot\n"),
    );
    let p = node.wait_running("off");
    let vols = p["spec"]["volumes"].to_string();
    assert!(!vols.contains("kube-api-access"), "{vols}");
    let (code, out) = node.exec_sh("off", &format!("test ! -e {SA_DIR}"));
    assert_eq!(code, 0, "{out}");
    let ev = node.wait_for("the refusal of robot", Duration::from_secs(20), || {
        let ev = node.skiff_ok(&["get", "events"]);
        ev.contains("serviceaccount \"robot\" not found")
            .then_some(ev)
    });
    assert!(
        ev.contains(
            "pods \"robot\" is forbidden: error looking up service account default/robot: serviceaccount \"robot\" not found"
        ),
        "{ev}"
    );
    assert!(node.pod("robot").is_none());
}

#[test]
#[ignore = "needs root"]
fn projected_tokens_are_refreshed_at_80_percent_of_their_lifetime() {
    require_root();
    // Tokens live 10 s here (the apiserver's --service-account-max-token-expiration): refresh
    // after 8 s.
    let node = node_with(&["--service-account-max-token-expiration", "10s"]);
    let extra = "  volumes:\n  - name: vault\n    projected:\n      sources:\n      - serviceAccountToken:\n          path: vault-token\n          audience: vault\n          expirationSeconds: 600\n";
    let manifest = pod("rot", "default", extra).replace(
        "    command:",
        "    volumeMounts:\n    - name: vault\n      mountPath: /vault\n    command:",
    );
    node.write_manifest("rot.yaml", &manifest);
    node.wait_running("rot");
    let read = |path: &str| {
        exec_ok(&node, "rot", &format!("cat {path}"))
            .trim()
            .to_string()
    };
    let vault = read("/vault/vault-token");
    let c = claims(&vault);
    assert_eq!(c["aud"][0], "vault");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 10);
    // A token for another audience is no key to the API.
    assert_eq!(api_status(&node, &vault, "/api/v1/pods"), "401");

    let first = read(&format!("{SA_DIR}/token"));
    let first_iat = claims(&first)["iat"].as_i64().unwrap();
    assert_eq!(api_status(&node, &first, "/api/v1/pods"), "200");
    let second = node.wait_for("a refreshed token", Duration::from_secs(30), || {
        let t = read(&format!("{SA_DIR}/token"));
        (t != first).then_some(t)
    });
    let second_iat = claims(&second)["iat"].as_i64().unwrap();
    assert!(
        second_iat >= first_iat + 8,
        "refreshed after {} s, before 80 % of 10 s",
        second_iat - first_iat
    );
    assert_ne!(
        read("/vault/vault-token"),
        vault,
        "the vault token rotates too"
    );
    // Once the old token has expired, only the new one works.
    node.wait_for("the old token to expire", Duration::from_secs(15), || {
        (api_status(&node, &first, "/api/v1/pods") == "401").then_some(())
    });
    let current = read(&format!("{SA_DIR}/token"));
    assert_eq!(api_status(&node, &current, "/api/v1/pods"), "200");
}
