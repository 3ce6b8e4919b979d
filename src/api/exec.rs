//! `POST .../pods/{name}/exec`: runs a command in a running container and
//! streams its output as frames (see `cli::exec_stream`), ending with its exit code.

use axum::body::{Body, Bytes};
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

pub async fn exec(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // kubectl asks for a WebSocket (then SPDY) upgrade and tries the next protocol when one
    // fails: answering any of them with skiff's own stream ran the command once per attempt.
    // Refuse every upgrade before anything runs; only skiff's plain streamed POST execs.
    if let Some(asked) = upgrade_request(&headers) {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: skiffd does not speak {asked} for exec yet (use `skiff exec`); nothing was run"
        )));
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
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
    let pod = find(&s, &ns, &name)?;
    let cs = pick_container(&pod, container.as_deref())?;
    let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
    let id = cs
        .container_id
        .as_deref()
        .and_then(|c| c.strip_prefix(ID_SCHEME))
        .filter(|_| running)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to upgrade connection: container {} not found in pod {name}: it is not running",
                cs.name
            ))
        })?
        .to_string();
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
fn upgrade_request(headers: &HeaderMap) -> Option<String> {
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
