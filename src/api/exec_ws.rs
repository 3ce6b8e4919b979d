//! `kubectl exec` over WebSocket, as the kubelet serves it: the `v5.channel.k8s.io` and
//! `v4.channel.k8s.io` subprotocols. Every binary message starts with its stream: 0 stdin
//! (client to server), 1 stdout, 2 stderr, 3 the final `Status` (exit code), 4 terminal
//! resize (JSON `{"Width":..,"Height":..}`), and in v5 only, 255 "close this stream" (kubectl
//! sends `[255, 0]` at the end of its stdin).
//!
//! With `tty=true` the process gets a pseudo-terminal of its container's devpts (see
//! [`crate::runtime::pty`]; its slave end is the process's stdin, stdout and stderr, so stderr
//! is merged into stdout, as a terminal does) and resize messages set its window size.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tracing::debug;

use super::exec::{ExecRequest, running_container};
use super::{ApiError, Shared};

/// The subprotocols served, preferred first.
pub(super) const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The largest message a client may send (stdin chunks are 32 KiB from kubectl); a bigger one
/// ends the session instead of growing skiffd's memory.
const MAX_MESSAGE: usize = 1 << 20;

/// After the process exits, its terminal's output is read until it stays empty this long.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Checks the request, then upgrades; nothing runs unless the upgrade is accepted.
pub async fn upgrade(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let req = ExecRequest::parse(query.as_deref())?;
    if !(req.stdin || req.stdout || req.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    let id = running_container(&s, &ns, &name, req.container.as_deref())?;
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
    let v5 = protocol == PROTOCOLS[0];
    Ok(ws.on_upgrade(move |socket| async move {
        let session = Session { socket, v5 };
        session.run(&s, &id, req).await;
    }))
}

/// A pseudo-terminal in the container: the master end skiffd reads and writes, the slave end
/// for the process.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

/// Sets a terminal's window size.
fn set_size(master: &OwnedFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives for the call; the
    // fd is an open pty master owned by the caller.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        debug!(error = %std::io::Error::last_os_error(), "setting the exec terminal's size");
    }
}

/// The `Status` the kubelet sends on stream 3 when the process ends.
fn exit_status(argv: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn internal_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

struct Session {
    socket: WebSocket,
    v5: bool,
}

/// One output of the process, read in chunks.
struct Output {
    stream: u8,
    reader: Option<Box<dyn AsyncRead + Unpin + Send>>,
    buf: Vec<u8>,
}

impl Output {
    fn new(stream: u8, reader: Option<Box<dyn AsyncRead + Unpin + Send>>) -> Output {
        Output {
            stream,
            reader,
            buf: vec![0; 32 * 1024],
        }
    }

    /// The next chunk with its stream byte in front, or `None` at the end (a pty's end is EIO).
    async fn next(&mut self) -> Option<Bytes> {
        let reader = self.reader.as_mut()?;
        match reader.read(&mut self.buf[1..]).await {
            Ok(0) | Err(_) => {
                self.reader = None;
                None
            }
            Ok(n) => {
                self.buf[0] = self.stream;
                Some(Bytes::copy_from_slice(&self.buf[..=n]))
            }
        }
    }
}

impl Session {
    async fn send(&mut self, stream: u8, data: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(stream);
        msg.extend_from_slice(data);
        self.socket
            .send(Message::Binary(Bytes::from(msg)))
            .await
            .is_ok()
    }

    async fn finish(mut self, status: &Value) {
        let _ = self.send(ERROR, status.to_string().as_bytes()).await;
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }

    async fn run(self, s: &Shared, id: &str, req: ExecRequest) {
        let mut cmd = s.runtime.exec_command(id, &req.argv);
        let pty = if req.tty {
            match s.runtime.exec_terminal(id) {
                Ok((master, slave)) => Some(Pty { master, slave }),
                Err(e) => {
                    return self
                        .finish(&internal_status(&format!("opening a terminal: {e}")))
                        .await;
                }
            }
        } else {
            None
        };
        let master = match &pty {
            Some(p) => {
                let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
                match (
                    dup(&p.slave),
                    dup(&p.slave),
                    dup(&p.slave),
                    p.master.try_clone(),
                ) {
                    (Ok(i), Ok(o), Ok(e), Ok(m)) => {
                        cmd.stdin(i).stdout(o).stderr(e);
                        Some(m)
                    }
                    _ => {
                        return self
                            .finish(&internal_status("duplicating the terminal's fds"))
                            .await;
                    }
                }
            }
            None => {
                cmd.stdin(if req.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
                if !req.stdout {
                    cmd.stdout(Stdio::null());
                }
                if !req.stderr {
                    cmd.stderr(Stdio::null());
                }
                None
            }
        };
        let spawned = cmd.spawn();
        // The process holds its own copies of the slave end; ours must go, or reading the
        // master never ends.
        drop(cmd);
        let pty_slave = pty.map(|p| p.slave);
        drop(pty_slave);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return self
                    .finish(&internal_status(&format!("starting exec: {e}")))
                    .await;
            }
        };
        self.pump(&mut child, master, req).await;
    }

    async fn pump(mut self, child: &mut Child, master: Option<OwnedFd>, req: ExecRequest) {
        let (mut stdin, mut out, mut err): (Option<Input>, Output, Output) = match &master {
            Some(m) => {
                let (reader, writer) = match (m.try_clone(), m.try_clone()) {
                    (Ok(r), Ok(w)) => (r, w),
                    _ => {
                        return self
                            .finish(&internal_status("duplicating the terminal's fds"))
                            .await;
                    }
                };
                let reader = tokio::fs::File::from_std(std::fs::File::from(reader));
                let writer = tokio::fs::File::from_std(std::fs::File::from(writer));
                (
                    req.stdin.then_some(Input::Pty(writer)),
                    Output::new(STDOUT, Some(Box::new(reader))),
                    Output::new(STDERR, None),
                )
            }
            None => (
                child.stdin.take().map(Input::Pipe),
                Output::new(
                    STDOUT,
                    child
                        .stdout
                        .take()
                        .map(|r| Box::new(r) as Box<dyn AsyncRead + Unpin + Send>),
                ),
                Output::new(
                    STDERR,
                    child
                        .stderr
                        .take()
                        .map(|r| Box::new(r) as Box<dyn AsyncRead + Unpin + Send>),
                ),
            ),
        };
        let mut exited = None;
        loop {
            // With a terminal the master end may still be open after the process exits (a
            // background child holds the slave): the exit ends the session then.
            if exited.is_some() && master.is_some() && out.reader.is_some() {
                // What the terminal still holds after the exit, until it is empty for a
                // moment (a background child may keep the terminal open for ever).
                while let Ok(Some(c)) = tokio::time::timeout(DRAIN_IDLE, out.next()).await {
                    if !self.send_raw(c).await {
                        return;
                    }
                }
                out.reader = None;
            }
            let outputs_done = out.reader.is_none() && err.reader.is_none();
            if outputs_done && exited.is_some() {
                break;
            }
            tokio::select! {
                chunk = out.next(), if out.reader.is_some() => {
                    if let Some(c) = chunk && !self.send_raw(c).await {
                        return;
                    }
                }
                chunk = err.next(), if err.reader.is_some() => {
                    if let Some(c) = chunk && !self.send_raw(c).await {
                        return;
                    }
                }
                status = child.wait(), if exited.is_none() => {
                    exited = Some(status);
                }
                msg = self.socket.recv() => match msg {
                    Some(Ok(Message::Binary(data))) => {
                        self.input(&data, &mut stdin, master.as_ref()).await;
                    }
                    // The Python client sends text frames; the kubelet takes them as bytes.
                    Some(Ok(Message::Text(text))) => {
                        self.input(text.as_bytes(), &mut stdin, master.as_ref()).await;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The client went away: the process is killed with the session.
                        let _ = child.start_kill();
                        return;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        let status = match exited {
            Some(Ok(st)) => exit_status(&req.argv, st.code().unwrap_or(126)),
            Some(Err(e)) => internal_status(&format!("waiting for exec: {e}")),
            None => internal_status("exec ended without a status"),
        };
        self.finish(&status).await;
    }

    async fn send_raw(&mut self, chunk: Bytes) -> bool {
        self.socket.send(Message::Binary(chunk)).await.is_ok()
    }

    /// One message from the client: stdin data, a resize, or (v5) the end of stdin.
    async fn input(&mut self, data: &[u8], stdin: &mut Option<Input>, master: Option<&OwnedFd>) {
        let Some((&stream, rest)) = data.split_first() else {
            return;
        };

        match stream {
            STDIN => {
                if let Some(i) = stdin.as_mut()
                    && i.write_all(rest).await.is_err()
                {
                    *stdin = None;
                }
            }
            RESIZE => {
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Size {
                    width: u16,
                    height: u16,
                }
                if let (Some(m), Ok(size)) = (master, serde_json::from_slice::<Size>(rest)) {
                    set_size(m, size.width, size.height);
                }
            }
            // EOF for the process: with a terminal, ^D at the start of a line.
            CLOSE if self.v5 && rest.first() == Some(&STDIN) => {
                if let Some(Input::Pty(w)) = stdin.as_mut() {
                    let _ = w.write_all(&[4]).await;
                }
                *stdin = None;
            }
            _ => {}
        }
    }
}

/// Where stdin goes: the process's pipe, or the terminal's master end.
enum Input {
    Pipe(ChildStdin),
    Pty(tokio::fs::File),
}

impl Input {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Input::Pipe(p) => p.write_all(data).await,
            Input::Pty(f) => {
                f.write_all(data).await?;
                f.flush().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_the_kubelets() {
        assert_eq!(
            exit_status(&["true".into()], 0),
            json!({"metadata": {}, "status": "Success"})
        );
        let st = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(st["reason"], "NonZeroExitCode");
        assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(st["details"]["causes"][0]["message"], "3");
    }

    #[test]
    fn requests_parse_kubectls_query() {
        let r = ExecRequest::parse(Some(
            "command=sh&command=-c&command=echo+hi&container=c&stdin=true&stdout=true&tty=true",
        ))
        .unwrap();
        assert_eq!(r.argv, ["sh", "-c", "echo hi"]);
        assert_eq!(r.container.as_deref(), Some("c"));
        assert!(r.stdin && r.stdout && r.stderr && r.tty);
        let r = ExecRequest::parse(Some("command=ls&stderr=false")).unwrap();
        assert!(!r.stdin && !r.stderr && !r.tty);
        assert!(ExecRequest::parse(Some("stdin=true")).is_err());
    }
}
