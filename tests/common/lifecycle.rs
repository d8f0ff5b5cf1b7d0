//! Helpers for the lifecycle tests (reload, supervision, stats, supervisord):
//!
//! * [`Master`]: a master started with extra environment variables and no
//!   readiness wait (for workers that never come up);
//! * log polling ([`count`], [`wait_count`]);
//! * certificates made at test time and swapped in place ([`NewCert`],
//!   [`replace_file`], [`peer_cert`]);
//! * [`Blackhole`]: a backend that accepts and never answers;
//! * the stats server: [`stats_raw`], [`stats_http`], a small JSON reader
//!   ([`Json`]), a strict check with Python's `json`, and the Prometheus
//!   text parser of the `prometheus_client` Python package
//!   ([`prometheus_parse`]);
//! * [`Supervisord`]: a real `supervisord -n` run as a child.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

use super::client::{read_response, Response};
use super::procs;
use super::server::describe_status;
use super::watchdog;

// ---------------------------------------------------------------- logs

/// Number of lines of `log` containing `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Lines of `log` containing `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// Poll `log()` until at least `n` lines contain `needle`.
pub fn wait_count(log: impl Fn() -> String, needle: &str, n: usize, timeout: Duration) -> bool {
    procs::wait_until(timeout, || count(&log(), needle) >= n)
}

/// Read a file as (lossy) text; empty when missing.
pub fn read_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- a bare master

/// A master started with extra environment and without waiting for a
/// worker. Drop SIGKILLs the master and every child seen (by PID, checking
/// start times), and prints the log when the test is panicking.
pub struct Master {
    child: Child,
    pub pid: i32,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    seen: Mutex<Vec<(i32, u64)>>,
}

impl Master {
    /// Write `config` as `<dir>/app.toml`, start the master on it with `env`
    /// added to its environment; stdout+stderr go to `<dir>/master.log`.
    /// Core dumps are disabled (workers that abort() would write them).
    pub fn spawn(dir: &Path, config: &str, env: &[(&str, &str)]) -> Master {
        let config_path = dir.join("app.toml");
        fs::write(&config_path, config).expect("write app.toml");
        let log_path = dir.join("master.log");
        let mut cmd = Command::new(super::bin());
        cmd.arg("--config").arg(&config_path).current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        super::procs::log_and_tie(&mut cmd, &log_path);
        // SAFETY: setrlimit is async-signal-safe; no allocation.
        unsafe {
            cmd.pre_exec(|| {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn uwsgi-master");
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        Master {
            child,
            pid,
            config_path,
            log_path,
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn log(&self) -> String {
        read_text(&self.log_path)
    }

    /// Live children of the master, recorded for cleanup.
    pub fn workers(&self) -> Vec<i32> {
        let w = procs::children_of(self.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for &pid in &w {
            if !seen.iter().any(|&(p, _)| p == pid) {
                if let Some(st) = procs::start_time(pid) {
                    seen.push((pid, st));
                }
            }
        }
        w
    }

    pub fn signal(&mut self, sig: i32) {
        if self.try_exit().is_none() {
            procs::kill(self.pid, sig);
        }
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        procs::wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let exited = self.try_exit().is_some();
        if std::thread::panicking() {
            eprintln!(
                "---- uwsgi-master pid {} log ({}) ----\n{}\n---- end of log ----",
                self.pid,
                self.log_path.display(),
                self.log()
            );
        }
        if !exited {
            self.workers();
            procs::kill(self.pid, libc::SIGKILL);
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (pid, st) in seen {
            if procs::same_process_alive(pid, st) {
                procs::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        watchdog::unregister_pid(self.pid);
    }
}

// ---------------------------------------------------------------- certificates

/// A server certificate (self-signed, SAN DNS:localhost, IP:127.0.0.1)
/// made at test time, with its key and serial.
pub struct NewCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Serial number as uppercase hex (openssl's BigNum::to_hex_str).
    pub serial: String,
}

impl NewCert {
    /// A fresh certificate whose subject is `O=<org>, CN=localhost`.
    pub fn generate(org: &str) -> NewCert {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
        let key = PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name builder");
        name.append_entry_by_text("O", org).expect("O");
        name.append_entry_by_text("CN", "localhost").expect("CN");
        let name = name.build();
        let mut b = X509::builder().expect("x509 builder");
        b.set_version(2).expect("version");
        let mut bn = BigNum::new().expect("bignum");
        bn.rand(63, MsbOption::ONE, false).expect("random serial");
        b.set_serial_number(&bn.to_asn1_integer().expect("serial"))
            .expect("set serial");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now - 3600).expect("time"))
            .expect("not before");
        b.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
            .expect("not after");
        b.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("bc");
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(None, None))
            .expect("san");
        b.append_extension(san).expect("san");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        NewCert {
            serial: serial_hex(&cert),
            cert_pem: cert.to_pem().expect("cert pem"),
            key_pem: key.private_key_to_pem_pkcs8().expect("key pem"),
        }
    }
}

/// Serial of a certificate as uppercase hex.
pub fn serial_hex(cert: &openssl::x509::X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .expect("serial to hex")
}

/// Serial of the first certificate in a PEM file.
pub fn pem_serial(path: &Path) -> String {
    let pem = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let cert = X509::from_pem(&pem).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    serial_hex(&cert)
}

/// Replace `path` atomically: write a sibling temp file, then rename it
/// over `path` (as an operator's deploy tool does).
pub fn replace_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("new-{}", std::process::id()));
    fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
}

/// Complete a TLS handshake on 127.0.0.1:port (no verification) and return
/// the certificate the server presented.
pub fn peer_cert(port: u16) -> Result<X509, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    let connector = b.build();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let mut cfg = connector.configure().map_err(|e| e.to_string())?;
    cfg.set_verify_hostname(false);
    let mut s = cfg
        .connect("localhost", tcp)
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    let cert = s
        .ssl()
        .peer_certificate()
        .ok_or_else(|| "no peer certificate".to_string());
    let _ = s.shutdown();
    cert
}

/// Serial of the certificate a new handshake gets.
pub fn peer_serial(port: u16) -> Result<String, String> {
    peer_cert(port).map(|c| serial_hex(&c))
}

// ---------------------------------------------------------------- a reusable TLS client

/// A TLS client context built once (test CA, host name "localhost") and
/// reused for many connections: building one per connection (as
/// [`super::TlsConn`] does) costs a load of the system CA store each time,
/// which would make the client, not the server, the bottleneck of a load.
#[derive(Clone)]
pub struct Connector {
    inner: SslConnector,
    pub port: u16,
}

/// One client connection made by a [`Connector`].
pub type Conn = super::client::TlsConn;

impl Connector {
    pub fn new(port: u16, ca: &Path) -> Connector {
        let mut b = SslConnector::builder(SslMethod::tls()).expect("SslConnector");
        b.set_ca_file(ca)
            .unwrap_or_else(|e| panic!("CA {}: {e}", ca.display()));
        Connector {
            inner: b.build(),
            port,
        }
    }

    /// TCP connect + verified TLS handshake ("localhost").
    pub fn connect(&self) -> Result<Conn, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
        tcp.set_write_timeout(Some(Duration::from_secs(30))).ok();
        let s = self
            .inner
            .connect("localhost", tcp)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        Ok(Conn::from_stream(s, self.port))
    }
}

/// True when the answer carries `Connection: close`.
pub fn says_close(r: &Response) -> bool {
    r.header("connection")
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        .unwrap_or(false)
}

/// The `worker-pid:` line of the built-in responder's page.
pub fn responder_pid(r: &Response) -> Option<i32> {
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("worker-pid:"))
        .and_then(|p| p.trim().parse().ok())
}

// ---------------------------------------------------------------- black hole backend

/// A TCP backend that accepts connections and never answers (nor closes
/// them until dropped).
pub struct Blackhole {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind black hole backend");
        let addr = l.local_addr().expect("black hole local_addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, h, s) = (accepted.clone(), held.clone(), stop.clone());
        thread::Builder::new()
            .name("blackhole-backend".into())
            .spawn(move || {
                for c in l.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = c {
                        a.fetch_add(1, Ordering::SeqCst);
                        h.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                    }
                }
            })
            .expect("spawn black hole thread");
        Blackhole {
            addr,
            accepted,
            held,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

// ---------------------------------------------------------------- stats server

/// What a raw TCP connection to the stats server gets (uWSGI style: the
/// JSON, then close), read to EOF.
pub fn stats_raw(port: u16) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect stats {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("read stats {addr}: {e}"))?;
    String::from_utf8(out).map_err(|e| format!("stats is not UTF-8: {e}"))
}

/// An HTTP answer of the stats server.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path HTTP/1.1` to the stats server; the answer read to EOF.
pub fn stats_http(port: u16, path: &str) -> Result<HttpAnswer, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect stats {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("send to stats: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read stats {addr}: {e}"))?;
    let raw = String::from_utf8(raw).map_err(|e| format!("stats answer is not UTF-8: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {raw:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let answer = HttpAnswer {
        status,
        headers,
        body: body.to_string(),
    };
    if let Some(cl) = answer.header("content-length") {
        let cl: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        if cl != answer.body.len() {
            return Err(format!(
                "Content-Length {cl} but {} body bytes",
                answer.body.len()
            ));
        }
    }
    Ok(answer)
}

/// A JSON value (enough for the stats document).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(key),
            _ => None,
        }
    }

    /// `self[key]`, panicking with the document when missing.
    pub fn at(&self, key: &str) -> &Json {
        self.get(key)
            .unwrap_or_else(|| panic!("no key {key:?} in {self:?}"))
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Num(n) if n.fract() == 0.0 => Some(*n as i64),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> i64 {
        self.at(key)
            .as_i64()
            .unwrap_or_else(|| panic!("{key:?} is not an integer in {self:?}"))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.string()? else {
                        unreachable!()
                    };
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return self.err("expected ':'");
                    }
                    self.i += 1;
                    let v = self.value()?;
                    if m.insert(k.clone(), v).is_some() {
                        return self.err(&format!("duplicate key {k:?}"));
                    }
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => self.string(),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'n') => self.lit("null", Json::Null),
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                t.parse::<f64>()
                    .map(Json::Num)
                    .or_else(|_| self.err("bad number"))
            }
            Some(_) => self.err("unexpected character"),
        }
    }

    fn string(&mut self) -> Result<Json, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Json::Str(String::from_utf8_lossy(&out).into_owned()));
                }
                Some(b'\\') => {
                    let c = self.s.get(self.i + 1).copied();
                    self.i += 2;
                    match c {
                        Some(b'"') => out.push(b'"'),
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'/') => out.push(b'/'),
                        Some(b'n') => out.push(b'\n'),
                        Some(b't') => out.push(b'\t'),
                        Some(b'r') => out.push(b'\r'),
                        Some(b'b') => out.push(8),
                        Some(b'f') => out.push(12),
                        Some(b'u') => {
                            let hex = self.s.get(self.i..self.i + 4).unwrap_or(b"");
                            let cp = std::str::from_utf8(hex)
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(ch) = cp.and_then(char::from_u32) else {
                                return self.err("bad \\u escape");
                            };
                            self.i += 4;
                            let mut b = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                Some(c) if *c < 0x20 => return self.err("control character in string"),
                Some(c) => {
                    out.push(*c);
                    self.i += 1;
                }
            }
        }
    }
}

/// One worker as the stats JSON lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsWorker {
    pub id: i64,
    pub pid: i32,
    pub generation: i64,
    pub status: String,
    pub requests: i64,
}

/// The `workers` array of a stats document.
pub fn stats_workers(doc: &Json) -> Vec<StatsWorker> {
    doc.at("workers")
        .as_array()
        .unwrap_or_else(|| panic!("\"workers\" is not an array: {doc:?}"))
        .iter()
        .map(|w| StatsWorker {
            id: w.int("id"),
            pid: w.int("pid") as i32,
            generation: w.int("generation"),
            status: w
                .at("status")
                .as_str()
                .unwrap_or_else(|| panic!("status is not a string: {w:?}"))
                .to_string(),
            requests: w.int("requests"),
        })
        .collect()
}

/// Fetch and parse the raw JSON; Err while the server does not answer or
/// the document does not parse.
pub fn stats_doc(port: u16) -> Result<Json, String> {
    let text = stats_raw(port)?;
    Json::parse(&text).map_err(|e| format!("{e} in {text:?}"))
}

/// Run a Python snippet with `input` on stdin; Err(output) on failure.
fn python(interpreter: &str, script: &str, input: &str) -> Result<String, String> {
    let mut child = Command::new(interpreter)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {interpreter}: {e}"))?;
    let mut stdin = child.stdin.take().expect("python stdin");
    let data = input.to_string();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(data.as_bytes());
    });
    let out: Output = child
        .wait_with_output()
        .map_err(|e| format!("wait {interpreter}: {e}"))?;
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{interpreter} exited with {}: {text}{}",
            describe_status(&out.status),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Check `text` with Python's `json` module (strict: no NaN, no trailing data).
pub fn python_json_check(text: &str) -> Result<(), String> {
    python(
        "python3",
        r#"
import json, sys
def bad(c):
    raise ValueError("not JSON: " + c)
json.loads(sys.stdin.read(), parse_constant=bad)
"#,
        text,
    )
    .map(drop)
}

/// A Python interpreter that can import `prometheus_client` ("python3"
/// first, then Debian's /usr/bin/python3 when another python3 comes first
/// in PATH). Panics with the install hint when none can.
pub fn prometheus_python() -> &'static str {
    let mut errors = Vec::new();
    for interp in ["python3", "/usr/bin/python3"] {
        match python(
            interp,
            "from prometheus_client.parser import text_string_to_metric_families",
            "",
        ) {
            Ok(_) => return interp,
            Err(e) => errors.push(e),
        }
    }
    panic!(
        "the Python package prometheus_client is needed to check /metrics: \
         pip install prometheus_client (or apt-get install python3-prometheus-client); \
         import failed: {errors:?}"
    );
}

/// One sample as prometheus_client's parser read it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// Family name (as the parser names it: counters lose `_total`).
    pub family: String,
    /// Family type: counter, gauge, ...
    pub kind: String,
    /// Sample name.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse Prometheus text exposition with prometheus_client's parser.
/// Err(parser error) when it does not parse.
pub fn prometheus_parse(text: &str) -> Result<Vec<PromSample>, String> {
    let interp = prometheus_python();
    // (Python needs its indentation: no `\` line continuations here.)
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        labels = ",".join("%s=%s" % (k, v) for k, v in sorted(s.labels.items()))
        print("\t".join([f.name, f.type, s.name, labels, repr(float(s.value))]))
"#;
    let out = python(interp, script, text)?;
    let mut samples = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            return Err(format!("unexpected parser output line {line:?}"));
        }
        let labels = f[3]
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples.push(PromSample {
            family: f[0].to_string(),
            kind: f[1].to_string(),
            name: f[2].to_string(),
            labels,
            value: f[4].parse().map_err(|_| format!("bad value in {line:?}"))?,
        });
    }
    Ok(samples)
}

// ---------------------------------------------------------------- supervisord

/// A real `supervisord -n` running as our child. Drop SIGKILLs, by PID,
/// every process it started (and their children), then supervisord.
pub struct Supervisord {
    child: Child,
    pub pid: i32,
    pub conf: PathBuf,
    pub log_path: PathBuf,
    /// (pid, start time) of every program process seen, and their children.
    seen: Mutex<Vec<(i32, u64)>>,
}

impl Supervisord {
    /// Start `supervisord -n -c conf` (stdout+stderr to `<dir>/supervisord.out`).
    pub fn start(dir: &Path, conf: &Path) -> Supervisord {
        let mut cmd = Command::new("supervisord");
        cmd.arg("-n").arg("-c").arg(conf).current_dir(dir);
        super::procs::log_and_tie(&mut cmd, &dir.join("supervisord.out"));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run supervisord ({e}): install Debian's `supervisor` package \
                 (.ci/run does)"
            )
        });
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        Supervisord {
            child,
            pid,
            conf: conf.to_path_buf(),
            log_path: dir.join("supervisord.out"),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Live children of supervisord (its programs), recorded for cleanup
    /// together with their own children.
    pub fn programs(&self) -> Vec<i32> {
        let progs = procs::children_of(self.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for &p in &progs {
            for pid in std::iter::once(p).chain(procs::children_of(p)) {
                if !seen.iter().any(|&(q, _)| q == pid) {
                    if let Some(st) = procs::start_time(pid) {
                        seen.push((pid, st));
                        watchdog::register_pid(pid);
                    }
                }
            }
        }
        progs
    }

    /// `supervisorctl -c conf args...` with a deadline; (exit code, stdout+stderr).
    pub fn ctl(&self, args: &[&str], timeout: Duration) -> (Option<i32>, String) {
        let dir = self.conf.parent().expect("conf dir");
        let out_path = dir.join(format!(
            "supervisorctl-{}.out",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let out = File::create(&out_path).expect("create supervisorctl output");
        let out2 = out.try_clone().expect("dup");
        let mut child = Command::new("supervisorctl")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(out2))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run supervisorctl ({e}): install Debian's `supervisor` package")
            });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait supervisorctl") {
                break Some(st);
            }
            if Instant::now() >= deadline {
                procs::kill(child.id() as i32, libc::SIGKILL);
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let text = read_text(&out_path);
        let _ = fs::remove_file(&out_path);
        match status {
            Some(st) => (st.code(), text),
            None => (
                None,
                format!("supervisorctl {args:?} still running after {timeout:?}: {text}"),
            ),
        }
    }

    pub fn output(&self) -> String {
        read_text(&self.log_path)
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- supervisord output ({}) ----\n{}\n---- end ----",
                self.log_path.display(),
                self.output()
            );
        }
        let running = self.child.try_wait().ok().flatten().is_none();
        if running {
            self.programs();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for &(pid, st) in &seen {
            if procs::same_process_alive(pid, st) {
                procs::kill(pid, libc::SIGKILL);
            }
        }
        if running {
            procs::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Programs reparented to us or to init: one more sweep.
        for &(pid, st) in &seen {
            if procs::same_process_alive(pid, st) {
                procs::kill(pid, libc::SIGKILL);
            }
            watchdog::unregister_pid(pid);
        }
        watchdog::unregister_pid(self.pid);
    }
}
