//! Wiring: the master's `Application` made of our config loader and the worker's server.

use std::net::{SocketAddr, TcpListener};
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
        let sockets: Vec<&TcpListener> = ctx.listeners.iter().map(|l| &l.socket).collect();
        let stop = worker::StopSignal {
            flag: ctx.stop.flag(),
            fd: ctx.stop.fd(),
        };
        match self.0.run(&sockets, stop) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("worker {} cannot serve: {e}", ctx.id + 1);
                master::EXIT_BOOT_ERROR
            }
        }
    }
}
