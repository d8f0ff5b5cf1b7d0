//! Wiring: the master's `Application` made of our config loader and the worker's server.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use master::{Application, BoxError, Listener, Plan, WorkerBody, WorkerContext};

use crate::config::{Config, Sources};
use crate::logging;

pub struct App {
    sources: Sources,
    /// The configuration read by the last `configure`, consumed by `prepare`.
    pending: Option<Config>,
}

impl App {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            pending: None,
        }
    }
}

impl Application for App {
    fn configure(&mut self) -> Result<Plan, BoxError> {
        let config = self.sources.load().map_err(|e| format!("{e:#}"))?;
        let plan = config.plan.clone();
        self.pending = Some(config);
        Ok(plan)
    }

    fn prepare(&mut self, listeners: &[Listener]) -> Result<Arc<dyn WorkerBody>, BoxError> {
        let config = self
            .pending
            .take()
            .ok_or("prepare called before configure")?;
        logging::apply_level(config.log_level);
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
        if config.worker.backends.is_empty() {
            log::warn!("no http-to configured: the built-in responder answers every request");
        }
        let server = worker::Server::build(config.worker, &addrs)?;
        Ok(Arc::new(Body(server)))
    }
}

struct Body(worker::Server);

impl WorkerBody for Body {
    fn run(&self, ctx: WorkerContext<'_>) -> i32 {
        if std::env::var_os(CRASH_HOOK).is_some() {
            // Test hook: a worker that dies at once on every start (respawn backoff tests).
            log::error!("{CRASH_HOOK} is set: worker {} aborts", ctx.id + 1);
            std::process::abort();
        }
        let sockets: Vec<&TcpListener> = ctx.listeners.iter().map(|l| &l.socket).collect();
        let activity = Activity {
            slot: ctx.slot,
            stop: &ctx.stop,
        };
        let env = worker::WorkerEnv {
            stop_flag: ctx.stop.flag(),
            stop_fd: ctx.stop.fd(),
            activity: &activity,
        };
        match self.0.run(&sockets, env) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("worker {} cannot serve: {e}", ctx.id + 1);
                master::EXIT_BOOT_ERROR
            }
        }
    }
}

/// Environment variable that makes every worker abort at start (for tests of respawn backoff).
const CRASH_HOOK: &str = "UWSGI_MASTER_TEST_CRASH_WORKERS";

/// The worker's activity, written into its scoreboard slot.
struct Activity<'a> {
    slot: &'static master::Slot,
    stop: &'a master::Stop,
}

impl worker::Activity for Activity<'_> {
    fn connection_opened(&self) {
        self.slot.active_connections.fetch_add(1, Ordering::Relaxed);
    }

    fn connection_closed(&self) {
        self.slot.active_connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn request_started(&self, thread: usize) {
        self.slot.request_started(thread);
    }

    fn request_finished(&self, thread: usize, bytes_sent: u64) {
        self.slot.request_finished(thread, bytes_sent);
    }

    fn request_parked(&self, thread: usize) {
        self.slot.request_parked(thread);
    }

    fn requests_waiting(&self, longest: std::time::Duration) {
        self.slot.requests_waiting(longest);
    }

    fn recycle(&self) {
        self.slot.mark_recycling();
        self.stop.trigger();
    }
}
