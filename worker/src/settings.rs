use std::path::PathBuf;
use std::time::Duration;

/// Everything a worker needs, as read from the configuration by the binary.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Threads per worker; each serves every listener.
    pub threads: usize,
    /// Of those, how many run at once (the gate's places): the cores this process may use,
    /// shared among the workers, at least one.
    pub running_threads: usize,
    pub listeners: Vec<ListenerSettings>,
    /// Plain-HTTP listeners that redirect every request to https (`http-to-https`).
    pub redirects: Vec<RedirectSettings>,
    /// Empty: the built-in responder answers.
    pub backends: Vec<BackendAddr>,
    pub timeouts: Timeouts,
    /// Largest request head, in bytes.
    pub buffer_size: usize,
    pub max_body: Option<u64>,
    /// Largest chunked request body buffered for a uwsgi backend (which needs a length).
    pub chunked_input_limit: u64,
    /// Requests after which a worker asks to be recycled (a per-worker jitter is added).
    pub max_requests: Option<u64>,
    /// One log line per request.
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Duration,
    pub headers: Duration,
    /// Idle time between requests on one connection; zero turns keep-alive off.
    pub keepalive: Duration,
    /// Backend reads and client reads in the middle of a body.
    pub backend: Duration,
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            headers: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            backend: Duration::from_secs(60),
            connect: Duration::from_secs(5),
        }
    }
}

/// One `https` entry: which bound socket it serves and its TLS material.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Index into the listeners the master bound.
    pub socket: usize,
    pub tls: TlsSettings,
    /// Pass the client certificate (PEM and DER) to the backend.
    pub export_cert: bool,
    /// Expect a PROXY protocol (v1 or v2) header before the handshake; refuse connections
    /// without one.
    pub proxy_protocol: bool,
}

/// One `http-to-https` listener: which bound socket, and the port the https URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectSettings {
    /// Index into the listeners the master bound.
    pub socket: usize,
    /// Written into `Location` unless it is 443.
    pub https_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// OpenSSL cipher list for TLS <= 1.2; None: a modern secure default.
    pub ciphers: Option<String>,
    /// TLS 1.3 cipher suites; None: OpenSSL's default.
    pub ciphersuites: Option<String>,
    pub client_ca: Option<PathBuf>,
    pub verify_client: VerifyClient,
    pub min_version: TlsVersion,
    pub verify_depth: u32,
    /// Session-id context; None: derived from the listener address.
    pub session_context: Option<String>,
    /// DER OCSP response stapled with `cert`.
    pub ocsp_response: Option<PathBuf>,
    /// More certificates for the same names, one per other key type (ECDSA beside RSA):
    /// OpenSSL presents the one the client supports.
    pub extra_certs: Vec<CertKey>,
    /// `ssl-option` switches.
    pub options: Vec<crate::TlsOption>,
    /// Certificates chosen by the client's server name (SNI).
    pub sni: Vec<SniSettings>,
    /// uWSGI's `sni-dir`: `<name>.crt` + `<name>.key` [+ `<name>.ca`, `<name>.ocsp`].
    pub sni_dir: Option<PathBuf>,
    /// `ticket-key-file`; None: random keys made with each context.
    pub ticket_key_file: Option<PathBuf>,
}

/// A certificate (PEM, leaf first then chain), its key, and an optional DER OCSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ocsp_response: Option<PathBuf>,
}

/// One `sni` entry: names and what they get. Everything not set here is the listener's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniSettings {
    /// Host names; `*.example.com` matches one label.
    pub names: Vec<String>,
    /// One per key type; never empty.
    pub certs: Vec<CertKey>,
    pub ciphers: Option<String>,
    pub client_ca: Option<PathBuf>,
    pub verify_client: Option<VerifyClient>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyClient {
    None,
    /// Requested; a presented certificate must verify.
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// uwsgi protocol over a unix socket.
    UwsgiUnix(PathBuf),
    /// uwsgi protocol over TCP (`host:port`).
    UwsgiTcp(String),
    /// Plain HTTP/1.1 over TCP (`http://host:port`).
    HttpTcp(String),
    /// Plain HTTP/1.1 over a unix socket (`http+unix:/path`).
    HttpUnix(PathBuf),
}

impl BackendAddr {
    pub fn is_http(&self) -> bool {
        matches!(self, BackendAddr::HttpTcp(_) | BackendAddr::HttpUnix(_))
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::UwsgiUnix(p) => write!(f, "unix:{}", p.display()),
            BackendAddr::UwsgiTcp(a) => write!(f, "{a}"),
            BackendAddr::HttpTcp(a) => write!(f, "http://{a}"),
            BackendAddr::HttpUnix(p) => write!(f, "http+unix:{}", p.display()),
        }
    }
}
