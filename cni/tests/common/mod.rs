//! Throwaway "host" and container network namespaces for root tests.
//! Everything (bridge, veths, iptables rules) lives in the throwaway host
//! netns; Drop removes the namespaces, which takes all of it with them.

#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cni::Network;
use cni::invoke::ProcessRunner;
use serde_json::Value;

/// Fails the calling test when not root ([`testkit::require_root`]). Root tests are
/// `#[ignore = "needs root"]`; scripts/test.sh runs them as root with `--include-ignored`.
#[macro_export]
macro_rules! need_root {
    () => {
        testkit::require_root();
    };
}

/// Directory holding skiff's plugin binaries built for this test run.
pub fn skiff_bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_skiff-bridge"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub host: PathBuf,
    containers: Vec<PathBuf>,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("skiff-cni-")
            .tempdir_in("/run")
            .unwrap();
        let host = dir.path().join("host");
        netns::create(&host, netns::Kind::Net, None).unwrap();
        Lab {
            dir,
            host,
            containers: Vec::new(),
        }
    }

    /// A fresh container netns.
    pub fn container(&mut self, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("ctr-{name}"));
        netns::create(&p, netns::Kind::Net, None).unwrap();
        self.containers.push(p.clone());
        p
    }

    /// Removes a container netns early (as after a crash or reboot).
    pub fn remove_container(&mut self, p: &Path) {
        netns::remove(p).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Runs a plugin binary inside the host netns; returns (exit code, stdout JSON).
    pub fn plugin(&self, bin: &Path, env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.host.display()))
            .arg(bin)
            .env("CNI_PATH", skiff_bin_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), v)
    }

    /// A network from `conflist` whose plugins run in the host netns.
    pub fn network(&self, conflist: &str, bin_dirs: Vec<PathBuf>) -> Network {
        Network::from_bytes(conflist.as_bytes(), Path::new("test.conflist"))
            .unwrap()
            .with_bin_dirs(bin_dirs)
            .with_cache_dir(self.cache_dir())
            .with_timeout(Duration::from_secs(30))
            .with_runner(Arc::new(ProcessRunner {
                prefix: vec![
                    "nsenter".into(),
                    format!("--net={}", self.host.display()).into(),
                ],
            }))
    }

    /// Names of links in a netns.
    pub fn links(ns: &Path) -> Vec<cni::netlink::Link> {
        netns::run_in(ns, || cni::netlink::Handle::new().unwrap().links().unwrap()).unwrap()
    }

    /// Allocation files (IP names) under the data dir for `network`.
    pub fn allocations(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data_dir().join(network))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = netns::remove(c);
        }
        let _ = netns::remove(&self.host);
    }
}

/// Opens a listener inside `ns` on `addr` (port 0 = any).
pub fn listen_in(ns: &Path, addr: SocketAddr) -> TcpListener {
    netns::run_in(ns, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap()
}

/// Whether a TCP connection from inside `ns` to `to` is accepted.
pub fn connects_from(ns: &Path, to: SocketAddr) -> bool {
    netns::run_in(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).is_ok()
    })
    .unwrap()
}

/// Routes in `ns` as (iface, dst, gateway, mask) hex lines of /proc/thread-self/net/route.
pub fn default_gateway(ns: &Path) -> Option<IpAddr> {
    netns::run_in(ns, || {
        let t = std::fs::read_to_string("/proc/thread-self/net/route").ok()?;
        t.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1] == "00000000" && f[7] == "00000000").then(|| {
                let gw = u32::from_str_radix(f[2], 16).unwrap().swap_bytes();
                IpAddr::V4(gw.into())
            })
        })
    })
    .unwrap()
}

/// IPv4 addresses on `ifname` in `ns`.
pub fn addrs_in(ns: &Path, ifname: &str) -> Vec<cni::IpNet> {
    let ifname = ifname.to_string();
    netns::run_in(ns, move || {
        let mut h = cni::netlink::Handle::new().unwrap();
        match h.link(&ifname).unwrap() {
            Some(l) => h
                .addrs(l.index)
                .unwrap()
                .into_iter()
                .filter(|a| a.addr.is_ipv4())
                .collect(),
            None => Vec::new(),
        }
    })
    .unwrap()
}

/// nat table of the host netns.
pub fn nat_rules(host: &Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", host.display()))
        .args(["iptables-save", "-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
