//! The serving threads: all wait on the worker's shared epoll set (see park.rs) and take one
//! event at a time: a new connection to accept and handshake, or a parked connection whose
//! next request arrived.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{accept4, SockFlag};
use openssl::ssl::{ErrorCode, HandshakeError, SslStream};

use crate::conn::{Conn, ThreadState};
use crate::gate;
use crate::http::errors::plaintext_on_tls_port;
use crate::park::{Event, Parked, Stage};
use crate::proxy::Awaiting;
use crate::redirect;
use crate::server::{Kind, ListenerRt, Served, Shared};
use crate::session::ConnInfo;
use crate::socket::ClientSocket;

pub fn serve_thread(shared: &Shared, served: &[Served<'_>], stop_fd: BorrowedFd<'_>, index: usize) {
    let mut local = ThreadState {
        index,
        ..Default::default()
    };
    loop {
        // Spare threads wait here for a place; the done signal closes the gate.
        if !gate::enter() {
            return;
        }
        let event = match shared.parking.wait() {
            Ok(e) => e,
            Err(e) => {
                log::error!("serving thread {index}: epoll_wait: {e}");
                return;
            }
        };
        match event {
            Event::Done => {
                gate::close();
                return;
            }
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
                                // Plain blocking reads and writes on a slow path.
                                gate::leave();
                                redirect::serve(tcp, r.https_port, shared.settings);
                                shared.conn_closed();
                                Outcome::Closed
                            }
                        });
                    }
                    // Another worker or thread took it.
                    Err(Errno::EAGAIN | Errno::ECONNABORTED | Errno::EINTR) => {}
                    Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                        log::warn!("accept on {addr}: {e}; pausing");
                        gate::leave();
                        thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => log::warn!("accept on {addr}: {e}"),
                }
            }
        }
    }
}

/// Run one connection's work; a panic is logged and costs only that connection (the
/// connection itself is dropped, and the housekeeper is told it ended).
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
/// A new connection: it goes through its stages (PROXY header, first byte, handshake) as
/// its peer sends, parked in between, so a slow or silent client holds no thread.
fn accept(
    shared: &Shared,
    listener: &ListenerRt,
    tcp: TcpStream,
    local: &mut ThreadState,
) -> Outcome {
    let Ok(peer) = tcp.peer_addr() else {
        shared.conn_closed();
        return Outcome::Closed;
    };
    if tcp.set_nodelay(true).is_err() || tcp.set_nonblocking(true).is_err() {
        shared.conn_closed();
        return Outcome::Closed;
    }
    let parked = Parked {
        stage: Stage::Fresh {
            tcp,
            peer,
            proxy_done: false,
        },
        listener: listener.index,
        deadline: Instant::now() + shared.settings.timeouts.handshake,
        registered: false,
        started: None,
    };
    advance(shared, listener, Box::new(parked), local, false)
}

/// A parked connection whose peer went on.
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
    advance(shared, listener, conn, local, true)
}

/// Take a connection as far as its peer allows: park it when it must wait, serve it once
/// its handshake is done. `ready`: its fd was just reported ready.
fn advance(
    shared: &Shared,
    listener: &ListenerRt,
    mut conn: Box<Parked>,
    local: &mut ThreadState,
    mut ready: bool,
) -> Outcome {
    let peer = conn.peer();
    loop {
        let Parked {
            stage,
            deadline,
            registered,
            ..
        } = *conn;
        let next = match stage {
            Stage::Fresh {
                tcp,
                peer,
                proxy_done,
            } => first_bytes(shared, listener, (tcp, peer, proxy_done), deadline),
            Stage::Handshaking { mid, peer, .. } => {
                continue_handshake(listener, mid.handshake(), peer)
            }
            Stage::Idle {
                tls,
                info,
                served_any,
            } => {
                let conn = Conn::new((tls, info, served_any, registered), shared, listener, local);
                return serve(shared, conn, ready, None);
            }
            Stage::Backend {
                tls,
                info,
                buf,
                client_registered,
                mut awaiting,
            } => {
                awaiting.wait.backend.registered = registered;
                let mut conn = Conn::new(
                    (tls, info, true, client_registered),
                    shared,
                    listener,
                    local,
                );
                if !buf.is_empty() {
                    conn.buf = buf;
                }
                return serve(shared, conn, false, Some(awaiting));
            }
        };
        let wait = matches!(next, Step::Wait(_));
        // Readiness was for the stage we resumed in, not for the next one.
        ready = false;
        match next {
            Step::Go(stage) | Step::Wait(stage) => {
                // Past its handshake, it parks in the main set from now on.
                let registered = match &stage {
                    Stage::Idle { tls, .. } if registered => {
                        shared.parking.leave_setup(tls.get_ref().as_fd());
                        false
                    }
                    _ => registered,
                };
                *conn = Parked {
                    stage,
                    listener: listener.index,
                    deadline,
                    registered,
                    started: None,
                };
                if wait {
                    return park(shared, conn);
                }
            }
            Step::Close(why) => {
                if let Some(why) = why {
                    log::debug!("{peer}: closed on {}: {why}", listener.addr);
                }
                shared.conn_closed();
                return Outcome::Closed;
            }
        }
    }
}

/// What a stage led to.
enum Step {
    /// On to this stage at once.
    Go(Stage),
    /// Park in this stage until the peer goes on.
    Wait(Stage),
    Close(Option<String>),
}

/// A fresh connection: the PROXY header if the listener wants one, then the first byte of
/// TLS. Plain HTTP gets a short 400.
fn first_bytes(
    shared: &Shared,
    listener: &ListenerRt,
    (tcp, mut peer, mut proxy_done): (TcpStream, SocketAddr, bool),
    deadline: Instant,
) -> Step {
    let mut first = [0u8; 1];
    loop {
        match tcp.peek(&mut first) {
            Ok(0) => return Step::Close(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Step::Wait(Stage::Fresh {
                    tcp,
                    peer,
                    proxy_done,
                })
            }
            Err(e) => return Step::Close(Some(e.to_string())),
        }
        if proxy_done || !listener.proxy_protocol {
            break;
        }
        // A balancer sends its header in one piece: read it blocking within what is left of
        // handshake-timeout, then wait for the ClientHello like any fresh connection.
        let left = deadline.saturating_duration_since(Instant::now());
        gate::leave();
        let header = tcp
            .set_nonblocking(false)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                crate::proxy_protocol::read_header(&tcp, left.max(Duration::from_millis(1)))
                    .map_err(|e| e.to_string())
            });
        match header {
            Ok(header) => peer = header.addrs.map_or(peer, |(source, _)| source),
            Err(e) => return Step::Close(Some(format!("PROXY header: {e}"))),
        }
        if let Err(e) = tcp.set_nonblocking(true) {
            return Step::Close(Some(e.to_string()));
        }
        proxy_done = true;
    }
    match first[0] {
        0x16 => continue_handshake(
            listener,
            listener.acceptor.accept(ClientSocket::new(tcp)),
            peer,
        ),
        b if b.is_ascii_uppercase() => {
            let _ = tcp.set_nonblocking(false);
            let _ = tcp.set_write_timeout(Some(shared.settings.timeouts.handshake));
            let _ = (&tcp).write_all(plaintext_on_tls_port());
            Step::Close(Some("plain HTTP on the TLS port".into()))
        }
        _ => Step::Close(Some("not TLS".into())),
    }
}

/// One step of a non-blocking handshake.
fn continue_handshake(
    listener: &ListenerRt,
    attempt: Result<SslStream<ClientSocket>, HandshakeError<ClientSocket>>,
    peer: SocketAddr,
) -> Step {
    match attempt {
        Ok(mut tls) => {
            // Requests are served with blocking OpenSSL calls and socket timeouts.
            tls.get_mut().wait_when_blocked();
            let Ok(local) = tls.get_ref().tcp().local_addr() else {
                return Step::Close(None);
            };
            let info = ConnInfo::from_ssl(tls.ssl(), peer, local, listener.export_cert);
            Step::Go(Stage::Idle {
                tls,
                info,
                served_any: false,
            })
        }
        Err(HandshakeError::WouldBlock(mid)) => {
            let want_write = mid.error().code() == ErrorCode::WANT_WRITE;
            Step::Wait(Stage::Handshaking {
                mid,
                peer,
                want_write,
            })
        }
        Err(HandshakeError::Failure(mid)) => {
            Step::Close(Some(format!("TLS handshake failed: {}", mid.error())))
        }
        Err(HandshakeError::SetupFailure(e)) => Step::Close(Some(e.to_string())),
    }
}

/// Park a connection; one that cannot be parked is closed.
fn park(shared: &Shared, conn: Box<Parked>) -> Outcome {
    match shared.parking.park(conn) {
        Ok(()) => Outcome::Parked,
        Err(conn) => {
            log::warn!("{}: cannot park a connection; closing it", conn.peer());
            drop(conn);
            shared.conn_closed();
            Outcome::Closed
        }
    }
}

/// Serve until the connection closes, goes idle or waits for a backend (then park it).
/// `due`: the epoll set saw its next request arrive; `awaiting`: its backend answered.
fn serve(
    shared: &Shared,
    conn: Conn<'_, '_>,
    due: bool,
    awaiting: Option<Box<Awaiting>>,
) -> Outcome {
    match conn.serve(due, awaiting) {
        Some(parked) => park(shared, parked),
        None => {
            shared.conn_closed();
            Outcome::Closed
        }
    }
}
