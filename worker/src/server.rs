//! The worker body: TLS contexts built in the master, and the accept threads that run in each
//! forked worker.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use openssl::ssl::SslAcceptor;

use crate::accept;
use crate::backend::Backends;
use crate::gate;
use crate::park::{Parking, Reports};
use crate::settings::Settings;
use crate::tls::{build_acceptor, TlsError};

/// Stack for serving threads: OpenSSL and our buffers need far less than std's 2 MiB.
const THREAD_STACK: usize = 256 * 1024;

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
    /// Its position in the worker's listener list.
    pub index: usize,
    pub socket: usize,
    pub addr: SocketAddr,
    pub acceptor: SslAcceptor,
    pub export_cert: bool,
    /// Expect a PROXY protocol header before the handshake.
    pub proxy_protocol: bool,
}

/// One `http-to-https` listener as workers use it.
pub struct RedirectRt {
    pub addr: SocketAddr,
    pub https_port: u16,
}

/// What a listening socket serves.
#[derive(Clone, Copy)]
pub enum Kind<'a> {
    Tls(&'a ListenerRt),
    Redirect(&'a RedirectRt),
}

/// One listening socket a thread waits on, and what it serves.
#[derive(Clone, Copy)]
pub struct Served<'a> {
    pub kind: Kind<'a>,
    pub socket: &'a TcpListener,
}

impl Served<'_> {
    pub fn addr(&self) -> SocketAddr {
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
    /// The request `thread` worked on waits for its backend; the thread goes on.
    fn request_parked(&self, thread: usize);
    /// The oldest request waiting for its backend began `longest` ago (zero: none waits).
    fn requests_waiting(&self, longest: Duration);
    /// `max-requests` reached: ask to be replaced, and stop accepting.
    fn recycle(&self);
}

/// What every thread of a worker shares (read-only on the request path but for counters).
pub struct Shared<'a> {
    pub settings: &'a Settings,
    pub backends: &'a Backends,
    pub activity: &'a dyn Activity,
    pub parking: Parking,
    stop: &'static AtomicBool,
    /// Requests answered by this worker, for `max-requests`.
    served: AtomicU64,
    max_requests: Option<u64>,
}

impl Shared<'_> {
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A serving thread took a new connection.
    pub fn conn_opened(&self) {
        self.parking.started();
        self.activity.connection_opened();
    }

    /// A serving thread closed a connection for good.
    pub fn conn_closed(&self) {
        self.activity.connection_closed();
        self.parking.ended();
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
    /// Resolved here, so a name that does not resolve fails the start or the reload.
    backends: Backends,
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
                index,
                socket: l.socket,
                addr,
                acceptor: build_acceptor(&l.tls, addr)?,
                export_cert: l.export_cert,
                proxy_protocol: l.proxy_protocol,
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
        Ok(Server {
            backends: Backends::resolve(&settings.backends).map_err(BuildError::Backend)?,
            settings,
            listeners,
            redirects,
        })
    }

    /// Run `threads` accept threads until stop is requested and every connection is done.
    /// `sockets` are all the sockets the master bound, in order.
    pub fn run(&self, sockets: &[&TcpListener], env: WorkerEnv<'_>) -> Result<(), RunError> {
        let shared = Shared {
            settings: &self.settings,
            backends: &self.backends,
            activity: env.activity,
            parking: Parking::new().map_err(RunError::Epoll)?,
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
        let listener_fds: Vec<BorrowedFd<'_>> = served.iter().map(|s| s.socket.as_fd()).collect();
        shared
            .parking
            .watch(&listener_fds, env.stop_fd)
            .map_err(RunError::Epoll)?;
        gate::open(running_threads(&self.settings));
        thread::scope(|scope| {
            let shared = &shared;
            let keeper = thread::Builder::new()
                .name("housekeeper".into())
                .stack_size(THREAD_STACK)
                .spawn_scoped(scope, move || {
                    shared.parking.run_housekeeper(&Reports {
                        stopping: &|| shared.stop_requested(),
                        closed: &|| shared.activity.connection_closed(),
                        waiting: &|longest| shared.activity.requests_waiting(longest),
                    })
                });
            if let Err(e) = keeper {
                return Err(RunError::Threads(e));
            }
            let mut started = 0;
            let mut last_err = None;
            for i in 0..self.settings.threads.max(1) {
                let served = &served;
                let stop_fd = env.stop_fd;
                let spawned = thread::Builder::new()
                    .name(format!("serve-{i}"))
                    .stack_size(THREAD_STACK)
                    .spawn_scoped(scope, move || {
                        accept::serve_thread(shared, served, stop_fd, i)
                    });
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => last_err = Some(e),
                }
            }
            match (started, last_err) {
                (0, Some(e)) => {
                    // Nothing can serve: let the housekeeper go and report.
                    shared.parking.abandon();
                    gate::close();
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

/// Serving threads that run at once. `UWSGI_MASTER_RUNNING_THREADS` overrides the
/// configuration's choice (for measuring a deployment).
fn running_threads(settings: &Settings) -> usize {
    std::env::var("UWSGI_MASTER_RUNNING_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(settings.running_threads)
}
