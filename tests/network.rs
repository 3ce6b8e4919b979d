//! Root integration tests for pod networking through CNI (issue #4). Each
//! test runs skiffd in its own throwaway netns "host" (see `common`), gives
//! that host a fake uplink when it needs a node IP, and checks at the end
//! that no pod state, veth or IP allocation is left.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{HttpStub, IMAGE, Node, pod_yaml};
use serde_json::Value;

const NODE_IP: &str = "192.168.200.2";

fn ipv4(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an IPv4 address: {e}"))
}

/// The pod's IP from its status, checked against `podIPs`.
fn pod_ip(pod: &Value) -> Ipv4Addr {
    let ip = pod["status"]["podIP"].as_str().expect("status.podIP set");
    let ips: Vec<&str> = pod["status"]["podIPs"]
        .as_array()
        .expect("status.podIPs set")
        .iter()
        .filter_map(|i| i["ip"].as_str())
        .collect();
    assert_eq!(ips, vec![ip], "podIPs must list podIP");
    ipv4(ip)
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// A busybox httpd pod serving `body` on `port` (and hostPort `host_port` if set).
fn web_pod(name: &str, port: u16, host_port: Option<u16>, body: &str) -> String {
    let ports = match host_port {
        Some(h) => format!("    ports:\n    - containerPort: {port}\n      hostPort: {h}\n"),
        None => format!("    ports:\n    - containerPort: {port}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, \"mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www\"]\n{ports}"
    )
}

/// Fetches `url` from inside a pod with busybox wget, retrying briefly
/// (the first packets may race the bridge's port becoming forwarding).
fn wget_from(node: &Node, pod: &str, url: &str) -> String {
    // busybox 1.35 (Debian 12) wget segfaults with -T, so `timeout` bounds it instead.
    let script = format!("timeout 5 wget -q -O- {url}");
    node.wait_for(
        &format!("{pod}: wget {url}"),
        Duration::from_secs(20),
        || {
            let (code, out) = node.exec_sh(pod, &script);
            (code == 0).then_some(out)
        },
    )
}

/// Removes every manifest and checks that nothing of the pods is left:
/// pods, pinned namespaces, state, mounts, shims, cgroups, veths, IPs.
fn remove_all_and_check(node: &Node, alloc_dir: &Path) {
    remove_all_and_check_but(node, alloc_dir, |_| false);
}

/// As `remove_all_and_check`, tolerating leftovers for which `known` is true
/// (printed, so a known bug stays visible without failing the network checks).
fn remove_all_and_check_but(node: &Node, alloc_dir: &Path, known: impl Fn(&str) -> bool) {
    for e in std::fs::read_dir(&node.manifests).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    node.wait_for("all pods removed", Duration::from_secs(40), || {
        node.pods().is_empty().then_some(())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (left, veths, ips) = (
            node.leftovers(),
            node.host_veths(),
            Node::allocations_in(alloc_dir),
        );
        let (tolerated, left): (Vec<String>, Vec<String>) =
            left.into_iter().partition(|l| known(l));
        if left.is_empty() && veths.is_empty() && ips.is_empty() {
            if !tolerated.is_empty() {
                eprintln!(
                    "KNOWN BUG, tolerated here: left after all pods were removed: {tolerated:?}"
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left after all pods were removed: {left:?}, veths {veths:?}, IPs {ips:?}\n--- skiffd log ---\n{}",
            node.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root"]
fn pods_reach_each_other_by_ip() {
    common::require_root();
    let node = Node::start();
    node.add_uplink(&format!("{NODE_IP}/24"), "192.168.200.1");
    node.write_manifest(
        "server.yaml",
        &web_pod("server", 8080, None, "hello-from-server"),
    );
    node.write_manifest("client.yaml", &pod_yaml("client", "sleep 3600"));
    let server = node.wait_running("server");
    let client = node.wait_running("client");
    let (s_ip, c_ip) = (pod_ip(&server), pod_ip(&client));
    for ip in [s_ip, c_ip] {
        assert!(
            in_subnet(ip, ipv4("10.244.0.0"), 24),
            "pod IP {ip} outside 10.244.0.0/24"
        );
        assert_ne!(ip, ipv4("10.244.0.1"), "a pod got the gateway address");
    }
    assert_ne!(s_ip, c_ip);
    let mut allocated = node.allocations();
    allocated.sort();
    let mut want = vec![s_ip.to_string(), c_ip.to_string()];
    want.sort();
    assert_eq!(allocated, want, "host-local's files must be the pods' IPs");
    assert_eq!(
        node.host_veths().len(),
        2,
        "one veth per pod on the host side"
    );

    // /etc/hosts has the pod's own IP and hostname; eth0 carries the IP.
    let (code, hosts) = node.exec_sh("client", "cat /etc/hosts; echo; hostname");
    assert_eq!(code, 0, "{hosts}");
    assert!(
        hosts.contains(&format!("{c_ip}\tclient")),
        "/etc/hosts lacks '{c_ip}\\tclient':\n{hosts}"
    );
    assert!(hosts.trim_end().ends_with("client"), "hostname: {hosts}");
    let (code, addr) = node.exec_sh(
        "client",
        "ip -4 addr show eth0 2>&1 || cat /proc/net/fib_trie",
    );
    assert_eq!(code, 0, "{addr}");
    assert!(
        addr.contains(&c_ip.to_string()),
        "eth0 lacks {c_ip}:\n{addr}"
    );

    // TCP both ways: httpd + wget, and nc.
    let body = wget_from(&node, "client", &format!("http://{s_ip}:8080/"));
    assert_eq!(body.trim(), "hello-from-server");
    let (code, out) = node.exec_sh(
        "client",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {s_ip} 8080"),
    );
    assert!(
        code == 0 && out.contains("hello-from-server"),
        "nc client -> server ({code}): {out}"
    );

    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
}

#[test]
#[ignore = "needs root"]
fn pod_reaches_the_host_and_the_host_reaches_the_pod() {
    common::require_root();
    let node = Node::start();
    node.add_uplink(&format!("{NODE_IP}/24"), "192.168.200.1");
    node.write_manifest("web.yaml", &web_pod("web", 8080, None, "pod-web"));
    let web = node.wait_running("web");
    let ip = pod_ip(&web);

    // A listener on the node's uplink address and one on the bridge gateway.
    let up = HttpStub::start(
        &node.host.path(),
        SocketAddr::new(IpAddr::V4(ipv4(NODE_IP)), 0),
        "hello-uplink",
    );
    let gw = HttpStub::start(
        &node.host.path(),
        SocketAddr::new(IpAddr::V4(ipv4("10.244.0.1")), 0),
        "hello-gateway",
    );
    assert_eq!(
        wget_from(&node, "web", &format!("http://{}/", up.addr)).trim(),
        "hello-uplink"
    );
    assert_eq!(
        wget_from(&node, "web", &format!("http://{}/", gw.addr)).trim(),
        "hello-gateway"
    );
    // The pod's default route goes through the gateway.
    let (_, route) = node.exec_sh("web", "ip route 2>/dev/null || cat /proc/net/route");
    assert!(
        route.contains("default via 10.244.0.1") || route.contains("0100F40A"),
        "default route: {route}"
    );

    // And the host reaches the pod.
    let got = node.wait_for("host -> pod", Duration::from_secs(10), || {
        common::http_get_in(&node.host.path(), SocketAddr::new(IpAddr::V4(ip), 8080))
    });
    assert_eq!(got.trim(), "pod-web");
    drop((up, gw));
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
}

#[test]
#[ignore = "needs root"]
fn host_port_and_hairpin() {
    common::require_root();
    let node = Node::start();
    node.add_uplink(&format!("{NODE_IP}/24"), "192.168.200.1");
    node.write_manifest("web.yaml", &web_pod("web", 80, Some(8088), "via-hostport"));
    node.write_manifest("other.yaml", &pod_yaml("other", "sleep 3600"));
    node.wait_running("web");
    node.wait_running("other");
    let host_addr = SocketAddr::new(IpAddr::V4(ipv4(NODE_IP)), 8088);
    // From the host netns, to the node address.
    let got = node.wait_for("hostPort from the host", Duration::from_secs(10), || {
        common::http_get_in(&node.host.path(), host_addr)
    });
    assert_eq!(got.trim(), "via-hostport");
    // From another pod, through the node address.
    assert_eq!(
        wget_from(&node, "other", &format!("http://{host_addr}/")).trim(),
        "via-hostport"
    );
    // Hairpin: the pod reaches its own hostPort via the node IP.
    assert_eq!(
        wget_from(&node, "web", &format!("http://{host_addr}/")).trim(),
        "via-hostport"
    );
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
    // portmap's per-pod rules go with the pods.
    let nat = nat_rules(&node);
    assert!(
        !nat.contains("8088"),
        "hostPort rules left after the pod went away:\n{nat}"
    );
}

fn nat_rules(node: &Node) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node.host.path().display()))
        .args(["iptables-save", "-t", "nat"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root"]
fn deleting_pods_frees_ips_and_veths() {
    common::require_root();
    let node = Node::start();
    node.write_manifest("a.yaml", &pod_yaml("a", "sleep 3600"));
    node.write_manifest("b.yaml", &pod_yaml("b", "sleep 3600"));
    let a = pod_ip(&node.wait_running("a"));
    let b = pod_ip(&node.wait_running("b"));
    assert_eq!(node.allocations().len(), 2);
    assert_eq!(node.host_veths().len(), 2);
    let cache = node.root.join("cni/cache");
    node.remove_manifest("a.yaml");
    node.wait_gone("a");
    node.wait_for("a's IP freed", Duration::from_secs(10), || {
        (node.allocations() == vec![b.to_string()] && node.host_veths().len() == 1).then_some(())
    });
    assert!(!node.allocations().contains(&a.to_string()));
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
    let cached: Vec<_> = walk(&cache);
    assert!(cached.is_empty(), "CNI result cache left: {cached:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn crash_and_reboot_leave_no_allocation() {
    common::require_root();
    let mut node = Node::start();
    node.write_manifest("a.yaml", &pod_yaml("a", "sleep 3600"));
    node.write_manifest("b.yaml", &pod_yaml("b", "sleep 3600"));
    let a = node.wait_running("a");
    let b = node.wait_running("b");
    assert_eq!(node.allocations().len(), 2);
    let b_uid = b["metadata"]["uid"].as_str().unwrap().to_string();
    let _ = a;
    // Crash and "reboot": netns, mounts, processes and the bridge are gone,
    // the allocations on disk stay. Pod b also lost its state dir (as if
    // skiffd died between CNI ADD and saving the pod): only GC can free it.
    node.simulate_reboot();
    assert_eq!(
        node.allocations().len(),
        2,
        "the reboot must keep host-local's files"
    );
    std::fs::remove_dir_all(node.root.join("pods").join(&b_uid)).unwrap();
    node.remove_manifest("a.yaml");
    node.remove_manifest("b.yaml");
    node.start_daemon();
    node.wait_for(
        "allocations freed after restart + GC",
        Duration::from_secs(30),
        || node.allocations().is_empty().then_some(()),
    );
    // Known bug (src/pod/worker.rs `Worker::run`): the worker that reaps an orphan
    // pod runs one `sync()` before it reads the queued Terminate, so a pod whose
    // containers died with the "reboot" gets a new sandbox (a CNI ADD, DELed again)
    // and a restarted container first; removing the pod cgroup can then race that
    // container and leave empty pod cgroups. Tolerated here so this test checks
    // the network; the cgroups are still printed.
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
}

#[test]
#[ignore = "needs root"]
fn ip_exhaustion_is_a_clear_pod_error_and_heals() {
    common::require_root();
    let mut node = Node::new();
    node.extra_flags(&["--pod-cidr", "10.99.0.0/30"]);
    node.start_daemon();
    node.import_image();
    node.write_manifest("a.yaml", &pod_yaml("a", "sleep 3600"));
    let a = node.wait_running("a");
    assert_eq!(pod_ip(&a), ipv4("10.99.0.2"));
    node.write_manifest("b.yaml", &pod_yaml("b", "sleep 3600"));
    let describe = node.wait_for(
        "FailedCreatePodSandBox on b",
        Duration::from_secs(20),
        || {
            // Until skiffd has read b.yaml, b is not found: poll.
            let out = node.skiff(&["describe", "pod", "b"]);
            let d = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && d.contains("FailedCreatePodSandBox")).then_some(d)
        },
    );
    assert!(
        describe.contains("10.99.0.0/30"),
        "the event must name the exhausted range:\n{describe}"
    );
    let b = node.pod("b").unwrap();
    assert_ne!(b["status"]["phase"], "Running");
    assert!(
        b["status"]["podIP"].is_null(),
        "b has no IP: {}",
        b["status"]
    );
    // No half-made attachment of b is left while it waits.
    assert_eq!(node.allocations(), vec!["10.99.0.2".to_string()]);
    assert_eq!(
        node.host_veths().len(),
        1,
        "the failed ADD must not leave a veth"
    );
    node.remove_manifest("a.yaml");
    node.wait_gone("a");
    let b = node.wait_for(
        "b Running after a freed the address",
        Duration::from_secs(60),
        || {
            let p = node.pod("b")?;
            (p["status"]["phase"] == "Running").then_some(p)
        },
    );
    assert_eq!(pod_ip(&b), ipv4("10.99.0.2"));
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
}

#[test]
#[ignore = "needs root"]
fn reference_plugins_from_usr_lib_cni() {
    common::require_root();
    for p in ["bridge", "host-local", "portmap"] {
        if !Path::new("/usr/lib/cni").join(p).exists() {
            eprintln!(
                "SKIPPED: /usr/lib/cni/{p} missing (apt-get install containernetworking-plugins)"
            );
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have containernetworking-plugins"
            );
            return;
        }
    }
    let mut node = Node::new();
    node.add_uplink(&format!("{NODE_IP}/24"), "192.168.200.1");
    let data = node.dir().join("ref-ipam");
    let conf_dir = node.dir().join("cni/net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "refnet",
        "plugins": [
            {"type": "bridge", "bridge": "refbr0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.7.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    std::fs::write(
        conf_dir.join("20-ref.conflist"),
        serde_json::to_string_pretty(&conf).unwrap(),
    )
    .unwrap();
    node.extra_flags(&["--cni-bin-dir", "/usr/lib/cni"]);
    node.start_daemon();
    node.import_image();
    // skiffd must not add its own config next to the user's.
    let confs: Vec<_> = std::fs::read_dir(&conf_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(confs.len(), 1, "conf dir: {confs:?}");
    node.write_manifest(
        "server.yaml",
        &web_pod("server", 8080, Some(8089), "ref-server"),
    );
    node.write_manifest("client.yaml", &pod_yaml("client", "sleep 3600"));
    let s_ip = pod_ip(&node.wait_running("server"));
    let c_ip = pod_ip(&node.wait_running("client"));
    for ip in [s_ip, c_ip] {
        assert!(
            in_subnet(ip, ipv4("10.88.7.0"), 24),
            "{ip} outside 10.88.7.0/24"
        );
    }
    let allocated = Node::allocations_in(&data.join("refnet"));
    assert_eq!(
        allocated.len(),
        2,
        "reference host-local files: {allocated:?}"
    );
    assert_eq!(
        wget_from(&node, "client", &format!("http://{s_ip}:8080/")).trim(),
        "ref-server"
    );
    let got = node.wait_for(
        "reference portmap hostPort",
        Duration::from_secs(10),
        || {
            common::http_get_in(
                &node.host.path(),
                SocketAddr::new(IpAddr::V4(ipv4(NODE_IP)), 8089),
            )
        },
    );
    assert_eq!(got.trim(), "ref-server");
    remove_all_and_check(&node, &data.join("refnet"));
}

#[test]
#[ignore = "needs root"]
fn host_network_pods_skip_cni() {
    common::require_root();
    let node = Node::start();
    node.add_uplink(&format!("{NODE_IP}/24"), "192.168.200.1");
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hn\nspec:\n  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n"
    );
    node.write_manifest("hn.yaml", &yaml);
    let p = node.wait_running("hn");
    assert_eq!(
        pod_ip(&p),
        ipv4(NODE_IP),
        "a hostNetwork pod's IP is the node IP"
    );
    let host_ino = std::fs::metadata(node.host.path()).unwrap().ino();
    let (code, link) = node.exec_sh("hn", "readlink /proc/self/ns/net");
    assert_eq!(code, 0, "{link}");
    assert_eq!(
        link.trim(),
        format!("net:[{host_ino}]"),
        "the pod must be in the host netns"
    );
    assert!(
        node.allocations().is_empty(),
        "hostNetwork pods get no CNI allocation"
    );
    assert!(node.host_veths().is_empty(), "hostNetwork pods get no veth");
    let uid = p["metadata"]["uid"].as_str().unwrap();
    assert!(
        !node.run.join("netns").join(uid).exists(),
        "no pinned netns for a hostNetwork pod"
    );
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
}

#[test]
#[ignore = "needs root"]
fn reboot_with_pods_kept_gives_them_a_working_network_again() {
    common::require_root();
    let mut node = Node::start();
    node.write_manifest(
        "server.yaml",
        &web_pod("server", 8080, None, "after-reboot"),
    );
    node.write_manifest("client.yaml", &pod_yaml("client", "sleep 3600"));
    node.wait_running("server");
    node.wait_running("client");
    // The netns are gone after the reboot, the CNI result cache (root dir) is not:
    // a cached result must not stand in for an attachment that no longer exists.
    node.simulate_reboot();
    node.start_daemon();
    let s_ip = node.wait_for("server back with an IP", Duration::from_secs(40), || {
        let p = node.pod("server")?;
        (p["status"]["phase"] == "Running" && !p["status"]["podIP"].is_null()).then(|| pod_ip(&p))
    });
    node.wait_running("client");
    let (code, addr) = node.exec_sh("server", "ip -4 addr show eth0");
    assert!(
        code == 0 && addr.contains(&s_ip.to_string()),
        "eth0 must carry {s_ip} after the reboot ({code}):\n{addr}"
    );
    assert_eq!(
        wget_from(&node, "client", &format!("http://{s_ip}:8080/")).trim(),
        "after-reboot"
    );
    assert_eq!(
        node.allocations().len(),
        2,
        "one IP per pod: {:?}",
        node.allocations()
    );
    assert_eq!(node.host_veths().len(), 2);
    remove_all_and_check(&node, &node.root.join("cni/networks/skiff"));
}

// ---- the pod network and the first container's create, overlapped ------------------------

/// A CNI plugin wrapper around skiff-bridge, installed as `<node dir>/cni-bin/<name>`, with a
/// conflist of skiff's default network that uses it. On ADD it first sleeps `delay`, then
/// appends to `<node dir>/cni-adds` one line naming the container cgroups that exist in the
/// pod's cgroup at that moment (so a test sees what was created while the ADD ran), then
/// runs skiff-bridge, or fails with `fail` instead when set. Every other command goes
/// straight to skiff-bridge. Returns (extra skiffd flags, the IPAM allocation dir).
fn wrapped_bridge(
    node: &Node,
    name: &str,
    delay: &str,
    fail: Option<&str>,
) -> (Vec<String>, std::path::PathBuf) {
    let skiff_bins = common::bin("skiffd").parent().unwrap().to_path_buf();
    let bin_dir = node.dir().join("cni-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let adds = node.dir().join("cni-adds");
    let on_add = match fail {
        Some(msg) => format!(
            "printf '{{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"{msg}\"}}'\n  exit 1"
        ),
        None => format!(
            "\"{}/skiff-bridge\" \"$@\"; rc=$?; echo done >> {}.done; exit $rc",
            skiff_bins.display(),
            adds.display()
        ),
    };
    let script = format!(
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  sleep {delay}\n  cgs=$(for d in /sys/fs/cgroup/*/skiff/pod$CNI_CONTAINERID/* /sys/fs/cgroup/skiff/pod$CNI_CONTAINERID/*; do [ -d \"$d\" ] && basename \"$d\"; done | sort -u | tr '\\n' ' ')\n  echo \"ADD $cgs\" >> {adds}\n  {on_add}\nfi\nexec \"{bins}/skiff-bridge\" \"$@\"\n",
        adds = adds.display(),
        bins = skiff_bins.display(),
    );
    let path = bin_dir.join(name);
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = node.dir().join("ipam");
    let conf_dir = node.dir().join("cni/net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "wrapped",
        "plugins": [{
            "type": name, "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
            "ipMasq": true, "hairpinMode": true,
            "ipam": {"type": "skiff-host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "dataDir": data}
        }]
    });
    std::fs::write(
        conf_dir.join("10-wrapped.conflist"),
        serde_json::to_string_pretty(&conf).unwrap(),
    )
    .unwrap();
    let flags = vec![
        "--cni-bin-dir".to_string(),
        format!("{},{}", bin_dir.display(), skiff_bins.display()),
    ];
    (flags, data.join("wrapped"))
}

/// The lines `wrapped_bridge` recorded, one per ADD.
fn cni_adds(node: &Node) -> Vec<String> {
    std::fs::read_to_string(node.dir().join("cni-adds"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A container ID (64 hex digits) among the words of `line`.
fn has_container_cgroup(line: &str) -> bool {
    line.split_whitespace()
        .any(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn shims_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("skiff-shim") && cmd.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Processes in any cgroup of the pod, and the pod's container cgroups (cgroup v1 or v2).
fn pod_cgroup_contents(uid: &str) -> (Vec<String>, Vec<String>) {
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    let mut pod_dirs = vec![Path::new("/sys/fs/cgroup/skiff").join(format!("pod{uid}"))];
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        pod_dirs.push(e.path().join("skiff").join(format!("pod{uid}")));
    }
    for d in pod_dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path().display().to_string());
                let p = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                procs.extend(p.lines().map(|l| format!("{l} in {}", e.path().display())));
            }
        }
    }
    (procs, dirs)
}

#[test]
#[ignore = "needs root"]
fn first_container_runs_only_once_its_network_is_up() {
    common::require_root();
    let mut node = Node::new();
    // ADD takes a second: long enough for the first container to be created meanwhile,
    // and for it to run without a network if the start gate did not hold it.
    let (flags, alloc) = wrapped_bridge(&node, "slow-bridge", "1", None);
    node.extra_flags(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    node.start_daemon();
    node.import_image();
    // The first container (an init container) looks at its network first thing.
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: early\nspec:\n  terminationGracePeriodSeconds: 1\n  initContainers:\n  - name: look\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, \"ip -4 addr show eth0 2>&1; cat /etc/hosts\"]\n  containers:\n  - name: main\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, \"ip -4 addr show eth0 2>&1; cat /etc/hosts; exec sleep 3600\"]\n"
    );
    node.write_manifest("early.yaml", &yaml);
    let pod = node.wait_running("early");
    let ip = pod_ip(&pod);
    let adds = cni_adds(&node);
    assert_eq!(adds.len(), 1, "one ADD: {adds:?}");
    assert!(
        has_container_cgroup(&adds[0]),
        "the first container must have been created while ADD ran: {adds:?}"
    );
    for c in ["look", "main"] {
        // The app container may be Running before its output is in its log.
        let log = node.wait_for(&format!("{c}'s output"), Duration::from_secs(10), || {
            let l = node.skiff_ok(&["logs", "early", "-c", c]);
            l.contains("localhost").then_some(l)
        });
        assert!(
            log.contains(&format!("inet {ip}/")),
            "{c}: eth0 must carry {ip} when the container starts:\n{log}"
        );
        assert!(
            log.contains(&format!("{ip}\tearly\n")),
            "{c}: /etc/hosts must have '{ip}\\tearly' when the container starts:\n{log}"
        );
    }
    remove_all_and_check(&node, &alloc);
}

#[test]
#[ignore = "needs root"]
fn cni_failure_removes_the_container_created_meanwhile() {
    common::require_root();
    let mut node = Node::new();
    let (flags, alloc) = wrapped_bridge(&node, "fail-bridge", "1", Some("injected ADD failure"));
    node.extra_flags(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    node.start_daemon();
    node.import_image();
    node.write_manifest("doomed.yaml", &pod_yaml("doomed", "echo ran; sleep 3600"));
    let describe = node.wait_for(
        "FailedCreatePodSandBox on doomed",
        Duration::from_secs(20),
        || {
            let out = node.skiff(&["describe", "pod", "doomed"]);
            let d = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && d.contains("FailedCreatePodSandBox")).then_some(d)
        },
    );
    assert!(
        describe.contains("injected ADD failure"),
        "the event must carry the plugin's error:\n{describe}"
    );
    let adds = cni_adds(&node);
    assert!(
        has_container_cgroup(&adds[0]),
        "the first ADD ran alongside the container's create: {adds:?}"
    );
    let pod = node.pod("doomed").unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 0, "{status}");
    assert_eq!(
        status["state"]["waiting"]["reason"], "ContainerCreating",
        "{status}"
    );
    assert!(
        status["lastState"]["terminated"].is_null(),
        "the container never ran: {status}"
    );
    assert_ne!(pod["status"]["phase"], "Running");
    // Nothing of the created container is left: no shim, no process, no cgroup, no
    // libcontainer state, no container directory or rootfs mount.
    node.wait_for(
        "the created container gone",
        Duration::from_secs(10),
        || {
            let (procs, dirs) = pod_cgroup_contents(&uid);
            let shims = shims_with(&uid);
            let state: Vec<_> = std::fs::read_dir(node.run.join("runtime"))
                .unwrap()
                .flatten()
                .collect();
            let containers: Vec<_> =
                std::fs::read_dir(node.root.join("pods").join(&uid).join("containers"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .collect();
            let mounts = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains("/containers/"))
                .filter(|l| l.contains(&uid))
                .count();
            (procs.is_empty()
                && dirs.is_empty()
                && shims.is_empty()
                && state.is_empty()
                && containers.is_empty()
                && mounts == 0)
                .then_some(())
        },
    );
    let logs = node.skiff(&["logs", "doomed"]);
    assert!(
        !String::from_utf8_lossy(&logs.stdout).contains("ran"),
        "the container must never have run"
    );
    // The retry (5 s later) attaches first: no container is created for nothing again.
    node.wait_for("a second ADD", Duration::from_secs(20), || {
        (cni_adds(&node).len() >= 2).then_some(())
    });
    let adds = cni_adds(&node);
    assert!(
        !has_container_cgroup(&adds[1]),
        "the retry must not overlap: {adds:?}"
    );
    assert_eq!(
        node.pod("doomed").unwrap()["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    remove_all_and_check(&node, &alloc);
}

#[test]
#[ignore = "needs root"]
fn daemon_crash_while_a_container_waits_for_its_network_leaves_nothing_behind() {
    common::require_root();
    let mut node = Node::new();
    let (flags, alloc) = wrapped_bridge(&node, "slow-bridge", "2", None);
    node.extra_flags(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    node.start_daemon();
    node.import_image();
    node.write_manifest("gated.yaml", &pod_yaml("gated", "echo ran; sleep 3600"));
    let shim = node.wait_for(
        "a shim waiting at the start gate",
        Duration::from_secs(20),
        || {
            shims_with("--gate-fd").into_iter().find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*node.dir().to_string_lossy())
                })
            })
        },
    );
    let uid = node.pod("gated").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    node.kill_daemon();
    // EOF on the gate: the shim deletes the created container and exits, without skiffd.
    node.wait_for("the gated shim to exit", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{shim}")).exists()).then_some(())
    });
    let (procs, dirs) = pod_cgroup_contents(&uid);
    assert!(
        procs.is_empty() && dirs.is_empty(),
        "the container must be gone with its shim: {procs:?} {dirs:?}"
    );
    assert!(
        std::fs::read_dir(node.run.join("runtime"))
            .unwrap()
            .next()
            .is_none(),
        "libcontainer state left"
    );
    // The orphaned ADD finishes on its own; a restarted skiffd then treats the pod as a
    // half-created sandbox, and the abandoned container as never having existed.
    node.wait_for(
        "the orphaned ADD to finish",
        Duration::from_secs(10),
        || node.dir().join("cni-adds.done").exists().then_some(()),
    );
    node.start_daemon();
    let pod = node.wait_for(
        "gated Running after the restart",
        Duration::from_secs(40),
        || {
            let p = node.pod("gated")?;
            (p["status"]["phase"] == "Running").then_some(p)
        },
    );
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        status["restartCount"], 0,
        "the abandoned container is no restart: {status}"
    );
    assert!(
        status["lastState"]["terminated"].is_null(),
        "the abandoned container left no status: {status}"
    );
    let containers: Vec<_> =
        std::fs::read_dir(node.root.join("pods").join(&uid).join("containers"))
            .unwrap()
            .flatten()
            .collect();
    assert_eq!(
        containers.len(),
        1,
        "only the running container is on disk: {containers:?}"
    );
    assert_eq!(node.skiff_ok(&["logs", "gated"]).matches("ran").count(), 1);
    remove_all_and_check(&node, &alloc);
}
