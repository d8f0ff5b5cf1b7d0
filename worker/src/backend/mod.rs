//! Backends named by `http-to`: connecting with round robin and failover.

pub mod uwsgi;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
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

impl Backends {
    /// Resolve every backend; an address that does not resolve names itself.
    pub fn resolve(addrs: &[BackendAddr]) -> Result<Self, String> {
        let targets = addrs
            .iter()
            .map(|a| {
                let t = match a {
                    BackendAddr::UwsgiUnix(p) => Target::Unix(p.clone()),
                    BackendAddr::UwsgiTcp(hp) => Target::Tcp(
                        hp.to_socket_addrs()
                            .map_err(|e| format!("backend {hp}: {e}"))?
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

    /// Round robin per request; a backend that refuses is skipped for the next one.
    /// Returns the last error when none accepts.
    pub fn connect(
        &self,
        timeout: Duration,
    ) -> Result<(BackendStream, &BackendAddr), (io::Error, String)> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = (io::Error::other("no backend configured"), String::new());
        for i in 0..n {
            let (addr, target) = &self.targets[(start + i) % n];
            match connect(target, timeout) {
                Ok(s) => return Ok((s, addr)),
                Err(e) => last = (e, addr.to_string()),
            }
        }
        Err(last)
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

    /// We have sent the whole request.
    pub fn shutdown_write(&self) {
        let _ = match self {
            BackendStream::Unix(s) => s.shutdown(Shutdown::Write),
            BackendStream::Tcp(s) => s.shutdown(Shutdown::Write),
        };
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
