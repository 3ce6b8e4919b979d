//! A minimal etcd v3 client over etcd's JSON gRPC gateway (`/v3/...`), and flannel-style subnet
//! leases on top of it.
//!
//! The gateway is plain HTTP/1.1 with JSON bodies: keys and values are base64, int64 fields come
//! back as strings, and fields holding their zero value are left out. That is enough for range,
//! put, txn, leases and watch without protoc or a gRPC stack.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::http1::{self, ConnTask};

use super::lease::{
    self, Ipv4Net, LeaseAttrs, LeaseError, NetworkConfig, Pick, Resolved, subnet_key,
    subnet_of_key, subnets_prefix,
};

/// How often [`acquire`] retries after losing a race for a subnet.
const MAX_CONFLICTS: u32 = 16;

/// Errors talking to etcd or interpreting what it holds.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "invalid etcd endpoint {0:?}: expected http://host:port or https://host:port (all alike)"
    )]
    Endpoint(String),
    #[error("etcd TLS: {0}")]
    Tls(String),
    #[error("connecting to etcd at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("etcd request {path}: {source}")]
    Http {
        path: &'static str,
        source: hyper::Error,
    },
    #[error("etcd {path} answered {status}: {body}")]
    Status {
        path: &'static str,
        status: u16,
        body: String,
    },
    #[error("etcd {path}: unexpected response: {source}")]
    Decode {
        path: &'static str,
        source: serde_json::Error,
    },
    #[error("etcd {path}: invalid base64 in response: {source}")]
    Base64 {
        path: &'static str,
        source: base64::DecodeError,
    },
    #[error("etcd key {key}: invalid value: {source}")]
    Value {
        key: String,
        source: serde_json::Error,
    },
    #[error("no network config at {0}")]
    NoConfig(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("etcd lease {0:x} has expired")]
    LeaseGone(i64),
    #[error("gave up acquiring a subnet after {0} lost races")]
    Contention(u32),
    #[error("etcd {0}: no answer in time")]
    Timeout(&'static str),
    #[error("etcd watch failed: {0}")]
    Watch(String),
    #[error("etcd auth: {0}")]
    Auth(String),
}

/// One key-value pair as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// Revision of the key's creation (0: absent).
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A condition for [`Client::put_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// The key does not exist (create_revision == 0).
    Absent,
    /// The key was last modified at this revision (nobody changed it since we read it).
    ModRevision(i64),
}

/// One comparison of [`Client::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key was last modified at this revision.
    ModRevision(String, i64),
    /// The key holds exactly this value.
    Value(String, Vec<u8>),
}

/// One operation of [`Client::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put a value on a lease (0: none).
    Put(String, Vec<u8>, i64),
    /// Delete a key.
    Delete(String),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Key created or changed.
    Put(Kv),
    /// Key deleted (or its lease expired).
    Delete(Kv),
}

/// An etcd v3 client over the JSON gateway. With several endpoints (members of one cluster) a
/// request goes to the last one that answered and fails over to the others in turn.
#[derive(Clone)]
pub struct Client {
    addrs: Vec<String>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Kept-alive connections for unary requests, shared by clones.
    idle: std::sync::Arc<std::sync::Mutex<Vec<Conn>>>,
    /// etcd auth: credentials and the current token, shared by clones.
    auth: Option<std::sync::Arc<Auth>>,
    /// Connections opened for unary requests so far (the pool's effect, for tests and debugging).
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.addrs)
            .field("tls", &self.tls.is_some())
            .field("user", &self.auth.as_ref().map(|a| &a.user))
            .finish()
    }
}

/// TLS settings for etcd (etcdctl's and flannel's `--cacert`/`--cert`/`--key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle (PEM) that signed etcd's server certificate [default: the system roots].
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for etcd's `--client-cert-auth`.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// Build the TLS client configuration; every problem names the file.
    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector, EtcdError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |path: &std::path::Path, what: String| {
            EtcdError::Tls(format!("{}: {what}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(path, e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(path, e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad(path, "no certificate in the file".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| bad(path, e.to_string()))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EtcdError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad(cert, e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(cert, e.to_string()))?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad(cert, e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(EtcdError::Tls(
                    "a client certificate needs both --etcd-certfile and --etcd-keyfile".into(),
                ));
            }
        };
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )))
    }
}

/// A connection to etcd, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a unary request may take, all endpoints together.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// Accepts etcd's int64-as-string as well as plain numbers.
fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        N(i64),
        S(String),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

impl RawKv {
    fn decode(self, path: &'static str) -> Result<Kv, EtcdError> {
        let b64 = |s: &str| {
            B64.decode(s)
                .map_err(|source| EtcdError::Base64 { path, source })
        };
        Ok(Kv {
            key: String::from_utf8_lossy(&b64(&self.key)?).into_owned(),
            value: b64(&self.value)?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
}

#[derive(Debug, Deserialize)]
struct LeaseResponse {
    #[serde(rename = "ID", default, deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int")]
    ttl: i64,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResponse {
    #[serde(default)]
    result: Option<LeaseResponse>,
}

#[derive(Debug, Deserialize)]
struct WatchChunk {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    canceled: bool,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    kv: RawKv,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// The range end that makes a range request cover every key starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return B64.encode(&end);
        }
    }
    // An all-0xff (or empty) prefix: "\0" means "to the end of the keyspace".
    B64.encode([0u8])
}

impl Client {
    /// A client for one `endpoint` (`http://127.0.0.1:2379`, `127.0.0.1:2379`, or `https://...` with the system roots).
    pub fn new(endpoint: &str) -> Result<Self, EtcdError> {
        Self::with_endpoints(&[endpoint])
    }

    /// A client for the members of one etcd cluster (`https://` ones with the system roots).
    pub fn with_endpoints(endpoints: &[&str]) -> Result<Self, EtcdError> {
        Self::connect_to(endpoints, None)
    }

    /// A client for the members of one etcd cluster; `https://` endpoints need `tls`.
    pub fn connect_to(endpoints: &[&str], tls: Option<&TlsFiles>) -> Result<Self, EtcdError> {
        let mut addrs = Vec::new();
        let mut https = None;
        for endpoint in endpoints {
            let (secure, rest) = match (
                endpoint.strip_prefix("https://"),
                endpoint.strip_prefix("http://"),
            ) {
                (Some(r), _) => (true, r),
                (_, Some(r)) => (false, r),
                _ => (tls.is_some(), *endpoint),
            };
            let addr = rest.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') || https.is_some_and(|h| h != secure) {
                return Err(EtcdError::Endpoint(endpoint.to_string()));
            }
            https = Some(secure);
            addrs.push(addr.to_string());
        }
        if addrs.is_empty() {
            return Err(EtcdError::Endpoint(String::new()));
        }
        let tls = match (https, tls) {
            (Some(true), Some(files)) => Some(files.connector()?),
            (Some(true), None) => Some(TlsFiles::default().connector()?),
            _ => None,
        };
        Ok(Client {
            addrs,
            current: Default::default(),
            tls,
            idle: Default::default(),
            auth: None,
            opened: Default::default(),
        })
    }

    /// The same client authenticating as `creds` (etcd's Authenticate; the token goes in the
    /// `Authorization` header of every request and is renewed when etcd refuses it).
    pub fn with_auth(mut self, creds: Credentials) -> Self {
        self.auth = Some(std::sync::Arc::new(Auth {
            user: creds.user,
            password: creds.password,
            token: tokio::sync::Mutex::new(None),
        }));
        self.idle = Default::default();
        self
    }

    /// How many connections unary requests have opened so far.
    pub fn connections_opened(&self) -> usize {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A connection to the first endpoint that takes one, starting with the last that did.
    async fn connect(&self) -> Result<(Box<dyn Io>, String), EtcdError> {
        let (tcp, addr) = self.connect_tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok((Box::new(tcp), addr));
        };
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| EtcdError::Tls(format!("{addr}: {e}")))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| EtcdError::Tls(format!("{addr}: TLS handshake timed out")))?
            .map_err(|e| EtcdError::Tls(format!("{addr}: {e}")))?;
        Ok((Box::new(stream), addr))
    }

    async fn connect_tcp(&self) -> Result<(TcpStream, String), EtcdError> {
        use std::sync::atomic::Ordering;
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.addrs.len() {
            let n = (start + i) % self.addrs.len();
            let addr = &self.addrs[n];
            let res = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
            match res {
                Ok(Ok(stream)) => {
                    self.current.store(n, Ordering::Relaxed);
                    return Ok((stream, addr.clone()));
                }
                Ok(Err(source)) => last = Some((addr.clone(), source)),
                Err(_) => {
                    last = Some((
                        addr.clone(),
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                    ))
                }
            }
        }
        let (addr, source) = last.expect("at least one endpoint");
        Err(EtcdError::Connect { addr, source })
    }

    /// A fresh HTTP/1.1 connection to an endpoint, driven by a task of its own.
    async fn open(&self, path: &'static str) -> Result<Conn, EtcdError> {
        let (stream, addr) = self.connect().await?;
        let http = http1::Conn::handshake(stream)
            .await
            .map_err(|source| EtcdError::Http { path, source })?;
        Ok(Conn { addr, http })
    }

    /// An idle kept-alive connection, if one is still open.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if c.http.is_reusable() {
                return Some(c);
            }
        }
        None
    }

    /// Keep `c` for the next request (at most [`MAX_IDLE`] of them; the rest are closed).
    fn put_idle(&self, c: Conn) {
        if c.http.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    fn request(
        addr: &str,
        path: &'static str,
        body: &Value,
        token: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::post(path)
            .header("host", addr)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        req.body(Full::new(Bytes::from(body.to_string())))
            .expect("static request parts are valid")
    }

    /// One request and its whole answer over `c`. The error says whether any answer came:
    /// `Err((false, _))` means etcd sent nothing, so it did not take the request.
    async fn round_trip(
        c: &mut Conn,
        path: &'static str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(u16, Bytes), (bool, hyper::Error)> {
        let request = Self::request(&c.addr, path, body, token);
        let resp = c.http.send(request).await.map_err(|e| (false, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| (true, e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// One unary request: over a kept-alive connection when there is one, else a fresh one,
    /// kept for the next. A kept-alive connection that fails before any answer (etcd closed it
    /// while idle: EOF or reset) did not deliver the request, which then goes out once more on a
    /// fresh connection, as Go's and hyper's pooling clients do.
    async fn exchange(
        &self,
        path: &'static str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<(u16, Bytes), EtcdError> {
        if let Some(mut c) = self.take_idle() {
            match Self::round_trip(&mut c, path, body, token).await {
                Ok(r) => {
                    self.put_idle(c);
                    return Ok(r);
                }
                Err((false, _)) => {}
                Err((true, source)) => return Err(EtcdError::Http { path, source }),
            }
        }
        let mut c = self.open(path).await?;
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = Self::round_trip(&mut c, path, body, token)
            .await
            .map_err(|(_, source)| EtcdError::Http { path, source })?;
        self.put_idle(c);
        Ok(r)
    }

    /// The auth token to send, authenticating first when there is none yet.
    async fn token(&self) -> Result<Option<String>, EtcdError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let mut token = auth.token.lock().await;
        if let Some(t) = &*token {
            return Ok(Some(t.clone()));
        }
        const PATH: &str = "/v3/auth/authenticate";
        let body = json!({ "name": auth.user, "password": auth.password });
        let (status, bytes) = self.exchange(PATH, &body, None).await?;
        if !(200..300).contains(&status) {
            return Err(EtcdError::Auth(format!(
                "user {:?} was refused ({}); check --etcd-username and --etcd-password-file",
                auth.user,
                etcd_message(&bytes)
            )));
        }
        #[derive(Deserialize)]
        struct AuthResponse {
            #[serde(default)]
            token: String,
        }
        let r: AuthResponse = serde_json::from_slice(&bytes)
            .map_err(|source| EtcdError::Decode { path: PATH, source })?;
        if r.token.is_empty() {
            return Err(EtcdError::Auth(
                "etcd answered the authentication without a token (is auth enabled?)".into(),
            ));
        }
        *token = Some(r.token.clone());
        Ok(Some(r.token))
    }

    /// Whether etcd refused the token (expired, or the auth store changed): authenticate again.
    async fn token_refused(&self, status: u16, body: &[u8]) -> bool {
        let Some(auth) = &self.auth else {
            return false;
        };
        let msg = String::from_utf8_lossy(body);
        if status == 401 || msg.contains("invalid auth token") || msg.contains("auth store is old")
        {
            *auth.token.lock().await = None;
            return true;
        }
        false
    }

    /// The error for a non-2xx answer; auth problems named as such.
    fn status_error(&self, path: &'static str, status: u16, body: &[u8]) -> EtcdError {
        let msg = etcd_message(body);
        let user = self.auth.as_ref().map(|a| a.user.as_str());
        if msg.contains("user name is empty") || (user.is_none() && status == 401) {
            return EtcdError::Auth(format!(
                "etcd requires authentication ({msg}); pass --etcd-username and --etcd-password-file"
            ));
        }
        if msg.contains("permission denied") {
            return EtcdError::Auth(format!(
                "user {:?} may not use {path} ({msg}); grant its role read and write on the prefix",
                user.unwrap_or_default()
            ));
        }
        EtcdError::Status {
            path,
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    /// A unary request, authenticated when the client has credentials; the body of a 2xx answer.
    async fn unary(&self, path: &'static str, body: &Value) -> Result<Bytes, EtcdError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let (status, bytes) = self.exchange(path, body, token.as_deref()).await?;
            if (200..300).contains(&status) {
                return Ok(bytes);
            }
            if !retried && self.token_refused(status, &bytes).await {
                retried = true;
                continue;
            }
            return Err(self.status_error(path, status, &bytes));
        }
    }

    /// Start a streaming request (watch, keepalive) on a connection of its own; returns the
    /// response (status checked) and the task driving the connection.
    async fn post(
        &self,
        path: &'static str,
        body: &Value,
    ) -> Result<(Response<Incoming>, ConnTask), EtcdError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let Conn { addr, mut http } = self.open(path).await?;
            let resp = http
                .send(Self::request(&addr, path, body, token.as_deref()))
                .await
                .map_err(|source| EtcdError::Http { path, source })?;
            if resp.status().is_success() {
                return Ok((resp, http.into_task()));
            }
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if !retried && self.token_refused(status, &bytes).await {
                retried = true;
                continue;
            }
            return Err(self.status_error(path, status, &bytes));
        }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        path: &'static str,
        body: Value,
    ) -> Result<T, EtcdError> {
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, self.unary(path, &body))
            .await
            .map_err(|_| EtcdError::Timeout(path))??;
        serde_json::from_slice(&bytes).map_err(|source| EtcdError::Decode { path, source })
    }

    /// The key `key`, or every key under it with `prefix`; plus the store's revision.
    pub async fn range(&self, key: &str, prefix: bool) -> Result<(Vec<Kv>, i64), EtcdError> {
        const PATH: &str = "/v3/kv/range";
        let mut body = json!({ "key": b64(key) });
        if prefix {
            body["range_end"] = json!(prefix_end(key));
        }
        let r: RangeResponse = self.call(PATH, body).await?;
        let kvs = r
            .kvs
            .into_iter()
            .map(|kv| kv.decode(PATH))
            .collect::<Result<_, _>>()?;
        Ok((kvs, r.header.revision))
    }

    /// Put `value` at `key`, attached to `lease` (0: none).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let body =
            json!({ "key": b64(key), "value": B64.encode(value), "lease": lease.to_string() });
        self.call::<Value>("/v3/kv/put", body).await.map(drop)
    }

    /// Put `value` at `key` on `lease` only if `cond` holds, in one transaction. Returns whether it did.
    pub async fn put_if(
        &self,
        key: &str,
        value: &[u8],
        lease: i64,
        cond: Cond,
    ) -> Result<bool, EtcdError> {
        let compare = match cond {
            Cond::Absent => {
                json!({ "key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0" })
            }
            Cond::ModRevision(rev) => {
                json!({ "key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string() })
            }
        };
        let put = json!({ "request_put": { "key": b64(key), "value": B64.encode(value), "lease": lease.to_string() } });
        let body = json!({ "compare": [compare], "success": [put] });
        let r: TxnResponse = self.call("/v3/kv/txn", body).await?;
        Ok(r.succeeded)
    }

    /// A transaction: when every comparison holds, run every operation. Returns whether it did.
    pub async fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<bool, EtcdError> {
        let compare: Vec<Value> = compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => {
                    json!({ "key": b64(k), "target": "CREATE", "result": "EQUAL", "create_revision": "0" })
                }
                Compare::ModRevision(k, rev) => {
                    json!({ "key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string() })
                }
                Compare::Value(k, v) => {
                    json!({ "key": b64(k), "target": "VALUE", "result": "EQUAL", "value": B64.encode(v) })
                }
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|o| match o {
                Op::Put(k, v, lease) => {
                    json!({ "request_put": { "key": b64(k), "value": B64.encode(v), "lease": lease.to_string() } })
                }
                Op::Delete(k) => json!({ "request_delete_range": { "key": b64(k) } }),
            })
            .collect();
        let r: TxnResponse = self
            .call(
                "/v3/kv/txn",
                json!({ "compare": compare, "success": success }),
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Grant a lease of `ttl` seconds; returns its ID.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let r: LeaseResponse = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        Ok(r.id)
    }

    /// Refresh a lease once; returns its new TTL, or [`EtcdError::LeaseGone`] if it has expired.
    pub async fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.keepalive_once(id))
            .await
            .map_err(|_| EtcdError::Timeout("/v3/lease/keepalive"))?
    }

    async fn keepalive_once(&self, id: i64) -> Result<i64, EtcdError> {
        // The gateway streams keepalive responses; one request gets one response and the
        // connection is closed when we drop it.
        const PATH: &str = "/v3/lease/keepalive";
        let (resp, _conn) = self.post(PATH, &json!({ "ID": id.to_string() })).await?;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| EtcdError::Http { path: PATH, source })?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
            }
            let mut it =
                serde_json::Deserializer::from_slice(&buf).into_iter::<KeepAliveResponse>();
            match it.next() {
                Some(Ok(r)) => {
                    let ttl = r.result.map(|r| r.ttl).unwrap_or(0);
                    return if ttl > 0 {
                        Ok(ttl)
                    } else {
                        Err(EtcdError::LeaseGone(id))
                    };
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(EtcdError::Decode {
                        path: PATH,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Err(EtcdError::LeaseGone(id))
    }

    /// Revoke a lease: every key on it goes at once. An expired lease is success.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self
            .call::<Value>("/v3/lease/revoke", json!({ "ID": id.to_string() }))
            .await
        {
            Err(EtcdError::Status { body, .. }) if body.contains("not found") => Ok(()),
            r => r.map(drop),
        }
    }

    /// Watch every key under `prefix`, starting at revision `start` (0: from now).
    pub async fn watch(&self, prefix: &str, start: i64) -> Result<Watcher, EtcdError> {
        const PATH: &str = "/v3/watch";
        let mut req = json!({ "key": b64(prefix), "range_end": prefix_end(prefix) });
        if start > 0 {
            req["start_revision"] = json!(start.to_string());
        }
        let body = json!({ "create_request": req });
        let (resp, conn) = tokio::time::timeout(REQUEST_TIMEOUT, self.post(PATH, &body))
            .await
            .map_err(|_| EtcdError::Timeout(PATH))??;
        Ok(Watcher {
            body: resp.into_body(),
            buf: Vec::new(),
            _conn: conn,
        })
    }
}

/// One HTTP/1.1 connection to etcd.
struct Conn {
    addr: String,
    http: http1::Conn,
}

/// How many idle connections a client keeps for the next requests.
const MAX_IDLE: usize = 4;

/// The message of a gRPC gateway error body (`{"error": ..., "code": ..., "message": ...}`).
fn etcd_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(|m| m.trim_start_matches("etcdserver: ").to_string())
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// User and password for etcd's auth (`etcdctl --user`); the password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `user` with the password in `path` (its first line). The file must be a regular file
    /// that neither group nor others can access, as any other secret skiffd reads.
    pub fn from_file(user: &str, path: &std::path::Path) -> Result<Self, EtcdError> {
        use std::os::unix::fs::PermissionsExt;
        let bad = |what: String| EtcdError::Auth(format!("{}: {what}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets other users read the etcd password; chmod 600 it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let password = text.lines().next().unwrap_or_default().to_string();
        if user.is_empty() || password.is_empty() {
            return Err(bad("empty user or password".into()));
        }
        Ok(Credentials {
            user: user.to_string(),
            password,
        })
    }
}

/// Credentials and the token they got (no Debug: it holds the password).
struct Auth {
    user: String,
    password: String,
    token: tokio::sync::Mutex<Option<String>>,
}

/// A running watch. Dropping it closes the stream.
#[derive(Debug)]
pub struct Watcher {
    body: Incoming,
    buf: Vec<u8>,
    _conn: ConnTask,
}

impl Watcher {
    /// The next batch of events; `None` when etcd closed the stream.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, EtcdError>> {
        const PATH: &str = "/v3/watch";
        loop {
            // The gateway sends one JSON object per message; a message may span frames.
            let (parsed, used) = {
                let mut it =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<WatchChunk>();
                match it.next() {
                    Some(Ok(c)) => (Some(Ok(c)), it.byte_offset()),
                    Some(Err(e)) if e.is_eof() => (None, 0),
                    Some(Err(e)) => (Some(Err(e)), 0),
                    None => (None, 0),
                }
            };
            match parsed {
                Some(Ok(chunk)) => {
                    self.buf.drain(..used);
                    if let Some(err) = chunk.error {
                        return Some(Err(EtcdError::Watch(err.to_string())));
                    }
                    let Some(result) = chunk.result else { continue };
                    if result.canceled {
                        return Some(Err(EtcdError::Watch(
                            "canceled by etcd (compacted?)".into(),
                        )));
                    }
                    // The "created" acknowledgement carries no events; skip it.
                    if result.events.is_empty() {
                        continue;
                    }
                    let events = result
                        .events
                        .into_iter()
                        .map(|e| {
                            let kv = e.kv.decode(PATH)?;
                            Ok(match e.kind.as_deref() {
                                Some("DELETE") => Event::Delete(kv),
                                _ => Event::Put(kv),
                            })
                        })
                        .collect();
                    return Some(events);
                }
                Some(Err(source)) => return Some(Err(EtcdError::Decode { path: PATH, source })),
                None => {}
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Err(source) => return Some(Err(EtcdError::Http { path: PATH, source })),
            }
        }
    }
}

/// A subnet held by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetLease {
    /// The node's subnet.
    pub subnet: Ipv4Net,
    /// What was published for it.
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is on; renew it with [`renew`].
    pub lease_id: i64,
    /// The lease's TTL in seconds.
    pub ttl: i64,
}

/// A change to the set of subnet leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A node took or updated a subnet.
    Added(Ipv4Net, LeaseAttrs),
    /// A subnet's lease went (expired or released).
    Removed(Ipv4Net),
}

/// Store the network config at `<prefix>/network/config`.
pub async fn put_config(c: &Client, prefix: &str, cfg: &NetworkConfig) -> Result<(), EtcdError> {
    let value = serde_json::to_vec(cfg).expect("config serializes");
    c.put(&lease::config_key(prefix), &value, 0).await
}

/// Read and check the network config.
pub async fn get_config(c: &Client, prefix: &str) -> Result<Resolved, EtcdError> {
    Ok(get_network_config(c, prefix).await?.resolved()?)
}

/// The network config as stored (to keep a copy for starts while etcd is away).
pub async fn get_network_config(c: &Client, prefix: &str) -> Result<NetworkConfig, EtcdError> {
    let key = lease::config_key(prefix);
    let (kvs, _) = c.range(&key, false).await?;
    let kv = kvs
        .into_iter()
        .next()
        .ok_or_else(|| EtcdError::NoConfig(key.clone()))?;
    serde_json::from_slice(&kv.value).map_err(|source| EtcdError::Value { key, source })
}

/// Every subnet lease with its raw record, plus the revision they were read at.
/// Records that are not valid leases are skipped: one bad writer must not stop the cluster.
async fn list_raw(
    c: &Client,
    prefix: &str,
) -> Result<(Vec<(Ipv4Net, LeaseAttrs, Kv)>, i64), EtcdError> {
    let (kvs, rev) = c.range(&subnets_prefix(prefix), true).await?;
    let leases = kvs
        .into_iter()
        .filter_map(|kv| {
            let subnet = subnet_of_key(prefix, &kv.key)?;
            let attrs = serde_json::from_slice(&kv.value).ok()?;
            Some((subnet, attrs, kv))
        })
        .collect();
    Ok((leases, rev))
}

/// Every current subnet lease, plus the revision to start a [`watch_leases`] from.
pub async fn list_leases(
    c: &Client,
    prefix: &str,
) -> Result<(Vec<(Ipv4Net, LeaseAttrs)>, i64), EtcdError> {
    let (leases, rev) = list_raw(c, prefix).await?;
    Ok((leases.into_iter().map(|(s, a, _)| (s, a)).collect(), rev))
}

/// Take a subnet for `attrs.public_ip` on a fresh etcd lease of `ttl` seconds.
///
/// The subnet this PublicIP already holds is taken over (a restarted node keeps it), else
/// `previous` if free, else the lowest free one. Each choice is committed with a transaction
/// conditioned on what was read, so two nodes racing never end up with the same subnet: the
/// loser re-reads and tries again.
pub async fn acquire(
    c: &Client,
    prefix: &str,
    cfg: &Resolved,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Net>,
    ttl: i64,
) -> Result<SubnetLease, EtcdError> {
    let lease_id = c.grant(ttl).await?;
    let value = serde_json::to_vec(attrs).expect("lease attrs serialize");
    for _ in 0..MAX_CONFLICTS {
        let (leases, _) = list_raw(c, prefix).await?;
        let taken: Vec<_> = leases.iter().map(|(s, a, _)| (*s, a.clone())).collect();
        let (subnet, cond) = match lease::pick(cfg, &taken, attrs.public_ip, previous)? {
            Pick::Existing(s) => {
                let rev = leases
                    .iter()
                    .find(|(t, _, _)| *t == s)
                    .map(|(_, _, kv)| kv.mod_revision);
                (s, Cond::ModRevision(rev.unwrap_or(0)))
            }
            Pick::Free(s) => (s, Cond::Absent),
        };
        if c.put_if(&subnet_key(prefix, subnet), &value, lease_id, cond)
            .await?
        {
            return Ok(SubnetLease {
                subnet,
                attrs: attrs.clone(),
                lease_id,
                ttl,
            });
        }
        tracing::debug!(%subnet, "lost the race for a subnet; re-reading");
        #[cfg(test)]
        tests::LOST_RACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = c.revoke(lease_id).await;
    Err(EtcdError::Contention(MAX_CONFLICTS))
}

/// Renew a subnet lease once (call it every TTL/3 or so). [`EtcdError::LeaseGone`] means the
/// subnet was lost: acquire again, passing the old subnet as `previous`.
pub async fn renew(c: &Client, lease: &SubnetLease) -> Result<(), EtcdError> {
    c.keepalive(lease.lease_id).await.map(drop)
}

/// Give a subnet back at once (orderly shutdown), instead of waiting for its TTL.
pub async fn release(c: &Client, lease: &SubnetLease) -> Result<(), EtcdError> {
    c.revoke(lease.lease_id).await
}

/// Lease changes after revision `after` (from [`list_leases`]).
pub struct LeaseWatcher {
    inner: Watcher,
    prefix: String,
}

/// Watch subnet leases come and go, starting after revision `after`.
pub async fn watch_leases(c: &Client, prefix: &str, after: i64) -> Result<LeaseWatcher, EtcdError> {
    let inner = c.watch(&subnets_prefix(prefix), after + 1).await?;
    Ok(LeaseWatcher {
        inner,
        prefix: prefix.to_string(),
    })
}

impl LeaseWatcher {
    /// The next batch of lease changes; `None` when the stream ended (re-list and watch again).
    pub async fn next(&mut self) -> Option<Result<Vec<LeaseEvent>, EtcdError>> {
        let events = match self.inner.next().await? {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        let out = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Put(kv) => {
                    let subnet = subnet_of_key(&self.prefix, &kv.key)?;
                    let attrs = serde_json::from_slice(&kv.value).ok()?;
                    Some(LeaseEvent::Added(subnet, attrs))
                }
                Event::Delete(kv) => subnet_of_key(&self.prefix, &kv.key).map(LeaseEvent::Removed),
            })
            .collect();
        Some(Ok(out))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    const ETCD: &str = "/usr/bin/etcd";

    /// Races [`acquire`] lost, so the racing test can show it really raced.
    pub(super) static LOST_RACES: std::sync::atomic::AtomicU32 =
        std::sync::atomic::AtomicU32::new(0);

    /// A throwaway single-member etcd on loopback, killed on drop.
    pub(crate) struct Etcd {
        child: Child,
        _dir: tempfile::TempDir,
        pub(crate) url: String,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Etcd {
        /// Start etcd, or `None` (with a message) when it is not installed.
        pub(crate) async fn start() -> Option<Etcd> {
            Self::start_with(None).await
        }

        /// Start etcd serving TLS with the certificates in `tls` (see [`make_certs`]), with
        /// client certificate auth.
        pub(crate) async fn start_with(tls: Option<&Path>) -> Option<Etcd> {
            if !Path::new(ETCD).exists() {
                eprintln!("SKIPPED: {ETCD} is missing (apt-get install etcd-server)");
                if std::env::var_os("CI").is_some() {
                    panic!("etcd must be installed in CI");
                }
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let (cp, pp) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{cp}");
            let peer = format!("http://127.0.0.1:{pp}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let child = Command::new(ETCD)
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("t={peer}")])
                .args(
                    tls.map(|d| {
                        vec![
                            format!("--cert-file={}", d.join("server.pem").display()),
                            format!("--key-file={}", d.join("server-key.pem").display()),
                            format!("--trusted-ca-file={}", d.join("ca.pem").display()),
                            "--client-cert-auth".to_string(),
                        ]
                    })
                    .unwrap_or_default(),
                )
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let etcd = Etcd {
                child,
                _dir: dir,
                url,
            };
            let c = match tls {
                Some(d) => Client::connect_to(&[&etcd.url], Some(&tls_files(d))).unwrap(),
                None => etcd.client(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.range("/ready", false).await.is_err() {
                assert!(Instant::now() < deadline, "etcd did not come up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(etcd)
        }

        pub(crate) fn client(&self) -> Client {
            Client::new(&self.url).unwrap()
        }
    }

    /// The client side of [`make_certs`].
    fn tls_files(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca_file: Some(dir.join("ca.pem")),
            cert_file: Some(dir.join("client.pem")),
            key_file: Some(dir.join("client-key.pem")),
        }
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
    fn make_certs(dir: &Path) {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=skiff-test-ca",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        for who in ["server", "client"] {
            let key = format!("{who}-key.pem");
            let csr = format!("{who}.csr");
            let pem = format!("{who}.pem");
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={who}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                "san.ext",
            ]);
        }
    }

    #[tokio::test]
    async fn tls_with_client_certificates() {
        let certs = tempfile::tempdir().unwrap();
        make_certs(certs.path());
        let Some(etcd) = Etcd::start_with(Some(certs.path())).await else {
            return;
        };
        let c = Client::connect_to(&[&etcd.url], Some(&tls_files(certs.path()))).unwrap();
        c.put("/tls/k", b"v", 0).await.unwrap();
        let (kvs, _) = c.range("/tls/k", false).await.unwrap();
        assert_eq!(kvs[0].value, b"v");
        // Without a client certificate etcd refuses the connection.
        let anon = TlsFiles {
            ca_file: Some(certs.path().join("ca.pem")),
            ..Default::default()
        };
        let c = Client::connect_to(&[&etcd.url], Some(&anon)).unwrap();
        assert!(c.range("/tls/k", false).await.is_err());
        // A CA that did not sign the server's certificate is refused by us.
        let other = tempfile::tempdir().unwrap();
        make_certs(other.path());
        let c = Client::connect_to(&[&etcd.url], Some(&tls_files(other.path()))).unwrap();
        let err = c.range("/tls/k", false).await.unwrap_err().to_string();
        assert!(err.contains("TLS") || err.contains("certificate"), "{err}");
        // Half a client certificate is a configuration error naming the flags.
        let half = TlsFiles {
            cert_file: Some(certs.path().join("client.pem")),
            ..Default::default()
        };
        let err = Client::connect_to(&[&etcd.url], Some(&half))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--etcd-keyfile"), "{err}");
    }

    #[tokio::test]
    async fn unary_requests_share_a_kept_alive_connection() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let c = etcd.client();
        for i in 0..20 {
            c.put(&format!("/pool/{i}"), b"v", 0).await.unwrap();
            let (kvs, _) = c.range("/pool/", true).await.unwrap();
            assert_eq!(kvs.len(), i + 1);
        }
        assert_eq!(c.connections_opened(), 1, "40 requests, one connection");
        // Clones share the pool; concurrent requests open what they need and keep a few.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let c = c.clone();
            set.spawn(async move { c.range("/pool/", true).await.map(drop) });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let opened = c.connections_opened();
        assert!(opened <= 3, "{opened}");
        c.range("/pool/", true).await.unwrap();
        assert_eq!(c.connections_opened(), opened, "an idle one was reused");
    }

    /// A TCP forwarder in front of etcd whose connections can be cut (as etcd closing idle
    /// connections, or a restart, would).
    struct Cutter {
        addr: String,
        conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
        _accept: ConnTask,
    }

    impl Cutter {
        async fn start(target: &str) -> Cutter {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let target = target.trim_start_matches("http://").to_string();
            let conns: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
            let c = conns.clone();
            let accept = tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = target.clone();
                    c.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut out) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    }));
                }
            });
            Cutter {
                addr,
                conns,
                _accept: ConnTask::new(accept),
            }
        }

        /// Close every forwarded connection.
        fn cut(&self) {
            for t in self.conns.lock().unwrap().drain(..) {
                t.abort();
            }
        }
    }

    #[tokio::test]
    async fn a_kept_alive_connection_etcd_closed_is_replaced() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let cutter = Cutter::start(&etcd.url).await;
        let c = Client::new(&format!("http://{}", cutter.addr)).unwrap();
        c.put("/cut/a", b"1", 0).await.unwrap();
        c.range("/cut/a", false).await.unwrap();
        assert_eq!(c.connections_opened(), 1);
        // Cut with no await in between: the request finds its kept-alive connection dead
        // (or the connection task noticed first) and goes out again on a fresh one.
        cutter.cut();
        let (kvs, _) = c.range("/cut/a", false).await.unwrap();
        assert_eq!(kvs[0].value, b"1");
        assert_eq!(
            c.connections_opened(),
            2,
            "a fresh connection replaced the cut one"
        );
        c.range("/cut/a", false).await.unwrap();
        assert_eq!(c.connections_opened(), 2);
    }

    /// Turn etcd's auth on with a `root` user (what `etcdctl user add root; etcdctl auth
    /// enable` do, over the gateway).
    pub(crate) async fn enable_auth(c: &Client, password: &str) {
        let call = |path: &'static str, body: Value| async move {
            c.call::<Value>(path, body).await.unwrap();
        };
        call(
            "/v3/auth/user/add",
            json!({ "name": "root", "password": password }),
        )
        .await;
        call("/v3/auth/role/add", json!({ "name": "root" })).await;
        call(
            "/v3/auth/user/grant",
            json!({ "user": "root", "role": "root" }),
        )
        .await;
        call("/v3/auth/enable", json!({})).await;
    }

    #[tokio::test]
    async fn password_auth() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        enable_auth(&etcd.client(), "s3cret").await;
        let creds = |password: &str| Credentials {
            user: "root".into(),
            password: password.into(),
        };
        let c = etcd.client().with_auth(creds("s3cret"));
        c.put("/auth/k", b"v", 0).await.unwrap();
        assert_eq!(c.range("/auth/k", false).await.unwrap().0[0].value, b"v");
        // Streams carry the token too: a watch and a lease keepalive.
        let mut w = c.watch("/auth/", 0).await.unwrap();
        c.put("/auth/w", b"x", 0).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(&got[0], Event::Put(kv) if kv.key == "/auth/w"));
        let id = c.grant(10).await.unwrap();
        assert!(c.keepalive(id).await.unwrap() > 0);
        // A token etcd no longer knows is replaced by a fresh one.
        if let Some(a) = &c.auth {
            *a.token.lock().await = Some("stale.token".into());
        }
        c.range("/auth/k", false).await.unwrap();

        let err = etcd
            .client()
            .with_auth(creds("wrong"))
            .range("/auth/k", false)
            .await
            .unwrap_err();
        assert!(matches!(err, EtcdError::Auth(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("etcd auth: user \"root\" was refused")
                && msg.contains("--etcd-password-file"),
            "{msg}"
        );
        let err = etcd.client().range("/auth/k", false).await.unwrap_err();
        assert!(
            err.to_string().contains("etcd requires authentication"),
            "{err}"
        );
    }

    #[test]
    fn password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Credentials::from_file("root", &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mode 0640") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::from_file("root", &path).unwrap();
        assert_eq!(c.password, "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = Credentials::from_file("root", &dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn node(i: u8) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 77, i),
            1,
            format!("02:00:00:00:00:{i:02x}"),
        )
    }

    async fn setup(c: &Client) -> Resolved {
        put_config(c, "/skiff", &NetworkConfig::vxlan(net("10.244.0.0/16")))
            .await
            .unwrap();
        get_config(c, "/skiff").await.unwrap()
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(B64.decode(prefix_end("/a/")).unwrap(), b"/a0");
        assert_eq!(B64.decode(prefix_end("")).unwrap(), b"\0");
    }

    #[tokio::test]
    async fn kv_and_txn_basics() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let c = etcd.client();
        assert!(matches!(
            get_config(&c, "/skiff").await,
            Err(EtcdError::NoConfig(_))
        ));
        c.put("/t/a", b"1", 0).await.unwrap();
        assert!(!c.put_if("/t/a", b"2", 0, Cond::Absent).await.unwrap());
        let (kvs, _) = c.range("/t/", true).await.unwrap();
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].value, b"1");
        assert!(
            c.put_if("/t/a", b"3", 0, Cond::ModRevision(kvs[0].mod_revision))
                .await
                .unwrap()
        );
        assert!(
            !c.put_if("/t/a", b"4", 0, Cond::ModRevision(kvs[0].mod_revision))
                .await
                .unwrap()
        );
        assert!(c.put_if("/t/b", b"5", 0, Cond::Absent).await.unwrap());
        let (kvs, _) = c.range("/t/", true).await.unwrap();
        let vals: Vec<_> = kvs.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(vals, [b"3".to_vec(), b"5".to_vec()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_acquirers_never_share_a_subnet() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let c = etcd.client();
        let cfg = setup(&c).await;
        let mut set = tokio::task::JoinSet::new();
        // A barrier lines them up so they read the same free subnets and collide on the txn.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(12));
        for i in 1..=12u8 {
            let (c, cfg, barrier) = (c.clone(), cfg.clone(), barrier.clone());
            set.spawn(async move {
                barrier.wait().await;
                acquire(&c, "/skiff", &cfg, &node(i), None, 30)
                    .await
                    .unwrap()
            });
        }
        let mut subnets = HashSet::new();
        while let Some(l) = set.join_next().await {
            assert!(
                subnets.insert(l.unwrap().subnet),
                "a subnet was handed out twice"
            );
        }
        assert_eq!(subnets.len(), 12);
        // Other tests share the counter but never race, so anything here came from this one.
        assert!(
            LOST_RACES.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the acquirers never actually raced"
        );
        let (leases, _) = list_leases(&c, "/skiff").await.unwrap();
        assert_eq!(leases.len(), 12);
        let ips: HashSet<_> = leases.iter().map(|(_, a)| a.public_ip).collect();
        assert_eq!(ips.len(), 12);
    }

    #[tokio::test]
    async fn lease_expires_after_ttl_unless_renewed_and_watch_sees_it() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let c = etcd.client();
        let cfg = setup(&c).await;
        let (_, rev) = list_leases(&c, "/skiff").await.unwrap();
        let mut w = watch_leases(&c, "/skiff", rev).await.unwrap();
        let kept = acquire(&c, "/skiff", &cfg, &node(1), None, 2)
            .await
            .unwrap();
        let lost = acquire(&c, "/skiff", &cfg, &node(2), None, 2)
            .await
            .unwrap();
        assert_ne!(kept.subnet, lost.subnet);

        let got = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, [LeaseEvent::Added(kept.subnet, node(1))]);

        // Renew one for 5 s (2.5x its TTL); the other must be gone by then.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            renew(&c, &kept).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (leases, _) = list_leases(&c, "/skiff").await.unwrap();
        assert_eq!(leases, [(kept.subnet, node(1))]);
        assert!(matches!(
            renew(&c, &lost).await,
            Err(EtcdError::LeaseGone(_))
        ));

        let mut seen = Vec::new();
        while !seen.contains(&LeaseEvent::Removed(lost.subnet)) {
            let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.extend(batch);
        }
        assert_eq!(seen[0], LeaseEvent::Added(lost.subnet, node(2)));

        release(&c, &kept).await.unwrap();
        release(&c, &kept).await.unwrap();
        assert!(list_leases(&c, "/skiff").await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn restarted_node_gets_its_subnet_back() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let c = etcd.client();
        let cfg = setup(&c).await;
        let a = acquire(&c, "/skiff", &cfg, &node(1), None, 30)
            .await
            .unwrap();
        let b = acquire(&c, "/skiff", &cfg, &node(2), None, 30)
            .await
            .unwrap();
        // Restart: same PublicIP, a new VTEP MAC, and no memory of the old lease.
        let mut again = node(1);
        again.backend_data.vtep_mac = "02:00:00:00:01:01".into();
        let a2 = acquire(&c, "/skiff", &cfg, &again, None, 30).await.unwrap();
        assert_eq!(a2.subnet, a.subnet);
        assert_ne!(a2.lease_id, a.lease_id);
        let (mut leases, _) = list_leases(&c, "/skiff").await.unwrap();
        leases.sort_by_key(|(s, _)| *s);
        assert_eq!(leases, [(a.subnet, again.clone()), (b.subnet, node(2))]);
        // The old lease no longer owns the key: revoking it does not remove the subnet.
        c.revoke(a.lease_id).await.unwrap();
        assert_eq!(list_leases(&c, "/skiff").await.unwrap().0.len(), 2);

        // After its lease is gone, `previous` (from subnet.env) brings the same subnet back.
        release(&c, &a2).await.unwrap();
        let c3 = acquire(&c, "/skiff", &cfg, &node(3), Some(net("10.244.7.0/24")), 30)
            .await
            .unwrap();
        assert_eq!(c3.subnet, net("10.244.7.0/24"));
        let a3 = acquire(&c, "/skiff", &cfg, &again, Some(a.subnet), 30)
            .await
            .unwrap();
        assert_eq!(a3.subnet, a.subnet);
    }
}
