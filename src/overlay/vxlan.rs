//! The VXLAN data path with flannel's vxlan-backend semantics, for now by running iproute2
//! (`ip`, `bridge`) and `ethtool`, optionally inside a network namespace via `nsenter --net=`.
//!
//! Per node: one VTEP `skiff.<VNI>` with the node subnet's `.0` as a `/32`. Per remote node: a
//! permanent neighbour entry (its VTEP address -> its VTEP MAC), an fdb entry (its VTEP MAC -> its
//! public IP) and an `onlink` route for its subnet via its VTEP address. The kernel then
//! encapsulates without any ARP or flooding, since the device is `nolearning`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::datapath::{DataPath, Entry, Installed};
use super::lease::{Ipv4Net, LeaseAttrs};

/// VXLAN encapsulation overhead on IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Errors of the data path; each carries the command that failed.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("cannot read the MTU of uplink {0} from `ip link` output")]
    NoMtu(String),
    #[error("cannot read the MAC address of {0} from `ip link` output")]
    NoMac(String),
    #[error("invalid MAC address {0:?}")]
    BadMac(String),
}

impl VxlanError {
    /// Whether the command failed only because the thing to remove is not there.
    fn is_missing(&self) -> bool {
        match self {
            VxlanError::Failed { stderr, .. } => [
                "No such file or directory",
                "Cannot find device",
                "No such process",
                "does not exist",
                "not found",
            ]
            .iter()
            .any(|m| stderr.contains(m)),
            _ => false,
        }
    }

    fn is_exists(&self) -> bool {
        matches!(self, VxlanError::Failed { stderr, .. } if stderr.contains("File exists"))
    }
}

/// Runs the data path's commands. The real one shells out; tests pass a [`FakeRunner`].
pub trait Runner: Send + Sync {
    /// Run `prog args...`; returns its stdout.
    fn run(&self, prog: &str, args: &[&str]) -> Result<String, VxlanError>;
    /// Whether `prog` can be run at all (optional tools such as ethtool).
    fn has(&self, prog: &str) -> bool;
}

/// Runs commands for real, inside the network namespace at `netns` (a bind-mounted
/// `/proc/PID/ns/net`, e.g. `/run/netns/NAME`) or in skiffd's own when `None`.
#[derive(Debug, Clone, Default)]
pub struct CommandRunner {
    netns: Option<PathBuf>,
}

impl CommandRunner {
    /// Run in skiffd's own network namespace.
    pub fn host() -> Self {
        CommandRunner { netns: None }
    }

    /// Run inside the network namespace pinned at `path`.
    pub fn in_netns(path: impl Into<PathBuf>) -> Self {
        CommandRunner {
            netns: Some(path.into()),
        }
    }
}

impl Runner for CommandRunner {
    fn run(&self, prog: &str, args: &[&str]) -> Result<String, VxlanError> {
        // nsenter forks a fresh process into the namespace: no setns on any of our threads.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(prog);
                c
            }
            None => Command::new(prog),
        };
        cmd.args(args);
        let line = format!("{prog} {}", args.join(" "));
        let out = cmd.output().map_err(|source| VxlanError::Spawn {
            cmd: line.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(VxlanError::Failed {
                cmd: line,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn has(&self, prog: &str) -> bool {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(prog).is_file())
    }
}

/// Records every command and answers from a script; for unit tests without root.
#[derive(Debug, Default)]
pub struct FakeRunner {
    /// Every command run, as `prog arg arg...`.
    pub calls: Mutex<Vec<String>>,
    /// `(command prefix, result)`: the first matching entry answers; unmatched commands succeed
    /// with empty output.
    pub script: Vec<(String, Result<String, String>)>,
    /// Programs reported as installed by [`Runner::has`].
    pub installed: Vec<String>,
}

impl FakeRunner {
    /// The commands run so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Runner for FakeRunner {
    fn run(&self, prog: &str, args: &[&str]) -> Result<String, VxlanError> {
        let line = format!("{prog} {}", args.join(" "));
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        match self
            .script
            .iter()
            .find(|(p, _)| line.starts_with(p.as_str()))
        {
            Some((_, Ok(out))) => Ok(out.clone()),
            Some((_, Err(stderr))) => Err(VxlanError::Failed {
                cmd: line,
                status: "exit status: 2".into(),
                stderr: stderr.clone(),
            }),
            None => Ok(String::new()),
        }
    }

    fn has(&self, prog: &str) -> bool {
        self.installed.iter().any(|p| p == prog)
    }
}

/// The VTEP device name for a VNI (flannel's `flannel.<VNI>`).
pub fn device_name(vni: u32) -> String {
    format!("skiff.{vni}")
}

/// What the node's VTEP should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtepConfig {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port (8472 for flannel compatibility).
    pub port: u16,
    /// This node's public (underlay) address, the VXLAN source.
    pub local_ip: Ipv4Addr,
    /// The underlay interface carrying VXLAN packets.
    pub uplink: String,
    /// This node's leased subnet; its `.0` goes on the VTEP as a `/32`. `None` while the
    /// subnet is not known yet (the lease needs the VTEP's MAC first).
    pub subnet: Option<Ipv4Net>,
    /// Turn off tx checksum offload on the VTEP (the known kernel/NIC VXLAN checksum bug).
    pub tx_checksum_off: bool,
}

/// The VTEP as set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    /// Device name.
    pub name: String,
    /// Its MAC, to publish as `VtepMAC`.
    pub mac: String,
    /// Its MTU (uplink MTU - 50); pod interfaces must not exceed it.
    pub mtu: u32,
    /// Whether tx checksum offload was turned off.
    pub tx_checksum_off: bool,
}

/// A remote node, as its lease describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its pod subnet.
    pub subnet: Ipv4Net,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC.
    pub vtep_mac: String,
}

impl Peer {
    /// The peer described by a subnet lease.
    pub fn from_lease(subnet: Ipv4Net, attrs: &LeaseAttrs) -> Self {
        Peer {
            subnet,
            public_ip: attrs.public_ip,
            vtep_mac: attrs.backend_data.vtep_mac.clone(),
        }
    }
}

/// The value after `word` in whitespace-separated `ip -o -d link` output.
fn field<'a>(out: &'a str, word: &str) -> Option<&'a str> {
    let mut it = out.split_whitespace();
    it.find(|w| *w == word)?;
    it.next()
}

fn check_mac(mac: &str) -> Result<(), VxlanError> {
    let parts: Vec<_> = mac.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(())
    } else {
        Err(VxlanError::BadMac(mac.to_string()))
    }
}

/// Treat "already gone" as success: teardown is idempotent.
fn ignore_missing(r: Result<String, VxlanError>) -> Result<(), VxlanError> {
    match r {
        Err(e) if e.is_missing() => Ok(()),
        r => r.map(drop),
    }
}

/// Create (or adopt) the VTEP and bring it up. An existing device with a different VNI, port,
/// local address or uplink is replaced; one that matches is kept, so a restart keeps its MAC.
pub fn ensure_vtep(r: &dyn Runner, cfg: &VtepConfig) -> Result<Vtep, VxlanError> {
    let name = device_name(cfg.vni);
    let uplink = r.run("ip", &["-o", "link", "show", "dev", &cfg.uplink])?;
    let uplink_mtu: u32 = field(&uplink, "mtu")
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| VxlanError::NoMtu(cfg.uplink.clone()))?;
    let mtu = uplink_mtu - VXLAN_OVERHEAD;
    let (vni, port, local) = (
        cfg.vni.to_string(),
        cfg.port.to_string(),
        cfg.local_ip.to_string(),
    );

    if let Ok(existing) = r.run("ip", &["-o", "-d", "link", "show", "dev", &name]) {
        let matches = field(&existing, "id") == Some(vni.as_str())
            && field(&existing, "dstport") == Some(port.as_str())
            && field(&existing, "local") == Some(local.as_str())
            && field(&existing, "dev") == Some(cfg.uplink.as_str());
        if !matches {
            ignore_missing(r.run("ip", &["link", "del", "dev", &name]))?;
        }
    }
    let add = r.run(
        "ip",
        &[
            "link",
            "add",
            &name,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dev",
            &cfg.uplink,
            "dstport",
            &port,
            "nolearning",
        ],
    );
    match add {
        Err(e) if e.is_exists() => {}
        r => r.map(drop)?,
    }
    r.run(
        "ip",
        &["link", "set", "dev", &name, "mtu", &mtu.to_string()],
    )?;
    if let Some(subnet) = cfg.subnet {
        set_vtep_address(r, &name, subnet)?;
    }
    r.run("ip", &["link", "set", "dev", &name, "up"])?;

    let mut tx_checksum_off = false;
    if cfg.tx_checksum_off {
        if r.has("ethtool") {
            r.run("ethtool", &["-K", &name, "tx-checksum-ip-generic", "off"])?;
            tx_checksum_off = true;
        } else {
            tracing::warn!(device = %name, "ethtool is not installed; tx checksum offload left on");
        }
    }

    let shown = r.run("ip", &["-o", "link", "show", "dev", &name])?;
    let mac = field(&shown, "link/ether")
        .ok_or_else(|| VxlanError::NoMac(name.clone()))?
        .to_string();
    Ok(Vtep {
        name,
        mac,
        mtu,
        tx_checksum_off,
    })
}

/// Put `subnet`'s `.0` on the VTEP as a `/32`, removing any other IPv4 address (a node that
/// came back with another subnet).
pub fn set_vtep_address(r: &dyn Runner, dev: &str, subnet: Ipv4Net) -> Result<(), VxlanError> {
    let want = format!("{}/32", subnet.addr());
    let shown = r.run("ip", &["-4", "-o", "addr", "show", "dev", dev])?;
    for old in shown.lines().filter_map(|l| field(l, "inet")) {
        if old != want {
            ignore_missing(r.run("ip", &["addr", "del", old, "dev", dev]))?;
        }
    }
    r.run("ip", &["addr", "replace", &want, "dev", dev])?;
    Ok(())
}

/// List what is installed on `dev`.
pub fn installed(r: &dyn Runner, dev: &str) -> Result<Installed, VxlanError> {
    let routes = r.run("ip", &["-4", "-o", "route", "show", "dev", dev])?;
    let neigh = r.run(
        "ip",
        &["-4", "neigh", "show", "dev", dev, "nud", "permanent"],
    )?;
    let fdb = r.run("bridge", &["fdb", "show", "dev", dev])?;
    Ok(Installed {
        routes: routes
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|d| d.parse().ok())
            .collect(),
        neighbours: neigh
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|d| d.parse().ok())
            .collect(),
        fdb: fdb
            .lines()
            .filter_map(|l| {
                let mac = l.split_whitespace().next()?;
                let dst = field(l, "dst")?.parse().ok()?;
                Some((mac.to_lowercase(), dst))
            })
            .collect(),
    })
}

/// Remove an entry found by [`installed`]; already gone is success.
pub fn remove_entry(r: &dyn Runner, dev: &str, entry: &Entry) -> Result<(), VxlanError> {
    match entry {
        Entry::Route(dst) => {
            ignore_missing(r.run("ip", &["route", "del", &dst.to_string(), "dev", dev]))
        }
        Entry::Neighbour(ip) => {
            ignore_missing(r.run("ip", &["neigh", "del", &ip.to_string(), "dev", dev]))
        }
        Entry::Fdb(mac, dst) => ignore_missing(r.run(
            "bridge",
            &[
                "fdb",
                "del",
                mac,
                "dev",
                dev,
                "dst",
                &dst.to_string(),
                "self",
            ],
        )),
    }
}

/// A plain route to a peer on the same L2 network (`DirectRouting`): no encapsulation.
pub fn add_direct_route(r: &dyn Runner, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
    r.run(
        "ip",
        &[
            "route",
            "replace",
            &peer.subnet.to_string(),
            "via",
            &peer.public_ip.to_string(),
            "dev",
            uplink,
        ],
    )
    .map(drop)
}

/// Undo [`add_direct_route`].
pub fn remove_direct_route(r: &dyn Runner, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
    ignore_missing(r.run(
        "ip",
        &["route", "del", &peer.subnet.to_string(), "dev", uplink],
    ))
}

/// Remove the VTEP (and with it every neighbour, fdb entry and route on it). Idempotent.
pub fn remove_vtep(r: &dyn Runner, vni: u32) -> Result<(), VxlanError> {
    ignore_missing(r.run("ip", &["link", "del", "dev", &device_name(vni)]))
}

/// Make `peer`'s subnet reachable through the VTEP `dev`. Idempotent (`replace` throughout).
/// Order as flannel: neighbour and fdb first, so the route never points at an unresolved hop.
pub fn add_peer(r: &dyn Runner, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
    check_mac(&peer.vtep_mac)?;
    let gw = peer.subnet.addr().to_string();
    let public = peer.public_ip.to_string();
    let mac = peer.vtep_mac.as_str();
    r.run(
        "ip",
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )?;
    r.run(
        "bridge",
        &[
            "fdb",
            "replace",
            mac,
            "dev",
            dev,
            "dst",
            &public,
            "self",
            "permanent",
        ],
    )?;
    r.run(
        "ip",
        &[
            "route",
            "replace",
            &peer.subnet.to_string(),
            "via",
            &gw,
            "dev",
            dev,
            "onlink",
        ],
    )?;
    Ok(())
}

/// Undo [`add_peer`]. Anything already gone is success.
pub fn remove_peer(r: &dyn Runner, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
    check_mac(&peer.vtep_mac)?;
    let gw = peer.subnet.addr().to_string();
    let public = peer.public_ip.to_string();
    let mac = peer.vtep_mac.as_str();
    ignore_missing(r.run(
        "ip",
        &[
            "route",
            "del",
            &peer.subnet.to_string(),
            "via",
            &gw,
            "dev",
            dev,
            "onlink",
        ],
    ))?;
    ignore_missing(r.run("ip", &["neigh", "del", &gw, "dev", dev]))?;
    ignore_missing(r.run(
        "bridge",
        &["fdb", "del", mac, "dev", dev, "dst", &public, "self"],
    ))?;
    Ok(())
}

impl DataPath for CommandRunner {
    fn ensure_vtep(&self, cfg: &VtepConfig) -> Result<Vtep, VxlanError> {
        ensure_vtep(self, cfg)
    }
    fn set_vtep_address(&self, dev: &str, subnet: Ipv4Net) -> Result<(), VxlanError> {
        set_vtep_address(self, dev, subnet)
    }
    fn add_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
        add_peer(self, dev, peer)
    }
    fn remove_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
        remove_peer(self, dev, peer)
    }
    fn add_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
        add_direct_route(self, uplink, peer)
    }
    fn remove_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
        remove_direct_route(self, uplink, peer)
    }
    fn installed(&self, dev: &str) -> Result<Installed, VxlanError> {
        installed(self, dev)
    }
    fn remove_entry(&self, dev: &str, entry: &Entry) -> Result<(), VxlanError> {
        remove_entry(self, dev, entry)
    }
    fn masquerade(&self, network: &Ipv4Net, subnet: &Ipv4Net) -> Result<(), String> {
        super::agent::masquerade(network, subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn cfg() -> VtepConfig {
        VtepConfig {
            vni: 1,
            port: 8472,
            local_ip: Ipv4Addr::new(192, 168, 77, 1),
            uplink: "eth0".into(),
            subnet: Some(net("10.244.1.0/24")),
            tx_checksum_off: true,
        }
    }

    const UPLINK: &str = "2: eth0: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state UP\\    link/ether 0a:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff";
    const VTEP: &str = "5: skiff.1: <BROADCAST,MULTICAST> mtu 1450 qdisc noop\\    link/ether 6e:0b:1f:aa:bb:cc brd ff:ff:ff:ff:ff:ff promiscuity 0 \\    vxlan id 1 local 192.168.77.1 dev eth0 srcport 0 0 dstport 8472 nolearning ttl auto";

    #[test]
    fn creates_vtep_with_flannel_settings() {
        let fake = FakeRunner {
            script: vec![
                ("ip -o link show dev eth0".into(), Ok(UPLINK.into())),
                (
                    "ip -o -d link show dev skiff.1".into(),
                    Err("Device \"skiff.1\" does not exist.".into()),
                ),
                ("ip -o link show dev skiff.1".into(), Ok(VTEP.into())),
            ],
            installed: vec!["ethtool".into()],
            ..Default::default()
        };
        let v = ensure_vtep(&fake, &cfg()).unwrap();
        assert_eq!(
            v,
            Vtep {
                name: "skiff.1".into(),
                mac: "6e:0b:1f:aa:bb:cc".into(),
                mtu: 1450,
                tx_checksum_off: true
            }
        );
        let calls = fake.calls();
        assert_eq!(
            &calls[2..7],
            [
                "ip link add skiff.1 type vxlan id 1 local 192.168.77.1 dev eth0 dstport 8472 nolearning",
                "ip link set dev skiff.1 mtu 1450",
                "ip -4 -o addr show dev skiff.1",
                "ip addr replace 10.244.1.0/32 dev skiff.1",
                "ip link set dev skiff.1 up",
            ]
        );
        assert_eq!(calls[7], "ethtool -K skiff.1 tx-checksum-ip-generic off");
    }

    #[test]
    fn vtep_address_moves_and_installed_entries_are_parsed() {
        let fake = FakeRunner {
            script: vec![
                (
                    "ip -4 -o addr show dev skiff.1".into(),
                    Ok("5: skiff.1    inet 10.244.7.0/32 scope global skiff.1\\       valid_lft forever preferred_lft forever\n".into()),
                ),
                (
                    "ip -4 -o route show dev skiff.1".into(),
                    Ok("10.244.2.0/24 via 10.244.2.0 onlink \n10.244.3.0/24 via 10.244.3.0 onlink \n".into()),
                ),
                (
                    "ip -4 neigh show dev skiff.1".into(),
                    Ok("10.244.2.0 lladdr 02:00:00:00:00:02 PERMANENT\n".into()),
                ),
                (
                    "bridge fdb show dev skiff.1".into(),
                    Ok("02:00:00:00:00:02 dst 192.168.77.2 self permanent\n6e:0b:1f:aa:bb:cc vlan 1 master br0 permanent\n".into()),
                ),
            ],
            ..Default::default()
        };
        set_vtep_address(&fake, "skiff.1", net("10.244.1.0/24")).unwrap();
        assert_eq!(
            fake.calls()[1..],
            [
                "ip addr del 10.244.7.0/32 dev skiff.1",
                "ip addr replace 10.244.1.0/32 dev skiff.1"
            ]
        );
        let got = installed(&fake, "skiff.1").unwrap();
        assert_eq!(got.routes, [net("10.244.2.0/24"), net("10.244.3.0/24")]);
        assert_eq!(got.neighbours, [Ipv4Addr::new(10, 244, 2, 0)]);
        assert_eq!(
            got.fdb,
            [(
                "02:00:00:00:00:02".to_string(),
                Ipv4Addr::new(192, 168, 77, 2)
            )]
        );
    }

    #[test]
    fn keeps_a_matching_vtep_and_replaces_a_different_one() {
        let script = |existing: &str| FakeRunner {
            script: vec![
                ("ip -o link show dev eth0".into(), Ok(UPLINK.into())),
                ("ip -o -d link show dev skiff.1".into(), Ok(existing.into())),
                (
                    "ip link add".into(),
                    Err("RTNETLINK answers: File exists".into()),
                ),
                ("ip -o link show dev skiff.1".into(), Ok(VTEP.into())),
            ],
            ..Default::default()
        };
        let same = script(VTEP);
        let v = ensure_vtep(&same, &cfg()).unwrap();
        assert!(!v.tx_checksum_off, "no ethtool: offload left alone");
        assert!(!same.calls().iter().any(|c| c.starts_with("ip link del")));

        let other = script(&VTEP.replace("dstport 8472", "dstport 4789"));
        ensure_vtep(&other, &cfg()).unwrap();
        assert!(
            other
                .calls()
                .contains(&"ip link del dev skiff.1".to_string())
        );
    }

    #[test]
    fn peer_entries_and_idempotent_removal() {
        let peer = Peer {
            subnet: net("10.244.2.0/24"),
            public_ip: Ipv4Addr::new(192, 168, 77, 2),
            vtep_mac: "02:00:00:00:00:02".into(),
        };
        let fake = FakeRunner::default();
        add_peer(&fake, "skiff.1", &peer).unwrap();
        assert_eq!(
            fake.calls(),
            [
                "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:00:02 dev skiff.1 nud permanent",
                "bridge fdb replace 02:00:00:00:00:02 dev skiff.1 dst 192.168.77.2 self permanent",
                "ip route replace 10.244.2.0/24 via 10.244.2.0 dev skiff.1 onlink",
            ]
        );
        let gone = FakeRunner {
            script: vec![
                (
                    "ip route del".into(),
                    Err("RTNETLINK answers: No such process".into()),
                ),
                (
                    "ip neigh del".into(),
                    Err("RTNETLINK answers: No such file or directory".into()),
                ),
                (
                    "bridge fdb del".into(),
                    Err("RTNETLINK answers: No such file or directory".into()),
                ),
            ],
            ..Default::default()
        };
        remove_peer(&gone, "skiff.1", &peer).unwrap();
        assert_eq!(gone.calls().len(), 3);
        let broken = FakeRunner {
            script: vec![(
                "ip route del".into(),
                Err("RTNETLINK answers: Operation not permitted".into()),
            )],
            ..Default::default()
        };
        assert!(remove_peer(&broken, "skiff.1", &peer).is_err());
        let bad = Peer {
            vtep_mac: "02:00 -x".into(),
            ..peer
        };
        assert!(matches!(
            add_peer(&fake, "skiff.1", &bad),
            Err(VxlanError::BadMac(_))
        ));
    }

    mod root {
        //! Two throwaway netns "hosts" joined by a veth underlay; never the real host network.

        use std::io::{Read, Write};
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::time::Duration;

        use super::*;

        static SEQ: AtomicU32 = AtomicU32::new(0);

        /// A named netns (`ip netns add`), deleted on drop.
        struct Netns {
            name: String,
        }

        impl Netns {
            fn new(tag: &str) -> Netns {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos();
                let name = format!(
                    "skv{}-{:x}{}-{tag}",
                    std::process::id() % 10000,
                    nanos % 0xffff,
                    SEQ.fetch_add(1, Ordering::Relaxed)
                );
                ip(&["netns", "add", &name]);
                Netns { name }
            }

            fn path(&self) -> PathBuf {
                PathBuf::from("/run/netns").join(&self.name)
            }

            fn runner(&self) -> CommandRunner {
                CommandRunner::in_netns(self.path())
            }

            fn ip(&self, args: &[&str]) {
                let mut all = vec!["-n", self.name.as_str()];
                all.extend_from_slice(args);
                ip(&all);
            }

            /// Run `f` on a fresh OS thread inside this netns (the thread is discarded after).
            fn run<T: Send + 'static>(
                &self,
                f: impl FnOnce() -> T + Send + 'static,
            ) -> std::thread::JoinHandle<T> {
                let path = self.path();
                std::thread::spawn(move || {
                    let ns = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    f()
                })
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = Command::new("ip")
                    .args(["netns", "del", &self.name])
                    .status();
            }
        }

        fn ip(args: &[&str]) {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn skip() -> bool {
            if !nix::unistd::Uid::effective().is_root() {
                eprintln!("SKIPPED: the overlay data-path test needs root");
                return true;
            }
            if !CommandRunner::host().has("ip") || !CommandRunner::host().has("nsenter") {
                eprintln!("SKIPPED: ip or nsenter is missing");
                return true;
            }
            false
        }

        /// One "host": uplink with `public`, a pod-side veth with the subnet's `.1`, and a VTEP.
        fn host(ns: &Netns, uplink: &str, public: Ipv4Addr, subnet: Ipv4Net) -> Vtep {
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["addr", "add", &format!("{public}/24"), "dev", uplink]);
            ns.ip(&["link", "set", uplink, "up"]);
            ns.ip(&[
                "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/{}", subnet.nth(1), subnet.prefix_len()),
                "dev",
                "pod0",
            ]);
            ns.ip(&["link", "set", "pod0", "up"]);
            ns.ip(&["link", "set", "pod1", "up"]);
            let cfg = VtepConfig {
                vni: 1,
                port: 8472,
                local_ip: public,
                uplink: uplink.into(),
                subnet: Some(subnet),
                tx_checksum_off: true,
            };
            let v = ensure_vtep(&ns.runner(), &cfg).unwrap();
            // Again: adopting the existing device must keep it (and its MAC).
            assert_eq!(ensure_vtep(&ns.runner(), &cfg).unwrap().mac, v.mac);
            // The checksum-offload workaround is really applied (ethtool is a dependency).
            assert!(
                v.tx_checksum_off,
                "ethtool missing: scripts/install-deps.sh installs it"
            );
            let features = ns.runner().run("ethtool", &["-k", &v.name]).unwrap();
            assert!(
                features.contains("tx-checksum-ip-generic: off"),
                "{features}"
            );
            v
        }

        fn ping(ns: &Netns, from: Ipv4Addr, to: Ipv4Addr) -> bool {
            Command::new("nsenter")
                .arg(format!("--net={}", ns.path().display()))
                .args([
                    "busybox",
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "2",
                    "-I",
                    &from.to_string(),
                    &to.to_string(),
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        }

        #[test]
        fn two_hosts_reach_each_other_over_the_overlay() {
            if skip() {
                return;
            }
            let (a, b) = (Netns::new("a"), Netns::new("b"));
            a.ip(&[
                "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", &b.name,
            ]);
            let (pa, pb) = (
                Ipv4Addr::new(192, 168, 77, 1),
                Ipv4Addr::new(192, 168, 77, 2),
            );
            let (sa, sb) = (net("10.244.1.0/24"), net("10.244.2.0/24"));
            let va = host(&a, "up0", pa, sa);
            let vb = host(&b, "up0", pb, sb);
            assert_eq!((va.mtu, vb.mtu), (1450, 1450));

            let to_b = Peer {
                subnet: sb,
                public_ip: pb,
                vtep_mac: vb.mac.clone(),
            };
            let to_a = Peer {
                subnet: sa,
                public_ip: pa,
                vtep_mac: va.mac.clone(),
            };
            assert!(
                !ping(&a, sa.nth(1), sb.nth(1)),
                "reachable before any overlay route"
            );
            add_peer(&a.runner(), &va.name, &to_b).unwrap();
            add_peer(&b.runner(), &vb.name, &to_a).unwrap();
            add_peer(&a.runner(), &va.name, &to_b).unwrap();
            assert!(
                ping(&a, sa.nth(1), sb.nth(1)),
                "ping across the overlay failed"
            );

            // TCP from A's pod subnet to a listener on B's, through the VTEPs.
            let listener = b.run(move || {
                let l = TcpListener::bind((sb.nth(1), 0)).unwrap();
                let port = l.local_addr().unwrap().port();
                (l, port)
            });
            let (l, port) = listener.join().unwrap();
            let server = std::thread::spawn(move || {
                let (mut s, peer) = l.accept().unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).unwrap();
                s.write_all(b"pong!").unwrap();
                (peer, buf)
            });
            let client = a.run(move || {
                let to = SocketAddr::from((sb.nth(1), port));
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"ping!").unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).unwrap();
                buf
            });
            assert_eq!(&client.join().unwrap(), b"pong!");
            let (peer, got) = server.join().unwrap();
            assert_eq!(&got, b"ping!");
            // The source is A's VTEP address: the packet left A through the overlay route.
            assert_eq!(peer.ip(), std::net::IpAddr::V4(sa.addr()));

            // Removing the peer cuts the path; removing it twice is fine.
            remove_peer(&a.runner(), &va.name, &to_b).unwrap();
            remove_peer(&a.runner(), &va.name, &to_b).unwrap();
            assert!(
                !ping(&a, sa.nth(1), sb.nth(1)),
                "still reachable after remove_peer"
            );
            remove_vtep(&a.runner(), 1).unwrap();
            remove_vtep(&a.runner(), 1).unwrap();
        }
    }
}
