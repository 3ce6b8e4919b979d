//! `skiff-portmap`: host ports to container ports with the reference portmap
//! plugin's iptables layout (nat table):
//!
//! - `CNI-HOSTPORT-DNAT`, jumped to from PREROUTING and OUTPUT for packets to
//!   local addresses (`-m addrtype --dst-type LOCAL`);
//! - per container `CNI-DN-<hash of network name + container id>`, jumped to from
//!   `CNI-HOSTPORT-DNAT` by protocol and port list, holding the DNAT rules;
//! - `CNI-HOSTPORT-SETMARK` (mark 1<<markMasqBit) for hairpin and localhost
//!   sources, and `CNI-HOSTPORT-MASQ` first in POSTROUTING masquerading marked packets.
//!
//! Chained only: it passes `prevResult` through unchanged.

use serde::Deserialize;
use serde_json::Value;

use super::chain_name;
use crate::ipnet::IpNet;
use crate::iptables::{self, Iptables};
use crate::skel::{CmdArgs, Plugin, decode_config};
use crate::types::{CniResult, Code, ErrorResult, GcAttachment, PortMapping, RuntimeConfig};

/// Top-level DNAT chain.
pub const TOP_DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
/// Chain that marks packets needing masquerade.
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
/// Chain that masquerades marked packets.
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
const DEFAULT_MARK_BIT: i64 = 13;

/// The portmap config.
#[derive(Debug, Deserialize)]
pub struct PortmapConf {
    /// Network name (part of the chain hash).
    pub name: String,
    /// `runtimeConfig.portMappings` comes from the runtime.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// Masquerade hairpin and localhost traffic (default true).
    #[serde(default)]
    pub snat: Option<bool>,
    /// Bit of the packet mark used for masquerading (default 13).
    #[serde(rename = "markMasqBit", default)]
    pub mark_masq_bit: Option<i64>,
    /// Use this chain instead of CNI-HOSTPORT-SETMARK (kube-proxy's KUBE-MARK-MASQ).
    #[serde(rename = "externalSetMarkChain", default)]
    pub external_set_mark_chain: Option<String>,
    /// Masquerade all mapped traffic, not only from the container subnet.
    #[serde(rename = "masqAll", default)]
    pub masq_all: bool,
    /// Extra match conditions for the top-level jumps.
    #[serde(rename = "conditionsV4", default)]
    pub conditions_v4: Option<Vec<String>>,
    /// The previous plugin's result.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

/// The plugin.
#[derive(Debug, Default)]
pub struct Portmap;

/// A chain with its own rules and the rules that jump to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// Rules inside the chain.
    pub rules: Vec<Vec<String>>,
    /// Chains that jump here.
    pub entry_chains: Vec<String>,
    /// Match parts of the jump rules (`-j name` is appended).
    pub entry_rules: Vec<Vec<String>>,
    /// Insert the jumps first instead of appending.
    pub prepend_entry: bool,
}

fn words(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Chain {
    fn setup(&self, ipt: &dyn Iptables) -> Result<(), iptables::Error> {
        iptables::ensure_chain(ipt, "nat", &self.name)?;
        for r in &self.rules {
            iptables::add_unique(ipt, "nat", &self.name, false, r)?;
        }
        for entry in &self.entry_chains {
            for r in &self.entry_rules {
                let mut r = r.clone();
                r.extend(words(&["-j", &self.name]));
                iptables::add_unique(ipt, "nat", entry, self.prepend_entry, &r)?;
            }
        }
        Ok(())
    }

    fn teardown(&self, ipt: &dyn Iptables) -> Result<(), iptables::Error> {
        for entry in &self.entry_chains {
            iptables::delete_jumps(ipt, "nat", entry, &self.name)?;
        }
        iptables::clear_and_delete_chain(ipt, "nat", &self.name)
    }

    fn check(&self, ipt: &dyn Iptables) -> Result<(), String> {
        for r in &self.rules {
            if !ipt
                .exists("nat", &self.name, r)
                .map_err(|e| e.to_string())?
            {
                return Err(format!("rule {:?} missing in {}", r.join(" "), self.name));
            }
        }
        Ok(())
    }
}

fn top_chain() -> Chain {
    Chain {
        name: TOP_DNAT_CHAIN.into(),
        rules: Vec::new(),
        entry_chains: words(&["PREROUTING", "OUTPUT"]),
        entry_rules: vec![words(&["-m", "addrtype", "--dst-type", "LOCAL"])],
        prepend_entry: false,
    }
}

fn mark_def(bit: i64) -> String {
    let v = 1u32 << bit;
    format!("{v:#x}/{v:#x}")
}

fn setmark_chain(bit: i64) -> Chain {
    Chain {
        name: SETMARK_CHAIN.into(),
        rules: vec![words(&[
            "-m",
            "comment",
            "--comment",
            "CNI portfwd masquerade mark",
            "-j",
            "MARK",
            "--set-xmark",
            &mark_def(bit),
        ])],
        entry_chains: Vec::new(),
        entry_rules: Vec::new(),
        prepend_entry: false,
    }
}

fn masq_chain(bit: i64) -> Chain {
    Chain {
        name: MASQ_CHAIN.into(),
        rules: vec![words(&[
            "-m",
            "mark",
            "--mark",
            &mark_def(bit),
            "-j",
            "MASQUERADE",
        ])],
        entry_chains: words(&["POSTROUTING"]),
        entry_rules: vec![words(&[
            "-m",
            "comment",
            "--comment",
            "CNI portfwd requiring masquerade",
        ])],
        prepend_entry: true,
    }
}

/// The comment on the top-level jumps; GC reads the container id back from it.
fn dnat_comment(network: &str, container_id: &str) -> String {
    let mut c = format!("dnat name: \"{network}\" id: \"{container_id}\"");
    c.truncate(256);
    c
}

/// The per-container DNAT chain for `mappings` to `container` (reference `fillDnatRules`).
pub fn dnat_chain(
    c: &PortmapConf,
    container_id: &str,
    container: IpNet,
    mappings: &[PortMapping],
) -> Chain {
    let mut chain = Chain {
        name: chain_name(&c.name, container_id, "DN-"),
        rules: Vec::new(),
        entry_chains: vec![TOP_DNAT_CHAIN.into()],
        entry_rules: Vec::new(),
        prepend_entry: false,
    };
    let cmt = dnat_comment(&c.name, container_id);
    let mut protos: Vec<&str> = mappings.iter().map(|m| m.protocol.as_str()).collect();
    protos.sort();
    protos.dedup();
    for proto in protos {
        let ports: Vec<String> = mappings
            .iter()
            .filter(|m| m.protocol == proto)
            .map(|m| m.host_port.to_string())
            .collect();
        // multiport takes at most 15 ports per rule.
        for chunk in ports.chunks(15) {
            let mut r = words(&[
                "-m",
                "comment",
                "--comment",
                &cmt,
                "-m",
                "multiport",
                "-p",
                proto,
                "--destination-ports",
                &chunk.join(","),
            ]);
            if let Some(cond) = c.conditions_v4.as_ref().filter(|v| !v.is_empty()) {
                r.extend(cond.iter().cloned());
            }
            chain.entry_rules.push(r);
        }
    }
    let snat = c.snat.unwrap_or(true);
    let setmark = c
        .external_set_mark_chain
        .clone()
        .unwrap_or_else(|| SETMARK_CHAIN.into());
    for m in mappings {
        let mut base = words(&["-p", &m.protocol, "--dport", &m.host_port.to_string()]);
        if !m.host_ip.is_empty() {
            let Ok(ip) = m.host_ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            if ip.is_ipv4() != container.addr.is_ipv4() {
                continue;
            }
            if !ip.is_unspecified() {
                base.extend(words(&["-d", &m.host_ip]));
            }
        }
        if snat {
            let src = if c.masq_all {
                "0.0.0.0/0".to_string()
            } else {
                container.trunc().to_string()
            };
            let mut hairpin = base.clone();
            hairpin.extend(words(&["-s", &src, "-j", &setmark]));
            chain.rules.push(hairpin);
            if !c.masq_all {
                let mut local = base.clone();
                local.extend(words(&["-s", "127.0.0.1", "-j", &setmark]));
                chain.rules.push(local);
            }
        }
        let mut dnat = base;
        dnat.extend(words(&[
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{}:{}", container.addr, m.container_port),
        ]));
        chain.rules.push(dnat);
    }
    chain
}

fn parse(args: &CmdArgs) -> Result<PortmapConf, ErrorResult> {
    let c: PortmapConf = decode_config(&args.stdin)?;
    let bit = c.mark_masq_bit.unwrap_or(DEFAULT_MARK_BIT);
    if c.mark_masq_bit.is_some() && c.external_set_mark_chain.is_some() {
        return Err(ErrorResult::new(
            Code::InvalidNetworkConfig,
            "cannot specify externalSetMarkChain and markMasqBit",
        ));
    }
    if !(0..=31).contains(&bit) {
        return Err(ErrorResult::new(
            Code::InvalidNetworkConfig,
            "markMasqBit must be between 0 and 31",
        ));
    }
    for m in &c.runtime_config.port_mappings {
        if !(1..=65535).contains(&m.container_port) {
            return Err(ErrorResult::new(
                Code::InvalidNetworkConfig,
                format!("invalid container port number: {}", m.container_port),
            ));
        }
        if !(1..=65535).contains(&m.host_port) {
            return Err(ErrorResult::new(
                Code::InvalidNetworkConfig,
                format!("invalid host port number: {}", m.host_port),
            ));
        }
        if !matches!(m.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(ErrorResult::new(
                Code::InvalidNetworkConfig,
                format!("invalid protocol {:?}", m.protocol),
            ));
        }
        if !m.host_ip.is_empty() && m.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(ErrorResult::new(
                Code::InvalidNetworkConfig,
                format!("invalid hostIP {:?}", m.host_ip),
            ));
        }
    }
    Ok(c)
}

fn prev(c: &PortmapConf) -> Result<CniResult, ErrorResult> {
    let v = c.prev_result.clone().ok_or_else(|| {
        ErrorResult::new(
            Code::InvalidNetworkConfig,
            "must be called as chained plugin (no prevResult)",
        )
    })?;
    CniResult::from_value(v).map_err(|e| {
        ErrorResult::new(Code::DecodingFailure, "decoding prevResult").with_details(e.to_string())
    })
}

fn ipt_err(what: &str) -> impl Fn(iptables::Error) -> ErrorResult + '_ {
    move |e| ErrorResult::new(Code::Internal, what.to_string()).with_details(e.to_string())
}

/// Sets up forwarding for one container (the testable core of ADD).
pub fn forward(
    ipt: &dyn Iptables,
    c: &PortmapConf,
    container_id: &str,
    container: IpNet,
) -> Result<(), iptables::Error> {
    let bit = c.mark_masq_bit.unwrap_or(DEFAULT_MARK_BIT);
    if c.snat.unwrap_or(true) && c.external_set_mark_chain.is_none() {
        setmark_chain(bit).setup(ipt)?;
        masq_chain(bit).setup(ipt)?;
    }
    top_chain().setup(ipt)?;
    let chain = dnat_chain(c, container_id, container, &c.runtime_config.port_mappings);
    // Rebuild from scratch so a changed mapping list never leaves stale rules.
    chain.teardown(ipt)?;
    chain.setup(ipt)
}

/// Removes one container's DNAT chain and the jumps to it; idempotent.
pub fn unforward(
    ipt: &dyn Iptables,
    network: &str,
    container_id: &str,
) -> Result<(), iptables::Error> {
    Chain {
        name: chain_name(network, container_id, "DN-"),
        rules: Vec::new(),
        entry_chains: vec![TOP_DNAT_CHAIN.into()],
        entry_rules: Vec::new(),
        prepend_entry: false,
    }
    .teardown(ipt)
}

/// Removes the DNAT chains of this network whose container is not in `valid`,
/// found through the comments on the top-level jumps.
pub fn gc(
    ipt: &dyn Iptables,
    network: &str,
    valid: &[GcAttachment],
) -> Result<usize, iptables::Error> {
    if !ipt.chains("nat")?.iter().any(|c| c == TOP_DNAT_CHAIN) {
        return Ok(0);
    }
    let prefix = format!("dnat name: \"{network}\" id: \"");
    let mut stale = Vec::new();
    for line in ipt.rules("nat", TOP_DNAT_CHAIN)? {
        let w = iptables::split_words(&line);
        let Some(cmt) = w
            .windows(2)
            .find(|p| p[0] == "--comment")
            .map(|p| p[1].clone())
        else {
            continue;
        };
        let Some(id) = cmt.strip_prefix(&prefix).and_then(|r| r.strip_suffix('"')) else {
            continue;
        };
        if !valid.iter().any(|v| v.container_id == id) && !stale.contains(&id.to_string()) {
            stale.push(id.to_string());
        }
    }
    for id in &stale {
        unforward(ipt, network, id)?;
    }
    Ok(stale.len())
}

/// The host interface with the most specific IPv4 route to `ip`, from
/// `/proc/net/route` of the calling thread's netns.
fn routable_host_if(ip: std::net::Ipv4Addr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let target = u32::from(ip);
    let mut best: Option<(u32, String)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Fields are little-endian hex.
        let dst = u32::from_str_radix(f[1], 16).ok()?.swap_bytes();
        let mask = u32::from_str_radix(f[7], 16).ok()?.swap_bytes();
        if target & mask == dst
            && best
                .as_ref()
                .is_none_or(|(m, _)| mask.count_ones() > m.count_ones())
        {
            best = Some((mask, f[0].to_string()));
        }
    }
    best.map(|(_, i)| i)
}

impl Plugin for Portmap {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, ErrorResult> {
        let c = parse(args)?;
        let result = prev(&c)?;
        if c.runtime_config.port_mappings.is_empty() {
            return Ok(result);
        }
        let Some(ip) = result.container_ip(&args.ifname, true) else {
            // IPv6-only results are passed through; skiff does not map IPv6 ports.
            return Ok(result);
        };
        let ipt = iptables::Binary::default();
        forward(&ipt, &c, &args.container_id, ip).map_err(ipt_err("setting up port mappings"))?;
        if c.snat.unwrap_or(true) {
            // 127.0.0.1:hostPort must be routable to the container (reference behaviour).
            if let (std::net::IpAddr::V4(v4), true) = (ip.addr, true)
                && let Some(iface) = routable_host_if(v4)
            {
                crate::sysctl::set(&format!("net/ipv4/conf/{iface}/route_localnet"), "1").map_err(
                    |e| {
                        ErrorResult::new(Code::Internal, "enabling route_localnet")
                            .with_details(e.to_string())
                    },
                )?;
            }
        }
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        unforward(&iptables::Binary::default(), &c.name, &args.container_id)
            .map_err(ipt_err("removing port mappings"))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        let result = prev(&c)?;
        if c.runtime_config.port_mappings.is_empty() {
            return Ok(());
        }
        let Some(ip) = result.container_ip(&args.ifname, true) else {
            return Ok(());
        };
        dnat_chain(&c, &args.container_id, ip, &c.runtime_config.port_mappings)
            .check(&iptables::Binary::default())
            .map_err(|e| {
                ErrorResult::new(Code::Internal, "port mappings not in place").with_details(e)
            })
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        let c = parse(args)?;
        let v: Value = serde_json::from_slice(&args.stdin).unwrap_or_default();
        let valid: Vec<GcAttachment> = v
            .get(crate::types::VALID_ATTACHMENTS_KEY)
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| {
                ErrorResult::new(Code::InvalidNetworkConfig, "invalid valid-attachments")
                    .with_details(e.to_string())
            })?
            .ok_or_else(|| {
                ErrorResult::new(
                    Code::InvalidNetworkConfig,
                    "GC needs cni.dev/valid-attachments",
                )
            })?;
        gc(&iptables::Binary::default(), &c.name, &valid)
            .map(drop)
            .map_err(ipt_err("garbage-collecting port mappings"))
    }

    fn status(&self, args: &CmdArgs) -> Result<(), ErrorResult> {
        parse(args)?;
        iptables::Binary::default()
            .run("nat", &["-S", "OUTPUT"])
            .map(drop)
            .map_err(|e| {
                ErrorResult::new(Code::PluginNotAvailable, "iptables not usable")
                    .with_details(e.to_string())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::Fake;
    use crate::skel::tests::call;

    fn conf(mappings: &str) -> PortmapConf {
        serde_json::from_str(&format!(
            r#"{{"name":"net","runtimeConfig":{{"portMappings":{mappings}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn chains_like_the_reference() {
        let f = Fake::new();
        let c = conf(
            r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"192.168.1.5"}]"#,
        );
        let ip: IpNet = "10.9.0.4/24".parse().unwrap();
        forward(&f, &c, "cid", ip).unwrap();
        forward(&f, &c, "cid", ip).unwrap();
        let dn = chain_name("net", "cid", "DN-");
        assert_eq!(
            f.dump("nat", "PREROUTING").unwrap(),
            vec!["-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".to_string()]
        );
        assert_eq!(f.dump("nat", "OUTPUT").unwrap().len(), 1);
        let post = f.dump("nat", "POSTROUTING").unwrap();
        assert_eq!(
            post,
            vec![
                "-m comment --comment CNI portfwd requiring masquerade -j CNI-HOSTPORT-MASQ"
                    .to_string()
            ]
        );
        assert_eq!(
            f.dump("nat", MASQ_CHAIN).unwrap(),
            vec!["-m mark --mark 0x2000/0x2000 -j MASQUERADE".to_string()]
        );
        let top = f.dump("nat", TOP_DNAT_CHAIN).unwrap();
        assert_eq!(top.len(), 2, "{top:?}");
        assert!(top[0].contains("-p tcp --destination-ports 8080 -j CNI-DN-"));
        assert!(top[1].contains("-p udp --destination-ports 53"));
        let rules = f.dump("nat", &dn).unwrap();
        assert_eq!(
            rules,
            vec![
                "-p tcp --dport 8080 -s 10.9.0.0/24 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8080 -j DNAT --to-destination 10.9.0.4:80",
                "-p udp --dport 53 -d 192.168.1.5 -s 10.9.0.0/24 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 53 -d 192.168.1.5 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 53 -d 192.168.1.5 -j DNAT --to-destination 10.9.0.4:53",
            ]
        );
        // A second container, then GC keeping only it.
        forward(&f, &c, "other", "10.9.0.5/24".parse().unwrap()).unwrap();
        let valid = vec![GcAttachment {
            container_id: "other".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(gc(&f, "net", &valid).unwrap(), 1);
        assert!(f.dump("nat", &dn).is_none());
        assert!(f.dump("nat", &chain_name("net", "other", "DN-")).is_some());
        unforward(&f, "net", "other").unwrap();
        unforward(&f, "net", "other").unwrap();
        assert!(f.dump("nat", TOP_DNAT_CHAIN).unwrap().is_empty());
    }

    #[test]
    fn malformed_configs_get_spec_codes() {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let base = r#""cniVersion":"1.0.0","name":"n","type":"skiff-portmap""#;
        let cases = [
            (format!("{{{base}}}"), 7), // no prevResult
            (
                format!(r#"{{{base},"markMasqBit":40,"prevResult":{{}}}}"#),
                7,
            ),
            (
                format!(
                    r#"{{{base},"runtimeConfig":{{"portMappings":[{{"hostPort":0,"containerPort":80}}]}}}}"#
                ),
                7,
            ),
            (
                format!(
                    r#"{{{base},"runtimeConfig":{{"portMappings":[{{"hostPort":80,"containerPort":80,"protocol":"icmp"}}]}}}}"#
                ),
                7,
            ),
            (
                format!(r#"{{{base},"runtimeConfig":{{"portMappings":"x"}}}}"#),
                7,
            ),
            (
                format!(r#"{{{base},"prevResult":{{"ips":[{{"address":"bad"}}]}}}}"#),
                6,
            ),
        ];
        for (stdin, code) in cases {
            let (rc, v) = call(&Portmap, &env, &stdin);
            assert_eq!(rc, 1, "{stdin}");
            assert_eq!(v["code"].as_u64(), Some(code), "{stdin}: {v}");
        }
        // No mappings: prevResult passes through unchanged.
        let (rc, v) = call(
            &Portmap,
            &env,
            &format!(
                r#"{{{base},"prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"10.0.0.2/24"}}]}}}}"#
            ),
        );
        assert_eq!(rc, 0, "{v}");
        assert_eq!(v["ips"][0]["address"], "10.0.0.2/24");
    }
}
