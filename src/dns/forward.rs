//! Names outside the cluster: forwarded to the node's resolvers (the `nameserver` lines of
//! `--resolv-conf`), as CoreDNS's `forward . /etc/resolv.conf` with its `cache`.
//!
//! skiffd runs in the node's network namespace, so loopback stubs such as systemd-resolved's
//! 127.0.0.53 work as upstreams here (a pod could not reach them, which is why pods ask
//! skiffd). Every upstream gets [`TRY_TIMEOUT`]; when all fail the client gets SERVFAIL well
//! within the few seconds its own resolver waits, never silence.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets for one query.
pub const TRY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Upstreams tried per query (the first three `nameserver` lines, as the libc resolver).
pub const MAX_UPSTREAMS: usize = 3;
/// Cached answers kept; the oldest go first when full.
pub const CACHE_ENTRIES: usize = 4096;
/// Longest a forwarded answer is cached (CoreDNS's `cache` default for success).
pub const MAX_TTL: u32 = 300;
/// How long a negative answer or a failure is cached.
pub const NEGATIVE_TTL: u32 = 5;

/// The `nameserver` addresses of a resolv.conf, without `exclude` (skiffd's own address: a
/// node whose resolv.conf names the cluster DNS must not forward to itself).
pub fn upstreams(resolv_conf: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next()).flatten()
        })
        // A scoped IPv6 address (`fe80::1%eth0`) cannot be parsed here; skip it.
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| !exclude.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_UPSTREAMS)
        .collect()
}

type Key = (Name, RecordType, bool);

/// A small TTL-bounded cache of upstream answers.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<Key, (Instant, Message)>>,
}

impl Cache {
    fn key(q: &Query, dnssec_ok: bool) -> Key {
        (q.name().to_lowercase(), q.query_type(), dnssec_ok)
    }

    /// A cached answer, its TTLs lowered by the time it has been kept.
    pub fn get(&self, q: &Query, dnssec_ok: bool, now: Instant) -> Option<Message> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(q, dnssec_ok);
        let (expires, msg) = map.get(&key)?;
        if *expires <= now {
            map.remove(&key);
            return None;
        }
        let left = expires.duration_since(now).as_secs() as u32;
        let mut msg = msg.clone();
        // Answers age; authority TTLs are left as the upstream gave them.
        for r in msg.answers_mut().iter_mut() {
            r.set_ttl(r.ttl().min(left.max(1)));
        }
        Some(msg)
    }

    /// Keeps `msg` for its lowest TTL (at most [`MAX_TTL`]; negative ones [`NEGATIVE_TTL`]).
    pub fn put(&self, q: &Query, dnssec_ok: bool, msg: &Message, now: Instant) {
        if msg.truncated() {
            return;
        }
        let ttl = match msg.response_code() {
            ResponseCode::NoError if !msg.answers().is_empty() => msg
                .answers()
                .iter()
                .map(|r| r.ttl())
                .min()
                .unwrap_or(0)
                .min(MAX_TTL),
            ResponseCode::NoError | ResponseCode::NXDomain => NEGATIVE_TTL,
            _ => return,
        };
        if ttl == 0 {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_ENTRIES {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= CACHE_ENTRIES
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (exp, _))| *exp)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            Self::key(q, dnssec_ok),
            (now + Duration::from_secs(u64::from(ttl)), msg.clone()),
        );
    }
}

/// Asks the upstreams in order; `None` when none answered in time.
pub async fn forward(upstreams: &[SocketAddr], request: &Message) -> Option<Message> {
    let q = request.query()?.clone();
    let mut ask = Message::new();
    ask.set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(request.op_code())
        .set_recursion_desired(true)
        .set_checking_disabled(request.checking_disabled())
        .add_query(q.clone());
    if let Some(edns) = request.extensions() {
        let mut e = edns.clone();
        e.set_max_payload(e.max_payload().clamp(512, 1232));
        ask.set_edns(e);
    }
    let bytes = ask.to_vec().ok()?;
    for up in upstreams {
        let got = tokio::time::timeout(TRY_TIMEOUT, exchange(*up, &bytes, &ask, &q)).await;
        match got {
            Ok(Ok(msg)) => return Some(msg),
            Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream query failed"),
            Err(_) => tracing::debug!(upstream = %up, "upstream timed out"),
        }
    }
    None
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // A random id makes spoofed answers harder to slip in; a failure leaves 0, still valid.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u16::from_ne_bytes(b)
}

/// One exchange over UDP, again over TCP when the answer is truncated.
async fn exchange(
    up: SocketAddr,
    bytes: &[u8],
    ask: &Message,
    q: &Query,
) -> std::io::Result<Message> {
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Ok(msg) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        // Spoofed or stale datagrams (another id or question) are ignored.
        if msg.id() != ask.id() || msg.query() != Some(q) {
            continue;
        }
        if !msg.truncated() {
            return Ok(msg);
        }
        break;
    }
    let mut tcp = TcpStream::connect(up).await?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    tcp.write_all(&framed).await?;
    let n = tcp.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    tcp.read_exact(&mut buf).await?;
    let msg = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if msg.id() != ask.id() {
        return Err(std::io::Error::other(
            "upstream answered another id over TCP",
        ));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_from_resolv_conf() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nsearch x\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\n";
        let got = upstreams(text, &["10.96.0.10".parse().unwrap()]);
        assert_eq!(
            got,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
                "8.8.8.8:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn cache_keeps_answers_for_their_ttl_and_negative_ones_briefly() {
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};
        let cache = Cache::default();
        let q = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        let mut msg = Message::new();
        msg.set_message_type(MessageType::Response)
            .add_query(q.clone());
        msg.add_answer(Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A("192.0.2.1".parse().unwrap())),
        ));
        let t0 = Instant::now();
        cache.put(&q, false, &msg, t0);
        let hit = cache.get(&q, false, t0 + Duration::from_secs(50)).unwrap();
        assert!(hit.answers()[0].ttl() <= 10);
        assert!(cache.get(&q, false, t0 + Duration::from_secs(61)).is_none());
        let mut nx = Message::new();
        nx.set_response_code(ResponseCode::NXDomain);
        cache.put(&q, true, &nx, t0);
        assert!(cache.get(&q, true, t0 + Duration::from_secs(4)).is_some());
        assert!(cache.get(&q, true, t0 + Duration::from_secs(6)).is_none());
        let mut fail = Message::new();
        fail.set_response_code(ResponseCode::ServFail);
        let q2 = Query::query(Name::from_ascii("down.example.").unwrap(), RecordType::A);
        cache.put(&q2, false, &fail, t0);
        assert!(cache.get(&q2, false, t0).is_none());
    }
}
