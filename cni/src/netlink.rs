//! A small synchronous rtnetlink client for what the bridge plugin needs:
//! links (bridge, veth, up, master, hairpin, promisc, delete), addresses and
//! routes; and for skiff's VXLAN overlay: vxlan links, MTU, neighbours, fdb
//! entries and replacing/listing/deleting routes. The socket belongs to the
//! netns of the thread that opens it, so container-side work opens its own
//! `Handle` on a thread inside the netns.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::ipnet::IpNet;

/// What the plugins need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC as `aa:bb:cc:dd:ee:ff`, empty if none.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Link kind (`bridge`, `veth`, ...), empty for plain devices.
    pub kind: String,
    /// Index of the master (bridge) if enslaved.
    pub master: Option<u32>,
    /// IFF_UP set.
    pub up: bool,
}

/// A netlink socket in the calling thread's network namespace.
pub struct Handle {
    sock: Socket,
    seq: u32,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// True for "no such device" answers.
pub fn is_not_found(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
    )
}

impl Handle {
    /// Opens a socket in the current thread's netns.
    pub fn new() -> io::Result<Handle> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Handle { sock, seq: 0 })
    }

    /// Sends `msg` and collects the answers until the ACK or the end of a dump.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let rx: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&data[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = rx.header.length as usize;
                if rx.header.sequence_number == self.seq {
                    match rx.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(errno(-code.get())),
                            };
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// The link called `name`, if it exists.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All links.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Creates a veth pair: `host` here, `peer` directly in the netns `peer_netns`.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    fn set_link(&mut self, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        f(&mut m);
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// Sets IFF_UP.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Sets IFF_PROMISC.
    pub fn set_promisc(&mut self, index: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.header.flags = LinkFlags::Promisc;
            m.header.change_mask = LinkFlags::Promisc;
        })
    }

    /// Enslaves `index` to bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::Controller(master))
        })
    }

    /// Sets the bridge port's hairpin mode (what `ip link set X type bridge_slave hairpin on` does).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), 0).map(drop)
    }

    /// Deletes a link; a missing one is success.
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Adds `addr` to link `index`; an existing identical address is success.
    pub fn add_addr(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr);
        m.header.prefix_len = addr.prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr));
        m.attributes.push(AddressAttribute::Address(addr.addr));
        if addr.addr.is_ipv4()
            && addr.prefix < 31
            && let IpAddr::V4(b) = addr.last()
        {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Addresses on link `index`.
    pub fn addrs(&mut self, index: u32) -> io::Result<Vec<IpNet>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    IpNet::new(ip, a.header.prefix_len)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds a route to `dst` via `gw` (or on-link) out of link `index`;
    /// an existing route is success.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, index: u32) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(dst.addr),
            destination_prefix_length: dst.prefix,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: if gw.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..m.header
        };
        if dst.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        match self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }
}

/// The settings of a VXLAN link (what `ip -d link show` prints after `vxlan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// VNI.
    pub id: u32,
    /// Source address of the encapsulated packets.
    pub local: Option<std::net::Ipv4Addr>,
    /// Index of the underlay link.
    pub link: Option<u32>,
    /// UDP destination port.
    pub port: u16,
    /// Whether the device learns fdb entries from traffic.
    pub learning: bool,
}

/// A permanent neighbour, a remote fdb entry or a route: `mac` as `aa:bb:cc:dd:ee:ff`.
fn parse_mac(mac: &str) -> io::Result<Vec<u8>> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad MAC {mac:?}")))?;
    if bytes.len() != 6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad MAC {mac:?}"),
        ));
    }
    Ok(bytes)
}

fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Missing is success for deletes: ENOENT/ESRCH/ENODEV, and EADDRNOTAVAIL for addresses.
fn ignore_missing(r: io::Result<Vec<RouteNetlinkMessage>>) -> io::Result<()> {
    match r {
        Err(e) if is_not_found(&e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        r => r.map(drop),
    }
}

impl Handle {
    /// Creates a VXLAN link `name` (`ip link add NAME type vxlan id VNI local LOCAL dev LINK
    /// dstport PORT nolearning`).
    pub fn add_vxlan(&mut self, name: &str, vxlan: &Vxlan, mtu: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut data = vec![InfoVxlan::Id(vxlan.id)];
        if let Some(local) = vxlan.local {
            data.push(InfoVxlan::Local(local));
        }
        if let Some(link) = vxlan.link {
            data.push(InfoVxlan::Link(link));
        }
        data.push(InfoVxlan::Port(vxlan.port));
        data.push(InfoVxlan::Learning(vxlan.learning));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// The link `name` with its VXLAN settings, if it exists and is a VXLAN link.
    pub fn vxlan(&mut self, name: &str) -> io::Result<Option<(Link, Vxlan)>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let msgs = match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Err(e) if is_not_found(&e) => return Ok(None),
            r => r?,
        };
        for msg in msgs {
            let RouteNetlinkMessage::NewLink(l) = msg else {
                continue;
            };
            let mut vx = None;
            for a in &l.attributes {
                if let LinkAttribute::LinkInfo(infos) = a {
                    for i in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(data)) = i {
                            let mut v = Vxlan {
                                id: 0,
                                local: None,
                                link: None,
                                port: 0,
                                learning: true,
                            };
                            for d in data {
                                match d {
                                    InfoVxlan::Id(id) => v.id = *id,
                                    InfoVxlan::Local(ip) => v.local = Some(*ip),
                                    InfoVxlan::Link(i) => v.link = Some(*i),
                                    InfoVxlan::Port(p) => v.port = *p,
                                    InfoVxlan::Learning(on) => v.learning = *on,
                                    _ => {}
                                }
                            }
                            vx = Some(v);
                        }
                    }
                }
            }
            return Ok(vx.map(|v| (to_link(&l), v)));
        }
        Ok(None)
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_link(index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    /// Removes `addr` from link `index`; a missing one is success.
    pub fn del_addr(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr);
        m.header.prefix_len = addr.prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr));
        m.attributes.push(AddressAttribute::Address(addr.addr));
        ignore_missing(self.request(RouteNetlinkMessage::DelAddress(m), 0))
    }

    fn route_message(dst: IpNet, gw: Option<IpAddr>, index: u32, onlink: bool) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(dst.addr),
            destination_prefix_length: dst.prefix,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: if gw.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            flags: if onlink {
                RouteFlags::Onlink
            } else {
                RouteFlags::empty()
            },
            ..m.header
        };
        if dst.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        m
    }

    /// Adds or replaces the route to `dst` via `gw` out of link `index` (`ip route replace`),
    /// `onlink`: the gateway is taken as on the link without a covering address route.
    pub fn replace_route(
        &mut self,
        dst: IpNet,
        gw: Option<IpAddr>,
        index: u32,
        onlink: bool,
    ) -> io::Result<()> {
        let m = Self::route_message(dst, gw, index, onlink);
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes the route to `dst` out of link `index`; a missing one is success.
    pub fn del_route(&mut self, dst: IpNet, index: u32) -> io::Result<()> {
        let mut m = Self::route_message(dst, None, index, false);
        // Match any scope/protocol/type of the route to delete.
        m.header.scope = RouteScope::NoWhere;
        m.header.protocol = RouteProtocol::Unspec;
        m.header.kind = RouteType::Unspec;
        ignore_missing(self.request(RouteNetlinkMessage::DelRoute(m), 0))
    }

    /// Destinations of the IPv4 routes in the main table out of link `index`.
    pub fn routes_v4(&mut self, index: u32) -> io::Result<Vec<IpNet>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN
                        && r.attributes.contains(&RouteAttribute::Oif(index)) =>
                {
                    let dst = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                            Some(IpAddr::V4(*ip))
                        }
                        _ => None,
                    })?;
                    IpNet::new(dst, r.header.destination_prefix_length)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces a permanent neighbour `ip` -> `mac` on link `index`
    /// (`ip neigh replace IP lladdr MAC dev DEV nud permanent`).
    pub fn replace_neigh(&mut self, index: u32, ip: IpAddr, mac: &str) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(parse_mac(mac)?));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes the neighbour `ip` on link `index`; a missing one is success.
    pub fn del_neigh(&mut self, index: u32, ip: IpAddr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(ip);
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        ignore_missing(self.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    /// Addresses of the permanent IPv4 neighbours on link `index`.
    pub fn permanent_neighbours_v4(&mut self, index: u32) -> io::Result<Vec<IpAddr>> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == index && n.header.state == NeighbourState::Permanent =>
                {
                    n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            Some(IpAddr::V4(*ip))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn fdb_message(index: u32, mac: &str, dst: IpAddr) -> io::Result<NeighbourMessage> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(parse_mac(mac)?));
        let dst = match dst {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                dst,
            )));
        Ok(m)
    }

    /// Adds or replaces the fdb entry `mac` -> remote `dst` on the VXLAN link `index`
    /// (`bridge fdb replace MAC dev DEV dst DST self permanent`).
    pub fn replace_fdb(&mut self, index: u32, mac: &str, dst: IpAddr) -> io::Result<()> {
        let m = Self::fdb_message(index, mac, dst)?;
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes the fdb entry `mac` -> `dst` on link `index`; a missing one is success.
    pub fn del_fdb(&mut self, index: u32, mac: &str, dst: IpAddr) -> io::Result<()> {
        let m = Self::fdb_message(index, mac, dst)?;
        ignore_missing(self.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    /// The fdb entries of link `index` that have a remote IPv4 destination: (MAC, dst).
    pub fn fdb_v4(&mut self, index: u32) -> io::Result<Vec<(String, std::net::Ipv4Addr)>> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        let msgs = self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => {
                    let mut mac = None;
                    let mut dst = None;
                    for a in &n.attributes {
                        match a {
                            NeighbourAttribute::LinkLayerAddress(b) => mac = Some(format_mac(b)),
                            NeighbourAttribute::Destination(NeighbourAddress::Other(b))
                                if b.len() == 4 =>
                            {
                                dst = Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                                dst = Some(*ip)
                            }
                            _ => {}
                        }
                    }
                    Some((mac?, dst?))
                }
                _ => None,
            })
            .collect())
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn to_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        kind: String::new(),
        master: None,
        up: l.header.flags.contains(LinkFlags::Up),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(mac) => link.mac = format_mac(mac),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}
