//! Parking idle keep-alive connections (Apache's event MPM): a connection that waits for its
//! next request holds no thread. One parker thread per worker watches them all with epoll and
//! hands a connection back to the serving threads (over a channel, announced through a
//! semaphore eventfd in their epoll sets) when its next request arrives. Handshakes and
//! requests stay blocking OpenSSL in the serving threads.

use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use openssl::ssl::SslStream;

use crate::session::ConnInfo;

/// How often the parker looks for connections idle past their keep-alive time.
const SWEEP: Duration = Duration::from_millis(500);
const INCOMING_TOKEN: u64 = u64::MAX;
const STOP_TOKEN: u64 = u64::MAX - 1;

/// An idle connection between two requests.
pub struct Parked {
    pub tls: SslStream<TcpStream>,
    pub info: ConnInfo,
    /// Index of its listener in the worker's list.
    pub listener: usize,
    /// When it is closed if no request arrives.
    pub idle_until: Instant,
    /// It served a request before (keep-alive), or waits for its first one.
    pub served_any: bool,
}

/// The hand-over points between serving threads and the parker.
pub struct Parking {
    to_parker: Sender<Parked>,
    from_threads: Receiver<Parked>,
    to_threads: Sender<Parked>,
    ready: Receiver<Parked>,
    /// Wakes the parker: a connection to park, or a connection ended during a stop.
    incoming: EventFd,
    /// One count per connection waiting in `ready` (EFD_SEMAPHORE: each read takes one).
    ready_count: EventFd,
    /// Readable once the worker has nothing left to do: every thread exits.
    done: EventFd,
    /// Connections held by serving threads.
    active: AtomicUsize,
    /// Connections held by the parker.
    parked: AtomicUsize,
    /// Serving threads waiting for work.
    idle_threads: AtomicUsize,
    /// No serving thread could start: the parker must not wait for anything.
    abandoned: AtomicBool,
}

impl Parking {
    pub fn new() -> nix::Result<Self> {
        let (to_parker, from_threads) = unbounded();
        let (to_threads, ready) = unbounded();
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        Ok(Self {
            to_parker,
            from_threads,
            to_threads,
            ready,
            incoming: EventFd::from_flags(flags)?,
            ready_count: EventFd::from_flags(flags | EfdFlags::EFD_SEMAPHORE)?,
            done: EventFd::from_flags(flags)?,
            active: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            idle_threads: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
        })
    }

    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.ready_count.as_fd()
    }

    pub fn done_fd(&self) -> BorrowedFd<'_> {
        self.done.as_fd()
    }

    /// No serving thread runs: make the parker return.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        let _ = self.incoming.write(1);
    }

    /// A serving thread took a new connection.
    pub fn started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// A serving thread closed a connection.
    pub fn ended(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        // During a stop the parker decides when the worker is done.
        let _ = self.incoming.write(1);
    }

    /// A serving thread hands over an idle connection.
    pub fn park(&self, conn: Parked) {
        // Counted as parked before it stops counting as active: never in neither.
        self.parked.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.to_parker.send(conn).is_ok() {
            let _ = self.incoming.write(1);
        }
    }

    /// Whether a thread may keep its idle connection a little longer. With no more open
    /// connections than threads, every connection can have a thread: yes. With more, only
    /// while nothing waits for a thread and another thread is free for new work, so nobody
    /// starves behind lingering threads.
    pub fn may_linger(&self, threads: usize) -> bool {
        let open = self.active.load(Ordering::Relaxed) + self.parked.load(Ordering::Relaxed);
        if open <= threads {
            return true;
        }
        self.ready.is_empty() && self.idle_threads.load(Ordering::Relaxed) > 0
    }

    /// A serving thread starts or stops waiting for work.
    pub fn thread_idle(&self, idle: bool) {
        if idle {
            self.idle_threads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.idle_threads.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A serving thread was woken through `ready_fd`: take one connection, if it is still
    /// there (another thread may have taken it).
    pub fn take_ready(&self) -> Option<Parked> {
        match self.ready_count.read() {
            Ok(_) => self.ready.try_recv().ok(),
            Err(_) => None,
        }
    }

    /// The parker thread. Returns once `stopping()` holds and no connection is left.
    /// `closed` is called for each connection the parker closes (idle past its time).
    pub fn run_parker(
        &self,
        stop_fd: BorrowedFd<'_>,
        stopping: &dyn Fn() -> bool,
        closed: &dyn Fn(),
    ) {
        if let Err(e) = self.parker_loop(stop_fd, stopping, closed) {
            log::error!("parker: {e}; idle connections are closed");
        }
        // Whatever happens, let the serving threads go.
        let _ = self.done.write(1);
    }

    fn parker_loop(
        &self,
        stop_fd: BorrowedFd<'_>,
        stopping: &dyn Fn() -> bool,
        closed: &dyn Fn(),
    ) -> nix::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            &self.incoming,
            EpollEvent::new(EpollFlags::EPOLLIN, INCOMING_TOKEN),
        )?;
        epoll.add(stop_fd, EpollEvent::new(EpollFlags::EPOLLIN, STOP_TOKEN))?;
        let mut slab: Vec<Option<Parked>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut events = vec![EpollEvent::empty(); 256];
        let mut next_sweep = Instant::now() + SWEEP;
        let mut stop_seen = false;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            let timeout = EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::ZERO);
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match ev.data() {
                    INCOMING_TOKEN => {
                        let _ = self.incoming.read();
                        while let Ok(conn) = self.from_threads.try_recv() {
                            let token = free.pop().unwrap_or_else(|| {
                                slab.push(None);
                                slab.len() - 1
                            });
                            let interest = EpollFlags::EPOLLIN
                                | EpollFlags::EPOLLRDHUP
                                | EpollFlags::EPOLLONESHOT;
                            if epoll
                                .add(conn.tls.get_ref(), EpollEvent::new(interest, token as u64))
                                .is_err()
                            {
                                // Cannot watch it: close it.
                                self.parked.fetch_sub(1, Ordering::SeqCst);
                                closed();
                                free.push(token);
                                continue;
                            }
                            slab[token] = Some(conn);
                        }
                    }
                    STOP_TOKEN => {
                        // Level-triggered and never drained: watch it once.
                        let _ = epoll.delete(stop_fd);
                        stop_seen = true;
                    }
                    token => {
                        let Some(conn) = slab.get_mut(token as usize).and_then(Option::take) else {
                            continue;
                        };
                        free.push(token as usize);
                        let _ = epoll.delete(conn.tls.get_ref());
                        self.active.fetch_add(1, Ordering::SeqCst);
                        self.parked.fetch_sub(1, Ordering::SeqCst);
                        if self.to_threads.send(conn).is_ok() {
                            let _ = self.ready_count.write(1);
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                for (token, entry) in slab.iter_mut().enumerate() {
                    if entry.as_ref().is_some_and(|c| c.idle_until <= now) {
                        if let Some(conn) = entry.take() {
                            let _ = epoll.delete(conn.tls.get_ref());
                            // Closed without close_notify: writing it could block.
                            drop(conn);
                            self.parked.fetch_sub(1, Ordering::SeqCst);
                            closed();
                            free.push(token);
                        }
                    }
                }
            }
            if self.abandoned.load(Ordering::SeqCst) {
                return Ok(());
            }
            if (stop_seen || stopping())
                && self.parked.load(Ordering::SeqCst) == 0
                && self.active.load(Ordering::SeqCst) == 0
            {
                return Ok(());
            }
        }
    }
}
