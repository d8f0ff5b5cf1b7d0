use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the configuration asks of the master. Read at start and again on every SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub restart: RestartSettings,
    pub runtime: RuntimeSettings,
}

/// Settings fixed for the life of the master: a reload that changes them draws a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartSettings {
    /// Every socket to bind, in the order workers will receive them.
    pub sockets: Vec<SocketAddr>,
    pub listen_backlog: i32,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub master_as_root: bool,
    /// `TCP_DEFER_ACCEPT` seconds: a connection that sends nothing never wakes a worker.
    pub defer_accept_secs: u32,
    /// Address of the stats server.
    pub stats: Option<SocketAddr>,
}

/// Settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub processes: usize,
    pub reload_mercy: Duration,
    /// A thread busy on one request longer than this gets its worker replaced.
    pub harakiri: Option<Duration>,
    /// stderr of the master and workers goes here; reopened on SIGUSR1.
    pub log_file: Option<PathBuf>,
}
