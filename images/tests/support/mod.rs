//! Test harness: a real `docker-registry` on loopback, a cutting/counting TCP proxy, and an OCI
//! layout builder. Everything started here stops in `Drop`.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Fails the test unless root and the peers are there (these tests are `#[ignore]`d:
/// scripts/test.sh runs them, as root, with `--include-ignored`).
pub fn require_tools() {
    assert!(
        tools_present() && Path::new("/usr/bin/umoci").exists(),
        "needs root, docker-registry, skopeo, openssl, htpasswd and umoci (scripts/install-deps.sh)"
    );
}

/// Whether the peers the tests need are installed; prints why not.
pub fn tools_present() -> bool {
    let mut ok = true;
    for tool in [
        REGISTRY_BIN,
        "/usr/bin/skopeo",
        "/usr/bin/openssl",
        "/usr/bin/htpasswd",
    ] {
        if !Path::new(tool).exists() {
            eprintln!(
                "SKIPPED: {tool} missing (apt-get install docker-registry skopeo openssl apache2-utils)"
            );
            ok = false;
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: unpacking layers needs root");
        ok = false;
    }
    ok
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS material and htpasswd users for a secured registry.
pub struct Secure {
    pub ca_file: PathBuf,
    pub user: String,
    pub password: String,
}

/// A running `docker-registry serve`.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    pub secure: Option<Secure>,
}

impl Registry {
    /// Plain HTTP registry.
    pub fn start() -> Registry {
        Registry::start_with(false)
    }

    /// HTTPS (self-signed cert for 127.0.0.1) with htpasswd basic auth (`user`/`pass`).
    pub fn start_secure() -> Registry {
        Registry::start_with(true)
    }

    fn start_with(secure: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).unwrap();
        let mut extra = String::new();
        let mut sec = None;
        if secure {
            // A CA and a server certificate it signs (webpki refuses a CA as the server's).
            let d = dir.path();
            let testkit::Certs { ca, cert, key, .. } = testkit::Certs::generate(d);
            let htpasswd = dir.path().join("htpasswd");
            let line = run(Command::new("htpasswd").args(["-Bbn", "user", "pass"]));
            fs::write(&htpasswd, line).unwrap();
            extra = format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                cert.display(),
                key.display(),
                htpasswd.display()
            );
            sec = Some(Secure {
                ca_file: ca,
                user: "user".into(),
                password: "pass".into(),
            });
        }
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                storage.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            dir,
            port,
            child,
            secure: sec,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Path of a blob's data file in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `skopeo copy [--all] oci:LAYOUT:TAG docker://HOST/REPO:TAG` with extra args.
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]);
        if let Some(s) = &self.secure {
            cmd.arg(format!("--dest-creds={}:{}", s.user, s.password));
        }
        cmd.args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()));
        run(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to a registry that records request lines and can cut connections.
pub struct Proxy {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    /// How many more connections to cut once they forwarded `cut_after` response bytes.
    pub cuts_left: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16, cut_after: u64, cuts: u64) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cuts_left = Arc::new(AtomicU64::new(cuts));
        let (reqs, left) = (requests.clone(), cuts_left.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let (reqs, left) = (reqs.clone(), left.clone());
                conns.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]);
                            for line in text.lines() {
                                if line.starts_with("GET ") || line.starts_with("HEAD ") {
                                    reqs.lock().unwrap().push(line.to_owned());
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16384];
                        let mut sent = 0u64;
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if sent + n as u64 > cut_after
                                && left
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                                        c.checked_sub(1)
                                    })
                                    .is_ok()
                            {
                                let keep = (cut_after - sent.min(cut_after)) as usize;
                                let _ = cw.write_all(&buf[..keep]).await;
                                break;
                            }
                            sent += n as u64;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Either direction ending (or a cut) closes both.
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        Proxy {
            port,
            requests,
            cuts_left,
            task,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn count(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// A server that accepts connections and never answers.
pub struct Silent {
    pub port: u16,
    _listener: TcpListener,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Silent {
            port: listener.local_addr().unwrap().port(),
            _listener: listener,
        }
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Builds OCI image layouts by hand.
pub struct Layout {
    pub dir: PathBuf,
    pub manifests: Vec<serde_json::Value>,
}

/// A layer: its files (path, content) and compression.
pub type LayerSpec<'a> = (Vec<(&'a str, Vec<u8>)>, Compress);

pub enum Compress {
    None,
    Gzip,
    Zstd,
}

pub struct Built {
    pub manifest: serde_json::Value,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_owned(),
            manifests: Vec::new(),
        }
    }

    pub fn blob(&self, bytes: &[u8]) -> (String, u64) {
        let digest = sha256(bytes);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap());
        fs::write(path, bytes).unwrap();
        (digest, bytes.len() as u64)
    }

    /// An image whose layers are tars of the given (path, content) files.
    pub fn image(&self, arch: &str, layers: &[LayerSpec<'_>]) -> Built {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for (files, compress) in layers {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, data.as_slice()).unwrap();
            }
            let tar = b.into_inner().unwrap();
            diff_ids.push(sha256(&tar));
            let (bytes, mt) = match compress {
                Compress::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
                Compress::Gzip => {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(&tar).unwrap();
                    (
                        e.finish().unwrap(),
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    )
                }
                Compress::Zstd => {
                    let mut child = Command::new("zstd")
                        .args(["-q", "-c", "-3"])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .expect("zstd");
                    let mut stdin = child.stdin.take().unwrap();
                    let t = tar.clone();
                    let writer = std::thread::spawn(move || stdin.write_all(&t).unwrap());
                    let out = child.wait_with_output().unwrap();
                    writer.join().unwrap();
                    (out.stdout, "application/vnd.oci.image.layer.v1.tar+zstd")
                }
            };
            let (d, size) = self.blob(&bytes);
            layer_digests.push(d.clone());
            layer_descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": size}));
        }
        let config = serde_json::json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (config_digest, config_size) = self.blob(&serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": layer_descs,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let (manifest_digest, size) = self.blob(&bytes);
        Built {
            manifest: serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            }),
            manifest_digest,
            config_digest,
            layer_digests,
            diff_ids,
        }
    }

    /// Tags a descriptor in index.json.
    pub fn tag(&mut self, mut desc: serde_json::Value, tag: &str) {
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.manifests.push(desc);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    /// An image index over `manifests`; returns its descriptor and digest.
    pub fn index(&self, manifests: &[&serde_json::Value]) -> (serde_json::Value, String) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let (digest, size) = self.blob(&serde_json::to_vec(&index).unwrap());
        (
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size}),
            digest,
        )
    }
}

/// Runs `scripts/build-test-image.sh OUT` (the busybox image) into `out`.
pub fn busybox_layout(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
    run(Command::new("bash").arg(script).arg(out));
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
