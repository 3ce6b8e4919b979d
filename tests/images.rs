//! Root integration tests of registry pulls: a real Debian `docker-registry` started inside
//! the node's throwaway netns (skiffd runs there, so the host's loopback is not reachable),
//! the test image pushed into it with `skopeo`, and pods, `skiff pull`, prune and export
//! against it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, require_root, test_image};
use serde_json::Value;

const TOOLS: [&str; 4] = [
    "/usr/bin/docker-registry",
    "/usr/bin/skopeo",
    "/usr/bin/openssl",
    "/usr/bin/htpasswd",
];

/// Root and the peers; says why a test is skipped.
fn ready() -> bool {
    if !require_root() {
        return false;
    }
    for tool in TOOLS {
        if !Path::new(tool).exists() {
            eprintln!(
                "SKIPPED: {tool} missing (scripts/install-deps.sh installs docker-registry skopeo openssl apache2-utils)"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{tool} must be installed in CI");
            }
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `docker-registry serve` inside the node's netns; killed on drop.
struct Registry {
    dir: tempfile::TempDir,
    netns: PathBuf,
    port: u16,
    child: Child,
    /// CA file, for a TLS registry with htpasswd user `user` / `pass`.
    ca: Option<PathBuf>,
}

impl Registry {
    fn start(node: &Node, secure: bool) -> Registry {
        // A fresh netns has its loopback down.
        run(Command::new("ip").args(["-n", &node.host.name, "link", "set", "lo", "up"]));
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let storage = d.join("storage");
        std::fs::create_dir(&storage).unwrap();
        let port = if secure { 5443 } else { 5000 };
        let mut extra = String::new();
        let mut ca = None;
        if secure {
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ];
            run(Command::new("openssl")
                .args(["req", "-x509", "-days", "2", "-subj", "/CN=skiff test CA"])
                .args(ec)
                .arg("-keyout")
                .arg(d.join("ca.key"))
                .arg("-out")
                .arg(d.join("ca.pem")));
            run(Command::new("openssl")
                .args(["req", "-subj", "/CN=127.0.0.1"])
                .args(ec)
                .arg("-keyout")
                .arg(d.join("key.pem"))
                .arg("-out")
                .arg(d.join("req.csr")));
            std::fs::write(
                d.join("ext.cnf"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            )
            .unwrap();
            run(Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-in"])
                .arg(d.join("req.csr"))
                .arg("-CA")
                .arg(d.join("ca.pem"))
                .arg("-CAkey")
                .arg(d.join("ca.key"))
                .arg("-extfile")
                .arg(d.join("ext.cnf"))
                .arg("-out")
                .arg(d.join("cert.pem")));
            let line = run(Command::new("htpasswd").args(["-Bbn", "user", "pass"]));
            std::fs::write(d.join("htpasswd"), line).unwrap();
            extra = format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display(),
                d.join("htpasswd").display()
            );
            ca = Some(d.join("ca.pem"));
        }
        let config = d.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let netns = node.host.path();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(TOOLS[0])
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        Registry {
            dir,
            netns,
            port,
            child,
            ca,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the test image as `REPO:TAG`, retrying while the registry starts.
    fn push(&self, repo_tag: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", self.netns.display())).args([
                "skopeo",
                "--insecure-policy",
                "copy",
                "-q",
                "--dest-tls-verify=false",
            ]);
            if self.ca.is_some() {
                cmd.arg("--dest-creds=user:pass");
            }
            cmd.arg(format!("oci:{}:latest", test_image().display()))
                .arg(format!("docker://{}/{repo_tag}", self.host()));
            let out = cmd.output().expect("running skopeo");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "skopeo push failed: {}\n--- registry log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `skopeo inspect` of a transport reference (e.g. `oci:DIR`), run in the node's netns.
    fn skopeo_inspect(&self, what: &str) -> Value {
        let out = run(Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["skopeo", "inspect", "--tls-verify=false", what]));
        serde_json::from_str(&out).expect("skopeo inspect JSON")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod_yaml(name: &str, image: &str, policy: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: {policy}\n    command: [sh, -c, \"exec sleep 3600\"]\n"
    )
}

fn main_status(pod: &Value) -> Value {
    pod["status"]["containerStatuses"][0].clone()
}

fn waiting_reason(node: &Node, pod: &str) -> Option<(String, String)> {
    let p = node.pod(pod)?;
    let w = &main_status(&p)["state"]["waiting"];
    Some((
        w["reason"].as_str()?.to_owned(),
        w["message"].as_str().unwrap_or("").to_owned(),
    ))
}

fn events(node: &Node) -> String {
    node.skiff_ok(&["get", "events"])
}

#[test]
fn pod_pulls_its_image_from_a_registry_and_runs_then_pull_export_and_prune() {
    if !ready() {
        return;
    }
    let mut node = Node::new();
    node.start_daemon();
    let reg = Registry::start(&node, false);
    reg.push("test/busybox:latest");
    let image = format!("{}/test/busybox:latest", reg.host());

    node.write_manifest("web.yaml", &pod_yaml("web", &image, "IfNotPresent", ""));
    let pod = node.wait_running("web");
    let image_id = main_status(&pod)["imageID"].as_str().unwrap().to_owned();
    assert!(
        image_id.starts_with(&format!("{}/test/busybox@sha256:", reg.host())),
        "{image_id}"
    );
    let ev = events(&node);
    assert!(ev.contains(&format!("Pulling image \"{image}\"")), "{ev}");
    assert!(
        ev.contains(&format!("Successfully pulled image \"{image}\" in ")),
        "{ev}"
    );
    assert!(
        ev.contains("Image size: ") && ev.contains(" bytes."),
        "{ev}"
    );
    let listed = node.skiff_ok(&["images"]);
    assert!(
        listed.contains(&format!("{}/test/busybox", reg.host())),
        "{listed}"
    );

    // `skiff pull` of the same image: nothing to download.
    let pulled = node.skiff_ok(&["pull", &image]);
    assert!(
        pulled.starts_with(&format!("Pulling {image}\n")),
        "{pulled}"
    );
    assert!(
        pulled.contains(&format!("Status: Image is up to date for {image}")),
        "{pulled}"
    );
    let digest = image_id.split('@').nth(1).unwrap();
    assert!(
        pulled.contains(&format!("Digest: {digest}")) && pulled.contains("Image ID: sha256:"),
        "{pulled}"
    );

    // inspect
    let inspected: Value =
        serde_json::from_str(&node.skiff_ok(&["image", "inspect", &image])).unwrap();
    assert_eq!(inspected["digest"], digest);
    assert!(
        inspected["layers"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{inspected}"
    );
    assert!(inspected["size"].as_u64().unwrap() > 0);

    // export, checked by skopeo: same manifest digest in an OCI layout; same layers in a
    // docker archive.
    let oci = node.dir().join("export-oci");
    node.skiff_ok(&[
        "image",
        "export",
        &image,
        oci.to_str().unwrap(),
        "--format",
        "oci",
    ]);
    let seen = reg.skopeo_inspect(&format!("oci:{}", oci.display()));
    assert_eq!(seen["Digest"], digest, "{seen}");
    let archive = node.dir().join("export.tar");
    node.skiff_ok(&[
        "image",
        "export",
        &image,
        archive.to_str().unwrap(),
        "--format",
        "docker-archive",
    ]);
    let seen = reg.skopeo_inspect(&format!("docker-archive:{}", archive.display()));
    assert_eq!(
        seen["Layers"].as_array().map(Vec::len),
        inspected["layers"].as_array().map(Vec::len),
        "{seen}"
    );

    // prune keeps an image a container uses ...
    let pruned = node.skiff_ok(&["image", "prune"]);
    assert!(!pruned.contains("Deleted"), "{pruned}");
    let listed = node.skiff_ok(&["images"]);
    assert!(listed.contains("test/busybox"), "{pruned}\n{listed}");
    // ... and removes it once no container does.
    node.remove_manifest("web.yaml");
    node.wait_gone("web");
    let pruned = node.skiff_ok(&["image", "prune"]);
    assert!(
        pruned.contains(&format!("Deleted: {}", inspected["id"].as_str().unwrap())),
        "{pruned}"
    );
    assert!(!node.skiff_ok(&["images"]).contains("test/busybox"));

    // A fresh `skiff pull`: one plain line per layer and phase (stdout is not a terminal).
    let pulled = node.skiff_ok(&["pull", &image]);
    assert!(pulled.contains(": Pull complete\n"), "{pulled}");
    assert!(
        pulled.contains(&format!("Status: Downloaded newer image for {image}")),
        "{pulled}"
    );
    let listed = node.skiff_ok(&["images"]);
    assert!(
        listed.contains("test/busybox"),
        "{pulled}\n{listed}\n{}",
        node.log_tail(30)
    );
}

#[test]
fn missing_tag_is_err_image_pull_then_image_pull_back_off() {
    if !ready() {
        return;
    }
    let mut node = Node::new();
    node.start_daemon();
    let reg = Registry::start(&node, false);
    reg.push("test/busybox:latest");
    let image = format!("{}/test/busybox:nope", reg.host());
    node.write_manifest("bad.yaml", &pod_yaml("bad", &image, "IfNotPresent", ""));
    let (_, msg) = node.wait_for("ErrImagePull", Duration::from_secs(20), || {
        waiting_reason(&node, "bad").filter(|(r, _)| r == "ErrImagePull")
    });
    assert!(
        msg.contains("test/busybox:nope") && msg.contains("not found"),
        "{msg}"
    );
    let (_, msg) = node.wait_for("ImagePullBackOff", Duration::from_secs(20), || {
        waiting_reason(&node, "bad").filter(|(r, _)| r == "ImagePullBackOff")
    });
    assert!(
        msg.starts_with(&format!("Back-off pulling image \"{image}\""))
            && msg.contains("not found"),
        "{msg}"
    );
    let described = node.skiff_ok(&["describe", "pod", "bad"]);
    for want in [
        "ImagePullBackOff",
        "not found",
        "Failed to pull image",
        "Back-off pulling image",
    ] {
        assert!(
            described.contains(want),
            "describe lacks {want:?}:\n{described}"
        );
    }
    let p = node.pod("bad").unwrap();
    assert_eq!(p["status"]["phase"], "Pending");
    // `skiff pull` reports the registry's answer and fails.
    let out = node.skiff(&["pull", &image]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn pull_secret_authenticates_against_a_tls_registry_with_htpasswd() {
    if !ready() {
        return;
    }
    let mut node = Node::new();
    let reg = Registry::start(&node, true);
    // The registry's CA through --registries-config (read when skiffd starts).
    let registries = node.dir().join("registries.toml");
    std::fs::write(
        &registries,
        format!(
            "[registry.\"{}\"]\nca_file = \"{}\"\n",
            reg.host(),
            reg.ca.as_ref().unwrap().display()
        ),
    )
    .unwrap();
    node.extra_flags(&["--registries-config", registries.to_str().unwrap()]);
    node.start_daemon();
    reg.push("team/app:1.0");
    let image = format!("{}/team/app:1.0", reg.host());

    // Without credentials: the registry's refusal.
    node.write_manifest("anon.yaml", &pod_yaml("anon", &image, "IfNotPresent", ""));
    let (_, msg) = node.wait_for(
        "ErrImagePull without credentials",
        Duration::from_secs(20),
        || waiting_reason(&node, "anon").filter(|(r, _)| r == "ErrImagePull"),
    );
    assert!(msg.contains("unauthorized"), "{msg}");

    // With an imagePullSecrets Secret from the manifest directory.
    let auth = "dXNlcjpwYXNz"; // user:pass
    let config = format!(
        "{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}",
        reg.host()
    );
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
    );
    let pod = pod_yaml(
        "authed",
        &image,
        "IfNotPresent",
        "  imagePullSecrets:\n  - name: regcred\n",
    );
    node.write_manifest("authed.yaml", &format!("{secret}---\n{pod}"));
    node.wait_running("authed");
    let ev = events(&node);
    assert!(
        ev.contains(&format!("Successfully pulled image \"{image}\"")),
        "{ev}"
    );
}
