//! The node's overlay agent: flanneld's job inside skiffd.
//!
//! At start it reads (or seeds) the network config in etcd, creates the VTEP, takes a subnet
//! lease (its old one back after a restart), writes `subnet.env` and the masquerade rules. Then
//! it keeps the lease renewed and follows every other node's lease with a list + watch: a lease
//! that appears gets a neighbour, an fdb entry and an onlink route (or a plain route with
//! `DirectRouting` on the same L2 network), a lease that goes takes them away. When etcd cannot
//! be reached, everything installed stays as it is, the node reports `EtcdUnavailable`, and the
//! agent converges once etcd answers again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::datapath::{DataPath, Entry};
use super::etcd::{Client, EtcdError, LeaseEvent, SubnetLease};
use super::lease::{Ipv4Net, LeaseAttrs, NetworkConfig, Resolved};
use super::registry::{EtcdRegistry, LeaseStream, Registry};
use super::vxlan::{self, Peer, Vtep, VtepConfig};

/// The data path skiffd uses on its host.
pub type HostDataPath = vxlan::NetlinkDataPath;
use crate::store::Store;

/// The node condition the agent reports.
pub const CONDITION: &str = "EtcdUnavailable";

/// How the node joins the overlay (skiffd's flags).
#[derive(Clone)]
pub struct Settings {
    /// The etcd client (endpoints, TLS).
    pub client: Client,
    /// Key prefix, flannel's `--etcd-prefix` (`/skiff`).
    pub prefix: String,
    /// TTL of the subnet lease; renewed every third of it.
    pub lease_ttl: Duration,
    /// The address other nodes send VXLAN packets to [default: the uplink's].
    pub public_ip: Option<Ipv4Addr>,
    /// The underlay interface [default: the default route's].
    pub iface: Option<String>,
    /// The cluster network written to etcd when no config is there yet.
    pub network: Ipv4Net,
    /// Turn tx checksum offload off on the VTEP.
    pub tx_checksum_off: bool,
    /// Where `subnet.env` goes.
    pub subnet_file: PathBuf,
}

/// What the rest of skiffd needs from the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The cluster network (from etcd's config).
    pub network: Ipv4Net,
    /// This node's pod subnet.
    pub subnet: Ipv4Net,
    /// MTU for pod interfaces.
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Vxlan(#[from] vxlan::VxlanError),
    #[error("{0}")]
    Uplink(String),
    #[error("writing {path}: {source}")]
    SubnetFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Interface name.
    pub name: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// The L2 network it is on (for `DirectRouting`).
    pub net: Ipv4Net,
}

/// Choose the underlay: `iface` if given, else the interface holding `public_ip`, else the one of
/// the default route, else the first interface with an IPv4 address that is not skiff's own.
pub fn find_uplink(
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Uplink, OverlayError> {
    let addrs: Vec<Uplink> = nix::ifaddrs::getifaddrs()
        .map_err(|e| OverlayError::Uplink(format!("listing interfaces: {e}")))?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            let mask = a.netmask?.as_sockaddr_in()?.ip();
            let len = u32::from(mask).count_ones() as u8;
            let net = Ipv4Addr::from(u32::from(ip) & u32::from(mask));
            Some(Uplink {
                name: a.interface_name,
                ip,
                net: Ipv4Net::new(net, len).ok()?,
            })
        })
        .filter(|u| !u.ip.is_loopback())
        .collect();
    if let Some(name) = iface {
        return addrs
            .into_iter()
            .find(|u| u.name == name)
            .ok_or_else(|| OverlayError::Uplink(format!("interface {name} has no IPv4 address")));
    }
    if let Some(ip) = public_ip
        && let Some(u) = addrs.iter().find(|u| u.ip == ip)
    {
        return Ok(u.clone());
    }
    // /proc/self/net follows the reader's network namespace (unlike /sys/class/net).
    let route = std::fs::read_to_string("/proc/self/net/route").unwrap_or_default();
    let default_if = route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    if let Some(u) = default_if.and_then(|d| addrs.iter().find(|u| u.name == d)) {
        return Ok(u.clone());
    }
    addrs
        .into_iter()
        .find(|u| u.name != "cni0" && !u.name.starts_with("skiff."))
        .ok_or_else(|| {
            OverlayError::Uplink(
                "no interface with an IPv4 address for the overlay; pass --iface or --public-ip"
                    .into(),
            )
        })
}

/// `subnet.env` as flannel writes it.
pub fn subnet_env(j: &Joined, ip_masq: bool) -> String {
    format!(
        "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
        j.network,
        j.subnet.nth(1),
        j.subnet.prefix_len(),
        j.mtu,
        ip_masq
    )
}

/// The subnet recorded in a `subnet.env` (its `FLANNEL_SUBNET`, as a network).
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
    let (ip, len) = v.trim().split_once('/')?;
    let (ip, len): (Ipv4Addr, u8) = (ip.parse().ok()?, len.parse().ok()?);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Net::new(Ipv4Addr::from(u32::from(ip) & mask), len).ok()
}

/// The running agent.
///
/// Generic over where leases live ([`Registry`]: etcd, or a fake in unit tests) and what it
/// changes in the kernel ([`DataPath`]: netlink, or a fake).
pub struct Agent<R: Registry = EtcdRegistry, D: DataPath = HostDataPath> {
    registry: R,
    dp: Arc<D>,
    settings: Settings,
    cfg: Resolved,
    vtep: Vtep,
    uplink: Uplink,
    attrs: LeaseAttrs,
    lease: SubnetLease,
    /// Peers installed, by subnet, with whether they are routed directly.
    peers: BTreeMap<Ipv4Net, (Peer, bool)>,
    /// etcd's reachability, as reported (log and node condition).
    health: Health,
}

/// How long a restarting node with a known subnet waits for etcd before it comes up on it.
const START_WAIT: Duration = Duration::from_secs(3);

/// Back-off between etcd attempts.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Agent {
    /// Join the overlay in etcd (`settings.client`) with the host's data path; see
    /// [`Agent::join_with`].
    pub async fn join(
        settings: Settings,
        store: Arc<Store>,
    ) -> Result<(Agent, Joined), OverlayError> {
        let uplink = find_uplink(settings.iface.as_deref(), settings.public_ip)?;
        let registry = EtcdRegistry::new(settings.client.clone(), settings.prefix.clone());
        let dp = vxlan::NetlinkDataPath::host()?;
        Agent::join_with(registry, Arc::new(dp), uplink, settings, store).await
    }
}

impl<R: Registry, D: DataPath> Agent<R, D> {
    /// Join the overlay: config, VTEP, lease, subnet.env, masquerade. Waits (retrying, with a
    /// log line and the node condition each time) while the registry cannot be reached.
    pub async fn join_with(
        registry: R,
        dp: Arc<D>,
        uplink: Uplink,
        settings: Settings,
        store: Arc<Store>,
    ) -> Result<(Self, Joined), OverlayError> {
        let public_ip = settings.public_ip.unwrap_or(uplink.ip);
        let previous = previous_subnet(&settings.subnet_file);
        let mut health = Health::new(store.clone());

        // A node that held a subnet before (subnet.env) and kept the network config comes up
        // on them when etcd does not answer, so its pods keep their network and its API
        // serves; the lease is taken again once etcd is back.
        let cache = settings.subnet_file.with_file_name("overlay-network.json");
        let cached: Option<NetworkConfig> = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let fresh = match (previous, &cached) {
            (Some(_), Some(_)) => {
                match tokio::time::timeout(START_WAIT, config(&registry, &settings)).await {
                    Ok(Ok(c)) => Some(c),
                    // Wrong credentials do not get better by waiting.
                    Ok(Err(e @ EtcdError::Auth(_))) => return Err(e.into()),
                    _ => None,
                }
            }
            _ => Some(retry(&mut health, || config(&registry, &settings)).await?),
        };
        let (network_config, degraded) = match fresh {
            Some(c) => (c, false),
            None => (cached.clone().expect("checked above"), true),
        };
        let cfg = network_config
            .resolved()
            .map_err(|e| OverlayError::Etcd(e.into()))?;
        if let Ok(bytes) = serde_json::to_vec(&network_config) {
            let _ = std::fs::write(&cache, bytes);
        }
        let vtep = dp.ensure_vtep(&VtepConfig {
            vni: cfg.vni,
            port: cfg.port,
            local_ip: uplink.ip,
            uplink: uplink.name.clone(),
            subnet: None,
            tx_checksum_off: settings.tx_checksum_off,
        })?;
        let attrs = LeaseAttrs::vxlan(public_ip, cfg.vni, vtep.mac.clone());
        let ttl = settings.lease_ttl.as_secs().max(1) as i64;
        let lease = if degraded {
            let msg =
                "etcd did not answer at start; running on the subnet from subnet.env until it does";
            warn!(subnet = %previous.expect("checked above"), "{msg}");
            health.failed(msg, "");
            // lease_id 0: not held; the agent's first round takes it.
            SubnetLease {
                subnet: previous.expect("checked above"),
                attrs: attrs.clone(),
                lease_id: 0,
                ttl,
            }
        } else {
            retry(&mut health, || {
                registry.acquire(&cfg, &attrs, previous, ttl)
            })
            .await?
        };
        if previous.is_some_and(|p| p != lease.subnet) {
            warn!(previous = %previous.unwrap(), subnet = %lease.subnet, "the node's old subnet was taken; pods started from now on use the new one");
        }
        dp.set_vtep_address(&vtep.name, lease.subnet)?;
        let joined = Joined {
            network: cfg.network,
            subnet: lease.subnet,
            mtu: vtep.mtu,
        };
        write_subnet_file(&settings.subnet_file, &joined)?;
        if let Err(e) = dp.masquerade(&cfg.network, &lease.subnet) {
            warn!(error = %e, "installing the overlay's masquerade rules");
        }
        info!(
            subnet = %lease.subnet, network = %cfg.network, public_ip = %public_ip,
            vtep = %vtep.name, mtu = vtep.mtu, uplink = %uplink.name,
            "joined the overlay"
        );
        let agent = Agent {
            registry,
            dp,
            settings,
            cfg,
            vtep,
            uplink,
            attrs,
            lease,
            peers: BTreeMap::new(),
            health,
        };
        Ok((agent, joined))
    }

    /// Keep the lease and the peers up to date until `shutdown`. The lease is not released on
    /// the way out: a restart takes it over, and a node that is gone for good loses it after
    /// its TTL.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let renew_every = (self.settings.lease_ttl / 3).max(Duration::from_millis(300));
        let mut first = true;
        let mut delay = RETRY_MIN;
        loop {
            let ended = tokio::select! {
                err = self.follow(renew_every, &mut first) => Some(err),
                _ = &mut shutdown => None,
            };
            let Some(err) = ended else { return };
            self.health.failed(
                &err.to_string(),
                "etcd is unreachable; routes and rules stay as they are until it is back",
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => return,
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// One list + watch round, renewing the lease meanwhile; returns why it ended.
    async fn follow(&mut self, renew_every: Duration, first: &mut bool) -> EtcdError {
        // A lease not held yet (a start while etcd was away), or one that expired while etcd
        // was away (or this node was), is taken again.
        if self.lease.lease_id == 0 {
            if let Err(e) = self.reacquire().await {
                return e;
            }
        } else if let Err(e) = self.registry.renew(&self.lease).await {
            match e {
                EtcdError::LeaseGone(_) => {
                    if let Err(e) = self.reacquire().await {
                        return e;
                    }
                }
                e => return e,
            }
        }
        let (leases, rev) = match self.registry.list_leases().await {
            Ok(l) => l,
            Err(e) => return e,
        };
        self.health.ok();
        self.sync_peers(&leases, std::mem::take(first));
        let mut watch = match self.registry.watch_leases(rev).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        let mut ticker = tokio::time::interval(renew_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // Rules someone flushed come back (flannel re-checks its rules too).
                    let (network, subnet) = (self.cfg.network, self.lease.subnet);
                    if let Err(e) = crate::util::blocking(|| self.dp.masquerade(&network, &subnet)) {
                        warn!(error = %e, "installing the overlay's masquerade rules");
                    }
                    match self.registry.renew(&self.lease).await {
                        Ok(()) => self.health.ok(),
                        Err(EtcdError::LeaseGone(id)) => {
                            warn!(lease = %format!("{id:x}"), subnet = %self.lease.subnet, "the subnet lease expired; taking it again");
                            if let Err(e) = self.reacquire().await {
                                return e;
                            }
                        }
                        Err(e) => return e,
                    }
                }
                batch = watch.next() => match batch {
                    Some(Ok(events)) => {
                        for ev in events {
                            self.apply(ev);
                        }
                    }
                    Some(Err(e)) => return e,
                    None => return EtcdError::Watch("the watch stream ended".into()),
                },
            }
        }
    }

    async fn reacquire(&mut self) -> Result<(), EtcdError> {
        let ttl = self.settings.lease_ttl.as_secs().max(1) as i64;
        let lease = self
            .registry
            .acquire(&self.cfg, &self.attrs, Some(self.lease.subnet), ttl)
            .await?;
        if lease.subnet != self.lease.subnet {
            // Pods keep their addresses from the old subnet; only a restart fixes that.
            warn!(old = %self.lease.subnet, new = %lease.subnet, "lost the node's subnet to another node; restart skiffd to move the pods");
            if let Err(e) = self.dp.set_vtep_address(&self.vtep.name, lease.subnet) {
                warn!(error = %e, "moving the VTEP to the new subnet");
            }
            let joined = Joined {
                network: self.cfg.network,
                subnet: lease.subnet,
                mtu: self.vtep.mtu,
            };
            if let Err(e) = write_subnet_file(&self.settings.subnet_file, &joined) {
                warn!(error = %e, "writing subnet.env");
            }
        }
        self.lease = lease;
        Ok(())
    }

    /// The address other nodes reach this one at.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.attrs.public_ip
    }

    fn is_direct(&self, peer: &Peer) -> bool {
        self.cfg.direct_routing && self.uplink.net.contains(peer.public_ip)
    }

    fn add(&mut self, peer: Peer) {
        if peer.subnet == self.lease.subnet {
            return;
        }
        let direct = self.is_direct(&peer);
        if self.peers.get(&peer.subnet) == Some(&(peer.clone(), direct)) {
            return;
        }
        if let Some((old, old_direct)) = self.peers.remove(&peer.subnet) {
            self.remove_installed(&old, old_direct);
        }
        let res = if direct {
            self.dp.add_direct_route(&self.uplink.name, &peer)
        } else {
            self.dp.add_peer(&self.vtep.name, &peer)
        };
        match res {
            Ok(()) => {
                info!(subnet = %peer.subnet, public_ip = %peer.public_ip, direct, "route to a peer node added");
                self.peers.insert(peer.subnet, (peer, direct));
            }
            Err(e) => warn!(subnet = %peer.subnet, error = %e, "adding the route to a peer node"),
        }
    }

    fn remove_installed(&self, peer: &Peer, direct: bool) {
        let res = if direct {
            self.dp.remove_direct_route(&self.uplink.name, peer)
        } else {
            self.dp.remove_peer(&self.vtep.name, peer)
        };
        match res {
            Ok(()) => {
                info!(subnet = %peer.subnet, public_ip = %peer.public_ip, "route to a peer node removed")
            }
            Err(e) => warn!(subnet = %peer.subnet, error = %e, "removing the route to a peer node"),
        }
    }

    fn apply(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Added(subnet, attrs) => self.add(Peer::from_lease(subnet, &attrs)),
            LeaseEvent::Removed(subnet) => {
                if subnet == self.lease.subnet {
                    // Our own lease went: the renew loop takes it again.
                    return;
                }
                if let Some((peer, direct)) = self.peers.remove(&subnet) {
                    self.remove_installed(&peer, direct);
                }
            }
        }
    }

    /// Make the installed peers exactly `leases`. On the first sync after start, also remove
    /// what an earlier skiffd left on the VTEP for nodes that are gone now.
    fn sync_peers(&mut self, leases: &[(Ipv4Net, LeaseAttrs)], first: bool) {
        let want: BTreeMap<Ipv4Net, Peer> = leases
            .iter()
            .filter(|(s, _)| *s != self.lease.subnet)
            .map(|(s, a)| (*s, Peer::from_lease(*s, a)))
            .collect();
        let gone: Vec<Ipv4Net> = self
            .peers
            .keys()
            .filter(|s| !want.contains_key(s))
            .copied()
            .collect();
        for s in gone {
            if let Some((peer, direct)) = self.peers.remove(&s) {
                self.remove_installed(&peer, direct);
            }
        }
        for peer in want.values() {
            self.add(peer.clone());
        }
        if first {
            self.remove_strays(&want);
        }
    }

    /// Routes, neighbours and fdb entries on the VTEP that no lease accounts for.
    fn remove_strays(&self, want: &BTreeMap<Ipv4Net, Peer>) {
        let dev = &self.vtep.name;
        let installed = match self.dp.installed(dev) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "listing the VTEP's routes");
                return;
            }
        };
        let fdb: Vec<(String, Ipv4Addr)> = want
            .values()
            .map(|p| (p.vtep_mac.to_lowercase(), p.public_ip))
            .collect();
        let mut stray = Vec::new();
        stray.extend(
            installed
                .routes
                .into_iter()
                .filter(|r| !want.contains_key(r))
                .map(Entry::Route),
        );
        stray.extend(
            installed
                .neighbours
                .into_iter()
                .filter(|n| !want.keys().any(|s| s.addr() == *n))
                .map(Entry::Neighbour),
        );
        stray.extend(
            installed
                .fdb
                .into_iter()
                .filter(|(m, d)| !fdb.contains(&(m.to_lowercase(), *d)))
                .map(|(m, d)| Entry::Fdb(m, d)),
        );
        for entry in stray {
            info!(?entry, "removing a stale overlay entry from the VTEP");
            if let Err(e) = self.dp.remove_entry(dev, &entry) {
                warn!(?entry, error = %e, "removing a stale overlay entry");
            }
        }
    }
}

/// The node condition `EtcdUnavailable`: `Some(reason)` while etcd cannot be reached.
fn set_condition(store: &Store, problem: Option<&str>) {
    match problem {
        Some(msg) => store.set_node_condition(CONDITION, true, "EtcdUnreachable", msg),
        None => store.set_node_condition(CONDITION, false, "EtcdReachable", "etcd answers"),
    }
}

/// etcd's reachability as reported: a log line and the node condition on each change.
struct Health {
    store: Arc<Store>,
    reported: Option<String>,
}

impl Health {
    fn new(store: Arc<Store>) -> Self {
        set_condition(&store, None);
        Health {
            store,
            reported: None,
        }
    }

    /// etcd answered: clear a reported problem.
    fn ok(&mut self) {
        if self.reported.take().is_some() {
            info!("etcd is reachable again");
            set_condition(&self.store, None);
        }
    }

    /// etcd failed with `msg`: logged (with `context`, when given) and put in the node
    /// condition, once per distinct message.
    fn failed(&mut self, msg: &str, context: &str) {
        if self.reported.as_deref() != Some(msg) {
            if !context.is_empty() {
                warn!(error = %msg, "{context}");
            }
            set_condition(&self.store, Some(msg));
            self.reported = Some(msg.to_string());
        }
    }
}

/// Run `f` until it succeeds, backing off, reporting each new error. An auth error (wrong
/// user or password, or none given to an etcd that wants one) ends it: waiting does not help.
async fn retry<T, F, Fut>(health: &mut Health, mut f: F) -> Result<T, EtcdError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EtcdError>>,
{
    let mut delay = RETRY_MIN;
    loop {
        match f().await {
            Ok(v) => {
                health.ok();
                return Ok(v);
            }
            Err(e @ EtcdError::Auth(_)) => {
                health.failed(&e.to_string(), "");
                return Err(e);
            }
            Err(e) => {
                health.failed(
                    &e.to_string(),
                    "joining the overlay: etcd is not usable yet; retrying",
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The network config from etcd; written there first (only if still absent) from `--cluster-cidr`.
/// An invalid config in etcd is an error (retried: someone may fix it).
async fn config(registry: &impl Registry, settings: &Settings) -> Result<NetworkConfig, EtcdError> {
    let cfg = match registry.network_config().await {
        Err(EtcdError::NoConfig(key)) => {
            let cfg = NetworkConfig::vxlan(settings.network);
            if registry.create_network_config(&cfg).await? {
                info!(%key, network = %settings.network, "wrote the overlay's network config");
            }
            registry.network_config().await?
        }
        r => r?,
    };
    cfg.resolved()?;
    Ok(cfg)
}

fn write_subnet_file(path: &Path, j: &Joined) -> Result<(), OverlayError> {
    let err = |source| OverlayError::SubnetFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // 0644 as flannel's: CNI plugins and users read it.
    let sync = hostkit::atomic::Sync::Atomic;
    hostkit::atomic::write(path, subnet_env(j, true).as_bytes(), 0o644, sync).map_err(err)
}

/// The chain holding the overlay's masquerade rules (flannel's `FLANNEL-POSTRTG`). Not under
/// the service proxy's `SKIFF-` prefix: the proxy removes every such chain it does not own.
pub const MASQ_CHAIN: &str = "SKIFFNET-POSTRTG";
/// The chain accepting forwarded cluster traffic (flannel's `FLANNEL-FWD`).
pub const FWD_CHAIN: &str = "SKIFFNET-FWD";

/// The iptables-restore text of the overlay's rules: pod traffic inside the cluster keeps its
/// source address, pod traffic leaving it is masqueraded, and traffic from outside the cluster
/// to another node's pods is masqueraded so the answers come back the same way.
pub fn masquerade_rules(network: &Ipv4Net, subnet: &Ipv4Net) -> String {
    let (n, s) = (network.to_string(), subnet.to_string());
    format!(
        "*nat\n:{MASQ_CHAIN} - [0:0]\n\
         -A {MASQ_CHAIN} -s {n} -d {n} -m comment --comment \"skiff overlay: pod to pod\" -j RETURN\n\
         -A {MASQ_CHAIN} -s {n} ! -d 224.0.0.0/4 -m comment --comment \"skiff overlay: leaving the cluster\" -j MASQUERADE --random-fully\n\
         -A {MASQ_CHAIN} ! -s {n} -d {s} -m comment --comment \"skiff overlay: to local pods\" -j RETURN\n\
         -A {MASQ_CHAIN} ! -s {n} -d {n} -m comment --comment \"skiff overlay: to remote pods\" -j MASQUERADE --random-fully\n\
         COMMIT\n*filter\n:{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {n} -m comment --comment \"skiff overlay: from pods\" -j ACCEPT\n\
         -A {FWD_CHAIN} -d {n} -m comment --comment \"skiff overlay: to pods\" -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Install [`masquerade_rules`] and the jumps to them (idempotent).
pub(super) fn masquerade(network: &Ipv4Net, subnet: &Ipv4Net) -> Result<(), String> {
    use hostkit::iptables::Iptables;
    let mut ipt = hostkit::iptables::RealIptables::new();
    ipt.restore(&masquerade_rules(network, subnet))
        .map_err(|e| e.to_string())?;
    for (table, from, to) in [
        ("nat", "POSTROUTING", MASQ_CHAIN),
        ("filter", "FORWARD", FWD_CHAIN),
    ] {
        ipt.ensure_rule(table, from, &["-j", to])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Remove what an overlay run left on this node: skiff's VXLAN devices (with their routes,
/// neighbours and fdb entries) and the masquerade/forward chains. For a node started without
/// etcd after having been in a cluster, and for `--cleanup-iptables`. Returns what it removed.
pub fn remove_leftovers() -> Vec<String> {
    use std::process::Command;
    let mut removed = Vec::new();
    match cni::netlink::Handle::new().and_then(|mut nl| {
        let mut gone = Vec::new();
        for l in nl.links()? {
            if l.kind == "vxlan" && l.name.starts_with("skiff.") && nl.del_link(l.index).is_ok() {
                gone.push(format!("device {}", l.name));
            }
        }
        Ok(gone)
    }) {
        Ok(gone) => removed.extend(gone),
        Err(e) => warn!(error = %e, "listing links for the overlay's leftovers"),
    }
    for (table, from, chain) in [
        ("nat", "POSTROUTING", MASQ_CHAIN),
        ("filter", "FORWARD", FWD_CHAIN),
    ] {
        let ipt = |args: &[&str]| {
            Command::new("iptables")
                .args(["-w", "-t", table])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        while ipt(&["-D", from, "-j", chain]) {}
        if ipt(&["-F", chain]) && ipt(&["-X", chain]) {
            removed.push(format!("iptables chain {table}/{chain}"));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::overlay::datapath::FakeDataPath;
    use crate::overlay::registry::FakeRegistry;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, i)
    }

    fn settings(dir: &Path, ttl: Duration) -> Settings {
        Settings {
            // Never dialled: the fake registry stands in for etcd.
            client: Client::new("http://127.0.0.1:1").unwrap(),
            prefix: "/skiff".into(),
            lease_ttl: ttl,
            public_ip: None,
            iface: None,
            network: net("10.244.0.0/16"),
            tx_checksum_off: false,
            subnet_file: dir.join("subnet.env"),
        }
    }

    fn uplink(i: u8) -> Uplink {
        Uplink {
            name: "eth0".into(),
            ip: ip(i),
            net: net("192.168.77.0/24"),
        }
    }

    fn peer(i: u8, mac: &str) -> LeaseAttrs {
        LeaseAttrs::vxlan(ip(i), 1, mac)
    }

    /// Node `i` joins `reg` with a fresh fake data path whose VTEP MAC ends in `i`.
    async fn join(
        reg: &FakeRegistry,
        dir: &Path,
        i: u8,
        ttl: Duration,
    ) -> (Agent<FakeRegistry, FakeDataPath>, Joined, Arc<FakeDataPath>) {
        let dp = Arc::new(FakeDataPath::with_mac(&format!("0e:00:00:00:00:{i:02x}")));
        let (agent, joined) = Agent::join_with(
            reg.clone(),
            dp.clone(),
            uplink(i),
            settings(dir, ttl),
            Arc::new(Store::new(format!("node{i}"))),
        )
        .await
        .unwrap();
        (agent, joined, dp)
    }

    /// Poll `f` for up to 10 s.
    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn join_writes_the_config_and_takes_a_free_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        // Another node already holds the lowest subnet.
        reg.put_lease(net("10.244.1.0/24"), peer(9, "02:00:00:00:00:09"));
        let (_agent, joined, dp) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        assert_eq!(
            reg.calls()[..2],
            ["network_config", "create_network_config"],
            "an empty registry gets the config from --cluster-cidr"
        );
        assert_eq!(joined.network, net("10.244.0.0/16"));
        assert_eq!(joined.subnet, net("10.244.2.0/24"));
        assert_eq!(joined.mtu, 1450);
        let leases = reg.leases();
        assert!(
            leases.contains(&(joined.subnet, peer(1, "0e:00:00:00:00:01"))),
            "our lease names our public IP and VTEP MAC: {leases:?}"
        );
        let k = dp.net();
        assert_eq!(k.vtep_addr, Some(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(k.masquerade, Some((joined.network, joined.subnet)));
        assert_eq!(
            previous_subnet(&dir.path().join("subnet.env")),
            Some(joined.subnet)
        );
    }

    #[tokio::test]
    async fn restart_reacquires_the_previous_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        let (low, next) = (net("10.244.1.0/24"), net("10.244.2.0/24"));
        reg.put_lease(low, peer(8, "02:00:00:00:00:08"));
        reg.put_lease(next, peer(9, "02:00:00:00:00:09"));
        let (_a, first, _) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        assert_eq!(first.subnet, net("10.244.3.0/24"));
        // Within the TTL: the lease of our public IP is taken over in place.
        let (_a, again, _) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        assert_eq!(again.subnet, first.subnet);
        assert_eq!(reg.leases().len(), 3);
        // Away longer than the TTL while node 8 went too: subnet.env brings our subnet back,
        // although a lower one is free now.
        reg.expire(first.subnet);
        reg.expire(low);
        let (_a, back, _) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        assert_eq!(back.subnet, first.subnet);
        // Taken by someone else meanwhile: the lowest free one, and subnet.env says so.
        reg.expire(back.subnet);
        reg.put_lease(first.subnet, peer(3, "02:00:00:00:00:03"));
        let (_a, moved, dp) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        assert_eq!(moved.subnet, low);
        assert_eq!(previous_subnet(&dir.path().join("subnet.env")), Some(low));
        assert_eq!(dp.net().vtep_addr, Some(low.addr()));
    }

    #[tokio::test]
    async fn a_lost_lease_is_taken_again_and_peers_follow_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        let (agent, joined, dp) = join(&reg, dir.path(), 1, Duration::from_secs(1)).await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = stop_rx.await;
        }));
        let mine = peer(1, "0e:00:00:00:00:01");
        wait_until("the first list + watch", || {
            reg.calls().contains(&"watch_leases")
        })
        .await;

        // A peer appears: neighbour, fdb and route.
        let p = net("10.244.7.0/24");
        reg.put_lease(p, peer(2, "02:00:00:00:00:02"));
        wait_until("the peer's route", || dp.net().routes.contains_key(&p)).await;
        let k = dp.net();
        assert_eq!(k.routes[&p], (p.addr(), "skiff.1".to_string()));
        assert_eq!(k.neighbours[&p.addr()], "02:00:00:00:00:02");
        assert!(k.fdb.contains(&("02:00:00:00:00:02".into(), ip(2))));

        // Our lease expires (etcd away longer than the TTL): the renewal notices and the
        // same subnet is taken again on a new lease.
        let acquired = |reg: &FakeRegistry| reg.calls().iter().filter(|c| **c == "acquire").count();
        assert_eq!(acquired(&reg), 1);
        reg.expire(joined.subnet);
        wait_until("the lease taken again", || {
            reg.leases().contains(&(joined.subnet, mine.clone()))
        })
        .await;
        assert_eq!(acquired(&reg), 2);
        // Our own lease coming and going never became a peer.
        assert!(!dp.net().routes.contains_key(&joined.subnet));

        // The peer goes: everything for it goes.
        reg.expire(p);
        wait_until("the peer's route removed", || {
            !dp.net().routes.contains_key(&p)
        })
        .await;
        let k = dp.net();
        assert!(k.neighbours.is_empty() && k.fdb.is_empty(), "{k:?}");

        // etcd away: what is installed stays; back: a peer that joined meanwhile shows up.
        let q = net("10.244.8.0/24");
        reg.put_lease(q, peer(3, "02:00:00:00:00:03"));
        wait_until("the second peer", || dp.net().routes.contains_key(&q)).await;
        reg.set_down(Some("connection refused"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            dp.net().routes.contains_key(&q),
            "routes stay while etcd is away"
        );
        let r = net("10.244.9.0/24");
        reg.put_lease(r, peer(4, "02:00:00:00:00:04"));
        reg.set_down(None);
        wait_until("the peer that came during the outage", || {
            dp.net().routes.contains_key(&r)
        })
        .await;
        let _ = stop_tx.send(());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn restart_while_etcd_is_away_comes_up_on_the_old_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        let (_a, first, _) = join(&reg, dir.path(), 1, Duration::from_secs(1)).await;
        // Restart during an outage longer than the TTL.
        reg.set_down(Some("connection refused"));
        reg.expire(first.subnet);
        let (agent, joined, dp) = join(&reg, dir.path(), 1, Duration::from_secs(1)).await;
        assert_eq!(
            joined, first,
            "subnet.env and the cached config carry the node"
        );
        assert_eq!(dp.net().vtep_addr, Some(first.subnet.addr()));
        assert!(reg.leases().is_empty());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = stop_rx.await;
        }));
        reg.set_down(None);
        wait_until("the lease taken once etcd is back", || {
            reg.leases() == [(first.subnet, peer(1, "0e:00:00:00:00:01"))]
        })
        .await;
        let _ = stop_tx.send(());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn join_gives_up_on_auth_errors() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        reg.set_refuse(Some("user \"root\" was refused"));
        let store = Arc::new(Store::new("node1"));
        let res = Agent::join_with(
            reg.clone(),
            Arc::new(FakeDataPath::default()),
            uplink(1),
            settings(dir.path(), Duration::from_secs(30)),
            store,
        )
        .await;
        let Err(err) = res else {
            panic!("joined with a refused password")
        };
        assert!(err.to_string().starts_with("etcd auth: user"), "{err}");
        assert_eq!(reg.calls(), ["network_config"], "no retry on auth errors");
    }

    #[tokio::test]
    async fn sync_peers_adds_changes_and_removes_peers_and_strays() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        let (mut agent, joined, dp) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        // What an earlier skiffd left on the VTEP for a node that is gone.
        let stale = net("10.244.30.0/24");
        dp.add_peer(
            "skiff.1",
            &Peer::from_lease(stale, &peer(30, "02:00:00:00:00:30")),
        )
        .unwrap();
        let (a, b) = (net("10.244.10.0/24"), net("10.244.11.0/24"));
        let mut leases = vec![
            (joined.subnet, peer(1, "0e:00:00:00:00:01")),
            (a, peer(2, "02:00:00:00:00:02")),
            (b, peer(3, "02:00:00:00:00:03")),
        ];
        agent.sync_peers(&leases, true);
        let k = dp.net();
        assert_eq!(k.routes.keys().copied().collect::<Vec<_>>(), [a, b]);
        assert_eq!(
            k.fdb,
            [
                ("02:00:00:00:00:02".to_string(), ip(2)),
                ("02:00:00:00:00:03".to_string(), ip(3))
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(k.neighbours.len(), 2, "the stale neighbour went: {k:?}");

        // Node 2 restarted with a new VTEP MAC, node 3 moved to another public IP.
        leases[1].1 = peer(2, "02:00:00:00:01:02");
        leases[2].1 = peer(33, "02:00:00:00:00:03");
        dp.clear_calls();
        agent.sync_peers(&leases, false);
        let k = dp.net();
        assert_eq!(k.neighbours[&a.addr()], "02:00:00:00:01:02");
        assert_eq!(
            k.fdb,
            [
                ("02:00:00:00:00:03".to_string(), ip(33)),
                ("02:00:00:00:01:02".to_string(), ip(2))
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(k.routes.len(), 2);
        assert!(
            !dp.calls().iter().any(|c| c.starts_with("installed")),
            "strays only on the first sync"
        );

        // Unchanged leases change nothing.
        dp.clear_calls();
        agent.sync_peers(&leases, false);
        assert!(dp.calls().is_empty(), "{:?}", dp.calls());

        // Node 3 leaves.
        leases.pop();
        agent.sync_peers(&leases, false);
        let k = dp.net();
        assert_eq!(k.routes.keys().copied().collect::<Vec<_>>(), [a]);
        assert_eq!(k.neighbours.keys().copied().collect::<Vec<_>>(), [a.addr()]);
        assert_eq!(k.fdb.len(), 1);
    }

    #[tokio::test]
    async fn direct_routing_uses_plain_routes_on_the_same_l2() {
        let dir = tempfile::tempdir().unwrap();
        let reg = FakeRegistry::new();
        let mut cfg = NetworkConfig::vxlan(net("10.244.0.0/16"));
        cfg.backend.direct_routing = true;
        reg.set_config(cfg);
        let (mut agent, joined, dp) = join(&reg, dir.path(), 1, Duration::from_secs(30)).await;
        let (near, far) = (net("10.244.10.0/24"), net("10.244.11.0/24"));
        let leases = vec![
            (joined.subnet, peer(1, "0e:00:00:00:00:01")),
            (near, peer(2, "02:00:00:00:00:02")),
            (
                far,
                LeaseAttrs::vxlan(Ipv4Addr::new(10, 9, 0, 3), 1, "02:00:00:00:00:03"),
            ),
        ];
        agent.sync_peers(&leases, false);
        let k = dp.net();
        assert_eq!(k.routes[&near], (ip(2), "eth0".to_string()));
        assert_eq!(k.routes[&far], (far.addr(), "skiff.1".to_string()));
        assert_eq!(k.fdb.len(), 1, "only the far peer is encapsulated");
        agent.sync_peers(&leases[..1], false);
        assert!(dp.net().routes.is_empty());
    }

    #[test]
    fn subnet_env_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/subnet.env");
        let j = Joined {
            network: net("10.244.0.0/16"),
            subnet: net("10.244.3.0/24"),
            mtu: 1450,
        };
        write_subnet_file(&path, &j).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(previous_subnet(&path), Some(net("10.244.3.0/24")));
        assert_eq!(previous_subnet(&dir.path().join("missing")), None);
    }

    #[test]
    fn masquerade_keeps_pod_to_pod_sources() {
        let text = masquerade_rules(&net("10.244.0.0/16"), &net("10.244.3.0/24"));
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("-A")).collect();
        assert!(
            lines[0].contains("-s 10.244.0.0/16 -d 10.244.0.0/16")
                && lines[0].ends_with("-j RETURN")
        );
        assert!(lines[1].contains("! -d 224.0.0.0/4") && lines[1].contains("MASQUERADE"));
        assert!(
            lines[2].contains("! -s 10.244.0.0/16 -d 10.244.3.0/24")
                && lines[2].ends_with("RETURN")
        );
        assert!(
            lines[3].contains("! -s 10.244.0.0/16 -d 10.244.0.0/16")
                && lines[3].contains("MASQUERADE")
        );
    }
}
