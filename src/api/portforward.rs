//! `kubectl port-forward` (`.../pods/{name}/portforward`), served as the kubelet serves it.
//!
//! kubectl 1.31+ first asks for a WebSocket with the subprotocol
//! `SPDY/3.1+portforward.k8s.io`: its binary messages carry the bytes of a SPDY/3.1 session
//! (see [`super::spdy`]). Without WebSockets it falls back to a plain `SPDY/3.1` upgrade with
//! `X-Stream-Protocol-Version: portforward.k8s.io`; both end in the same [`serve`].
//!
//! In the session, every forwarded connection is a pair of client-opened streams with the
//! headers `streamtype` (`error` or `data`), `port` and `requestid`. For a complete pair,
//! skiffd connects to `127.0.0.1:port` inside the pod's network namespace (the socket is made
//! on a thread that joined the namespace, then used from tokio) and copies bytes both ways on
//! the data stream. A failed connect is written on the error stream, in the kubelet's words.
//!
//! Bounds: [`MAX_STREAMS`] open streams per session, [`DATA_QUEUE`] chunks buffered per
//! stream, a pair must be complete within [`PAIR_TIMEOUT`], and sessions and connections with
//! no traffic end after [`IDLE`] (the kubelet's default stream idle timeout).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;

use super::pods::find;
use super::spdy::{self, Frame, header as hdr};
use super::{ApiError, Shared};

/// The port-forward protocol, and its WebSocket-tunnelled form.
const PROTOCOL: &str = "portforward.k8s.io";
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Open streams per session (two per forwarded connection).
pub const MAX_STREAMS: usize = 256;
/// Chunks (of at most one frame each) queued from the client to one connection.
pub const DATA_QUEUE: usize = 16;
/// Frames queued to the client.
const OUT_QUEUE: usize = 64;
/// How long the first stream of a pair waits for the second.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a queued chunk may wait for its connection before the stream is reset.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the pod's port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A session, or a connection, without traffic for this long is ended.
pub const IDLE: Duration = Duration::from_secs(4 * 3600);
/// Reads from the pod's socket.
const CHUNK: usize = 32 * 1024;

/// Where a session's connections go.
struct Target {
    /// `namespace/name` for messages.
    pod: String,
    name: String,
    uid: String,
    /// The pod's network namespace; `None` for `hostNetwork` pods.
    netns: Option<PathBuf>,
}

/// `GET` (WebSocket) or `POST` (SPDY upgrade) `.../pods/{name}/portforward`. The pod is
/// checked, and the protocol, before anything is upgraded.
pub async fn portforward(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let target = Arc::new(target(&s, &ns, &name)?);
    let (mut parts, body) = req.into_parts();
    let wants_ws = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_ws {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("unable to upgrade connection: {e}")))?;
        let ws = ws
            .protocols([TUNNEL_PROTOCOL])
            .max_message_size(spdy::MAX_FRAME + 64);
        if ws.selected_protocol().is_none() {
            return Err(refused(&parts.headers));
        }
        return Ok(ws.on_upgrade(move |socket| async move {
            let (session, tunnel) = tokio::io::duplex(64 * 1024);
            // The bridge ends when the session drops its end, and the session when the
            // bridge drops its end.
            tokio::join!(bridge(socket, tunnel), serve(session, target));
        }));
    }
    if !is_spdy_upgrade(&parts.headers) {
        return Err(refused(&parts.headers));
    }
    let mut req = Request::from_parts(parts, body);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded), target).await,
            Err(e) => debug!(error = %e, "port-forward: SPDY upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", PROTOCOL)
        .body(Body::empty())
        .expect("static response"))
}

/// The running pod and its network namespace, or the apiserver's error.
fn target(s: &Shared, ns: &str, name: &str) -> Result<Target, ApiError> {
    let pod = find(s, ns, name)?;
    let phase = pod
        .status
        .as_ref()
        .and_then(|st| st.phase.as_deref())
        .unwrap_or("Unknown");
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: pod {ns}/{name} is not running (phase {phase})"
        )));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|sp| sp.host_network)
        .unwrap_or(false);
    let netns = s.runtime.pod_netns(&uid, host_network);
    if let Some(p) = &netns
        && !netns::is_pinned(p)
    {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: pod {ns}/{name} has no network namespace"
        )));
    }
    Ok(Target {
        pod: format!("{ns}/{name}"),
        name: name.to_string(),
        uid,
        netns,
    })
}

/// A plain SPDY/3.1 upgrade for the port-forward protocol.
fn is_spdy_upgrade(h: &HeaderMap) -> bool {
    let all = |name: header::HeaderName| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect::<Vec<_>>()
    };
    all(header::UPGRADE)
        .iter()
        .any(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
        && all(header::HeaderName::from_static("x-stream-protocol-version"))
            .iter()
            .any(|p| p == PROTOCOL)
}

/// The answer to a request for a protocol skiffd does not speak (nothing was started).
fn refused(h: &HeaderMap) -> ApiError {
    let asked: Vec<&str> = [
        "upgrade",
        "sec-websocket-protocol",
        "x-stream-protocol-version",
    ]
    .iter()
    .flat_map(|n| h.get_all(*n).iter().filter_map(|v| v.to_str().ok()))
    .collect();
    let asked = if asked.is_empty() {
        "no upgrade".to_string()
    } else {
        asked.join(", ")
    };
    ApiError::bad_request(format!(
        "unable to upgrade connection: skiffd serves port-forward as a WebSocket ({TUNNEL_PROTOCOL}) or a SPDY/3.1 upgrade ({PROTOCOL}), not {asked}"
    ))
}

/// Carries the session's bytes in binary WebSocket messages, each direction on its own task
/// (so neither can hold the other up).
async fn bridge(socket: WebSocket, tunnel: tokio::io::DuplexStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(tunnel);
    let up = async move {
        while let Some(Ok(m)) = ws_rx.next().await {
            match m {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    };
    // Whichever direction ends first ends the tunnel.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// One stream the client opened.
enum Slot {
    Error,
    Data {
        /// To the connection's task; `None` once the client finished (FIN or reset).
        tx: Option<mpsc::Sender<Vec<u8>>>,
    },
}

/// The first stream(s) of a connection, until both are there.
struct Pending {
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Vec<u8>>)>,
    port: u16,
    since: Instant,
}

/// One SPDY session: reads frames, pairs streams, runs a task per connection.
async fn serve<S>(io: S, target: Arc<Target>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        let mut deflate = spdy::Deflater::default();
        while let Some(f) = out_rx.recv().await {
            let bytes = spdy::encode(&f, &mut deflate);
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // The reader runs on its own so a frame is never half read when the loop below wakes
    // for something else.
    let (in_tx, mut frames) = mpsc::channel::<Result<Frame, spdy::SpdyError>>(4);
    let reader = tokio::spawn(async move {
        let mut inflate = spdy::Inflater::default();
        loop {
            match spdy::read_frame(&mut rd, &mut inflate).await {
                Ok(Some(f)) => {
                    if in_tx.send(Ok(f)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = in_tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    let mut session = Session {
        target,
        out: out.clone(),
        streams: HashMap::new(),
        pending: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let mut last_traffic = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            f = frames.recv() => match f {
                Some(Ok(f)) => {
                    last_traffic = Instant::now();
                    if !session.frame(f).await {
                        break;
                    }
                }
                Some(Err(e)) => {
                    debug!(pod = %session.target.pod, error = %e, "port-forward: ending the session");
                    let _ = out.send(Frame::GoAway { last: 0, status: spdy::PROTOCOL_ERROR }).await;
                    break;
                }
                None => break,
            },
            Some(done) = session.tasks.join_next() => {
                if let Ok((error, data)) = done {
                    session.streams.remove(&error);
                    session.streams.remove(&data);
                }
                last_traffic = Instant::now();
            }
            _ = tick.tick() => {
                session.expire().await;
                if session.tasks.is_empty() && last_traffic.elapsed() > IDLE {
                    debug!(pod = %session.target.pod, "port-forward: idle session ended");
                    break;
                }
            }
        }
    }
    // Every connection ends with the session (its task owns the pod-side socket).
    session.tasks.shutdown().await;
    reader.abort();
    drop(session);
    drop(out);
    let _ = writer.await;
}

struct Session {
    target: Arc<Target>,
    out: mpsc::Sender<Frame>,
    streams: HashMap<u32, Slot>,
    pending: HashMap<String, Pending>,
    tasks: JoinSet<(u32, u32)>,
}

impl Session {
    async fn send(&self, f: Frame) -> bool {
        self.out.send(f).await.is_ok()
    }

    async fn reset(&mut self, stream: u32, status: u32) -> bool {
        self.streams.remove(&stream);
        self.send(Frame::RstStream { stream, status }).await
    }

    /// Handles one frame; false ends the session.
    async fn frame(&mut self, f: Frame) -> bool {
        match f {
            Frame::SynStream {
                stream, headers, ..
            } => self.open(stream, &headers).await,
            Frame::Data { stream, fin, data } => {
                let Some(Slot::Data { tx }) = self.streams.get_mut(&stream) else {
                    return true;
                };
                if let Some(t) = tx.as_ref()
                    && !data.is_empty()
                {
                    match tokio::time::timeout(SEND_TIMEOUT, t.send(data)).await {
                        Ok(Ok(())) => {}
                        // The connection is gone: what the client still sends is dropped.
                        Ok(Err(_)) => *tx = None,
                        Err(_) => return self.reset(stream, spdy::REFUSED_STREAM).await,
                    }
                }
                if fin {
                    *tx = None;
                }
                true
            }
            Frame::RstStream { stream, .. } => {
                if let Some(Slot::Data { tx }) = self.streams.get_mut(&stream) {
                    *tx = None;
                }
                true
            }
            Frame::Ping(id) => self.send(Frame::Ping(id)).await,
            Frame::GoAway { .. } => false,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings
            | Frame::WindowUpdate { .. }
            | Frame::Unknown(_) => true,
        }
    }

    /// A new stream: answered, then paired with its partner by request id.
    async fn open(&mut self, stream: u32, headers: &spdy::Headers) -> bool {
        if stream.is_multiple_of(2) || self.streams.contains_key(&stream) {
            return self.send_rst(stream, spdy::PROTOCOL_ERROR).await;
        }
        if self.streams.len() >= MAX_STREAMS {
            debug!(pod = %self.target.pod, "port-forward: too many streams; refusing one");
            return self.send_rst(stream, spdy::REFUSED_STREAM).await;
        }
        let kind = hdr(headers, "streamtype");
        let port = hdr(headers, "port").and_then(|p| p.parse::<u16>().ok());
        let (Some(kind @ ("error" | "data")), Some(port @ 1..)) = (kind, port) else {
            return self.send_rst(stream, spdy::PROTOCOL_ERROR).await;
        };
        // Old clients send no request id: the kubelet pairs a data stream with the error
        // stream opened just before it.
        let request = match hdr(headers, "requestid") {
            Some(r) => r.to_string(),
            None if kind == "error" => stream.to_string(),
            None => stream.saturating_sub(2).to_string(),
        };
        // A second stream of one kind for a request, or a pair naming two ports, is the
        // client's error: that stream is reset, its partner keeps waiting (then expires).
        let clash = self.pending.get(&request).is_some_and(|p| {
            p.port != port
                || match kind {
                    "error" => p.error.is_some(),
                    _ => p.data.is_some(),
                }
        });
        if clash {
            return self.send_rst(stream, spdy::PROTOCOL_ERROR).await;
        }
        if !self
            .send(Frame::SynReply {
                stream,
                fin: false,
                headers: vec![],
            })
            .await
        {
            return false;
        }
        let mut p = self.pending.remove(&request).unwrap_or(Pending {
            error: None,
            data: None,
            port,
            since: Instant::now(),
        });
        if kind == "error" {
            self.streams.insert(stream, Slot::Error);
            p.error = Some(stream);
        } else {
            let (tx, rx) = mpsc::channel(DATA_QUEUE);
            self.streams.insert(stream, Slot::Data { tx: Some(tx) });
            p.data = Some((stream, rx));
        }
        match p {
            Pending {
                error: Some(error),
                data: Some((data, rx)),
                ..
            } => {
                let target = self.target.clone();
                let out = self.out.clone();
                self.tasks
                    .spawn(connection(target, port, error, data, rx, out));
            }
            p => {
                self.pending.insert(request, p);
            }
        }
        true
    }

    async fn send_rst(&self, stream: u32, status: u32) -> bool {
        self.send(Frame::RstStream { stream, status }).await
    }

    /// Resets the streams of pairs that stayed incomplete too long.
    async fn expire(&mut self) {
        let old: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() > PAIR_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            if let Some(p) = self.pending.remove(&k) {
                let ids = p.error.into_iter().chain(p.data.map(|(d, _)| d));
                for id in ids.collect::<Vec<_>>() {
                    self.reset(id, spdy::REFUSED_STREAM).await;
                }
            }
        }
    }
}

/// Opens a TCP connection to `127.0.0.1:port` in the pod's network namespace.
async fn connect(target: &Target, port: u16) -> std::io::Result<TcpStream> {
    let netns = target.netns.clone();
    let dial = move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    };
    let s = tokio::task::spawn_blocking(move || match netns {
        Some(p) => netns::run_in(&p, dial).map_err(|e| std::io::Error::other(e.to_string()))?,
        None => dial(),
    })
    .await
    .map_err(std::io::Error::other)??;
    TcpStream::from_std(s)
}

/// One forwarded connection: the data stream's bytes to the pod's port and back; ends with
/// the error stream (empty, or the kubelet's message) and the data stream finished.
async fn connection(
    target: Arc<Target>,
    port: u16,
    error: u32,
    data: u32,
    mut rx: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Frame>,
) -> (u32, u32) {
    let fin = |stream: u32, data: Vec<u8>| Frame::Data {
        stream,
        fin: true,
        data,
    };
    let sock = match connect(&target, port).await {
        Ok(s) => s,
        Err(e) => {
            // Worded as the kubelet's (containerd's) message, Go's lower-case errno text.
            let why = match e.raw_os_error() {
                Some(n) => format!(
                    "dial tcp4 127.0.0.1:{port}: connect: {}",
                    nix::errno::Errno::from_raw(n).desc().to_lowercase()
                ),
                None => e.to_string(),
            };
            let msg = format!(
                "error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside namespace of pod {}: {why}",
                target.name, target.uid, target.pod
            );
            debug!(pod = %target.pod, port, error = %e, "port-forward: connect failed");
            let _ = out.send(fin(error, msg.into_bytes())).await;
            let _ = out.send(fin(data, vec![])).await;
            return (error, data);
        }
    };
    let (mut from_pod, to_pod) = sock.into_split();
    let mut to_pod = Some(to_pod);
    let mut client_open = true;
    let mut pod_open = true;
    let mut buf = vec![0u8; CHUNK];
    while client_open || pod_open {
        tokio::select! {
            m = rx.recv(), if client_open => match m {
                Some(chunk) => {
                    // After a failed write the client's bytes are drained and dropped.
                    if let Some(w) = to_pod.as_mut()
                        && w.write_all(&chunk).await.is_err()
                    {
                        to_pod = None;
                    }
                }
                None => {
                    client_open = false;
                    if let Some(mut w) = to_pod.take() {
                        let _ = w.shutdown().await;
                    }
                }
            },
            n = from_pod.read(&mut buf), if pod_open => match n {
                Ok(0) | Err(_) => {
                    pod_open = false;
                    if out.send(fin(data, vec![])).await.is_err() {
                        return (error, data);
                    }
                }
                Ok(n) => {
                    let f = Frame::Data { stream: data, fin: false, data: buf[..n].to_vec() };
                    if out.send(f).await.is_err() {
                        return (error, data);
                    }
                }
            },
            _ = tokio::time::sleep(IDLE) => {
                debug!(pod = %target.pod, port, "port-forward: idle connection ended");
                if pod_open {
                    let _ = out.send(fin(data, vec![])).await;
                }
                break;
            }
        }
    }
    let _ = out.send(fin(error, vec![])).await;
    (error, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::spdy::{Deflater, Inflater, read_frame};

    /// A session over an in-memory stream, forwarding to the host's loopback (`netns: None`,
    /// as for a `hostNetwork` pod), and the client's end.
    struct Client {
        io: tokio::io::DuplexStream,
        deflate: Deflater,
        inflate: Inflater,
    }

    fn session() -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let target = Arc::new(Target {
            pod: "default/web".into(),
            name: "web".into(),
            uid: "u1".into(),
            netns: None,
        });
        tokio::spawn(serve(server, target));
        Client {
            io: client,
            deflate: Deflater::default(),
            inflate: Inflater::default(),
        }
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let b = spdy::encode(&f, &mut self.deflate);
            self.io.write_all(&b).await.unwrap();
        }

        async fn open(&mut self, stream: u32, kind: &str, port: u16, request: &str) {
            let headers = [
                ("streamtype", kind),
                ("port", &port.to_string()),
                ("requestid", request),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            self.send(Frame::SynStream {
                stream,
                fin: false,
                headers,
            })
            .await;
        }

        async fn next(&mut self) -> Option<Frame> {
            tokio::time::timeout(
                Duration::from_secs(10),
                read_frame(&mut self.io, &mut self.inflate),
            )
            .await
            .expect("a frame in time")
            .unwrap()
        }

        /// Frames until stream `id` is finished; the data sent on it.
        async fn until_fin(&mut self, id: u32, seen: &mut Vec<Frame>) -> Vec<u8> {
            let mut got = Vec::new();
            loop {
                let f = self.next().await.expect("session open");
                seen.push(f.clone());
                if let Frame::Data { stream, fin, data } = f
                    && stream == id
                {
                    got.extend_from_slice(&data);
                    if fin {
                        return got;
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_stream_pair_reaches_the_port_and_back() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            c.write_all(b"got:").await.unwrap();
            c.write_all(&got).await.unwrap();
        });
        let mut c = session();
        c.open(1, "error", port, "0").await;
        c.open(3, "data", port, "0").await;
        c.send(Frame::Data {
            stream: 3,
            fin: true,
            data: b"ping".to_vec(),
        })
        .await;
        let mut seen = Vec::new();
        assert_eq!(c.until_fin(3, &mut seen).await, b"got:ping");
        assert_eq!(c.until_fin(1, &mut seen).await, b"");
        for id in [1, 3] {
            assert!(
                seen.iter()
                    .any(|f| matches!(f, Frame::SynReply { stream, .. } if *stream == id)),
                "{seen:?}"
            );
        }
        // Pings are answered.
        c.send(Frame::Ping(1)).await;
        assert_eq!(c.next().await, Some(Frame::Ping(1)));
    }

    #[tokio::test]
    async fn a_refused_port_is_reported_on_the_error_stream() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut c = session();
        c.open(1, "error", port, "7").await;
        c.open(3, "data", port, "7").await;
        let mut seen = Vec::new();
        let msg = String::from_utf8(c.until_fin(1, &mut seen).await).unwrap();
        assert!(
            msg.starts_with(&format!(
                "error forwarding port {port} to pod web, uid u1: "
            )),
            "{msg}"
        );
        assert!(msg.ends_with("connect: connection refused"), "{msg}");
        assert_eq!(c.until_fin(3, &mut seen).await, b"");
    }

    #[tokio::test]
    async fn streams_above_the_limit_are_refused_and_bad_frames_end_the_session() {
        let mut c = session();
        for i in 0..=MAX_STREAMS as u32 {
            c.open(2 * i + 1, "error", 80, &i.to_string()).await;
        }
        let last = 2 * MAX_STREAMS as u32 + 1;
        loop {
            match c.next().await.expect("session open") {
                Frame::SynReply { stream, .. } => assert!(stream < last),
                Frame::RstStream { stream, status } => {
                    assert_eq!((stream, status), (last, spdy::REFUSED_STREAM));
                    break;
                }
                f => panic!("{f:?}"),
            }
        }
        // Even stream ids are the server's: refused.
        c.open(2, "error", 80, "x").await;
        assert_eq!(
            c.next().await,
            Some(Frame::RstStream {
                stream: 2,
                status: spdy::PROTOCOL_ERROR
            })
        );
        // A SPDY/2 frame: GOAWAY, then the end.
        c.io.write_all(&[0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
            .await
            .unwrap();
        assert!(matches!(c.next().await, Some(Frame::GoAway { .. })));
        assert_eq!(c.next().await, None);
    }

    #[test]
    fn only_the_port_forward_protocols_are_accepted() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "SPDY/3.1".parse().unwrap());
        h.insert("x-stream-protocol-version", PROTOCOL.parse().unwrap());
        assert!(is_spdy_upgrade(&h));
        h.insert(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert!(!is_spdy_upgrade(&h));
        let msg = refused(&h).message;
        assert!(msg.contains("SPDY/3.1, v4.channel.k8s.io"), "{msg}");
        assert!(!is_spdy_upgrade(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_second_stream_of_a_kind_or_another_port_is_reset() {
        let mut c = session();
        c.open(1, "error", 80, "a").await;
        assert!(matches!(
            c.next().await,
            Some(Frame::SynReply { stream: 1, .. })
        ));
        c.open(3, "error", 80, "a").await;
        c.open(5, "data", 81, "a").await;
        for stream in [3, 5] {
            assert_eq!(
                c.next().await,
                Some(Frame::RstStream {
                    stream,
                    status: spdy::PROTOCOL_ERROR
                })
            );
        }
    }
}
