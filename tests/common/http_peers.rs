//! Peers for the HTTP tests of issue 4 (SPEC §5, §6):
//!
//! * [`AppServer`]: a real application server as a child process, either uWSGI
//!   (`uwsgi --plugin python3`) or gunicorn, running `tests/apps/echo.py`;
//!   killed by PID (SIGINT, then SIGKILL) when dropped.
//! * [`Peer`]: a scripted backend in test threads speaking either the uwsgi
//!   protocol (one request per connection) or HTTP/1.1 (keep-alive), over TCP or
//!   a unix socket, with routes for the framing and failure cases.
//! * [`RawTls`]: a raw TLS client (openssl crate) whose reader is open, so a
//!   test can stream a body or look at exact bytes.
//! * small tools: the echo app's JSON, VmRSS, RLIMIT_NOFILE.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream};

use super::certs::Certs;
use super::client::{read_response, Response};
use super::{procs, watchdog};

// ------------------------------------------------------------ app servers

/// `tests/apps` in the source tree.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("apps")
}

/// True when `prog` is an executable file in a folder of PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p).any(|d| {
                let f = d.join(prog);
                fs::metadata(&f)
                    .map(|m| {
                        use std::os::unix::fs::PermissionsExt;
                        m.is_file() && m.permissions().mode() & 0o111 != 0
                    })
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// A real application server (uWSGI or gunicorn) running as a child of the
/// test. Dropping it sends SIGINT (both servers' fast shutdown; uWSGI treats
/// SIGTERM as a reload), waits up to 5 s, then SIGKILLs the server and every
/// child of it that was seen, by PID.
pub struct AppServer {
    child: Child,
    pub pid: i32,
    pub name: &'static str,
    pub log_path: PathBuf,
    /// uWSGI: the unix socket; gunicorn: None.
    pub socket: Option<PathBuf>,
    /// gunicorn: 127.0.0.1:port; uWSGI: None.
    pub tcp: Option<SocketAddr>,
    /// Children seen (pid, start time), for cleanup.
    seen: Vec<(i32, u64)>,
}

fn spawn_logged(mut cmd: Command, log_path: &Path, what: &str) -> Child {
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    super::procs::log_and_tie(&mut cmd, log_path);
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

impl AppServer {
    /// A real uWSGI application server (Debian `uwsgi-core` +
    /// `uwsgi-plugin-python3`) serving `tests/apps/<app>` on a unix socket in
    /// `dir`: `--master --processes 2 --buffer-size 65535`. Panics (the test
    /// fails) when `uwsgi` is not installed.
    pub fn uwsgi(dir: &Path, app: &str) -> AppServer {
        assert!(
            on_path("uwsgi"),
            "`uwsgi` is not on PATH: install the Debian packages uwsgi-core and \
             uwsgi-plugin-python3 (CI's .ci/run must install them)"
        );
        let socket = dir.join("uwsgi-app.sock");
        let _ = fs::remove_file(&socket);
        let log_path = dir.join("uwsgi-app.log");
        let mut cmd = Command::new("uwsgi");
        cmd.args(["--plugin", "python3", "--socket"])
            .arg(&socket)
            .arg("--wsgi-file")
            .arg(apps_dir().join(app))
            .args([
                "--buffer-size",
                "65535",
                "--master",
                "--processes",
                "2",
                "--need-app",
                "--chmod-socket=666",
            ])
            .current_dir(dir);
        let child = spawn_logged(cmd, &log_path, "uwsgi");
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        let mut s = AppServer {
            child,
            pid,
            name: "uWSGI",
            log_path,
            socket: Some(socket.clone()),
            tcp: None,
            seen: Vec::new(),
        };
        let up = procs::wait_until(Duration::from_secs(60), || {
            UnixStream::connect(&socket).is_ok() || !procs::pid_alive(pid)
        });
        assert!(
            up && procs::pid_alive(pid),
            "uWSGI did not come up on {}",
            socket.display()
        );
        // Its workers (2), for cleanup.
        procs::wait_until(Duration::from_secs(30), || s.note_children() >= 2);
        s
    }

    /// gunicorn (PyPI) with `-k gthread --threads 4 --keep-alive 10` serving
    /// `tests/apps/<module>.py` on 127.0.0.1:`port`. Panics (the test fails)
    /// when `gunicorn` is not on PATH.
    pub fn gunicorn(dir: &Path, module: &str, port: u16) -> AppServer {
        assert!(
            on_path("gunicorn"),
            "`gunicorn` is not on PATH: `pip install gunicorn` (CI's .ci/run must install it)"
        );
        let log_path = dir.join("gunicorn.log");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut cmd = Command::new("gunicorn");
        cmd.args(["-k", "gthread", "--threads", "4", "--keep-alive", "10"])
            .args(["--workers", "1", "--graceful-timeout", "2"])
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--pythonpath")
            .arg(apps_dir())
            .args(["--access-logfile", "-", "--error-logfile", "-"])
            .args([
                "--access-logformat",
                "%(h)s %({remote_port}e)s \"%(r)s\" %(s)s %(b)s",
            ])
            .arg(format!("{module}:application"))
            .current_dir(dir);
        let child = spawn_logged(cmd, &log_path, "gunicorn");
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        let mut s = AppServer {
            child,
            pid,
            name: "gunicorn",
            log_path,
            socket: None,
            tcp: Some(addr),
            seen: Vec::new(),
        };
        let up = procs::wait_until(Duration::from_secs(60), || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                || !procs::pid_alive(pid)
        });
        assert!(
            up && procs::pid_alive(pid),
            "gunicorn did not come up on {addr}"
        );
        procs::wait_until(Duration::from_secs(30), || s.note_children() >= 1);
        s
    }

    /// Record the server's current children; returns how many are alive.
    pub fn note_children(&mut self) -> usize {
        let kids = procs::children_of(self.pid);
        for &k in &kids {
            if !self.seen.iter().any(|&(p, _)| p == k) {
                if let Some(st) = procs::start_time(k) {
                    self.seen.push((k, st));
                    watchdog::register_pid(k);
                }
            }
        }
        kids.len()
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The `http-to` value that reaches it.
    pub fn http_to(&self) -> String {
        match (&self.socket, &self.tcp) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(a)) => format!("http://{a}"),
            (None, None) => unreachable!(),
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}\n---- end ----",
                self.name,
                self.log_path.display(),
                self.log()
            );
        }
        self.note_children();
        if self.child.try_wait().ok().flatten().is_none() {
            procs::kill(self.pid, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                procs::kill(self.pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        for &(pid, st) in &self.seen {
            if procs::same_process_alive(pid, st) {
                procs::kill(pid, libc::SIGKILL);
            }
            watchdog::unregister_pid(pid);
        }
        watchdog::unregister_pid(self.pid);
    }
}

// ------------------------------------------------------------ echo.py's JSON

/// The flat JSON object of strings that `tests/apps/echo.py` answers.
#[derive(Debug, Clone)]
pub struct EchoEnv(pub HashMap<String, String>);

impl EchoEnv {
    pub fn parse(body: &str) -> Result<EchoEnv, String> {
        parse_flat_json(body).map(|v| EchoEnv(v.into_iter().collect()))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    /// Panics with the whole environ when `key` is not `want`.
    pub fn expect(&self, key: &str, want: &str) {
        assert_eq!(
            self.get(key),
            Some(want),
            "environ[{key:?}] should be {want:?}; environ: {:#?}",
            self.sorted()
        );
    }
    pub fn sorted(&self) -> Vec<(&String, &String)> {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort();
        v
    }
}

/// Parse a JSON object whose values are all strings (no serde here).
pub fn parse_flat_json(s: &str) -> Result<Vec<(String, String)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err(format!("expected '{{' at {i}"));
    }
    i += 1;
    loop {
        ws(&mut i);
        match b.get(i) {
            Some(b'}') => return Ok(out),
            Some(b'"') => {}
            other => return Err(format!("expected a key at {i}, found {other:?}")),
        }
        let k = json_string(b, &mut i)?;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return Err(format!("expected ':' at {i}"));
        }
        i += 1;
        ws(&mut i);
        let v = json_string(b, &mut i)?;
        out.push((k, v));
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(out),
            other => return Err(format!("expected ',' or '}}' at {i}, found {other:?}")),
        }
    }
}

fn json_string(b: &[u8], i: &mut usize) -> Result<String, String> {
    if b.get(*i) != Some(&b'"') {
        return Err(format!("expected a string at {}", *i));
    }
    *i += 1;
    let mut units: Vec<u16> = Vec::new();
    let mut out = String::new();
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        if !units.is_empty() {
            out.push_str(&String::from_utf16_lossy(units));
            units.clear();
        }
    };
    loop {
        let c = *b.get(*i).ok_or("unterminated string")?;
        *i += 1;
        match c {
            b'"' => {
                flush(&mut units, &mut out);
                return Ok(out);
            }
            b'\\' => {
                let e = *b.get(*i).ok_or("unterminated escape")?;
                *i += 1;
                let ch = match e {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let hex = b.get(*i..*i + 4).ok_or("short \\u escape")?;
                        let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                        let u = u16::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                        *i += 4;
                        units.push(u);
                        continue;
                    }
                    other => return Err(format!("bad escape \\{}", other as char)),
                };
                flush(&mut units, &mut out);
                out.push(ch);
            }
            _ => {
                flush(&mut units, &mut out);
                // Copy one UTF-8 sequence.
                let start = *i - 1;
                let mut end = *i;
                while end < b.len() && (b[end] & 0xC0) == 0x80 {
                    end += 1;
                }
                out.push_str(&String::from_utf8_lossy(&b[start..end]));
                *i = end;
            }
        }
    }
}

// ------------------------------------------------------------ scripted peers

/// What a [`Peer`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// uwsgi packets in, a full HTTP response out, then close (SPEC §5).
    Uwsgi,
    /// HTTP/1.1 with keep-alive.
    Http,
}

#[derive(Debug, Clone)]
pub enum PeerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// One request as a [`Peer`] received it.
#[derive(Debug, Clone)]
pub struct PeerRequest {
    pub method: String,
    /// The request target (uwsgi: REQUEST_URI).
    pub target: String,
    /// PATH_INFO (uwsgi) or the target's path (HTTP, not decoded).
    pub path: String,
    pub query: String,
    /// HTTP: the header lines as received, in order; uwsgi: the vars.
    pub headers: Vec<(String, String)>,
    /// HTTP: the request line and headers exactly as received.
    pub raw_head: String,
    pub body_len: u64,
    pub body_sha: String,
    /// Which accepted connection (1-based) carried it.
    pub conn: usize,
    /// HTTP: the body came chunked.
    pub chunked: bool,
}

impl PeerRequest {
    /// Every value of a header (HTTP, case-insensitive) or var (uwsgi, exact).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
    fn query_num(&self, name: &str) -> Option<u64> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
    }
}

#[derive(Default)]
struct PeerShared {
    requests: Mutex<Vec<PeerRequest>>,
    connections: AtomicUsize,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Live connection sockets, shut down on stop so handler threads end.
    live: Mutex<Vec<PeerStream>>,
}

/// A scripted backend in test threads. Routes (by path):
///
/// * default: echo, `Content-Length` framed: `REQUEST-LINE=…`, then one line
///   per header (HTTP: `H=Name: value`) or var (uwsgi: `KEY=VALUE`), then
///   `BODY-LEN=`, `BODY-SHA256=`, `CONN=` lines. The uwsgi peer sends the body
///   for HEAD too (as a WSGI app server does); the HTTP peer does not.
/// * `/big?n=N`: N bytes of [`peer_byte`], `Content-Length` framed, written
///   from one prepared 64 KiB block (fast enough for 1 GiB).
/// * `/chunked?n=N`: the same bytes, chunked.
/// * `/close?n=N`: the same bytes with neither length nor chunking, delimited
///   by closing the connection (HTTP peer: `Connection: close`).
/// * `/close10?n=N`: like /close with an `HTTP/1.0` status line.
/// * `/garbage`: bytes that are no HTTP response, then close.
/// * `/silent`: reads the request and never answers (until the proxy closes or
///   the peer stops).
/// * `/status?code=C`: status C; 204 and 304 carry no body (304 with a
///   `Content-Length: 5` header, as RFC 9110 allows).
pub struct Peer {
    pub proto: Proto,
    pub addr: PeerAddr,
    shared: Arc<PeerShared>,
    accept_thread: Option<JoinHandle<()>>,
}

/// Byte `i` of the `/big`, `/chunked`, `/close` bodies.
pub fn peer_byte(i: u64) -> u8 {
    let i = (i % PEER_BLOCK as u64) as usize;
    ((i.wrapping_mul(31) ^ (i >> 8)) % 251) as u8
}

/// The period of [`peer_byte`].
pub const PEER_BLOCK: usize = 64 * 1024;

/// One period of [`peer_byte`].
pub fn peer_block() -> Vec<u8> {
    (0..PEER_BLOCK as u64).map(peer_byte).collect()
}

/// The first `n` bytes of the peer's pattern.
pub fn peer_bytes(n: usize) -> Vec<u8> {
    (0..n as u64).map(peer_byte).collect()
}

enum PeerListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum PeerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl PeerStream {
    fn try_clone(&self) -> io::Result<PeerStream> {
        Ok(match self {
            PeerStream::Tcp(s) => PeerStream::Tcp(s.try_clone()?),
            PeerStream::Unix(s) => PeerStream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            PeerStream::Tcp(s) => s.shutdown(how),
            PeerStream::Unix(s) => s.shutdown(how),
        };
    }
    fn set_read_timeout(&self, d: Option<Duration>) {
        let _ = match self {
            PeerStream::Tcp(s) => s.set_read_timeout(d),
            PeerStream::Unix(s) => s.set_read_timeout(d),
        };
    }
    fn set_write_timeout(&self, d: Option<Duration>) {
        let _ = match self {
            PeerStream::Tcp(s) => s.set_write_timeout(d),
            PeerStream::Unix(s) => s.set_write_timeout(d),
        };
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Tcp(s) => s.read(buf),
            PeerStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Tcp(s) => s.write(buf),
            PeerStream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Peer {
    /// A uwsgi peer on a unix socket at `path`.
    pub fn uwsgi_unix(path: &Path) -> Peer {
        Self::unix(Proto::Uwsgi, path)
    }
    /// A uwsgi peer on 127.0.0.1 (kernel-chosen port).
    pub fn uwsgi_tcp() -> Peer {
        Self::tcp(Proto::Uwsgi, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
    /// An HTTP/1.1 peer on 127.0.0.1 (kernel-chosen port).
    pub fn http_tcp() -> Peer {
        Self::tcp(Proto::Http, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
    /// An HTTP/1.1 peer on a unix socket at `path`.
    pub fn http_unix(path: &Path) -> Peer {
        Self::unix(Proto::Http, path)
    }

    /// A peer on TCP `addr` (port 0: the kernel picks one). Panics if the
    /// address cannot be bound within 10 s.
    pub fn tcp(proto: Proto, addr: SocketAddr) -> Peer {
        let mut last = None;
        let listener = procs::wait_for(Duration::from_secs(10), || match TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                last = Some(e);
                None
            }
        })
        .unwrap_or_else(|| panic!("bind peer on {addr}: {last:?}"));
        let addr = listener.local_addr().expect("peer local_addr");
        Self::run(proto, PeerAddr::Tcp(addr), PeerListener::Tcp(listener))
    }

    pub fn unix(proto: Proto, path: &Path) -> Peer {
        let _ = fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind peer on {}: {e}", path.display()));
        Self::run(
            proto,
            PeerAddr::Unix(path.to_path_buf()),
            PeerListener::Unix(listener),
        )
    }

    fn run(proto: Proto, addr: PeerAddr, listener: PeerListener) -> Peer {
        let shared = Arc::new(PeerShared::default());
        let s = shared.clone();
        let accept_thread = thread::Builder::new()
            .name("peer-accept".into())
            .spawn(move || loop {
                // Wait for a connection in 100 ms steps, so a stop is seen without
                // connecting to ourselves (the address may be gone).
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                if !readable(&listener, 100) {
                    continue;
                }
                let conn = match &listener {
                    PeerListener::Tcp(l) => l.accept().map(|(c, _)| PeerStream::Tcp(c)),
                    PeerListener::Unix(l) => l.accept().map(|(c, _)| PeerStream::Unix(c)),
                };
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                match conn {
                    Ok(c) => {
                        let id = s.connections.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Ok(c2) = c.try_clone() {
                            s.live.lock().unwrap().push(c2);
                        }
                        let s2 = s.clone();
                        let _ = thread::Builder::new()
                            .name("peer-conn".into())
                            .spawn(move || {
                                if let Err(e) = serve_peer_conn(proto, c, id, &s2) {
                                    if !s2.stop.load(Ordering::SeqCst) {
                                        s2.errors.lock().unwrap().push(format!("conn {id}: {e}"));
                                    }
                                }
                            });
                    }
                    Err(e) => s.errors.lock().unwrap().push(format!("accept: {e}")),
                }
            })
            .expect("spawn peer accept thread");
        Peer {
            proto,
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// The value to put in `http-to`.
    pub fn http_to(&self) -> String {
        match (self.proto, &self.addr) {
            (Proto::Uwsgi, PeerAddr::Tcp(a)) => a.to_string(),
            (Proto::Uwsgi, PeerAddr::Unix(p)) => p.display().to_string(),
            (Proto::Http, PeerAddr::Tcp(a)) => format!("http://{a}"),
            (Proto::Http, PeerAddr::Unix(p)) => format!("http+unix:{}", p.display()),
        }
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        match &self.addr {
            PeerAddr::Tcp(a) => *a,
            PeerAddr::Unix(p) => panic!("peer on {} has no TCP address", p.display()),
        }
    }

    pub fn requests(&self) -> Vec<PeerRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The most recent request for `path`.
    pub fn request_for(&self, path: &str) -> Option<PeerRequest> {
        self.requests().into_iter().rev().find(|r| r.path == path)
    }

    /// Accepted connections so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    /// Stop: close the listening socket (a unix socket file stays, so a
    /// connect gets ECONNREFUSED, as with a crashed app server), end every
    /// connection, and wait for the accept thread.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // The accept thread sees the flag within 100 ms and drops the listener.
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        for c in self.shared.live.lock().unwrap().drain(..) {
            c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
        if let PeerAddr::Unix(p) = &self.addr {
            let _ = fs::remove_file(p);
        }
    }
}

/// Poll the listener for a connection, up to `ms` milliseconds.
fn readable(l: &PeerListener, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let fd = match l {
        PeerListener::Tcp(l) => l.as_raw_fd(),
        PeerListener::Unix(l) => l.as_raw_fd(),
    };
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn split_query(target: &str) -> (String, String) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    }
}

/// Read the uwsgi packet and body. None: the connection closed before a byte.
fn read_uwsgi_request(r: &mut impl Read, conn: usize) -> io::Result<Option<PeerRequest>> {
    let mut head = [0u8; 4];
    match r.read(&mut head[..1])? {
        0 => return Ok(None),
        _ => r.read_exact(&mut head[1..])?,
    }
    if head[0] != 0 || head[3] != 0 {
        return Err(invalid(format!("modifiers {} / {}", head[0], head[3])));
    }
    let size = u16::from_le_bytes([head[1], head[2]]) as usize;
    let mut buf = vec![0u8; size];
    r.read_exact(&mut buf)?;
    let mut vars = Vec::new();
    let mut i = 0;
    let u16_at = |i: usize| -> io::Result<usize> {
        buf.get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| invalid("truncated vars"))
    };
    while i < buf.len() {
        let kl = u16_at(i)?;
        let k = buf.get(i + 2..i + 2 + kl).ok_or_else(|| invalid("key"))?;
        i += 2 + kl;
        let vl = u16_at(i)?;
        let v = buf.get(i + 2..i + 2 + vl).ok_or_else(|| invalid("value"))?;
        i += 2 + vl;
        vars.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let len: u64 = get("CONTENT_LENGTH").parse().unwrap_or(0);
    let (body_len, body_sha) = read_body_len(r, len)?;
    Ok(Some(PeerRequest {
        method: get("REQUEST_METHOD"),
        target: get("REQUEST_URI"),
        path: get("PATH_INFO"),
        query: get("QUERY_STRING"),
        raw_head: String::new(),
        headers: vars,
        body_len,
        body_sha,
        conn,
        chunked: false,
    }))
}

fn read_body_len(r: &mut impl Read, len: u64) -> io::Result<(u64, String)> {
    let mut sha = openssl::sha::Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(invalid(format!("body ended {left} bytes early")));
        }
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((len, super::hex(&sha.finish())))
}

fn read_crlf_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if r.take(128 * 1024).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Read one HTTP/1.1 request. None: closed before a byte.
fn read_http_request(r: &mut impl BufRead, conn: usize) -> io::Result<Option<PeerRequest>> {
    let Some(request_line) = read_crlf_line(r)? else {
        return Ok(None);
    };
    let mut raw_head = format!("{request_line}\r\n");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("");
    if version != "HTTP/1.1" {
        return Err(invalid(format!("request line {request_line:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_crlf_line(r)?.ok_or_else(|| invalid("EOF in head"))?;
        raw_head.push_str(&line);
        raw_head.push_str("\r\n");
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header {line:?}")))?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let find = |n: &str| {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let chunked = find("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    let (body_len, body_sha) = if chunked {
        let mut sha = openssl::sha::Sha256::new();
        let mut total = 0u64;
        loop {
            let size_line = read_crlf_line(r)?.ok_or_else(|| invalid("EOF in chunked body"))?;
            let size = u64::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| invalid(format!("chunk size {size_line:?}")))?;
            if size == 0 {
                while !read_crlf_line(r)?
                    .ok_or_else(|| invalid("EOF in trailers"))?
                    .is_empty()
                {}
                break;
            }
            let mut data = vec![0u8; size as usize];
            r.read_exact(&mut data)?;
            sha.update(&data);
            total += size;
            if !read_crlf_line(r)?
                .ok_or_else(|| invalid("EOF after chunk"))?
                .is_empty()
            {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
        (total, super::hex(&sha.finish()))
    } else {
        let len = match find("content-length").first() {
            Some(v) => v
                .parse()
                .map_err(|_| invalid(format!("Content-Length {v:?}")))?,
            None => 0,
        };
        read_body_len(r, len)?
    };
    let (path, query) = split_query(&target);
    Ok(Some(PeerRequest {
        method,
        target,
        path,
        query,
        headers,
        raw_head,
        body_len,
        body_sha,
        conn,
        chunked,
    }))
}

fn serve_peer_conn(proto: Proto, c: PeerStream, id: usize, s: &PeerShared) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(120)));
    c.set_write_timeout(Some(Duration::from_secs(120)));
    let mut w = c.try_clone()?;
    let mut r = BufReader::with_capacity(64 * 1024, c);
    loop {
        let req = match proto {
            Proto::Uwsgi => read_uwsgi_request(&mut r, id)?,
            Proto::Http => read_http_request(&mut r, id)?,
        };
        let Some(req) = req else {
            return Ok(());
        };
        s.requests.lock().unwrap().push(req.clone());
        let keep = respond(proto, &req, &mut w, s)?;
        if proto == Proto::Uwsgi || !keep {
            w.shutdown(Shutdown::Write);
            // Drain what the proxy may still send, briefly, then close.
            r.get_ref().set_read_timeout(Some(Duration::from_secs(2)));
            let mut sink = [0u8; 4096];
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
            return Ok(());
        }
    }
}

/// Answer one request; Ok(true): the connection may serve another (HTTP).
fn respond(
    proto: Proto,
    req: &PeerRequest,
    w: &mut PeerStream,
    s: &PeerShared,
) -> io::Result<bool> {
    let n = req.query_num("n").unwrap_or(1000);
    let head_req = req.method == "HEAD";
    match req.path.as_str() {
        "/big" | "/chunked" | "/close" | "/close10" => {
            let head = match req.path.as_str() {
                "/big" => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
                ),
                "/chunked" => "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
                "/close10" => "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_string(),
                _ if proto == Proto::Http => "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n".to_string(),
                _ => "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_string(),
            };
            w.write_all(head.as_bytes())?;
            if head_req && proto == Proto::Http {
                return Ok(req.path == "/big" || req.path == "/chunked");
            }
            let chunked = req.path == "/chunked";
            let block = peer_block();
            let mut sent = 0u64;
            while sent < n {
                let start = (sent % PEER_BLOCK as u64) as usize;
                let take = ((n - sent) as usize).min(PEER_BLOCK - start).min(16 * 1024);
                if chunked {
                    w.write_all(format!("{take:x}\r\n").as_bytes())?;
                }
                w.write_all(&block[start..start + take])?;
                if chunked {
                    w.write_all(b"\r\n")?;
                }
                sent += take as u64;
            }
            if chunked {
                w.write_all(b"0\r\n\r\n")?;
            }
            Ok(req.path == "/big" || req.path == "/chunked")
        }
        "/garbage" => {
            w.write_all(b"SSH-2.0-OpenSSH_9.2 this is no HTTP response\r\n\xff\xfe\r\n\r\n")?;
            Ok(false)
        }
        "/silent" => {
            // Hold the connection without answering until the proxy closes it
            // (or the peer stops, or 120 s pass).
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut probe = w.try_clone()?;
            probe.set_read_timeout(Some(Duration::from_millis(200)));
            let mut b = [0u8; 1024];
            while Instant::now() < deadline && !s.stop.load(Ordering::SeqCst) {
                match probe.read(&mut b) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            Ok(false)
        }
        "/status" => {
            let code = req.query_num("code").unwrap_or(200);
            let text = match code {
                204 => "HTTP/1.1 204 No Content\r\nX-Peer: yes\r\n\r\n".to_string(),
                304 => "HTTP/1.1 304 Not Modified\r\nX-Peer: yes\r\nContent-Length: 5\r\n\r\n"
                    .to_string(),
                c => {
                    let body = format!("status {c}\n");
                    let b = if head_req && proto == Proto::Http {
                        ""
                    } else {
                        &body
                    };
                    format!(
                        "HTTP/1.1 {c} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{b}",
                        body.len()
                    )
                }
            };
            w.write_all(text.as_bytes())?;
            Ok(true)
        }
        _ => {
            let mut body = format!("REQUEST-LINE={} {}\n", req.method, req.target);
            for (k, v) in &req.headers {
                match proto {
                    Proto::Http => body.push_str(&format!("H={k}: {v}\n")),
                    Proto::Uwsgi => body.push_str(&format!("{k}={v}\n")),
                }
            }
            body.push_str(&format!(
                "BODY-LEN={}\nBODY-SHA256={}\nCONN={}\n",
                req.body_len, req.body_sha, req.conn
            ));
            let b = if head_req && proto == Proto::Http {
                ""
            } else {
                body.as_str()
            };
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Peer: yes\r\nContent-Length: {}\r\n\r\n{b}",
                    body.len()
                )
                .as_bytes(),
            )?;
            Ok(true)
        }
    }
}

// ------------------------------------------------------------ raw TLS client

/// A client TLS connection to 127.0.0.1:port whose reader is open to the test.
pub struct RawTls {
    pub r: BufReader<SslStream<TcpStream>>,
    pub port: u16,
}

impl RawTls {
    /// Verify the server with the test CA (name "localhost").
    pub fn connect(port: u16, certs: &Certs) -> io::Result<RawTls> {
        Self::connect_opts(port, certs, None)
    }

    pub fn connect_client(port: u16, certs: &Certs, client: (&Path, &Path)) -> io::Result<RawTls> {
        Self::connect_opts(port, certs, Some(client))
    }

    pub fn connect_opts(
        port: u16,
        certs: &Certs,
        client: Option<(&Path, &Path)>,
    ) -> io::Result<RawTls> {
        let e = |x: openssl::error::ErrorStack| io::Error::other(x.to_string());
        let mut b = SslConnector::builder(SslMethod::tls()).map_err(e)?;
        b.set_ca_file(&certs.ca_crt).map_err(e)?;
        if let Some((crt, key)) = client {
            b.set_certificate_chain_file(crt).map_err(e)?;
            b.set_private_key_file(key, SslFiletype::PEM).map_err(e)?;
        }
        let connector = b.build();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
        let ssl = connector
            .connect("localhost", tcp)
            .map_err(|x| io::Error::other(format!("TLS handshake: {x}")))?;
        Ok(RawTls {
            r: BufReader::with_capacity(64 * 1024, ssl),
            port,
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        self.r.get_ref().get_ref()
    }

    pub fn set_timeout(&self, d: Duration) {
        let _ = self.tcp().set_read_timeout(Some(d));
        let _ = self.tcp().set_write_timeout(Some(d));
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let s = self.r.get_mut();
        s.write_all(data)?;
        s.flush()
    }

    /// Read one whole response (1xx skipped).
    pub fn response(&mut self) -> io::Result<Response> {
        read_response(&mut self.r, false)
    }

    /// Read one response to a HEAD request (no body).
    pub fn head_response(&mut self) -> io::Result<Response> {
        read_response(&mut self.r, true)
    }

    /// Read one response head exactly as sent, 1xx included (up to the blank line).
    pub fn raw_head(&mut self) -> io::Result<String> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.r.read_until(b'\n', &mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            out.extend_from_slice(&line);
            if line == b"\r\n" {
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
        }
    }

    /// `GET path` with Host localhost:PORT.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            self.port
        );
        self.send(req.as_bytes())?;
        self.response()
    }

    /// What the server does next within `timeout`: Closed (EOF or reset),
    /// Data (it sent more bytes), or Open (nothing, connection still up).
    pub fn next_event(&mut self, timeout: Duration) -> NextEvent {
        let _ = self.tcp().set_read_timeout(Some(timeout));
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => NextEvent::Closed,
            Ok(_) => NextEvent::Data(b[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                NextEvent::Open
            }
            Err(_) => NextEvent::Closed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextEvent {
    Closed,
    Data(u8),
    Open,
}

// ------------------------------------------------------------ processes

/// VmRSS of a process in KiB.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Raise RLIMIT_NOFILE's soft limit to at least `want` (up to the hard limit);
/// returns the soft limit now in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if (lim.rlim_cur as u64) < want {
            let mut new = lim;
            new.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                lim = new;
            }
        }
    }
    lim.rlim_cur as u64
}
