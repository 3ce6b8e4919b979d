//! The VXLAN data path with flannel's vxlan-backend semantics, over rtnetlink (the
//! workspace's netlink layer, `cni::netlink`), in skiffd's network namespace or one pinned at a
//! path (the socket is opened inside it once). Only the tx checksum workaround runs a program
//! (`ethtool`, under `nsenter --net=` for another namespace).
//!
//! Per node: one VTEP `skiff.<VNI>` with the node subnet's `.0` as a `/32`. Per remote node: a
//! permanent neighbour entry (its VTEP address -> its VTEP MAC), an fdb entry (its VTEP MAC -> its
//! public IP) and an `onlink` route for its subnet via its VTEP address. The kernel then
//! encapsulates without any ARP or flooding, since the device is `nolearning`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Mutex;

use cni::ipnet::IpNet;
use cni::netlink::{self, Handle};

use super::datapath::{DataPath, Entry, Installed};
use super::lease::{Ipv4Net, LeaseAttrs};

/// VXLAN encapsulation overhead on IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Errors of the data path; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error(transparent)]
    Cmd(#[from] hostkit::cmd::CmdError),
    #[error("netlink: {what}: {source}")]
    Netlink { what: String, source: io::Error },
    #[error("no network device {0}")]
    NoDevice(String),
    #[error("invalid MAC address {0:?}")]
    BadMac(String),
}

/// Runs a program (ethtool), inside the network namespace at `netns` (a bind-mounted
/// `/proc/PID/ns/net`, e.g. `/run/netns/NAME`) or in skiffd's own.
pub use hostkit::cmd::Runner as CommandRunner;

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

fn ipnet(n: Ipv4Net) -> IpNet {
    IpNet::new(IpAddr::V4(n.addr()), n.prefix_len()).expect("an IPv4 prefix length is valid")
}

/// The data path over rtnetlink: one socket, opened in the namespace it works on.
pub struct NetlinkDataPath {
    nl: Mutex<Handle>,
    /// Where ethtool runs.
    runner: CommandRunner,
}

impl std::fmt::Debug for NetlinkDataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkDataPath")
            .field("netns", &self.runner.netns())
            .finish()
    }
}

impl NetlinkDataPath {
    /// The data path of skiffd's own network namespace.
    pub fn host() -> Result<Self, VxlanError> {
        let nl = Handle::new().map_err(|source| VxlanError::Netlink {
            what: "opening a socket".into(),
            source,
        })?;
        Ok(NetlinkDataPath {
            nl: Mutex::new(nl),
            runner: CommandRunner::host(),
        })
    }

    /// The data path of the network namespace pinned at `path`: the socket is opened on a
    /// short-lived thread inside it (and keeps working there from any thread).
    pub fn in_netns(path: &Path) -> Result<Self, VxlanError> {
        let p = path.to_path_buf();
        let nl = std::thread::spawn(move || -> io::Result<Handle> {
            let ns = std::fs::File::open(&p)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Handle::new()
        })
        .join()
        .map_err(|_| VxlanError::Netlink {
            what: format!("opening a socket in {}", path.display()),
            source: io::Error::other("the thread panicked"),
        })?
        .map_err(|source| VxlanError::Netlink {
            what: format!("opening a socket in {}", path.display()),
            source,
        })?;
        Ok(NetlinkDataPath {
            nl: Mutex::new(nl),
            runner: CommandRunner::in_netns(path),
        })
    }

    fn nl(&self) -> std::sync::MutexGuard<'_, Handle> {
        self.nl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of `dev`, or `None` when it does not exist.
    fn index(nl: &mut Handle, dev: &str) -> Result<Option<u32>, VxlanError> {
        nl.link(dev)
            .map(|l| l.map(|l| l.index))
            .map_err(|source| VxlanError::Netlink {
                what: format!("looking up {dev}"),
                source,
            })
    }

    fn need(nl: &mut Handle, dev: &str) -> Result<u32, VxlanError> {
        Self::index(nl, dev)?.ok_or_else(|| VxlanError::NoDevice(dev.to_string()))
    }

    /// Remove the VTEP (and with it every neighbour, fdb entry and route on it). Idempotent.
    pub fn remove_vtep(&self, vni: u32) -> Result<(), VxlanError> {
        let name = device_name(vni);
        let mut nl = self.nl();
        match Self::index(&mut nl, &name)? {
            Some(i) => nl.del_link(i).map_err(|source| VxlanError::Netlink {
                what: format!("deleting {name}"),
                source,
            }),
            None => Ok(()),
        }
    }
}

fn nlerr(what: impl Into<String>) -> impl FnOnce(io::Error) -> VxlanError {
    let what = what.into();
    move |source| VxlanError::Netlink { what, source }
}

impl DataPath for NetlinkDataPath {
    /// Create (or adopt) the VTEP and bring it up. An existing device with a different VNI,
    /// port, local address or uplink (or not VXLAN at all) is replaced; one that matches is
    /// kept, so a restart keeps its MAC.
    fn ensure_vtep(&self, cfg: &VtepConfig) -> Result<Vtep, VxlanError> {
        let name = device_name(cfg.vni);
        let mut nl = self.nl();
        let uplink = nl
            .link(&cfg.uplink)
            .map_err(nlerr(format!("looking up {}", cfg.uplink)))?
            .ok_or_else(|| VxlanError::NoDevice(cfg.uplink.clone()))?;
        let mtu = uplink.mtu - VXLAN_OVERHEAD;
        let want = netlink::Vxlan {
            id: cfg.vni,
            local: Some(cfg.local_ip),
            link: Some(uplink.index),
            port: cfg.port,
            learning: false,
        };
        let existing = nl
            .vxlan(&name)
            .map_err(nlerr(format!("looking up {name}")))?;
        let keep = existing.as_ref().is_some_and(|(_, v)| {
            v.id == want.id && v.local == want.local && v.link == want.link && v.port == want.port
        });
        if !keep && let Some(i) = Self::index(&mut nl, &name)? {
            nl.del_link(i).map_err(nlerr(format!("deleting {name}")))?;
        }
        if !keep {
            match nl.add_vxlan(&name, &want, Some(mtu)) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r.map_err(nlerr(format!("creating {name}")))?,
            }
        }
        let index = Self::need(&mut nl, &name)?;
        nl.set_mtu(index, mtu)
            .map_err(nlerr(format!("setting the MTU of {name}")))?;
        drop(nl);
        if let Some(subnet) = cfg.subnet {
            self.set_vtep_address(&name, subnet)?;
        }
        let mut nl = self.nl();
        nl.set_up(index)
            .map_err(nlerr(format!("setting {name} up")))?;
        let mac = nl
            .link(&name)
            .map_err(nlerr(format!("looking up {name}")))?
            .ok_or_else(|| VxlanError::NoDevice(name.clone()))?
            .mac;
        drop(nl);
        let mut tx_checksum_off = false;
        if cfg.tx_checksum_off {
            if self.runner.has("ethtool") {
                self.runner
                    .run("ethtool", &["-K", &name, "tx-checksum-ip-generic", "off"])?;
                tx_checksum_off = true;
            } else {
                tracing::warn!(device = %name, "ethtool is not installed; tx checksum offload left on");
            }
        }
        Ok(Vtep {
            name,
            mac,
            mtu,
            tx_checksum_off,
        })
    }

    fn set_vtep_address(&self, dev: &str, subnet: Ipv4Net) -> Result<(), VxlanError> {
        let mut nl = self.nl();
        let index = Self::need(&mut nl, dev)?;
        let want = IpNet::new(IpAddr::V4(subnet.addr()), 32).expect("/32 is valid");
        let have = nl
            .addrs(index)
            .map_err(nlerr(format!("listing the addresses of {dev}")))?;
        for old in have.into_iter().filter(|a| a.addr.is_ipv4() && *a != want) {
            nl.del_addr(index, old)
                .map_err(nlerr(format!("removing {old:?} from {dev}")))?;
        }
        nl.add_addr(index, want)
            .map_err(nlerr(format!("adding {}/32 to {dev}", subnet.addr())))
    }

    /// Neighbour and fdb first, as flannel, so the route never points at an unresolved hop.
    fn add_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
        check_mac(&peer.vtep_mac)?;
        let mut nl = self.nl();
        let index = Self::need(&mut nl, dev)?;
        let gw = IpAddr::V4(peer.subnet.addr());
        nl.replace_neigh(index, gw, &peer.vtep_mac)
            .map_err(nlerr(format!("neighbour {gw} on {dev}")))?;
        nl.replace_fdb(index, &peer.vtep_mac, IpAddr::V4(peer.public_ip))
            .map_err(nlerr(format!(
                "fdb {} dst {} on {dev}",
                peer.vtep_mac, peer.public_ip
            )))?;
        nl.replace_route(ipnet(peer.subnet), Some(gw), index, true)
            .map_err(nlerr(format!("route {} via {gw} on {dev}", peer.subnet)))
    }

    fn remove_peer(&self, dev: &str, peer: &Peer) -> Result<(), VxlanError> {
        check_mac(&peer.vtep_mac)?;
        let mut nl = self.nl();
        // No device: nothing of it is left either.
        let Some(index) = Self::index(&mut nl, dev)? else {
            return Ok(());
        };
        nl.del_route(ipnet(peer.subnet), index)
            .map_err(nlerr(format!(
                "removing the route {} on {dev}",
                peer.subnet
            )))?;
        let gw = IpAddr::V4(peer.subnet.addr());
        nl.del_neigh(index, gw)
            .map_err(nlerr(format!("removing the neighbour {gw} on {dev}")))?;
        nl.del_fdb(index, &peer.vtep_mac, IpAddr::V4(peer.public_ip))
            .map_err(nlerr(format!(
                "removing the fdb entry {} on {dev}",
                peer.vtep_mac
            )))
    }

    fn add_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
        let mut nl = self.nl();
        let index = Self::need(&mut nl, uplink)?;
        nl.replace_route(
            ipnet(peer.subnet),
            Some(IpAddr::V4(peer.public_ip)),
            index,
            false,
        )
        .map_err(nlerr(format!(
            "route {} via {} on {uplink}",
            peer.subnet, peer.public_ip
        )))
    }

    fn remove_direct_route(&self, uplink: &str, peer: &Peer) -> Result<(), VxlanError> {
        let mut nl = self.nl();
        let Some(index) = Self::index(&mut nl, uplink)? else {
            return Ok(());
        };
        nl.del_route(ipnet(peer.subnet), index)
            .map_err(nlerr(format!(
                "removing the route {} on {uplink}",
                peer.subnet
            )))
    }

    fn installed(&self, dev: &str) -> Result<Installed, VxlanError> {
        let mut nl = self.nl();
        let Some(index) = Self::index(&mut nl, dev)? else {
            return Ok(Installed::default());
        };
        let routes = nl
            .routes_v4(index)
            .map_err(nlerr(format!("listing the routes on {dev}")))?;
        let neighbours = nl
            .permanent_neighbours_v4(index)
            .map_err(nlerr(format!("listing the neighbours on {dev}")))?;
        let fdb = nl
            .fdb_v4(index)
            .map_err(nlerr(format!("listing the fdb of {dev}")))?;
        Ok(Installed {
            routes: routes
                .into_iter()
                .filter(|r| r.prefix < 32)
                .filter_map(|r| match r.addr {
                    IpAddr::V4(a) => Ipv4Net::new(a, r.prefix).ok(),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            neighbours: neighbours
                .into_iter()
                .filter_map(|n| match n {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            fdb,
        })
    }

    fn remove_entry(&self, dev: &str, entry: &Entry) -> Result<(), VxlanError> {
        let mut nl = self.nl();
        let Some(index) = Self::index(&mut nl, dev)? else {
            return Ok(());
        };
        match entry {
            Entry::Route(dst) => nl.del_route(ipnet(*dst), index),
            Entry::Neighbour(ip) => nl.del_neigh(index, IpAddr::V4(*ip)),
            Entry::Fdb(mac, dst) => nl.del_fdb(index, mac, IpAddr::V4(*dst)),
        }
        .map_err(nlerr(format!("removing {entry:?} on {dev}")))
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

    #[test]
    fn macs_are_checked() {
        assert!(check_mac("02:00:00:00:00:0a").is_ok());
        for bad in ["02:00 -x", "02:00:00:00:00", "02:00:00:00:00:0g", ""] {
            assert!(
                matches!(check_mac(bad), Err(VxlanError::BadMac(_))),
                "{bad}"
            );
        }
        assert_eq!(
            ipnet(net("10.244.2.0/24")),
            IpNet::new("10.244.2.0".parse().unwrap(), 24).unwrap()
        );
    }

    mod root {
        //! Two throwaway netns "hosts" joined by a veth underlay; never the real host network.

        use std::io::{Read, Write};
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::path::PathBuf;
        use std::process::Command;
        use std::time::Duration;

        use super::*;

        /// A throwaway netns standing in for a host (testkit's, deleted on drop).
        struct Netns(testkit::Netns);

        impl Netns {
            fn new() -> Netns {
                Netns(testkit::Netns::new())
            }

            fn path(&self) -> PathBuf {
                self.0.path()
            }

            fn dp(&self) -> NetlinkDataPath {
                NetlinkDataPath::in_netns(&self.path()).unwrap()
            }

            /// `ip -j ARGS` inside this netns, parsed: an independent view of the kernel.
            fn json(&self, prog: &str, args: &[&str]) -> serde_json::Value {
                let out = Command::new(prog)
                    .args(["-n", &self.0.name, "-j"])
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{prog} {args:?}");
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
            }

            fn ip(&self, args: &[&str]) {
                let mut all = vec!["-n", self.0.name.as_str()];
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

        fn ip(args: &[&str]) {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// These tests are `#[ignore = "needs root"]` (scripts/test.sh runs them as root with
        /// `--include-ignored`); without root or the tools they fail rather than pass.
        fn require_root_and_tools() {
            testkit::require_root();
            assert!(
                CommandRunner::host().has("ip") && CommandRunner::host().has("nsenter"),
                "ip or nsenter is missing (the test builds its hosts with them)"
            );
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
            let v = ns.dp().ensure_vtep(&cfg).unwrap();
            // Again: adopting the existing device must keep it (and its MAC).
            assert_eq!(ns.dp().ensure_vtep(&cfg).unwrap().mac, v.mac);
            // The checksum-offload workaround is really applied (ethtool is a dependency).
            assert!(
                v.tx_checksum_off,
                "ethtool missing: scripts/install-deps.sh installs it"
            );
            let features = CommandRunner::in_netns(ns.path())
                .run("ethtool", &["-k", &v.name])
                .unwrap();
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
        #[ignore = "needs root"]
        fn two_hosts_reach_each_other_over_the_overlay() {
            require_root_and_tools();
            let (a, b) = (Netns::new(), Netns::new());
            a.ip(&[
                "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", &b.0.name,
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
            let (da, db) = (a.dp(), b.dp());
            da.add_peer(&va.name, &to_b).unwrap();
            db.add_peer(&vb.name, &to_a).unwrap();
            da.add_peer(&va.name, &to_b).unwrap();
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
            da.remove_peer(&va.name, &to_b).unwrap();
            da.remove_peer(&va.name, &to_b).unwrap();
            assert!(
                !ping(&a, sa.nth(1), sb.nth(1)),
                "still reachable after remove_peer"
            );
            da.remove_vtep(1).unwrap();
            da.remove_vtep(1).unwrap();
            assert!(da.installed("skiff.1").unwrap().routes.is_empty());
        }

        #[test]
        #[ignore = "needs root"]
        fn netlink_entries_listed_removed_and_a_different_vtep_replaced() {
            require_root_and_tools();
            let ns = Netns::new();
            ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
            ns.ip(&["link", "set", "up1", "up"]);
            let public = Ipv4Addr::new(192, 168, 78, 1);
            let v = host(&ns, "up0", public, net("10.244.1.0/24"));
            let dp = ns.dp();
            let link = ns.json("ip", &["-d", "link", "show", "dev", &v.name]);
            let info = &link[0]["linkinfo"]["info_data"];
            assert_eq!(info["id"], 1);
            assert_eq!(info["port"], 8472);
            assert_eq!(info["local"], "192.168.78.1");
            assert_eq!(info["link"], "up0");
            assert_eq!(info["learning"], false);
            assert_eq!(link[0]["mtu"], 1450);
            assert_eq!(link[0]["address"], v.mac.as_str());

            let peers: Vec<Peer> = (2..=3u8)
                .map(|i| Peer {
                    subnet: net(&format!("10.244.{i}.0/24")),
                    public_ip: Ipv4Addr::new(192, 168, 78, i),
                    vtep_mac: format!("02:00:00:00:00:0{i}"),
                })
                .collect();
            for p in &peers {
                dp.add_peer(&v.name, p).unwrap();
            }
            let mut got = dp.installed(&v.name).unwrap();
            got.routes.sort();
            got.neighbours.sort();
            assert_eq!(got.routes, [peers[0].subnet, peers[1].subnet]);
            assert_eq!(
                got.neighbours,
                [Ipv4Addr::new(10, 244, 2, 0), Ipv4Addr::new(10, 244, 3, 0)]
            );
            let mut fdb = got.fdb.clone();
            fdb.sort();
            assert_eq!(
                fdb,
                [
                    (
                        "02:00:00:00:00:02".to_string(),
                        Ipv4Addr::new(192, 168, 78, 2)
                    ),
                    (
                        "02:00:00:00:00:03".to_string(),
                        Ipv4Addr::new(192, 168, 78, 3)
                    )
                ]
            );
            // iproute2 sees the same: onlink routes, permanent neighbours, fdb with dst.
            let find = |v: &serde_json::Value, key: &str, value: &str| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e[key] == value)
                    .cloned()
                    .unwrap_or_else(|| panic!("no {key}={value} in {v}"))
            };
            let routes = ns.json("ip", &["-4", "route", "show", "dev", &v.name]);
            let r = find(&routes, "dst", "10.244.2.0/24");
            assert_eq!(r["gateway"], "10.244.2.0");
            assert!(r["flags"].to_string().contains("onlink"), "{routes}");
            let neigh = ns.json("ip", &["neigh", "show", "dev", &v.name]);
            let n = find(&neigh, "dst", "10.244.2.0");
            assert_eq!(n["lladdr"], "02:00:00:00:00:02");
            assert!(n["state"].to_string().contains("PERMANENT"), "{neigh}");
            let fdb = ns.json("bridge", &["fdb", "show", "dev", &v.name]);
            assert!(
                fdb.as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["mac"] == "02:00:00:00:00:03" && e["dst"] == "192.168.78.3"),
                "{fdb}"
            );

            // Each kind of entry goes on its own; twice is fine.
            for e in [
                Entry::Route(peers[0].subnet),
                Entry::Neighbour(peers[0].subnet.addr()),
                Entry::Fdb(peers[0].vtep_mac.clone(), peers[0].public_ip),
            ] {
                dp.remove_entry(&v.name, &e).unwrap();
                dp.remove_entry(&v.name, &e).unwrap();
            }
            let got = dp.installed(&v.name).unwrap();
            assert_eq!(got.routes, [peers[1].subnet]);
            assert_eq!(got.neighbours, [peers[1].subnet.addr()]);
            assert_eq!(got.fdb.len(), 1);

            // The VTEP address moves with the subnet.
            dp.set_vtep_address(&v.name, net("10.244.9.0/24")).unwrap();
            let addrs = ns.json("ip", &["-4", "addr", "show", "dev", &v.name]);
            let ips: Vec<String> = addrs[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect();
            assert_eq!(ips, ["10.244.9.0/32"]);

            // A VTEP with another port is replaced (a new device), a matching one kept.
            let cfg = VtepConfig {
                vni: 1,
                port: 4789,
                local_ip: public,
                uplink: "up0".into(),
                subnet: None,
                tx_checksum_off: false,
            };
            let before = ns.json("ip", &["link", "show", "dev", &v.name])[0]["ifindex"].clone();
            dp.ensure_vtep(&cfg).unwrap();
            let link = ns.json("ip", &["-d", "link", "show", "dev", &v.name]);
            assert_eq!(link[0]["linkinfo"]["info_data"]["port"], 4789);
            assert_ne!(link[0]["ifindex"], before);
            assert!(link[0]["flags"].to_string().contains("\"UP\""), "{link}");
            assert!(dp.installed(&v.name).unwrap().routes.is_empty());
            // A missing device: its peers are gone already, listing finds nothing.
            dp.remove_vtep(1).unwrap();
            dp.remove_peer(&v.name, &peers[1]).unwrap();
            assert_eq!(dp.installed(&v.name).unwrap(), Installed::default());
            assert!(matches!(
                dp.add_peer(&v.name, &peers[1]),
                Err(VxlanError::NoDevice(_))
            ));
        }
    }
}
