//! The worker side of uwsgi-master: TLS contexts, accept threads, HTTP/1.1 and the uwsgi
//! backend. It knows nothing of fork or signals beyond a stop flag.

mod accept;
pub mod backend;
mod cgi;
mod conn;
pub mod http;
mod park;
mod proxy;
mod redirect;
mod responder;
mod server;
mod session;
mod settings;
mod ssl_ext;
mod tls;

pub use server::{Activity, BuildError, RunError, Server, WorkerEnv};
pub use settings::{
    BackendAddr, ListenerSettings, RedirectSettings, Settings, Timeouts, TlsSettings, TlsVersion,
    VerifyClient,
};
pub use tls::{certificate_summary, TlsError};
