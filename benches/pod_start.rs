//! Pod-start driver for `scripts/bench-pod-start.sh`: times "manifest file
//! appears -> pod Running" against a running skiffd, over its API socket.
//!
//! It talks HTTP/1.1 over a plain `UnixStream` (one request per connection),
//! so polling costs skiffd one small request and the driver no process spawn;
//! with `curl` in a shell loop the fork/exec alone would be ~5 ms, about a
//! tenth of what is measured.
//!
//! Usage (the script runs the built binary directly; `cargo bench` adds a
//! `--bench` argument, which is ignored):
//!
//! ```text
//! pod_start single  SOCKET MANIFEST_DIR RUNS
//! pod_start burst   SOCKET MANIFEST_DIR STAGING_DIR COUNT
//! pod_start drain   SOCKET MANIFEST_DIR TIMEOUT_S
//! ```
//!
//! Output is one `key value...` line per figure (milliseconds), for the script
//! to turn into the table.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often the pod is polled while waiting for Running.
const POLL: Duration = Duration::from_millis(2);
/// How long one pod may take before the run counts as failed.
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["single", sock, dir, runs] => runs
            .parse()
            .map_err(|e| format!("RUNS: {e}"))
            .and_then(|n| single(Path::new(sock), Path::new(dir), n)),
        ["burst", sock, dir, staging, count] => count
            .parse()
            .map_err(|e| format!("COUNT: {e}"))
            .and_then(|n| burst(Path::new(sock), Path::new(dir), Path::new(staging), n)),
        ["drain", sock, dir, secs] => secs
            .parse()
            .map_err(|e| format!("TIMEOUT_S: {e}"))
            .and_then(|s| drain(Path::new(sock), Path::new(dir), Duration::from_secs(s))),
        _ => Err("usage: pod_start single SOCK DIR RUNS | burst SOCK DIR STAGING COUNT | drain SOCK DIR SECS".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod_start: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The benchmark pod: one busybox container that sleeps, no grace period so
/// removal between runs is quick.
fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: skiff.test/busybox:latest\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n"
    )
}

/// `RUNS` times: write a manifest under a name skiffd ignores, rename it into
/// place, poll until Running; then remove it and wait until the pod is gone.
fn single(sock: &Path, dir: &Path, runs: usize) -> Result<(), String> {
    let stamp = std::process::id();
    let (mut visible, mut running) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("bench-single-{stamp}-{i}");
        let path = dir.join(format!("{name}.yaml"));
        let tmp = dir.join(format!(".{name}.yaml.tmp"));
        let t0 = Instant::now();
        std::fs::write(&tmp, manifest(&name)).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut seen = None;
        loop {
            let (code, body) = get(sock, &format!("/api/v1/namespaces/default/pods/{name}"))?;
            let now = t0.elapsed();
            if code == 200 {
                seen.get_or_insert(now);
                let pod: Value =
                    serde_json::from_slice(&body).map_err(|e| format!("pod JSON: {e}"))?;
                if is_running(&pod) {
                    running.push(ms(now));
                    visible.push(ms(seen.unwrap_or(now)));
                    break;
                }
                if let Some(w) = waiting_reason(&pod)
                    && w != "ContainerCreating"
                {
                    return Err(format!("{name}: container waiting: {w}"));
                }
            }
            if now > TIMEOUT {
                return Err(format!(
                    "{name}: not Running after {TIMEOUT:?} (last HTTP {code})"
                ));
            }
            std::thread::sleep(POLL);
        }
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        wait_gone(sock, &name)?;
        // Let the teardown (unmounts, shim exit) finish so it does not overlap the next start.
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("single_running_ms {}", join(&running));
    println!("single_visible_ms {}", join(&visible));
    Ok(())
}

/// Writes `COUNT` manifests into STAGING (same filesystem), renames them all
/// into DIR at once and waits until every pod is Running. Leaves them running.
fn burst(sock: &Path, dir: &Path, staging: &Path, count: usize) -> Result<(), String> {
    let stamp = std::process::id();
    std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let names: Vec<String> = (0..count)
        .map(|i| format!("bench-burst-{stamp}-{i:02}"))
        .collect();
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    for n in &names {
        let from = staging.join(format!("{n}.yaml"));
        std::fs::write(&from, manifest(n)).map_err(|e| format!("{}: {e}", from.display()))?;
        moves.push((from, dir.join(format!("{n}.yaml"))));
    }
    let t0 = Instant::now();
    for (from, to) in &moves {
        std::fs::rename(from, to).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    let moved = ms(t0.elapsed());
    let mut first_seen: Vec<Option<f64>> = vec![None; count];
    let mut first_running: Vec<Option<f64>> = vec![None; count];
    loop {
        let (code, body) = get(sock, "/api/v1/namespaces/default/pods")?;
        let now = ms(t0.elapsed());
        if code == 200 {
            let list: Value =
                serde_json::from_slice(&body).map_err(|e| format!("list JSON: {e}"))?;
            for pod in list["items"].as_array().into_iter().flatten() {
                let Some(i) = pod["metadata"]["name"]
                    .as_str()
                    .and_then(|n| names.iter().position(|m| m == n))
                else {
                    continue;
                };
                first_seen[i].get_or_insert(now);
                if is_running(pod) {
                    first_running[i].get_or_insert(now);
                }
            }
        }
        if first_running.iter().all(Option::is_some) {
            break;
        }
        if t0.elapsed() > TIMEOUT {
            let n = first_running.iter().filter(|r| r.is_some()).count();
            return Err(format!("burst: only {n}/{count} Running after {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut running: Vec<f64> = first_running.into_iter().flatten().collect();
    let mut seen: Vec<f64> = first_seen.into_iter().flatten().collect();
    running.sort_by(f64::total_cmp);
    seen.sort_by(f64::total_cmp);
    println!("burst_rename_ms {moved:.1}");
    println!("burst_running_ms {}", join(&running));
    println!("burst_visible_ms {}", join(&seen));
    Ok(())
}

/// Removes every manifest in DIR and waits until skiffd lists no pods.
fn drain(sock: &Path, dir: &Path, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    for e in std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
    {
        let _ = std::fs::remove_file(e.path());
    }
    loop {
        let (code, body) = get(sock, "/api/v1/namespaces/default/pods")?;
        if code == 200 {
            let list: Value =
                serde_json::from_slice(&body).map_err(|e| format!("list JSON: {e}"))?;
            let n = list["items"].as_array().map_or(0, Vec::len);
            if n == 0 {
                println!("drain_ms {:.1}", ms(t0.elapsed()));
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(format!("drain: {n} pods still listed after {timeout:?}"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(sock: &Path, name: &str) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let (code, _) = get(sock, &format!("/api/v1/namespaces/default/pods/{name}"))?;
        if code == 404 {
            return Ok(());
        }
        if t0.elapsed() > TIMEOUT {
            return Err(format!(
                "{name}: still listed {TIMEOUT:?} after its manifest was removed"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Phase Running and every container's state `running`, as the brief defines it.
fn is_running(pod: &Value) -> bool {
    let st = &pod["status"];
    st["phase"] == "Running"
        && st["containerStatuses"].as_array().is_some_and(|cs| {
            !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object())
        })
}

fn waiting_reason(pod: &Value) -> Option<String> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_owned))
}

/// One `GET` over a fresh connection; returns status code and (de-chunked) body.
fn get(sock: &Path, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\nAccept: application/json\r\n\r\n")
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no header end in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad status line"))?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_txt = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_txt:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}
