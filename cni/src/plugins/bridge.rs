//! `skiff-bridge`: the reference bridge plugin's behaviour. A Linux bridge in
//! the plugin's netns (created if missing, up, gateway address with
//! `isGateway`), a veth pair per container with the container end created
//! directly in `CNI_NETNS` as `CNI_IFNAME`, IPAM by delegation to
//! `ipam.type`, addresses and routes configured inside the container, and
//! `ipMasq` through a per-container nat chain named as the reference does.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{chain_name, comment, delegate};
use crate::ipnet::{IpNet, from_u128, to_u128};
use crate::iptables::{self, Iptables};
use crate::netlink::{Handle, Link};
use crate::skel::{CmdArgs, Command, Plugin, decode_config, validate_ifname};
use crate::types::{CniResult, Code, Dns, ErrorResult, Interface, IpConfig, Route};

/// The options of the reference bridge plugin that skiff implements.
#[derive(Debug, Deserialize)]
pub struct BridgeConf {
    /// Network name (part of the ipMasq chain name).
    pub name: String,
    /// Bridge device name (default `cni0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Give the bridge the gateway address and enable forwarding.
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    /// Also install a default route via the gateway (implies `isGateway`).
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    /// Masquerade traffic from the container that leaves its subnet.
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    /// Let traffic leave and re-enter the same bridge port (hostPort to self).
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    /// MTU of the bridge (when created) and both veth ends; 0 means the default.
    #[serde(default)]
    pub mtu: u32,
    /// Put the bridge in promiscuous mode.
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    /// IPAM section; `type` names the delegate.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// DNS settings copied into the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Result of ADD, given to CHECK and DEL.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

fn default_bridge() -> String {
    "cni0".into()
}

/// The plugin.
#[derive(Debug, Default)]
pub struct Bridge;

fn parse(args: &CmdArgs) -> Result<BridgeConf, ErrorResult> {
    let mut c: BridgeConf = decode_config(&args.stdin)?;
    if c.is_default_gateway {
        c.is_gateway = true;
    }
    if c.hairpin_mode && c.promisc_mode {
        return Err(ErrorResult::new(
            Code::InvalidNetworkConfig,
            "cannot set hairpin mode and promiscuous mode at the same time",
        ));
    }
    validate_ifname(&c.bridge).map_err(|why| {
        ErrorResult::new(
            Code::InvalidNetworkConfig,
            format!("invalid bridge name {:?}: {why}", c.bridge),
        )
    })?;
    if let Some(ipam) = &c.ipam
        && (!ipam.is_object() || ipam.get("type").is_some_and(|t| !t.is_string()))
    {
        return Err(ErrorResult::new(
            Code::InvalidNetworkConfig,
            "\"ipam\" must be an object with a string \"type\"",
        ));
    }
    Ok(c)
}

fn ipam_type(c: &BridgeConf) -> Option<String> {
    c.ipam
        .as_ref()?
        .get("type")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn nl_err(what: impl Into<String>, e: io::Error) -> ErrorResult {
    ErrorResult::new(Code::Internal, what).with_details(e.to_string())
}

fn random_veth_name() -> String {
    let mut b = [0u8; 4];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut b);
    }
    format!(
        "veth{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Runs `f` with a netlink handle inside the netns at `path`.
fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce(&mut Handle) -> io::Result<T> + Send + 'static,
) -> Result<io::Result<T>, netns::Error> {
    netns::run_in(Path::new(path), move || {
        let mut h = Handle::new()?;
        f(&mut h)
    })
}

fn ensure_bridge(h: &mut Handle, c: &BridgeConf) -> Result<Link, ErrorResult> {
    let err = |e| nl_err(format!("setting up bridge {}", c.bridge), e);
    let link = match h.link(&c.bridge).map_err(err)? {
        Some(l) if l.kind != "bridge" => {
            return Err(ErrorResult::new(
                Code::Internal,
                format!(
                    "{} already exists but is not a bridge ({})",
                    c.bridge, l.kind
                ),
            ));
        }
        Some(l) => l,
        None => {
            match h.add_bridge(&c.bridge, (c.mtu > 0).then_some(c.mtu)) {
                // Another plugin instance may have won the race.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r.map_err(err)?,
            }
            h.link(&c.bridge).map_err(err)?.ok_or_else(|| {
                ErrorResult::new(Code::Internal, format!("bridge {} vanished", c.bridge))
            })?
        }
    };
    if c.promisc_mode {
        h.set_promisc(link.index).map_err(err)?;
    }
    if !link.up {
        h.set_up(link.index).map_err(err)?;
    }
    Ok(link)
}

/// The gateway of an address: the one IPAM gave, else the subnet's first address.
fn gateway_of(ip: &IpConfig) -> IpAddr {
    ip.gateway
        .unwrap_or_else(|| from_u128(ip.address.addr, to_u128(ip.address.network()) + 1))
}

fn default_route(v4: bool) -> IpNet {
    if v4 {
        IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid")
    } else {
        IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("valid")
    }
}

fn masq_rules(ip: &IpConfig, chain: &str, cmt: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let multicast = if ip.address.addr.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    };
    let net = ip.address.trunc().to_string();
    let rules = vec![
        s(&[
            "-d",
            &net,
            "-j",
            "ACCEPT",
            "-m",
            "comment",
            "--comment",
            cmt,
        ]),
        s(&[
            "!",
            "-d",
            multicast,
            "-j",
            "MASQUERADE",
            "-m",
            "comment",
            "--comment",
            cmt,
        ]),
    ];
    let entry = s(&[
        "-s",
        &ip.address.addr.to_string(),
        "-j",
        chain,
        "-m",
        "comment",
        "--comment",
        cmt,
    ]);
    (rules, entry)
}

/// Installs the per-container masquerade chain (reference `SetupIPMasq`).
pub fn setup_masq(
    ipt: &dyn Iptables,
    network: &str,
    container_id: &str,
    ips: &[IpConfig],
) -> Result<(), iptables::Error> {
    let chain = chain_name(network, container_id, "");
    let cmt = comment(network, container_id);
    for ip in ips.iter().filter(|i| i.address.addr.is_ipv4()) {
        let (rules, entry) = masq_rules(ip, &chain, &cmt);
        // Fast path (every first ADD): the per-container chain is new, so none of
        // its rules and no POSTROUTING jump to it can exist (iptables refuses a
        // jump to a missing chain); install it all in one batch.
        if !ipt.chains("nat")?.contains(&chain) {
            let mut batch: Vec<(&str, Vec<String>)> =
                rules.iter().map(|r| (chain.as_str(), r.clone())).collect();
            batch.push(("POSTROUTING", entry));
            ipt.apply("nat", &[chain.as_str()], &batch)?;
            continue;
        }
        for r in &rules {
            iptables::add_unique(ipt, "nat", &chain, false, r)?;
        }
        iptables::add_unique(ipt, "nat", "POSTROUTING", false, &entry)?;
    }
    Ok(())
}

/// Removes the masquerade chain and every POSTROUTING jump to it; idempotent
/// and independent of the container's addresses, so it works after the netns is gone.
pub fn teardown_masq(
    ipt: &dyn Iptables,
    network: &str,
    container_id: &str,
) -> Result<(), iptables::Error> {
    let chain = chain_name(network, container_id, "");
    iptables::delete_jumps(ipt, "nat", "POSTROUTING", &chain)?;
    iptables::clear_and_delete_chain(ipt, "nat", &chain)
}

impl Bridge {
    fn add_inner(
        &self,
        args: &CmdArgs,
        c: &BridgeConf,
        host_veth: &mut Option<String>,
    ) -> Result<CniResult, ErrorResult> {
        let ns_file = File::open(&args.netns).map_err(|e| {
            ErrorResult::new(
                Code::UnknownContainer,
                format!("failed to open netns {:?}", args.netns),
            )
            .with_details(e.to_string())
        })?;
        let ifname = args.ifname.clone();
        let exists = in_netns(&args.netns, move |h| h.link(&ifname).map(|l| l.is_some()))
            .map_err(|e| {
                ErrorResult::new(
                    Code::UnknownContainer,
                    format!("entering netns {:?}", args.netns),
                )
                .with_details(e.to_string())
            })?
            .map_err(|e| nl_err("looking up container interface", e))?;
        if exists {
            return Err(ErrorResult::new(
                Code::Internal,
                format!(
                    "container veth name provided ({}) already exists",
                    args.ifname
                ),
            ));
        }
        let mut h = Handle::new().map_err(|e| nl_err("opening netlink", e))?;
        let br = ensure_bridge(&mut h, c)?;
        let mtu = (c.mtu > 0).then_some(c.mtu);
        let mut name = random_veth_name();
        let mut tries = 0;
        loop {
            match h.add_veth(&name, &args.ifname, ns_file.as_raw_fd(), mtu) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 5 => {
                    tries += 1;
                    name = random_veth_name();
                }
                Err(e) => return Err(nl_err(format!("creating veth {name} / {}", args.ifname), e)),
            }
        }
        *host_veth = Some(name.clone());
        let host = h
            .link(&name)
            .map_err(|e| nl_err("looking up host veth", e))?
            .ok_or_else(|| {
                ErrorResult::new(Code::Internal, format!("host veth {name} vanished"))
            })?;
        h.set_master(host.index, br.index)
            .map_err(|e| nl_err(format!("attaching {name} to {}", c.bridge), e))?;
        if c.hairpin_mode {
            h.set_hairpin(host.index, true)
                .map_err(|e| nl_err(format!("setting hairpin on {name}"), e))?;
        }
        h.set_up(host.index)
            .map_err(|e| nl_err(format!("bringing up {name}"), e))?;

        let mut result = CniResult::new(&args.version);
        result.interfaces = vec![
            Interface {
                name: c.bridge.clone(),
                mac: Some(br.mac.clone()),
                ..Default::default()
            },
            Interface {
                name: name.clone(),
                mac: Some(host.mac.clone()),
                ..Default::default()
            },
            Interface {
                name: args.ifname.clone(),
                mac: None,
                sandbox: Some(args.netns.clone()),
                ..Default::default()
            },
        ];
        if let Some(kind) = ipam_type(c) {
            let ipam = delegate(&kind, args, Command::Add)?
                .unwrap_or_else(|| CniResult::new(&args.version));
            if ipam.ips.is_empty() {
                return Err(ErrorResult::new(
                    Code::Internal,
                    format!("IPAM plugin {kind} returned no IP configuration"),
                ));
            }
            result.ips = ipam.ips;
            result.routes = ipam.routes;
            result.dns = ipam.dns;
            for ip in &mut result.ips {
                ip.interface = Some(2);
                if c.is_gateway {
                    ip.gateway = Some(gateway_of(ip));
                }
            }
            if c.is_default_gateway {
                for v4 in [true, false] {
                    let Some(gw) = result
                        .ips
                        .iter()
                        .find(|i| i.address.addr.is_ipv4() == v4)
                        .and_then(|i| i.gateway)
                    else {
                        continue;
                    };
                    if !result.routes.iter().any(|r| r.dst == default_route(v4)) {
                        result.routes.push(Route::new(default_route(v4), Some(gw)));
                    }
                }
            }
            if c.is_gateway {
                for ip in &result.ips {
                    let gw = IpNet {
                        addr: gateway_of(ip),
                        prefix: ip.address.prefix,
                    };
                    h.add_addr(br.index, gw)
                        .map_err(|e| nl_err(format!("adding {gw} to {}", c.bridge), e))?;
                    let key = if gw.addr.is_ipv4() {
                        "net.ipv4.ip_forward"
                    } else {
                        "net.ipv6.conf.all.forwarding"
                    };
                    crate::sysctl::set(key, "1").map_err(|e| {
                        ErrorResult::new(Code::Internal, "enabling forwarding")
                            .with_details(e.to_string())
                    })?;
                }
            }
        }
        if let Some(dns) = &c.dns
            && !dns.is_empty()
        {
            result.dns = dns.clone();
        }

        // Container side: up, addresses, routes (a route without gw goes via the
        // gateway of its family, as the reference ConfigureIface does).
        let ifname = args.ifname.clone();
        let ips = result.ips.clone();
        let routes = result.routes.clone();
        let cont = in_netns(&args.netns, move |h| {
            let l = h
                .link(&ifname)?
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
            for ip in &ips {
                h.add_addr(l.index, ip.address)?;
            }
            h.set_up(l.index)?;
            for r in &routes {
                let gw = r.gw.or_else(|| {
                    ips.iter()
                        .find(|i| i.address.addr.is_ipv4() == r.dst.addr.is_ipv4())
                        .and_then(|i| i.gateway)
                });
                h.add_route(r.dst, gw, l.index)?;
            }
            Ok(l)
        })
        .map_err(|e| {
            ErrorResult::new(Code::UnknownContainer, "entering container netns")
                .with_details(e.to_string())
        })?
        .map_err(|e| nl_err(format!("configuring {} in the container", args.ifname), e))?;
        result.interfaces[2].mac = Some(cont.mac);

        if c.ip_masq {
            setup_masq(
                &iptables::Binary::default(),
                &c.name,
                &args.container_id,
                &result.ips,
            )
            .map_err(|e| {
                ErrorResult::new(Code::Internal, "setting up ipMasq").with_details(e.to_string())
            })?;
        }
        Ok(result)
    }
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, ErrorResult> {
        let c = parse(args)?;
        let mut host_veth = None;
        let r = self.add_inner(args, &c, &mut host_veth);
        if r.is_err() {
            // Undo what was done; errors here would hide the real one.
            if let Some(name) = host_veth
                && let Ok(mut h) = Handle::new()
                && let Ok(Some(l)) = h.link(&name)
            {
                let _ = h.del_link(l.index);
            }
            if let Some(kind) = ipam_type(&c) {
                let _ = delegate(&kind, args, Command::Del);
            }
            if c.ip_masq {
                let _ = teardown_masq(&iptables::Binary::default(), &c.name, &args.container_id);
            }
        }
        r
    }

    fn del(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        // The container end first (its peer goes with it); a missing netns or
        // link is not an error, so DEL after a reboot still frees the address.
        if !args.netns.is_empty() && netns::is_pinned(Path::new(&args.netns)) {
            let ifname = args.ifname.clone();
            match in_netns(&args.netns, move |h| match h.link(&ifname)? {
                Some(l) => h.del_link(l.index),
                None => Ok(()),
            }) {
                Ok(r) => {
                    r.map_err(|e| nl_err(format!("deleting {} in the container", args.ifname), e))?
                }
                Err(netns::Error::Enter { .. }) => {}
                Err(e) => {
                    return Err(ErrorResult::new(Code::Internal, "entering container netns")
                        .with_details(e.to_string()));
                }
            }
        }
        if let Some(kind) = ipam_type(&c) {
            delegate(&kind, args, Command::Del)?;
        }
        if c.ip_masq {
            teardown_masq(&iptables::Binary::default(), &c.name, &args.container_id).map_err(
                |e| {
                    ErrorResult::new(Code::Internal, "removing ipMasq chain")
                        .with_details(e.to_string())
                },
            )?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        let prev = c.prev_result.clone().ok_or_else(|| {
            ErrorResult::new(Code::InvalidNetworkConfig, "CHECK needs prevResult")
        })?;
        let prev = CniResult::from_value(prev).map_err(|e| {
            ErrorResult::new(Code::DecodingFailure, "decoding prevResult")
                .with_details(e.to_string())
        })?;
        if let Some(kind) = ipam_type(&c) {
            delegate(&kind, args, Command::Check)?;
        }
        let mut h = Handle::new().map_err(|e| nl_err("opening netlink", e))?;
        match h
            .link(&c.bridge)
            .map_err(|e| nl_err("looking up bridge", e))?
        {
            Some(l) if l.kind == "bridge" => {}
            _ => {
                return Err(ErrorResult::new(
                    Code::Internal,
                    format!("bridge {} not found", c.bridge),
                ));
            }
        }
        let ifname = args.ifname.clone();
        let (link, addrs) = in_netns(&args.netns, move |h| {
            let l = h
                .link(&ifname)?
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
            let a = h.addrs(l.index)?;
            Ok((l, a))
        })
        .map_err(|e| {
            ErrorResult::new(Code::UnknownContainer, "entering container netns")
                .with_details(e.to_string())
        })?
        .map_err(|e| nl_err(format!("interface {} in the container", args.ifname), e))?;
        if !link.up {
            return Err(ErrorResult::new(
                Code::Internal,
                format!("{} is down", args.ifname),
            ));
        }
        for ip in &prev.ips {
            if !addrs.contains(&ip.address) {
                return Err(ErrorResult::new(
                    Code::Internal,
                    format!(
                        "{} lacks address {} from prevResult",
                        args.ifname, ip.address
                    ),
                ));
            }
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        if let Some(kind) = ipam_type(&c) {
            delegate(&kind, args, Command::Gc)?;
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        if let Some(kind) = ipam_type(&c) {
            delegate(&kind, args, Command::Status)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::Fake;
    use crate::skel::tests::call;

    #[test]
    fn masq_chain_like_the_reference() {
        let f = Fake::new();
        let ip = IpConfig {
            interface: Some(2),
            address: "10.5.0.7/24".parse().unwrap(),
            gateway: None,
        };
        setup_masq(&f, "net", "cid", std::slice::from_ref(&ip)).unwrap();
        setup_masq(&f, "net", "cid", &[ip]).unwrap();
        let chain = chain_name("net", "cid", "");
        let rules = f.dump("nat", &chain).unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules[0].starts_with("-d 10.5.0.0/24 -j ACCEPT"));
        assert!(rules[1].starts_with("! -d 224.0.0.0/4 -j MASQUERADE"));
        let post = f.dump("nat", "POSTROUTING").unwrap();
        assert_eq!(
            post,
            vec![format!(
                "-s 10.5.0.7 -j {chain} -m comment --comment name: \"net\" id: \"cid\""
            )]
        );
        teardown_masq(&f, "net", "cid").unwrap();
        teardown_masq(&f, "net", "cid").unwrap();
        assert!(f.dump("nat", &chain).is_none());
        assert!(f.dump("nat", "POSTROUTING").unwrap().is_empty());
    }

    #[test]
    fn malformed_configs_get_spec_codes() {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ];
        let cases = [
            ("", 6),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-bridge","hairpinMode":true,"promiscMode":true}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-bridge","bridge":"a/b"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-bridge","mtu":"big"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-bridge","ipam":"x"}"#,
                7,
            ),
            (r#"{"cniVersion":"1.0.0","type":"skiff-bridge"}"#, 7),
            (
                r#"{"cniVersion":"2.0.0","name":"n","type":"skiff-bridge"}"#,
                1,
            ),
            // Valid config, but the netns does not exist: code 3.
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-bridge"}"#,
                3,
            ),
        ];
        for (stdin, code) in cases {
            let (rc, v) = call(&Bridge, &env, stdin);
            assert_eq!(rc, 1, "{stdin}");
            assert_eq!(v["code"].as_u64(), Some(code), "{stdin}: {v}");
        }
        // DEL with no netns and no IPAM is a successful no-op.
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let (rc, v) = call(
            &Bridge,
            &del,
            r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-bridge"}"#,
        );
        assert_eq!(rc, 0, "{v}");
    }
}
