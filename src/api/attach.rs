//! `pods/attach` (`kubectl attach`, `kubectl run -i`) over WebSocket `v5.channel.k8s.io` and
//! `v4.channel.k8s.io`, the streams of [`super::exec_ws`]: the container's main process
//! output live from now on (stream 1 and 2; one terminal stream with `tty: true`), its stdin
//! (stream 0) when the container has `stdin: true`, and resizes (stream 4) of its terminal.
//!
//! skiffd holds none of it: the container's monitor keeps the stdin pipe or the terminal's
//! master and serves them on the container's attach socket (see
//! [`crate::runtime::attach`]), so sessions survive nothing but also lose nothing when skiffd
//! restarts. Everything that can be refused (the pod, the container, the protocol, the stdin:
//! a container without `stdin: true`, a second writer, `stdinOnce` already used) is refused
//! before the upgrade, with a `Status`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use super::exec::{running_container, upgrade_request};
use super::exec_ws::PROTOCOLS;
use super::logs::pick_container;
use super::pods::find;
use super::{ApiError, Shared};
use crate::runtime::attach as wire;

/// How long the container's monitor may take to answer a new session.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest WebSocket message a client may send (as for exec).
const MAX_MESSAGE: usize = 1 << 20;

/// What an attach request asks for (the kubelet's parameters; all off unless given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub container: Option<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl AttachRequest {
    /// Parses the query; at least one of the three streams is needed.
    pub fn parse(query: Option<&str>) -> Result<AttachRequest, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let flag = |name: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .is_some_and(|(_, v)| matches!(v.as_str(), "1" | "true" | "True"))
        };
        let req = AttachRequest {
            container: pairs
                .iter()
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.clone())
                .filter(|c| !c.is_empty()),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        };
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least one of stdin, stdout, stderr",
            ));
        }
        Ok(req)
    }

    /// The request as served for a container: its terminal is the spec's (it cannot change
    /// after the start, the kubelet does the same), and a terminal has no separate stderr.
    fn for_container(mut self, spec: &Container) -> AttachRequest {
        self.tty = spec.tty.unwrap_or(false);
        if self.tty {
            self.stderr = false;
        }
        self
    }
}

/// The spec of the container `name` of `pod` (app or init container).
fn container_spec<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Why stdin cannot be given to this container, in the words a user understands.
fn stdin_refusal(pod: &str, spec: &Container) -> Option<String> {
    (!spec.stdin.unwrap_or(false)).then(|| {
        format!(
            "container {} in pod {pod} was not started with stdin: true; its stdin cannot be attached",
            spec.name
        )
    })
}

/// `GET`/`POST .../attach`: checks everything, opens the session with the container's
/// monitor, then upgrades.
pub async fn attach(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let req = AttachRequest::parse(query.as_deref())?;
    let pod = find(&s, &ns, &name)?;
    let status = pick_container(&pod, req.container.as_deref())?;
    let spec = container_spec(&pod, &status.name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "container {} is not valid for pod {name}",
            status.name
        ))
    })?;
    let id = running_container(&s, &ns, &name, Some(&status.name))?;
    let req = req.for_container(spec);
    if req.stdin
        && let Some(why) = stdin_refusal(&name, spec)
    {
        return Err(ApiError::bad_request(why));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = s.runtime.attach_socket_dir(&uid, &id);
    let refused = |e: Open| match e {
        Open::Refused(why) => ApiError::bad_request(format!(
            "unable to attach to container {} in pod {name}: {why}",
            status.name
        )),
        Open::Io(e) => ApiError::bad_request(format!(
            "unable to upgrade connection: container {} in pod {name} cannot be attached: {e} (it has ended, or was started before skiffd served attach)",
            status.name
        )),
    };
    let Ok(ws) = ws else {
        // kubectl falls back to SPDY after a refused WebSocket: it must show the reason of the
        // first refusal (a busy stdin, say), not only that SPDY is not spoken.
        open_session(&dir, req.stdin, true).await.map_err(refused)?;
        let asked = upgrade_request(&headers).unwrap_or_else(|| "a plain request".into());
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: skiffd speaks WebSocket ({}) for attach, not {asked}; nothing was attached",
            PROTOCOLS.join(", ")
        )));
    };
    let ws = ws.protocols(PROTOCOLS).max_message_size(MAX_MESSAGE);
    let Some(protocol) = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_string)
    else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: none of the offered subprotocols is served (skiffd speaks {})",
            PROTOCOLS.join(", ")
        )));
    };
    let monitor = open_session(&dir, req.stdin, false)
        .await
        .map_err(refused)?;
    let v5 = protocol == PROTOCOLS[0];
    debug!(pod = %name, namespace = %ns, container = %status.name, stdin = req.stdin, tty = req.tty, "attach session");
    Ok(ws.on_upgrade(move |socket| async move {
        Session {
            socket,
            monitor,
            req,
            v5,
        }
        .run()
        .await;
    }))
}

enum Open {
    Refused(String),
    Io(io::Error),
}

/// Connects to the container's attach socket and says hello; the monitor's answer decides.
/// A probe only asks (the monitor closes the session after its answer).
async fn open_session(
    dir: &std::path::Path,
    stdin: bool,
    probe: bool,
) -> Result<AsyncFd<OwnedFd>, Open> {
    let fd = wire::connect(dir).map_err(Open::Io)?;
    // SAFETY: the OwnedFd is owned by the AsyncFd and stays open for as long as it lives.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| Open::Io(e.into_parts().1))?;
    send_packet(&fd, &wire::hello(stdin, probe))
        .await
        .map_err(Open::Io)?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(HELLO_TIMEOUT, recv_packet(&fd, &mut buf))
        .await
        .map_err(|_| Open::Io(io::Error::other("the container's monitor did not answer")))?
        .map_err(Open::Io)?;
    match buf[..n].split_first() {
        Some((&wire::OK, _)) => Ok(fd),
        Some((&wire::REFUSED, why)) => Err(Open::Refused(String::from_utf8_lossy(why).into())),
        _ => Err(Open::Io(io::Error::other(
            "the container's monitor closed the session",
        ))),
    }
}

/// Receives one packet; 0 is the end of the session.
async fn recv_packet(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        let r = guard.try_io(|inner| {
            // SAFETY: recv into a buffer of the length passed.
            let n = unsafe {
                libc::recv(
                    inner.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        if let Ok(r) = r {
            return r;
        }
    }
}

/// Sends one packet, waiting while the monitor's side is full (the container does not read).
async fn send_packet(fd: &AsyncFd<OwnedFd>, packet: &[u8]) -> io::Result<()> {
    loop {
        let mut guard = fd.writable().await?;
        let r = guard.try_io(|inner| {
            // SAFETY: send from a buffer of the length passed.
            let n = unsafe {
                libc::send(
                    inner.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        if let Ok(r) = r {
            return r;
        }
    }
}

/// What a client's WebSocket message means for the monitor: packets to send, in order.
fn client_packets(data: &[u8], req: &AttachRequest, v5: bool) -> Vec<Vec<u8>> {
    let Some((&stream, rest)) = data.split_first() else {
        return Vec::new();
    };
    match stream {
        wire::STDIN if req.stdin => rest
            .chunks(wire::MAX_DATA)
            .map(|c| {
                let mut p = Vec::with_capacity(c.len() + 1);
                p.push(wire::STDIN);
                p.extend_from_slice(c);
                p
            })
            .collect(),
        wire::RESIZE if req.tty => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            serde_json::from_slice::<Size>(rest)
                .map(|s| vec![wire::resize(s.width, s.height).to_vec()])
                .unwrap_or_default()
        }
        // v5's "close stream 0": the end of the client's stdin.
        wire::CLOSE_STDIN if v5 && req.stdin && rest.first() == Some(&wire::STDIN) => {
            vec![vec![wire::CLOSE_STDIN]]
        }
        _ => Vec::new(),
    }
}

struct Session {
    socket: WebSocket,
    monitor: AsyncFd<OwnedFd>,
    req: AttachRequest,
    v5: bool,
}

impl Session {
    async fn run(mut self) {
        let mut buf = vec![0u8; wire::MAX_DATA + 1];
        // Input for the monitor from the last client message; the client is not read
        // meanwhile, so a container that does not read its stdin slows the client down.
        let mut pending: std::collections::VecDeque<Vec<u8>> = Default::default();
        loop {
            tokio::select! {
                n = recv_packet(&self.monitor, &mut buf) => {
                    let n = match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let wanted = match buf[0] {
                        wire::STDOUT => self.req.stdout,
                        wire::STDERR => self.req.stderr,
                        _ => false,
                    };
                    if wanted && self.socket.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
                r = send_packet(&self.monitor, pending.front().map_or(&[][..], |p| p.as_slice())), if !pending.is_empty() => {
                    if r.is_err() {
                        break;
                    }
                    pending.pop_front();
                }
                msg = self.socket.recv(), if pending.is_empty() => match msg {
                    Some(Ok(Message::Binary(data))) => {
                        pending.extend(client_packets(&data, &self.req, self.v5));
                    }
                    // The Python client sends its channel messages as text frames, which the
                    // kubelet takes as the same bytes.
                    Some(Ok(Message::Text(text))) => {
                        pending.extend(client_packets(text.as_bytes(), &self.req, self.v5));
                    }
                    // The client went away: dropping the socket ends the session (and with
                    // stdinOnce the container's stdin).
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        // The container has ended (or its monitor dropped us): the kubelet's final Success.
        let status = json!({"metadata": {}, "status": "Success"});
        let mut msg = vec![3u8];
        msg.extend_from_slice(status.to_string().as_bytes());
        let _ = self.socket.send(Message::Binary(Bytes::from(msg))).await;
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_kubectls_query() {
        let r = AttachRequest::parse(Some(
            "container=c&stdin=true&stdout=true&stderr=true&tty=true",
        ))
        .unwrap();
        assert_eq!(r.container.as_deref(), Some("c"));
        assert!(r.stdin && r.stdout && r.stderr && r.tty);
        let r = AttachRequest::parse(Some("stdout=1")).unwrap();
        assert!(!r.stdin && r.stdout && !r.stderr && !r.tty);
        assert!(AttachRequest::parse(Some("container=c")).is_err());
        assert!(AttachRequest::parse(None).is_err());
    }

    #[test]
    fn the_terminal_is_the_containers_not_the_requests() {
        let req = AttachRequest::parse(Some("stdout=true&stderr=true")).unwrap();
        let tty = Container {
            name: "c".into(),
            tty: Some(true),
            ..Default::default()
        };
        let r = req.clone().for_container(&tty);
        assert!(r.tty && !r.stderr);
        let plain = Container {
            name: "c".into(),
            ..Default::default()
        };
        let r = AttachRequest { tty: true, ..req }.for_container(&plain);
        assert!(!r.tty && r.stderr);
    }

    #[test]
    fn stdin_needs_stdin_true() {
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        assert!(stdin_refusal("p", &c).unwrap().contains("stdin: true"));
        let c = Container {
            stdin: Some(true),
            ..c
        };
        assert_eq!(stdin_refusal("p", &c), None);
    }

    #[test]
    fn client_messages_become_monitor_packets() {
        let req = AttachRequest {
            stdin: true,
            tty: true,
            stdout: true,
            ..Default::default()
        };
        let big = [&[0u8][..], &vec![b'x'; wire::MAX_DATA + 10]].concat();
        let p = client_packets(&big, &req, true);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].len(), wire::MAX_DATA + 1);
        assert_eq!(p[1], [&[0u8][..], &[b'x'; 10]].concat());
        assert_eq!(
            client_packets(br#"{"Width":80,"Height":24}"#.as_slice(), &req, true),
            Vec::<Vec<u8>>::new()
        );
        let resize = [&[4u8][..], br#"{"Width":80,"Height":24}"#].concat();
        assert_eq!(
            client_packets(&resize, &req, true),
            vec![wire::resize(80, 24).to_vec()]
        );
        assert_eq!(
            client_packets(&[255, 0], &req, true),
            vec![vec![wire::CLOSE_STDIN]]
        );
        // v4 has no close message; without stdin nothing reaches the container.
        assert!(client_packets(&[255, 0], &req, false).is_empty());
        let no_stdin = AttachRequest {
            stdin: false,
            ..req
        };
        assert!(client_packets(&[0, b'a'], &no_stdin, true).is_empty());
    }
}
