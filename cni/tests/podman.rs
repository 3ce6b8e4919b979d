//! Root test: skiff's plugins under another runtime. Debian's podman 4.3 with
//! `network_backend = "cni"` runs a busybox rootfs on a conflist using
//! skiff-bridge + skiff-host-local, inside a throwaway host netns; its
//! container gets an address from skiff's IPAM and reaches a pod that skiff's
//! executor attached to the same bridge.

mod common;

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cni::Attachment;
use common::{Lab, listen_in, skiff_bin_dir};

#[test]
#[ignore = "needs root"]
fn podman_uses_skiff_plugins() {
    need_root!();
    let have = |p: &str| Path::new(p).exists();
    if !have("/usr/bin/podman")
        || !have("/usr/sbin/runc") && !have("/usr/bin/runc")
        || !have("/usr/bin/busybox")
    {
        eprintln!("SKIPPED: needs podman, runc and busybox (apt-get install podman runc busybox)");
        return;
    }
    let mut lab = Lab::new();
    let t = lab.dir.path().to_path_buf();
    let rootfs = t.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "ip", "nc", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    let conf_dir = t.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"skiffpod","plugins":[{{"type":"skiff-bridge","bridge":"cni0",
        "isGateway":true,"isDefaultGateway":true,"ipMasq":true,
        "ipam":{{"type":"skiff-host-local","dataDir":"{}","ranges":[[{{"subnet":"10.78.0.0/24"}}]]}}}}]}}"#,
        lab.data_dir().display()
    );
    std::fs::write(conf_dir.join("10-skiffpod.conflist"), &conflist).unwrap();
    let containers_conf = t.join("containers.conf");
    std::fs::write(
        &containers_conf,
        format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000","nproc=32768:32768"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{}"]
network_config_dir = "{}"
default_network = "skiffpod"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"#,
            skiff_bin_dir().display(),
            conf_dir.display()
        ),
    )
    .unwrap();

    // A skiff pod on the same bridge, attached by skiff's executor.
    let net = lab.network(&conflist, vec![skiff_bin_dir()]);
    let pod_ns = lab.container("pod");
    let pod = Attachment {
        container_id: "skiff-pod".into(),
        netns: pod_ns.clone(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let pod_ip = net.add(&pod).unwrap().ips[0].address.addr;
    let listener = listen_in(&pod_ns, std::net::SocketAddr::new(pod_ip, 0));
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok((mut s, peer)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                return Some((peer.ip(), got));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });

    let script =
        format!("ip -4 -o addr show eth0; echo hello-from-podman | nc -w 3 {pod_ip} {port}");
    for d in ["root", "runroot", "tmp"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.host.display()))
        .arg("podman")
        .arg("--root")
        .arg(t.join("root"))
        .arg("--runroot")
        .arg(t.join("runroot"))
        .args([
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--network",
            "skiffpod",
            "--rootfs",
        ])
        .arg(&rootfs)
        .args(["/bin/sh", "-c", &script])
        .env("CONTAINERS_CONF", &containers_conf)
        .env("TMPDIR", t.join("tmp"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "2: eth0    inet 10.78.0.3/24 brd ..." from skiff-host-local's range.
    let podman_ip: IpAddr = stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address in {stdout:?}"));
    assert!(podman_ip.to_string().starts_with("10.78.0."), "{podman_ip}");
    assert_ne!(podman_ip, pod_ip);
    let (peer, got) = server
        .join()
        .unwrap()
        .expect("podman container connected to the skiff pod");
    assert_eq!(peer, podman_ip);
    assert_eq!(got.trim(), "hello-from-podman");
    // podman's DEL (on --rm) went through skiff-host-local: only the pod's address is left.
    assert_eq!(lab.allocations("skiffpod"), vec![pod_ip.to_string()]);
    net.del(&pod).unwrap();
    assert!(lab.allocations("skiffpod").is_empty());
}
