//! Root tests: skiff-bridge + skiff-host-local run as binaries through the
//! stdin/env protocol, inside a throwaway host netns.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use common::{Lab, addrs_in, connects_from, default_gateway, listen_in};
use serde_json::Value;

fn bridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff-bridge"))
}

fn conf(lab: &Lab, version: &str, subnet: &str, masq: bool) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"testnet","type":"skiff-bridge","bridge":"cni0",
        "isGateway":true,"isDefaultGateway":true,"ipMasq":{masq},"hairpinMode":true,
        "ipam":{{"type":"skiff-host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}"}}]]}}}}"#,
        lab.data_dir().display()
    )
}

fn env<'a>(cmd: &'a str, id: &'a str, ns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", ns),
        ("CNI_IFNAME", "eth0"),
    ]
}

fn add(lab: &Lab, id: &str, ns: &Path, conf: &str) -> (i32, Value) {
    lab.plugin(&bridge_bin(), &env("ADD", id, ns.to_str().unwrap()), conf)
}

fn ip_of(result: &Value) -> IpAddr {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root"]
fn add_gives_address_route_and_masq_and_del_cleans_up() {
    need_root!();
    let mut lab = Lab::new();
    let c1 = lab.container("a");
    let conf = conf(&lab, "1.1.0", "10.88.0.0/24", true);
    let (rc, r) = add(&lab, "ctr-a", &c1, &conf);
    assert_eq!(rc, 0, "{r}");
    assert_eq!(r["ips"][0]["address"], "10.88.0.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.88.0.1");
    assert_eq!(r["ips"][0]["interface"], 2);
    assert_eq!(r["interfaces"][0]["name"], "cni0");
    assert_eq!(r["interfaces"][2]["sandbox"], c1.to_str().unwrap());
    assert_eq!(addrs_in(&c1, "eth0"), vec!["10.88.0.2/24".parse().unwrap()]);
    assert_eq!(default_gateway(&c1), Some("10.88.0.1".parse().unwrap()));
    assert!(addrs_in(&lab.host, "cni0").contains(&"10.88.0.1/24".parse().unwrap()));
    let host_veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert!(Lab::links(&lab.host).iter().any(|l| l.name == host_veth));
    let chain = cni::plugins::chain_name("testnet", "ctr-a", "");
    let nat = common::nat_rules(&lab.host);
    assert!(nat.contains(&format!("-A POSTROUTING -s 10.88.0.2/32 -m comment --comment \"name: \\\"testnet\\\" id: \\\"ctr-a\\\"\" -j {chain}")), "{nat}");
    assert_eq!(lab.allocations("testnet"), vec!["10.88.0.2"]);
    // The container reaches the host through the gateway.
    let l = listen_in(&lab.host, "10.88.0.1:0".parse().unwrap());
    assert!(connects_from(&c1, l.local_addr().unwrap()));
    // CHECK passes with the ADD result as prevResult.
    let mut with_prev: Value = serde_json::from_str(&conf).unwrap();
    with_prev["prevResult"] = r.clone();
    let (rc, v) = lab.plugin(
        &bridge_bin(),
        &env("CHECK", "ctr-a", c1.to_str().unwrap()),
        &with_prev.to_string(),
    );
    assert_eq!(rc, 0, "{v}");

    // DEL: link, address and chain are gone; DEL again is fine.
    for _ in 0..2 {
        let (rc, v) = lab.plugin(
            &bridge_bin(),
            &env("DEL", "ctr-a", c1.to_str().unwrap()),
            &conf,
        );
        assert_eq!(rc, 0, "{v}");
    }
    assert!(addrs_in(&c1, "eth0").is_empty());
    assert!(!Lab::links(&lab.host).iter().any(|l| l.name == host_veth));
    assert!(lab.allocations("testnet").is_empty());
    assert!(!common::nat_rules(&lab.host).contains(&chain));
}

#[test]
#[ignore = "needs root"]
fn two_containers_on_one_bridge_reach_each_other() {
    need_root!();
    let mut lab = Lab::new();
    let (c1, c2) = (lab.container("a"), lab.container("b"));
    let conf = conf(&lab, "1.0.0", "10.89.0.0/24", false);
    let (rc1, r1) = add(&lab, "ctr-a", &c1, &conf);
    let (rc2, r2) = add(&lab, "ctr-b", &c2, &conf);
    assert_eq!((rc1, rc2), (0, 0), "{r1} {r2}");
    let (ip1, ip2) = (ip_of(&r1), ip_of(&r2));
    assert_ne!(ip1, ip2);
    let l = listen_in(&c1, SocketAddr::new(ip1, 0));
    assert!(connects_from(&c2, l.local_addr().unwrap()));
    let l = listen_in(&c2, SocketAddr::new(ip2, 0));
    assert!(connects_from(&c1, l.local_addr().unwrap()));
}

#[test]
#[ignore = "needs root"]
fn del_after_netns_is_gone_still_frees_the_address() {
    need_root!();
    let mut lab = Lab::new();
    let c1 = lab.container("a");
    let conf = conf(&lab, "1.0.0", "10.90.0.0/24", true);
    let (rc, r) = add(&lab, "ctr-a", &c1, &conf);
    assert_eq!(rc, 0, "{r}");
    assert_eq!(lab.allocations("testnet").len(), 1);
    lab.remove_container(&c1);
    // The path is gone (as after a reboot); DEL with it and with an empty netns.
    let (rc, v) = lab.plugin(
        &bridge_bin(),
        &env("DEL", "ctr-a", c1.to_str().unwrap()),
        &conf,
    );
    assert_eq!(rc, 0, "{v}");
    let (rc, v) = lab.plugin(&bridge_bin(), &env("DEL", "ctr-a", ""), &conf);
    assert_eq!(rc, 0, "{v}");
    assert!(lab.allocations("testnet").is_empty());
    assert!(
        !common::nat_rules(&lab.host).contains(&cni::plugins::chain_name("testnet", "ctr-a", ""))
    );
    // The veth dies with the netns; the kernel tears a netns down asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Lab::links(&lab.host).iter().any(|l| l.kind == "veth") {
        assert!(
            std::time::Instant::now() < deadline,
            "the veth outlived its netns"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root"]
fn gc_frees_stale_allocations() {
    need_root!();
    let mut lab = Lab::new();
    let conf = conf(&lab, "1.1.0", "10.91.0.0/24", false);
    let mut kept = String::new();
    for id in ["a", "b", "c"] {
        let c = lab.container(id);
        let (rc, r) = add(&lab, &format!("ctr-{id}"), &c, &conf);
        assert_eq!(rc, 0, "{r}");
        if id == "b" {
            kept = ip_of(&r).to_string();
        }
    }
    assert_eq!(lab.allocations("testnet").len(), 3);
    let mut gc: Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "ctr-b", "ifname": "eth0"}]);
    let (rc, v) = lab.plugin(&bridge_bin(), &[("CNI_COMMAND", "GC")], &gc.to_string());
    assert_eq!(rc, 0, "{v}");
    assert_eq!(lab.allocations("testnet"), vec![kept]);
    let (rc, v) = lab.plugin(&bridge_bin(), &[("CNI_COMMAND", "STATUS")], &conf);
    assert_eq!(rc, 0, "{v}");
}

#[test]
#[ignore = "needs root"]
fn exhausted_range_gives_a_clear_error() {
    need_root!();
    let mut lab = Lab::new();
    let (c1, c2) = (lab.container("a"), lab.container("b"));
    // A /30 has .1 (gateway) and .2 usable.
    let conf = conf(&lab, "1.0.0", "10.92.0.0/30", false);
    let (rc, r) = add(&lab, "ctr-a", &c1, &conf);
    assert_eq!(rc, 0, "{r}");
    let (rc, v) = add(&lab, "ctr-b", &c2, &conf);
    assert_eq!(rc, 1);
    assert_eq!(v["code"], 100, "{v}");
    assert_eq!(
        v["msg"],
        "no IP addresses available in range set: 10.92.0.1-10.92.0.2 (subnet 10.92.0.0/30)"
    );
    // The failed ADD left no veth behind.
    let veths = Lab::links(&lab.host)
        .into_iter()
        .filter(|l| l.kind == "veth")
        .count();
    assert_eq!(veths, 1);
    assert!(addrs_in(&c2, "eth0").is_empty());
}

#[test]
#[ignore = "needs root"]
fn reference_host_local_reads_skiff_allocations() {
    need_root!();
    if !Path::new("/usr/lib/cni/host-local").exists() {
        eprintln!(
            "SKIPPED: /usr/lib/cni/host-local missing (apt-get install containernetworking-plugins)"
        );
        return;
    }
    let mut lab = Lab::new();
    let c1 = lab.container("a");
    let conf = conf(&lab, "1.0.0", "10.93.0.0/24", false);
    let (rc, r) = add(&lab, "ctr-a", &c1, &conf);
    assert_eq!(rc, 0, "{r}");
    // The reference plugin continues round-robin after skiff's allocation and
    // releases it by container id, so the on-disk layout is the same.
    let ipam = conf.replace("skiff-host-local", "host-local");
    let e = env("ADD", "ref-b", "/proc/self/ns/net");
    let (rc, v) = lab.plugin(Path::new("/usr/lib/cni/host-local"), &e, &ipam);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["ips"][0]["address"], "10.93.0.3/24");
    let (rc, v) = lab.plugin(
        Path::new("/usr/lib/cni/host-local"),
        &env("DEL", "ctr-a", ""),
        &ipam,
    );
    assert_eq!(rc, 0, "{v}");
    assert_eq!(lab.allocations("testnet"), vec!["10.93.0.3"]);
}
