//! Test support for the workspace's tests, as CNI's `pkg/testutils`: what the tests of the
//! `skiff` package, `cni`, `netns` and `images` share and that is tied to none of their
//! binaries. A dev-dependency only; nothing here runs in skiffd.
//!
//! - [`require_root`]: root-only tests are `#[ignore = "needs root"]` and fail (not pass)
//!   when run without root.
//! - [`Netns`]: a throwaway named network namespace, deleted on drop.
//! - [`Certs`]: a test CA and a server certificate it signs, made with `openssl`.
//! - [`until`]: polling a condition instead of sleeping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root-only tests are `#[ignore = "needs root"]`: `cargo test` lists them as ignored, and
/// scripts/test.sh runs them as root with `--include-ignored`. Run without root they fail here
/// rather than pass having tested nothing.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root: run it as root (sudo scripts/test.sh runs every root test)"
    );
}

/// Eight random hex digits, for names that must not collide with a parallel test's.
pub fn random_suffix() -> String {
    let mut buf = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A named network namespace (`/run/netns/skiff-t-<random>`) standing in for a host; deleted
/// on drop, which removes every link, address, route and rule made inside it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `skiff-t-<random>` with `ip netns add`; panics when that fails.
    pub fn new() -> Netns {
        let name = format!("skiff-t-{}", random_suffix());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        Netns { name }
    }

    /// The namespace's bind mount, to enter with `nsenter --net=PATH` or `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Polls `f` every `every` until it returns `Some`; `Err` with how long it waited when
/// `timeout` passes first (the caller adds what it knows, such as a daemon's log).
pub fn until<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, Duration> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(start.elapsed());
        }
        std::thread::sleep(every);
    }
}

/// A test CA and a server certificate it signs for `127.0.0.1` and `localhost` (webpki
/// refuses a CA as the server's own), P-256 keys, valid two days; made with `openssl`.
pub struct Certs {
    /// The CA certificate (PEM), for clients to trust.
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// The server certificate (PEM) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// Writes `ca.pem`, `ca.key`, `cert.pem` and `key.pem` (and the request files) into `dir`.
    pub fn generate(dir: &Path) -> Certs {
        let c = Certs {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        let (csr, ext) = (dir.join("req.csr"), dir.join("ext.cnf"));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "2", "-subj", "/CN=skiff test CA"])
                .args(ec)
                .arg("-keyout")
                .arg(&c.ca_key)
                .arg("-out")
                .arg(&c.ca),
        );
        openssl(
            Command::new("openssl")
                .args(["req", "-subj", "/CN=127.0.0.1"])
                .args(ec)
                .arg("-keyout")
                .arg(&c.key)
                .arg("-out")
                .arg(&csr),
        );
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .expect("writing the certificate extensions");
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&c.ca)
                .arg("-CAkey")
                .arg(&c.ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&c.cert),
        );
        c
    }
}

/// Runs one openssl command; panics with its stderr when it fails.
fn openssl(cmd: &mut Command) {
    let out = cmd.output().expect("running openssl");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_the_value_or_how_long_it_waited() {
        let mut n = 0;
        let v = until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, Ok(3));
        let waited = until(Duration::from_millis(20), Duration::from_millis(5), || {
            None::<()>
        })
        .unwrap_err();
        assert!(waited >= Duration::from_millis(20));
    }

    #[test]
    fn certificates_are_made_and_signed_by_the_ca() {
        let d = tempfile::tempdir().unwrap();
        let c = Certs::generate(d.path());
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&c.ca)
            .arg(&c.cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
