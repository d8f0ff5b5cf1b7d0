//! The master loop: wait for the next event (signal, stats request, deadline), handle it,
//! then reap, check heartbeats and deadlines, and keep the worker count.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, unbounded, Receiver};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::signal::*;

use crate::app::{Application, WorkerBody};
use crate::backoff::Backoff;
use crate::bind::{bind_all, Listener};
use crate::error::StartError;
use crate::privileges::{current_is_root, Identity};
use crate::scoreboard::{self, monotonic_ms, Scoreboard};
use crate::settings::Plan;
use crate::stats::{self, Snapshot, WorkerStat};
use crate::{logfile, pidfile, process, signals, EXIT_BOOT_ERROR};

/// Longest the loop sleeps without an event: heartbeats and deadlines are checked at least
/// this often.
const TICK: Duration = Duration::from_millis(250);

/// Start the master: configure, bind, drop, prepare, fork, supervise. Returns when the master
/// has shut down (SIGTERM, SIGINT, SIGQUIT), with every worker reaped.
pub fn run(app: &mut dyn Application) -> Result<(), StartError> {
    // Before any other thread exists.
    let signals = signals::forward().map_err(StartError::Signals)?;
    let plan = app
        .configure()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let restart = &plan.restart;
    if let Some(path) = &plan.runtime.log_file {
        logfile::open(path)
            .map_err(|e| StartError::Config(format!("log-file {}: {e}", path.display())))?;
    }
    raise_fd_limit();
    let identity = Identity::resolve(restart.uid.as_deref(), restart.gid.as_deref())?;
    if identity.is_none() && current_is_root() {
        log::warn!("running as root without uid: WORKERS WILL RUN AS ROOT; set uid and gid");
    }
    let listeners = bind_all(
        &restart.sockets,
        restart.listen_backlog,
        restart.defer_accept_secs,
    )?;
    for l in &listeners {
        log::info!("bound {} (backlog {})", l.addr, restart.listen_backlog);
    }
    let stats_listener = match restart.stats {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| StartError::Bind {
            addr,
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?),
        None => None,
    };
    if let Some(path) = &restart.pidfile {
        pidfile::write(path)?;
    }
    let worker_identity = match (&identity, restart.master_as_root) {
        (Some(id), false) => {
            id.drop_privileges()?;
            log::info!("dropped privileges to uid {} gid {}", id.uid, id.gid);
            None
        }
        (Some(id), true) => {
            log::info!(
                "master-as-root: workers will drop to uid {} gid {}",
                id.uid,
                id.gid
            );
            Some(id.clone())
        }
        (None, _) => None,
    };
    let body = app
        .prepare(&listeners)
        .map_err(|e| StartError::Prepare(e.to_string()))?;
    let scoreboard = Scoreboard::new().map_err(StartError::Fork)?;
    let stats_requests = match stats_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            let (tx, rx) = unbounded();
            stats::serve(l, tx).map_err(StartError::Signals)?;
            log::info!(
                "stats server on {}",
                addr.map_or("?".into(), |a| a.to_string())
            );
            rx
        }
        None => never(),
    };
    let mut master = Supervisor {
        app,
        processes: plan.runtime.processes,
        plan,
        listeners,
        worker_identity,
        generation: 1,
        body,
        workers: Vec::new(),
        backoff: Backoff::default(),
        shutdown: false,
        signals,
        stats_requests,
        scoreboard,
        respawns: 0,
        retired_requests: 0,
        retired_bytes: 0,
    };
    log::info!(
        "master {} started: {} workers, generation 1",
        std::process::id(),
        master.processes
    );
    master.run_loop()
}

struct Worker {
    pid: Pid,
    id: usize,
    generation: u64,
    slot: usize,
    started: Instant,
    /// Set once the worker was told to stop: when it gets SIGKILL.
    kill_at: Option<Instant>,
    killed: bool,
}

struct Supervisor<'a> {
    app: &'a mut dyn Application,
    plan: Plan,
    /// Target number of current-generation workers (SIGTTIN/SIGTTOU move it).
    processes: usize,
    listeners: Vec<Listener>,
    /// Some when `master-as-root`: each worker drops to it after fork.
    worker_identity: Option<Identity>,
    generation: u64,
    body: Arc<dyn WorkerBody>,
    workers: Vec<Worker>,
    backoff: Backoff,
    shutdown: bool,
    signals: Receiver<i32>,
    stats_requests: Receiver<stats::Request>,
    scoreboard: Scoreboard,
    respawns: u64,
    /// Counters of workers that are gone, so totals never go backwards.
    retired_requests: u64,
    retired_bytes: u64,
}

impl Supervisor<'_> {
    fn run_loop(&mut self) -> Result<(), StartError> {
        self.manage_workers();
        loop {
            let timeout = self.next_wakeup();
            select! {
                recv(self.signals) -> sig => match sig {
                    Ok(sig) => self.handle_signal(sig),
                    Err(_) => return Err(StartError::Signals(std::io::Error::other("signal thread ended"))),
                },
                recv(self.stats_requests) -> req => {
                    if let Ok(req) = req {
                        let _ = req.reply.send(stats::render(&self.snapshot(), req.format));
                    }
                }
                default(timeout) => {}
            }
            self.reap();
            self.check_heartbeats();
            self.enforce_deadlines();
            if self.shutdown {
                if self.workers.is_empty() {
                    break;
                }
            } else {
                self.manage_workers();
            }
        }
        log::info!("master {} exiting", std::process::id());
        if let Some(path) = &self.plan.restart.pidfile {
            pidfile::remove(path);
        }
        Ok(())
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut until = now + TICK;
        if let Some(t) = self.backoff.ready_at() {
            until = until.min(t.max(now));
        }
        for t in self
            .workers
            .iter()
            .filter(|w| !w.killed)
            .filter_map(|w| w.kill_at)
        {
            until = until.min(t.max(now));
        }
        until.saturating_duration_since(now)
    }

    fn handle_signal(&mut self, sig: i32) {
        match sig {
            SIGCHLD => {}
            SIGHUP => self.handle_reload(),
            SIGTERM => self.handle_graceful_shutdown(),
            SIGINT | SIGQUIT => self.handle_fast_shutdown(sig),
            SIGTTIN => {
                self.processes += 1;
                log::info!("SIGTTIN: {} workers", self.processes);
            }
            SIGTTOU => {
                self.processes = self.processes.saturating_sub(1).max(1);
                log::info!("SIGTTOU: {} workers", self.processes);
            }
            SIGUSR1 => self.handle_reopen_logs(),
            other => log::debug!("ignoring signal {other}"),
        }
    }

    fn handle_reload(&mut self) {
        if self.shutdown {
            return;
        }
        log::info!("SIGHUP: reloading configuration and certificates");
        let plan = match self.app.configure() {
            Ok(plan) => plan,
            Err(e) => {
                log::error!(
                    "reload failed, generation {} keeps serving: {e}",
                    self.generation
                );
                return;
            }
        };
        if plan.restart != self.plan.restart {
            log::warn!(
                "reload: sockets, listen, uid, gid, pidfile, stats or master-as-root changed; \
                 these need a restart and keep their old values"
            );
        }
        let body = match self.app.prepare(&self.listeners) {
            Ok(body) => body,
            Err(e) => {
                log::error!(
                    "reload failed, generation {} keeps serving: {e}",
                    self.generation
                );
                return;
            }
        };
        if plan.runtime.log_file != self.plan.runtime.log_file {
            if let Some(path) = &plan.runtime.log_file {
                if let Err(e) = logfile::open(path) {
                    log::error!(
                        "log-file {}: {e}; logging stays where it was",
                        path.display()
                    );
                }
            }
        }
        let old = self.generation;
        self.generation += 1;
        self.body = body;
        self.processes = plan.runtime.processes;
        self.plan.runtime = plan.runtime;
        // Start G+1 before retiring G: the listeners never lack an accepting worker.
        self.manage_workers();
        let deadline = Instant::now() + self.plan.runtime.reload_mercy;
        for w in self.workers.iter_mut().filter(|w| w.generation == old) {
            retire(w, deadline);
        }
        log::info!(
            "reload done: generation {} started, generation {old} draining (mercy {}s)",
            self.generation,
            self.plan.runtime.reload_mercy.as_secs()
        );
    }

    fn handle_graceful_shutdown(&mut self) {
        if self.shutdown {
            return;
        }
        let mercy = self.plan.runtime.reload_mercy;
        log::info!(
            "SIGTERM: graceful shutdown, workers get {}s to finish",
            mercy.as_secs()
        );
        self.shutdown = true;
        let deadline = Instant::now() + mercy;
        for w in &mut self.workers {
            retire(w, deadline);
        }
    }

    fn handle_fast_shutdown(&mut self, sig: i32) {
        log::info!("{}: fast shutdown", signals::name(sig));
        self.shutdown = true;
        for w in &mut self.workers {
            hard_kill(w);
        }
    }

    fn handle_reopen_logs(&mut self) {
        if self.plan.runtime.log_file.is_none() {
            return;
        }
        if let Err(e) = logfile::reopen() {
            log::error!("SIGUSR1: cannot reopen the log file: {e}");
            return;
        }
        for w in &self.workers {
            let _ = kill(w.pid, Signal::SIGUSR1);
        }
        log::info!("SIGUSR1: log file reopened");
    }

    /// Collect every dead child, log its cause, and pace respawns.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => status,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return;
                }
            };
            let (pid, cause, clean) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}"), code == 0),
                WaitStatus::Signaled(pid, sig, core) => (
                    pid,
                    format!(
                        "killed by {}{}",
                        signals::name(sig as i32),
                        if core { " (core dumped)" } else { "" }
                    ),
                    false,
                ),
                _ => continue,
            };
            let Some(pos) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let w = self.workers.swap_remove(pos);
            let slot = self.scoreboard.slot(w.slot);
            self.retired_requests += slot.requests.load(Ordering::Relaxed);
            self.retired_bytes += slot.bytes.load(Ordering::Relaxed);
            let recycled = slot.state.load(Ordering::Acquire) == scoreboard::RECYCLING;
            self.scoreboard.free(w.slot);
            let lived = w.started.elapsed();
            if w.kill_at.is_some() || (recycled && clean) {
                log::info!(
                    "worker {} (pid {pid}, generation {}) finished: {cause}",
                    w.id + 1,
                    w.generation
                );
                continue;
            }
            let boot = matches!(status, WaitStatus::Exited(_, EXIT_BOOT_ERROR));
            let level = if clean {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "worker {} (pid {pid}, generation {}) died after {:.1}s: {cause}{}",
                w.id + 1,
                w.generation,
                lived.as_secs_f64(),
                if boot { " (could not start)" } else { "" }
            );
            if w.generation == self.generation && !self.shutdown {
                self.respawns += 1;
                if let Some(delay) = self.backoff.record_death(lived, Instant::now()) {
                    log::warn!(
                        "workers are dying fast: next respawn in {} ms",
                        delay.as_millis()
                    );
                }
            }
        }
    }

    /// Harakiri (a thread stuck on one request) and max-requests (a worker asking to be
    /// recycled): both get the worker replaced while it finishes what it can.
    fn check_heartbeats(&mut self) {
        if self.shutdown {
            return;
        }
        let now_ms = monotonic_ms();
        let harakiri = self.plan.runtime.harakiri;
        let mercy = self.plan.runtime.reload_mercy;
        for w in self.workers.iter_mut().filter(|w| w.kill_at.is_none()) {
            let slot = self.scoreboard.slot(w.slot);
            if slot.state.load(Ordering::Acquire) == scoreboard::RECYCLING {
                log::info!(
                    "worker {} (pid {}) reached max-requests: replacing it",
                    w.id + 1,
                    w.pid
                );
                retire(w, Instant::now() + mercy);
                continue;
            }
            let Some(limit) = harakiri else { continue };
            let busy = slot.longest_busy_ms(now_ms);
            if busy > limit.as_millis() as u64 {
                log::warn!(
                    "HARAKIRI: worker {} (pid {}) has a thread busy on one request for {:.1}s \
                     (limit {}s): replacing it",
                    w.id + 1,
                    w.pid,
                    busy as f64 / 1000.0,
                    limit.as_secs()
                );
                // Its other threads may finish their requests; the stuck one cannot.
                retire(w, Instant::now() + limit.min(mercy));
            }
        }
    }

    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            if !w.killed && w.kill_at.is_some_and(|t| now >= t) {
                log::warn!(
                    "worker {} (pid {}) still busy at its deadline: SIGKILL",
                    w.id + 1,
                    w.pid
                );
                hard_kill(w);
            }
        }
    }

    /// Keep `processes` live workers in the current generation: spawn missing slots, retire
    /// surplus ones. Only the current generation is ever respawned.
    fn manage_workers(&mut self) {
        let deadline = Instant::now() + self.plan.runtime.reload_mercy;
        for w in self.workers.iter_mut() {
            if w.generation == self.generation && w.kill_at.is_none() && w.id >= self.processes {
                log::info!("retiring worker {} (pid {})", w.id + 1, w.pid);
                retire(w, deadline);
            }
        }
        for id in 0..self.processes {
            let present = self
                .workers
                .iter()
                .any(|w| w.generation == self.generation && w.id == id && w.kill_at.is_none());
            if present {
                continue;
            }
            if !self.backoff.may_spawn(Instant::now()) {
                return;
            }
            self.spawn(id);
        }
    }

    fn spawn(&mut self, id: usize) {
        let Some(slot) = self.scoreboard.alloc() else {
            log::error!(
                "no free scoreboard slot for worker {}: too many workers draining",
                id + 1
            );
            self.backoff.record_death(Duration::ZERO, Instant::now());
            return;
        };
        match process::spawn_worker(
            &self.body,
            &self.listeners,
            id,
            self.generation,
            self.scoreboard.slot(slot),
            self.worker_identity.as_ref(),
        ) {
            Ok(pid) => {
                self.scoreboard.assign(slot, pid.as_raw(), self.generation);
                log::info!(
                    "spawned worker {} (pid {pid}, generation {})",
                    id + 1,
                    self.generation
                );
                self.workers.push(Worker {
                    pid,
                    id,
                    generation: self.generation,
                    slot,
                    started: Instant::now(),
                    kill_at: None,
                    killed: false,
                });
            }
            Err(e) => {
                self.scoreboard.free(slot);
                log::error!("fork failed for worker {}: {e}", id + 1);
                self.backoff.record_death(Duration::ZERO, Instant::now());
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let now_ms = monotonic_ms();
        let mut workers: Vec<WorkerStat> = self
            .workers
            .iter()
            .map(|w| {
                let slot = self.scoreboard.slot(w.slot);
                let busy_ms = slot.longest_busy_ms(now_ms);
                WorkerStat {
                    id: w.id + 1,
                    pid: w.pid.as_raw(),
                    generation: w.generation,
                    state: match (w.kill_at.is_some(), busy_ms > 0) {
                        (true, _) => "stopping",
                        (false, true) => "busy",
                        (false, false) => "idle",
                    },
                    requests: slot.requests.load(Ordering::Relaxed),
                    bytes: slot.bytes.load(Ordering::Relaxed),
                    active_connections: slot.active_connections.load(Ordering::Relaxed),
                    busy_ms,
                    running_secs: w.started.elapsed().as_secs(),
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.generation, w.id));
        Snapshot {
            pid: std::process::id(),
            generation: self.generation,
            respawns: self.respawns,
            listeners: self.listeners.iter().map(|l| l.addr).collect(),
            total_requests: self.retired_requests + workers.iter().map(|w| w.requests).sum::<u64>(),
            total_bytes: self.retired_bytes + workers.iter().map(|w| w.bytes).sum::<u64>(),
            workers,
        }
    }
}

/// Every connection costs a descriptor (two with a backend): take the hard limit, as nginx's
/// `worker_rlimit_nofile` would be set by hand. Workers inherit it.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => log::info!("open files limit raised from {soft} to {hard}"),
            Err(e) => log::warn!("cannot raise the open files limit from {soft}: {e}"),
        },
        Ok(_) => {}
        Err(e) => log::warn!("cannot read the open files limit: {e}"),
    }
}

/// Tell a worker to stop accepting and finish what it has, by `deadline`.
fn retire(w: &mut Worker, deadline: Instant) {
    if w.kill_at.is_some() {
        return;
    }
    w.kill_at = Some(deadline);
    if let Err(e) = kill(w.pid, Signal::SIGTERM) {
        log::warn!("SIGTERM to worker pid {}: {e}", w.pid);
    }
}

fn hard_kill(w: &mut Worker) {
    w.kill_at.get_or_insert_with(Instant::now);
    w.killed = true;
    if let Err(e) = kill(w.pid, Signal::SIGKILL) {
        log::warn!("SIGKILL to worker pid {}: {e}", w.pid);
    }
}
