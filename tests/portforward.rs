//! Root test of `kubectl port-forward` (issue 10, `pods/portforward`): the real kubectl,
//! run inside the test's throwaway netns against skiffd's TLS API, forwards a local port to
//! port 80 inside a pod (busybox httpd).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{http_get_in, require_root};

use common::kubectl::Kubectl as Api;

/// `kubectl port-forward` on top of the common calls.
impl Api {
    /// `kubectl port-forward ARGS` in the background, once it printed "Forwarding from".
    fn forward(&self, args: &[&str]) -> Forward {
        self.forward_env(args, &[])
    }

    /// [`Api::forward`] with more environment for kubectl.
    fn forward_env(&self, args: &[&str], env: &[(&str, &str)]) -> Forward {
        let mut all = vec!["port-forward"];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kubectl port-forward");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        let mut f = Forward {
            child,
            lines: rx,
            seen: Vec::new(),
        };
        assert!(
            f.wait_line("Forwarding from", Duration::from_secs(30)),
            "kubectl port-forward did not start: {:?}",
            f.seen
        );
        f
    }
}

/// A running `kubectl port-forward` and what it printed (stdout and stderr).
struct Forward {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Forward {
    fn wait_line(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for kubectl to exit by itself.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls until skiffd's open fds are back at `before` (or below); the last count.
fn wait_fds(pid: u32, before: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = fd_count(pid);
        if n <= before || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PAGE: &str = "hello through port-forward\n";

/// A pod serving a file over HTTP on port 80; kubectl forwards 18080 to it. Two sequential
/// and two concurrent GETs through the forward get the file. A port nobody listens on gives
/// kubectl the kubelet's error (and kubectl, since 1.23, ends its session on such an
/// error); skiffd keeps serving new forwards. Killing kubectl leaves skiffd's fd count where
/// it was.
#[test]
#[ignore = "needs root"]
fn kubectl_port_forward_reaches_the_pods_port() {
    require_root();
    let api = Api::start();
    let script = format!(
        "mkdir -p /www && printf '{}' > /www/index.html && head -c 3000000 /dev/zero | tr '\\0' x > /www/big && exec httpd -f -p 80 -h /www",
        PAGE.replace('\n', "\\n")
    );
    api.node
        .write_manifest("web.yaml", &common::pod_yaml("web", &script));
    api.node.wait_running("web");
    let pid = api.node.daemon_pid().expect("skiffd runs");
    // One request first so skiffd's lazily made things (TLS, caches) exist before counting.
    let warm = api.run(&["get", "pod", "web"]);
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let fds_before = fd_count(pid);

    let ns = api.node.host.path();
    let addr: SocketAddr = "127.0.0.1:18080".parse().unwrap();
    let mut fwd = api.forward(&["pod/web", "18080:80"]);
    let get = |ns: &Path| {
        // The pod's httpd may take a moment to listen: poll.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = http_get_in(ns, addr);
            if got.as_deref() == Some(PAGE) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for _ in 0..2 {
        assert_eq!(get(&ns).as_deref(), Some(PAGE), "kubectl: {:?}", fwd.seen);
    }
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let ns = ns.clone();
            std::thread::spawn(move || http_get_in(&ns, addr))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().as_deref(), Some(PAGE));
    }
    assert!(fwd.wait_line("Handling connection for 18080", Duration::from_secs(5)));
    // 3 MB from the pod: far above SPDY's initial 64 KiB window (kubectl's spdystream does
    // no flow control, so neither side waits for WINDOW_UPDATEs).
    let big = common::in_netns(&ns, move || {
        let mut c = std::net::TcpStream::connect(addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        std::io::Write::write_all(&mut c, b"GET /big HTTP/1.0\r\n\r\n").ok()?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut out).ok()?;
        let at = out.windows(4).position(|w| w == b"\r\n\r\n")?;
        Some(out.split_off(at + 4))
    });
    let big = big.expect("GET /big through the forward");
    assert_eq!(big.len(), 3_000_000);
    assert!(big.iter().all(|&b| b == b'x'));

    // Killing kubectl ends its session: skiffd's fds go back.
    drop(fwd);
    let after = wait_fds(pid, fds_before);
    assert!(
        after <= fds_before,
        "skiffd had {fds_before} fds before the forward and {after} after"
    );

    // A port nobody listens on: the kubelet's error, through kubectl.
    let threads_before = thread_count(pid);
    let mut bad = api.forward(&["pod/web", "18081:9999", "18080:80"]);
    let bad_addr: SocketAddr = "127.0.0.1:18081".parse().unwrap();
    assert_eq!(
        get(&ns).as_deref(),
        Some(PAGE),
        "the good port before the bad one: {:?}",
        bad.seen
    );
    assert_eq!(http_get_in(&ns, bad_addr), None);
    assert!(
        bad.wait_line(
            "an error occurred forwarding 18081 -> 9999",
            Duration::from_secs(10)
        ),
        "{:?}",
        bad.seen
    );
    assert!(
        bad.seen
            .iter()
            .any(|l| l.contains("connection refused") && l.contains("error forwarding port 9999")),
        "{:?}",
        bad.seen
    );
    // kubectl (1.23+) ends its whole session after such an error; a new forward works.
    assert!(
        bad.wait_exit(Duration::from_secs(10)).is_some(),
        "kubectl kept running after the error: {:?}",
        bad.seen
    );
    drop(bad);
    let fwd = api.forward(&["pod/web", "18080:80"]);
    assert_eq!(get(&ns).as_deref(), Some(PAGE), "kubectl: {:?}", fwd.seen);
    drop(fwd);
    // kubectl's fallback without WebSockets: a plain SPDY/3.1 upgrade.
    let fwd = api.forward_env(
        &["pod/web", "18080:80", "-v=6"],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    );
    let mut fwd = fwd;
    assert_eq!(get(&ns).as_deref(), Some(PAGE), "kubectl: {:?}", fwd.seen);
    // kubectl logs the upgrade's response line on its own schedule: wait for it.
    assert!(
        fwd.wait_line("101 Switching Protocols", Duration::from_secs(10)),
        "kubectl did not upgrade with SPDY: {:?}",
        fwd.seen
    );
    assert!(
        fwd.seen
            .iter()
            .any(|l| l.contains("POST") && l.contains("/portforward") && l.contains("101")),
        "kubectl did not upgrade with SPDY: {:?}",
        fwd.seen
    );
    drop(fwd);
    let after = wait_fds(pid, fds_before);
    assert!(
        after <= fds_before,
        "skiffd had {fds_before} fds before the forwards and {after} after"
    );
    // No connection threads are left (the netns threads end with their connect).
    let deadline = Instant::now() + Duration::from_secs(20);
    while thread_count(pid) > threads_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let threads = thread_count(pid);
    assert!(
        threads <= threads_before,
        "skiffd had {threads_before} threads before and {threads} after"
    );
}

/// Requests for a protocol skiffd does not speak get a 400 `Status` naming what is served,
/// before any upgrade; a plain GET too.
#[test]
#[ignore = "needs root"]
fn port_forward_refuses_other_protocols_before_upgrading() {
    require_root();
    let api = Api::start();
    api.node
        .write_manifest("web.yaml", &common::pod_yaml("web", "sleep 3600"));
    api.node.wait_running("web");
    let token = std::fs::read_to_string(api.node.root.join("pki/tokens")).unwrap();
    let token = token.lines().next().unwrap().split(',').next().unwrap();
    let curl = |headers: &[&str]| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", api.node.host.path().display()))
            .args([
                "curl",
                "-sS",
                "--http1.1",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(api.node.root.join("pki/ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {token}")]);
        for h in headers {
            c.args(["-H", h]);
        }
        c.arg("https://127.0.0.1:6443/api/v1/namespaces/default/pods/web/portforward");
        let out = c.output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The old WebSocket port-forward protocol (v4.channel.k8s.io), not served.
    let ws = curl(&[
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol: v4.channel.k8s.io",
    ]);
    assert!(ws.ends_with("\n400"), "{ws}");
    assert!(
        ws.contains("SPDY/3.1+portforward.k8s.io") && ws.contains("v4.channel.k8s.io"),
        "{ws}"
    );
    // No upgrade at all.
    let plain = curl(&[]);
    assert!(plain.ends_with("\n400"), "{plain}");
    assert!(plain.contains("BadRequest"), "{plain}");
    // A pod that does not exist: 404 before anything else.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", api.node.host.path().display()))
        .args([
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(api.node.root.join("pki/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("https://127.0.0.1:6443/api/v1/namespaces/default/pods/nope/portforward");
    let out = c.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}
