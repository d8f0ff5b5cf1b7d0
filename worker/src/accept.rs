//! The serving threads: all wait on the worker's shared epoll set (see park.rs) and take one
//! event at a time: a new connection to accept and handshake, or a parked connection whose
//! next request arrived.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{accept4, SockFlag};
use openssl::ssl::{ErrorCode, HandshakeError, SslAcceptor, SslStream};

use crate::conn::{Conn, ThreadState};
use crate::http::errors::plaintext_on_tls_port;
use crate::park::{Event, Parked};
use crate::redirect;
use crate::server::{Kind, ListenerRt, Served, Shared};
use crate::session::ConnInfo;

pub fn serve_thread(shared: &Shared, served: &[Served<'_>], stop_fd: BorrowedFd<'_>, index: usize) {
    let mut local = ThreadState {
        index,
        ..Default::default()
    };
    loop {
        let event = match shared.parking.wait() {
            Ok(e) => e,
            Err(e) => {
                log::error!("serving thread {index}: epoll_wait: {e}");
                return;
            }
        };
        match event {
            Event::Done => return,
            Event::Nothing => {}
            Event::Stop => {
                // Stop accepting; keep serving parked connections until the worker is done.
                let fds: Vec<BorrowedFd<'_>> = served.iter().map(|s| s.socket.as_fd()).collect();
                shared.parking.unwatch(&fds, stop_fd);
            }
            Event::Resume(conn) => {
                guarded(shared, &mut local, |local| {
                    resume(shared, served, conn, local)
                });
            }
            // A connection this thread was woken for is accepted even when stopping: with
            // EPOLLEXCLUSIVE no other worker was woken for it.
            Event::Listener(i) => {
                let Some(listener) = served.get(i) else {
                    continue;
                };
                let addr = listener.addr();
                match accept4(listener.socket.as_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => {
                        shared.conn_opened();
                        let tcp = TcpStream::from(fd);
                        guarded(shared, &mut local, |local| match listener.kind {
                            Kind::Tls(tls) => accept(shared, tls, tcp, local),
                            Kind::Redirect(r) => {
                                redirect::serve(tcp, r.https_port, &shared.settings);
                                shared.conn_closed();
                                Outcome::Closed
                            }
                        });
                    }
                    // Another worker or thread took it.
                    Err(Errno::EAGAIN | Errno::ECONNABORTED | Errno::EINTR) => {}
                    Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                        log::warn!("accept on {addr}: {e}; pausing");
                        thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => log::warn!("accept on {addr}: {e}"),
                }
            }
        }
    }
}

/// Run one connection's work; a panic is logged and costs only that connection (the
/// connection itself is dropped, and the parker is told it ended).
fn guarded(
    shared: &Shared,
    local: &mut ThreadState,
    work: impl FnOnce(&mut ThreadState) -> Outcome,
) -> Outcome {
    let index = local.index;
    match catch_unwind(AssertUnwindSafe(|| work(local))) {
        Ok(outcome) => outcome,
        Err(_) => {
            log::error!("serving thread {index}: a connection panicked; the thread goes on");
            shared.conn_closed();
            *local = ThreadState {
                index,
                ..Default::default()
            };
            Outcome::Panicked
        }
    }
}

enum Outcome {
    Closed,
    Parked,
    Panicked,
}

/// A new connection: refuse plain HTTP, handshake within `handshake-timeout`, serve.
fn accept(
    shared: &Shared,
    listener: &ListenerRt,
    tcp: TcpStream,
    local: &mut ThreadState,
) -> Outcome {
    let result = (|| {
        let mut peer = tcp.peer_addr().ok()?;
        let local_addr = tcp.local_addr().ok()?;
        let t = shared.settings.timeouts;
        let deadline = Instant::now() + t.handshake;
        tcp.set_nodelay(true).ok()?;
        tcp.set_read_timeout(Some(t.handshake)).ok()?;
        if listener.proxy_protocol {
            // Within the same handshake-timeout: the header, then the handshake.
            match crate::proxy_protocol::read_header(&tcp, t.handshake) {
                Ok(header) => peer = header.addrs.map_or(peer, |(source, _)| source),
                Err(e) => {
                    log::debug!("{peer}: refused on {}: {e}", listener.addr);
                    return None;
                }
            }
        }
        let mut first = [0u8; 1];
        match tcp.peek(&mut first) {
            Ok(1) if first[0] == 0x16 => {}
            Ok(1) if first[0].is_ascii_uppercase() => {
                log::debug!("{peer}: plain HTTP on the TLS port {}", listener.addr);
                let _ = tcp.set_write_timeout(Some(t.handshake));
                let _ = (&tcp).write_all(plaintext_on_tls_port());
                return None;
            }
            _ => return None,
        }
        let tls = match handshake(&listener.acceptor, tcp, deadline) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("{peer}: TLS handshake on {} failed: {e}", listener.addr);
                return None;
            }
        };
        let info = ConnInfo::from_ssl(tls.ssl(), peer, local_addr, listener.export_cert);
        Some((tls, info))
    })();
    match result {
        Some((tls, info)) => serve(shared, Conn::new(tls, shared, listener, info, local), false),
        None => {
            shared.conn_closed();
            Outcome::Closed
        }
    }
}

/// A parked connection whose next request has arrived.
fn resume(
    shared: &Shared,
    served: &[Served<'_>],
    conn: Box<Parked>,
    local: &mut ThreadState,
) -> Outcome {
    let Some(Kind::Tls(listener)) = served.get(conn.listener).map(|s| s.kind) else {
        shared.conn_closed();
        return Outcome::Closed;
    };
    let conn = Conn::resume(conn, shared, listener, local);
    serve(shared, conn, true)
}

/// Serve until the connection closes or goes idle (then park it). `due`: the parker saw
/// its next request arrive.
fn serve(shared: &Shared, conn: Conn<'_, '_>, due: bool) -> Outcome {
    match conn.serve(due) {
        Some(parked) => match shared.parking.park(parked) {
            Ok(()) => Outcome::Parked,
            Err(conn) => {
                log::warn!(
                    "{}: cannot park an idle connection; closing it",
                    conn.info.peer
                );
                drop(conn);
                shared.conn_closed();
                Outcome::Closed
            }
        },
        None => {
            shared.conn_closed();
            Outcome::Closed
        }
    }
}

/// The TLS handshake, done within `deadline` in total: non-blocking steps with poll(2), so a
/// client that trickles its handshake bytes cannot hold a thread longer than
/// `handshake-timeout`. The stream is blocking again afterwards.
fn handshake(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<SslStream<TcpStream>, String> {
    tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut attempt = acceptor.accept(tcp);
    loop {
        match attempt {
            Ok(stream) => {
                stream
                    .get_ref()
                    .set_nonblocking(false)
                    .map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(HandshakeError::WouldBlock(mid)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err("handshake-timeout reached".into());
                }
                let events = if mid.error().code() == ErrorCode::WANT_WRITE {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(mid.get_ref().as_fd(), events)];
                match poll(&mut fds, timeout) {
                    Ok(0) => return Err("handshake-timeout reached".into()),
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.to_string()),
                }
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(mid)) => return Err(mid.error().to_string()),
            Err(HandshakeError::SetupFailure(e)) => return Err(e.to_string()),
        }
    }
}
