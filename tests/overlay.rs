//! Root tests for the multi-host overlay (issue #6) on labs built by `scripts/lab.sh`: each
//! test brings up its own lab of network-namespace "hosts" under a random name (an underlay
//! bridge in a netns of its own, one etcd, one skiffd per host) and removes it with
//! `lab.sh down` in `Drop`, also when the test fails. Nothing touches the real host network.
//! Where a test waits for the cluster to converge it polls with a deadline.
//!
//! The tests marked "needs shared Services" wait on skiffd sharing Services and pod endpoints
//! through etcd; the others need only the overlay (leases, VTEP, routes, fdb, neigh).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{IMAGE, bin, ensure_cni_plugins, in_netns, require_root, test_image};
use serde_json::Value;

/// The underlay address of host `hI` as lab.sh assigns it.
fn host_ip(h: &str) -> Ipv4Addr {
    let i: u8 = h.trim_start_matches('h').parse().expect("host name hN");
    Ipv4Addr::new(10, 77, 0, 10 + i)
}

/// A /24 as "a.b.c.0/24" from any address in it ("10.244.3.1/24" as subnet.env has it).
fn net24(s: &str) -> String {
    let ip: Ipv4Addr = s
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let o = ip.octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

fn random_name() -> String {
    let mut buf = [0u8; 4];
    let f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut &f, &mut buf).expect("random bytes");
    format!(
        "skiff-lt-{}",
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A lab brought up by `scripts/lab.sh up`; `lab.sh down` on drop.
struct Lab {
    name: String,
    down: bool,
}

impl Lab {
    /// `lab.sh up N --name RANDOM` with skiff's test binaries and image, plus `opts`.
    fn up(n: usize, opts: &[&str]) -> Lab {
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
    fn lab_cmd(&self, args: &[&str]) -> Output {
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
    fn lab_ok(&self, args: &[&str]) -> String {
        let out = self.lab_cmd(args);
        assert!(
            out.status.success(),
            "lab.sh {args:?} --name {} failed:\n{}",
            self.name,
            text(&out)
        );
        text(&out)
    }

    fn netns(&self, h: &str) -> String {
        format!("{}-{h}", self.name)
    }

    fn netns_path(&self, h: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.netns(h))
    }

    fn node_name(&self, h: &str) -> String {
        self.netns(h)
    }

    fn state(&self, h: &str) -> PathBuf {
        PathBuf::from("/var/lib/skiff-lab").join(&self.name).join(h)
    }

    fn run_dir(&self, h: &str) -> PathBuf {
        PathBuf::from("/run/skiff-lab")
            .join(&self.name)
            .join(h)
            .join("run")
    }

    fn skiff(&self, h: &str, args: &[&str]) -> Output {
        Command::new(bin("skiff"))
            .args(args)
            .env("SKIFF_SOCKET", self.run_dir(h).join("skiff.sock"))
            .stdin(Stdio::null())
            .output()
            .expect("running skiff")
    }

    fn skiff_ok(&self, h: &str, args: &[&str]) -> String {
        let out = self.skiff(h, args);
        assert!(
            out.status.success(),
            "{h}: skiff {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, h: &str, args: &[&str]) -> Option<Value> {
        let out = self.skiff(h, args);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Writes a manifest into host `h`'s manifest dir atomically.
    fn write_manifest(&self, h: &str, file: &str, text: &str) {
        let dir = self.state(h).join("manifests");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }

    /// The /24 host `h` leased, from its subnet.env.
    fn subnet(&self, h: &str) -> Option<String> {
        let env = std::fs::read_to_string(self.run_dir(h).join("subnet.env")).ok()?;
        env.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .map(net24)
    }

    fn wait_subnet(&self, h: &str) -> String {
        self.wait_for(
            &format!("{h}: subnet.env with FLANNEL_SUBNET"),
            Duration::from_secs(30),
            || self.subnet(h),
        )
    }

    /// `CMD -n NETNS -j ARGS` (ip or bridge) parsed; an empty list when the device is gone.
    fn netlink_json(&self, tool: &str, h: &str, args: &[&str]) -> Vec<Value> {
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
    fn peer_state(&self, h: &str, subnet: &str, peer_ip: Ipv4Addr) -> (bool, bool, bool) {
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
    fn assert_meshed(&self, hosts: &[&str], subnets: &BTreeMap<String, String>, when: &str) {
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
    fn wait_meshed(&self, hosts: &[&str], timeout: Duration) -> BTreeMap<String, String> {
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

    fn pod(&self, h: &str, name: &str) -> Option<Value> {
        self.json(h, &["get", "pod", name, "-o", "json"])
    }

    /// Waits until the pod is Running with every container ready; returns its IP.
    fn wait_running(&self, h: &str, name: &str) -> Ipv4Addr {
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
    fn exec_sh(&self, h: &str, pod: &str, script: &str) -> (i32, String) {
        let out = self.skiff(h, &["exec", pod, "--", "sh", "-c", script]);
        (out.status.code().unwrap_or(-1), text(&out))
    }

    /// One HTTP GET from inside pod `pod` on `h`: the body, or None.
    fn get_from_pod(&self, h: &str, pod: &str, url: &str) -> Option<String> {
        // busybox 1.35 (Debian 12) wget segfaults with -T, so `timeout` bounds it instead.
        let (code, out) = self.exec_sh(h, pod, &format!("timeout 3 wget -q -O- {url}"));
        (code == 0).then(|| out.trim().to_string())
    }

    /// `n` GETs of `url` from pod `pod` on `h` in one exec; one answer a line (`FAIL ...`).
    fn gets_from_pod(&self, h: &str, pod: &str, url: &str, n: usize) -> Vec<String> {
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
    fn get_from_host(&self, h: &str, url: &str) -> Option<String> {
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
    fn node_condition(&self, h: &str, kind: &str) -> Option<String> {
        let node = self.json(h, &["get", "node", &self.node_name(h), "-o", "json"])?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["status"].as_str().map(String::from))
    }

    /// The keys and values under `prefix` in the lab's etcd (v3 JSON gateway, from the underlay).
    fn etcd_range(&self, prefix: &str) -> Vec<(String, String)> {
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
    fn endpoint_ips(&self, h: &str, name: &str) -> BTreeSet<String> {
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

    fn cluster_ip(&self, h: &str, svc: &str) -> String {
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
    fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs(25)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self, lines: usize) -> String {
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
    fn down_checked(mut self) {
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

/// A busybox httpd pod answering "NAME on NODE" on 8080, labelled `app: APP`.
fn web_pod(name: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: {IMAGE}
    imagePullPolicy: Never
    env:
    - name: NODE
      valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
    command: [sh, -c, "mkdir -p /www && echo {name} on $NODE > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
"#
    )
}

/// A pod that only sleeps (a place to run wget from).
fn idle_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done\"]\n"
    )
}

fn service(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {app}}}\n  ports:\n  - port: 80\n    targetPort: http\n"
    )
}

/// Three meshed hosts with a Service `web` written on h1, backends `web-a` on h1 and `web-b`
/// on h2, and an idle `client` pod on h3: (web-a's IP, web-b's IP, the cluster IP seen on h3).
fn service_across_hosts(lab: &Lab) -> (String, String, String) {
    lab.wait_meshed(&["h1", "h2", "h3"], Duration::from_secs(20));
    lab.write_manifest("h1", "web.yaml", &web_pod("web-a", "web"));
    lab.write_manifest("h2", "web.yaml", &web_pod("web-b", "web"));
    lab.write_manifest("h1", "svc.yaml", &service("web", "web"));
    lab.write_manifest("h3", "client.yaml", &idle_pod("client"));
    let a = lab.wait_running("h1", "web-a").to_string();
    let b = lab.wait_running("h2", "web-b").to_string();
    lab.wait_running("h3", "client");
    (a, b, lab.cluster_ip("h3", "web"))
}

fn count(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

/// Three hosts: distinct /24 leases out of the cluster CIDR, the VTEP, a route, a permanent
/// neighbour and an fdb entry per peer, and pods that reach each other by IP across hosts
/// (and from a host to a remote pod).
#[test]
#[ignore = "needs root"]
fn pods_on_different_hosts_reach_each_other() {
    require_root();
    let lab = Lab::up(3, &[]);
    let hosts = ["h1", "h2", "h3"];
    let subnets = lab.wait_meshed(&hosts, Duration::from_secs(20));
    let distinct: BTreeSet<&String> = subnets.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "every host leases its own subnet: {subnets:?}"
    );
    for (h, s) in &subnets {
        assert!(
            s.starts_with("10.244."),
            "{h}: subnet {s} is out of the cluster CIDR 10.244.0.0/16"
        );
        // The VTEP: MTU of the underlay (1500) minus VXLAN's 50 bytes.
        let link = lab.netlink_json("ip", h, &["-d", "link", "show", "skiff.1"]);
        assert_eq!(link.len(), 1, "{h}: no VTEP skiff.1");
        assert_eq!(link[0]["mtu"], 1450, "{h}: VTEP MTU");
        assert_eq!(link[0]["linkinfo"]["info_data"]["id"], 1, "{h}: VNI");
    }

    // Every node lists the whole cluster, with each node's InternalIP and pod CIDR.
    let table = lab.wait_for("h1 lists the 3 nodes", Duration::from_secs(20), || {
        let t = lab.skiff_ok("h1", &["get", "nodes", "-o", "wide"]);
        hosts
            .iter()
            .all(|h| t.contains(&host_ip(h).to_string()))
            .then_some(t)
    });
    assert_eq!(table.lines().count(), 4, "{table}");
    let nodes = lab.json("h2", &["get", "nodes", "-o", "json"]).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let h = name.rsplit('-').next().unwrap();
        assert_eq!(n["spec"]["podCIDR"], subnets[h].as_str(), "{n}");
    }

    let mut ips = BTreeMap::new();
    for h in hosts {
        lab.write_manifest(h, "web.yaml", &web_pod("web", "web"));
    }
    for h in hosts {
        let ip = lab.wait_running(h, "web");
        assert_eq!(
            net24(&ip.to_string()),
            subnets[h],
            "{h}: pod IP {ip} outside the host's subnet"
        );
        ips.insert(h, ip);
    }
    for from in hosts {
        for (to, ip) in &ips {
            if *to == from {
                continue;
            }
            let url = format!("http://{ip}:8080/");
            let body = lab.wait_for(
                &format!("{from}: pod web fetches {url} ({to})"),
                Duration::from_secs(15),
                || lab.get_from_pod(from, "web", &url),
            );
            assert_eq!(
                body,
                format!("web on {}", lab.node_name(to)),
                "{from} -> {to}"
            );
        }
    }
    let url = format!("http://{}:8080/", ips["h3"]);
    let body = lab.wait_for(
        "h1's host netns fetches h3's pod",
        Duration::from_secs(10),
        || lab.get_from_host("h1", &url),
    );
    assert_eq!(body, format!("web on {}", lab.node_name("h3")));
    lab.down_checked();
}

/// A ClusterIP Service with backends on h1 and h2, written on h1 only,
/// answers from a pod and from the host netns on h3, and both backends are hit.
#[test]
#[ignore = "needs root"]
fn cluster_ip_service_with_backends_on_two_hosts_answers_from_a_third() {
    require_root();
    let lab = Lab::up(3, &[]);
    let (a, b, vip) = service_across_hosts(&lab);
    assert_eq!(
        vip,
        lab.cluster_ip("h1", "web"),
        "every host uses the same cluster IP"
    );
    let want: BTreeSet<String> = [a, b].into();
    lab.wait_for(
        "h3 sees both backends as endpoints",
        Duration::from_secs(30),
        || (lab.endpoint_ips("h3", "web") == want).then_some(()),
    );
    let url = format!("http://{vip}/");
    lab.wait_for(
        "h3's client reaches the cluster IP",
        Duration::from_secs(15),
        || lab.get_from_pod("h3", "client", &url),
    );
    let answers = lab.gets_from_pod("h3", "client", &url, 40);
    let seen = count(&answers);
    assert!(
        answers.iter().all(|a| !a.starts_with("FAIL")),
        "failed GETs from h3: {seen:?}"
    );
    let want_bodies: BTreeSet<String> = [
        format!("web-a on {}", lab.node_name("h1")),
        format!("web-b on {}", lab.node_name("h2")),
    ]
    .into();
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        want_bodies,
        "each backend is hit: {seen:?}"
    );
    let from_host = lab.wait_for(
        "h3's host netns reaches the cluster IP",
        Duration::from_secs(10),
        || lab.get_from_host("h3", &url),
    );
    assert!(
        want_bodies.contains(&from_host),
        "unexpected answer {from_host:?}"
    );
    lab.down_checked();
}

/// A host that dies (unplugged from the underlay, then deleted) disappears from the other hosts'
/// routes, neighbours and fdb, and its lease from etcd, within the lease TTL.
#[test]
#[ignore = "needs root"]
fn removed_host_leaves_routes_and_fdb_within_ttl() {
    require_root();
    const TTL: u64 = 5;
    let lab = Lab::up(3, &["--ttl", &TTL.to_string()]);
    let subnets = lab.wait_meshed(&["h1", "h2", "h3"], Duration::from_secs(20));
    let gone = subnets["h3"].clone();
    let removed = Instant::now();
    lab.lab_ok(&["remove", "h3"]);
    for h in ["h1", "h2"] {
        lab.wait_for(
            &format!("{h}: route, neigh and fdb of h3 ({gone}) removed"),
            Duration::from_secs(TTL + 5),
            || (lab.peer_state(h, &gone, host_ip("h3")) == (false, false, false)).then_some(()),
        );
    }
    let took = removed.elapsed();
    // The lease may have been renewed just before the host died: up to one TTL, plus the time
    // etcd takes to notice the expiry (its lessor checks every 500 ms) and the watch to deliver.
    assert!(
        took <= Duration::from_secs(TTL + 2),
        "h3 took {took:?} to disappear (TTL {TTL} s)"
    );
    let keys: Vec<String> = lab
        .etcd_range("/skiff/network/subnets/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 2, "h3's lease is gone from etcd: {keys:?}");
    // The survivors keep each other.
    assert_eq!(
        lab.peer_state("h1", &subnets["h2"], host_ip("h2")),
        (true, true, true)
    );
    assert_eq!(
        lab.peer_state("h2", &subnets["h1"], host_ip("h1")),
        (true, true, true)
    );
    lab.down_checked();
}

/// The pods of a host that dies leave the Service endpoints the other
/// hosts see within the lease TTL, and the Service keeps answering from the rest.
#[test]
#[ignore = "needs root"]
fn removed_host_leaves_service_endpoints_within_ttl() {
    require_root();
    const TTL: u64 = 5;
    let lab = Lab::up(3, &["--ttl", &TTL.to_string()]);
    lab.wait_meshed(&["h1", "h2", "h3"], Duration::from_secs(20));
    lab.write_manifest("h1", "web.yaml", &web_pod("web-a", "web"));
    lab.write_manifest("h3", "web.yaml", &web_pod("web-c", "web"));
    lab.write_manifest("h1", "svc.yaml", &service("web", "web"));
    lab.write_manifest("h2", "client.yaml", &idle_pod("client"));
    let a = lab.wait_running("h1", "web-a").to_string();
    let c = lab.wait_running("h3", "web-c").to_string();
    lab.wait_running("h2", "client");
    let vip = lab.cluster_ip("h2", "web");
    lab.wait_for("h2 sees both backends", Duration::from_secs(30), || {
        (lab.endpoint_ips("h2", "web") == BTreeSet::from([a.clone(), c.clone()])).then_some(())
    });
    let removed = Instant::now();
    lab.lab_ok(&["remove", "h3"]);
    for h in ["h1", "h2"] {
        lab.wait_for(
            &format!("{h}: h3's backend {c} leaves the endpoints"),
            Duration::from_secs(TTL + 5),
            || (lab.endpoint_ips(h, "web") == BTreeSet::from([a.clone()])).then_some(()),
        );
    }
    let took = removed.elapsed();
    assert!(
        took <= Duration::from_secs(TTL + 2),
        "h3's endpoint took {took:?} to go (TTL {TTL} s)"
    );
    let answers = lab.gets_from_pod("h2", "client", &format!("http://{vip}/"), 10);
    let want = format!("web-a on {}", lab.node_name("h1"));
    assert!(
        answers.iter().all(|x| *x == want),
        "only h1's backend answers now: {:?}",
        count(&answers)
    );
    lab.down_checked();
}

/// A restarted skiffd keeps its lease: same subnet.env, same lease in etcd, its running pods keep
/// their IPs and stay reachable, and a new pod gets an IP in the same subnet.
#[test]
#[ignore = "needs root"]
fn restarted_host_keeps_its_subnet() {
    require_root();
    let lab = Lab::up(2, &[]);
    let subnets = lab.wait_meshed(&["h1", "h2"], Duration::from_secs(20));
    lab.write_manifest("h1", "web.yaml", &web_pod("web", "web"));
    lab.write_manifest("h2", "web.yaml", &web_pod("web", "web"));
    lab.wait_running("h1", "web");
    let ip2 = lab.wait_running("h2", "web");
    let url = format!("http://{ip2}:8080/");
    lab.wait_for("h1 reaches h2's pod", Duration::from_secs(15), || {
        lab.get_from_pod("h1", "web", &url)
    });
    let env_before = std::fs::read_to_string(lab.run_dir("h2").join("subnet.env")).unwrap();
    let leases_before = lab.etcd_range("/skiff/network/subnets/");

    lab.lab_ok(&["restart", "h2"]);
    // subnet.env is rewritten at start; wait for the new skiffd to have it (and the mesh again).
    lab.wait_meshed(&["h1", "h2"], Duration::from_secs(20));
    assert_eq!(
        lab.subnet("h2").as_ref(),
        Some(&subnets["h2"]),
        "h2 keeps its subnet across a restart"
    );
    assert_eq!(
        std::fs::read_to_string(lab.run_dir("h2").join("subnet.env")).unwrap(),
        env_before
    );
    let leases_after = lab.etcd_range("/skiff/network/subnets/");
    let keys = |l: &[(String, String)]| l.iter().map(|(k, _)| k.clone()).collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&leases_after[..]),
        keys(&leases_before[..]),
        "no new lease in etcd"
    );
    assert_eq!(
        lab.wait_running("h2", "web"),
        ip2,
        "the running pod keeps its IP"
    );
    let body = lab.wait_for(
        "h1 reaches h2's pod after the restart",
        Duration::from_secs(15),
        || lab.get_from_pod("h1", "web", &url),
    );
    assert_eq!(body, format!("web on {}", lab.node_name("h2")));
    lab.write_manifest("h2", "late.yaml", &idle_pod("late"));
    let late = lab.wait_running("h2", "late");
    assert_eq!(
        net24(&late.to_string()),
        subnets["h2"],
        "a new pod's IP is in the kept subnet"
    );
    lab.down_checked();
}

/// etcd stopped for 30 s: every node says `EtcdUnavailable` True, pod-to-pod traffic across hosts
/// keeps flowing the whole time, and once etcd is back the condition clears, a host that joined
/// during the outage gets its lease and every route, and no lease was lost meanwhile.
#[test]
#[ignore = "needs root"]
fn etcd_outage_keeps_pod_traffic_and_converges() {
    require_root();
    const TTL: u64 = 15;
    let lab = Lab::up(3, &["--ttl", &TTL.to_string()]);
    let hosts = ["h1", "h2", "h3"];
    let subnets = lab.wait_meshed(&hosts, Duration::from_secs(20));
    let mut ips = BTreeMap::new();
    for h in hosts {
        lab.write_manifest(h, "web.yaml", &web_pod("web", "web"));
    }
    for h in hosts {
        ips.insert(h, lab.wait_running(h, "web"));
    }
    let urls: Vec<(&str, &str, String)> = vec![
        ("h1", "h2", format!("http://{}:8080/", ips["h2"])),
        ("h2", "h3", format!("http://{}:8080/", ips["h3"])),
        ("h3", "h1", format!("http://{}:8080/", ips["h1"])),
    ];
    for (from, to, url) in &urls {
        lab.wait_for(
            &format!("{from} reaches {to}'s pod"),
            Duration::from_secs(15),
            || lab.get_from_pod(from, "web", url),
        );
    }

    lab.lab_ok(&["etcd", "stop"]);
    let stopped = Instant::now();
    for h in hosts {
        lab.wait_for(
            &format!("{h}: EtcdUnavailable True"),
            Duration::from_secs(20),
            || (lab.node_condition(h, "EtcdUnavailable").as_deref() == Some("True")).then_some(()),
        );
    }
    // A host joining while etcd is down must wait for it, not give up.
    lab.lab_ok(&["add", "--no-wait"]);
    // A host restarting during the outage comes up at once on the subnet it had (subnet.env
    // and its copy of the network config), reporting the outage; its pod keeps serving.
    lab.lab_ok(&["restart", "h3"]);
    lab.wait_for(
        "h3's skiffd serves again during the outage",
        Duration::from_secs(20),
        || lab.pod("h3", "web"),
    );
    assert_eq!(
        lab.node_condition("h3", "EtcdUnavailable").as_deref(),
        Some("True")
    );
    assert_eq!(lab.subnet("h3").as_deref(), Some(subnets["h3"].as_str()));
    let mut rounds = 0;
    while stopped.elapsed() < Duration::from_secs(30) {
        for (from, to, url) in &urls {
            let body = lab.get_from_pod(from, "web", url);
            assert_eq!(
                body.as_deref(),
                Some(format!("web on {}", lab.node_name(to)).as_str()),
                "{from} -> {to} failed {:?} into the etcd outage",
                stopped.elapsed()
            );
        }
        lab.assert_meshed(&hosts, &subnets, "during the outage");
        rounds += 1;
    }
    assert!(rounds >= 3, "only {rounds} rounds of checks in 30 s");

    lab.lab_ok(&["etcd", "start"]);
    for h in hosts {
        lab.wait_for(
            &format!("{h}: EtcdUnavailable cleared"),
            Duration::from_secs(20),
            || (lab.node_condition(h, "EtcdUnavailable").as_deref() != Some("True")).then_some(()),
        );
    }
    let all = ["h1", "h2", "h3", "h4"];
    let after = lab.wait_meshed(&all, Duration::from_secs(20));
    for h in hosts {
        assert_eq!(
            after[h], subnets[h],
            "{h} kept its subnet through the outage"
        );
    }
    // Leases were renewed after the outage: one TTL later everything is still there.
    let renewed = Instant::now() + Duration::from_secs(TTL + 2);
    while Instant::now() < renewed {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        lab.etcd_range("/skiff/network/subnets/").len(),
        4,
        "a lease expired after the outage"
    );
    lab.assert_meshed(&all, &after, "a TTL after the outage");
    lab.down_checked();
}

/// A ClusterIP Service keeps answering across hosts while etcd is down for
/// 30 s, and a backend started during the outage shows up everywhere once etcd is back.
#[test]
#[ignore = "needs root"]
fn etcd_outage_keeps_service_traffic_and_converges() {
    require_root();
    let lab = Lab::up(3, &[]);
    let (a, b, vip) = service_across_hosts(&lab);
    let url = format!("http://{vip}/");
    lab.wait_for("h3 sees both backends", Duration::from_secs(30), || {
        (lab.endpoint_ips("h3", "web") == BTreeSet::from([a.clone(), b.clone()])).then_some(())
    });

    lab.lab_ok(&["etcd", "stop"]);
    let stopped = Instant::now();
    lab.write_manifest("h3", "web.yaml", &web_pod("web-c", "web"));
    while stopped.elapsed() < Duration::from_secs(30) {
        let answers = lab.gets_from_pod("h3", "client", &url, 5);
        assert!(
            answers.iter().all(|x| !x.starts_with("FAIL")),
            "the Service failed {:?} into the etcd outage: {answers:?}",
            stopped.elapsed()
        );
    }
    let c = lab.wait_running("h3", "web-c").to_string();
    lab.lab_ok(&["etcd", "start"]);
    let want = BTreeSet::from([a, b, c]);
    for h in ["h1", "h2", "h3"] {
        lab.wait_for(
            &format!("{h}: the backend started during the outage is an endpoint"),
            Duration::from_secs(30),
            || (lab.endpoint_ips(h, "web") == want).then_some(()),
        );
    }
    let answers = lab.gets_from_pod("h1", "web-a", &url, 30);
    let seen = count(&answers);
    assert_eq!(
        seen.len(),
        3,
        "all three backends answer after the outage: {seen:?}"
    );
    lab.down_checked();
}

/// Six skiffds started at the same moment on an empty etcd race for their leases: every one ends
/// up with its own subnet, and etcd holds exactly one lease per host, each naming that host.
#[test]
#[ignore = "needs root"]
fn racing_nodes_never_get_the_same_subnet() {
    require_root();
    let lab = Lab::up(6, &[]);
    let hosts = ["h1", "h2", "h3", "h4", "h5", "h6"];
    let subnets: BTreeMap<&str, String> = hosts.iter().map(|h| (*h, lab.wait_subnet(h))).collect();
    let distinct: BTreeSet<&String> = subnets.values().collect();
    assert_eq!(
        distinct.len(),
        hosts.len(),
        "two hosts got the same subnet: {subnets:?}"
    );
    let leases = lab.etcd_range("/skiff/network/subnets/");
    assert_eq!(leases.len(), hosts.len(), "one lease per host: {leases:?}");
    for (key, value) in &leases {
        let attrs: Value =
            serde_json::from_str(value).unwrap_or_else(|e| panic!("{key}: {e}: {value}"));
        let public_ip = attrs["PublicIP"].as_str().unwrap_or_default();
        let owner = hosts
            .iter()
            .find(|h| host_ip(h).to_string() == public_ip)
            .unwrap_or_else(|| panic!("{key}: {value}"));
        let want = subnets[owner].replace('/', "-");
        assert!(
            key.ends_with(&want),
            "{owner} ({public_ip}) has subnet {} but lease {key}",
            subnets[owner]
        );
    }
    lab.wait_meshed(&hosts, Duration::from_secs(20));
    lab.down_checked();
}

/// A pod whose httpd answers /cgi-bin/ip with the client's address as it arrives.
fn whoami_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod 755 /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www"]
"#
    )
}

/// DirectRouting (hosts on one L2 underlay): peers get a plain route via their PublicIP and no
/// VXLAN entries, pods still reach each other. Across hosts a pod sees the other pod's own
/// address (no masquerade inside the cluster network), while traffic that leaves the cluster
/// network is masqueraded to the host's address.
#[test]
#[ignore = "needs root"]
fn direct_routing_and_masquerade_only_out_of_the_cluster() {
    require_root();
    let lab = Lab::up(2, &["--direct-routing"]);
    let s2 = lab.wait_subnet("h2");
    lab.wait_subnet("h1");
    let route = lab.wait_for(
        "h1: a plain route to h2's subnet",
        Duration::from_secs(20),
        || {
            lab.netlink_json("ip", "h1", &["route", "show", &s2])
                .into_iter()
                .find(|r| r["gateway"] == host_ip("h2").to_string().as_str())
        },
    );
    assert_eq!(route["dev"], "eth0", "{route}");
    assert_eq!(
        lab.peer_state("h1", &s2, host_ip("h2")),
        (false, false, false),
        "no VXLAN entries for a direct peer"
    );

    for h in ["h1", "h2"] {
        lab.write_manifest(h, "who.yaml", &whoami_pod("who"));
    }
    let ip1 = lab.wait_running("h1", "who");
    let ip2 = lab.wait_running("h2", "who");
    let seen = lab.wait_for(
        "h1's pod asks h2's pod who it is",
        Duration::from_secs(15),
        || lab.get_from_pod("h1", "who", &format!("http://{ip2}:8080/cgi-bin/ip")),
    );
    // busybox httpd listens on IPv6 and shows an IPv4 client as [::ffff:a.b.c.d].
    let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
    assert_eq!(
        seen,
        ip1.to_string(),
        "pod-to-pod across hosts keeps the source address"
    );

    // Leaving the cluster network: a listener in the underlay's netns answers with the address
    // it sees. It reads each request before answering (closing a socket with unread data
    // resets the connection) and serves until the test is done.
    let underlay = PathBuf::from("/run/netns").join(format!("{}-underlay", lab.name));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_by_listener = peers.clone();
    let listener = std::thread::spawn(move || {
        in_netns(&underlay, move || {
            use std::io::{Read, Write};
            let l = std::net::TcpListener::bind("10.77.0.1:9099").expect("bind in the underlay");
            l.set_nonblocking(true).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, peer)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                seen_by_listener.lock().unwrap().push(peer.ip());
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{}\n", peer.ip()).as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        })
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let seen = loop {
        if let Some(body) = lab.get_from_pod("h1", "who", "http://10.77.0.1:9099/") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "h1's pod never got an answer from the underlay; connections seen there came from {:?}",
            peers.lock().unwrap()
        );
    };
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
    assert_eq!(
        seen,
        host_ip("h1").to_string(),
        "traffic leaving the cluster is masqueraded"
    );
    lab.down_checked();
}

/// etcd with password auth on (`lab.sh up --etcd-auth`: user root, `auth enable`): the skiffds
/// join with `--etcd-username`/`--etcd-password-file` and mesh; a wrong password makes skiffd
/// give up at start with an error naming etcd auth (no retrying forever, nothing created), and
/// a password file other users can read is refused before etcd is asked at all.
#[test]
#[ignore = "needs root"]
fn etcd_password_auth() {
    require_root();
    let lab = Lab::up(2, &["--etcd-auth", "--ttl", "10"]);
    let subnets = lab.wait_meshed(&["h1", "h2"], Duration::from_secs(60));
    assert_ne!(subnets["h1"], subnets["h2"]);
    let flags = std::fs::read_to_string(lab.state("h1").join("skiffd.log")).unwrap();
    assert!(
        flags.contains("--etcd-username root --etcd-password-file"),
        "the lab started skiffd with the password"
    );

    // A third skiffd (in h1's netns, own directories) with a wrong password.
    let dir = tempfile::Builder::new()
        .prefix("skiff-auth")
        .tempdir()
        .unwrap();
    let bad = dir.path().join("bad-password");
    std::fs::write(&bad, "not-the-password\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let skiffd = |password_file: &std::path::Path| {
        let d = dir.path();
        for sub in ["manifests", "root", "run", "net.d"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        Command::new("timeout")
            .arg("60")
            .arg("nsenter")
            .arg(format!("--net={}", lab.netns_path("h1").display()))
            .arg(bin("skiffd"))
            .arg("--pod-manifest-path")
            .arg(d.join("manifests"))
            .arg("--root-dir")
            .arg(d.join("root"))
            .arg("--run-dir")
            .arg(d.join("run"))
            .arg("--cni-conf-dir")
            .arg(d.join("net.d"))
            .args(["--node-name", "auth-probe", "--etcd-endpoints"])
            .args(["http://10.77.0.1:2379", "--public-ip", "10.77.0.11"])
            .args(["--iface", "eth0", "--etcd-username", "root"])
            .arg("--etcd-password-file")
            .arg(password_file)
            .stdin(Stdio::null())
            .output()
            .expect("running skiffd")
    };
    let started = Instant::now();
    let out = skiffd(&bad);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "skiffd gave up: {log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no retrying a refused password"
    );
    assert!(
        log.contains("etcd auth: user \"root\" was refused")
            && log.contains("check --etcd-username and --etcd-password-file"),
        "{log}"
    );
    // It stopped before the VTEP or a lease: h1 still has exactly its own subnet.
    assert_eq!(lab.wait_subnet("h1"), subnets["h1"]);

    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = skiffd(&bad);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "a config error: {log}");
    assert!(
        log.contains("--etcd-password-file") && log.contains("mode 0644"),
        "{log}"
    );
    lab.down_checked();
}
