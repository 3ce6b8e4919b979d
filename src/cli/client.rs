//! HTTP/1.1 client for skiffd's API, one connection per request over its unix socket.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::http1::{self, ConnTask};

/// Failures of one request to skiffd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("error: cannot connect to skiffd at {path}: {source}{hint}",
        path = .socket.display(), hint = connect_hint(.source))]
    Connect { socket: PathBuf, source: io::Error },
    /// The HTTP exchange broke off.
    #[error("error: request {method} {path} to skiffd at {sock} failed: {source}",
        sock = .socket.display())]
    Http {
        socket: PathBuf,
        method: Method,
        path: String,
        source: hyper::Error,
    },
    /// The request could not be built (an invalid path).
    #[error("error: invalid request path {path}: {source}")]
    Request {
        path: String,
        source: hyper::http::Error,
    },
    /// skiffd answered with a non-success status.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The success response body did not have the expected shape.
    #[error("error: cannot decode the answer to GET {path}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

fn connect_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            " (is skiffd running? set --socket or SKIFF_SOCKET for another path)"
        }
        io::ErrorKind::PermissionDenied => " (the socket is root-only; try sudo)",
        _ => "",
    }
}

/// An error answer from skiffd, from a Kubernetes `Status` body when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`; derived from the code when the body has none.
    pub reason: String,
    /// `Status.message`, or the body text.
    pub message: String,
}

/// The fields of a Kubernetes `Status` that we print; lenient about everything else.
#[derive(Debug, Default, Deserialize)]
struct StatusBody {
    kind: Option<String>,
    message: Option<String>,
    reason: Option<String>,
}

impl ServerError {
    /// Builds the error from a non-success answer.
    pub fn from_response(status: StatusCode, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<StatusBody>(body)
            .ok()
            .filter(|s| s.kind.as_deref() == Some("Status") || s.message.is_some());
        let (reason, message) = match parsed {
            Some(s) => (s.reason.unwrap_or_default(), s.message.unwrap_or_default()),
            None => (
                String::new(),
                String::from_utf8_lossy(body).trim().to_owned(),
            ),
        };
        let reason = if reason.is_empty() {
            reason_for(status).to_owned()
        } else {
            reason
        };
        let message = if !message.is_empty() {
            message
        } else if status == StatusCode::NOT_FOUND {
            // kubectl's wording for a 404 without a Status body.
            "the server could not find the requested resource".to_owned()
        } else {
            format!("the server has returned an unexpected response ({status})")
        };
        ServerError {
            code: status.as_u16(),
            reason,
            message,
        }
    }

    /// True for 404 answers.
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "Error from server: {}", self.message)
        } else {
            write!(f, "Error from server ({}): {}", self.reason, self.message)
        }
    }
}

impl std::error::Error for ServerError {}

/// The `StatusReason` Kubernetes uses for an HTTP code.
fn reason_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

/// A client of skiffd's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the socket at `socket`; nothing is connected until a request is made.
    pub fn new(socket: PathBuf) -> Self {
        Client { socket }
    }

    /// The socket path this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, None).await?;
        decode(path, &body)
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let answer = self
            .call(Method::POST, path, Some(body.to_string().into_bytes()))
            .await?;
        decode(path, &answer)
    }

    /// DELETEs `path` and returns the answer body.
    pub async fn delete(&self, path: &str) -> Result<Bytes, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends a body-less request and hands back the successful answer's body as it arrives.
    pub async fn stream(&self, method: Method, path: &str) -> Result<BodyStream, ClientError> {
        let (response, conn) = self.send(method.clone(), path, None).await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut stream = BodyStream {
            body: response.into_body(),
            content_type,
            _conn: conn,
        };
        if !status.is_success() {
            let body = stream.collect(&self.socket, &method, path).await?;
            return Err(ServerError::from_response(status, &body).into());
        }
        Ok(stream)
    }

    /// Sends a request and collects the whole successful answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let (response, conn) = self.send(method.clone(), path, body).await?;
        let status = response.status();
        let mut stream = BodyStream {
            body: response.into_body(),
            content_type: None,
            _conn: conn,
        };
        let body = stream.collect(&self.socket, &method, path).await?;
        if !status.is_success() {
            return Err(ServerError::from_response(status, &body).into());
        }
        Ok(body)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(Response<Incoming>, ConnTask), ClientError> {
        let http_err = |source| ClientError::Http {
            socket: self.socket.clone(),
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, "localhost")
            .header(USER_AGENT, concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/json, */*");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ClientError::Request {
                path: path.to_owned(),
                source,
            })?;

        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let mut conn = http1::Conn::handshake(stream).await.map_err(http_err)?;
        let response = conn.send(request).await.map_err(http_err)?;
        Ok((response, conn.into_task()))
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|source| ClientError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// The body of a successful answer, read chunk by chunk (logs, exec output).
#[derive(Debug)]
pub struct BodyStream {
    body: Incoming,
    content_type: Option<String>,
    _conn: ConnTask,
}

impl BodyStream {
    /// The answer's `Content-Type`, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The next chunk of data, or `None` at the end of the body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data()
                && !data.is_empty()
            {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    async fn collect(
        &mut self,
        socket: &Path,
        method: &Method,
        path: &str,
    ) -> Result<Bytes, ClientError> {
        let mut all = Vec::new();
        loop {
            match self.next_chunk().await {
                Ok(Some(chunk)) => all.extend_from_slice(&chunk),
                Ok(None) => return Ok(Bytes::from(all)),
                Err(source) => {
                    return Err(ClientError::Http {
                        socket: socket.to_owned(),
                        method: method.clone(),
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
    }
}

/// Percent-encodes `s` for use as one path segment or one query value: everything but
/// RFC 3986 unreserved characters is escaped, `/` included.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Appends `pairs` as an encoded query string to `path` (nothing when `pairs` is empty).
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = path.to_owned();
    for (i, (key, value)) in pairs.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&encode_component(key));
        url.push('=');
        url.push_str(&encode_component(value));
    }
    url
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use k8s_openapi::List;
    use k8s_openapi::api::core::v1::Pod;
    use tokio::net::UnixListener;

    use super::*;

    #[test]
    fn encodes_components() {
        assert_eq!(encode_component("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            encode_component("docker.io/library/nginx:1.25"),
            "docker.io%2Flibrary%2Fnginx%3A1.25"
        );
        assert_eq!(encode_component("sh -c 'x&y'"), "sh%20-c%20%27x%26y%27");
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(
            with_query("/p", &[("command", "ls"), ("command", "-l /")]),
            "/p?command=ls&command=-l%20%2F"
        );
        assert_eq!(with_query("/p", &[]), "/p");
    }

    #[test]
    fn server_error_from_status_body() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" not found","reason":"NotFound","code":404}"#;
        let err = ServerError::from_response(StatusCode::NOT_FOUND, body);
        assert_eq!(
            err.to_string(),
            r#"Error from server (NotFound): pods "x" not found"#
        );
        assert!(err.is_not_found());
    }

    #[test]
    fn server_error_without_status_body() {
        let err = ServerError::from_response(StatusCode::NOT_FOUND, b"");
        assert_eq!(
            err.to_string(),
            "Error from server (NotFound): the server could not find the requested resource"
        );
        let err = ServerError::from_response(StatusCode::INTERNAL_SERVER_ERROR, b"boom\n");
        assert_eq!(err.to_string(), "Error from server (InternalError): boom");
        let err = ServerError::from_response(StatusCode::IM_A_TEAPOT, b"");
        assert_eq!(
            err.to_string(),
            "Error from server: the server has returned an unexpected response (418 I'm a teapot)"
        );
    }

    #[tokio::test]
    async fn connect_error_names_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("missing.sock");
        let client = Client::new(socket.clone());
        let err = client
            .get_json::<serde_json::Value>("/api/v1/pods")
            .await
            .expect_err("no server");
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("is skiffd running?"), "{text}");
    }

    /// Serves canned answers on a unix socket in a tempdir: a PodList for `/api/v1/pods`,
    /// a Status 404 for anything else.
    async fn canned_server(listener: UnixListener) {
        let pod_list = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},
            "items":[{"metadata":{"name":"web","namespace":"default"},
                      "spec":{"containers":[{"name":"app","image":"busybox"}]},
                      "status":{"phase":"Running"}}]}"#;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let uri = req.uri().to_string();
                    let (status, body) = if uri == "/api/v1/pods?labelSelector=app%3Dweb" {
                        (StatusCode::OK, Bytes::from(pod_list))
                    } else if req.method() == Method::POST && uri.ends_with("/exec?command=true") {
                        let mut frames = crate::cli::exec_stream::encode_frame(1, b"out");
                        frames.extend(crate::cli::exec_stream::encode_exit(
                            &crate::cli::exec_stream::ExitStatus {
                                exit_code: 0,
                                error: None,
                            },
                        ));
                        (StatusCode::OK, Bytes::from(frames))
                    } else {
                        (
                            StatusCode::NOT_FOUND,
                            Bytes::from(format!(
                                r#"{{"kind":"Status","status":"Failure","message":"no route {uri}","reason":"NotFound","code":404}}"#
                            )),
                        )
                    };
                    let response = Response::builder()
                        .status(status)
                        .header(CONTENT_TYPE, "application/json")
                        .body(Full::new(body))
                        .expect("response");
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    #[tokio::test]
    async fn fetches_a_pod_list_over_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("skiff.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let server = tokio::spawn(canned_server(listener));

        let client = Client::new(socket);
        let path = with_query("/api/v1/pods", &[("labelSelector", "app=web")]);
        let list: List<Pod> = client.get_json(&path).await.expect("pod list");
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("web"));

        let err = client
            .get_json::<List<Pod>>("/api/v1/nodes")
            .await
            .expect_err("404");
        assert_eq!(
            err.to_string(),
            "Error from server (NotFound): no route /api/v1/nodes"
        );

        let mut stream = client
            .stream(
                Method::POST,
                "/api/v1/namespaces/default/pods/web/exec?command=true",
            )
            .await
            .expect("exec stream");
        let mut decoder = crate::cli::exec_stream::FrameDecoder::new();
        while let Some(chunk) = stream.next_chunk().await.expect("chunk") {
            decoder.push(&chunk);
        }
        let first = decoder.next_frame().expect("frame").expect("stdout frame");
        assert_eq!((first.stream, first.payload.as_slice()), (1, &b"out"[..]));
        let exit = decoder.next_frame().expect("frame").expect("exit frame");
        assert_eq!(exit.exit_status().expect("status").exit_code, 0);

        let err = client
            .stream(Method::GET, "/api/v1/namespaces/default/pods/web/log")
            .await
            .expect_err("404");
        assert!(
            matches!(err, ClientError::Server(ref e) if e.is_not_found()),
            "{err}"
        );
        server.abort();
    }
}
