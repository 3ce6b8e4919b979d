//! Test harness for root integration tests: a throwaway network namespace as
//! the "host", a skiffd started inside it on temp dirs, the real `skiff` CLI
//! to talk to it, and a leak check. Everything is removed in `Drop`, also
//! when a test fails.

#![allow(dead_code)]

pub mod kubectl;
pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const IMAGE: &str = "skiff.test/busybox:latest";

// The helpers not tied to the skiff binaries live in the workspace's `testkit` crate (a
// dev-dependency); the old names stay for the tests written against them.
pub use testkit::{Netns, require_root};

/// The test image (built once per test binary).
pub fn test_image() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("target/test-image");
        let st = Command::new("bash")
            .arg(root.join("scripts/build-test-image.sh"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("running build-test-image.sh");
        assert!(st.success(), "build-test-image.sh failed");
        out
    })
}

/// skiff's CNI plugins live next to skiffd; build them if this test run did not.
pub fn ensure_cni_plugins() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bin("skiffd").parent().unwrap().to_path_buf();
        if ["skiff-bridge", "skiff-host-local", "skiff-portmap"]
            .iter()
            .all(|p| dir.join(p).exists())
        {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "cni", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("building the CNI plugins");
        assert!(st.success(), "cargo build -p cni --bins failed");
    });
}

/// One skiff node: a host netns, temp dirs and a skiffd.
pub struct Node {
    pub host: Netns,
    dir: tempfile::TempDir,
    pub manifests: PathBuf,
    pub root: PathBuf,
    pub run: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
    flags: Vec<String>,
    env: Vec<(String, String)>,
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "skiffd" => PathBuf::from(env!("CARGO_BIN_EXE_skiffd")),
        "skiff" => PathBuf::from(env!("CARGO_BIN_EXE_skiff")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim")),
    }
}

impl Node {
    /// A running node with the test image imported.
    pub fn start() -> Node {
        let mut n = Node::new();
        n.start_daemon();
        n.import_image();
        n
    }

    /// A node whose daemon is not started yet.
    pub fn new() -> Node {
        let host = Netns::new();
        let dir = tempfile::Builder::new()
            .prefix("skiff-test-")
            .tempdir()
            .expect("tempdir");
        let manifests = dir.path().join("manifests");
        let root = dir.path().join("root");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&manifests).unwrap();
        let log = dir.path().join("skiffd.log");
        Node {
            host,
            manifests,
            root,
            run,
            daemon: None,
            log,
            dir,
            flags: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("skiff.sock")
    }

    /// Extra skiffd flags (set before `start_daemon`).
    pub fn extra_flags(&mut self, flags: &[&str]) {
        self.flags.extend(flags.iter().map(|s| s.to_string()));
    }

    /// An environment variable for skiffd (set before `start_daemon`; replaces an earlier
    /// value of the same name).
    pub fn daemon_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        ensure_cni_plugins();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.host.path().display()))
            .arg(bin("skiffd"))
            .arg("--pod-manifest-path")
            .arg(&self.manifests)
            .arg("--root-dir")
            .arg(&self.root)
            .arg("--run-dir")
            .arg(&self.run)
            .args([
                "--node-name",
                "test-node",
                "--file-check-frequency",
                "2",
                "--log-level",
                "info,skiff=debug",
            ])
            .arg("--cni-conf-dir")
            .arg(self.dir.path().join("cni/net.d"))
            .args(&self.flags)
            .args(self.default_gc_flags())
            // The test machine's proxy settings stay out: a test that wants a proxy sets one.
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting skiffd");
        self.daemon = Some(child);
        self.wait_for("skiffd to answer", Duration::from_secs(20), || {
            let out = self.skiff(&["get", "pods", "-A", "-o", "json"]);
            out.status.success().then_some(())
        });
    }

    /// Image GC off unless a test sets its threshold: it goes by the disk use of the whole
    /// filesystem, and on a nearly full build machine it would remove the test image whenever
    /// no container happens to use it (between a kill and a restart, say).
    fn default_gc_flags(&self) -> &'static [&'static str] {
        if self.flags.iter().any(|f| f == "--image-gc-high-threshold") {
            &[]
        } else {
            &["--image-gc-high-threshold", "100"]
        }
    }

    /// The running skiffd's pid (nsenter execs it, so it is the child's).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// SIGKILLs skiffd (a crash): containers and shims must survive.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs skiffd and waits for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn import_image(&self) {
        let out = self.skiff(&["image", "import", test_image().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "image import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a manifest atomically (a dotfile then a rename, as editors do).
    pub fn write_manifest(&self, name: &str, text: &str) {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests.join(name)).unwrap();
    }

    pub fn remove_manifest(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(name)).unwrap();
    }

    /// Runs the `skiff` CLI against this node.
    pub fn skiff(&self, args: &[&str]) -> Output {
        Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_SOCKET", self.socket())
            .stdin(Stdio::null())
            .output()
            .expect("running skiff")
    }

    /// `skiff ARGS` that must succeed; returns stdout.
    pub fn skiff_ok(&self, args: &[&str]) -> String {
        let out = self.skiff(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod as JSON, or None when it does not exist.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let out = self.skiff(&["get", "pod", name, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn pods(&self) -> Vec<Value> {
        let out = self.skiff_ok(&["get", "pods", "-A", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `f` every 50 ms until it returns Some; panics with the daemon log on timeout.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        testkit::until(timeout, Duration::from_millis(50), f).unwrap_or_else(|_| {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- skiffd log (tail) ---\n{}",
                self.log_tail(60)
            )
        })
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the pod is Running with every container ready; returns it.
    pub fn wait_running(&self, name: &str) -> Value {
        self.wait_for(
            &format!("pod {name} Running and ready"),
            Duration::from_secs(30),
            || {
                let p = self.pod(name)?;
                let ready = p["status"]["containerStatuses"]
                    .as_array()?
                    .iter()
                    .all(|c| c["ready"] == true);
                (p["status"]["phase"] == "Running" && ready).then_some(p)
            },
        )
    }

    pub fn wait_gone(&self, name: &str) {
        self.wait_for(
            &format!("pod {name} to be removed"),
            Duration::from_secs(40),
            || self.pod(name).is_none().then_some(()),
        );
    }

    /// Everything skiff created for its pods that is still there.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            if let Some(mp) = line.split(' ').nth(4)
                && mp.starts_with(&dir)
            {
                left.push(format!("mount {mp}"));
            }
        }
        for p in shim_pids(&dir) {
            left.push(format!("skiff-shim process {p}"));
        }
        for sub in ["run/netns", "run/ns", "run/runtime", "root/pods"] {
            for e in std::fs::read_dir(self.dir.path().join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                left.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
        for uid in self.known_pod_uids() {
            for cg in pod_cgroups(&uid) {
                left.push(format!("cgroup {}", cg.display()));
            }
        }
        left
    }

    fn known_pod_uids(&self) -> Vec<String> {
        let mut uids: Vec<String> = std::fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Pods seen in logs (already removed from disk) may still have cgroups.
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        for line in text.lines() {
            if let Some(i) = line.find("uid=") {
                let uid: String = line[i + 4..].chars().take(36).collect();
                if uid.len() == 36 && !uids.contains(&uid) {
                    uids.push(uid);
                }
            }
        }
        uids
    }
}

fn shim_pids(dir: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("skiff-shim") && cmd.contains(dir) {
            pids.push(pid);
        }
    }
    pids
}

fn pod_cgroups(uid: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let name = format!("pod{uid}");
    let base = Path::new("/sys/fs/cgroup");
    let mut cands = vec![base.join("skiff").join(&name)];
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        cands.push(e.path().join("skiff").join(&name));
    }
    for c in cands {
        if c.is_dir() {
            out.push(c);
        }
    }
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        // Let skiff clean up after itself first, as a user would.
        if self.daemon.is_some() {
            for e in std::fs::read_dir(&self.manifests)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_file(e.path());
            }
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                let out = self.skiff(&["get", "pods", "-A", "-o", "json"]);
                let empty = serde_json::from_slice::<Value>(&out.stdout)
                    .map(|v| v["items"].as_array().is_none_or(|a| a.is_empty()))
                    .unwrap_or(true);
                if empty {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.stop_daemon();
        // Then force whatever is left (a failed test may have left anything).
        let dir = self.dir.path().to_string_lossy().into_owned();
        kill_pod_processes(&self.known_pod_uids());
        for pid in shim_pids(&dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(String::from)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for uid in self.known_pod_uids() {
            for cg in pod_cgroups(&uid) {
                for _ in 0..50 {
                    for e in std::fs::read_dir(&cg).into_iter().flatten().flatten() {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                    if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// SIGKILLs the processes in these pods' cgroups. A pid from a state file
/// could have been reused by an unrelated process; a cgroup cannot lie.
fn kill_pod_processes(uids: &[String]) {
    if uids.is_empty() {
        return;
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if uids.iter().any(|u| cg.contains(&format!("/skiff/pod{u}/"))) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A pod manifest with one busybox container running `script` under sh.
pub fn pod_yaml(name: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {script:?}]\n"
    )
}

/// Parses an RFC 3339 time from pod status.
pub fn ts(v: &Value) -> jiff::Timestamp {
    v.as_str()
        .expect("timestamp string")
        .parse()
        .expect("RFC 3339 timestamp")
}

// ---- networking helpers (tests/network.rs) -------------------------------------------------

/// Runs `f` on a fresh OS thread inside the network namespace at `ns` and
/// returns its result; sockets made there stay in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(&ns).expect("opening netns");
        nix::sched::setns(&f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A TCP server in a netns answering every connection with a tiny HTTP
/// response carrying `body`; stops when dropped.
pub struct HttpStub {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpStub {
    pub fn start(ns: &Path, addr: std::net::SocketAddr, body: &str) -> HttpStub {
        let listener = in_netns(ns, move || {
            std::net::TcpListener::bind(addr).expect("bind in netns")
        });
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = body.to_string();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 1024];
                        let _ = std::io::Read::read(&mut c, &mut buf);
                        let resp = format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
                            body.len(),
                            body
                        );
                        let _ = std::io::Write::write_all(&mut c, resp.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HttpStub {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain HTTP GET from inside the netns at `ns`; the body, or None.
pub fn http_get_in(ns: &Path, addr: std::net::SocketAddr) -> Option<String> {
    in_netns(ns, move || {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        std::io::Write::write_all(
            &mut c,
            format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut c, &mut out).ok()?;
        let (_, body) = out.split_once("\r\n\r\n")?;
        Some(body.to_string())
    })
}

impl Node {
    /// Runs `ip -n <host> ARGS`; panics on failure.
    pub fn host_ip_cmd(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.host.name)
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.host.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Gives the host netns a fake uplink: a veth pair with both ends up,
    /// `addr` (CIDR) on one end and a default route through `gw` on it,
    /// so skiffd finds a node IP.
    pub fn add_uplink(&self, addr: &str, gw: &str) {
        self.host_ip_cmd(&["link", "set", "lo", "up"]);
        self.host_ip_cmd(&[
            "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ]);
        self.host_ip_cmd(&["addr", "add", addr, "dev", "uplink0"]);
        self.host_ip_cmd(&["link", "set", "uplink0", "up"]);
        self.host_ip_cmd(&["link", "set", "uplink1", "up"]);
        self.host_ip_cmd(&["route", "add", "default", "via", gw, "dev", "uplink0"]);
    }

    /// veth interfaces in the host netns other than the fake uplink.
    pub fn host_veths(&self) -> Vec<String> {
        self.host_ip_cmd(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .filter(|n| !n.starts_with("uplink"))
            .collect()
    }

    /// IPs that host-local has allocated in `dir` (one file per address).
    pub fn allocations_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// Allocations of skiff's default network (`<root>/cni/networks/skiff`).
    pub fn allocations(&self) -> Vec<String> {
        Node::allocations_in(&self.root.join("cni/networks/skiff"))
    }

    /// `skiff exec POD -- sh -c SCRIPT`: (exit code, stdout+stderr).
    pub fn exec_sh(&self, pod: &str, script: &str) -> (i32, String) {
        let out = self.skiff(&["exec", pod, "--", "sh", "-c", script]);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Simulates a reboot after a crash of skiffd: skiffd SIGKILLed, every
    /// shim and container process killed, every mount under the node's dirs
    /// gone, the run dir emptied (tmpfs), the pods' cgroups gone and the cni0
    /// bridge gone. The root dir (state, CNI cache, IP allocations) stays.
    pub fn simulate_reboot(&mut self) {
        self.kill_daemon();
        kill_pod_processes(&self.known_pod_uids());
        let dir = self.dir.path().to_string_lossy().into_owned();
        for pid in shim_pids(&dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(String::from)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.run);
        for uid in self.known_pod_uids() {
            for cg in pod_cgroups(&uid) {
                for _ in 0..50 {
                    for e in std::fs::read_dir(&cg).into_iter().flatten().flatten() {
                        if e.path().is_dir() {
                            let _ = std::fs::remove_dir(e.path());
                        }
                    }
                    if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = Command::new("ip")
            .args(["-n", &self.host.name, "link", "del", "cni0"])
            .status();
    }
}

/// The real kubectl: the newest versioned binary of the Cloud SDK's dispatcher if there (the
/// dispatcher itself picks a version from the server's), else `kubectl` from PATH. `None`
/// (the kubectl parts are skipped, with a message) only outside CI; in CI it must be there.
pub fn kubectl_bin() -> Option<PathBuf> {
    let sdk = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33");
    if sdk.exists() {
        return Some(sdk.to_path_buf());
    }
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl must be installed in CI"
        );
        eprintln!("kubectl not found: the kubectl parts of this test are skipped");
    }
    ok.then(|| PathBuf::from("kubectl"))
}

/// Writes the kubeconfig `skiff kubeconfig` prints for `node`'s TLS API into its directory.
pub fn kubeconfig(node: &Node) -> PathBuf {
    let out = Command::new(bin("skiff"))
        .args(["kubeconfig", "--root-dir"])
        .arg(&node.root)
        .output()
        .expect("skiff kubeconfig");
    assert!(
        out.status.success(),
        "skiff kubeconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = node.dir().join("kubeconfig");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}
