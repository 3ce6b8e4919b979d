//! The multi-host lab of `scripts/lab.sh` driven from a test: [`Lab::up`] brings up N
//! network-namespace "hosts" under a random name (an underlay bridge in a netns of its own, one
//! real etcd on it, one skiffd per host), and `lab.sh down` removes them in `Drop`, also when the
//! test fails. Used by tests/overlay.rs and tests/dns_cluster.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::{bin, ensure_cni_plugins, test_image};

/// The underlay address of host `hI` as lab.sh assigns it.
pub fn host_ip(h: &str) -> Ipv4Addr {
    let i: u8 = h.trim_start_matches('h').parse().expect("host name hN");
    Ipv4Addr::new(10, 77, 0, 10 + i)
}

/// A /24 as "a.b.c.0/24" from any address in it ("10.244.3.1/24" as subnet.env has it).
pub fn net24(s: &str) -> String {
    let ip: Ipv4Addr = s
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let o = ip.octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

pub fn random_name() -> String {
    let mut buf = [0u8; 4];
    let f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut &f, &mut buf).expect("random bytes");
    format!(
        "skiff-lt-{}",
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A lab brought up by `scripts/lab.sh up`; `lab.sh down` on drop.
pub struct Lab {
    pub name: String,
    pub down: bool,
}

impl Lab {
    /// `lab.sh up N --name RANDOM` with skiff's test binaries and image, plus `opts`.
    pub fn up(n: usize, opts: &[&str]) -> Lab {
        ensure_cni_plugins();
        let image = test_image();
        let lab = Lab {
            name: random_name(),
            down: false,
        };
        let bin_dir = bin("skiffd").parent().unwrap().to_path_buf();
        let mut args = vec!["up".to_string(), n.to_string()];
        args.extend([
            "--bin".into(),
            bin_dir.display().to_string(),
            "--image".into(),
            image.display().to_string(),
        ]);
        args.extend(opts.iter().map(|s| s.to_string()));
        let out = lab.lab_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if !out.status.success() {
            // `up` removes a lab it could not finish; `down` in Drop makes sure.
            panic!("lab.sh up {n} --name {} failed:\n{}", lab.name, text(&out));
        }
        lab
    }

    /// Runs `scripts/lab.sh ARGS --name NAME`.
    pub fn lab_cmd(&self, args: &[&str]) -> Output {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/lab.sh");
        let (cmd, rest) = args.split_first().expect("a lab.sh command");
        Command::new("bash")
            .arg(script)
            .arg(cmd)
            .args(["--name", &self.name])
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .expect("running lab.sh")
    }

    /// `lab.sh ARGS` that must succeed.
    pub fn lab_ok(&self, args: &[&str]) -> String {
        let out = self.lab_cmd(args);
        assert!(
            out.status.success(),
            "lab.sh {args:?} --name {} failed:\n{}",
            self.name,
            text(&out)
        );
        text(&out)
    }

    pub fn netns(&self, h: &str) -> String {
        format!("{}-{h}", self.name)
    }

    pub fn netns_path(&self, h: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.netns(h))
    }

    pub fn node_name(&self, h: &str) -> String {
        self.netns(h)
    }

    pub fn state(&self, h: &str) -> PathBuf {
        PathBuf::from("/var/lib/skiff-lab").join(&self.name).join(h)
    }

    pub fn run_dir(&self, h: &str) -> PathBuf {
        PathBuf::from("/run/skiff-lab")
            .join(&self.name)
            .join(h)
            .join("run")
    }

    pub fn skiff(&self, h: &str, args: &[&str]) -> Output {
        Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_SOCKET", self.run_dir(h).join("skiff.sock"))
            .stdin(Stdio::null())
            .output()
            .expect("running skiff")
    }

    pub fn skiff_ok(&self, h: &str, args: &[&str]) -> String {
        let out = self.skiff(h, args);
        assert!(
            out.status.success(),
            "{h}: skiff {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, h: &str, args: &[&str]) -> Option<Value> {
        let out = self.skiff(h, args);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Writes a manifest into host `h`'s manifest dir atomically.
    pub fn write_manifest(&self, h: &str, file: &str, text: &str) {
        let dir = self.state(h).join("manifests");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }

    /// The /24 host `h` leased, from its subnet.env.
    pub fn subnet(&self, h: &str) -> Option<String> {
        let env = std::fs::read_to_string(self.run_dir(h).join("subnet.env")).ok()?;
        env.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .map(net24)
    }

    pub fn wait_subnet(&self, h: &str) -> String {
        self.wait_for(
            &format!("{h}: subnet.env with FLANNEL_SUBNET"),
            Duration::from_secs(30),
            || self.subnet(h),
        )
    }

    /// `CMD -n NETNS -j ARGS` (ip or bridge) parsed; an empty list when the device is gone.
    pub fn netlink_json(&self, tool: &str, h: &str, args: &[&str]) -> Vec<Value> {
        let out = Command::new(tool)
            .args(["-n", &self.netns(h), "-j"])
            .args(args)
            .output()
            .expect(tool);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// What host `h` has programmed for a peer: (route, neigh, fdb) present for `subnet`/`peer_ip`.
    pub fn peer_state(&self, h: &str, subnet: &str, peer_ip: Ipv4Addr) -> (bool, bool, bool) {
        let gw = subnet.split('/').next().unwrap().to_string();
        let route = self
            .netlink_json("ip", h, &["route", "show", "dev", "skiff.1"])
            .iter()
            .any(|r| {
                r["dst"] == subnet
                    && r["gateway"] == gw.as_str()
                    && r["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|f| f == "onlink"))
            });
        let neigh = self
            .netlink_json("ip", h, &["neigh", "show", "dev", "skiff.1"])
            .iter()
            .any(|n| {
                n["dst"] == gw.as_str()
                    && n["state"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s == "PERMANENT"))
            });
        let fdb = self
            .netlink_json("bridge", h, &["fdb", "show", "dev", "skiff.1"])
            .iter()
            .any(|f| f["dst"] == peer_ip.to_string().as_str());
        (route, neigh, fdb)
    }

    /// Asserts that every host in `hosts` has a route, neigh and fdb entry for every other
    /// host of `subnets` right now (`when` says when, for the message).
    pub fn assert_meshed(&self, hosts: &[&str], subnets: &BTreeMap<String, String>, when: &str) {
        for h in hosts {
            for (p, s) in subnets {
                if p != h {
                    assert_eq!(
                        self.peer_state(h, s, host_ip(p)),
                        (true, true, true),
                        "{h} lost {p} {when}"
                    );
                }
            }
        }
    }

    /// Waits until every host has a route, neigh and fdb entry for every other host.
    pub fn wait_meshed(&self, hosts: &[&str], timeout: Duration) -> BTreeMap<String, String> {
        let subnets: BTreeMap<String, String> = hosts
            .iter()
            .map(|h| (h.to_string(), self.wait_subnet(h)))
            .collect();
        for h in hosts {
            for (p, subnet) in &subnets {
                if p == h {
                    continue;
                }
                self.wait_for(
                    &format!("{h}: route, neigh and fdb for {p} ({subnet})"),
                    timeout,
                    || (self.peer_state(h, subnet, host_ip(p)) == (true, true, true)).then_some(()),
                );
            }
        }
        subnets
    }

    pub fn pod(&self, h: &str, name: &str) -> Option<Value> {
        self.json(h, &["get", "pod", name, "-o", "json"])
    }

    /// Waits until the pod is Running with every container ready; returns its IP.
    pub fn wait_running(&self, h: &str, name: &str) -> Ipv4Addr {
        self.wait_for(
            &format!("{h}: pod {name} Running and ready"),
            Duration::from_secs(60),
            || {
                let p = self.pod(h, name)?;
                let ready = p["status"]["containerStatuses"]
                    .as_array()?
                    .iter()
                    .all(|c| c["ready"] == true);
                (p["status"]["phase"] == "Running" && ready).then_some(())?;
                p["status"]["podIP"].as_str()?.parse().ok()
            },
        )
    }

    /// `skiff exec POD -- sh -c SCRIPT` on host `h`: (exit code, output).
    pub fn exec_sh(&self, h: &str, pod: &str, script: &str) -> (i32, String) {
        let out = self.skiff(h, &["exec", pod, "--", "sh", "-c", script]);
        (out.status.code().unwrap_or(-1), text(&out))
    }

    /// One HTTP GET from inside pod `pod` on `h`: the body, or None.
    pub fn get_from_pod(&self, h: &str, pod: &str, url: &str) -> Option<String> {
        // busybox 1.35 (Debian 12) wget segfaults with -T, so `timeout` bounds it instead.
        let (code, out) = self.exec_sh(h, pod, &format!("timeout 3 wget -q -O- {url}"));
        (code == 0).then(|| out.trim().to_string())
    }

    /// `n` GETs of `url` from pod `pod` on `h` in one exec; one answer a line (`FAIL ...`).
    pub fn gets_from_pod(&self, h: &str, pod: &str, url: &str, n: usize) -> Vec<String> {
        let script = format!(
            "for i in $(seq {n}); do timeout 3 wget -q -O- {url} 2>/tmp/err || echo FAIL $(cat /tmp/err); done"
        );
        let out = self.skiff_ok(h, &["exec", pod, "--", "sh", "-c", &script]);
        out.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// One HTTP GET from host `h`'s network namespace (curl, 3 s).
    pub fn get_from_host(&self, h: &str, url: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path(h).display()))
            .args(["curl", "-sf", "-m", "3", url])
            .output()
            .expect("nsenter curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The node condition `type` of host `h`'s node: its status ("True"/"False"), if any.
    pub fn node_condition(&self, h: &str, kind: &str) -> Option<String> {
        let node = self.json(h, &["get", "node", &self.node_name(h), "-o", "json"])?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["status"].as_str().map(String::from))
    }

    /// The keys and values under `prefix` in the lab's etcd (v3 JSON gateway, from the underlay).
    pub fn etcd_range(&self, prefix: &str) -> Vec<(String, String)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end)})
            .to_string();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}-underlay", self.name))
            .args([
                "curl",
                "-sf",
                "-m",
                "3",
                "-X",
                "POST",
                "http://10.77.0.1:2379/v3/kv/range",
                "-d",
                &body,
            ])
            .output()
            .expect("nsenter curl");
        assert!(out.status.success(), "etcd range {prefix}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("etcd JSON");
        let dec = |v: &Value| {
            String::from_utf8(b64.decode(v.as_str().unwrap_or_default()).unwrap()).unwrap()
        };
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (dec(&kv["key"]), dec(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ready addresses of the Endpoints `name` as host `h` sees them.
    pub fn endpoint_ips(&self, h: &str, name: &str) -> BTreeSet<String> {
        let Some(v) = self.json(h, &["get", "ep", name, "-o", "json"]) else {
            return BTreeSet::new();
        };
        v["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect()
    }

    pub fn cluster_ip(&self, h: &str, svc: &str) -> String {
        self.wait_for(
            &format!("{h}: Service {svc} (shared through etcd)"),
            Duration::from_secs(30),
            || {
                self.json(h, &["get", "svc", svc, "-o", "json"])?["spec"]["clusterIP"]
                    .as_str()
                    .map(String::from)
            },
        )
    }

    /// Polls `f` every 100 ms until it returns Some; panics with the hosts' log tails on timeout.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        testkit::until(timeout, Duration::from_millis(100), f).unwrap_or_else(|_| {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.logs(25)
            )
        })
    }

    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        let mut hosts: Vec<String> =
            std::fs::read_dir(PathBuf::from("/var/lib/skiff-lab").join(&self.name))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('h'))
                .collect();
        hosts.sort();
        for h in &hosts {
            let text =
                std::fs::read_to_string(self.state(h).join("skiffd.log")).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            s += &format!(
                "--- {h} skiffd log (tail) ---\n{}\n",
                all[all.len().saturating_sub(lines)..].join("\n")
            );
        }
        s
    }

    /// `lab.sh down`, which must find nothing skiff should have removed, and no netns of the lab left.
    pub fn down_checked(mut self) {
        self.down = true;
        let out = self.lab_cmd(&["down"]);
        assert!(
            out.status.success(),
            "lab.sh down reported leftovers:\n{}",
            text(&out)
        );
        let netns = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{}-", self.name)))
            .map(String::from)
            .collect();
        assert!(left.is_empty(), "netns left after down: {left:?}");
        assert!(
            !PathBuf::from("/var/lib/skiff-lab")
                .join(&self.name)
                .exists(),
            "state dir left after down"
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let out = self.lab_cmd(&["down"]);
            if !out.status.success() {
                eprintln!("lab.sh down --name {}:\n{}", self.name, text(&out));
            }
        }
    }
}
