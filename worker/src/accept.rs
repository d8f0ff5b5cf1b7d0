//! The serving threads: each waits on its own epoll set (every listener with EPOLLEXCLUSIVE,
//! the parker's ready count, the stop pipe and the done signal), accepts and handshakes new
//! connections, and serves connections the parker hands back.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{accept4, SockFlag};
use openssl::ssl::{ErrorCode, HandshakeError, SslAcceptor, SslStream};

use crate::conn::{Conn, ThreadState};
use crate::http::errors::plaintext_on_tls_port;
use crate::park::Parked;
use crate::redirect;
use crate::server::{Kind, ListenerRt, Served, Shared};
use crate::session::ConnInfo;

const STOP_TOKEN: u64 = u64::MAX;
const READY_TOKEN: u64 = u64::MAX - 1;
const DONE_TOKEN: u64 = u64::MAX - 2;

pub fn serve_thread(shared: &Shared, served: &[Served<'_>], stop_fd: BorrowedFd<'_>, index: usize) {
    let epoll = match watch(shared, served, stop_fd) {
        Ok(e) => e,
        Err(e) => {
            log::error!("serving thread {index}: epoll setup failed: {e}");
            return;
        }
    };
    let mut local = ThreadState {
        index,
        ..Default::default()
    };
    let mut listening = true;
    let mut events = [EpollEvent::empty(); 8];
    loop {
        if listening && shared.stop_requested() {
            // Stop accepting; keep serving what the parker hands back until it is done.
            for listener in served {
                let _ = epoll.delete(listener.socket.as_fd());
            }
            let _ = epoll.delete(stop_fd);
            listening = false;
        }
        shared.parking.thread_idle(true);
        let waited = epoll.wait(&mut events, EpollTimeout::NONE);
        shared.parking.thread_idle(false);
        let n = match waited {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                DONE_TOKEN => return,
                // Seen at the top of the loop.
                STOP_TOKEN => {}
                READY_TOKEN => {
                    if let Some(conn) = shared.parking.take_ready() {
                        guarded(shared, &mut local, |local| {
                            resume(shared, served, conn, local)
                        });
                    }
                }
                // A connection this thread was woken for is accepted even when stopping:
                // with EPOLLEXCLUSIVE no other thread was woken for it.
                token => {
                    let Some(listener) = served.get(token as usize) else {
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
                        Err(
                            e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM),
                        ) => {
                            log::warn!("accept on {addr}: {e}; pausing");
                            thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => log::warn!("accept on {addr}: {e}"),
                    }
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

/// This thread's epoll set: every listener and the parker's ready count with EPOLLEXCLUSIVE
/// (one wake-up per event across all threads and workers), plus the stop pipe and the done
/// signal, level-triggered so every thread sees them.
fn watch(shared: &Shared, served: &[Served<'_>], stop_fd: BorrowedFd<'_>) -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let exclusive = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
    for (i, listener) in served.iter().enumerate() {
        epoll.add(
            listener.socket.as_fd(),
            EpollEvent::new(exclusive, i as u64),
        )?;
    }
    epoll.add(
        shared.parking.ready_fd(),
        EpollEvent::new(exclusive, READY_TOKEN),
    )?;
    epoll.add(stop_fd, EpollEvent::new(EpollFlags::EPOLLIN, STOP_TOKEN))?;
    epoll.add(
        shared.parking.done_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, DONE_TOKEN),
    )?;
    Ok(epoll)
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
    conn: Parked,
    local: &mut ThreadState,
) -> Outcome {
    let Some(Kind::Tls(listener)) = served.get(conn.listener).map(|s| s.kind) else {
        shared.conn_closed();
        return Outcome::Closed;
    };
    let served_any = conn.served_any;
    let conn = Conn::resume(conn.tls, shared, listener, conn.info, local, served_any);
    serve(shared, conn, true)
}

/// Serve until the connection closes or goes idle (then park it). `due`: the parker saw
/// its next request arrive.
fn serve(shared: &Shared, conn: Conn<'_, '_>, due: bool) -> Outcome {
    match conn.serve(due) {
        Some(parked) => {
            shared.parking.park(parked);
            Outcome::Parked
        }
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
