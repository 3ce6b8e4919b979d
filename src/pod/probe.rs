//! Container probes (liveness, readiness, startup) and lifecycle hook
//! handlers, with the kubelet's defaults and thresholds. Network probes run
//! inside the pod's network namespace against the pod IP (127.0.0.1 when the
//! pod has none), on a throwaway thread that joined it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;

use crate::runtime::PodRuntime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// What a prober tells its pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Readiness changed.
    Ready(bool),
    /// The startup probe succeeded (liveness and readiness begin).
    Started,
    /// A probe failed once (`Unhealthy` event).
    Unhealthy(Kind, String),
    /// Liveness or startup failed `failureThreshold` times: restart the container.
    Restart(Kind, String),
}

/// Where probes and handlers reach the container.
#[derive(Clone)]
pub struct Target {
    pub container_id: String,
    pub container: Container,
    pub netns: Option<PathBuf>,
    pub pod_ip: Option<IpAddr>,
    pub runtime: Arc<dyn PodRuntime>,
}

/// A handler: exec, httpGet, tcpSocket or (probes only) grpc.
#[derive(Debug, Clone)]
pub enum Handler {
    Exec(Vec<String>),
    Http(HTTPGetAction),
    Tcp(TCPSocketAction),
    Grpc(GRPCAction),
}

impl Handler {
    pub fn of_probe(p: &Probe) -> Option<Handler> {
        if let Some(e) = &p.exec {
            return Some(Handler::Exec(e.command.clone().unwrap_or_default()));
        }
        if let Some(h) = &p.http_get {
            return Some(Handler::Http(h.clone()));
        }
        if let Some(g) = &p.grpc {
            return Some(Handler::Grpc(g.clone()));
        }
        p.tcp_socket.as_ref().map(|t| Handler::Tcp(t.clone()))
    }

    pub fn of_lifecycle(h: &k8s_openapi::api::core::v1::LifecycleHandler) -> Option<Handler> {
        if let Some(e) = &h.exec {
            return Some(Handler::Exec(e.command.clone().unwrap_or_default()));
        }
        if let Some(g) = &h.http_get {
            return Some(Handler::Http(g.clone()));
        }
        h.tcp_socket.as_ref().map(|t| Handler::Tcp(t.clone()))
    }
}

/// The probe's settings with Kubernetes' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe, kind: Kind) -> Timing {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            // Liveness and startup must use 1, as the API server enforces.
            success_threshold: if kind == Kind::Readiness {
                p.success_threshold.unwrap_or(1).max(1) as u32
            } else {
                1
            },
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port as u16)
                .ok_or_else(|| format!("port name {name:?} not found in the container's ports"))
        }
    }
}

/// Runs a handler once. `Ok(detail)` on success, `Err(reason)` on failure.
pub async fn run(handler: &Handler, t: &Target, timeout: Duration) -> Result<String, String> {
    match handler {
        Handler::Exec(argv) => {
            if argv.is_empty() {
                return Err("exec handler without a command".into());
            }
            let (code, output) = t
                .runtime
                .exec(&t.container_id, argv.clone(), timeout)
                .await?;
            if code == 0 {
                Ok(output)
            } else {
                Err(format!(
                    "command {:?} exited with {code}: {}",
                    argv.join(" "),
                    output.trim()
                ))
            }
        }
        Handler::Http(h) => {
            let port = resolve_port(&h.port, &t.container)?;
            let host: IpAddr = match h.host.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => h
                    .parse()
                    .map_err(|_| format!("host {h:?} is not an IP address"))?,
                None => t.pod_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            };
            let tls = h
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect();
            let addr = SocketAddr::new(host, port);
            in_netns(t.netns.clone(), move || {
                if tls {
                    https_get(addr, &path, &headers, timeout)
                } else {
                    http_get(addr, &path, &headers, timeout)
                }
            })
            .await
        }
        Handler::Tcp(s) => {
            let port = resolve_port(&s.port, &t.container)?;
            let host: IpAddr = match s.host.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => h
                    .parse()
                    .map_err(|_| format!("host {h:?} is not an IP address"))?,
                None => t.pod_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            };
            let addr = SocketAddr::new(host, port);
            in_netns(t.netns.clone(), move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(|_| String::new())
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            })
            .await
        }
        Handler::Grpc(g) => {
            let port =
                u16::try_from(g.port).map_err(|_| format!("port {} out of range", g.port))?;
            let host = t.pod_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            let addr = SocketAddr::new(host, port);
            // Connected inside the pod's network namespace; the socket stays in it after.
            let stream = in_netns_value(t.netns.clone(), move || {
                let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
                    format!("timeout: failed to connect service \"{addr}\" within {timeout:?}: {e}")
                })?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(s)
            })
            .await?;
            let stream = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
            let service = g.service.clone().unwrap_or_default();
            super::grpc_health::check(stream, &addr.to_string(), &service, timeout).await
        }
    }
}

/// Like [`in_netns`], for a closure that returns something else than a detail string.
async fn in_netns_value<T, F>(netns: Option<PathBuf>, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    tokio::task::spawn_blocking(move || match netns {
        Some(path) => netns::run_in(&path, f).map_err(|e| e.to_string())?,
        None => f(),
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn in_netns<F>(netns: Option<PathBuf>, f: F) -> Result<String, String>
where
    F: FnOnce() -> Result<String, String> + Send + 'static,
{
    tokio::task::spawn_blocking(move || match netns {
        Some(path) => netns::run_in(&path, f).map_err(|e| e.to_string())?,
        None => f(),
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A minimal HTTP/1.1 GET: success is a status in 200..400, like the kubelet.
fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    exchange(s, "http", addr, path, headers)
}

/// The same over TLS. Like the kubelet's prober, the server's certificate
/// is not verified: probes check liveness, not identity.
fn https_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    use std::sync::Arc;
    let err = |e: &dyn std::fmt::Display| format!("Get \"https://{addr}{path}\": {e}");
    let config = images::no_verify_config().map_err(|e| err(&e))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| err(&e))?;
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| err(&e))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    exchange(
        rustls::StreamOwned::new(conn, s),
        "https",
        addr,
        path,
        headers,
    )
}

/// Sends the GET on an open stream and judges the status line.
fn exchange(
    mut s: impl Read + Write,
    scheme: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<String, String> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("Get \"{scheme}://{addr}{path}\": {e}"))?;
    let _ = s.flush();
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if buf[..got].windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(e) => return Err(format!("Get \"{scheme}://{addr}{path}\": {e}")),
        }
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{scheme}://{addr}{path}\": malformed HTTP response"))?;
    if (200..400).contains(&status) {
        Ok(format!("HTTP probe succeeded with statuscode: {status}"))
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// Runs a container's probes until the receiver goes away: startup first
/// (gating the others), then liveness and readiness, each on its own period.
pub async fn prober(t: Target, tx: mpsc::UnboundedSender<(String, Report)>) {
    let c = t.container.clone();
    let id = t.container_id.clone();
    let send = |r: Report| tx.send((id.clone(), r)).is_ok();
    if let Some(p) = &c.startup_probe {
        let Some(h) = Handler::of_probe(p) else {
            return;
        };
        let tm = Timing::of(p, Kind::Startup);
        tokio::time::sleep(tm.initial_delay).await;
        let mut failures = 0;
        loop {
            match run(&h, &t, tm.timeout).await {
                Ok(_) => break,
                Err(e) => {
                    failures += 1;
                    if !send(Report::Unhealthy(Kind::Startup, e.clone())) {
                        return;
                    }
                    if failures >= tm.failure_threshold {
                        send(Report::Restart(Kind::Startup, e));
                        return;
                    }
                }
            }
            tokio::time::sleep(tm.period).await;
        }
    }
    if !send(Report::Started) {
        return;
    }
    let live = c
        .liveness_probe
        .clone()
        .and_then(|p| Some((Handler::of_probe(&p)?, Timing::of(&p, Kind::Liveness))));
    let ready = c
        .readiness_probe
        .clone()
        .and_then(|p| Some((Handler::of_probe(&p)?, Timing::of(&p, Kind::Readiness))));
    if ready.is_none() && c.readiness_probe.is_none() {
        // No readiness probe: ready as soon as it runs (and has started).
        if !send(Report::Ready(true)) {
            return;
        }
    }
    let t2 = t.clone();
    let tx2 = tx.clone();
    let id2 = id.clone();
    let readiness = async move {
        let Some((h, tm)) = ready else {
            return std::future::pending::<()>().await;
        };
        tokio::time::sleep(tm.initial_delay).await;
        let (mut ok, mut bad, mut state) = (0u32, 0u32, None::<bool>);
        loop {
            match run(&h, &t2, tm.timeout).await {
                Ok(_) => {
                    ok += 1;
                    bad = 0;
                    if ok >= tm.success_threshold && state != Some(true) {
                        state = Some(true);
                        if tx2.send((id2.clone(), Report::Ready(true))).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    bad += 1;
                    ok = 0;
                    if tx2
                        .send((id2.clone(), Report::Unhealthy(Kind::Readiness, e)))
                        .is_err()
                    {
                        return;
                    }
                    if bad >= tm.failure_threshold && state != Some(false) {
                        state = Some(false);
                        if tx2.send((id2.clone(), Report::Ready(false))).is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(tm.period).await;
        }
    };
    let liveness = async move {
        let Some((h, tm)) = live else {
            return std::future::pending::<()>().await;
        };
        tokio::time::sleep(tm.initial_delay).await;
        let mut bad = 0u32;
        loop {
            match run(&h, &t, tm.timeout).await {
                Ok(_) => bad = 0,
                Err(e) => {
                    bad += 1;
                    if tx
                        .send((id.clone(), Report::Unhealthy(Kind::Liveness, e.clone())))
                        .is_err()
                    {
                        return;
                    }
                    if bad >= tm.failure_threshold {
                        let _ = tx.send((id.clone(), Report::Restart(Kind::Liveness, e)));
                        return;
                    }
                }
            }
            tokio::time::sleep(tm.period).await;
        }
    };
    tokio::join!(readiness, liveness);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_kubernetes() {
        let p: Probe = serde_yaml_ng::from_str("exec: {command: [true]}").unwrap();
        let t = Timing::of(&p, Kind::Liveness);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.failure_threshold, 3);
        assert_eq!(t.success_threshold, 1);
        assert_eq!(t.initial_delay, Duration::ZERO);
        let p: Probe =
            serde_yaml_ng::from_str("exec: {command: [true]}\nsuccessThreshold: 3").unwrap();
        assert_eq!(Timing::of(&p, Kind::Readiness).success_threshold, 3);
        assert_eq!(Timing::of(&p, Kind::Liveness).success_threshold, 1);
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c: Container =
            serde_yaml_ng::from_str("name: c\nports: [{name: http, containerPort: 8080}]").unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).unwrap(),
            8080
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &c).unwrap(), 81);
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
    }

    #[test]
    fn http_get_judges_status_codes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for code in [200, 302, 500] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("X-Probe: yes\r\n"));
                write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let h = vec![("X-Probe".to_string(), "yes".to_string())];
        assert!(http_get(addr, "/healthz", &h, Duration::from_secs(2)).is_ok());
        assert!(http_get(addr, "/healthz", &h, Duration::from_secs(2)).is_ok());
        let err = http_get(addr, "/healthz", &h, Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("statuscode: 500"), "{err}");
        server.join().unwrap();
    }

    /// An HTTPS probe against a real TLS server (`openssl s_server -www`)
    /// with a self-signed certificate, which the prober must accept.
    #[test]
    fn https_get_accepts_a_self_signed_server() {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: openssl not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=probe",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut result = Err(String::new());
        for _ in 0..100 {
            result = https_get(addr, "/", &[], Duration::from_secs(2));
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
        assert!(result.is_ok(), "{result:?}");
    }
}
