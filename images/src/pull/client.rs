//! HTTP(S) to registries: one hyper client per TLS trust setting, timeouts on every step,
//! authentication challenges and redirects.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tracing::debug;

use super::auth::{Credential, parse_challenge};
use super::hosts::{Endpoint, TlsSettings};
use super::proxy::{ForwardConnector, Proxies, Route};
use super::{PullError, Timeouts};

/// A client for one route: the connector types differ, the requests do not.
#[derive(Clone)]
enum HttpClient {
    Direct(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
    Tunnel(Client<HttpsConnector<Tunnel<HttpConnector>>, Empty<Bytes>>),
    Forward(Client<ForwardConnector, Empty<Bytes>>),
}

impl HttpClient {
    fn request(&self, req: Request<Empty<Bytes>>) -> ResponseFuture {
        match self {
            HttpClient::Direct(c) => c.request(req),
            HttpClient::Tunnel(c) => c.request(req),
            HttpClient::Forward(c) => c.request(req),
        }
    }
}

const MAX_REDIRECTS: usize = 5;
const USER_AGENT: &str = concat!("skiff/", env!("CARGO_PKG_VERSION"));

/// Clients by TLS settings and route, created on first use.
pub(crate) struct Transport {
    clients: Mutex<HashMap<(TlsSettings, Route), HttpClient>>,
    proxies: Proxies,
    pub(crate) timeouts: Timeouts,
}

impl Transport {
    pub(crate) fn new(timeouts: Timeouts, proxies: Proxies) -> Transport {
        Transport {
            clients: Mutex::new(HashMap::new()),
            proxies,
            timeouts,
        }
    }

    fn client(
        &self,
        tls: &TlsSettings,
        route: &Route,
        authority: &str,
    ) -> Result<HttpClient, PullError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tls.clone(), route.clone());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls_config = || {
            tls_config(tls).map_err(|reason| PullError::Tls {
                authority: authority.to_owned(),
                reason,
            })
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.timeouts.connect));
        http.set_nodelay(true);
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(Duration::from_secs(30));
            b
        };
        let client = match route {
            Route::Direct => HttpClient::Direct(
                builder().build(
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls_config()?)
                        .https_or_http()
                        .enable_http1()
                        .wrap_connector(http),
                ),
            ),
            Route::Tunnel(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri.clone(), http);
                if let Some(auth) = &proxy.auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                HttpClient::Tunnel(
                    builder().build(
                        hyper_rustls::HttpsConnectorBuilder::new()
                            .with_tls_config(tls_config()?)
                            .https_only()
                            .enable_http1()
                            .wrap_connector(tunnel),
                    ),
                )
            }
            Route::Forward(proxy) => HttpClient::Forward(builder().build(ForwardConnector {
                http,
                proxy: proxy.uri.clone(),
            })),
        };
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Sends a GET and waits (bounded) for the response head.
    async fn send(
        &self,
        url: &str,
        tls: &TlsSettings,
        headers: &[(header::HeaderName, String)],
    ) -> Result<Response<Incoming>, PullError> {
        let uri: hyper::Uri = url.parse().map_err(|e| PullError::Protocol {
            url: url.to_owned(),
            reason: format!("invalid URL: {e}"),
        })?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let route = self.proxies.route(&uri);
        debug!(url, ?route, "registry request");
        let client = self.client(tls, &route, &authority)?;
        let mut req = Request::get(uri).header(header::USER_AGENT, USER_AGENT);
        if let Route::Forward(proxy) = &route
            && let Some(auth) = &proxy.auth
        {
            // A forwarded request carries the proxy's credentials itself (a tunnel sends them
            // once, with its CONNECT).
            req = req.header(header::PROXY_AUTHORIZATION, auth.clone());
        }
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Empty::new()).map_err(|e| PullError::Protocol {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let after = self.timeouts.response;
        match tokio::time::timeout(after, client.request(req)).await {
            Err(_) => Err(PullError::Timeout {
                url: url.to_owned(),
                what: "response",
                after,
            }),
            Ok(Err(e)) => Err(PullError::Connect {
                url: url.to_owned(),
                reason: error_chain(&e),
            }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// `err: cause: cause`, since hyper's top-level messages ("client error (Connect)") say little.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let msg = e.to_string();
        if !s.contains(&msg) {
            let _ = write!(s, ": {msg}");
        }
        source = e.source();
    }
    s
}

fn tls_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if tls.skip_verify {
        return no_verify_config().map_err(|e| e.to_string());
    }
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if native.certs.is_empty() {
        debug!(errors = ?native.errors, "no system CA certificates found");
    }
    roots.add_parsable_certificates(native.certs);
    for path in &tls.ca_files {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("CA file {}: no PEM certificates", path.display()));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A TLS client configuration that accepts any server certificate while still checking the
/// handshake's signatures: a registry's `skip_verify`, and HTTPS probes (the kubelet's prober
/// does not verify either: probes check liveness, not identity). The one such verifier of skiff.
pub fn no_verify_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    )
}

/// Accepts any server certificate, still checking handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Talks to one repository on one endpoint, keeping the authorization it obtained.
pub(crate) struct Session {
    transport: Arc<Transport>,
    pub(crate) endpoint: Endpoint,
    /// The registry as references name it (`docker.io`), for messages.
    pub(crate) registry: String,
    pub(crate) repository: String,
    credentials: Vec<Credential>,
    authorization: Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

impl Session {
    pub(crate) fn new(
        transport: Arc<Transport>,
        endpoint: Endpoint,
        registry: String,
        repository: String,
        credentials: Vec<Credential>,
    ) -> Session {
        Session {
            transport,
            endpoint,
            registry,
            repository,
            credentials,
            authorization: Mutex::new(None),
        }
    }

    pub(crate) fn timeouts(&self) -> &Timeouts {
        &self.transport.timeouts
    }

    /// GET `/v2/<repository>/<path>`, answering an authentication challenge and following
    /// redirects (blob storage backends). Any status is returned except 401, which becomes
    /// [`PullError::Unauthorized`] once the credentials are exhausted.
    pub(crate) async fn get(
        &self,
        path: &str,
        extra: &[(header::HeaderName, String)],
    ) -> Result<Response<Incoming>, PullError> {
        let start = self.endpoint.url(&format!("{}/{path}", self.repository));
        let mut url = start.clone();
        let mut auth_attempts = 0usize;
        let mut redirects = 0usize;
        loop {
            let same_host = url == start;
            let mut headers = extra.to_vec();
            if same_host && let Some(a) = self.current_auth() {
                headers.push((header::AUTHORIZATION, a));
            }
            let resp = self
                .transport
                .send(&url, &self.endpoint.tls, &headers)
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_host {
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let Some(challenge) = challenge else {
                    return Err(self.unauthorized("401 without a WWW-Authenticate challenge"));
                };
                // Attempt n uses the n-th matching credential; a bearer challenge is first
                // tried anonymously when there are none.
                let cred = self.credentials.get(auth_attempts);
                let exhausted = || {
                    self.unauthorized(if self.credentials.is_empty() {
                        "authentication required and no credentials are configured for this registry"
                    } else {
                        "the registry rejected the credentials"
                    })
                };
                let auth = match (challenge.scheme.as_str(), cred) {
                    ("basic", Some(c)) => c.basic_header(),
                    ("basic", None) => return Err(exhausted()),
                    ("bearer", None) if auth_attempts > 0 => return Err(exhausted()),
                    ("bearer", cred) => {
                        let token = self.fetch_token(&challenge.params, cred).await?;
                        format!("Bearer {token}")
                    }
                    (other, _) => {
                        return Err(self
                            .unauthorized(&format!("unsupported authentication scheme {other}")));
                    }
                };
                *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(auth);
                auth_attempts += 1;
                continue;
            }
            if status.is_redirection()
                && let Some(location) = resp.headers().get(header::LOCATION)
            {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(PullError::Protocol {
                        url,
                        reason: "too many redirects".into(),
                    });
                }
                url = resolve_location(&url, location)?;
                debug!(%url, "following redirect");
                continue;
            }
            return Ok(resp);
        }
    }

    fn current_auth(&self) -> Option<String> {
        self.authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn unauthorized(&self, reason: &str) -> PullError {
        PullError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Asks the token service named by a bearer challenge for a pull token.
    async fn fetch_token(
        &self,
        params: &std::collections::BTreeMap<String, String>,
        cred: Option<&Credential>,
    ) -> Result<String, PullError> {
        let realm = params
            .get("realm")
            .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
            .ok_or_else(|| self.unauthorized("bearer challenge without an http(s) realm"))?;
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut url = realm.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        if let Some(service) = params.get("service") {
            let _ = write!(url, "service={}&", query_escape(service));
        }
        let _ = write!(url, "scope={}", query_escape(&scope));
        let mut headers = Vec::new();
        if let Some(c) = cred {
            headers.push((header::AUTHORIZATION, c.basic_header()));
        }
        let resp = self
            .transport
            .send(&url, &self.endpoint.tls, &headers)
            .await?;
        let status = resp.status();
        let body = read_body(resp, 1 << 20, &url, self.timeouts().idle).await?;
        if !status.is_success() {
            return Err(self.unauthorized(&format!(
                "token service {realm} answered {status}{}",
                if cred.is_some() {
                    " (credentials rejected?)"
                } else {
                    ""
                }
            )));
        }
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| PullError::Protocol {
                url: realm.clone(),
                reason: format!("token response: {e}"),
            })?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PullError::Protocol {
                url: realm.clone(),
                reason: "token response has no token".into(),
            })
    }
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn resolve_location(base: &str, location: &HeaderValue) -> Result<String, PullError> {
    let loc = location.to_str().map_err(|_| PullError::Protocol {
        url: base.to_owned(),
        reason: "redirect Location is not ASCII".into(),
    })?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Ok(loc.to_owned());
    }
    let uri: hyper::Uri = base.parse().map_err(|_| PullError::Protocol {
        url: base.to_owned(),
        reason: "invalid URL".into(),
    })?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if loc.starts_with('/') {
        Ok(format!("{scheme}://{authority}{loc}"))
    } else {
        Err(PullError::Protocol {
            url: base.to_owned(),
            reason: format!("unsupported relative redirect {loc:?}"),
        })
    }
}

/// Reads the next chunk of a body, failing if none arrives within `idle`.
pub(crate) async fn next_chunk(
    body: &mut Incoming,
    url: &str,
    idle: Duration,
) -> Result<Option<Bytes>, PullError> {
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(PullError::Timeout {
                    url: url.to_owned(),
                    what: "data",
                    after: idle,
                });
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => {
                return Err(PullError::Connect {
                    url: url.to_owned(),
                    reason: error_chain(&e),
                });
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
pub(crate) async fn read_body(
    resp: Response<Incoming>,
    limit: usize,
    url: &str,
    idle: Duration,
) -> Result<Bytes, PullError> {
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut body, url, idle).await? {
        if buf.len() + chunk.len() > limit {
            return Err(PullError::Protocol {
                url: url.to_owned(),
                reason: format!("response larger than {limit} bytes"),
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_queries_and_resolves_redirects() {
        assert_eq!(
            query_escape("repository:a/b:pull,push x"),
            "repository:a/b:pull%2Cpush%20x"
        );
        let loc = HeaderValue::from_static("/blobs/x?sig=1");
        assert_eq!(
            resolve_location("http://h:5000/v2/a", &loc).unwrap(),
            "http://h:5000/blobs/x?sig=1"
        );
        let loc = HeaderValue::from_static("https://s3/x");
        assert_eq!(
            resolve_location("http://h/v2", &loc).unwrap(),
            "https://s3/x"
        );
    }
}
