//! `skiff-shim`: the per-container supervisor (the role of conmon or a
//! containerd shim).
//!
//! libcontainer has process-wide side effects when it is called in-process
//! (it makes the caller non-dumpable, writes the caller's `oom_score_adj`,
//! `chdir`s the whole process) and is not safe to call from many threads, so
//! every libcontainer call runs here, in a small single-threaded process per
//! container. The shim creates and starts the container, owns its stdio and
//! writes the CRI log, waits for it and records the exit status durably in the
//! container's state directory. It outlives `skiffd`, which adopts it again
//! after a restart.
//!
//! Once the container runs, the shim `execve`s the small `skiff-shim-mon`
//! (see [`super::supervise`]) for the long supervision phase, which execs
//! `skiff-shim finish` again when the container has exited.
//!
//! Protocol with the daemon: the shim prints exactly one line on its stdout,
//! `ok <pid>` once the container runs or `error <message>` when it could not
//! be started, then detaches from that stdout. `SIGTERM` to the shim is
//! forwarded to the container's init; `SIGUSR1` kills it with `SIGKILL`.
//!
//! The start gate (`--gate-fd N`, the read end of a pipe): the shim creates the
//! container, then blocks on that fd until the daemon writes one byte (the pod
//! network is ready: go on and start it) or closes it without writing (the network
//! failed, or the daemon died: delete the created container and report an error).
//! While it waits, a `gated` file with its pid marks the container as created but
//! never started, so that a restarted daemon removes it instead of adopting it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use serde::{Deserialize, Serialize};

use super::supervise::{self, Exit, MonitorArgs};

/// What the shim records once the container runs (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimState {
    pub pid: i32,
    pub shim_pid: i32,
    pub started_at: String,
}

/// What the shim records when the container has ended (`exit.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub reason: String,
    pub finished_at: String,
}

pub const STATE_FILE: &str = "state.json";
pub const EXIT_FILE: &str = "exit.json";
/// Present while a shim waits at the start gate (content: its pid), and left behind
/// when the container was not started after all.
pub const GATED_FILE: &str = "gated";
/// The fd number the daemon gives the gate's read end in the shim.
pub const GATE_FD: std::os::fd::RawFd = 3;

/// Entry point of the `skiff-shim` binary.
pub fn main() -> i32 {
    // libcontainer reports details through `tracing`; they go to the shim's
    // stderr, which the daemon points at `shim.log` in the container's state dir.
    // `exec` keeps stderr for the command's own output. The container's init inherits this
    // subscriber with its stderr already on the container's log: libcontainer's warning for
    // every syscall of the RuntimeDefault profile this kernel does not know (newer ones such as
    // `mseal`, skipped as Docker does) would land in the container's own log.
    let verbose = matches!(std::env::args().nth(1).as_deref(), Some("start" | "finish"));
    let _ = verbose
        && tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,libcgroups=error,libcontainer::seccomp=error",
            ))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init()
            .is_ok();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    let Some(verb) = it.next() else {
        eprintln!("usage: skiff-shim start|exec ...");
        return 2;
    };
    let mut opts = Opts::default();
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" => opts.id = it.next().unwrap_or_default(),
            "--bundle" => opts.bundle = it.next().map(PathBuf::from).unwrap_or_default(),
            "--runtime-root" => {
                opts.runtime_root = it.next().map(PathBuf::from).unwrap_or_default()
            }
            "--state-dir" => opts.state_dir = it.next().map(PathBuf::from).unwrap_or_default(),
            "--log" => opts.log = it.next().map(PathBuf::from).unwrap_or_default(),
            "--log-max-size" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) => opts.log_limits.max_size = n,
                None => {
                    eprintln!("skiff-shim: --log-max-size needs a byte count");
                    return 2;
                }
            },
            "--log-max-files" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) => opts.log_limits.max_files = n,
                None => {
                    eprintln!("skiff-shim: --log-max-files needs a number");
                    return 2;
                }
            },
            "--stdio" => {
                for flag in it.next().unwrap_or_default().split(',') {
                    match flag {
                        "" => {}
                        "stdin" => opts.stdio.stdin = true,
                        "stdin-once" => opts.stdio.stdin_once = true,
                        "tty" => opts.stdio.tty = true,
                        other => {
                            eprintln!("skiff-shim: unknown --stdio flag {other}");
                            return 2;
                        }
                    }
                }
            }
            "--status" => opts.status = it.next(),
            "--finished-at" => opts.finished_at = it.next(),
            "--gate-fd" => match it.next().and_then(|v| v.parse().ok()) {
                Some(fd) => opts.gate_fd = Some(fd),
                None => {
                    eprintln!("skiff-shim: --gate-fd needs an fd number");
                    return 2;
                }
            },
            "--" => {
                rest.extend(it.by_ref());
            }
            other => {
                eprintln!("skiff-shim: unknown argument {other}");
                return 2;
            }
        }
    }
    match verb.as_str() {
        "start" => start(&opts),
        "exec" => exec(&opts, rest),
        "finish" => {
            let exit = opts.status.as_deref().map_or(Exit::Unknown, Exit::from_arg);
            finish(&opts, exit);
            0
        }
        other => {
            eprintln!("skiff-shim: unknown verb {other}");
            2
        }
    }
}

#[derive(Default)]
struct Opts {
    id: String,
    bundle: PathBuf,
    runtime_root: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    /// `start`: when the log is rotated.
    log_limits: supervise::LogLimits,
    /// `finish`: how the container ended (`supervise::Exit::to_arg`).
    status: Option<String>,
    /// `finish`: when the monitor saw it end.
    finished_at: Option<String>,
    /// `start`: the start gate's read end (see the module docs).
    gate_fd: Option<std::os::fd::RawFd>,
    /// `start`: the container's `stdin`, `stdinOnce` and `tty`.
    stdio: StdioFlags,
}

/// A container's `stdin`, `stdinOnce` and `tty` (`--stdio stdin,stdin-once,tty`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StdioFlags {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

impl StdioFlags {
    /// The value of `--stdio`; `None` when all are off (today's command line).
    pub fn to_arg(self) -> Option<String> {
        let flags = [
            (self.stdin, "stdin"),
            (self.stdin_once, "stdin-once"),
            (self.tty, "tty"),
        ];
        let on: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
        (!on.is_empty()).then(|| on.join(","))
    }
}

/// The name of the console socket in the state directory while a `tty` container is created.
const CONSOLE_SOCKET: &str = "console.sock";

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Writes `data` to `dir/name` atomically: a reader sees the old or the new content, never a
/// torn file. 0600: these are specs and state with the pod's environment (Secrets) in them.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let mode = super::private::FILE_MODE;
    super::atomic::write(&dir.join(name), data, mode, super::atomic::Sync::Atomic)
}

/// Like [`write_atomic`], and also survives a power loss (fsync before the
/// rename). Only for records nothing else can rebuild, such as an exit status.
pub use super::supervise::write_durable;

fn report(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Points fd 1 at /dev/null so the daemon's pipe closes and a dead daemon
/// never makes the shim die of SIGPIPE.
fn detach_stdout() {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 with a valid open fd; no Rust object owns fd 1 exclusively.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn start(opts: &Opts) -> i32 {
    // First of all: the gate fd must never reach the container (libcontainer forks its
    // init from this process).
    let gate = opts.gate_fd.map(|fd| {
        let _ = supervise::set_cloexec(fd, true);
        // SAFETY: the daemon handed us this fd for exactly this use; nothing else owns it.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    });
    // Own session: a Ctrl-C to the daemon's terminal or process group must not reach us.
    let _ = nix::unistd::setsid();
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    match start_container(opts, gate) {
        Ok((pid, outs)) => {
            let state = ShimState {
                pid: pid.as_raw(),
                shim_pid: std::process::id() as i32,
                started_at: now_rfc3339(),
            };
            let json = serde_json::to_vec(&state).unwrap_or_default();
            // Durable: a torn state.json after a crash hides a running container.
            if let Err(e) = write_durable(&opts.state_dir, STATE_FILE, &json) {
                eprintln!("skiff-shim: writing state: {e}");
            }
            report(&format!("ok {}", pid.as_raw()));
            detach_stdout();
            let exit = hand_over(opts, pid, outs);
            finish(opts, exit);
            0
        }
        Err(msg) => {
            cleanup_runtime_state(opts);
            report(&format!("error {}", msg.replace('\n', " ")));
            1
        }
    }
}

/// The container's stdio as the shim holds it once the container runs.
struct Outputs {
    /// Its stdout pipe, or its terminal's master.
    stdout: OwnedFd,
    /// Its stderr pipe; `None` with a terminal.
    stderr: Option<OwnedFd>,
    /// The write end of its stdin pipe, or a copy of the terminal's master; `None` without
    /// `stdin: true`.
    stdin: Option<OwnedFd>,
}

/// Waits at the start gate: `Ok` when the daemon lets the container start.
fn wait_gate(opts: &Opts, gate: OwnedFd) -> Result<(), String> {
    let pid = std::process::id().to_string();
    if let Err(e) = write_atomic(&opts.state_dir, GATED_FILE, pid.as_bytes()) {
        eprintln!("skiff-shim: writing {GATED_FILE}: {e}");
    }
    let mut f = File::from(gate);
    let mut byte = [0u8; 1];
    let n = loop {
        match f.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    drop(f);
    match n {
        Ok(1) => {
            let _ = fs::remove_file(opts.state_dir.join(GATED_FILE));
            Ok(())
        }
        Ok(_) => Err("the pod network could not be set up; the created container was removed without being started".into()),
        Err(e) => Err(format!("waiting at the start gate: {e}; the created container was removed without being started")),
    }
}

fn start_container(opts: &Opts, gate: Option<OwnedFd>) -> Result<(Pid, Outputs), String> {
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) =
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| format!("pipe: {e}"))?;
    // `stdin: true` without a terminal: a pipe whose write end the monitor keeps (so the
    // container sees EOF only when that is closed); otherwise /dev/null, as before.
    let (stdin_for_container, stdin_w): (OwnedFd, Option<OwnedFd>) =
        if opts.stdio.stdin && !opts.stdio.tty {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            (r, Some(w))
        } else {
            let devnull = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            (OwnedFd::from(devnull), None)
        };
    let console = if opts.stdio.tty {
        Some(ConsoleSocket::bind(&opts.state_dir)?)
    } else {
        None
    };
    let result = (|| {
        let mut builder = ContainerBuilder::new(opts.id.clone(), SyscallType::Linux)
            .with_root_path(&opts.runtime_root)
            .map_err(|e| e.to_string())?
            .with_stdin(stdin_for_container)
            .with_stdout(out_w)
            .with_stderr(err_w);
        if let Some(c) = &console {
            builder = builder.with_console_socket(Some(c.path.clone()));
        }
        let mut container = builder
            .as_init(&opts.bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| e.to_string())?;
        // With a terminal the container's init has sent its master while being created.
        let master = match &console {
            Some(c) => Some(c.receive_master()?),
            None => None,
        };
        if let Some(pid) = container.pid() {
            super::propagation::apply(&opts.bundle, pid)?;
        }
        // Created, not started: no process of the container has run its own code yet.
        if let Some(gate) = gate {
            wait_gate(opts, gate)?;
        }
        container.start().map_err(|e| e.to_string())?;
        let pid = container
            .pid()
            .ok_or_else(|| "container has no pid after start".to_string())?;
        Ok((pid, master))
    })();
    drop(console);
    match result {
        Ok((pid, Some(master))) => {
            let stdin = if opts.stdio.stdin {
                Some(master.try_clone().map_err(|e| format!("dup: {e}"))?)
            } else {
                None
            };
            Ok((
                pid,
                Outputs {
                    stdout: master,
                    stderr: None,
                    stdin,
                },
            ))
        }
        Ok((pid, None)) => {
            // Back to blocking reads for the supervision loop.
            let _ = nix::fcntl::fcntl(
                err_r.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
            );
            Ok((
                pid,
                Outputs {
                    stdout: out_r,
                    stderr: Some(err_r),
                    stdin: stdin_w,
                },
            ))
        }
        Err(msg) => {
            // The container's init reports why it failed on its stderr, which is our pipe.
            let mut detail = Vec::new();
            let _ = File::from(err_r).read_to_end(&mut detail);
            let detail = String::from_utf8_lossy(&detail);
            let lines: Vec<&str> = detail
                .lines()
                .filter(|l| l.contains("ERROR"))
                .map(|l| l.split_once("ERROR").map(|(_, r)| r.trim()).unwrap_or(l))
                .collect();
            if lines.is_empty() {
                Err(msg)
            } else {
                Err(format!("{msg}: {}", lines.join("; ")))
            }
        }
    }
}

/// The socket over which libcontainer hands over the master of a `tty` container's terminal
/// (made in the container's own devpts, as runc does with `--console-socket`).
struct ConsoleSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn bind(state_dir: &Path) -> Result<ConsoleSocket, String> {
        let path = state_dir.join(CONSOLE_SOCKET);
        let _ = fs::remove_file(&path);
        // libcontainer connects through a symlink in its own directory: a long state
        // directory is no problem for it, but binding needs a short enough path.
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .or_else(|_| bind_via_proc(state_dir))
            .map_err(|e| format!("console socket {}: {e}", path.display()))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// The terminal's master, sent by the container's init (it is non-blocking: the monitor
    /// polls it and shares it with the stdin writer).
    fn receive_master(&self) -> Result<OwnedFd, String> {
        use std::os::fd::FromRawFd;
        self.listener
            .set_nonblocking(true)
            .map_err(|e| format!("console socket: {e}"))?;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| format!("the container did not send its terminal: {e}"))?;
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let mut buf = [0u8; 64];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("receiving the container's terminal: {e}"))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| format!("console message: {e}"))? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(r) = c {
                fds.extend(r);
            }
        }
        // SAFETY: descriptors the kernel just passed to us; each is owned once here.
        let mut owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let master = owned
            .pop()
            .ok_or("the container sent no terminal on its console socket")?;
        super::attach::set_nonblocking(master.as_raw_fd()).map_err(|e| format!("terminal: {e}"))?;
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn bind_via_proc(state_dir: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let dir = File::open(state_dir)?;
    let path = format!("/proc/self/fd/{}/{CONSOLE_SOCKET}", dir.as_raw_fd());
    std::os::unix::net::UnixListener::bind(path)
}

/// Continues as `skiff-shim-mon` (same process, small binary) for the
/// supervision phase. Returns only when that is impossible; the supervision
/// then runs here, in the big binary.
fn hand_over(opts: &Opts, pid: Pid, outs: Outputs) -> Exit {
    supervise::block_signals();
    let shim = fs::read_link("/proc/self/exe").unwrap_or_default();
    let monitor = shim.with_file_name(supervise::MONITOR_BIN);
    // Made only now, after the container runs: nothing of it exists while the container's
    // processes are forked. Without it the log is still written; attach reports the error.
    let listener = match super::attach::listen(&opts.state_dir) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("skiff-shim: attach socket: {e}");
            None
        }
    };
    let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
    let args = MonitorArgs {
        id: opts.id.clone(),
        pid: pid.as_raw(),
        stdout_fd: outs.stdout.as_raw_fd(),
        stderr_fd: raw(&outs.stderr),
        stdin_fd: raw(&outs.stdin),
        attach_fd: raw(&listener),
        stdin: opts.stdio.stdin && outs.stdin.is_some(),
        stdin_once: opts.stdio.stdin_once,
        tty: opts.stdio.tty,
        log: opts.log.clone(),
        log_limits: opts.log_limits,
        shim,
        bundle: opts.bundle.clone(),
        runtime_root: opts.runtime_root.clone(),
        state_dir: opts.state_dir.clone(),
    };
    let fds = args.fds();
    let inherit = |on: bool| {
        fds.iter()
            .try_for_each(|&fd| supervise::set_cloexec(fd, !on))
    };
    let err = match inherit(true) {
        Ok(()) => supervise::exec(&monitor, &args.to_args()),
        Err(e) => e,
    };
    let _ = inherit(false);
    eprintln!(
        "skiff-shim: running {}: {err}; supervising in-process",
        monitor.display()
    );
    let stdio = supervise::Stdio {
        stdout: outs.stdout,
        stderr: outs.stderr,
        attach: listener.map(|l| supervise::Attach {
            listener: l,
            stdin: outs.stdin,
            stdin_once: opts.stdio.stdin_once,
            tty: opts.stdio.tty,
        }),
    };
    supervise::supervise(pid.as_raw(), stdio, &opts.log, opts.log_limits)
}

/// Records how the container ended: OOM check, libcontainer state and cgroup
/// removed, then `exit.json` written durably (in that order, so a daemon that
/// sees the record finds nothing else left to clean).
fn finish(opts: &Opts, exit: Exit) {
    let oom = oom_killed(opts);
    let (exit_code, signal) = exit.code_and_signal();
    let reason = if oom {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let rec = ExitRecord {
        exit_code,
        signal,
        reason: reason.to_string(),
        finished_at: opts.finished_at.clone().unwrap_or_else(now_rfc3339),
    };
    cleanup_runtime_state(opts);
    if let Ok(json) = serde_json::to_vec(&rec)
        && let Err(e) = write_durable(&opts.state_dir, EXIT_FILE, &json)
    {
        eprintln!("skiff-shim: writing exit record: {e}");
    }
}

/// Whether the kernel OOM killer acted in the container's cgroup (v1 or v2).
fn oom_killed(opts: &Opts) -> bool {
    let Ok(cfg) = fs::read(opts.bundle.join("config.json")) else {
        return false;
    };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&cfg) else {
        return false;
    };
    let Some(path) = spec.pointer("/linux/cgroupsPath").and_then(|v| v.as_str()) else {
        return false;
    };
    let rel = path.trim_start_matches('/');
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(rel)
        .join("memory.oom_control");
    for file in [v2, v1] {
        if let Ok(text) = fs::read_to_string(&file) {
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                if let (Some(k), Some(v)) = (parts.next(), parts.next())
                    && k == "oom_kill"
                    && v.parse::<u64>().unwrap_or(0) > 0
                {
                    return true;
                }
            }
        }
    }
    false
}

/// Removes libcontainer's state (and with it the container's cgroup).
fn cleanup_runtime_state(opts: &Opts) {
    let dir = opts.runtime_root.join(&opts.id);
    if !dir.exists() {
        return;
    }
    match Container::load(dir.clone()) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                eprintln!("skiff-shim: deleting container {}: {e}", opts.id);
                let _ = fs::remove_dir_all(&dir);
            }
        }
        Err(_) => {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// The identity an exec'd process gets: the container's own.
#[derive(Debug, Default, PartialEq, Eq)]
struct ExecIdentity {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    cwd: Option<PathBuf>,
}

fn exec_identity(opts: &Opts) -> ExecIdentity {
    let Ok(c) = Container::load(opts.runtime_root.join(&opts.id)) else {
        return ExecIdentity::default();
    };
    fs::read(c.bundle().join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|spec| identity_of(&spec))
        .unwrap_or_default()
}

/// Reads the process identity out of an OCI `config.json`.
fn identity_of(spec: &serde_json::Value) -> ExecIdentity {
    let user = &spec["process"]["user"];
    let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    ExecIdentity {
        uid: id(&user["uid"]),
        gid: id(&user["gid"]),
        additional_gids: user["additionalGids"]
            .as_array()
            .map(|a| a.iter().map(id).collect())
            .unwrap_or_default(),
        cwd: spec["process"]["cwd"]
            .as_str()
            .filter(|c| c.starts_with('/'))
            .map(PathBuf::from),
    }
}

/// `skiff-shim exec`: runs a process in a running container with the shim's
/// stdio and exits with its status (126 when it could not start, 127 when the
/// executable does not exist, 128+N when killed by signal N).
fn exec(opts: &Opts, argv: Vec<String>) -> i32 {
    if argv.is_empty() {
        eprintln!("skiff-shim: exec needs a command");
        return 126;
    }
    let builder = match ContainerBuilder::new(opts.id.clone(), SyscallType::Linux)
        .with_root_path(&opts.runtime_root)
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skiff-shim: exec failed: {e}");
            return 126;
        }
    };
    // libcontainer's tenant process runs as root in "/" unless told
    // otherwise; an exec runs as the container's user, groups and workingDir,
    // as with runc and the kubelet (a runAsUser container must not hand out
    // root shells).
    let user = exec_identity(opts);
    // The container's seccomp filter applies to exec'd processes too (libcontainer's tenant
    // path drops it); loading it needs no_new_privs.
    let executor = super::exec_seccomp::SeccompExecutor::new(super::exec_seccomp::of_container(
        &opts.runtime_root,
        &opts.id,
    ));
    let filtered = executor.has_filter();
    let builder = builder.with_executor(executor);
    let mut tenant = builder.as_tenant();
    if filtered {
        tenant = tenant.with_no_new_privs(true);
    }
    let result = tenant
        .with_detach(false)
        .with_user(Some(user.uid))
        .with_group(Some(user.gid))
        .with_additional_gids(user.additional_gids)
        .with_cwd(user.cwd)
        .with_container_args(argv.clone())
        .build();
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            let msg = e.to_string();
            let detail = msg.rsplit(" : ").next().unwrap_or(&msg);
            if msg.contains("not found") {
                eprintln!("exec: {:?}: executable file not found in $PATH", argv[0]);
                return 127;
            }
            eprintln!("exec {:?} failed: {detail}", argv[0]);
            return 126;
        }
    };
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("skiff-shim: waiting for exec process: {e}");
                return 126;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_runs_as_the_containers_user_groups_and_cwd() {
        let spec = serde_json::json!({"process": {"user": {"uid": 1000, "gid": 3000, "additionalGids": [2000, 4000]}, "cwd": "/work"}});
        assert_eq!(
            identity_of(&spec),
            ExecIdentity {
                uid: 1000,
                gid: 3000,
                additional_gids: vec![2000, 4000],
                cwd: Some("/work".into())
            }
        );
        assert_eq!(identity_of(&serde_json::json!({})), ExecIdentity::default());
    }
}
