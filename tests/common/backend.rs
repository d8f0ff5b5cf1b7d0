//! A uwsgi-protocol echo application server, run in test threads.
//!
//! This is the app-server side of the product's `http-to`, not a mock of
//! the product: it reads uwsgi packets (SPEC §5) and answers full HTTP
//! responses, then closes.
//!
//! Per connection: 4-byte header (modifier1, u16le datasize, modifier2),
//! datasize bytes of vars, then CONTENT_LENGTH body bytes. The vars are
//! recorded; the answer depends on PATH_INFO:
//! * default: 200 text/plain, one `KEY=VALUE` line per var, then
//!   `BODY-LEN=<n>` and `BODY-SHA256=<hex>`
//! * `/big?n=N`: 200 with Content-Length N and [`pattern_byte`] content
//! * `/bigchunked?n=N`: the same content, `Transfer-Encoding: chunked`
//!   in 16 KiB chunks
//! * `/slow?ms=N`: sleep N ms, then like default

use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The vars of one uwsgi request, in the order they were sent.
pub type Vars = Vec<(String, String)>;

/// Byte `i` of the `/big` and `/bigchunked` bodies.
pub fn pattern_byte(i: usize) -> u8 {
    ((i.wrapping_mul(7)) % 251) as u8
}

/// Look up a var by name (first occurrence).
pub fn var<'a>(vars: &'a Vars, key: &str) -> Option<&'a str> {
    vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone)]
pub enum BackendAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Vars>>,
    connections: AtomicUsize,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A running echo backend; stops when dropped.
pub struct Backend {
    pub addr: BackendAddr,
    shared: Arc<Shared>,
}

trait Conn: Read + Write + Send + 'static {
    fn set_timeouts(&self, d: Duration);
    fn close_write(&self);
}

impl Conn for UnixStream {
    fn set_timeouts(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
        let _ = self.set_write_timeout(Some(d));
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Conn for TcpStream {
    fn set_timeouts(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
        let _ = self.set_write_timeout(Some(d));
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Backend {
    /// Listen on a unix socket at `path`.
    pub fn unix(path: &Path) -> Backend {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind backend unix socket {}: {e}", path.display()));
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        thread::Builder::new()
            .name("uwsgi-backend-unix".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(c) => spawn_conn(c, s.clone()),
                        Err(e) => s.errors.lock().unwrap().push(format!("accept: {e}")),
                    }
                }
            })
            .expect("spawn backend thread");
        Backend {
            addr: BackendAddr::Unix(path.to_path_buf()),
            shared,
        }
    }

    /// Listen on 127.0.0.1:0 TCP.
    pub fn tcp() -> Backend {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind backend 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend local_addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        thread::Builder::new()
            .name("uwsgi-backend-tcp".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(c) => spawn_conn(c, s.clone()),
                        Err(e) => s.errors.lock().unwrap().push(format!("accept: {e}")),
                    }
                }
            })
            .expect("spawn backend thread");
        Backend {
            addr: BackendAddr::Tcp(addr),
            shared,
        }
    }

    /// The value to put in `http-to` (a bare unix path or `127.0.0.1:P`).
    pub fn http_to(&self) -> String {
        match &self.addr {
            BackendAddr::Unix(p) => p.display().to_string(),
            BackendAddr::Tcp(a) => a.to_string(),
        }
    }

    /// All requests seen so far (vars of each), in arrival order.
    pub fn requests(&self) -> Vec<Vars> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The most recent request whose PATH_INFO is `path`.
    pub fn request_for(&self, path: &str) -> Option<Vars> {
        self.requests()
            .into_iter()
            .rev()
            .find(|v| var(v, "PATH_INFO") == Some(path))
    }

    /// Number of accepted connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Protocol errors seen by the backend (malformed packets etc.).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread can see the stop flag.
        match &self.addr {
            BackendAddr::Unix(p) => {
                let _ = UnixStream::connect(p);
                let _ = std::fs::remove_file(p);
            }
            BackendAddr::Tcp(a) => {
                let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
            }
        }
    }
}

fn spawn_conn<C: Conn>(c: C, s: Arc<Shared>) {
    if s.stop.load(Ordering::SeqCst) {
        return;
    }
    s.connections.fetch_add(1, Ordering::SeqCst);
    let _ = thread::Builder::new()
        .name("uwsgi-backend-conn".into())
        .spawn(move || {
            c.set_timeouts(Duration::from_secs(60));
            if let Err(e) = handle(c, &s) {
                s.errors.lock().unwrap().push(e.to_string());
            }
        });
}

fn read_u16(buf: &[u8], at: usize) -> io::Result<u16> {
    buf.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated uwsgi vars"))
}

fn parse_vars(buf: &[u8]) -> io::Result<Vars> {
    let mut vars = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let kl = read_u16(buf, i)? as usize;
        i += 2;
        let k = buf
            .get(i..i + kl)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated key"))?;
        i += kl;
        let vl = read_u16(buf, i)? as usize;
        i += 2;
        let v = buf
            .get(i..i + vl)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated value"))?;
        i += vl;
        vars.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(vars)
}

fn query_param(vars: &Vars, name: &str) -> Option<usize> {
    var(vars, "QUERY_STRING")?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k == name {
            v.parse().ok()
        } else {
            None
        }
    })
}

fn handle<C: Conn>(mut c: C, s: &Shared) -> io::Result<()> {
    let mut head = [0u8; 4];
    c.read_exact(&mut head)?;
    if head[0] != 0 || head[3] != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected modifiers {} / {}", head[0], head[3]),
        ));
    }
    let size = u16::from_le_bytes([head[1], head[2]]) as usize;
    let mut buf = vec![0u8; size];
    c.read_exact(&mut buf)?;
    let vars = parse_vars(&buf)?;
    s.requests.lock().unwrap().push(vars.clone());

    let content_length: u64 = var(&vars, "CONTENT_LENGTH")
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().unwrap_or(0))
        .unwrap_or(0);
    let mut sha = openssl::sha::Sha256::new();
    let mut remaining = content_length;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut body_len: u64 = 0;
    while remaining > 0 {
        let want = remaining.min(chunk.len() as u64) as usize;
        let n = c.read(&mut chunk[..want])?;
        if n == 0 {
            break;
        }
        sha.update(&chunk[..n]);
        body_len += n as u64;
        remaining -= n as u64;
    }
    let body_sha = super::hex(&sha.finish());

    let path = var(&vars, "PATH_INFO").unwrap_or("").to_string();
    let mut w = BufWriter::with_capacity(64 * 1024, &mut c);
    match path.as_str() {
        "/big" => {
            let n = query_param(&vars, "n").unwrap_or(0);
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
            )?;
            let mut block = Vec::with_capacity(16 * 1024);
            let mut i = 0;
            while i < n {
                block.clear();
                let end = (i + 16 * 1024).min(n);
                block.extend((i..end).map(pattern_byte));
                w.write_all(&block)?;
                i = end;
            }
        }
        "/bigchunked" => {
            let n = query_param(&vars, "n").unwrap_or(0);
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )?;
            let mut block = Vec::with_capacity(16 * 1024);
            let mut i = 0;
            while i < n {
                block.clear();
                let end = (i + 16 * 1024).min(n);
                block.extend((i..end).map(pattern_byte));
                write!(w, "{:x}\r\n", block.len())?;
                w.write_all(&block)?;
                w.write_all(b"\r\n")?;
                i = end;
            }
            w.write_all(b"0\r\n\r\n")?;
        }
        other => {
            if other == "/slow" {
                let ms = query_param(&vars, "ms").unwrap_or(0) as u64;
                thread::sleep(Duration::from_millis(ms));
            }
            let mut body = String::new();
            for (k, v) in &vars {
                body.push_str(&format!("{k}={v}\n"));
            }
            body.push_str(&format!("BODY-LEN={body_len}\nBODY-SHA256={body_sha}\n"));
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                body
            )?;
        }
    }
    w.flush()?;
    drop(w);
    c.close_write();
    // Drain whatever the peer still sends, then close.
    let mut sink = [0u8; 4096];
    c.set_timeouts(Duration::from_secs(2));
    while let Ok(n) = c.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}
