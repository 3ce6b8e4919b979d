//! The long-lived half of a shim: copy a running container's output into its
//! CRI log, forward signals, reap, and hand the exit status on.
//!
//! `skiff-shim start` needs libcontainer (and so a large binary) only until the
//! container runs. It then `execve`s `skiff-shim-mon`, a small binary built
//! from this file and [`super::crilog`] alone (std and libc, no tokio, serde
//! or tracing), so that the process that lives as long as the container maps a
//! few hundred KiB instead of the whole runtime. The PID stays the same, so the
//! daemon's pidfd, `state.json` and adoption after a restart are unaffected;
//! the child-subreaper flag, the session and the blocked signal mask survive
//! `execve` too (a signal that arrives in between stays pending).
//!
//! When the container has exited, the monitor `execve`s `skiff-shim finish`
//! again, which checks the cgroup's OOM counter, deletes libcontainer's state
//! and cgroup and writes `exit.json` durably, exactly as before. Should that
//! `execve` fail, the monitor writes the exit record itself.
//!
//! This file must stay free of crate dependencies other than `libc`: it is
//! compiled into `skiff-shim-mon` through a `#[path]` module.

use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::attach::{self, Slot};
use super::crilog::{LineSplitter, RotatingLog, Stream};

/// File name of the monitor binary, next to `skiff-shim`.
pub const MONITOR_BIN: &str = "skiff-shim-mon";

/// How the container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// Its status was lost (not our child any more, or waiting failed).
    Unknown,
}

impl Exit {
    /// `exited:N`, `signaled:N` or `unknown`, as passed on the command line.
    pub fn to_arg(self) -> String {
        match self {
            Exit::Code(c) => format!("exited:{c}"),
            Exit::Signal(s) => format!("signaled:{s}"),
            Exit::Unknown => "unknown".into(),
        }
    }

    /// Parses [`Exit::to_arg`]'s form; anything else is `Unknown`.
    pub fn from_arg(s: &str) -> Exit {
        let num = |v: &str| v.parse::<i32>().ok();
        match s.split_once(':') {
            Some(("exited", v)) => num(v).map_or(Exit::Unknown, Exit::Code),
            Some(("signaled", v)) => num(v).map_or(Exit::Unknown, Exit::Signal),
            _ => Exit::Unknown,
        }
    }

    /// Exit code and signal as the kubelet reports them (128+N when killed by N).
    pub fn code_and_signal(self) -> (i32, Option<i32>) {
        match self {
            Exit::Code(c) => (c, None),
            Exit::Signal(s) => (128 + s, Some(s)),
            Exit::Unknown => (255, None),
        }
    }

    fn from_wait_status(st: libc::c_int) -> Option<Exit> {
        if libc::WIFEXITED(st) {
            Some(Exit::Code(libc::WEXITSTATUS(st)))
        } else if libc::WIFSIGNALED(st) {
            Some(Exit::Signal(libc::WTERMSIG(st)))
        } else {
            None
        }
    }
}

/// When the shim rotates a container's log (the kubelet's
/// `--container-log-max-size` and `--container-log-max-files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Largest size of one log file in bytes; 0 for no rotation.
    pub max_size: u64,
    /// Most log files of one container run, the current one included.
    pub max_files: usize,
}

impl Default for LogLimits {
    /// The kubelet's defaults: 10Mi, 5 files.
    fn default() -> Self {
        LogLimits {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// What the monitor needs to know; also what `skiff-shim finish` is given back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    pub id: String,
    pub pid: i32,
    /// The container's stdout pipe, or its terminal's master with `tty`.
    pub stdout_fd: RawFd,
    /// The container's stderr pipe; -1 with `tty` (a terminal merges it into stdout).
    pub stderr_fd: RawFd,
    /// The write end of the container's stdin pipe, or a duplicate of its terminal's master
    /// with `tty`; -1 without stdin.
    pub stdin_fd: RawFd,
    /// The listening attach socket (see [`super::attach`]); -1: none.
    pub attach_fd: RawFd,
    /// The container has stdin (`stdin: true`): attach sessions may feed it.
    pub stdin: bool,
    /// `stdinOnce`: its stdin is closed when the first attach session with stdin ends.
    pub stdin_once: bool,
    /// `tty: true`: `stdout_fd` is the master of the container's terminal.
    pub tty: bool,
    pub log: PathBuf,
    /// Rotation limits of the log.
    pub log_limits: LogLimits,
    /// The `skiff-shim` binary to hand the exit status to.
    pub shim: PathBuf,
    pub bundle: PathBuf,
    pub runtime_root: PathBuf,
    pub state_dir: PathBuf,
}

impl MonitorArgs {
    /// The monitor's command line (after the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["supervise".into()];
        let mut put = |k: &str, val: OsString| {
            v.push(k.into());
            v.push(val);
        };
        put("--id", self.id.clone().into());
        put("--pid", self.pid.to_string().into());
        put("--stdout-fd", self.stdout_fd.to_string().into());
        put("--stderr-fd", self.stderr_fd.to_string().into());
        put("--stdin-fd", self.stdin_fd.to_string().into());
        put("--attach-fd", self.attach_fd.to_string().into());
        let flags = [
            (self.stdin, "stdin"),
            (self.stdin_once, "stdin-once"),
            (self.tty, "tty"),
        ];
        let flags: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
        put("--stdio", flags.join(",").into());
        put("--log", self.log.clone().into());
        put(
            "--log-max-size",
            self.log_limits.max_size.to_string().into(),
        );
        put(
            "--log-max-files",
            self.log_limits.max_files.to_string().into(),
        );
        put("--shim", self.shim.clone().into());
        put("--bundle", self.bundle.clone().into());
        put("--runtime-root", self.runtime_root.clone().into());
        put("--state-dir", self.state_dir.clone().into());
        v
    }

    /// Parses [`MonitorArgs::to_args`] (without the leading verb).
    pub fn parse(args: &[OsString]) -> Result<MonitorArgs, String> {
        let mut m = MonitorArgs {
            stdin_fd: -1,
            attach_fd: -1,
            ..MonitorArgs::default()
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = it
                .next()
                .ok_or_else(|| format!("{} needs a value", k.to_string_lossy()))?;
            let s = v.to_string_lossy();
            let int = |what: &str| s.parse::<i32>().map_err(|e| format!("{what} {s:?}: {e}"));
            match k.to_string_lossy().as_ref() {
                "--id" => m.id = s.into_owned(),
                "--pid" => m.pid = int("--pid")?,
                "--stdout-fd" => m.stdout_fd = int("--stdout-fd")?,
                "--stderr-fd" => m.stderr_fd = int("--stderr-fd")?,
                "--stdin-fd" => m.stdin_fd = int("--stdin-fd")?,
                "--attach-fd" => m.attach_fd = int("--attach-fd")?,
                "--stdio" => {
                    for flag in s.split(',').filter(|f| !f.is_empty()) {
                        match flag {
                            "stdin" => m.stdin = true,
                            "stdin-once" => m.stdin_once = true,
                            "tty" => m.tty = true,
                            other => return Err(format!("unknown --stdio flag {other}")),
                        }
                    }
                }
                "--log" => m.log = PathBuf::from(v),
                "--log-max-size" => {
                    m.log_limits.max_size = s
                        .parse()
                        .map_err(|e| format!("--log-max-size {s:?}: {e}"))?
                }
                "--log-max-files" => {
                    m.log_limits.max_files = s
                        .parse()
                        .map_err(|e| format!("--log-max-files {s:?}: {e}"))?
                }
                "--shim" => m.shim = PathBuf::from(v),
                "--bundle" => m.bundle = PathBuf::from(v),
                "--runtime-root" => m.runtime_root = PathBuf::from(v),
                "--state-dir" => m.state_dir = PathBuf::from(v),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let stderr_ok = if m.tty {
            m.stderr_fd == -1
        } else {
            m.stderr_fd >= 3 && m.stdout_fd != m.stderr_fd
        };
        if m.pid <= 0 || m.stdout_fd < 3 || !stderr_ok {
            return Err("--pid, --stdout-fd and --stderr-fd (none with a tty) are required".into());
        }
        let fds = m.fds();
        let distinct = fds
            .iter()
            .all(|a| fds.iter().filter(|b| *b == a).count() == 1);
        if !distinct || (m.stdin && m.stdin_fd < 3) {
            return Err("--stdin-fd and --attach-fd must be distinct descriptors above 2".into());
        }
        Ok(m)
    }

    /// The descriptors handed over to the monitor.
    pub fn fds(&self) -> Vec<RawFd> {
        [
            self.stdout_fd,
            self.stderr_fd,
            self.stdin_fd,
            self.attach_fd,
        ]
        .into_iter()
        .filter(|&fd| fd >= 0)
        .collect()
    }
}

fn cstring(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

/// Replaces the process image with `program args...` (same environment).
/// Returns only on failure.
pub fn exec(program: &Path, args: &[OsString]) -> io::Error {
    let build = || -> io::Result<(CString, Vec<CString>)> {
        let prog = cstring(program.as_os_str().as_bytes())?;
        let mut argv = vec![prog.clone()];
        for a in args {
            argv.push(cstring(a.clone().into_vec())?);
        }
        Ok((prog, argv))
    };
    let (prog, argv) = match build() {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `prog` and every pointer in `ptrs` point into CStrings that
    // outlive the call; the array is NULL-terminated; environ is the process's own.
    unsafe { libc::execv(prog.as_ptr(), ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD with an integer flag on an fd number; a bad fd gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every fd above 2 except `keep`, so that nothing the start phase
/// opened without `O_CLOEXEC` lives on in the monitor.
fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut from: libc::c_uint = 3;
    for &k in &keep {
        if k as libc::c_uint > from {
            close_range(from, k as libc::c_uint - 1);
        }
        from = k as libc::c_uint + 1;
    }
    close_range(from, libc::c_uint::MAX);
}

fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range only closes descriptors; the ones we still use are
    // outside [first, last], and no Rust object owns the others at this point.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
}

/// Entry point of `skiff-shim-mon`: `skiff-shim-mon supervise --id ... --pid ...`.
pub fn monitor_main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().map(|a| a.as_bytes()) != Some(b"supervise") {
        eprintln!(
            "usage: {MONITOR_BIN} supervise --id ID --pid PID --stdout-fd N --stderr-fd N ..."
        );
        return 2;
    }
    let m = match MonitorArgs::parse(&args[1..]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{MONITOR_BIN}: {e}");
            return 2;
        }
    };
    close_other_fds(&m.fds());
    let own = |fd: RawFd| {
        (fd >= 0).then(|| {
            let _ = set_cloexec(fd, true);
            // SAFETY: the start phase handed this descriptor over to us and nothing
            // else in this process refers to it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
    };
    let (Some(out), err, stdin, listener) = (
        own(m.stdout_fd),
        own(m.stderr_fd),
        own(m.stdin_fd),
        own(m.attach_fd),
    ) else {
        return 2;
    };
    let io = Stdio {
        stdout: out,
        stderr: err,
        attach: listener.map(|l| Attach {
            listener: l,
            stdin,
            stdin_once: m.stdin_once,
            tty: m.tty,
        }),
    };
    drop_startup_pages();
    let exit = supervise(m.pid, io, &m.log, m.log_limits);
    let finished_at = now_rfc3339();
    let mut finish: Vec<OsString> = vec!["finish".into()];
    for (k, v) in [
        ("--id", OsString::from(&m.id)),
        ("--bundle", m.bundle.clone().into()),
        ("--runtime-root", m.runtime_root.clone().into()),
        ("--state-dir", m.state_dir.clone().into()),
        ("--status", exit.to_arg().into()),
        ("--finished-at", finished_at.clone().into()),
    ] {
        finish.push(k.into());
        finish.push(v);
    }
    let e = exec(&m.shim, &finish);
    // Could not get back into skiff-shim (binary removed by an upgrade?):
    // record the status ourselves; the daemon removes the cgroup with the pod.
    eprintln!(
        "{MONITOR_BIN}: running {} finish: {e}; writing the exit record directly",
        m.shim.display()
    );
    let _ = fs::remove_dir_all(m.runtime_root.join(&m.id));
    let (code, signal) = exit.code_and_signal();
    let reason = if code == 0 { "Completed" } else { "Error" };
    if let Err(e) = write_durable(
        &m.state_dir,
        "exit.json",
        exit_json(code, signal, reason, &finished_at).as_bytes(),
    ) {
        eprintln!("{MONITOR_BIN}: writing exit record: {e}");
        return 1;
    }
    0
}

/// Drops the pages that only process startup touched (the dynamic loader's
/// relocation pass, libc's init and IFUNC resolvers, which fault in 64 KiB at
/// a time) from our page tables, so that RSS shows what the loop really uses.
///
/// Only clean, read-only, file-backed private mappings are touched: their
/// pages are exactly the file's, so `MADV_DONTNEED` just unmaps them and a
/// later access maps the same page-cache page again. Mappings with anonymous
/// (copy-on-write) pages, such as RELRO after relocation, are left alone.
fn drop_startup_pages() {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let (Some(first), Some(second)) = (f.next(), f.next()) else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-') {
            // A mapping header: `start-end perms offset dev inode [path]`.
            let path = f.nth(3).unwrap_or("");
            let clean_candidate = second.len() == 4
                && second.starts_with('r')
                && !second.contains('w')
                && second.ends_with('p')
                && path.starts_with('/');
            current = match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                (Ok(a), Ok(b)) if clean_candidate && b > a => Some((a, b)),
                _ => None,
            };
        } else if first == "Anonymous:"
            && let (Some(r), "0") = (current.take(), second)
        {
            ranges.push(r);
        }
    }
    for (a, b) in ranges {
        // SAFETY: the range is a whole private, read-only file mapping of this
        // process without copy-on-write pages (checked above; the process is
        // single-threaded, so nothing changes in between); dropping its pages
        // cannot change what a later read sees.
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
    }
}

/// The `exit.json` document (the shape of `shim::ExitRecord`), without serde.
pub fn exit_json(code: i32, signal: Option<i32>, reason: &str, finished_at: &str) -> String {
    let signal = signal
        .map(|s| format!(",\"signal\":{s}"))
        .unwrap_or_default();
    // Reason and time come from fixed sets of characters; nothing to escape.
    format!(
        "{{\"exitCode\":{code}{signal},\"reason\":\"{reason}\",\"finishedAt\":\"{finished_at}\"}}"
    )
}

/// Writes `data` to `dir/name` (0600, as everything skiff keeps) so that it survives a power
/// loss: for records nothing else can rebuild, such as an exit status.
pub fn write_durable(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    super::atomic::write(&dir.join(name), data, 0o600, super::atomic::Sync::Durable)
}

/// Signals the monitor acts on; blocked before the `execve` so none is lost.
pub fn block_signals() {
    // SAFETY: sigset manipulation on a local set, then sigprocmask on it.
    unsafe {
        let set = signal_set();
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset only adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGCHLD,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGPIPE,
        ] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn signal_fd() -> Option<OwnedFd> {
    block_signals();
    let set = signal_set();
    // SAFETY: signalfd(-1, ...) creates a new descriptor from a valid set.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    // SAFETY: a non-negative return is a fresh fd nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads pending signals and acts on them: SIGTERM/SIGINT are forwarded to
/// the container's init, SIGUSR1 kills it.
fn handle_signals(sfd: &OwnedFd, pid: i32, exited: bool) {
    loop {
        // SAFETY: an all-zero signalfd_siginfo is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                sfd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n != size as isize {
            return;
        }
        let forward = match info.ssi_signo as i32 {
            libc::SIGTERM | libc::SIGINT => Some(libc::SIGTERM),
            libc::SIGUSR1 => Some(libc::SIGKILL),
            _ => None,
        };
        if let (Some(sig), false) = (forward, exited) {
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Reaps every exited child (we are a subreaper); returns the init's status once it is gone.
fn reap(init: i32) -> Option<Exit> {
    let mut found = None;
    loop {
        let mut st: libc::c_int = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            // 0: children left but none exited; -1/ECHILD: none left at all.
            if r < 0
                && found.is_none()
                && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
            {
                // The init is not (or no longer) our child: its status is lost.
                // SAFETY: kill with signal 0 only checks for existence.
                if unsafe { libc::kill(init, 0) } < 0 {
                    found = Some(Exit::Unknown);
                }
            }
            break;
        }
        if r == init {
            found = Exit::from_wait_status(st).or(found);
        }
    }
    found
}

/// A container's stdio as the monitor holds it.
pub struct Stdio {
    /// Its stdout pipe, or its terminal's master.
    pub stdout: OwnedFd,
    /// Its stderr pipe; `None` with a terminal.
    pub stderr: Option<OwnedFd>,
    /// The attach socket; `None` when it could not be made (the log is written all the same).
    pub attach: Option<Attach>,
}

/// What the attach socket serves.
pub struct Attach {
    /// The listening socket.
    pub listener: OwnedFd,
    /// The container's stdin (pipe write end or terminal master); `None` without `stdin: true`.
    pub stdin: Option<OwnedFd>,
    pub stdin_once: bool,
    /// `Stdio::stdout` is a terminal's master (resizes go to it).
    pub tty: bool,
}

impl Attach {
    fn serve(self, stdout: RawFd) -> attach::Server {
        let stdin = self.stdin.and_then(|fd| {
            // Never block the monitor on a container that does not read its stdin.
            attach::set_nonblocking(fd.as_raw_fd()).ok()?;
            Some(attach::Stdin::new(fd, self.stdin_once, self.tty))
        });
        attach::Server::new(self.listener, stdin, self.tty.then_some(stdout))
    }
}

/// What a poll entry of the supervision loop belongs to.
#[derive(Clone, Copy)]
enum Source {
    Pipe(usize),
    Signals,
    Attach(Slot),
}

/// Copies the container's output into the CRI log (and to attach sessions) until its init has
/// exited (and the pipes are drained); returns how it ended.
pub fn supervise(pid: i32, io: Stdio, log_path: &Path, limits: LogLimits) -> Exit {
    let sfd = signal_fd();
    // 0600 (RotatingLog): a log holds whatever the container printed (Secrets too).
    let mut log = RotatingLog::open(log_path, limits.max_size, limits.max_files).ok();
    let mut splitters = [
        LineSplitter::new(Stream::Stdout),
        LineSplitter::new(Stream::Stderr),
    ];
    let stdout_fd = io.stdout.as_raw_fd();
    let mut server = io.attach.map(|a| a.serve(stdout_fd));
    let mut pipes = [Some(File::from(io.stdout)), io.stderr.map(File::from)];
    let mut status: Option<Exit> = None;
    let mut buf = vec![0u8; 32 * 1024];
    let mut drain_deadline: Option<Instant> = None;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(8);
    let mut sources: Vec<Source> = Vec::with_capacity(8);
    let mut slots: Vec<Slot> = Vec::with_capacity(8);
    loop {
        if status.is_none() {
            status = reap(pid);
            if status.is_some() {
                // Processes outside a private PID namespace may still hold the pipes; give them a moment.
                drain_deadline = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        if pipes.iter().all(Option::is_none) && status.is_some() {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        fds.clear();
        sources.clear();
        for (i, p) in pipes.iter().enumerate() {
            if let Some(f) = p {
                fds.push(pollin(f.as_raw_fd()));
                sources.push(Source::Pipe(i));
            }
        }
        if let Some(s) = &sfd {
            fds.push(pollin(s.as_raw_fd()));
            sources.push(Source::Signals);
        }
        if let Some(srv) = &server {
            slots.clear();
            srv.poll_fds(&mut fds, &mut slots);
            sources.extend(slots.iter().map(|&s| Source::Attach(s)));
        }
        let timeout = if drain_deadline.is_some() { 100 } else { 1000 };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        for (pfd, &source) in fds.iter().zip(&sources) {
            let w = match source {
                Source::Attach(slot) if pfd.revents != 0 => {
                    if let Some(srv) = server.as_mut() {
                        srv.ready(slot, pfd.revents);
                    }
                    continue;
                }
                _ if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 => {
                    continue;
                }
                Source::Attach(_) => continue,
                Source::Signals => {
                    if let Some(s) = &sfd {
                        handle_signals(s, pid, status.is_some());
                    }
                    continue;
                }
                Source::Pipe(w) => w,
            };
            let Some(f) = pipes[w].as_mut() else { continue };
            let now = now_rfc3339();
            match f.read(&mut buf) {
                // A terminal's master is non-blocking (the stdin copy shares it).
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Ok(0) | Err(_) => {
                    if let Some(l) = log.as_mut() {
                        let _ = splitters[w].finish(l, &now);
                    }
                    pipes[w] = None;
                }
                Ok(n) => {
                    if let Some(l) = log.as_mut() {
                        let _ = splitters[w].feed(l, &buf[..n], &now);
                    }
                    if let Some(srv) = server.as_mut() {
                        let stream = if w == 0 {
                            attach::STDOUT
                        } else {
                            attach::STDERR
                        };
                        srv.broadcast(stream, &buf[..n]);
                    }
                }
            }
        }
    }
    if let Some(l) = log.as_mut() {
        let now = now_rfc3339();
        for s in &mut splitters {
            let _ = s.finish(l, &now);
        }
        let _ = l.sync_data();
    }
    // Dropping the server closes every attach session: they see the end.
    drop(server);
    status.unwrap_or(Exit::Unknown)
}

fn pollin(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The current time as RFC 3339 in UTC with nanoseconds, trailing zeros
/// trimmed (Go's `RFC3339Nano`, what CRI logs use).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch plus nanoseconds as RFC 3339 UTC.
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), by
/// counting whole 400-year eras (146097 days each) and then years within the
/// era from a March-based calendar, so that leap days fall at the end.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year [0, 365]
    let mp = (5 * doy + 2) / 153; // March-based month [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(951_782_400, 5),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            format_rfc3339(1_798_761_599, 120_000_000),
            "2026-12-31T23:59:59.12Z"
        );
        assert_eq!(format_rfc3339(4_107_542_400, 0), "2100-03-01T00:00:00Z");
        // Every day for a few centuries agrees with jiff.
        for day in (-200_000i64..200_000).step_by(97) {
            let secs = day * 86_400 + 3_723;
            let ours = format_rfc3339(secs, 1_000);
            let theirs = jiff::Timestamp::new(secs, 1_000).unwrap().to_string();
            assert_eq!(ours, theirs, "day {day}");
        }
    }

    #[test]
    fn exit_status_round_trips_through_arguments() {
        for e in [Exit::Code(0), Exit::Code(3), Exit::Signal(9), Exit::Unknown] {
            assert_eq!(Exit::from_arg(&e.to_arg()), e);
        }
        assert_eq!(Exit::Signal(15).code_and_signal(), (143, Some(15)));
        assert_eq!(Exit::from_arg("exited:x"), Exit::Unknown);
    }

    #[test]
    fn monitor_arguments_round_trip() {
        let m = MonitorArgs {
            id: "abc".into(),
            pid: 42,
            stdout_fd: 5,
            stderr_fd: 7,
            stdin_fd: 8,
            attach_fd: 9,
            stdin: true,
            stdin_once: true,
            tty: false,
            log: "/l/0.log".into(),
            log_limits: LogLimits {
                max_size: 1 << 20,
                max_files: 3,
            },
            shim: "/bin/skiff-shim".into(),
            bundle: "/b".into(),
            runtime_root: "/r".into(),
            state_dir: "/s".into(),
        };
        let args = m.to_args();
        assert_eq!(args[0], "supervise");
        assert_eq!(MonitorArgs::parse(&args[1..]).unwrap(), m);
        assert!(MonitorArgs::parse(&["--pid".into(), "1".into()]).is_err());
    }

    #[test]
    fn exit_json_reads_back_as_an_exit_record() {
        let rec: crate::runtime::shim::ExitRecord =
            serde_json::from_str(&exit_json(137, Some(9), "Error", "2026-01-01T00:00:00Z"))
                .unwrap();
        assert_eq!(rec.exit_code, 137);
        assert_eq!(rec.signal, Some(9));
        assert_eq!(rec.reason, "Error");
        let rec: crate::runtime::shim::ExitRecord =
            serde_json::from_str(&exit_json(0, None, "Completed", "x")).unwrap();
        assert_eq!(rec.signal, None);
    }
}
