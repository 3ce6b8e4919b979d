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

/// Root and the peers, or a failure that says which is missing (these tests are
/// `#[ignore]`d: scripts/test.sh runs them, as root, with `--include-ignored`).
fn ready() {
    require_root();
    for tool in TOOLS {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing (scripts/install-deps.sh installs docker-registry skopeo openssl apache2-utils)"
        );
    }
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
        self.push_layout(test_image(), repo_tag);
    }

    /// Pushes the `latest` image of the OCI layout at `layout` as `REPO:TAG`.
    fn push_layout(&self, layout: &Path, repo_tag: &str) {
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
            cmd.arg(format!("oci:{}:latest", layout.display()))
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

    /// `skopeo inspect --raw` (the manifest as stored) or, with `config`, `--config --raw`.
    fn skopeo_raw(&self, what: &str, config: bool) -> Value {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display())).args([
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--raw",
        ]);
        if config {
            cmd.arg("--config");
        }
        let out = run(cmd.arg(what));
        serde_json::from_str(&out).expect("skopeo inspect --raw JSON")
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
#[ignore = "needs root and the registry tools"]
fn pod_pulls_its_image_from_a_registry_and_runs_then_pull_export_and_prune() {
    ready();
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
#[ignore = "needs root and the registry tools"]
fn missing_tag_is_err_image_pull_then_image_pull_back_off() {
    ready();
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
#[ignore = "needs root and the registry tools"]
fn pull_secret_authenticates_against_a_tls_registry_with_htpasswd() {
    ready();
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

// ---- SIGKILL of skiffd in the middle of a pull ----------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A one-file ustar archive: `name` holding `data` (a layer tar, written by hand).
fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mut field = |at: usize, len: usize, value: u64| {
        let text = format!("{value:0width$o}\0", width = len - 1);
        h[at..at + len].copy_from_slice(text.as_bytes());
    };
    field(100, 8, 0o644); // mode
    field(108, 8, 0); // uid
    field(116, 8, 0); // gid
    field(124, 12, data.len() as u64); // size
    field(136, 12, 0); // mtime
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// The test image plus one layer holding `size` random bytes (incompressible, so the registry
/// serves about `size` bytes for it whatever skopeo does to it), as an OCI layout in `dir`.
/// Returns the new layer's diff id.
fn layout_with_random_layer(dir: &Path, size: usize) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let src = test_image();
    for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
    }
    std::fs::copy(src.join("oci-layout"), dir.join("oci-layout")).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let read_blob = |digest: &str| -> Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(blobs.join(hex)).unwrap()).unwrap()
    };

    let mut random = vec![0u8; size];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    let tar = one_file_tar("random.bin", &random);
    let (layer_digest, layer_size) = put(&tar);
    let diff_id = layer_digest.clone(); // uncompressed: the blob is the tar

    let mut index: Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let mut manifest = read_blob(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read_blob(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(diff_id.clone().into());
    if let Some(history) = config["history"].as_array_mut() {
        history.push(serde_json::json!({"created_by": "tests/images.rs: random layer"}));
    }
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }));
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = manifest_digest.into();
    index["manifests"][0]["size"] = manifest_size.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    diff_id
}

#[derive(Default)]
struct GateState {
    /// Once open, everything flows.
    open: bool,
    /// How many times a connection stopped at the gate (never decreases).
    holds: u64,
}

/// Where the proxy holds the watched blob's download.
struct Gate {
    /// `blobs/sha256:<hex>`, as in the request line of the watched blob.
    needle: Vec<u8>,
    /// Response bytes let through before holding.
    limit: u64,
    state: std::sync::Mutex<GateState>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn holds(&self) -> u64 {
        self.state.lock().unwrap().holds
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.cv.notify_all();
    }

    /// Blocks the calling connection while the gate is closed.
    fn hold(&self) {
        let mut st = self.state.lock().unwrap();
        if st.open {
            return;
        }
        st.holds += 1;
        while !st.open {
            st = self.cv.wait(st).unwrap();
        }
    }
}

/// A TCP proxy in the node's netns in front of the registry. A connection that asks for the
/// watched blob gets `limit` bytes of the response, then nothing until the gate opens: the
/// download stops midway for as long as the test wants, and no timing is involved.
struct GatedProxy {
    port: u16,
    gate: std::sync::Arc<Gate>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl GatedProxy {
    fn start(node: &Node, upstream: u16, blob_digest: &str, limit: u64) -> GatedProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let gate = Arc::new(Gate {
            needle: format!("blobs/{blob_digest}").into_bytes(),
            limit,
            state: Default::default(),
            cv: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = node.host.path();
        let (g, s) = (gate.clone(), stop.clone());
        // The accept loop runs in the node's netns, so the listener and the upstream
        // connections it makes live there (the registry listens on that netns' loopback).
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&netns).expect("opening netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
            listener.set_nonblocking(true).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !s.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => break,
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let watched = Arc::new(AtomicBool::new(false));
                // client -> registry: watch the request lines for the blob.
                {
                    let (mut from, mut to) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (g, watched) = (g.clone(), watched.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 16 << 10];
                        let mut window: Vec<u8> = Vec::new();
                        loop {
                            let n = match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            window.extend_from_slice(&buf[..n]);
                            if window
                                .windows(g.needle.len())
                                .any(|w| w == g.needle.as_slice())
                            {
                                watched.store(true, Ordering::SeqCst);
                            }
                            let keep = window.len().saturating_sub(g.needle.len());
                            window.drain(..keep);
                            if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
                // registry -> client: the gate.
                let g = g.clone();
                let (mut from, mut to) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut sent = 0u64;
                    loop {
                        let n = match std::io::Read::read(&mut from, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut chunk = &buf[..n];
                        if watched.load(Ordering::SeqCst) {
                            let allowed = g.limit.saturating_sub(sent).min(n as u64) as usize;
                            if allowed < n {
                                if std::io::Write::write_all(&mut to, &chunk[..allowed]).is_err() {
                                    break;
                                }
                                chunk = &chunk[allowed..];
                                g.hold();
                            }
                            sent += n as u64;
                        }
                        if std::io::Write::write_all(&mut to, chunk).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                });
            }
        });
        let port = rx.recv().expect("proxy port");
        GatedProxy { port, gate, stop }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.gate.open();
    }
}

/// Names in a directory (empty if it does not exist).
fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The pulls' staging directories, `<store>/tmp/pull-*`.
fn staging_dirs(store: &Path) -> Vec<PathBuf> {
    dir_names(&store.join("tmp"))
        .into_iter()
        .filter(|n| n.starts_with("pull-"))
        .map(|n| store.join("tmp").join(n))
        .collect()
}

/// The images recorded in `<store>/images.json`, the index `skiff images`, `resolve` and the
/// pod workers read (none when the file does not exist yet).
fn indexed_images(store: &Path) -> Vec<Value> {
    match std::fs::read(store.join("images.json")) {
        Ok(bytes) => {
            let index: Value = serde_json::from_slice(&bytes).expect("images.json is JSON");
            index["images"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading images.json: {e}"),
    }
}

/// After a kill, with skiffd down: the store of this fresh node shows nothing of the image.
/// The index lists no image, and nothing sits at a final path: `blobs/sha256/` and `layers/`
/// are empty, so neither `resolve` nor the puller's "already have this blob/layer" checks can
/// pick up a partial download or unpack: whatever the pull did is in its staging dir.
fn assert_nothing_visible(store: &Path, when: &str) {
    let images = indexed_images(store);
    assert!(images.is_empty(), "{when}: images.json lists {images:?}");
    for sub in ["blobs/sha256", "layers"] {
        let names = dir_names(&store.join(sub));
        assert!(names.is_empty(), "{when}: {sub}/ holds {names:?}");
    }
}

/// Whether process `pid` waits for the flock on `path` (a `->` line in /proc/locks).
fn waits_for_flock(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"->")
            && f.get(2) == Some(&"FLOCK")
            && f.get(5) == Some(&pid.to_string().as_str())
            && f.get(6)
                .is_some_and(|dev_ino| dev_ino.ends_with(&format!(":{ino}")))
    })
}

/// The first file named `name` under `dir`, depth first.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if e.file_name() == name {
            return Some(path);
        }
    }
    None
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// SIGKILL of skiffd mid-download and again after every layer is unpacked (with the commit
/// waiting for the store lock): each time the image is absent from the store, not half
/// there; the restart removes the dead pull's staging directory; with the registry
/// reachable again the pod gets the image and runs, listed once with the registry's digest,
/// and the store holds exactly that image's blobs and layers. (A kill in the middle of one
/// layer's unpack cannot be timed from outside without a hook in skiffd; the second kill is
/// the last moment before the commit, with every layer unpacked in staging.)
#[test]
#[ignore = "needs root and the registry tools"]
fn sigkill_mid_pull_leaves_no_image_and_restart_cleans_up() {
    ready();
    const BIG: usize = 8 << 20;
    const LIMIT: u64 = 4 << 20;
    let mut node = Node::new();
    let reg = Registry::start(&node, false);
    let layout = node.dir().join("big-layout");
    let diff_id = layout_with_random_layer(&layout, BIG);
    reg.push_layout(&layout, "test/big:latest");
    // What the registry serves (skopeo may have compressed the layer on the way).
    let direct = format!("docker://{}/test/big:latest", reg.host());
    let digest = reg.skopeo_inspect(&direct)["Digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifest = reg.skopeo_raw(&direct, false);
    let config = reg.skopeo_raw(&direct, true);
    let layers: Vec<(String, u64)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(diff_ids.last(), Some(&diff_id), "{config}");
    let (big_digest, big_size) = layers.last().unwrap().clone();
    assert!(big_size > LIMIT + (1 << 20), "{manifest}");
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_owned();
    let big_hex = hex(&big_digest);

    let proxy = GatedProxy::start(&node, reg.port, &big_digest, LIMIT);
    let image = format!("{}/test/big:latest", proxy.host());
    let store = node.root.join("images");
    node.start_daemon();
    node.write_manifest("big.yaml", &pod_yaml("big", &image, "IfNotPresent", ""));

    // 1. Mid-download: the proxy holds the big layer after LIMIT bytes; wait until skiffd has
    //    written more than half of that to disk (wherever it writes it), then SIGKILL.
    let staged_blob = |dir: &Path| dir.join("blobs").join(&big_hex);
    let partial = node.wait_for(
        "the big layer's download held midway",
        Duration::from_secs(30),
        || {
            if proxy.gate.holds() < 1 {
                return None;
            }
            find_file(&store, &big_hex).filter(|p| file_len(p) >= 2 << 20)
        },
    );
    let (reason, _) = waiting_reason(&node, "big").expect("pod big");
    assert_eq!(reason, "ContainerCreating");
    node.kill_daemon();
    assert_nothing_visible(&store, "killed mid-download");
    let first = staging_dirs(&store)
        .into_iter()
        .find(|d| staged_blob(d) == partial)
        .unwrap_or_else(|| panic!("partial download outside staging: {}", partial.display()));
    let written = file_len(&partial);
    assert!(
        written >= 2 << 20 && written < big_size,
        "staged blob has {written} of {big_size} bytes"
    );

    // 2. Restart: the dead pull's staging dir goes before the API answers. The new pull stops
    //    at the gate again; the test takes the store lock, then opens the gate: the download
    //    and every unpack finish and the commit waits for the lock. Then SIGKILL.
    node.start_daemon();
    assert!(!first.exists(), "{} survived the restart", first.display());
    let lock_path = store.join("lock");
    let lock_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .expect("the store's lock file");
    let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock the store");
    proxy.gate.open();
    let pid = node.daemon_pid().unwrap();
    let second = node.wait_for(
        "the pull's commit waiting for the store lock",
        Duration::from_secs(60),
        || {
            if !waits_for_flock(pid, &lock_path) {
                return None;
            }
            let dirs = staging_dirs(&store);
            assert_eq!(dirs.len(), 1, "staging dirs: {dirs:?}");
            let unpacked = dirs[0]
                .join("layers")
                .join(hex(&diff_id))
                .join("random.bin");
            (file_len(&staged_blob(&dirs[0])) == big_size && file_len(&unpacked) == BIG as u64)
                .then(|| dirs[0].clone())
        },
    );
    node.kill_daemon();
    drop(lock);
    // Everything was downloaded, verified and unpacked, only in staging.
    assert_nothing_visible(&store, "killed before the commit");
    let layer_dirs = dir_names(&second.join("layers"));
    assert_eq!(layer_dirs.len(), diff_ids.len(), "{layer_dirs:?}");

    // 3. Restart with the gate open: the pod gets the image and runs.
    node.start_daemon();
    assert!(
        !second.exists(),
        "{} survived the restart",
        second.display()
    );
    let pod = node.wait_running("big");
    assert_eq!(
        main_status(&pod)["imageID"],
        format!("{}/test/big@{digest}", proxy.host()),
        "{pod}"
    );
    let listed = node.skiff_ok(&["images"]);
    let rows: Vec<&str> = listed.lines().filter(|l| l.contains("/test/big")).collect();
    assert_eq!(rows.len(), 1, "{listed}");
    assert!(
        rows[0].starts_with(&format!("{}/test/big", proxy.host())) && rows[0].contains("latest"),
        "{listed}"
    );
    let inspected: Value =
        serde_json::from_str(&node.skiff_ok(&["image", "inspect", &image])).unwrap();
    assert_eq!(inspected["digest"], digest.as_str(), "{inspected}");

    // No garbage: no staging left, and the store holds exactly this image's blobs (manifest,
    // config, layers) and unpacked layers: nothing from the killed pulls.
    node.wait_for("tmp/ to be empty", Duration::from_secs(10), || {
        dir_names(&store.join("tmp")).is_empty().then_some(())
    });
    let images = indexed_images(&store);
    assert_eq!(images.len(), 1, "{images:?}");
    let mut want_blobs: Vec<String> = layers.iter().map(|(d, _)| hex(d)).collect();
    want_blobs.push(hex(&digest));
    want_blobs.push(hex(inspected["id"].as_str().unwrap()));
    want_blobs.sort();
    assert_eq!(dir_names(&store.join("blobs/sha256")), want_blobs);
    let mut want_layers: Vec<String> = diff_ids.iter().map(|d| hex(d)).collect();
    want_layers.sort();
    assert_eq!(dir_names(&store.join("layers")), want_layers);
}

// ---- Pulls through an HTTP proxy (HTTPS_PROXY / HTTP_PROXY / NO_PROXY) ----------------------

/// A real `tinyproxy` on the node's loopback (a random port, a generated config and log in a
/// temp dir); killed on drop.
struct TinyProxy {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl TinyProxy {
    fn start(node: &Node) -> TinyProxy {
        let bin = Path::new("/usr/bin/tinyproxy");
        assert!(
            bin.exists(),
            "tinyproxy missing (scripts/install-deps.sh installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("skiff-tinyproxy-")
            .tempdir()
            .unwrap();
        let netns = node.host.path();
        // A port the kernel hands out in the node's netns, free there once the probe closes.
        let port = common::in_netns(&netns, || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free loopback port")
        });
        let log = dir.path().join("tinyproxy.log");
        let config = dir.path().join("tinyproxy.conf");
        // No ConnectPort lines: CONNECT is allowed to any port (the TLS registry's is 5443).
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nAllow 127.0.0.1\nLogLevel Info\nLogFile \"{}\"\n",
                log.display()
            ),
        )
        .unwrap();
        let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(bin)
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting tinyproxy");
        let proxy = TinyProxy { dir, port, child };
        node.wait_for("tinyproxy to listen", Duration::from_secs(10), || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            common::in_netns(&netns, move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .then_some(())
        });
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request lines tinyproxy logged (`GET http://…`, `CONNECT host:port`).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("Request (file descriptor ").map(|(_, r)| r))
            .filter_map(|r| r.split_once("): ").map(|(_, req)| req.to_owned()))
            .collect()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// skiffd with HTTP_PROXY and HTTPS_PROXY pulls from a plain registry through the proxy
/// (requests forwarded in absolute form) and from a TLS one through a CONNECT tunnel (TLS end
/// to end: the registry's CA still verifies); the proxy sees nothing else of skiffd's. Started
/// again with NO_PROXY naming the registries' address, it pulls directly.
#[test]
#[ignore = "needs root and the registry tools"]
fn pulls_go_through_the_http_proxy_unless_no_proxy_names_the_registry() {
    ready();
    let mut node = Node::new();
    let plain = Registry::start(&node, false);
    let tls = Registry::start(&node, true);
    let proxy = TinyProxy::start(&node);
    let registries = node.dir().join("registries.toml");
    std::fs::write(
        &registries,
        format!(
            "[registry.\"{}\"]\nca_file = \"{}\"\n",
            tls.host(),
            tls.ca.as_ref().unwrap().display()
        ),
    )
    .unwrap();
    let credentials = node.dir().join("config.json");
    std::fs::write(
        &credentials,
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"dXNlcjpwYXNz\"}}}}}}",
            tls.host()
        ),
    )
    .unwrap();
    node.extra_flags(&[
        "--registries-config",
        registries.to_str().unwrap(),
        "--image-credential-config",
        credentials.to_str().unwrap(),
    ]);
    node.daemon_env("HTTP_PROXY", &proxy.url());
    node.daemon_env("https_proxy", &proxy.url());
    node.start_daemon();
    plain.push("team/app:1.0");
    plain.push("team/app:2.0");
    tls.push("team/app:1.0");
    tls.push("team/app:2.0");

    node.skiff_ok(&["pull", "-q", &format!("{}/team/app:1.0", plain.host())]);
    node.skiff_ok(&["pull", "-q", &format!("{}/team/app:1.0", tls.host())]);
    let through = proxy.requests();
    let manifest = format!("GET http://{}/v2/team/app/manifests/1.0 ", plain.host());
    assert!(
        through.iter().any(|r| r.starts_with(&manifest)),
        "no {manifest:?} in the proxy's log: {through:#?}"
    );
    let tunnel = format!("CONNECT {} ", tls.host());
    assert!(
        through.iter().any(|r| r.starts_with(&tunnel)),
        "no {tunnel:?} in the proxy's log: {through:#?}"
    );
    // Only the pulls: every request names one of the two registries.
    for r in &through {
        assert!(
            r.contains(&plain.host()) || r.contains(&tls.host()),
            "the proxy saw {r:?}"
        );
    }

    node.stop_daemon();
    node.daemon_env("NO_PROXY", "example.com, 127.0.0.0/8");
    node.start_daemon();
    let seen = proxy.requests().len();
    node.skiff_ok(&["pull", "-q", &format!("{}/team/app:2.0", plain.host())]);
    node.skiff_ok(&["pull", "-q", &format!("{}/team/app:2.0", tls.host())]);
    let after = proxy.requests();
    assert_eq!(
        after.len(),
        seen,
        "NO_PROXY pulls went through the proxy: {:#?}",
        &after[seen..]
    );
    let listed = node.skiff_ok(&["images"]);
    for host in [plain.host(), tls.host()] {
        assert!(listed.contains(&format!("{host}/team/app")), "{listed}");
    }
}
