//! `POST .../pods/{name}/exec`: runs a command in a running container and
//! streams its output as frames (see `cli::exec_stream`), ending with its exit code.

use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::logs::pick_container;
use super::pods::find;
use super::{ApiError, Shared};
use crate::cli::exec_stream::{
    CONTENT_TYPE, ExitStatus, STDERR, STDOUT, encode_exit, encode_frame,
};
use crate::runtime::ID_SCHEME;

/// What an exec request asks for (the query of `.../exec`, as kubectl and `skiff exec` send it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    /// Parses the query; at least one `command` is needed.
    pub fn parse(query: Option<&str>) -> Result<ExecRequest, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let flag = |name: &str, default: bool| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map_or(default, |(_, v)| {
                    matches!(v.as_str(), "1" | "true" | "True")
                })
        };
        let argv: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        if argv.is_empty() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        Ok(ExecRequest {
            argv,
            container: pairs
                .iter()
                .find(|(k, _)| k == "container")
                .map(|(_, v)| v.clone()),
            stdin: flag("stdin", false),
            stdout: flag("stdout", true),
            stderr: flag("stderr", true),
            tty: flag("tty", false),
        })
    }
}

/// The runtime id of the running container an exec goes to, or the apiserver's error.
pub fn running_container(
    s: &Shared,
    ns: &str,
    name: &str,
    container: Option<&str>,
) -> Result<String, ApiError> {
    let pod = find(s, ns, name)?;
    let cs = pick_container(&pod, container)?;
    let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
    cs.container_id
        .as_deref()
        .and_then(|c| c.strip_prefix(ID_SCHEME))
        .filter(|_| running)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to upgrade connection: container {} not found in pod {name}: it is not running",
                cs.name
            ))
        })
}

/// `GET .../exec`: kubectl's WebSocket exec (see [`super::exec_ws`]); anything else is
/// answered as [`exec`] answers it.
pub async fn exec_get(
    state: State<Shared>,
    path: Path<(String, String)>,
    query: RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    match ws {
        Ok(ws) => super::exec_ws::upgrade(state, path, query, ws).await,
        Err(_) => exec(state, path, query, headers).await,
    }
}

/// `POST .../exec`: skiff's own streamed exec (frames of `cli::exec_stream`).
pub async fn exec(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = ExecRequest::parse(query.as_deref())?;
    let id = running_container(&s, &ns, &name, req.container.as_deref())?;
    // kubectl falls back to SPDY when its WebSocket attempt fails; answering that with skiff's
    // own stream would run the command a second time. Refuse every upgrade before anything
    // runs (after the checks above, so kubectl shows why a WebSocket exec was refused).
    if let Some(asked) = upgrade_request(&headers) {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: skiffd speaks WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) for exec, not {asked}; nothing was run"
        )));
    }
    let argv = req.argv;
    let mut child = s
        .runtime
        .exec_command(&id, &argv)
        .spawn()
        .map_err(|e| ApiError::internal(format!("starting exec: {e}")))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut out_buf = vec![0u8; 32 * 1024];
        let mut err_buf = vec![0u8; 32 * 1024];
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                r = async { stdout.as_mut().unwrap().read(&mut out_buf).await }, if stdout.is_some() => match r {
                    Ok(0) | Err(_) => stdout = None,
                    Ok(n) => { let _ = tx.send(Ok(Bytes::from(encode_frame(STDOUT, &out_buf[..n])))).await; }
                },
                r = async { stderr.as_mut().unwrap().read(&mut err_buf).await }, if stderr.is_some() => match r {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => { let _ = tx.send(Ok(Bytes::from(encode_frame(STDERR, &err_buf[..n])))).await; }
                },
            }
        }
        let status = match child.wait().await {
            Ok(st) => ExitStatus {
                exit_code: st.code().unwrap_or(126),
                error: None,
            },
            Err(e) => ExitStatus {
                exit_code: 126,
                error: Some(format!("waiting for exec: {e}")),
            },
        };
        let _ = tx.send(Ok(Bytes::from(encode_exit(&status)))).await;
    });
    Ok((
        [("content-type", CONTENT_TYPE)],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// The protocol an upgrade request asks for (WebSocket, SPDY, a stream protocol version),
/// or `None` for a plain request.
pub(super) fn upgrade_request(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let connection_upgrade = get("connection")
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = get("upgrade");
    let protocols = [
        get("sec-websocket-protocol"),
        get("x-stream-protocol-version"),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect::<Vec<_>>()
    .join(", ");
    if upgrade.is_empty() && !connection_upgrade && protocols.is_empty() {
        return None;
    }
    let what = match (upgrade.is_empty(), protocols.is_empty()) {
        (false, false) => format!("{upgrade} ({protocols})"),
        (false, true) => upgrade,
        (true, false) => protocols,
        (true, true) => "a connection upgrade".to_string(),
    };
    Some(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_are_recognised() {
        let mut h = HeaderMap::new();
        assert_eq!(upgrade_request(&h), None);
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert(
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            upgrade_request(&h).unwrap(),
            "websocket (v5.channel.k8s.io, v4.channel.k8s.io)"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(upgrade_request(&h).unwrap(), "v4.channel.k8s.io");
    }
}
