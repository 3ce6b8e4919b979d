//! Cluster DNS (issue 12): the names CoreDNS's `kubernetes` plugin serves, answered by skiffd
//! itself on the pod network's gateway, behind the built-in `kube-system/kube-dns` Service.
//!
//! - [`records`]: the pure name -> answer logic over a snapshot of Services, Endpoints, pods.
//! - [`forward`]: everything else, forwarded to the node's resolvers with a small cache.
//! - [`service`]: the `kube-dns` Service and its Endpoints.
//!
//! Messages are parsed and written with hickory-dns's `hickory-proto`. The socket loops are
//! skiff's own so that they stay bounded: local answers are made inline on the receiving
//! task (no task per datagram), forwarded queries take one of [`MAX_FORWARDS`] permits or get
//! SERVFAIL at once, TCP connections are capped at [`MAX_TCP`] with an idle timeout, and each
//! client address gets [`RATE_PER_CLIENT`] queries a second by default (over that UDP queries
//! are dropped, as CoreDNS's `ratelimit`-style plugins do, so a flood cannot use skiffd to
//! amplify or starve others; `--cluster-dns-rate-limit` changes it, 0 turns it off).

pub mod forward;
pub mod records;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use self::records::{Lookup, Snapshot};
use crate::store::Store;

/// Forwarded queries in flight at once; more get SERVFAIL at once.
pub const MAX_FORWARDS: usize = 256;
/// TCP connections served at once; more are closed at accept.
pub const MAX_TCP: usize = 128;
/// A TCP connection with no query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries a second one client address may send by default (token bucket, burst of the same
/// size).
pub const RATE_PER_CLIENT: u32 = 2000;
/// Largest UDP answer skiffd sends to an EDNS client (the DNS flag day's 1232).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Client addresses tracked by the rate limiter before idle ones are forgotten.
const MAX_CLIENTS: usize = 8192;

/// Where and how the resolver serves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address skiffd binds (the pod network's gateway, with `IP_FREEBIND`).
    pub listen: SocketAddr,
    /// `--cluster-domain`.
    pub domain: String,
    /// `--resolv-conf`: the node's resolvers, for names outside the cluster.
    pub resolv_conf: PathBuf,
    /// Addresses that are skiffd's resolver itself (never forwarded to).
    pub own: Vec<IpAddr>,
    /// `--cluster-dns-rate-limit`: UDP queries a second per client address; 0 is no limit.
    pub rate_per_client: u32,
}

/// The resolver's state, shared by its sockets.
pub struct Resolver {
    snapshot: RwLock<Arc<Snapshot>>,
    upstreams: Vec<SocketAddr>,
    cache: forward::Cache,
    forwards: Arc<Semaphore>,
    limiter: Mutex<RateLimiter>,
}

/// What to do with one received message.
pub enum Handled {
    /// Send these bytes back (or nothing).
    Reply(Option<Vec<u8>>),
    /// Ask upstream with the permit held, then answer; with a CNAME (an ExternalName
    /// Service), ask for its target and answer with both, as a recursive server does (a
    /// glibc stub resolver does not follow a CNAME by itself).
    Forward(
        Box<Message>,
        Option<Box<Record>>,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Resolver {
    /// A resolver over `snapshot` forwarding to `upstreams`.
    pub fn new(snapshot: Snapshot, upstreams: Vec<SocketAddr>) -> Resolver {
        Resolver {
            snapshot: RwLock::new(Arc::new(snapshot)),
            upstreams,
            cache: forward::Cache::default(),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            limiter: Mutex::new(RateLimiter::default()),
        }
    }

    /// Limits each client address to `qps` UDP queries a second; 0 turns the limit off.
    pub fn with_rate_limit(self, qps: u32) -> Resolver {
        Resolver {
            limiter: Mutex::new(RateLimiter::new(qps)),
            ..self
        }
    }

    /// Replaces the cluster's view.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers what can be answered without waiting: cluster names, cached names, errors.
    pub fn handle(&self, bytes: &[u8], from: IpAddr, transport: Transport) -> Handled {
        if transport == Transport::Udp
            && !self
                .limiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allow(from, Instant::now())
        {
            return Handled::Reply(None);
        }
        // Shorter than a header, or a response (QR set): dropped, never answered (no
        // reflection loops).
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            return Handled::Reply(None);
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                m.set_recursion_available(true);
                return Handled::Reply(m.to_vec().ok());
            }
        };
        if request.message_type() != MessageType::Query {
            return Handled::Reply(None);
        }
        if request.op_code() != OpCode::Query {
            return Handled::Reply(self.finish(
                &request,
                reply_to(&request, ResponseCode::NotImp),
                transport,
            ));
        }
        let [query] = request.queries() else {
            return Handled::Reply(self.finish(
                &request,
                reply_to(&request, ResponseCode::FormErr),
                transport,
            ));
        };
        let snap = self.snapshot();
        let mut resp = reply_to(&request, ResponseCode::NoError);
        match snap.lookup(query.name(), query.query_type()) {
            Lookup::Answer(records) => {
                if let ([cname], true) = (
                    records.as_slice(),
                    query.query_type() != hickory_proto::rr::RecordType::CNAME,
                ) && cname.record_type() == hickory_proto::rr::RecordType::CNAME
                    && !self.upstreams.is_empty()
                    && let Ok(permit) = self.forwards.clone().try_acquire_owned()
                {
                    return Handled::Forward(
                        Box::new(request.clone()),
                        Some(Box::new(cname.clone())),
                        permit,
                    );
                }
                resp.set_authoritative(true);
                resp.insert_answers(records);
            }
            Lookup::NoData => {
                resp.set_authoritative(true);
                resp.add_name_server(snap.soa());
            }
            Lookup::NxDomain => {
                resp.set_authoritative(true);
                resp.set_response_code(ResponseCode::NXDomain);
                resp.add_name_server(snap.soa());
            }
            Lookup::NotOurs => {
                let dnssec_ok = request
                    .extensions()
                    .as_ref()
                    .is_some_and(|e| e.flags().dnssec_ok);
                if let Some(cached) = self.cache.get(query, dnssec_ok, Instant::now()) {
                    return Handled::Reply(self.finish(
                        &request,
                        from_upstream(&request, cached),
                        transport,
                    ));
                }
                if self.upstreams.is_empty() {
                    return Handled::Reply(self.finish(
                        &request,
                        reply_to(&request, ResponseCode::ServFail),
                        transport,
                    ));
                }
                return match self.forwards.clone().try_acquire_owned() {
                    Ok(permit) => Handled::Forward(Box::new(request), None, permit),
                    Err(_) => Handled::Reply(self.finish(
                        &request,
                        reply_to(&request, ResponseCode::ServFail),
                        transport,
                    )),
                };
            }
        }
        Handled::Reply(self.finish(&request, resp, transport))
    }

    /// Asks upstream for `request` (a [`Handled::Forward`]) and makes the answer.
    pub async fn forward(
        &self,
        request: Box<Message>,
        cname: Option<Box<Record>>,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let cname = cname.map(|c| *c);
        let mut query = request.query()?.clone();
        let dnssec_ok = request
            .extensions()
            .as_ref()
            .is_some_and(|e| e.flags().dnssec_ok);
        let mut ask = request.clone();
        if let Some(RData::CNAME(target)) = cname.as_ref().map(Record::data) {
            query.set_name(target.0.clone());
            ask.queries_mut().clear();
            ask.add_query(query.clone());
        }
        let answer = match self.cache.get(&query, dnssec_ok, Instant::now()) {
            Some(hit) => Some(hit),
            None => {
                let got = forward::forward(&self.upstreams, &ask).await;
                if let Some(a) = &got {
                    self.cache.put(&query, dnssec_ok, a, Instant::now());
                }
                got
            }
        };
        let resp = match (answer, cname) {
            (Some(answer), None) => from_upstream(&request, answer),
            // The target's records after the cluster's CNAME: the name exists whatever the
            // target's fate, so NOERROR unless the upstream failed.
            (Some(mut answer), Some(cname)) => {
                let mut m = reply_to(&request, ResponseCode::NoError);
                m.set_authoritative(true);
                m.add_answer(cname);
                m.add_answers(answer.take_answers());
                if answer.response_code() == ResponseCode::ServFail {
                    m.set_response_code(ResponseCode::ServFail);
                }
                m
            }
            (None, Some(cname)) => {
                let mut m = reply_to(&request, ResponseCode::NoError);
                m.set_authoritative(true);
                m.add_answer(cname);
                m
            }
            (None, None) => reply_to(&request, ResponseCode::ServFail),
        };
        self.finish(&request, resp, transport)
    }

    /// Encodes `resp`, truncated (TC set, records dropped) when it does not fit the client's
    /// UDP size: 512 bytes, or its EDNS size up to [`EDNS_PAYLOAD`].
    fn finish(
        &self,
        request: &Message,
        mut resp: Message,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let bytes = resp.to_vec().ok()?;
        let limit = match (transport, request.extensions()) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
            (Transport::Udp, None) => 512,
        };
        if bytes.len() <= limit {
            return Some(bytes);
        }
        resp.take_answers();
        resp.take_name_servers();
        resp.take_additionals();
        resp.set_truncated(true);
        resp.to_vec().ok()
    }
}

/// A response skeleton for `request`: same id, question, RD; RA set; EDNS when asked with it.
fn reply_to(request: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    m.add_queries(request.queries().iter().cloned());
    if let Some(e) = request.extensions() {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD)
            .set_version(0)
            .set_dnssec_ok(e.flags().dnssec_ok);
        m.set_edns(ours);
    }
    m
}

/// An upstream answer re-addressed to the client: its id, its question's spelling, EDNS only
/// when the client sent it.
fn from_upstream(request: &Message, mut answer: Message) -> Message {
    let mut m = reply_to(request, answer.response_code());
    m.set_authoritative(false)
        .set_authentic_data(answer.authentic_data())
        .set_truncated(answer.truncated());
    m.insert_answers(answer.take_answers());
    m.insert_name_servers(answer.take_name_servers());
    let additionals: Vec<Record> = answer.take_additionals();
    m.insert_additionals(additionals);
    m
}

/// Per-client token buckets of `rate` tokens a second (burst: one second's worth).
struct RateLimiter {
    /// Queries a second; 0 lets everything through.
    rate: f64,
    clients: HashMap<IpAddr, (f64, Instant)>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(RATE_PER_CLIENT)
    }
}

impl RateLimiter {
    fn new(qps: u32) -> Self {
        RateLimiter {
            rate: f64::from(qps),
            clients: HashMap::new(),
        }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
        if rate <= 0.0 {
            return true;
        }
        if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&ip) {
            // Forget the clients whose bucket has refilled: they lose nothing.
            self.clients
                .retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() * rate < rate);
            if self.clients.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let (tokens, at) = self.clients.entry(ip).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Binds UDP and TCP on `addr` with `IP_FREEBIND`: the gateway address appears only when the
/// first pod's network is set up.
fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let fd = crate::service::builtin::bind_freebind(addr, nix::sys::socket::SockType::Datagram)?;
    let udp = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    let tcp = crate::service::master::bind_advertised(addr)?;
    Ok((udp, tcp))
}

/// Keeps the resolver's snapshot current: rebuilt when the store changes (pods) or the
/// service controller publishes (Services, Endpoints).
async fn refresh(
    resolver: Arc<Resolver>,
    store: Arc<Store>,
    domain: String,
    mut views: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changed = store.subscribe();
    let mut serial: u32 = 1;
    loop {
        let mut pods = store.list_pods(None);
        pods.extend(store.remote().pods);
        let snap = Snapshot::build(
            &domain,
            &store.services(None),
            &store.endpoints(None),
            &pods,
            serial,
        );
        resolver.set_snapshot(snap);
        serial = serial.wrapping_add(1);
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            r = views.changed() => if r.is_err() { return },
            _ = stop.wait_for(|v| *v) => return,
        }
        // Changes come in bursts (a pod's status, then the Endpoints): take them together.
        tokio::time::sleep(Duration::from_millis(20)).await;
        changed.borrow_and_update();
        views.borrow_and_update();
    }
}

/// Runs the resolver until `stop` is set. A failed bind is logged and DNS stays off (pods
/// then time out on the cluster DNS address, as with a CoreDNS that is down).
pub async fn run(
    settings: Settings,
    store: Arc<Store>,
    views: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
) {
    let resolv = std::fs::read_to_string(&settings.resolv_conf).unwrap_or_else(|e| {
        warn!(path = %settings.resolv_conf.display(), error = %e, "reading the node's resolvers: names outside the cluster get SERVFAIL");
        String::new()
    });
    let upstreams = forward::upstreams(&resolv, &settings.own);
    let (udp, tcp) = match bind(settings.listen) {
        Ok(s) => s,
        Err(e) => {
            warn!(listen = %settings.listen, error = %e, "cluster DNS not started: cannot bind");
            // On the Service pods resolve through, so `skiff describe` and events show it.
            let obj = crate::store::Involved {
                kind: "Service".into(),
                namespace: crate::service::kube_dns::NAMESPACE.into(),
                name: crate::service::kube_dns::NAME.into(),
                uid: None,
            };
            store.event(
                &obj,
                crate::store::EventType::Warning,
                "DNSNotServing",
                &format!("skiffd cannot serve DNS on {}: {e}", settings.listen),
            );
            return;
        }
    };
    info!(listen = %settings.listen, domain = %settings.domain, upstreams = ?upstreams, rate_per_client = settings.rate_per_client, "cluster DNS serving");
    let resolver = Arc::new(
        Resolver::new(
            Snapshot::build(&settings.domain, &[], &[], &[], 0),
            upstreams,
        )
        .with_rate_limit(settings.rate_per_client),
    );
    let mut tasks = JoinSet::new();
    tasks.spawn(refresh(
        resolver.clone(),
        store,
        settings.domain.clone(),
        views,
        stop.clone(),
    ));
    tasks.spawn(serve_udp(resolver.clone(), Arc::new(udp)));
    tasks.spawn(serve_tcp(resolver, tcp));
    let mut stop = stop;
    let _ = stop.wait_for(|v| *v).await;
    tasks.shutdown().await;
}

async fn serve_udp(resolver: Arc<Resolver>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    let mut forwards = JoinSet::new();
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "cluster DNS: receiving over UDP");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while forwards.try_join_next().is_some() {}
        match resolver.handle(&buf[..n], from.ip(), Transport::Udp) {
            Handled::Reply(Some(bytes)) => {
                let _ = sock.send_to(&bytes, from).await;
            }
            Handled::Reply(None) => {}
            Handled::Forward(request, cname, permit) => {
                let (r, s) = (resolver.clone(), sock.clone());
                forwards.spawn(async move {
                    if let Some(bytes) = r.forward(request, cname, Transport::Udp).await {
                        let _ = s.send_to(&bytes, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(resolver: Arc<Resolver>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let r = resolver.clone();
        conns.spawn(async move {
            let _ = serve_conn(&r, stream, from.ip()).await;
            drop(slot);
        });
    }
}

async fn serve_conn(
    resolver: &Resolver,
    mut stream: TcpStream,
    from: IpAddr,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("read timeout"))??;
        let bytes = match resolver.handle(&buf, from, Transport::Tcp) {
            Handled::Reply(b) => b,
            Handled::Forward(request, cname, permit) => {
                let b = resolver.forward(request, cname, Transport::Tcp).await;
                drop(permit);
                b
            }
        };
        let Some(bytes) = bytes else {
            return Ok(());
        };
        let n = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        stream.write_all(&out).await?;
    }
}

/// The default `--cluster-dns`: the 10th address of the service range (`10.96.0.10`).
pub fn default_address(range: crate::proxy::Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.addr) + 10)
}

/// The pod network's gateway: the first address of the node's pod CIDR.
pub fn gateway_of(pod_cidr: &str) -> Option<Ipv4Addr> {
    let (addr, _) = pod_cidr.split_once('/')?;
    let net: Ipv4Addr = addr.parse().ok()?;
    Some(Ipv4Addr::from(u32::from(net) + 1))
}

/// Whether `ip` is inside `range`.
pub fn in_range(ip: Ipv4Addr, range: crate::proxy::Ipv4Cidr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(range.prefix))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(range.addr) & mask
}

#[cfg(test)]
mod tests;
