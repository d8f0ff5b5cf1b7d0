//! The worker body: TLS contexts built in the master, and the accept threads that run in each
//! forked worker.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{accept4, SockFlag};
use openssl::ssl::{ErrorCode, HandshakeError, SslAcceptor, SslStream};

use crate::backend::Backends;
use crate::conn::{Conn, ThreadState};
use crate::http::errors::plaintext_on_tls_port;
use crate::redirect;
use crate::session::ConnInfo;
use crate::settings::Settings;
use crate::tls::{build_acceptor, TlsError};

/// Stack for accept threads: OpenSSL and our buffers need far less than std's 2 MiB.
const THREAD_STACK: usize = 256 * 1024;
/// The epoll token of the stop pipe.
const STOP_TOKEN: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("https entry {index}: socket ={socket} does not exist ({bound} sockets bound)")]
    NoSocket {
        index: usize,
        socket: usize,
        bound: usize,
    },
    #[error("{0}")]
    Backend(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start any thread: {0}")]
    Threads(std::io::Error),
    #[error("epoll: {0}")]
    Epoll(Errno),
}

/// One TLS listener as workers use it.
pub struct ListenerRt {
    pub socket: usize,
    pub addr: SocketAddr,
    pub acceptor: SslAcceptor,
    pub export_cert: bool,
}

/// One `http-to-https` listener as workers use it.
pub struct RedirectRt {
    pub addr: SocketAddr,
    pub https_port: u16,
}

/// What a listening socket serves.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Tls(&'a ListenerRt),
    Redirect(&'a RedirectRt),
}

/// One listening socket a thread waits on, and what it serves.
#[derive(Clone, Copy)]
struct Served<'a> {
    kind: Kind<'a>,
    socket: &'a TcpListener,
}

impl Served<'_> {
    fn addr(&self) -> SocketAddr {
        match self.kind {
            Kind::Tls(l) => l.addr,
            Kind::Redirect(r) => r.addr,
        }
    }
}

/// What the worker reports to whoever supervises it (the master's scoreboard).
pub trait Activity: Sync {
    fn connection_opened(&self);
    fn connection_closed(&self);
    /// `thread` is the index of the serving thread within this worker.
    fn request_started(&self, thread: usize);
    fn request_finished(&self, thread: usize, bytes_sent: u64);
    /// `max-requests` reached: ask to be replaced, and stop accepting.
    fn recycle(&self);
}

/// What every thread of a worker shares (read-only on the request path but for counters).
pub struct Shared<'a> {
    pub settings: Settings,
    pub backends: Backends,
    pub activity: &'a dyn Activity,
    stop: &'static AtomicBool,
    /// Requests answered by this worker, for `max-requests`.
    served: AtomicU64,
    max_requests: Option<u64>,
}

impl Shared<'_> {
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Count one answered request; the one that reaches `max-requests` asks for recycling.
    pub fn request_done(&self, thread: usize, bytes_sent: u64) {
        self.activity.request_finished(thread, bytes_sent);
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_requests == Some(n) {
            log::info!("worker reached max-requests ({n}): recycling");
            self.activity.recycle();
        }
    }
}

/// Ready to run in a worker: built (and every file checked) in the master.
pub struct Server {
    settings: Settings,
    backends: Vec<crate::settings::BackendAddr>,
    listeners: Vec<ListenerRt>,
    redirects: Vec<(usize, RedirectRt)>,
}

/// What a forked worker gets from its supervisor: how it is told to stop accepting (a flag
/// and a pipe that becomes readable) and where it reports its activity.
pub struct WorkerEnv<'a> {
    pub stop_flag: &'static AtomicBool,
    pub stop_fd: BorrowedFd<'a>,
    pub activity: &'a dyn Activity,
}

impl Server {
    /// Build every TLS context. `bound` are the addresses of the sockets the master bound,
    /// in order.
    pub fn build(settings: Settings, bound: &[SocketAddr]) -> Result<Server, BuildError> {
        let mut listeners = Vec::with_capacity(settings.listeners.len());
        for (index, l) in settings.listeners.iter().enumerate() {
            let addr = *bound.get(l.socket).ok_or(BuildError::NoSocket {
                index,
                socket: l.socket,
                bound: bound.len(),
            })?;
            listeners.push(ListenerRt {
                socket: l.socket,
                addr,
                acceptor: build_acceptor(&l.tls, addr)?,
                export_cert: l.export_cert,
            });
        }
        let mut redirects = Vec::with_capacity(settings.redirects.len());
        for r in &settings.redirects {
            let addr = *bound.get(r.socket).ok_or(BuildError::NoSocket {
                index: settings.listeners.len() + redirects.len(),
                socket: r.socket,
                bound: bound.len(),
            })?;
            let rt = RedirectRt {
                addr,
                https_port: r.https_port,
            };
            redirects.push((r.socket, rt));
        }
        // Resolve now so that a name that does not resolve fails the start or the reload.
        Backends::resolve(&settings.backends).map_err(BuildError::Backend)?;
        Ok(Server {
            backends: settings.backends.clone(),
            settings,
            listeners,
            redirects,
        })
    }

    /// Run `threads` accept threads until stop is requested and every connection is done.
    /// `sockets` are all the sockets the master bound, in order.
    pub fn run(&self, sockets: &[&TcpListener], env: WorkerEnv<'_>) -> Result<(), RunError> {
        let shared = Shared {
            settings: self.settings.clone(),
            backends: Backends::resolve(&self.backends)
                .map_err(|e| RunError::Threads(std::io::Error::other(e)))?,
            activity: env.activity,
            stop: env.stop_flag,
            served: AtomicU64::new(0),
            // Jitter (up to 10 %) so workers started together do not recycle together.
            max_requests: self
                .settings
                .max_requests
                .map(|m| m.max(1) + u64::from(std::process::id()) % (m / 10 + 1)),
        };
        let tls = self.listeners.iter().map(|l| (l.socket, Kind::Tls(l)));
        let redirects = self.redirects.iter().map(|(i, r)| (*i, Kind::Redirect(r)));
        let served: Vec<Served<'_>> = tls
            .chain(redirects)
            .filter_map(|(i, kind)| sockets.get(i).map(|&socket| Served { kind, socket }))
            .collect();
        thread::scope(|scope| {
            let mut started = 0;
            let mut last_err = None;
            for i in 0..self.settings.threads.max(1) {
                let shared = &shared;
                let served = &served;
                let stop_fd = env.stop_fd;
                let spawned = thread::Builder::new()
                    .name(format!("accept-{i}"))
                    .stack_size(THREAD_STACK)
                    .spawn_scoped(scope, move || accept_loop(shared, served, stop_fd, i));
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => last_err = Some(e),
                }
            }
            match (started, last_err) {
                (0, Some(e)) => {
                    // Nothing can serve: make the already-started none and report.
                    Err(RunError::Threads(e))
                }
                (_, Some(e)) => {
                    log::warn!(
                        "started {started} of {} threads: {e}",
                        self.settings.threads
                    );
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}

fn accept_loop(
    shared: &Shared,
    served: &[Served<'_>],
    stop_fd: BorrowedFd<'_>,
    thread_index: usize,
) {
    let epoll = match watch(served, stop_fd) {
        Ok(e) => e,
        Err(e) => {
            log::error!("accept thread: epoll setup failed: {e}");
            return;
        }
    };
    let mut local = ThreadState {
        index: thread_index,
        ..Default::default()
    };
    let mut events = [EpollEvent::empty(); 8];
    while !shared.stop_requested() {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            // The loop condition sees the stop. A connection this thread was woken for is
            // still accepted: with EPOLLEXCLUSIVE no other thread was woken for it.
            if token == STOP_TOKEN {
                continue;
            }
            let Some(served) = served.get(token as usize) else {
                continue;
            };
            let addr = served.addr();
            match accept4(served.socket.as_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => {
                    let stream = TcpStream::from(fd);
                    shared.activity.connection_opened();
                    let outcome = catch_unwind(AssertUnwindSafe(|| match served.kind {
                        Kind::Tls(listener) => {
                            serve_connection(shared, listener, stream, &mut local)
                        }
                        Kind::Redirect(r) => {
                            redirect::serve(stream, r.https_port, &shared.settings)
                        }
                    }));
                    shared.activity.connection_closed();
                    if outcome.is_err() {
                        log::error!("a connection on {addr} panicked; the thread goes on");
                        local = ThreadState {
                            index: thread_index,
                            ..Default::default()
                        };
                    }
                }
                // Another worker or thread took it.
                Err(Errno::EAGAIN) | Err(Errno::ECONNABORTED) | Err(Errno::EINTR) => {}
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    log::warn!("accept on {addr}: {e}; pausing");
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => log::warn!("accept on {addr}: {e}"),
            }
        }
    }
}

/// This thread's epoll set: every listener with EPOLLEXCLUSIVE (one wake-up per connection
/// across all threads and workers) plus the stop pipe, level-triggered so all threads see it.
fn watch(served: &[Served<'_>], stop_fd: BorrowedFd<'_>) -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, Served { socket, .. }) in served.iter().enumerate() {
        epoll.add(
            socket.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, i as u64),
        )?;
    }
    epoll.add(stop_fd, EpollEvent::new(EpollFlags::EPOLLIN, STOP_TOKEN))?;
    Ok(epoll)
}

fn serve_connection(
    shared: &Shared,
    listener: &ListenerRt,
    tcp: TcpStream,
    local: &mut ThreadState,
) {
    let (Ok(peer), Ok(local_addr)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    let t = shared.settings.timeouts;
    let deadline = Instant::now() + t.handshake;
    if tcp.set_nodelay(true).is_err() || tcp.set_read_timeout(Some(t.handshake)).is_err() {
        return;
    }
    let mut first = [0u8; 1];
    match tcp.peek(&mut first) {
        Ok(1) if first[0] == 0x16 => {}
        Ok(1) if first[0].is_ascii_uppercase() => {
            log::debug!("{peer}: plain HTTP on the TLS port {}", listener.addr);
            let _ = tcp.set_write_timeout(Some(t.handshake));
            let _ = (&tcp).write_all_plain(plaintext_on_tls_port());
            return;
        }
        _ => return,
    }
    let tls = match handshake(&listener.acceptor, tcp, deadline) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("{peer}: TLS handshake on {} failed: {e}", listener.addr);
            return;
        }
    };
    let info = ConnInfo::from_ssl(tls.ssl(), peer, local_addr, listener.export_cert);
    Conn::new(tls, shared, listener, info, local).serve();
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

/// `write_all` on a borrowed TcpStream, named to read clearly at the call site.
trait WritePlain {
    fn write_all_plain(self, data: &[u8]) -> std::io::Result<()>;
}

impl WritePlain for &TcpStream {
    fn write_all_plain(mut self, data: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self, data)
    }
}
