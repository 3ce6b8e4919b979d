//! The attach socket of a container's monitor (`pods/attach`, the role of conmon's attach
//! socket): a `SOCK_SEQPACKET` unix socket, `attach.sock` in the container's state directory,
//! over which skiffd receives the container's output live and feeds its stdin.
//!
//! One packet is one message, its first byte says what it is:
//! - client to monitor: `[HELLO, flags]` first (bit 0: the session wants stdin; bit 1: only
//!   ask whether it would be accepted, then close), then
//!   `[STDIN, data...]`, `[RESIZE, w_hi, w_lo, h_hi, h_lo]`, `[CLOSE_STDIN]`;
//! - monitor to client: `[OK]` or `[REFUSED, message...]` answering the hello, then
//!   `[STDOUT, data...]` and `[STDERR, data...]` until the container has ended, when the
//!   monitor closes the socket.
//!
//! The bounds (an attacker may attach as often as the API lets it): at most [`MAX_CLIENTS`]
//! sessions; the monitor never blocks on a client (a client whose socket buffer is full is
//! dropped: its output is in the log anyway); at most one packet of stdin is held while the
//! container does not read (the writer's socket is not read meanwhile, so the backpressure
//! reaches skiffd and the WebSocket); one stdin writer at a time (a second `attach -i` is
//! refused while the first lasts). With `stdinOnce` the container's stdin is closed when the
//! first session with stdin ends.
//!
//! This file must stay free of crate dependencies other than `libc`: `skiff-shim-mon`
//! includes it through a `#[path]` module.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The socket's file name in the container's state directory.
pub const SOCKET_NAME: &str = "attach.sock";
/// Most attach sessions of one container at a time.
pub const MAX_CLIENTS: usize = 8;
/// Largest data in one packet (kubectl's stdin chunks are 32 KiB too); bigger input is split
/// by the sender.
pub const MAX_DATA: usize = 32 * 1024;

/// Client: the first packet, `[HELLO, flags]`.
pub const HELLO: u8 = b'A';
/// Hello flag: the session feeds the container's stdin.
pub const FLAG_STDIN: u8 = 1;
/// Hello flag: only ask whether such a session would be accepted (nothing is held).
pub const FLAG_PROBE: u8 = 2;
/// Client: stdin data (the channel protocol's stream 0).
pub const STDIN: u8 = 0;
/// Client: a terminal resize (the channel protocol's stream 4).
pub const RESIZE: u8 = 4;
/// Client: the end of its stdin (the channel protocol's "close stream").
pub const CLOSE_STDIN: u8 = 255;
/// Monitor: the hello was accepted.
pub const OK: u8 = b'O';
/// Monitor: the hello was refused; the rest is the reason.
pub const REFUSED: u8 = b'E';
/// Monitor: container output (the channel protocol's streams 1 and 2).
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// A client's packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Hello { stdin: bool, probe: bool },
    Stdin(&'a [u8]),
    Resize { width: u16, height: u16 },
    CloseStdin,
}

impl<'a> Request<'a> {
    /// Reads one packet; `None` for anything malformed.
    pub fn parse(p: &'a [u8]) -> Option<Request<'a>> {
        let (&kind, rest) = p.split_first()?;
        match (kind, rest) {
            (HELLO, [flags]) => Some(Request::Hello {
                stdin: flags & FLAG_STDIN != 0,
                probe: flags & FLAG_PROBE != 0,
            }),
            (STDIN, data) => Some(Request::Stdin(data)),
            (RESIZE, [w0, w1, h0, h1]) => Some(Request::Resize {
                width: u16::from_be_bytes([*w0, *w1]),
                height: u16::from_be_bytes([*h0, *h1]),
            }),
            (CLOSE_STDIN, _) => Some(Request::CloseStdin),
            _ => None,
        }
    }
}

/// The hello packet.
pub fn hello(stdin: bool, probe: bool) -> [u8; 2] {
    let flag = |on: bool, f: u8| if on { f } else { 0 };
    [HELLO, flag(stdin, FLAG_STDIN) | flag(probe, FLAG_PROBE)]
}

/// A resize packet.
pub fn resize(width: u16, height: u16) -> [u8; 5] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [RESIZE, w0, w1, h0, h1]
}

/// The container's stdin as the monitor holds it.
pub struct Stdin {
    /// The write end of its pipe, or a duplicate of its terminal's master; `None` once closed.
    fd: Option<File>,
    /// Input the container has not taken yet (at most one packet).
    pending: Vec<u8>,
    /// `stdinOnce`: closed when the first session with stdin ends.
    once: bool,
    /// A terminal: closing means sending ^D, as a terminal's EOF.
    tty: bool,
}

impl Stdin {
    /// `fd` must be non-blocking.
    pub fn new(fd: OwnedFd, once: bool, tty: bool) -> Stdin {
        Stdin {
            fd: Some(File::from(fd)),
            pending: Vec::new(),
            once,
            tty,
        }
    }

    fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Writes what the container takes now and keeps the rest.
    fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        self.flush();
    }

    /// Writes pending input; an error (the container closed its stdin) closes ours.
    fn flush(&mut self) {
        let Some(f) = self.fd.as_mut() else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match f.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.fd = None;
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// The end of the container's input: EOF on its pipe, ^D on its terminal.
    fn close(&mut self) {
        if self.tty {
            self.pending.push(4);
            self.flush();
        }
        self.fd = None;
        self.pending.clear();
    }
}

struct Client {
    fd: OwnedFd,
    greeted: bool,
    writer: bool,
}

/// What a poll entry of [`Server::poll_fds`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Listener,
    StdinWritable,
    Client(usize),
}

/// The monitor's side of the attach socket.
pub struct Server {
    listener: OwnedFd,
    clients: Vec<Option<Client>>,
    stdin: Option<Stdin>,
    /// The terminal's master, for resizes.
    pty: Option<RawFd>,
    /// Whether a session with stdin has ended (for `stdinOnce`).
    stdin_used: bool,
}

impl Server {
    /// Serves on `listener` (a non-blocking listening `SOCK_SEQPACKET` socket).
    pub fn new(listener: OwnedFd, stdin: Option<Stdin>, pty: Option<RawFd>) -> Server {
        Server {
            listener,
            clients: Vec::new(),
            stdin,
            pty,
            stdin_used: false,
        }
    }

    /// The descriptors to poll, with what each belongs to.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>, slots: &mut Vec<Slot>) {
        let mut add = |fd: RawFd, events: libc::c_short, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        add(self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener);
        let waiting = self.stdin.as_ref().filter(|s| !s.pending.is_empty());
        if let Some(f) = waiting.and_then(|s| s.fd.as_ref()) {
            add(f.as_raw_fd(), libc::POLLOUT, Slot::StdinWritable);
        }
        for (i, c) in self.clients.iter().enumerate() {
            let Some(c) = c else { continue };
            // The writer is not read while its last input waits: backpressure, not a buffer.
            let events = if c.writer && waiting.is_some() {
                0
            } else {
                libc::POLLIN
            };
            add(c.fd.as_raw_fd(), events, Slot::Client(i));
        }
    }

    /// Acts on a poll result.
    pub fn ready(&mut self, slot: Slot, revents: libc::c_short) {
        match slot {
            Slot::Listener => self.accept(),
            Slot::StdinWritable => {
                if let Some(s) = self.stdin.as_mut() {
                    s.flush();
                }
            }
            Slot::Client(i) => {
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_client(i);
                }
            }
        }
    }

    /// Sends container output to every session; a session that cannot take it now is dropped.
    pub fn broadcast(&mut self, stream: u8, data: &[u8]) {
        if !self.clients.iter().flatten().any(|c| c.greeted) {
            return;
        }
        for chunk in data.chunks(MAX_DATA) {
            let mut packet = Vec::with_capacity(chunk.len() + 1);
            packet.push(stream);
            packet.extend_from_slice(chunk);
            for i in 0..self.clients.len() {
                let sent = match &self.clients[i] {
                    Some(c) if c.greeted => send(&c.fd, &packet),
                    _ => continue,
                };
                if !sent {
                    self.drop_client(i);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accept4 with null address pointers returns a new fd or -1.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: a descriptor the kernel just returned to us.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if !peer_is_privileged(&fd) {
                continue;
            }
            let live = self.clients.iter().flatten().count();
            if live >= MAX_CLIENTS {
                refuse(&fd, "too many attach sessions to this container");
                continue;
            }
            let client = Client {
                fd,
                greeted: false,
                writer: false,
            };
            match self.clients.iter().position(Option::is_none) {
                Some(i) => self.clients[i] = Some(client),
                None => self.clients.push(Some(client)),
            }
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = vec![0u8; MAX_DATA + 1];
        let n = match &self.clients[i] {
            Some(c) => {
                // SAFETY: recv into a buffer of the length passed.
                unsafe {
                    libc::recv(
                        c.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                }
            }
            None => return,
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return;
            }
            return self.drop_client(i);
        }
        if n == 0 {
            return self.drop_client(i);
        }
        let packet = &buf[..n as usize];
        match Request::parse(packet) {
            Some(Request::Hello { stdin, probe }) => self.greet(i, stdin, probe),
            Some(Request::Stdin(data)) if self.is_writer(i) => {
                if let Some(s) = self.stdin.as_mut() {
                    s.push(data);
                }
            }
            Some(Request::Resize { width, height }) => {
                if let Some(m) = self.pty {
                    set_window_size(m, width, height);
                }
            }
            Some(Request::CloseStdin) if self.is_writer(i) => self.end_stdin_session(i),
            Some(_) => {}
            None => self.drop_client(i),
        }
    }

    fn is_writer(&self, i: usize) -> bool {
        self.clients[i]
            .as_ref()
            .is_some_and(|c| c.writer && c.greeted)
    }

    fn greet(&mut self, i: usize, wants_stdin: bool, probe: bool) {
        let Some(c) = self.clients[i].as_ref() else {
            return;
        };
        if c.greeted {
            return self.drop_client(i);
        }
        let refusal = if !wants_stdin {
            None
        } else if self.stdin.is_none() {
            Some("the container was not started with stdin: true")
        } else if !self.stdin.as_ref().is_some_and(Stdin::is_open) {
            Some("the container's stdin is closed (stdinOnce: its first attach session has ended)")
        } else if self.clients.iter().flatten().any(|c| c.writer) {
            Some("another attach session holds the container's stdin")
        } else {
            None
        };
        if let Some(why) = refusal {
            refuse(&c.fd, why);
            self.clients[i] = None;
            return;
        }
        if probe {
            send(&c.fd, &[OK]);
            self.clients[i] = None;
            return;
        }
        if !send(&c.fd, &[OK]) {
            return self.drop_client(i);
        }
        if let Some(c) = self.clients[i].as_mut() {
            c.greeted = true;
            c.writer = wants_stdin;
        }
    }

    /// The writer's stdin ended (its EOF, or it went away): with `stdinOnce` that closes the
    /// container's stdin; otherwise the next session may write.
    fn end_stdin_session(&mut self, i: usize) {
        if let Some(c) = self.clients[i].as_mut() {
            c.writer = false;
        }
        self.stdin_used = true;
        if let Some(s) = self.stdin.as_mut()
            && s.once
        {
            s.close();
        }
    }

    fn drop_client(&mut self, i: usize) {
        if self.is_writer(i) {
            self.end_stdin_session(i);
        }
        self.clients[i] = None;
    }
}

/// Sends one packet without blocking; `false` when the peer is gone or cannot take it now.
fn send(fd: &OwnedFd, packet: &[u8]) -> bool {
    // SAFETY: send from a buffer of the length passed.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == packet.len() as isize
}

fn refuse(fd: &OwnedFd, why: &str) {
    let mut p = vec![REFUSED];
    p.extend_from_slice(why.as_bytes());
    send(fd, &p);
}

/// Only root (skiffd) may attach; the socket's directory is private too, this is a second lock.
fn peer_is_privileged(fd: &OwnedFd) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    rc == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

/// Sets a terminal's window size (the kubelet's resize stream).
pub fn set_window_size(master: RawFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, valid for the call.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd number; a bad fd gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A unix address for `dir/name`; long paths go through `/proc/self/fd/N` of `dir_fd`
/// (`sun_path` holds 108 bytes, a pod's state directory may be longer).
fn address(dir: &Path, dir_fd: &File, name: &str) -> io::Result<(libc::sockaddr_un, u32)> {
    let direct = dir.join(name);
    let path = if direct.as_os_str().len() < 100 {
        direct.as_os_str().as_bytes().to_vec()
    } else {
        format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd()).into_bytes()
    };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(&path) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    Ok((addr, len as u32))
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the listening attach socket in `dir` (mode 0600), replacing a stale one.
pub fn listen(dir: &Path) -> io::Result<OwnedFd> {
    let dir_fd = File::open(dir)?;
    let (addr, len) = address(dir, &dir_fd, SOCKET_NAME)?;
    let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
    let fd = seqpacket_socket()?;
    // SAFETY: bind with an address of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let path = CString::new(dir.join(SOCKET_NAME).as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: chmod on a NUL-terminated path.
    unsafe { libc::chmod(path.as_ptr(), 0o600) };
    // SAFETY: listen on our own socket.
    if unsafe { libc::listen(fd.as_raw_fd(), MAX_CLIENTS as libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Connects to the attach socket in `dir` (a non-blocking socket).
pub fn connect(dir: &Path) -> io::Result<OwnedFd> {
    let dir_fd = File::open(dir)?;
    let (addr, len) = address(dir, &dir_fd, SOCKET_NAME)?;
    let fd = seqpacket_socket()?;
    // SAFETY: connect with an address of the length passed; a unix connect completes at once.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        assert_eq!(
            Request::parse(&hello(true, false)),
            Some(Request::Hello {
                stdin: true,
                probe: false
            })
        );
        assert_eq!(
            Request::parse(&hello(false, true)),
            Some(Request::Hello {
                stdin: false,
                probe: true
            })
        );
        assert_eq!(
            Request::parse(&resize(300, 40)),
            Some(Request::Resize {
                width: 300,
                height: 40
            })
        );
        assert_eq!(Request::parse(&[STDIN, b'x']), Some(Request::Stdin(b"x")));
        assert_eq!(Request::parse(&[CLOSE_STDIN]), Some(Request::CloseStdin));
        assert_eq!(Request::parse(&[]), None);
        assert_eq!(Request::parse(&[RESIZE, 1]), None);
        assert_eq!(Request::parse(&[HELLO]), None);
        assert_eq!(Request::parse(&[9, 1]), None);
    }

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: fresh descriptors from socketpair.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn recv(fd: &OwnedFd) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATA + 1];
        // SAFETY: recv into a buffer of the length passed.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        buf.truncate(n.max(0) as usize);
        buf
    }

    fn client(server: &mut Server, fd: OwnedFd) -> usize {
        server.clients.push(Some(Client {
            fd,
            greeted: false,
            writer: false,
        }));
        server.clients.len() - 1
    }

    /// A server with a stdin pipe (returns its read end) and no listener traffic.
    fn server(once: bool) -> (Server, File) {
        let (l, _) = pair();
        let mut p = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors from pipe2.
        let (r, w) = unsafe { (File::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        set_nonblocking(w.as_raw_fd()).unwrap();
        (Server::new(l, Some(Stdin::new(w, once, false)), None), r)
    }

    #[test]
    fn one_stdin_writer_at_a_time_and_stdin_once_closes_after_the_first() {
        use std::io::Read;
        let (mut s, mut stdin) = server(true);
        let (a, a_peer) = pair();
        let (b, b_peer) = pair();
        let ia = client(&mut s, a_peer);
        let ib = client(&mut s, b_peer);
        s.greet(ia, true, false);
        assert_eq!(recv(&a), [OK]);
        let (p, p_peer) = pair();
        let ip = client(&mut s, p_peer);
        s.greet(ip, true, true);
        assert!(String::from_utf8_lossy(&recv(&p)).contains("another attach session"));
        s.greet(ib, true, false);
        let refusal = recv(&b);
        assert_eq!(refusal[0], REFUSED);
        assert!(String::from_utf8_lossy(&refusal[1..]).contains("another attach session"));
        assert!(s.clients[ib].is_none());
        // Input reaches the container; output reaches the session.
        send(&a, &[STDIN, b'h', b'i']);
        s.read_client(ia);
        let mut got = [0u8; 2];
        stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        s.broadcast(STDOUT, b"out");
        assert_eq!(recv(&a), [STDOUT, b'o', b'u', b't']);
        // The writer's EOF closes the container's stdin (stdinOnce): the pipe reads EOF.
        send(&a, &[CLOSE_STDIN]);
        s.read_client(ia);
        let mut rest = Vec::new();
        stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let (c, c_peer) = pair();
        let ic = client(&mut s, c_peer);
        s.greet(ic, true, false);
        assert!(String::from_utf8_lossy(&recv(&c)).contains("stdinOnce"));
    }

    #[test]
    fn without_stdin_once_the_next_session_may_write() {
        let (mut s, _stdin) = server(false);
        let (a, a_peer) = pair();
        let ia = client(&mut s, a_peer);
        s.greet(ia, true, false);
        assert_eq!(recv(&a), [OK]);
        drop(a);
        s.read_client(ia);
        assert!(s.clients[ia].is_none());
        let (b, b_peer) = pair();
        let ib = client(&mut s, b_peer);
        s.greet(ib, true, false);
        assert_eq!(recv(&b), [OK]);
        assert!(s.stdin.as_ref().unwrap().is_open());
    }

    #[test]
    fn a_slow_session_is_dropped_not_waited_for() {
        let (mut s, _stdin) = server(false);
        let (a, a_peer) = pair();
        let ia = client(&mut s, a_peer);
        s.greet(ia, false, false);
        assert_eq!(recv(&a), [OK]);
        // Nobody reads `a`: its buffer fills and the monitor lets it go instead of blocking.
        for _ in 0..10_000 {
            s.broadcast(STDOUT, &[b'x'; 4096]);
            if s.clients[ia].is_none() {
                break;
            }
        }
        assert!(s.clients[ia].is_none());
    }

    #[test]
    fn stdin_needs_a_container_started_with_stdin() {
        let (l, _) = pair();
        let mut s = Server::new(l, None, None);
        let (a, a_peer) = pair();
        let ia = client(&mut s, a_peer);
        s.greet(ia, true, false);
        assert!(String::from_utf8_lossy(&recv(&a)).contains("stdin: true"));
    }
}
