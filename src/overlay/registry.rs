//! Where subnet leases live, behind a seam (flannel's `subnet/etcd/registry.go` and its
//! `mock_registry.go`): the agent asks a [`Registry`] for the network config, a subnet lease,
//! its renewal and the other nodes' leases. [`EtcdRegistry`] keeps them in etcd under a key
//! prefix; [`FakeRegistry`] keeps them in memory for unit tests of the agent.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::etcd::{self, Client, Cond, EtcdError, LeaseEvent, LeaseWatcher, SubnetLease};
use super::lease::{self, Ipv4Net, LeaseAttrs, NetworkConfig, Pick, Resolved};

/// A stream of lease changes (see [`Registry::watch_leases`]).
pub trait LeaseStream: Send {
    /// The next batch of changes; `None` when the stream ended (re-list and watch again).
    fn next(&mut self) -> impl Future<Output = Option<Result<Vec<LeaseEvent>, EtcdError>>> + Send;
}

/// The subnet registry the overlay agent works against.
pub trait Registry: Send + Sync + 'static {
    /// The watch [`Registry::watch_leases`] returns.
    type Watch: LeaseStream;

    /// The network config as stored; [`EtcdError::NoConfig`] when there is none yet.
    fn network_config(&self) -> impl Future<Output = Result<NetworkConfig, EtcdError>> + Send;

    /// Store `cfg` as the network config unless one exists already; returns whether it did.
    fn create_network_config(
        &self,
        cfg: &NetworkConfig,
    ) -> impl Future<Output = Result<bool, EtcdError>> + Send;

    /// Take a subnet for `attrs.public_ip` on a fresh lease of `ttl` seconds: the one this
    /// PublicIP holds, else `previous` if free, else the lowest free one.
    fn acquire(
        &self,
        cfg: &Resolved,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Net>,
        ttl: i64,
    ) -> impl Future<Output = Result<SubnetLease, EtcdError>> + Send;

    /// Renew a lease once; [`EtcdError::LeaseGone`] when it has expired.
    fn renew(&self, lease: &SubnetLease) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// Give a lease back at once.
    fn release(&self, lease: &SubnetLease) -> impl Future<Output = Result<(), EtcdError>> + Send;

    /// Every current lease, plus the revision to watch from.
    fn list_leases(
        &self,
    ) -> impl Future<Output = Result<(Vec<(Ipv4Net, LeaseAttrs)>, i64), EtcdError>> + Send;

    /// Lease changes after revision `after`.
    fn watch_leases(
        &self,
        after: i64,
    ) -> impl Future<Output = Result<Self::Watch, EtcdError>> + Send;
}

/// The registry in etcd, flannel's layout under `prefix` (`/skiff/network/...`).
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
}

impl EtcdRegistry {
    /// Leases under `prefix` in the etcd `client` talks to.
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        EtcdRegistry {
            client,
            prefix: prefix.into(),
        }
    }
}

impl LeaseStream for LeaseWatcher {
    async fn next(&mut self) -> Option<Result<Vec<LeaseEvent>, EtcdError>> {
        LeaseWatcher::next(self).await
    }
}

impl Registry for EtcdRegistry {
    type Watch = LeaseWatcher;

    async fn network_config(&self) -> Result<NetworkConfig, EtcdError> {
        etcd::get_network_config(&self.client, &self.prefix).await
    }

    async fn create_network_config(&self, cfg: &NetworkConfig) -> Result<bool, EtcdError> {
        let value = serde_json::to_vec(cfg).expect("config serializes");
        let key = lease::config_key(&self.prefix);
        self.client.put_if(&key, &value, 0, Cond::Absent).await
    }

    async fn acquire(
        &self,
        cfg: &Resolved,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Net>,
        ttl: i64,
    ) -> Result<SubnetLease, EtcdError> {
        etcd::acquire(&self.client, &self.prefix, cfg, attrs, previous, ttl).await
    }

    async fn renew(&self, lease: &SubnetLease) -> Result<(), EtcdError> {
        etcd::renew(&self.client, lease).await
    }

    async fn release(&self, lease: &SubnetLease) -> Result<(), EtcdError> {
        etcd::release(&self.client, lease).await
    }

    async fn list_leases(&self) -> Result<(Vec<(Ipv4Net, LeaseAttrs)>, i64), EtcdError> {
        etcd::list_leases(&self.client, &self.prefix).await
    }

    async fn watch_leases(&self, after: i64) -> Result<LeaseWatcher, EtcdError> {
        etcd::watch_leases(&self.client, &self.prefix, after).await
    }
}

/// One lease the fake holds.
#[derive(Debug, Clone)]
struct FakeLease {
    attrs: LeaseAttrs,
    lease_id: i64,
}

#[derive(Debug, Default)]
struct FakeState {
    config: Option<NetworkConfig>,
    leases: BTreeMap<Ipv4Net, FakeLease>,
    revision: i64,
    next_lease: i64,
    /// Open watches: lease changes are sent to each.
    watchers: Vec<mpsc::UnboundedSender<Result<Vec<LeaseEvent>, EtcdError>>>,
    /// While set, every call fails with this message (etcd away).
    down: Option<String>,
    /// While set, every call fails with this auth error (wrong password).
    refuse: Option<String>,
    /// Calls made, by name, in order.
    calls: Vec<&'static str>,
}

/// An in-memory registry with etcd's semantics for leases (same allocator, lease ids, expiry
/// on demand), for unit tests. Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct FakeRegistry {
    state: Arc<Mutex<FakeState>>,
}

impl FakeRegistry {
    /// An empty registry (no network config yet).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, call: &'static str) -> Result<std::sync::MutexGuard<'_, FakeState>, EtcdError> {
        let mut s = self.lock();
        s.calls.push(call);
        if let Some(msg) = &s.refuse {
            return Err(EtcdError::Auth(msg.clone()));
        }
        match &s.down {
            Some(msg) => Err(EtcdError::Watch(msg.clone())),
            None => Ok(s),
        }
    }

    /// Store a network config.
    pub fn set_config(&self, cfg: NetworkConfig) {
        self.lock().config = Some(cfg);
    }

    /// Make etcd unreachable (`Some`) or reachable again (`None`); an unreachable registry
    /// also ends every open watch.
    pub fn set_down(&self, msg: Option<&str>) {
        let mut s = self.lock();
        s.down = msg.map(str::to_string);
        if let Some(m) = msg {
            for w in s.watchers.drain(..) {
                let _ = w.send(Err(EtcdError::Watch(m.to_string())));
            }
        }
    }

    /// Refuse every call with an auth error (`Some`), or stop doing so.
    pub fn set_refuse(&self, msg: Option<&str>) {
        self.lock().refuse = msg.map(str::to_string);
    }

    /// Put (or change) another node's lease, as that node would.
    pub fn put_lease(&self, subnet: Ipv4Net, attrs: LeaseAttrs) {
        let mut s = self.lock();
        s.next_lease += 1;
        let lease_id = 0x1000 + s.next_lease;
        s.leases.insert(
            subnet,
            FakeLease {
                attrs: attrs.clone(),
                lease_id,
            },
        );
        Self::notify(&mut s, LeaseEvent::Added(subnet, attrs));
    }

    /// Let a lease expire (a node gone, or this node away longer than its TTL).
    pub fn expire(&self, subnet: Ipv4Net) {
        let mut s = self.lock();
        if s.leases.remove(&subnet).is_some() {
            Self::notify(&mut s, LeaseEvent::Removed(subnet));
        }
    }

    /// The leases held, with their attributes.
    pub fn leases(&self) -> Vec<(Ipv4Net, LeaseAttrs)> {
        let s = self.lock();
        s.leases
            .iter()
            .map(|(k, v)| (*k, v.attrs.clone()))
            .collect()
    }

    /// The calls made so far, by name.
    pub fn calls(&self) -> Vec<&'static str> {
        self.lock().calls.clone()
    }

    fn notify(s: &mut FakeState, ev: LeaseEvent) {
        s.revision += 1;
        s.watchers.retain(|w| w.send(Ok(vec![ev.clone()])).is_ok());
    }
}

/// A watch on a [`FakeRegistry`].
#[derive(Debug)]
pub struct FakeWatch(mpsc::UnboundedReceiver<Result<Vec<LeaseEvent>, EtcdError>>);

impl LeaseStream for FakeWatch {
    async fn next(&mut self) -> Option<Result<Vec<LeaseEvent>, EtcdError>> {
        self.0.recv().await
    }
}

impl Registry for FakeRegistry {
    type Watch = FakeWatch;

    async fn network_config(&self) -> Result<NetworkConfig, EtcdError> {
        let s = self.check("network_config")?;
        s.config
            .clone()
            .ok_or_else(|| EtcdError::NoConfig("/fake/network/config".into()))
    }

    async fn create_network_config(&self, cfg: &NetworkConfig) -> Result<bool, EtcdError> {
        let mut s = self.check("create_network_config")?;
        if s.config.is_some() {
            return Ok(false);
        }
        s.config = Some(cfg.clone());
        Ok(true)
    }

    async fn acquire(
        &self,
        cfg: &Resolved,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Net>,
        ttl: i64,
    ) -> Result<SubnetLease, EtcdError> {
        let mut s = self.check("acquire")?;
        let taken: Vec<_> = s
            .leases
            .iter()
            .map(|(k, v)| (*k, v.attrs.clone()))
            .collect();
        let subnet = match lease::pick(cfg, &taken, attrs.public_ip, previous)? {
            Pick::Existing(s) | Pick::Free(s) => s,
        };
        s.next_lease += 1;
        let lease_id = s.next_lease;
        s.leases.insert(
            subnet,
            FakeLease {
                attrs: attrs.clone(),
                lease_id,
            },
        );
        Self::notify(&mut s, LeaseEvent::Added(subnet, attrs.clone()));
        Ok(SubnetLease {
            subnet,
            attrs: attrs.clone(),
            lease_id,
            ttl,
        })
    }

    async fn renew(&self, lease: &SubnetLease) -> Result<(), EtcdError> {
        let s = self.check("renew")?;
        match s.leases.get(&lease.subnet) {
            Some(l) if l.lease_id == lease.lease_id => Ok(()),
            _ => Err(EtcdError::LeaseGone(lease.lease_id)),
        }
    }

    async fn release(&self, lease: &SubnetLease) -> Result<(), EtcdError> {
        let mut s = self.check("release")?;
        if s.leases
            .get(&lease.subnet)
            .is_some_and(|l| l.lease_id == lease.lease_id)
        {
            s.leases.remove(&lease.subnet);
            Self::notify(&mut s, LeaseEvent::Removed(lease.subnet));
        }
        Ok(())
    }

    async fn list_leases(&self) -> Result<(Vec<(Ipv4Net, LeaseAttrs)>, i64), EtcdError> {
        let s = self.check("list_leases")?;
        let leases = s
            .leases
            .iter()
            .map(|(k, v)| (*k, v.attrs.clone()))
            .collect();
        Ok((leases, s.revision))
    }

    async fn watch_leases(&self, _after: i64) -> Result<FakeWatch, EtcdError> {
        let mut s = self.check("watch_leases")?;
        let (tx, rx) = mpsc::unbounded_channel();
        s.watchers.push(tx);
        Ok(FakeWatch(rx))
    }
}
