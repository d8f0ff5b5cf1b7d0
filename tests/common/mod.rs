//! Shared helpers for the end-to-end tests.
//!
//! Every test builds its own [`TestEnv`] (a fresh temp dir with freshly made
//! certificates), picks its own ports, and starts the real `uwsgi-master`
//! binary through [`server::Server`]. Every wait has a deadline, and every
//! child process is killed by PID when its guard drops (also on panic).
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod certs;
pub mod client;
pub mod compat;
pub mod http_peers;
pub mod lifecycle;
pub mod ports;
pub mod procs;
pub mod server;
pub mod tls;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backend::{var, Backend};
pub use certs::Certs;
pub use client::{curl, Curl, CurlOut, Response, TlsConn};
pub use ports::{free_low_port, free_port};
pub use procs::{children_of, pid_alive, proc_status, wait_until, ProcStatus};
pub use server::Server;
pub use watchdog::watchdog;

/// A per-test temp dir holding freshly made certificates.
///
/// Declare it before any [`Server`] or [`Backend`] so that it is dropped
/// (and the dir removed) after them.
pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    pub certs: Certs,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("uwsgi-e2e-")
            .tempdir()
            .expect("create temp dir");
        let certs = Certs::generate(tmp.path()).expect("generate test certificates");
        TestEnv { tmp, certs }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_uwsgi-master")
}

/// Deadline used for "the server should be up by now".
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lowercase hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&openssl::sha::sha256(bytes))
}

/// The deterministic byte pattern the echo backend serves for `/big?n=`.
pub fn big_pattern(n: usize) -> Vec<u8> {
    (0..n).map(backend::pattern_byte).collect()
}

/// Quote a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A flat config with one `https` listener on 127.0.0.1:`port` using
/// `server.crt`/`server.key` (relative to the config's folder), an optional
/// `http-to`, and `extra` lines (top-level keys) appended.
pub fn config(port: u16, http_to: Option<&str>, extra: &str) -> String {
    let mut c = String::new();
    c.push_str("processes = 1\nthreads = 8\n");
    c.push_str(&format!(
        "https = [{}]\n",
        toml_str(&format!("127.0.0.1:{port},server.crt,server.key"))
    ));
    if let Some(to) = http_to {
        c.push_str(&format!("http-to = {}\n", toml_str(to)));
    }
    c.push_str(extra);
    if !extra.is_empty() && !extra.ends_with('\n') {
        c.push('\n');
    }
    c
}
