//! The worker side of uwsgi-master: TLS contexts, accept threads, HTTP/1.1 and the uwsgi
//! backend. It knows nothing of fork or signals beyond a stop flag.

mod accept;
pub mod backend;
mod cgi;
mod conn;
mod files;
mod gate;
pub mod http;
mod park;
mod proxy;
mod proxy_protocol;
mod redirect;
mod responder;
mod server;
mod session;
mod settings;
mod sni;
mod socket;
mod ssl_ext;
mod tickets;
mod tls;
mod tls_option;

pub use files::warn_if_world_writable;
pub use server::{Activity, BuildError, RunError, Server, WorkerEnv};
pub use settings::{
    BackendAddr, CertKey, ListenerSettings, RedirectSettings, Settings, SniSettings, Timeouts,
    TlsSettings, TlsVersion, VerifyClient,
};
pub use tls::{certificate_summary, TlsError};
pub use tls_option::TlsOption;
