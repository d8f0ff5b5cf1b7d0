use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors that stop the master from starting; each names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: nix::Error,
    },
    #[error("pidfile {path}: {reason}")]
    Pidfile { path: PathBuf, reason: String },
    #[error("privileges: {0}")]
    Privileges(String),
    #[error("preparing workers: {0}")]
    Prepare(String),
    #[error("signals: {0}")]
    Signals(std::io::Error),
    #[error("fork: {0}")]
    Fork(nix::Error),
}
