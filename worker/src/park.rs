//! One epoll set per worker, shared by all its serving threads (leader/follower): it holds
//! every listener, every idle keep-alive connection (one-shot), the stop pipe and the done
//! signal. A thread that finishes a response parks the connection in it and takes the next
//! ready event, so under load threads go from connection to connection without sleeping,
//! and an idle connection holds no thread. Handshakes and requests stay blocking OpenSSL.
//!
//! Parked connections live in slots whose ownership moves by compare-and-swap (the epoll
//! token carries the slot's generation), so parking and resuming take no lock. A
//! housekeeper thread closes connections idle past their time and decides when a stopping
//! worker is done.

use std::cell::UnsafeCell;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use openssl::ssl::{MidHandshakeSslStream, SslStream};

use crate::proxy::Awaiting;
use crate::session::ConnInfo;
use crate::socket::ClientSocket;

/// How often the housekeeper looks for connections idle past their time.
const SWEEP: Duration = Duration::from_millis(500);
/// A connection parked this long gives its TLS record buffers back.
const IDLE_BUFFERS_MS: u64 = 1000;
/// With this many connections parked, a connection gives its buffers back as it is parked
/// (memory first); with fewer, only after IDLE_BUFFERS_MS (speed first).
const EAGER_FREE_ABOVE: usize = 256;
/// Connections at once after which their memory is given back once half of them are gone.
const TRIM_AFTER: usize = 1024;
/// Most connections one worker parks at once; beyond that an idle connection is closed.
const MAX_PARKED: usize = 1 << 18;

/// Tokens at the top of the u64 range; parked connections use `generation << 32 | slot`,
/// listeners `LISTENER_BASE + index`.
pub const STOP_TOKEN: u64 = u64::MAX;
pub const DONE_TOKEN: u64 = u64::MAX - 1;
/// Readable while requests whose backend stayed silent past their time wait for a thread.
const EXPIRED_TOKEN: u64 = u64::MAX - 2;
/// The setup set (listeners, connections before their first request) has events.
const SETUP_TOKEN: u64 = u64::MAX - 3;
const LISTENER_BASE: u64 = u64::MAX - (1 << 16);

const FREE: u64 = 0;
/// Being parked by its owner: not yet armed.
const PARKING: u64 = 1;
const PARKED: u64 = 2;
/// Taken by a serving thread or the housekeeper.
const TAKEN: u64 = 3;

/// A connection waiting for its peer, holding no thread.
pub struct Parked {
    pub stage: Stage,
    /// Index of its listener in the worker's list.
    pub listener: usize,
    /// When it is closed if its peer has not gone on.
    pub deadline: Instant,
    /// The fd it waits on is in the shared epoll set already (re-armed with MOD, not ADD).
    pub registered: bool,
    /// When the request it waits for a backend's answer to began (harakiri counts it).
    pub started: Option<Instant>,
}

/// Where a parked connection stands.
pub enum Stage {
    /// Accepted, nothing read yet: waits for a PROXY header or a ClientHello.
    Fresh {
        tcp: TcpStream,
        peer: SocketAddr,
        /// The PROXY header (if the listener wants one) was read.
        proxy_done: bool,
    },
    /// In the TLS handshake: waits for the client's next flight (or for room to write).
    Handshaking {
        mid: MidHandshakeSslStream<ClientSocket>,
        peer: SocketAddr,
        want_write: bool,
    },
    /// Between two requests.
    Idle {
        tls: SslStream<ClientSocket>,
        info: ConnInfo,
        /// It served a request before (keep-alive), or waits for its first one.
        served_any: bool,
    },
    /// A request went to a backend: waits for the answer, on the backend's fd.
    Backend {
        tls: SslStream<ClientSocket>,
        info: ConnInfo,
        /// Bytes of the client's next requests (pipelined), read already.
        buf: Vec<u8>,
        /// The client's fd is in the shared epoll set (disarmed while the backend works).
        client_registered: bool,
        awaiting: Box<Awaiting>,
    },
}

impl Parked {
    fn fd(&self) -> RawFd {
        match &self.stage {
            Stage::Fresh { tcp, .. } => tcp.as_raw_fd(),
            Stage::Handshaking { mid, .. } => mid.get_ref().as_raw_fd(),
            Stage::Idle { tls, .. } => tls.get_ref().as_raw_fd(),
            Stage::Backend { awaiting, .. } => awaiting.wait.backend.fd().as_raw_fd(),
        }
    }

    /// Before its first request: it waits in the setup set.
    fn is_setting_up(&self) -> bool {
        matches!(self.stage, Stage::Fresh { .. } | Stage::Handshaking { .. })
    }

    fn wants_write(&self) -> bool {
        matches!(
            self.stage,
            Stage::Handshaking {
                want_write: true,
                ..
            }
        )
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> SocketAddr {
        match &self.stage {
            Stage::Fresh { peer, .. } | Stage::Handshaking { peer, .. } => *peer,
            Stage::Idle { info, .. } | Stage::Backend { info, .. } => info.peer,
        }
    }
}

/// What the housekeeper asks and tells its worker.
pub struct Reports<'a> {
    /// The worker stops: finish once no connection is left.
    pub stopping: &'a dyn Fn() -> bool,
    /// An idle connection was closed.
    pub closed: &'a dyn Fn(),
    /// How long the oldest request waiting for its backend has run (zero: none).
    pub waiting: &'a dyn Fn(Duration),
}

/// What one `wait` returned.
pub enum Event {
    Stop,
    Done,
    Listener(usize),
    Resume(Box<Parked>),
    /// Nothing to do (a stale or already-taken event, or EINTR).
    Nothing,
}

struct Slot {
    /// `generation << 2 | state`.
    state: AtomicU64,
    deadline_ms: AtomicU64,
    /// When it was parked (ms since the worker started); 0 once its buffers were freed.
    parked_ms: AtomicU64,
    /// 1 + when its request began (ms since the worker started) if it waits for a backend;
    /// else 0.
    request_ms: AtomicU64,
    conn: UnsafeCell<Option<Box<Parked>>>,
}

// SAFETY: `conn` is only touched by the thread that moved `state` to PARKING (when parking)
// or to TAKEN (when resuming or expiring); the state's CAS makes that thread unique.
unsafe impl Sync for Slot {}

pub struct Parking {
    /// What threads wait on: connections between requests, requests waiting for their
    /// backend, the signals, and the setup set.
    epoll: Epoll,
    /// Listeners and connections in their PROXY header or handshake. Nested in `epoll` as
    /// one level-triggered entry, which goes back to the end of the ready list each time it
    /// is taken: every request ready is served before the next handshake step, so a burst
    /// of new connections does not delay clients already connected (nginx has no such
    /// order: at 10,000 connections, requests waited behind thousands of handshakes).
    setup: Epoll,
    slots: Box<[Slot]>,
    /// Slots never used yet start here.
    fresh: AtomicUsize,
    free: SegQueue<u32>,
    /// Wakes the housekeeper: a connection ended during a stop.
    wake_keeper: EventFd,
    /// Requests whose backend stayed silent past `http-timeout`, for a serving thread to
    /// answer 504 (the housekeeper must not block on a client's socket).
    expired: SegQueue<Box<Parked>>,
    /// Counts `expired` (a semaphore eventfd in the shared set: one read per connection).
    expired_count: EventFd,
    /// Readable once the worker has nothing left to do: every thread exits.
    done: EventFd,
    /// Connections held by serving threads.
    active: AtomicUsize,
    /// Connections in slots.
    parked: AtomicUsize,
    /// No serving thread runs: the housekeeper must not wait for anything.
    abandoned: AtomicBool,
    started: Instant,
}

impl Parking {
    pub fn new() -> nix::Result<Self> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let done = EventFd::from_flags(flags)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&done, EpollEvent::new(EpollFlags::EPOLLIN, DONE_TOKEN))?;
        let setup = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&setup.0, EpollEvent::new(EpollFlags::EPOLLIN, SETUP_TOKEN))?;
        let expired_count = EventFd::from_flags(flags | EfdFlags::EFD_SEMAPHORE)?;
        epoll.add(
            &expired_count,
            EpollEvent::new(EpollFlags::EPOLLIN, EXPIRED_TOKEN),
        )?;
        // SAFETY: all-zero bytes are a valid Slot (FREE, deadline 0, no connection: `None`
        // of a Box is the null pointer). Zeroed memory from the allocator is untouched until
        // used, so unused slots cost no RSS.
        let slots = unsafe { Box::<[Slot]>::new_zeroed_slice(MAX_PARKED).assume_init() };
        Ok(Self {
            epoll,
            setup,
            slots,
            fresh: AtomicUsize::new(0),
            free: SegQueue::new(),
            wake_keeper: EventFd::from_flags(flags)?,
            expired: SegQueue::new(),
            expired_count,
            done,
            active: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            started: Instant::now(),
        })
    }

    /// Listeners (EPOLLEXCLUSIVE: one wake-up per connection across the workers sharing
    /// the socket) join the setup set, the stop pipe the shared one.
    pub fn watch(&self, listeners: &[BorrowedFd<'_>], stop_fd: BorrowedFd<'_>) -> nix::Result<()> {
        for (i, fd) in listeners.iter().enumerate() {
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
            self.setup
                .add(fd, EpollEvent::new(flags, LISTENER_BASE + i as u64))?;
        }
        self.epoll
            .add(stop_fd, EpollEvent::new(EpollFlags::EPOLLIN, STOP_TOKEN))
    }

    /// Stop accepting: the listeners and the stop pipe leave the shared set (any thread may
    /// call this; later calls find them gone).
    pub fn unwatch(&self, listeners: &[BorrowedFd<'_>], stop_fd: BorrowedFd<'_>) {
        for fd in listeners {
            let _ = self.setup.delete(fd);
        }
        let _ = self.epoll.delete(stop_fd);
    }

    /// Block until the next event for this thread.
    pub fn wait(&self) -> nix::Result<Event> {
        let mut events = [EpollEvent::empty()];
        let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => return Ok(Event::Nothing),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Event::Nothing);
        }
        let mut token = events[0].data();
        if token == SETUP_TOKEN {
            // Another thread may have taken what made the set ready.
            match self.setup.wait(&mut events, EpollTimeout::ZERO) {
                Ok(1) => token = events[0].data(),
                Ok(_) | Err(Errno::EINTR) => return Ok(Event::Nothing),
                Err(e) => return Err(e),
            }
        }
        Ok(match token {
            STOP_TOKEN => Event::Stop,
            DONE_TOKEN => Event::Done,
            EXPIRED_TOKEN => match self.expired_count.read() {
                // Counted as active when it was queued.
                Ok(_) => self.expired.pop().map_or(Event::Nothing, Event::Resume),
                Err(_) => Event::Nothing,
            },
            t if t >= LISTENER_BASE => Event::Listener((t - LISTENER_BASE) as usize),
            t => self.resume(t).map_or(Event::Nothing, Event::Resume),
        })
    }

    /// A serving thread took a new connection.
    pub fn started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// A serving thread closed a connection.
    pub fn ended(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        // During a stop the housekeeper decides when the worker is done.
        let _ = self.wake_keeper.write(1);
    }

    /// A serving thread hands over an idle connection. Err gives it back when it cannot be
    /// parked (the caller closes it).
    pub fn park(&self, conn: Box<Parked>) -> Result<(), Box<Parked>> {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                let i = self.fresh.fetch_add(1, Ordering::Relaxed);
                if i >= self.slots.len() {
                    self.fresh.fetch_sub(1, Ordering::Relaxed);
                    return Err(conn);
                }
                i
            }
        };
        let slot = &self.slots[index];
        let generation = (slot.state.load(Ordering::Acquire) >> 2) + 1;
        let token = (generation << 32) | index as u64;
        slot.state
            .store(generation << 2 | PARKING, Ordering::Release);
        slot.deadline_ms
            .store(self.ms(conn.deadline), Ordering::Relaxed);
        let request_ms = conn.started.map_or(0, |t| self.ms(t) + 1);
        slot.request_ms.store(request_ms, Ordering::Relaxed);
        let registered = conn.registered;
        let eager = self.parked.load(Ordering::Relaxed) >= EAGER_FREE_ABOVE;
        let mut parked_ms = 0;
        match &conn.stage {
            Stage::Idle { tls, .. } if eager => {
                crate::ssl_ext::free_buffers(tls.ssl());
            }
            // The sweep frees them if it stays idle.
            Stage::Idle { .. } => parked_ms = self.ms(Instant::now()).max(1),
            // Thousands of handshakes at once (a client fleet reconnecting): their buffers
            // are most of their memory (OpenSSL keeps none it still needs).
            Stage::Handshaking { mid, .. } if eager => {
                crate::ssl_ext::free_buffers(mid.ssl());
            }
            _ => {}
        }
        slot.parked_ms.store(parked_ms, Ordering::Relaxed);
        let mut boxed = conn;
        boxed.registered = true;
        let fd = boxed.fd();
        let direction = if boxed.wants_write() {
            EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        let set = if boxed.is_setting_up() {
            &self.setup
        } else {
            &self.epoll
        };
        // SAFETY: this thread owns the slot (PARKING); nobody reads `conn` until PARKED.
        unsafe { *slot.conn.get() = Some(boxed) };
        // SAFETY: the connection (and so its fd) lives in the slot, which this thread owns.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let interest = direction | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        let armed = if registered {
            set.modify(fd, &mut EpollEvent::new(interest, token))
        } else {
            set.add(fd, EpollEvent::new(interest, token))
        };
        if armed.is_err() {
            // Cannot watch it: give it back.
            return match self.take(index) {
                Some(conn) => Err(conn),
                None => Ok(()),
            };
        }
        // Counted as parked before it stops counting as active: never in neither.
        self.parked.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_sub(1, Ordering::SeqCst);
        slot.state
            .store(generation << 2 | PARKED, Ordering::Release);
        Ok(())
    }

    /// An event for parked token `token`: take the connection if it is still there.
    fn resume(&self, token: u64) -> Option<Box<Parked>> {
        let index = (token & 0xffff_ffff) as usize;
        let generation = token >> 32;
        let slot = self.slots.get(index)?;
        let mut spins = 0u32;
        loop {
            match slot.state.compare_exchange(
                generation << 2 | PARKED,
                generation << 2 | TAKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                // Armed before it was published: its owner is a few instructions away,
                // unless it lost the core to us (fewer cores than threads): then let it run.
                Err(s) if s == generation << 2 | PARKING => {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                // Expired meanwhile, or a later generation: not ours.
                Err(_) => return None,
            }
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        self.parked.fetch_sub(1, Ordering::SeqCst);
        self.take(index)
    }

    /// Empty a slot this thread holds (TAKEN, or PARKING by its parker), and free it.
    fn take(&self, index: usize) -> Option<Box<Parked>> {
        let slot = &self.slots[index];
        // SAFETY: the caller owns the slot (see above), so it alone touches `conn`.
        let conn = unsafe { (*slot.conn.get()).take() };
        let generation = slot.state.load(Ordering::Acquire) >> 2;
        slot.state.store(generation << 2 | FREE, Ordering::Release);
        self.free.push(index as u32);
        conn
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// A connection past its handshake leaves the setup set (it parks in the main one
    /// from now on).
    pub fn leave_setup(&self, fd: BorrowedFd<'_>) {
        let _ = self.setup.delete(fd);
    }

    /// No serving thread runs: make the housekeeper return.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        let _ = self.wake_keeper.write(1);
    }

    /// The housekeeper thread: closes connections idle past their time (`closed` is called
    /// for each) and returns, releasing every serving thread, once `stopping()` holds and
    /// no connection is left.
    pub fn run_housekeeper(&self, reports: &Reports<'_>) {
        if let Err(e) = self.housekeeping(reports) {
            log::error!("housekeeper: {e}");
        }
        let _ = self.done.write(1);
    }

    fn housekeeping(&self, reports: &Reports<'_>) -> nix::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&self.wake_keeper, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
        let mut events = [EpollEvent::empty()];
        let mut next_sweep = Instant::now() + SWEEP;
        let mut peak = 0;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            let timeout = EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::ZERO);
            match epoll.wait(&mut events, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
            let _ = self.wake_keeper.read();
            if self.abandoned.load(Ordering::SeqCst) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                self.sweep(self.ms(now), reports.closed, reports.waiting);
                peak = self.trim_after_burst(peak);
            }
            if (reports.stopping)()
                && self.parked.load(Ordering::SeqCst) == 0
                && self.active.load(Ordering::SeqCst) == 0
            {
                return Ok(());
            }
        }
    }

    /// Once the connections of a burst are gone, give their memory back to the system:
    /// glibc keeps freed memory of its per-thread arenas mapped, so after 10,000
    /// connections a worker stayed at 420 MiB with none left. Returns the new peak.
    fn trim_after_burst(&self, peak: usize) -> usize {
        let now = self.parked.load(Ordering::Relaxed) + self.active.load(Ordering::Relaxed);
        if peak >= TRIM_AFTER && now < peak / 2 {
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            unsafe { libc::malloc_trim(0) };
            return now;
        }
        peak.max(now)
    }

    /// Give back the record buffers of a connection parked for a while. Buffers stay with a
    /// busy connection (freeing them after every request cost ~9 % of keep-alive
    /// throughput), and thousands of idle ones then cost a few KiB each.
    fn free_idle_buffers(&self, slot: &Slot, state: u64) {
        let parking = state & !3 | PARKING;
        if slot
            .state
            .compare_exchange(state, parking, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // SAFETY: the slot is ours while PARKING (a resumer spins until it is PARKED again).
        if let Some(conn) = unsafe { (*slot.conn.get()).as_ref() } {
            if let Stage::Idle { tls, .. } = &conn.stage {
                crate::ssl_ext::free_buffers(tls.ssl());
            }
        }
        slot.parked_ms.store(0, Ordering::Relaxed);
        slot.state.store(state, Ordering::Release);
    }

    /// Close parked connections whose idle time is over (without close_notify: writing it
    /// could block), hand requests whose backend is silent past their time to a serving
    /// thread (for a 504), and report the oldest request waiting for a backend.
    fn sweep(&self, now_ms: u64, closed: &dyn Fn(), waiting: &dyn Fn(Duration)) {
        let used = self.fresh.load(Ordering::Relaxed).min(self.slots.len());
        let mut oldest_request = u64::MAX;
        for (index, slot) in self.slots[..used].iter().enumerate() {
            let state = slot.state.load(Ordering::Acquire);
            if state & 3 != PARKED {
                continue;
            }
            let request_ms = slot.request_ms.load(Ordering::Relaxed);
            if request_ms != 0 {
                oldest_request = oldest_request.min(request_ms - 1);
            }
            if slot.deadline_ms.load(Ordering::Relaxed) > now_ms {
                let parked_ms = slot.parked_ms.load(Ordering::Relaxed);
                if parked_ms != 0 && parked_ms + IDLE_BUFFERS_MS <= now_ms {
                    self.free_idle_buffers(slot, state);
                }
                continue;
            }
            let taken = state & !3 | TAKEN;
            if slot
                .state
                .compare_exchange(state, taken, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if request_ms != 0 {
                // A serving thread answers it; it counts as active from now on.
                self.active.fetch_add(1, Ordering::SeqCst);
                self.parked.fetch_sub(1, Ordering::SeqCst);
                if let Some(conn) = self.take(index) {
                    self.expired.push(conn);
                    let _ = self.expired_count.write(1);
                }
                continue;
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
            if let Some(conn) = self.take(index) {
                // Closing its fd takes it out of the epoll sets.
                drop(conn);
                closed();
            }
        }
        waiting(Duration::from_millis(now_ms.saturating_sub(oldest_request)));
    }
}
