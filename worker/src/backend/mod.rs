//! Backends named by `http-to`: connecting with round robin and failover, and the worker's
//! pool of idle HTTP backend connections.

pub mod http;
pub mod pool;
pub mod uwsgi;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;
use nix::sys::socket::sockopt::{SendTimeout, SocketError};
use nix::sys::socket::{
    getsockopt, setsockopt, socket, AddressFamily, SockFlag, SockType, SockaddrStorage, UnixAddr,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::gate;
use crate::settings::BackendAddr;

/// A backend with its TCP address resolved once, when the worker body is prepared.
#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(Vec<SocketAddr>),
}

#[derive(Debug)]
pub struct Backends {
    targets: Vec<(BackendAddr, Target)>,
    next: AtomicUsize,
    /// Idle keep-alive connections to HTTP backends.
    pub pool: pool::Pool,
}

/// A connection to one backend. Its fd is non-blocking: a read or write that would block
/// waits in poll(2) up to the timeout, after giving this thread's place in the gate away.
pub struct BackendStream {
    sock: Sock,
    timeout: Option<Duration>,
    /// Its fd is in the worker's shared epoll set (it waited there for an answer before).
    pub registered: bool,
}

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// A connected backend: its index in the `http-to` list and the stream.
pub struct Connected<'a> {
    pub index: usize,
    pub addr: &'a BackendAddr,
    pub stream: BackendStream,
    /// Taken from the idle pool rather than freshly connected.
    pub reused: bool,
}

impl Backends {
    /// Resolve every backend; an address that does not resolve names itself.
    pub fn resolve(addrs: &[BackendAddr]) -> Result<Self, String> {
        let targets = addrs
            .iter()
            .map(|a| {
                let t = match a {
                    BackendAddr::UwsgiUnix(p) | BackendAddr::HttpUnix(p) => Target::Unix(p.clone()),
                    BackendAddr::UwsgiTcp(hp) | BackendAddr::HttpTcp(hp) => Target::Tcp(
                        hp.to_socket_addrs()
                            .map_err(|e| format!("backend {a}: {e}"))?
                            .collect(),
                    ),
                };
                Ok((a.clone(), t))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            targets,
            next: AtomicUsize::new(0),
            pool: pool::Pool::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Round robin per request, idle pooled connections first; a backend that refuses is
    /// skipped for the next one. Returns the last error (and the backend it names) when
    /// none accepts.
    pub fn connect(&self, timeout: Duration) -> Result<Connected<'_>, (io::Error, String)> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let index = (start + i) % n;
            let (addr, target) = &self.targets[index];
            if let Some(stream) = self.pool.take(index) {
                return Ok(Connected {
                    index,
                    addr,
                    stream,
                    reused: true,
                });
            }
            match connect(target, timeout) {
                Ok(stream) => {
                    return Ok(Connected {
                        index,
                        addr,
                        stream,
                        reused: false,
                    })
                }
                Err(e) => last = Some((e, addr)),
            }
        }
        Err(match last {
            Some((e, addr)) => (e, addr.to_string()),
            None => (io::Error::other("no backend configured"), String::new()),
        })
    }

    pub fn addr(&self, index: usize) -> &BackendAddr {
        &self.targets[index].0
    }

    /// A fresh connection to backend `index` (retry after a stale pooled one).
    pub fn reconnect(&self, index: usize, timeout: Duration) -> io::Result<BackendStream> {
        connect(&self.targets[index].1, timeout)
    }
}

fn connect(target: &Target, timeout: Duration) -> io::Result<BackendStream> {
    let sock = match target {
        Target::Unix(path) => Sock::Unix(connect_unix(path, timeout)?),
        Target::Tcp(addrs) => {
            let mut last = io::Error::other("address resolved to nothing");
            let mut connected = None;
            for addr in addrs {
                match connect_tcp(addr, timeout) {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            Sock::Tcp(connected.ok_or(last)?)
        }
    };
    Ok(BackendStream {
        sock,
        timeout: None,
        registered: false,
    })
}

/// A unix connect completes at once unless the backend's backlog is full; only then does
/// this thread block (and give up its place in the gate).
fn connect_unix(path: &std::path::Path, timeout: Duration) -> io::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EAGAIN) => {
            gate::leave();
            // Blocking, bounded by the connect timeout (SO_SNDTIMEO bounds a unix connect).
            set_blocking(fd.as_fd(), true)?;
            let ms = timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
            setsockopt(&fd, SendTimeout, &TimeVal::milliseconds(ms))?;
            nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
            set_blocking(fd.as_fd(), false)?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(UnixStream::from(fd))
}

/// A non-blocking TCP connect, waited for up to `timeout`.
fn connect_tcp(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*addr)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => {
            gate::wait_ready(fd.as_fd(), PollFlags::POLLOUT, Some(timeout)).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                } else {
                    e
                }
            })?;
            let err = getsockopt(&fd, SocketError)?;
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
        }
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_blocking(fd: BorrowedFd<'_>, blocking: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if blocking {
        flags - OFlag::O_NONBLOCK
    } else {
        flags | OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

impl BackendStream {
    /// Reads and writes that would block wait this long at most (then WouldBlock).
    pub fn set_timeouts(&mut self, t: Duration) {
        self.timeout = Some(t);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.sock {
            Sock::Unix(s) => s.as_fd(),
            Sock::Tcp(s) => s.as_fd(),
        }
    }

    /// One read or write syscall, waiting for readiness while it would block.
    fn io(&self, events: PollFlags, mut op: impl FnMut(RawFd) -> isize) -> io::Result<usize> {
        let fd = self.fd();
        loop {
            let n = op(fd.as_raw_fd());
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => gate::wait_ready(fd, events, self.timeout)?,
                _ => return Err(e),
            }
        }
    }

    /// Read into uninitialized memory (no zero-fill before each read), waiting up to the
    /// timeout.
    pub fn read_uninit(&mut self, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; recv(2) writes at most
        // that many and never reads them.
        self.io(PollFlags::POLLIN, |fd| unsafe {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
        })
    }

    /// An idle keep-alive connection is usable when the peer has neither closed it nor sent
    /// anything unasked: a non-blocking peek must find nothing to read.
    pub fn is_idle_and_open(&self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: the fd is valid for the call; the buffer outlives it and its length is
        // passed.
        let n = unsafe {
            libc::recv(
                self.fd().as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

impl Read for BackendStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        self.io(PollFlags::POLLIN, |fd| unsafe {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
        })
    }
}

impl Write for BackendStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes. MSG_NOSIGNAL: a backend
        // that closed gives EPIPE, not SIGPIPE.
        self.io(PollFlags::POLLOUT, |fd| unsafe {
            libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
