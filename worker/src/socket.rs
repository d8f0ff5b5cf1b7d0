//! A client's TCP socket as OpenSSL sees it. The fd is always non-blocking: while a
//! connection is being set up, "would block" goes back to the caller (the connection is
//! parked); once it serves requests, a read or write that would block waits in poll(2) up
//! to its timeout, after giving the thread's place in the gate to a spare thread.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::poll::PollFlags;

use crate::gate;

pub struct ClientSocket {
    tcp: TcpStream,
    /// Wait for readiness (serving) instead of returning WouldBlock (setting up).
    waits: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl ClientSocket {
    /// `tcp` must be non-blocking already.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            waits: false,
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// From now on reads and writes wait (up to their timeouts) rather than return WouldBlock.
    pub fn wait_when_blocked(&mut self) {
        self.waits = true;
    }

    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.write_timeout = t;
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for ClientSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.tcp).read(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && self.waits => {
                    gate::wait_ready(self.tcp.as_fd(), PollFlags::POLLIN, self.read_timeout)?
                }
                r => return r,
            }
        }
    }
}

impl Write for ClientSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&self.tcp).write(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && self.waits => {
                    gate::wait_ready(self.tcp.as_fd(), PollFlags::POLLOUT, self.write_timeout)?
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for ClientSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

impl AsRawFd for ClientSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}
