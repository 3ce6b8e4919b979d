//! Rule text for one service port, in kube-proxy's iptables-mode layout
//! (pkg/proxy/iptables/proxier.go) with skiff's chain names.
//!
//! nat: `PREROUTING`/`OUTPUT` → `SKIFF-SERVICES` → (cluster IP) `SKIFF-SVC-*`
//! or (external IP) `SKIFF-EXT-*` → `SKIFF-SVC-*` → random/affinity pick →
//! `SKIFF-SEP-*` → DNAT. Local destinations fall through to
//! `SKIFF-NODEPORTS` → `SKIFF-EXT-*`. filter: REJECT for service ports
//! without ready endpoints.

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::chains::{self, EXTERNAL_SERVICES, MARK_MASQ, NODEPORTS, POSTROUTING, SERVICES};
use super::types::{Endpoint, Ipv4Cidr, ServicePort};

/// Settings that shape every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// The pod network; traffic to a cluster IP from outside it is
    /// masqueraded so replies come back through this node. `None` disables
    /// that rule (kube-proxy without `--cluster-cidr`).
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// The packet mark bit that asks `SKIFF-POSTROUTING` to masquerade. It
    /// differs from kube-proxy's 0x4000 so the two never act on each other's
    /// packets.
    pub masquerade_mark: u32,
}

impl Default for RuleConfig {
    fn default() -> RuleConfig {
        RuleConfig {
            cluster_cidr: None,
            masquerade_mark: 0x2000,
        }
    }
}

/// The rules one service port contributes: lines for the shared chains and
/// the nat chains it owns. Every line is a complete `-A CHAIN ...\n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Lines for nat `SKIFF-SERVICES`.
    pub nat_services: String,
    /// Lines for nat `SKIFF-NODEPORTS`.
    pub nat_nodeports: String,
    /// Lines for filter `SKIFF-SERVICES`.
    pub filter_services: String,
    /// Lines for filter `SKIFF-EXTERNAL-SERVICES`.
    pub filter_external: String,
    /// nat chains owned by this service port: (name, lines), in the order
    /// they are written.
    pub chains: Vec<(String, String)>,
}

impl Fragment {
    /// A copy with the lines for the shared chains only (no own chains).
    pub fn dispatch_only(&self) -> Fragment {
        Fragment {
            nat_services: self.nat_services.clone(),
            nat_nodeports: self.nat_nodeports.clone(),
            filter_services: self.filter_services.clone(),
            filter_external: self.filter_external.clone(),
            chains: Vec::new(),
        }
    }
}

/// A match on the protocol, like `-p tcp -m tcp` (the `-m` is what lets
/// `--dport` follow).
fn proto_match(sp: &ServicePort) -> String {
    let p = sp.protocol.as_str();
    format!("-p {p} -m {p}")
}

/// Above this many ready endpoints in total, the per-service-port chains
/// carry no comments: kube-proxy's "large cluster mode"
/// (`largeClusterEndpointsThreshold`). On iptables-nft every comment is an
/// xtables match that the kernel revisits on each commit when it validates
/// every rule reachable from the built-in chains, so at 10k Services x 4
/// endpoints the comments alone double the cost of changing one endpoint.
/// The dispatch chains (`SKIFF-SERVICES`, `SKIFF-NODEPORTS`) keep theirs.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// `%0.10f` of 1/n, kube-proxy's probability formatting.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// Quotes a comment when it contains spaces, as iptables-save prints it.
fn comment(text: &str) -> String {
    if text.contains(' ') {
        format!("-m comment --comment \"{text}\"")
    } else {
        format!("-m comment --comment {text}")
    }
}

/// Generates the rules of one service port. Only ready endpoints are used,
/// each `ip:port` once, in address order so that the output is stable.
/// `large_cluster`: leave the comments out of the service port's own chains
/// (see [`LARGE_CLUSTER_ENDPOINTS`]).
pub fn service_port_rules(
    cfg: &RuleConfig,
    sp: &ServicePort,
    endpoints: &[Endpoint],
    large_cluster: bool,
) -> Fragment {
    let mut ready: Vec<Endpoint> = endpoints.iter().filter(|e| e.ready).copied().collect();
    ready.sort_by_key(|e| (e.ip, e.port));
    ready.dedup_by_key(|e| (e.ip, e.port));

    let mut f = Fragment::default();
    let name = sp.key.to_string();
    let pm = proto_match(sp);
    let port = sp.port;
    let cip = sp.cluster_ip;

    if ready.is_empty() {
        let c = comment(&format!("{name} has no endpoints"));
        let _ = writeln!(
            f.filter_services,
            "-A {SERVICES} {c} {pm} -d {cip}/32 --dport {port} -j REJECT"
        );
        for ip in &sp.external_ips {
            let _ = writeln!(
                f.filter_external,
                "-A {EXTERNAL_SERVICES} {c} {pm} -d {ip}/32 --dport {port} -j REJECT"
            );
        }
        if let Some(np) = sp.node_port {
            let _ = writeln!(
                f.filter_external,
                "-A {EXTERNAL_SERVICES} {c} -m addrtype --dst-type LOCAL {pm} --dport {np} -j REJECT"
            );
        }
        return f;
    }

    let svc = chains::service_chain(&sp.key, sp.protocol);
    let ext = chains::external_chain(&sp.key, sp.protocol);
    let has_ext = sp.node_port.is_some() || !sp.external_ips.is_empty();

    let c = comment(&format!("{name} cluster IP"));
    let _ = writeln!(
        f.nat_services,
        "-A {SERVICES} {c} {pm} -d {cip}/32 --dport {port} -j {svc}"
    );
    let c = comment(&format!("{name} external IP"));
    for ip in &sp.external_ips {
        let _ = writeln!(
            f.nat_services,
            "-A {SERVICES} {c} {pm} -d {ip}/32 --dport {port} -j {ext}"
        );
    }
    if let Some(np) = sp.node_port {
        let c = comment(&name);
        let _ = writeln!(
            f.nat_nodeports,
            "-A {NODEPORTS} {c} {pm} --dport {np} -j {ext}"
        );
    }

    // Comments in the chains this service port owns ("" in large clusters),
    // each followed by a space when present.
    let own = |text: &str| {
        if large_cluster {
            String::new()
        } else {
            format!("{} ", comment(text))
        }
    };

    // The service chain: masquerade off-cluster sources, then affinity, then
    // the random pick with probability 1/(n-i) so each endpoint gets 1/n.
    let mut svc_rules = String::new();
    if let Some(cidr) = cfg.cluster_cidr {
        let c = own(&format!("{name} cluster IP"));
        let _ = writeln!(
            svc_rules,
            "-A {svc} {c}{pm} -d {cip}/32 --dport {port} ! -s {cidr} -j {MARK_MASQ}"
        );
    }
    let seps: Vec<String> = ready
        .iter()
        .map(|e| chains::endpoint_chain(&sp.key, sp.protocol, e))
        .collect();
    if let Some(timeout) = sp.session_affinity_timeout {
        for (ep, sep) in ready.iter().zip(&seps) {
            let c = own(&format!("{name} -> {}:{}", ep.ip, ep.port));
            let _ = writeln!(
                svc_rules,
                "-A {svc} {c}-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}"
            );
        }
    }
    let n = ready.len();
    for (i, (ep, sep)) in ready.iter().zip(&seps).enumerate() {
        let c = own(&format!("{name} -> {}:{}", ep.ip, ep.port));
        if i + 1 < n {
            let p = probability(n - i);
            let _ = writeln!(
                svc_rules,
                "-A {svc} {c}-m statistic --mode random --probability {p} -j {sep}"
            );
        } else {
            let _ = writeln!(svc_rules, "-A {svc} {c}-j {sep}");
        }
    }
    f.chains.push((svc.clone(), svc_rules));

    if has_ext {
        let c = own(&format!(
            "masquerade traffic for {name} external destinations"
        ));
        let rules = format!("-A {ext} {c}-j {MARK_MASQ}\n-A {ext} -j {svc}\n");
        f.chains.push((ext, rules));
    }

    let c = own(&name);
    let proto = sp.protocol.as_str();
    for (ep, sep) in ready.iter().zip(seps) {
        let ip: Ipv4Addr = ep.ip;
        // Hairpin: a pod reaching itself through the VIP must be
        // masqueraded, or it would answer itself from its own address.
        let mut rules = format!("-A {sep} {c}-s {ip}/32 -j {MARK_MASQ}\n");
        let recent = if sp.session_affinity_timeout.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        // `-p` alone: DNAT to a port needs the protocol, not the `-m tcp`
        // match (one xtables match less per endpoint for the kernel).
        let _ = writeln!(
            rules,
            "-A {sep} {c}-p {proto}{recent} -j DNAT --to-destination {ip}:{}",
            ep.port
        );
        f.chains.push((sep, rules));
    }
    f
}

/// The fixed rules of `SKIFF-MARK-MASQ` and `SKIFF-POSTROUTING`.
pub fn fixed_nat_chains(cfg: &RuleConfig) -> Vec<(String, String)> {
    let mark = format!("{:#x}", cfg.masquerade_mark);
    vec![
        (
            MARK_MASQ.to_string(),
            format!("-A {MARK_MASQ} -j MARK --or-mark {mark}\n"),
        ),
        (
            POSTROUTING.to_string(),
            format!(
                "-A {POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN\n\
                 -A {POSTROUTING} -j MARK --xor-mark {mark}\n\
                 -A {POSTROUTING} {} -j MASQUERADE --random-fully\n",
                comment("skiff service traffic requiring SNAT")
            ),
        ),
    ]
}

/// The last rule of nat `SKIFF-SERVICES`: NodePorts on local addresses.
pub fn nodeports_jump() -> String {
    format!(
        "-A {SERVICES} {} -m addrtype --dst-type LOCAL -j {NODEPORTS}\n",
        comment("skiff service nodeports; NOTE: this must be the last rule in this chain")
    )
}

/// A jump from a built-in chain into one of skiff's, inserted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The built-in chain.
    pub from: &'static str,
    /// Matches before the comment (as iptables-save orders them).
    pub matches: &'static str,
    /// The comment.
    pub comment: &'static str,
    /// skiff's chain.
    pub to: &'static str,
}

impl Jump {
    /// The rule spec without the `-A/-I/-D CHAIN` head.
    pub fn spec(&self) -> String {
        let mut s = String::new();
        if !self.matches.is_empty() {
            s.push_str(self.matches);
            s.push(' ');
        }
        let _ = write!(s, "{} -j {}", comment(self.comment), self.to);
        s
    }
}

/// Every jump skiff installs into built-in chains.
pub const JUMPS: &[Jump] = &[
    Jump {
        table: "nat",
        from: "PREROUTING",
        matches: "",
        comment: "skiff service portals",
        to: SERVICES,
    },
    Jump {
        table: "nat",
        from: "OUTPUT",
        matches: "",
        comment: "skiff service portals",
        to: SERVICES,
    },
    Jump {
        table: "nat",
        from: "POSTROUTING",
        matches: "",
        comment: "skiff postrouting rules",
        to: POSTROUTING,
    },
    Jump {
        table: "filter",
        from: "INPUT",
        matches: "-m conntrack --ctstate NEW",
        comment: "skiff externally-visible service portals",
        to: EXTERNAL_SERVICES,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        matches: "-m conntrack --ctstate NEW",
        comment: "skiff externally-visible service portals",
        to: EXTERNAL_SERVICES,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        matches: "-m conntrack --ctstate NEW",
        comment: "skiff service portals",
        to: SERVICES,
    },
    Jump {
        table: "filter",
        from: "OUTPUT",
        matches: "-m conntrack --ctstate NEW",
        comment: "skiff service portals",
        to: SERVICES,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_like_kube_proxy() {
        assert_eq!(probability(1), "1.0000000000");
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(6), "0.1666666667");
        assert_eq!(probability(7), "0.1428571429");
    }
}
