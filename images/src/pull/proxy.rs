//! Registry pulls through an HTTP proxy: `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` as curl
//! reads them. An `https://` registry is reached through a `CONNECT` tunnel (TLS end to end,
//! the proxy sees only the host name); an `http://` one by handing the proxy the request with
//! its absolute URL (the proxy forwards it).
//!
//! Only pulls use these settings: skiffd reads the variables once into
//! [`PullerConfig::proxy`](super::PullerConfig::proxy) and nothing else of skiffd (probes,
//! etcd, the API) looks at them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper::header::HeaderValue;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::PullError;

/// Where pulls go through a proxy, in the usual environment variables' syntax.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy for `https://` registries (`HTTPS_PROXY`): `http://[user:pass@]host:port`.
    pub https: Option<String>,
    /// The proxy for `http://` registries (`HTTP_PROXY`).
    pub http: Option<String>,
    /// Hosts reached directly (`NO_PROXY`): comma-separated domain names (each also matches
    /// its subdomains; a leading dot is optional), IP addresses, CIDR networks, or `*` for all.
    pub no_proxy: Option<String>,
}

impl ProxyConfig {
    /// The settings in this process's environment: `HTTPS_PROXY`/`https_proxy`,
    /// `HTTP_PROXY`/`http_proxy`, `NO_PROXY`/`no_proxy` (upper case first, empty is unset).
    pub fn from_env() -> ProxyConfig {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .filter_map(|n| std::env::var(n).ok())
                .find(|v| !v.trim().is_empty())
        };
        ProxyConfig {
            https: var(["HTTPS_PROXY", "https_proxy"]),
            http: var(["HTTP_PROXY", "http_proxy"]),
            no_proxy: var(["NO_PROXY", "no_proxy"]),
        }
    }

    /// Whether no proxy is set.
    pub fn is_empty(&self) -> bool {
        self.https.is_none() && self.http.is_none()
    }

    /// Checks that each proxy is an `http://` URL with a host: a proxy skiff cannot use would
    /// otherwise be skipped silently and pulls would go direct.
    pub fn check(&self) -> Result<(), PullError> {
        for (var, value) in [("HTTPS_PROXY", &self.https), ("HTTP_PROXY", &self.http)] {
            if let Some(value) = value {
                proxy_uri(value).map_err(|reason| PullError::Config {
                    origin: var.to_owned(),
                    reason: format!("{}: {reason}", redact(value)),
                })?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("https", &self.https.as_deref().map(redact))
            .field("http", &self.http.as_deref().map(redact))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// The proxy's URL, which must be plain HTTP (a scheme-less `host:port` means `http://`).
fn proxy_uri(value: &str) -> Result<Uri, String> {
    let uri: Uri = value
        .trim()
        .parse()
        .map_err(|e| format!("invalid URL: {e}"))?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{other}:// proxies are not supported, only http://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(uri)
}

/// `value` without the password of its user info, for logs and messages.
fn redact(value: &str) -> String {
    let (scheme, rest) = value.split_once("://").unwrap_or(("", value));
    let Some((userinfo, host)) = rest.split_once('@') else {
        return value.to_owned();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let scheme = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{scheme}{user}:***@{host}")
}

/// A proxy to go through: its address and the `Proxy-Authorization` from its URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Proxy {
    pub(crate) uri: Uri,
    pub(crate) auth: Option<HeaderValue>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URI the matcher hands back has no user info; the credentials stay out of logs.
        f.debug_struct("Proxy")
            .field("uri", &self.uri)
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

/// How one request reaches its registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    /// Straight to the registry.
    Direct,
    /// `CONNECT` through the proxy, then TLS to the registry (`https://`).
    Tunnel(Proxy),
    /// The request in absolute form to the proxy (`http://`).
    Forward(Proxy),
}

/// The proxy settings of a puller, ready to route requests.
pub(crate) struct Proxies {
    matcher: Option<Matcher>,
}

impl Proxies {
    pub(crate) fn new(config: &ProxyConfig) -> Proxies {
        if config.is_empty() {
            return Proxies { matcher: None };
        }
        // An unusable proxy (see `ProxyConfig::check`) is dropped here rather than sent to the
        // matcher, which would treat e.g. `socks5://` as a proxy the tunnel cannot speak.
        let usable = |v: &Option<String>| {
            v.as_deref()
                .filter(|v| proxy_uri(v).is_ok())
                .unwrap_or_default()
                .to_owned()
        };
        let matcher = Matcher::builder()
            .https(usable(&config.https))
            .http(usable(&config.http))
            .no(config.no_proxy.clone().unwrap_or_default())
            .build();
        Proxies {
            matcher: Some(matcher),
        }
    }

    /// The route to `dst` (an `http://` or `https://` URL).
    pub(crate) fn route(&self, dst: &Uri) -> Route {
        let Some(intercept) = self.matcher.as_ref().and_then(|m| m.intercept(dst)) else {
            return Route::Direct;
        };
        let proxy = Proxy {
            uri: intercept.uri().clone(),
            auth: intercept.basic_auth().cloned(),
        };
        if dst.scheme_str() == Some("https") {
            Route::Tunnel(proxy)
        } else {
            Route::Forward(proxy)
        }
    }
}

/// A connector that connects to the proxy whatever the destination, and marks the connection
/// as proxied so that hyper writes requests in absolute form (`GET http://host/v2/ HTTP/1.1`).
#[derive(Clone)]
pub(crate) struct ForwardConnector {
    pub(crate) http: HttpConnector,
    pub(crate) proxy: Uri,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ForwardConnector {
    type Response = Proxied;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Proxied, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let connecting = self.http.call(self.proxy.clone());
        Box::pin(async move { Ok(Proxied(connecting.await?)) })
    }
}

/// A TCP connection to the proxy.
pub(crate) struct Proxied(TokioIo<TcpStream>);

impl Connection for Proxied {
    fn connected(&self) -> Connected {
        self.0.connected().proxy(true)
    }
}

impl Read for Proxied {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Proxied {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(https: &str, http: &str, no: &str) -> ProxyConfig {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        ProxyConfig {
            https: opt(https),
            http: opt(http),
            no_proxy: opt(no),
        }
    }

    fn route(c: &ProxyConfig, url: &str) -> Route {
        Proxies::new(c).route(&url.parse().unwrap())
    }

    fn proxy(uri: &str) -> Proxy {
        Proxy {
            uri: uri.parse().unwrap(),
            auth: None,
        }
    }

    #[test]
    fn https_tunnels_http_forwards_and_no_proxy_bypasses() {
        let c = config(
            "http://tunnel:3128",
            "forward:8080",
            "internal.example, .corp, 10.1.0.0/16, 192.168.5.5",
        );
        assert_eq!(
            route(&c, "https://registry-1.docker.io/v2/"),
            Route::Tunnel(proxy("http://tunnel:3128"))
        );
        assert_eq!(
            route(&c, "http://127.0.0.1:5000/v2/"),
            Route::Forward(proxy("http://forward:8080"))
        );
        for direct in [
            "https://internal.example/v2/",
            "https://reg.internal.example:5000/v2/",
            "http://mirror.corp/v2/",
            "https://10.1.2.3/v2/",
            "http://192.168.5.5:5000/v2/",
        ] {
            assert_eq!(route(&c, direct), Route::Direct, "{direct}");
        }
        // A suffix match is on whole labels only.
        assert!(matches!(
            route(&c, "https://notinternal.example/v2/"),
            Route::Tunnel(_)
        ));
        assert_eq!(
            route(&config("http://p:1", "", "*"), "https://any/v2/"),
            Route::Direct
        );
        // Only the scheme's own proxy applies.
        assert_eq!(
            route(&config("http://p:1", "", ""), "http://r/v2/"),
            Route::Direct
        );
        assert_eq!(route(&ProxyConfig::default(), "https://r/"), Route::Direct);
    }

    #[test]
    fn credentials_become_proxy_authorization_and_stay_out_of_debug() {
        let c = config("http://alice:s3cret@proxy:3128", "", "");
        let Route::Tunnel(p) = route(&c, "https://r/v2/") else {
            panic!("not tunnelled");
        };
        assert_eq!(p.auth.unwrap(), "Basic YWxpY2U6czNjcmV0");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("alice:***@proxy:3128"), "{debug}");
    }

    #[test]
    fn check_refuses_proxies_that_cannot_be_used() {
        assert!(config("http://p:3128", "p:8080", "").check().is_ok());
        let err = config("socks5://u:pw@p:1080", "", "").check().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HTTPS_PROXY"), "{msg}");
        assert!(msg.contains("socks5:// proxies are not supported"), "{msg}");
        assert!(!msg.contains("pw"), "{msg}");
        assert!(config("", "http://", "").check().is_err());
        // Unusable ones are not used (rather than handed to the matcher).
        assert_eq!(
            route(&config("https://p:3128", "", ""), "https://r/"),
            Route::Direct
        );
    }
}
