//! `GET .../pods/{name}/log`: container logs, like the kubelet serves them.

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pods::find;
use super::{ApiError, Shared};
use crate::runtime::crilog;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    container: Option<String>,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    previous: bool,
    tail_lines: Option<i64>,
    #[serde(default)]
    timestamps: bool,
}

/// Picks the container a request means: the one named, or the only one.
pub fn pick_container(pod: &Pod, wanted: Option<&str>) -> Result<ContainerStatus, ApiError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let all: Vec<ContainerStatus> = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .chain(status.init_container_statuses.unwrap_or_default())
        .collect();
    let wanted = match wanted {
        Some(w) if !w.is_empty() => w.to_string(),
        _ => {
            if spec.containers.len() == 1 {
                spec.containers[0].name.clone()
            } else {
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                );
                let inits: Vec<&str> = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.as_str())
                    .collect();
                if !inits.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        inits.join(" ")
                    ));
                }
                return Err(ApiError::bad_request(msg));
            }
        }
    };
    all.into_iter().find(|c| c.name == wanted).ok_or_else(|| {
        ApiError::bad_request(format!("container {wanted} is not valid for pod {name}"))
    })
}

/// The raw CRI records of one container run: its rotated files, oldest first, then
/// the current one (read through `current`, positioned at its end afterwards). With
/// `tail`, only the newest files that hold that many lines are read.
fn read_log(
    path: &std::path::Path,
    current: Option<&mut std::fs::File>,
    tail: Option<usize>,
) -> Vec<u8> {
    let mut newest_first: Vec<Vec<u8>> = Vec::new();
    let mut lines = 0;
    if let Some(f) = current {
        let mut raw = Vec::new();
        let _ = f.read_to_end(&mut raw);
        lines += full_records(&raw);
        newest_first.push(raw);
    }
    for old in crilog::rotated_files(path).iter().rev() {
        // One more line than asked: the oldest file may begin inside a line.
        if tail.is_some_and(|n| lines > n) {
            break;
        }
        let raw = std::fs::read(old).unwrap_or_default();
        lines += full_records(&raw);
        newest_first.push(raw);
    }
    newest_first.into_iter().rev().flatten().collect()
}

/// How many lines (full records) raw CRI log bytes hold.
fn full_records(raw: &[u8]) -> usize {
    raw.split(|&b| b == b'\n')
        .filter_map(crilog::parse_record)
        .filter(|r| !r.partial)
        .count()
}

/// Whether `path` now names another file than the open `f` (the log was rotated).
fn rotated_away(f: &std::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
        _ => false,
    }
}

fn running_id(s: &Shared, ns: &str, pod: &str, container: &str) -> Option<String> {
    let p = s.store.get_pod(ns, pod)?;
    let st = p.status?;
    st.container_statuses
        .into_iter()
        .flatten()
        .chain(st.init_container_statuses.into_iter().flatten())
        .find(|c| c.name == container)
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .and_then(|c| c.container_id)
}

pub async fn log(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let pod = find(&s, &ns, &name)?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let cs = pick_container(&pod, q.container.as_deref())?;
    let restart = cs.restart_count.max(0) as u32;
    let started = cs.container_id.is_some()
        || cs
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    let file = if q.previous {
        let prev = cs
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some();
        if !prev || restart == 0 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{}\" in pod \"{name}\" not found",
                cs.name
            )));
        }
        s.runtime.log_path(&uid, &cs.name, restart - 1)
    } else {
        if !started {
            let reason = cs
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .unwrap_or_else(|| "ContainerCreating".into());
            return Err(ApiError::bad_request(format!(
                "container \"{}\" in pod \"{name}\" is waiting to start: {reason}",
                cs.name
            )));
        }
        s.runtime.log_path(&uid, &cs.name, restart)
    };
    // The current file is opened first and followed through this handle, so that a
    // rotation between reading and following loses nothing.
    let mut current = std::fs::File::open(&file).ok();
    let tail = q.tail_lines.filter(|&n| n >= 0).map(|n| n as usize);
    let raw = read_log(&file, current.as_mut(), tail);
    let rendered = crilog::render(&raw, q.timestamps);
    let body = match tail {
        Some(n) => crilog::tail_lines(&rendered, n).to_vec(),
        None => rendered,
    };
    let following = q.follow && !q.previous;
    let live_id = cs.container_id.clone();
    if !following || running_id(&s, &ns, &name, &cs.name).is_none() {
        return Ok(([("content-type", "text/plain")], body).into_response());
    }
    // Follow: send what is there, then whatever the container writes until it stops.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let _ = tx.send(Ok(Bytes::from(body))).await;
    let container = cs.name.clone();
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let alive = running_id(&s, &ns, &name, &container) == live_id && live_id.is_some();
            let mut chunk = Vec::new();
            match current.as_mut() {
                Some(f) => {
                    let _ = f.read_to_end(&mut chunk);
                    // Rotated (the path is a new file now): what was left in the old one
                    // was just read; go on with the new one from its start.
                    if chunk.is_empty() && rotated_away(f, &file) {
                        current = std::fs::File::open(&file).ok();
                        continue;
                    }
                }
                None => current = std::fs::File::open(&file).ok(),
            }
            pending.extend_from_slice(&chunk);
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                let complete: Vec<u8> = pending.drain(..=end).collect();
                let out = crilog::render(&complete, q.timestamps);
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
            if !alive && chunk.is_empty() {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok((
        [("content-type", "text/plain")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
