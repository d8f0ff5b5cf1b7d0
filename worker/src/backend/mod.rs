//! Backends named by `http-to`: connecting with round robin and failover, and a per-thread
//! pool of idle HTTP backend connections.

pub mod http;
pub mod pool;
pub mod uwsgi;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
}

/// A connection to one backend.
pub enum BackendStream {
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
        })
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Round robin per request, idle pooled connections first; a backend that refuses is
    /// skipped for the next one. Returns the last error (and the backend it names) when
    /// none accepts.
    pub fn connect(
        &self,
        pool: &mut pool::Pool,
        timeout: Duration,
    ) -> Result<Connected<'_>, (io::Error, String)> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = (io::Error::other("no backend configured"), String::new());
        for i in 0..n {
            let index = (start + i) % n;
            let (addr, target) = &self.targets[index];
            if let Some(stream) = pool.take(index) {
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
                Err(e) => last = (e, addr.to_string()),
            }
        }
        Err(last)
    }

    /// A fresh connection to backend `index` (retry after a stale pooled one).
    pub fn reconnect(&self, index: usize, timeout: Duration) -> io::Result<BackendStream> {
        connect(&self.targets[index].1, timeout)
    }
}

fn connect(target: &Target, timeout: Duration) -> io::Result<BackendStream> {
    match target {
        Target::Unix(path) => UnixStream::connect(path).map(BackendStream::Unix),
        Target::Tcp(addrs) => {
            let mut last = io::Error::other("address resolved to nothing");
            for addr in addrs {
                match TcpStream::connect_timeout(addr, timeout) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(BackendStream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

impl BackendStream {
    pub fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            BackendStream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            BackendStream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            BackendStream::Unix(s) => s.as_fd(),
            BackendStream::Tcp(s) => s.as_fd(),
        }
    }

    /// Read into uninitialized memory (no zero-fill before each read). Honors the socket's
    /// read timeout like `read`.
    pub fn read_uninit(&mut self, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.fd());
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; recv(2) writes at most
            // that many and never reads them.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// An idle keep-alive connection is usable when the peer has neither closed it nor sent
    /// anything unasked: a non-blocking peek must find nothing to read.
    pub fn is_idle_and_open(&self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: the fd is valid for the call; the buffer outlives it and its length is
        // passed.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd()),
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
        match self {
            BackendStream::Unix(s) => s.read(buf),
            BackendStream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for BackendStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BackendStream::Unix(s) => s.write(buf),
            BackendStream::Tcp(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            BackendStream::Unix(s) => s.write_vectored(bufs),
            BackendStream::Tcp(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
