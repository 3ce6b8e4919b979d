//! The API's two listeners, the root-only unix socket and TLS over TCP with bearer tokens,
//! and what both enforce: a header-read timeout (a client that sends its request slowly,
//! slowloris, holds no connection for long) and the apiserver's request body limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use super::ApiError;
use crate::serviceaccount::auth::Authenticator;

/// How long a client may take to send a request's headers (and, over TCP, the TLS
/// handshake) before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body, as the apiserver's (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How long open connections (streams, watches) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Paths the apiserver lets anonymous clients read (its `system:public-info-viewer` role):
/// health checks work without a token, but a wrong token is refused on them too.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];

/// Refuses a body above [`MAX_BODY_BYTES`] with a 413 `Status`: at once when the request
/// says its length, else when a handler reads past the limit.
pub async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::too_large(MAX_BODY_BYTES).into_response();
    }
    let resp = next.run(req).await;
    // axum's own rejection of a chunked body over the limit is plain text: make it a Status.
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ApiError::too_large(MAX_BODY_BYTES).into_response();
    }
    resp
}

/// Lets a request in over TCP only with a known bearer token (401 `Status` otherwise) and
/// what that user may do (403).
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    req: Request,
    next: Next,
) -> Response {
    let token = req.headers().get(header::AUTHORIZATION).map(|v| {
        let v = v.to_str().unwrap_or_default().trim();
        match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => "",
        }
    });
    let allowed = match token {
        None => PUBLIC_PATHS.contains(&req.uri().path()),
        Some(t) => match auth.authenticate(t) {
            Some(user) => match user.authorize(req.method(), req.uri().path()) {
                Ok(()) => true,
                Err(message) => return ApiError::forbidden(message).into_response(),
            },
            None => false,
        },
    };
    if !allowed {
        debug!(path = %req.uri().path(), with_token = token.is_some(), "refused an unauthenticated request");
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

/// Serves `router` on an HTTP/1.1 connection until it ends or `stop` turns true.
async fn serve_conn<I>(io: I, router: Router, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(error) = res {
                debug!(%error, "API connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// Accepts on the unix socket until `stop`.
pub async fn serve_unix(
    listener: UnixListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) if transient(&e) => {
                        backoff(&e).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                conns.spawn(serve_conn(stream, router.clone(), stop.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Accepts TLS connections on `listener` until `stop`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) if transient(&e) => {
                        backoff(&e).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, router, stop) = (acceptor.clone(), router.clone(), stop.clone());
                conns.spawn(async move {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_conn(stream, router, stop).await,
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Accept errors that concern one connection (or a moment of fd exhaustion), not the listener.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || out_of_resources(e)
}

fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Out of fds the pending connection stays queued, so accepting again at once would spin.
async fn backoff(e: &std::io::Error) {
    if out_of_resources(e) {
        tracing::warn!(error = %e, "accepting an API connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Binds the TLS API's address.
pub async fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
